"""A grammar of small float64 architectures, drawn by hypothesis strategies.

Three families, each a chain of blocks ending in a ``Linear`` head with ``C`` outputs:

* ``vector``: inputs ``(N, d)``; ``Linear``, elementwise activations, ``LayerNorm``,
  ``RMSNorm``, ``BatchNorm1d`` (eval, non-trivial running statistics), residual blocks
  ``h + f(h)``, a module called twice in one forward pass, the same module instance
  placed twice in the chain (a shared module) and two modules holding one weight (tied);
* ``conv``: inputs ``(N, C_in, L)`` or ``(N, C_in, H, W)``; ``Conv1d``/``Conv2d`` with random
  kernel, stride, padding (integers, ``'same'``, ``'valid'``), padding modes, dilation and
  groups, ``GroupNorm``, ``BatchNorm`` (eval), activations, optional adaptive average
  pooling, then ``Flatten``;
* ``tokens``: integer inputs ``(N, T)``; ``Embedding`` (with or without ``padding_idx``),
  ``LayerNorm``, ``Linear`` on sequences, ``nn.MultiheadAttention`` as a residual block,
  activations, then the mean over the sequence.

LayerNorm is drawn over two features or more: over one, its output ``0·weight + bias`` is
round-off in ``x − mean``, which a following RMSNorm (eps of machine precision) turns into
``±1``, a function whose derivatives are round-off too.

After the build, some parameters are frozen (``requires_grad=False``); at least one stays
trainable. Every candidate block is tried on dummy inputs and left out when its random
hyper-parameters do not fit the current shape, so no draw is rejected.

:func:`cases` draws a whole :class:`Case`: model, inputs, integer labels, the batch split
(a list of ``(x, y)`` batches of random sizes) and the kind of matrix (``raw``, ``exact``,
``empirical``, ``regression``, ``mc``, and ``binary`` for models with one output).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from hypothesis import strategies as st
from torch import nn

ACTIVATIONS = {
    "tanh": nn.Tanh,
    "relu": nn.ReLU,
    "gelu": nn.GELU,
    "sigmoid": nn.Sigmoid,
    "softplus": nn.Softplus,
    "silu": nn.SiLU,
    "elu": nn.ELU,
}


class Residual(nn.Module):
    """``h + f(h)``."""

    def __init__(self, f: nn.Module):
        super().__init__()
        self.f = f

    def forward(self, h):
        return h + self.f(h)


class Twice(nn.Module):
    """``f(f(h))``: one module called twice in a forward pass."""

    def __init__(self, f: nn.Module):
        super().__init__()
        self.f = f

    def forward(self, h):
        return self.f(torch.tanh(self.f(h)))


class SelfAttention(nn.Module):
    """``h + MultiheadAttention(h, h, h)`` on ``(N, T, D)``."""

    def __init__(self, dim: int, heads: int, bias: bool):
        super().__init__()
        self.att = nn.MultiheadAttention(dim, heads, bias=bias, batch_first=True)

    def forward(self, h):
        return h + self.att(h, h, h, need_weights=False)[0]


class MeanOverSequence(nn.Module):
    def forward(self, h):
        return h.mean(1)


@dataclass
class Case:
    """One drawn problem."""

    family: str
    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    sizes: list[int]
    kind: str
    outputs: int
    seed: int = 0
    n_samples: int = 1
    variance: float = 1.0
    frozen: list[str] = field(default_factory=list)

    @property
    def batches(self) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """The data as a list of ``(x, y)`` batches of the drawn sizes."""
        out, start = [], 0
        for s in self.sizes:
            out.append((self.x[start:start + s], self.y[start:start + s]))
            start += s
        return out

    @property
    def n(self) -> int:
        return self.x.shape[0]

    def fim_options(self) -> dict:
        """Keywords of :func:`tangentlab.fim` for this kind."""
        if self.kind == "mc":
            return {"n_samples": self.n_samples, "seed": self.seed}
        if self.kind == "regression":
            return {"variance": self.variance}
        return {}

    def output(self):
        """The kind as an :class:`~tangentlab.outputs.OutputFunction` (for ntk/jacobian)."""
        from tangentlab import outputs

        if self.kind == "mc":
            return outputs.MonteCarloFisher(self.n_samples)
        if self.kind == "regression":
            return outputs.Regression(self.variance)
        if self.kind == "empirical":
            return outputs.EmpiricalFisher()
        return outputs.make_output(self.kind)

    def __repr__(self) -> str:  # what hypothesis prints for a falsifying example
        return (f"Case(family={self.family!r}, kind={self.kind!r}, N={self.n}, sizes={self.sizes}, "
                f"C={self.outputs}, n_samples={self.n_samples}, variance={self.variance}, seed={self.seed}, "
                f"frozen={self.frozen}, x.shape={tuple(self.x.shape)},\n  model={self.model})")


def _fits(block: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...] | None:
    """The output shape of ``block`` on dummy inputs of ``shape`` (batches of 1 and 2), or
    None when it does not run on them (e.g. a GroupNorm with one value per group)."""
    try:
        with torch.no_grad():
            block.double()(torch.randn((1, *shape), dtype=torch.float64))
            out = block(torch.randn((2, *shape), dtype=torch.float64))
    except Exception:  # noqa: BLE001 - an unfit random draw: the caller skips the block
        return None
    if out.numel() == 0 or not torch.isfinite(out).all():
        return None
    return tuple(out.shape[1:])


def _batchnorm(cls, c: int, draw) -> nn.Module:
    bn = cls(c, affine=draw(st.booleans()))
    with torch.no_grad():
        bn.running_mean.uniform_(-0.5, 0.5)
        bn.running_var.uniform_(0.5, 2.0)
        if bn.affine:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.5, 0.5)
    return bn.eval()


def _vector_block(draw, d: int, squares: list[nn.Linear]) -> tuple[nn.Module, int]:
    what = draw(st.sampled_from(["linear", "act", "layernorm", "rmsnorm", "batchnorm", "residual", "twice",
                                 "shared", "tied"]))
    if what == "linear":
        out = draw(st.integers(1, 5))
        return nn.Linear(d, out, bias=draw(st.booleans())), out
    if what == "act":
        return ACTIVATIONS[draw(st.sampled_from(sorted(ACTIVATIONS)))](), d
    if what == "layernorm" and d > 1:  # over one feature its output is round-off (test_found.py)
        return nn.LayerNorm(d, elementwise_affine=draw(st.booleans()), bias=draw(st.booleans())), d
    if what in ("rmsnorm", "layernorm"):
        return nn.RMSNorm(d, elementwise_affine=draw(st.booleans())), d
    if what == "batchnorm":
        return _batchnorm(nn.BatchNorm1d, d, draw), d
    square = [m for m in squares if m.in_features == d]
    if what == "shared" and square:
        return draw(st.sampled_from(square)), d
    lin = nn.Linear(d, d, bias=draw(st.booleans()))
    if what == "tied" and square:  # another module holding the same weight tensor
        lin.weight = draw(st.sampled_from(square)).weight
        return lin, d
    squares.append(lin)
    if what == "twice":
        return Twice(lin), d
    inner = nn.Sequential(lin, ACTIVATIONS[draw(st.sampled_from(sorted(ACTIVATIONS)))]())
    return Residual(inner), d


def _conv_block(draw, dim: int, shape: tuple[int, ...], first: bool = False) -> nn.Module:
    c = shape[0]
    what = "conv" if first else draw(st.sampled_from(["conv", "conv", "act", "groupnorm", "batchnorm"]))
    if what == "act":
        return ACTIVATIONS[draw(st.sampled_from(sorted(ACTIVATIONS)))]()
    if what == "groupnorm":
        groups = draw(st.sampled_from([g for g in (1, 2, 3) if c % g == 0]))
        return nn.GroupNorm(groups, c, affine=draw(st.booleans()))
    if what == "batchnorm":
        return _batchnorm(nn.BatchNorm1d if dim == 1 else nn.BatchNorm2d, c, draw)
    conv = nn.Conv1d if dim == 1 else nn.Conv2d
    groups = draw(st.sampled_from([g for g in (1, 2, 3) if c % g == 0]))
    out = groups * draw(st.integers(1, 2 if groups > 1 else 3))
    kernel = tuple(draw(st.integers(1, 3)) for _ in range(dim))
    dilation = draw(st.integers(1, 2))
    padding = draw(st.one_of(st.integers(0, 2), st.sampled_from(["same", "valid"])))
    stride = 1 if padding == "same" else draw(st.integers(1, 2))
    mode = draw(st.sampled_from(["zeros", "zeros", "reflect", "replicate", "circular"]))
    layer = conv(c, out, kernel if dim == 2 else kernel[0], stride=stride, padding=padding, dilation=dilation,
                 groups=groups, bias=draw(st.booleans()), padding_mode=mode)
    if draw(st.integers(0, 3)) == 0:  # an in-place ReLU on the conv's output (which autograd does not keep)
        return nn.Sequential(layer, nn.ReLU(inplace=True))
    return layer


def _token_block(draw, d: int) -> nn.Module:
    what = draw(st.sampled_from(["linear", "act", "layernorm", "attention", "residual"]))
    if what == "linear":
        return nn.Linear(d, d, bias=draw(st.booleans()))
    if what == "act":
        return ACTIVATIONS[draw(st.sampled_from(sorted(ACTIVATIONS)))]()
    if what == "layernorm":
        return nn.LayerNorm(d, elementwise_affine=draw(st.booleans()))
    if what == "attention":
        return SelfAttention(d, draw(st.sampled_from([h for h in (1, 2) if d % h == 0])), draw(st.booleans()))
    return Residual(nn.Sequential(nn.Linear(d, d), nn.Tanh()))


@st.composite
def architectures(draw, outputs: int):
    """``(family, model, make_inputs)``: a model with ``outputs`` outputs and a function
    ``make_inputs(n, generator)`` drawing ``n`` inputs of the right shape and dtype."""
    family = draw(st.sampled_from(["vector", "conv", "tokens"]))
    depth = draw(st.integers(0, 4))
    blocks: list[nn.Module] = []
    if family == "vector":
        d = draw(st.integers(1, 5))
        shape: tuple[int, ...] = (d,)
        squares: list[nn.Linear] = []
        for _ in range(depth):
            block, d2 = _vector_block(draw, shape[0], squares)
            if _fits(block, shape) is not None:
                blocks.append(block)
                shape = (d2,)
        blocks.append(nn.Linear(shape[0], outputs))
        in_shape = (d,)

        def make_inputs(n, g):
            return torch.randn((n, *in_shape), generator=g, dtype=torch.float64)

    elif family == "conv":
        dim = draw(st.sampled_from([1, 2]))
        in_shape = (draw(st.integers(1, 3)), *(draw(st.integers(3, 6)) for _ in range(dim)))
        shape = in_shape
        for i in range(depth + 1):
            block = _conv_block(draw, dim, shape, first=i == 0)
            new = _fits(block, shape)
            if new is None or min(new[1:]) < 1:
                continue
            blocks.append(block)
            shape = new
        if draw(st.booleans()):
            pool = (nn.AdaptiveAvgPool1d if dim == 1 else nn.AdaptiveAvgPool2d)(draw(st.integers(1, 2)))
            blocks.append(pool)
            shape = _fits(pool, shape)
        numel = 1
        for s in shape:
            numel *= s
        blocks += [nn.Flatten(), nn.Linear(numel, outputs)]

        def make_inputs(n, g):
            return torch.randn((n, *in_shape), generator=g, dtype=torch.float64)

    else:
        vocab, d, length = draw(st.integers(2, 8)), draw(st.integers(2, 4)), draw(st.integers(1, 4))
        padding_idx = draw(st.sampled_from([None, 0]))
        blocks.append(nn.Embedding(vocab, d, padding_idx=padding_idx))
        shape = (length, d)
        for _ in range(depth):
            block = _token_block(draw, d)
            if _fits(block, shape) is not None:
                blocks.append(block)
        blocks += [MeanOverSequence(), nn.Linear(d, outputs)]

        def make_inputs(n, g):
            return torch.randint(0, vocab, (n, length), generator=g)

    return family, nn.Sequential(*blocks).double().eval(), make_inputs


def _freeze(draw, model: nn.Module) -> list[str]:
    named = list(model.named_parameters())
    frozen = [name for name, _ in named if draw(st.integers(0, 4)) == 0]
    if len(frozen) == len(named):
        frozen = frozen[:-1]
    for name, p in named:
        if name in frozen:
            p.requires_grad_(False)
    return frozen


@st.composite
def cases(draw, kinds: tuple[str, ...] = ("raw", "exact", "empirical", "regression", "mc")) -> Case:
    """A :class:`Case`: architecture, frozen parameters, data, batch split and kind."""
    kind = draw(st.sampled_from(list(kinds) + (["binary"] if "exact" in kinds else [])))
    if kind == "binary":
        c = 1
    elif kind in ("exact", "empirical", "mc"):
        c = draw(st.integers(2, 4))
    else:
        c = draw(st.integers(1, 4))
    seed = draw(st.integers(0, 2**16))
    torch.manual_seed(seed)
    family, model, make_inputs = draw(architectures(c))
    with torch.no_grad():  # larger weights than the default init: non-trivial curvature
        for p in model.parameters():
            if p.dim() > 1:
                p.mul_(1.5)
    frozen = _freeze(draw, model)
    n = draw(st.integers(1, 7))
    sizes: list[int] = []
    left = n
    while left:
        s = draw(st.integers(1, left))
        sizes.append(s)
        left -= s
    g = torch.Generator().manual_seed(seed)
    x = make_inputs(n, g)
    y = torch.randint(0, c, (n,), generator=g)
    return Case(family, model, x, y, sizes, kind, c, seed=seed,
                n_samples=draw(st.integers(1, 3)) if kind == "mc" else 1,
                variance=draw(st.sampled_from([0.5, 1.0, 2.0])) if kind == "regression" else 1.0,
                frozen=frozen)
