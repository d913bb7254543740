"""Floating-point work of the workloads, for the lower bound ``flops / (matmul GFLOP/s)``.

The counts follow the cheapest *known* algorithm for each quantity (they are the
work of an ideal implementation of the per-layer methods, not a proof that no
faster method exists), in flops (2 per multiply-add), with these conventions:

* ``M`` is the multiply-adds of one forward pass of one example through the
  Linear/Conv layers (``Σ_l T_l·I_l·O_l``; ``T`` positions, ``I`` inputs per
  position, ``O`` outputs); element-wise layers (activations, BatchNorm, pooling)
  are ignored;
* a backward pass to the layer outputs (what the output gradients ``g`` need)
  costs ``2·N·(M − M_first)`` per output coordinate, where ``M_first`` is the
  first layer's forward multiply-adds (its input gradient is never needed), and
  a forward-mode tangent ``4·N·M`` (``W·dx + dW·x``);
* a symmetric N×N kernel counts each unordered pair of examples once;
* for layers with weight sharing (``T > 1``) the Gram trick and per-example
  materialization are both counted and the cheaper one is kept;
* attention (``nn.MultiheadAttention``, :class:`~benchmarks.models.SelfAttention`): its
  projections are sequence Linear layers (``in_proj``: ``E → 3E``, ``out_proj``), and its two
  parameter-free products per example, scores ``Q Kᵀ`` (``T·E·T`` multiply-adds over the heads)
  and mixing ``A V`` (``T·T·E``), count in ``M`` with ``params=False``: they add to forward,
  tangent and backward passes (a backward needs both operands' gradients: twice their
  multiply-adds) and to nothing per parameter; softmax and masks are element-wise;
* an ``nn.Embedding`` is a row gather, counted as a Linear from a one-dimensional input per
  token (``T`` positions, ``I = 1``): its per-example gradients are ``T`` scattered rows, and
  the counts it adds are at most the work of any algorithm for it (a lower bound).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class LayerShape:
    name: str
    t: int  # positions (1 for a plain Linear)
    i: int  # inputs per position, without the bias column
    o: int  # outputs per position
    bias: bool
    params: bool = True  # False: a parameter-free bilinear product (attention), forward work only

    @property
    def macs(self) -> int:
        return self.t * self.i * self.o

    @property
    def ih(self) -> int:  # homogeneous inputs (bias as a column of ones)
        return self.i + (1 if self.bias else 0)


def weighted(shapes: list[LayerShape]) -> list[LayerShape]:
    """The layers with parameters (attention products left out)."""
    return [s for s in shapes if s.params]


def _attention(name: str, t: int, e: int) -> list[LayerShape]:
    """The two parameter-free products of self-attention over ``t`` tokens of width ``e``."""
    return [LayerShape(name + ".scores", t, e, t, False, params=False),
            LayerShape(name + ".mix", t, t, e, False, params=False)]


def layer_shapes(model: nn.Module, x1: torch.Tensor) -> list[LayerShape]:
    """Linear / Conv2d / Embedding layers and attention blocks in call order, measured on one
    example ``x1`` (with its batch dim); fused fast paths of PyTorch's transformer layers are
    turned off so that every submodule is seen."""
    from .models import SelfAttention

    shapes: list[LayerShape] = []

    def hook(mod, args, out):
        name = names[id(mod)]
        if isinstance(mod, nn.Embedding):
            shapes.append(LayerShape(name, args[0].numel() // args[0].shape[0], 1, mod.embedding_dim, False))
        elif isinstance(mod, nn.MultiheadAttention):  # packed self-attention projections
            t, e = args[0].shape[1 if mod.batch_first else 0], mod.embed_dim
            shapes.append(LayerShape(name + ".in_proj", t, e, 3 * e, mod.in_proj_bias is not None))
            shapes.extend(_attention(name, t, e))
            shapes.append(LayerShape(name + ".out_proj", t, e, e, mod.out_proj.bias is not None))
        elif isinstance(mod, SelfAttention):  # its Linear projections are hooked themselves
            shapes.extend(_attention(name, args[0].shape[1], args[0].shape[2]))
        elif isinstance(mod, nn.Linear):
            t = args[0].numel() // args[0].shape[-1] // args[0].shape[0]
            shapes.append(LayerShape(name, t, mod.in_features, mod.out_features, mod.bias is not None))
        else:
            t = out.shape[2] * out.shape[3]
            k = mod.in_channels // mod.groups * mod.kernel_size[0] * mod.kernel_size[1]
            shapes.append(LayerShape(name, t, k, mod.out_channels, mod.bias is not None))

    names = {id(m): n for n, m in model.named_modules()}
    kinds = (nn.Linear, nn.Conv2d, nn.Embedding, nn.MultiheadAttention, SelfAttention)
    inside_mha = {id(m.out_proj) for m in model.modules() if isinstance(m, nn.MultiheadAttention)}
    handles = [m.register_forward_hook(hook) for m in model.modules()
               if isinstance(m, kinds) and id(m) not in inside_mha]
    fast = torch.backends.mha.get_fastpath_enabled()
    try:
        torch.backends.mha.set_fastpath_enabled(False)
        with torch.no_grad():
            model(x1)
    finally:
        torch.backends.mha.set_fastpath_enabled(fast)
        for h in handles:
            h.remove()
    return shapes


def forward(shapes: list[LayerShape], n: int) -> float:
    return 2.0 * n * sum(s.macs for s in shapes)


def backward_to_outputs(shapes: list[LayerShape], n: int, c: int) -> float:
    """``c`` backward passes to the layer outputs (no weight gradients; both operands of a
    parameter-free product)."""
    return 2.0 * n * c * (sum(s.macs * (1 if s.params else 2) for s in shapes) - shapes[0].macs)


def gram_layer(s: LayerShape, n: int, c: int, symmetric: bool = True) -> float:
    """One layer's contribution to an ``(N, N, C, C)`` kernel: min(Gram trick, materialized)."""
    pairs = n * (n + 1) / 2 if symmetric else float(n * n)
    if s.t == 1:  # a·a' (N² I) and g·g' ((NC)² O) Gram matrices, and the Hadamard product
        return 2.0 * pairs * (s.ih + c * c * s.o) + pairs * c * c
    structured = 2.0 * pairs * s.t * s.t * (s.ih + c * c * s.o)
    materialized = 2.0 * c * n * s.t * s.o * s.ih + 2.0 * pairs * c * c * s.o * s.ih
    return min(structured, materialized)


def ntk(shapes: list[LayerShape], n: int, c: int) -> float:
    return forward(shapes, n) + backward_to_outputs(shapes, n, c) + sum(gram_layer(s, n, c) for s in weighted(shapes))


def dense_jacobian_contraction(p: int, n: int, c: int) -> float:
    """The contraction alone of the dense-Jacobian route, ``2·(N·C)²·P`` (workloads.md)."""
    return 2.0 * (n * c) ** 2 * p


def diag_fisher(shapes: list[LayerShape], n: int, c_pseudo: int, p: int) -> float:
    """Diagonal of ``Σ_c φ_c φ_cᵀ`` from per-layer ``a`` and ``g``, plus one diagonal ``mv``."""
    work = forward(shapes, n) + backward_to_outputs(shapes, n, c_pseudo)
    for s in weighted(shapes):
        if s.t == 1:  # (Σ_c g²)ᵀ (a²): one matmul
            work += 2.0 * n * s.o * s.ih + n * c_pseudo * s.o + n * s.ih
        else:
            work += 2.0 * c_pseudo * n * s.t * s.o * s.ih + 2.0 * c_pseudo * n * s.o * s.ih
    return work + p


def _kfac_factors(shapes: list[LayerShape], n: int, c_pseudo: int) -> float:
    """Forward, ``c_pseudo`` backward passes and the factor sums ``A = Σ ã ãᵀ`` and
    ``B = Σ_c Σ g gᵀ``, symmetric products counted once (``N·T·I·(I+1)`` flops for A)."""
    work = forward(shapes, n) + backward_to_outputs(shapes, n, c_pseudo)
    for s in weighted(shapes):
        work += n * s.t * s.ih * (s.ih + 1) + c_pseudo * n * s.t * s.o * (s.o + 1)
    return work


def _kron_mv(shapes: list[LayerShape]) -> float:
    """One Kronecker-factored matrix-vector product per layer, ``B V A``."""
    return sum(2.0 * (s.o * s.o * s.ih + s.o * s.ih * s.ih) for s in weighted(shapes))


def _eigh(k: int) -> float:
    """Symmetric eigendecomposition with eigenvectors: tridiagonal reduction (4/3 k³) and
    back-transformation (2 k³); the tridiagonal solve is not counted."""
    return (4.0 / 3.0 + 2.0) * k**3


def kfac_fisher(shapes: list[LayerShape], n: int, c_pseudo: int) -> float:
    """KFAC build (factors) and one ``mv``."""
    return _kfac_factors(shapes, n, c_pseudo) + _kron_mv(shapes)


def ekfac_fisher(shapes: list[LayerShape], n: int, c_pseudo: int) -> float:
    """EKFAC build (factors, their eigenbases, ``s*`` = Σ (U_Bᵀ g)² (U_Aᵀ ã)² from a second
    look at the same ``a`` and ``g``, rotated once each) and one ``mv`` (two rotations)."""
    work = _kfac_factors(shapes, n, c_pseudo)
    for s in weighted(shapes):
        work += _eigh(s.ih) + _eigh(s.o)
        rotate = 2.0 * n * s.t * (s.ih * s.ih + c_pseudo * s.o * s.o)
        if s.t == 1:  # (Σ_c (U_Bᵀg)²)ᵀ (U_Aᵀã)²: one matmul
            work += rotate + 2.0 * n * s.o * s.ih
        else:
            work += rotate + 2.0 * c_pseudo * n * s.t * s.o * s.ih + 2.0 * c_pseudo * n * s.o * s.ih
    return work + 2.0 * _kron_mv(shapes)


def sq_norms(shapes: list[LayerShape], n: int, c: int, p: int) -> float:
    """``Σ_{n,c} ‖φ_{c,n}‖²`` (the trace): forward, ``c`` backward passes, per-layer norms."""
    work = forward(shapes, n) + backward_to_outputs(shapes, n, c)
    for s in weighted(shapes):
        if s.t == 1:
            work += 2.0 * n * (c * s.o + s.ih)
        else:
            structured = 2.0 * n * s.t * s.t * (s.ih + c * s.o)
            materialized = 2.0 * c * n * s.t * s.o * s.ih
            work += min(structured, materialized)
    return work


def fisher_mv(shapes: list[LayerShape], n: int) -> float:
    """``Jᵀ H J v``: primal forward, forward-mode tangent, backward with weight gradients."""
    m = sum(s.macs for s in shapes)
    return 2.0 * n * m + 4.0 * n * m + 4.0 * n * m - 2.0 * n * shapes[0].macs


def fisher_vtmv(shapes: list[LayerShape], n: int) -> float:
    m = sum(s.macs for s in shapes)
    return 2.0 * n * m + 4.0 * n * m


def per_example_grads(shapes: list[LayerShape], n: int) -> float:
    """Forward, one backward to the layer outputs, per-example weight gradients ``Σ_t g aᵀ``."""
    return forward(shapes, n) + backward_to_outputs(shapes, n, 1) + \
        2.0 * n * sum(s.t * s.o * s.ih for s in weighted(shapes))
