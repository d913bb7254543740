"""The layer-rule protocol (the registry keyed by module type is :mod:`.registry`).

A *rule* knows the maths of one kind of layer. The engine gives it, for one
batch, the layer's *features* (computed once from the module's inputs, e.g.
unfolded patches) and ``g``, the gradients of every output coordinate with
respect to the layer's output, shape ``(C, N, *output_shape)`` (``C`` output
coordinates, ``N`` examples). From these a rule computes per-example
gradients and everything the representations need. Only :meth:`features` and
:meth:`per_example` are required; the other methods have correct (chunked,
materializing) defaults that fast rules override.

Notation used in docstrings: ``φ_{c,n} = ∂s_c(x_n)/∂θ_layer`` is the tangent
feature (per-example gradient) of output ``c`` at example ``n``.

**Taps: gradients of tensors inside a module.** Some layers apply their parameters
somewhere inside their forward (``nn.MultiheadAttention``'s input projections act on
the tokens before the softmax; an RNN cell's weights act at every step), so the
gradient of the module's output is not what their maths needs. Such a rule returns
``True`` from :meth:`LayerRule.tapped` and provides :meth:`LayerRule.tapped_forward`,
a functional forward with the module's own signature that computes the same outputs
and, along the way, reports to a :class:`Tap`:

* ``tap.save(name, x)``: a tensor the features need (stored detached), e.g. the
  token inputs of a projection;
* ``y = tap.grad(name, y)``: an internal tensor whose gradients are wanted, its
  leading dimension the example (the returned tensor must be used downstream in
  place of ``y``).

While capturing, the engine calls ``tapped_forward`` in place of the module's forward
(hooked modules only; ordinary layers are untouched), records the autograd edge of
every ``tap.grad`` tensor like a layer output, and hands the rule
``g = (C, N, F)``: the gradients of the tapped tensors, each flattened after the
example dimension and concatenated in the order of the ``tap.grad`` calls
(``F = Σ_taps numel / N``; :meth:`Tap.split` cuts it back into ``{name: (C, N,
*shape)}`` views). The features come from :meth:`LayerRule.tap_features` (the tap,
with its saved tensors and the tapped shapes) instead of :meth:`LayerRule.features`.
Submodules called by ``tapped_forward`` (e.g. an output projection called as a
module) are hooked by their own rules as usual. The route planner runs the tapped
forward in its probe too, so that a submodule the module's own forward never calls
(``MultiheadAttention.out_proj``) is seen called once.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, cast

import torch
from torch import nn
from torch.autograd.graph import get_gradient_edge

# Per-example tensors are materialized in chunks of at most this many elements.
CHUNK_ELEMENTS = 1 << 24


class Tap:
    """What a tapped forward (:meth:`LayerRule.tapped_forward`) reports to the engine.

    ``path``: the module's path in the model (for error messages). ``active=False``
    (the route planner's probe, without autograd): nothing is recorded and
    :meth:`grad` returns its argument.
    """

    def __init__(self, path: str = "", active: bool = True):
        self.path = path
        self.active = active
        self.saved: dict[str, torch.Tensor] = {}
        self.names: list[str] = []
        self.shapes: list[tuple[int, ...]] = []
        self.edges: list[Any] = []

    def save(self, name: str, x: torch.Tensor) -> None:
        """Keep ``x`` (detached) for the features."""
        if self.active:
            self.saved[name] = x.detach()

    def grad(self, name: str, y: torch.Tensor) -> torch.Tensor:
        """Record the autograd edge of ``y`` (example dimension first); use the returned
        tensor in place of ``y``. A tensor outside autograd (its parameters not differentiated)
        is made a leaf that requires grad, so that its gradient is defined all the same."""
        if not self.active:
            return y
        if y.grad_fn is None and not y.requires_grad:
            y = y.detach().requires_grad_(True)
        self.names.append(name)
        self.shapes.append(tuple(y.shape))
        self.edges.append(get_gradient_edge(y))
        return y

    def layout(self) -> list[tuple[str, tuple[int, ...]]]:
        """``[(name, shape of one example's tensor)]`` in the order of the ``grad`` calls."""
        return [(n, s[1:]) for n, s in zip(self.names, self.shapes)]


def join_taps(gs: list[torch.Tensor], n: int) -> torch.Tensor:
    """A tapped rule's ``g`` from its taps' gradients ``(C, N, *shape)``: each flattened after the
    example dimension, concatenated, ``(C, N, F)`` (a view when there is one tap)."""
    flat = [t.reshape(t.shape[0], n, -1) for t in gs]
    return flat[0] if len(flat) == 1 else torch.cat(flat, 2)


def split_taps(g: torch.Tensor, layout: list[tuple[str, tuple[int, ...]]]) -> dict[str, torch.Tensor]:
    """Cut a tapped rule's ``g`` (``(C, N, F)``, see the module docstring) into
    ``{name: (C, N, *shape)}`` views, following ``layout`` (:meth:`Tap.layout`)."""
    sizes = [_numel(s) for _, s in layout]
    parts = g.split(sizes, dim=2) if len(sizes) > 1 else (g,)
    return {n: p.reshape(g.shape[0], g.shape[1], *s) for (n, s), p in zip(layout, parts)}


def _numel(shape: tuple[int, ...]) -> int:
    k = 1
    for d in shape:
        k *= d
    return k


class LayerRule:
    """Maths of one layer type. Subclass and register with :meth:`LayerRegistry.register`.

    The ``module`` argument of the methods is the layer the rule handles, typed ``Any`` here:
    each rule narrows it to its own module type.
    """

    def params(self, module: Any) -> tuple[str, ...]:
        """Local names of the parameters this rule handles (default: weight and bias if present).

        Parameters
        ----------
        module : nn.Module
        """
        return tuple(n for n in ("weight", "bias") if getattr(module, n, None) is not None)

    def check(self, module: Any) -> str | None:
        """Return a reason why this module must take the generic route, or None.

        Raise :class:`~tangentlab.errors.UnsupportedLayerError` for configurations
        that no route can handle correctly.

        Parameters
        ----------
        module : nn.Module
        """
        return None

    def features(self, module: Any, args: tuple, kwargs: dict[str, Any]) -> Any:
        """What the rule needs from the module's inputs (computed once per batch).

        Parameters
        ----------
        module : nn.Module
        args, kwargs
            The module's forward inputs.
        """
        raise NotImplementedError

    # ---- taps (optional: rules whose parameters act inside the module's forward) ----------
    def tapped(self, module: Any) -> bool:
        """Whether the engine captures this module through :meth:`tapped_forward` (module docstring).

        Parameters
        ----------
        module : nn.Module
        """
        return False

    def tapped_forward(self, module: Any, tap: Tap, *args: Any, **kwargs: Any) -> Any:
        """The module's forward, reporting its internal tensors to ``tap`` (module docstring).

        Parameters
        ----------
        module : nn.Module
        tap : Tap
            Receives the internal tensors whose output gradients the rule needs.
        *args, **kwargs
            The module's own forward arguments.
        """
        raise NotImplementedError

    def tap_features(self, module: Any, tap: Tap) -> Any:
        """The features of a tapped rule, from the tensors ``tap`` saved and its tap layout.

        Parameters
        ----------
        module : nn.Module
        tap : Tap
            The tap of the batch's forward.
        """
        raise NotImplementedError

    def per_example(self, module: nn.Module, feat: Any, g: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-example gradients ``φ_{c,n}``: ``{local name: (C, N, *param_shape)}``.

        Parameters
        ----------
        module, feat, g
            The module, its :meth:`features` of the batch and ``g`` ``(C, N, *output_shape)``.
        """
        raise NotImplementedError

    def per_example_into(self, module: nn.Module, feat: Any, g: torch.Tensor,
                         outs: dict[str, torch.Tensor]) -> None:
        """Write per-example gradients into ``outs[name]``, without :meth:`per_example`'s copies.

        Parameters
        ----------
        module, feat, g
            The module, its :meth:`features` of the batch and ``g`` ``(C, N, *output_shape)``.
        outs : dict of str to torch.Tensor
            Views of shape ``(C, N, *param_shape)``, for the parameters wanted.
        """
        pe = self.per_example(module, feat, g)
        for k, dst in outs.items():
            dst.copy_(pe[k])

    # ---- defaults built on per_example ---------------------------------------
    def _chunks(self, module: nn.Module, g: torch.Tensor) -> Iterator[slice]:
        c, n = g.shape[0], g.shape[1]
        numel = sum(getattr(module, p).numel() for p in self.params(module))
        step = max(1, CHUNK_ELEMENTS // max(1, n * numel))
        for i in range(0, c, step):
            yield slice(i, min(c, i + step))

    def flat_per_example(self, module: nn.Module, feat: Any, g: torch.Tensor) -> torch.Tensor:
        """Per-example gradients flattened and concatenated: ``(C, N, P_layer)``.

        Parameters
        ----------
        module, feat, g
            The module, its :meth:`features` of the batch and ``g`` ``(C, N, *output_shape)``.
        """
        pe = self.per_example(module, feat, g)
        c, n = g.shape[0], g.shape[1]
        return torch.cat([pe[p].reshape(c, n, -1) for p in self.params(module)], dim=2)

    def grad_sum(self, module: nn.Module, feat: Any, g: torch.Tensor) -> dict[str, torch.Tensor]:
        """``Σ_n φ_{c,n}``: ``{local name: (C, *param_shape)}``.

        Parameters
        ----------
        module, feat, g
            The module, its :meth:`features` of the batch and ``g`` ``(C, N, *output_shape)``.
        """
        parts: dict[str, list[torch.Tensor]] = {}
        for sl in self._chunks(module, g):
            for k, v in self.per_example(module, feat, g[sl]).items():
                parts.setdefault(k, []).append(v.sum(1))
        return {k: torch.cat(v, 0) for k, v in parts.items()}

    def diag(self, module: nn.Module, feat: Any, g: torch.Tensor) -> dict[str, torch.Tensor]:
        """``Σ_{c,n} φ_{c,n}²`` (entrywise): ``{local name: param_shape}``.

        Parameters
        ----------
        module, feat, g
            The module, its :meth:`features` of the batch and ``g`` ``(C, N, *output_shape)``.
        """
        out: dict[str, torch.Tensor] = {}
        for sl in self._chunks(module, g):
            for k, v in self.per_example(module, feat, g[sl]).items():
                s = v.pow(2).sum((0, 1))
                out[k] = out[k] + s if k in out else s
        return out

    def sq_norms(self, module: nn.Module, feat: Any, g: torch.Tensor) -> torch.Tensor:
        """``‖φ_{c,n}‖²``: ``(C, N)``.

        Parameters
        ----------
        module, feat, g
            The module, its :meth:`features` of the batch and ``g`` ``(C, N, *output_shape)``.
        """
        parts = []
        for sl in self._chunks(module, g):
            pe = self.flat_per_example(module, feat, g[sl])
            parts.append(pe.pow(2).sum(-1))
        return torch.cat(parts, 0)

    def gram(self, module: nn.Module, feat1: Any, g1: torch.Tensor,
             feat2: Any, g2: torch.Tensor) -> torch.Tensor:
        """Layer contribution to the NTK: ``K[n, m, c, d] = ⟨φ¹_{c,n}, φ²_{d,m}⟩``, shape ``(N1, N2, C, D)``.

        Parameters
        ----------
        module : nn.Module
        feat1, g1, feat2, g2
            Features and ``g`` of the two batches (the same objects for one set with itself).
        """
        p1 = self.flat_per_example(module, feat1, g1)
        if g2 is g1 and feat2 is feat1:
            return per_example_gram(p1)
        p2 = self.flat_per_example(module, feat2, g2)
        return torch.einsum("cnp,dmp->nmcd", p1, p2)

    def gram_into(self, module: nn.Module, feat1: Any, g1: torch.Tensor, feat2: Any, g2: torch.Tensor,
                  out: torch.Tensor) -> None:
        """``out += gram(...)``: rules with a structured Gram accumulate in place (no
        per-layer ``(N1, N2, C, D)`` temporaries).

        Parameters
        ----------
        module : nn.Module
        feat1, g1, feat2, g2
            Features and ``g`` of the two batches (the same objects for one set with itself).
        out : torch.Tensor
            ``(N1, N2, C, D)``, any strides.
        """
        out += self.gram(module, feat1, g1, feat2, g2)

    # ---- Kronecker factors (optional: layers that define them support KFAC/EKFAC) ----------
    def kron_layout(self, module: Any) -> KronLayout | None:
        """The matrix layout of the parameters for KFAC/EKFAC, or None if not defined.

        Parameters
        ----------
        module : nn.Module
        """
        return None

    def kfac_factors(self, module: nn.Module, feat: Any, g: torch.Tensor, cols: torch.Tensor,
                     input_factor: bool = True, approx: str = "expand") -> tuple[torch.Tensor | None, torch.Tensor]:
        """Sums over the batch of the KFAC factors restricted to input columns ``cols``
        (``A``: ``(G, I, I)``, or ``(G, I)`` if diagonal; ``B``: ``(G, O, O)``). For a layer whose
        weight is shared over ``T`` positions (Eschenhagen et al., 2023, sec. 3):

        * ``approx="expand"`` (positions as extra examples; KFC's normalization):
          ``A = Σ_n Σ_t ã ãᵀ``, ``B = Σ_n Σ_c (1/T) Σ_t g gᵀ``;
        * ``approx="reduce"`` (positions reduced first): ``A = Σ_n â âᵀ`` with
          ``â = (1/T) Σ_t ã``, ``B = Σ_n Σ_c ĝ ĝᵀ`` with ``ĝ = Σ_t g``.

        Both are the same for ``T = 1``. ``input_factor=False``: ``A`` is not computed
        (``None``; later output blocks of a batch already counted). Rules whose factors do not
        depend on the positions' treatment ignore ``approx`` (after checking it). The callers
        add up what is returned over a batch's output blocks: a rule whose ``A`` depends on the
        output gradients returns it for every block (and its ``B`` accordingly).

        Parameters
        ----------
        module, feat, g
            The module, its :meth:`features` of the batch and ``g`` ``(C, N, *output_shape)``.
        cols : torch.Tensor
            The selected input columns (indices).
        input_factor : bool
            Compute ``A``.
        approx : {"expand", "reduce"}
            The treatment of the positions a weight is shared over.
        """
        raise NotImplementedError

    def kfe_diag(self, module: nn.Module, feat: Any, g: torch.Tensor, cols: torch.Tensor,
                 ua: torch.Tensor | None, ub: torch.Tensor) -> torch.Tensor:
        """``Σ_n Σ_c (U_Bᵀ G_{c,n} U_A)²`` entrywise (``(G, O, I)``): the squared per-example
        gradients in the Kronecker-factored eigenbasis (``ua=None``: identity).

        Parameters
        ----------
        module, feat, g
            The module, its :meth:`features` of the batch and ``g`` ``(C, N, *output_shape)``.
        cols : torch.Tensor
            The selected input columns.
        ua, ub : torch.Tensor
            The eigenbases ``U_A`` ``(G, I, I)`` (or None) and ``U_B`` ``(G, O, O)``.
        """
        raise NotImplementedError

    def dot(self, module: nn.Module, feat: Any, g: torch.Tensor,
            v: dict[str, torch.Tensor]) -> torch.Tensor:
        """``⟨φ_{c,n}, v⟩`` for a parameter-space vector ``v`` of this layer: ``(C, N)``.

        Parameters
        ----------
        module, feat, g
            The module, its :meth:`features` of the batch and ``g`` ``(C, N, *output_shape)``.
        v : dict of str to torch.Tensor
            ``{local name: param_shape}``.
        """
        parts = []
        for sl in self._chunks(module, g):
            pe = self.per_example(module, feat, g[sl])
            parts.append(cast(torch.Tensor, sum(torch.einsum("cn...,...->cn", pe[k], v[k]) for k in pe)))
        return torch.cat(parts, 0)


def sym_gram_into(a: torch.Tensor | None, r: torch.Tensor, c: int, out: torch.Tensor,
                   block: int = 256) -> None:
    """``out[n, m, c, d] += (a_n·a_m) (r_{nC+c}·r_{mC+d})`` for one set of examples (``a``: (N, I),
    or ``None`` for the plain Gram ``r_{nC+c}·r_{mC+d}``; ``r``: (N·C, O); ``out``: (N, N, C, C),
    any strides).

    The symmetric ``r rᵀ`` is computed by block rows of examples, only up to the diagonal
    (about half the flops), and each block is accumulated straight into ``out`` and, transposed,
    into its mirror: no ``(N·C)²`` temporary and no copies beyond one block."""
    n = r.shape[0] // c
    aa = None
    if a is not None:
        aa = a @ a.T
        if aa.dtype != out.dtype:
            aa = aa.to(out.dtype)
    k = max(1, -(-n * c // block)) if n * c > 2 * block else 1
    step = -(-n // k)
    for i0 in range(0, n, step):
        i1 = min(n, i0 + step)
        blk = r[i0 * c:i1 * c] @ r[:i1 * c].T  # block row: examples i0..i1 against 0..i1
        g4 = blk.view(i1 - i0, c, i1, c).permute(0, 2, 1, 3)  # (n, m, c, d)
        if g4.dtype != out.dtype:
            g4 = g4.to(out.dtype)
        mirror = g4[:, :i0].permute(1, 0, 3, 2)  # below the diagonal block: out[m, n, d, c] = G[n, m, c, d]
        if aa is None:
            out[i0:i1, :i1] += g4
            if i0 > 0:
                out[:i0, i0:i1] += mirror
        else:
            out[i0:i1, :i1].addcmul_(g4, aa[i0:i1, :i1, None, None])
            if i0 > 0:
                out[:i0, i0:i1].addcmul_(mirror, aa[:i0, i0:i1, None, None])


def per_example_gram(p: torch.Tensor) -> torch.Tensor:
    """``K[n, m, c, d] = ⟨p[c, n], p[d, m]⟩`` for per-example features ``p`` of shape ``(C, N, P)``,
    as an ``(N, N, C, C)`` tensor, using the symmetry (half the flops of the full product)."""
    c, n, q = p.shape
    out = torch.zeros(n, n, c, c, dtype=p.dtype, device=p.device)
    sym_gram_into(None, p.transpose(0, 1).reshape(n * c, q), c, out)  # rows n·C + c
    return out


@dataclass
class KronLayout:
    """How a layer's parameters form ``G`` matrices of shape ``(O, I)`` for Kronecker factorings.

    ``index[name]`` is a ``(G, O, I)`` LongTensor: at ``[γ, o, i]`` the flat offset inside
    parameter ``name`` of the entry at row ``o``, column ``i`` of group ``γ``'s matrix, or
    ``-1`` where another parameter sits (e.g. the bias column of a homogeneous Linear).
    The per-example gradient of group ``γ``'s matrix is ``Σ_t g_{t,γ} ã_{t,γ}ᵀ``, so its
    Fisher block is approximated by ``A_γ ⊗ B_γ`` (row-major ``(o, i)`` order:
    ``kron(B, A)``). ``diagonal_a``: the input factor is diagonal (one-hot inputs).
    """

    groups: int
    out: int
    inputs: int
    index: dict[str, torch.Tensor]
    diagonal_a: bool = False
