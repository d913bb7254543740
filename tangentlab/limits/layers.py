"""Per-layer propagation of the infinite-width (NNGP, NTK) pair through an ``nn.Sequential``.

Every hidden unit of a layer of infinite width is a Gaussian process over the inputs with
the same covariance, independent across units (Lee et al. 2018; Matthews et al. 2018); its
NTK is diagonal across units too (Jacot et al. 2018). A :class:`State` therefore holds one
covariance per pair of inputs, and per pair of spatial positions for convolutional features
(Novak et al. 2019, Arora et al. 2019):

* ``cross``: ``K[n, m, *T]`` between the inputs of a row block ``x_n`` and a column block
  ``x'_m``; ``ntk``: the NTK ``Θ`` in the same layout (``None`` while no parameter has been
  met: ``Θ = 0``);
* ``self1``, ``self2``: ``K[n, n, *T]`` of each block with itself, whose spatial diagonal
  gives the variances the activations need;
* ``T`` is empty for vector features, ``S`` (``"diagonal"`` form: only equal positions
  ``p = q``) or ``S + S`` (``"full"`` form: every pair of positions ``(p, q)``), with ``S``
  the spatial shape (``(L,)`` or ``(H, W)``).

Covariances are averages over channels: the input ``x`` of shape ``(N, C, *S)`` starts as
``K[n, m, p, q] = (1/C) Σ_c x[n, c, p] x'[m, c, q]`` (vectors: ``(1/d) x·x'``).

Rules (``A`` averages a kernel over a layer's receptive field; ``σ_w² = fan_in · Var(W)``,
``σ_b² = Var(b)``; ``Ṫ`` from :mod:`.kernels`):

* Linear / Conv: ``K ↦ σ_w² A(K) + σ_b²``; NTK parameterization ``Θ ↦ K' + σ_w² A(Θ)``,
  standard parameterization ``Θ ↦ fan_in · A(K) + [bias] + σ_w² A(Θ)``. For a convolution
  ``A(K)[p, q] = mean_δ K[s·p + d·δ − pad, s·q + d·δ − pad]`` over the kernel offsets ``δ``
  (the same offset on both sides: the weight is shared), zero outside the image; ``A`` maps
  the diagonal ``p = q`` to itself, so the diagonal form is closed under convolutions.
* activation ``φ``: ``K ↦ T(K)``, ``Θ ↦ Θ ⊙ Ṫ(K)``. The dual needs Gaussian
  pre-activations: the input must come from a Linear/Conv layer (through pooling, flatten,
  LayerNorm or Gaussian residual sums), not from another activation.
* average pooling: ``K[p, q] ↦ mean_{a, b} K[s·p + a − pad, s·q + b − pad]`` (independent
  offsets: it mixes positions, so it needs the full form), ``Θ`` alike; global average
  pooling ``K ↦ mean_{p, q} K[p, q]``.
* flatten: ``K ↦ mean_p K[p, p]`` (the average over the ``C·P`` flattened features).
* LayerNorm over the features of zero-mean units (after a Linear layer or an odd
  activation): ``K ↦ γ² K(x, x') / √(K(x, x) K(x', x')) + β²``,
  ``Θ ↦ γ² Θ / √(K(x, x) K(x', x')) + [γ] K(x, x') / √(K(x, x) K(x', x')) + [β]``
  (``γ²``, ``β²``: the mean squares of the module's affine parameters). The gain's term
  ``n(x)·n(x')`` (``n`` the normalized unit) is correlated with the slope of an activation
  that follows directly, where it becomes ``E[ψ(u)ψ(v)]``, ``ψ(u) = (u − β)/γ · φ'(u)``, in
  place of ``n·n' ⊙ Ṫ``.
* :class:`Residual` ``x + f(x)`` with ``f`` ending in a Linear or Conv layer (fresh
  zero-mean weights, so ``x`` and ``f(x)`` are uncorrelated): ``K ↦ K + f(K)``,
  ``Θ ↦ Θ + f(Θ)``; the sum is Gaussian (an activation may follow) when ``x`` is, i.e. on a
  stream of pre-activations.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from typing import Any, cast

import torch
from torch import nn

from ..errors import InvalidInputError, UnsupportedLayerError
from .kernels import QUADRATURE_ORDER, Dual, dual_for, scaled_slope_dual

__all__ = ["State", "Step", "Affine", "Activation", "Pool", "Flatten", "Norm", "Skip", "Residual",
           "plan", "initial_state", "run", "WidthWarning", "uses_pooling"]

Tensor = torch.Tensor


class WidthWarning(UserWarning):
    """A hidden layer cannot be widened meaningfully (e.g. width 1): the limit is another family's."""


class Residual(nn.Module):
    """``x ↦ x + block(x)``: a residual block whose infinite-width kernel is ``K + f(K)``.

    Parameters
    ----------
    block : nn.Module
        The residual branch ``f`` (same input and output shape).
    """

    def __init__(self, block: nn.Module):
        super().__init__()
        self.block = block

    def forward(self, x: Tensor) -> Tensor:
        """``x + block(x)``.

        Parameters
        ----------
        x : Tensor
            The block's input.
        """
        return x + self.block(x)


@dataclass
class State:
    """The (NNGP, NTK) pair of a tile of input pairs (see the module docstring)."""

    cross: Tensor
    ntk: Tensor | None
    self1: Tensor
    self2: Tensor
    spatial: tuple[int, ...]
    full: bool
    zero_mean: bool
    gain: tuple[Tensor, float, float] | None = None
    gaussian: bool = True
    track_ntk: bool = True

    def map(self, f: Callable[[Tensor, int], Tensor], **changes: Any) -> State:
        """Apply the linear map ``f(tensor, n_batch_dims)`` to every kernel of the state."""
        return replace(self, cross=f(self.cross, 2), ntk=None if self.ntk is None else f(self.ntk, 2),
                       self1=f(self.self1, 1), self2=f(self.self2, 1), gain=None, **changes)

    def variances(self) -> tuple[Tensor, Tensor]:
        """``K[n, n, p, p]`` of each block, ``(B, *S)``."""
        return _diagonal(self.self1, self), _diagonal(self.self2, self)


def _diagonal(k: Tensor, st: State) -> Tensor:
    if not st.full or not st.spatial:
        return k
    p = math.prod(st.spatial)
    return torch.diagonal(k.reshape(*k.shape[:-2 * len(st.spatial)], p, p), dim1=-2, dim2=-1) \
        .reshape(*k.shape[:-2 * len(st.spatial)], *st.spatial)


def _spread(v: Tensor, st: State, side: int, n_batch: int) -> Tensor:
    """Variances ``(B, *S)`` of one side, broadcastable against a kernel with ``n_batch`` batch dims."""
    d = len(st.spatial)
    if n_batch == 2:
        v = v[:, None] if side == 1 else v[None]
    if st.full and d:
        lead = v.shape[:v.dim() - d]
        v = v.reshape(*lead, *st.spatial, *([1] * d)) if side == 1 else v.reshape(*lead, *([1] * d), *st.spatial)
    return v


def _along(k: Tensor, dims: Sequence[int], kernel: int, stride: int, padding: int, dilation: int) -> Tensor:
    """Mean over ``a < kernel`` of ``k`` shifted by ``dilation·a`` jointly along ``dims`` (the same
    offset on every axis of ``dims``), zero-padded by ``padding`` and strided by ``stride``."""
    nd = k.dim()
    dims = [d % nd for d in dims]
    size = k.shape[dims[0]]
    out = (size + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
    if padding:
        pad = [0] * (2 * nd)
        for d in dims:
            pad[2 * (nd - 1 - d)] = pad[2 * (nd - 1 - d) + 1] = padding
        k = nn.functional.pad(k, pad)
    total: Tensor | None = None
    for a in range(kernel):
        idx = [slice(None)] * nd
        for d in dims:
            idx[d] = slice(dilation * a, dilation * a + stride * (out - 1) + 1, stride)
        piece = k[tuple(idx)]
        total = piece.clone() if total is None else total.add_(piece)
    assert total is not None
    return total.div_(kernel)


def _window_mean(k: Tensor, n_batch: int, sizes: Sequence[tuple[int, ...]], which: Sequence[int],
                 kernel: tuple[int, ...], stride: tuple[int, ...], padding: tuple[int, ...],
                 dilation: tuple[int, ...]) -> tuple[Tensor, tuple[int, ...]]:
    """Mean over the offsets ``δ`` of a window of ``k`` shifted jointly in the copies ``which``.

    ``k`` has ``n_batch`` batch dims then one group of spatial dims per copy (sizes
    ``sizes[c]``); the copies in ``which`` are zero-padded, shifted by ``d·δ`` and strided by
    ``s``, the others left alone. The window is a product over spatial axes, so the mean is
    taken one axis at a time (:func:`_along`). Returns the averaged kernel and the new size.
    """
    d = len(kernel)
    out = tuple((sizes[which[0]][i] + 2 * padding[i] - dilation[i] * (kernel[i] - 1) - 1) // stride[i] + 1
                for i in range(d))
    if any(o < 1 for o in out):
        raise InvalidInputError(f"a window of size {kernel} does not fit the input of spatial size {sizes[which[0]]}")
    for i in range(d):
        k = _along(k, [n_batch + c * d + i for c in which], kernel[i], stride[i], padding[i], dilation[i])
    return k, out


class Step:
    """One layer's rule: ``apply(state, parameterization) -> state``."""

    name: str

    def apply(self, st: State, parameterization: str) -> State:  # pragma: no cover - interface
        raise NotImplementedError


@dataclass
class Affine(Step):
    """Linear (``dims = 0``) or Conv1d/Conv2d; ``weight_var = σ_w² = fan_in·Var(W)``, ``bias_var = σ_b²``."""

    name: str
    dims: int
    fan_in: int
    width: int
    weight_var: float
    bias_var: float
    bias: bool
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    dilation: tuple[int, ...] = ()

    def _average(self, st: State) -> Callable[[Tensor, int], Tensor]:
        if self.dims == 0:
            if st.spatial:
                raise UnsupportedLayerError(
                    f"layer {self.name!r}: a Linear layer on features with spatial dims {st.spatial} has no "
                    "limit here; flatten or pool first")
            return lambda k, nb: k
        if len(st.spatial) != self.dims:
            raise InvalidInputError(f"layer {self.name!r}: a {self.dims}-d convolution on features of spatial "
                                    f"shape {st.spatial}")
        copies = 2 if st.full else 1

        def avg(k: Tensor, nb: int) -> Tensor:
            return _window_mean(k, nb, [st.spatial] * copies, tuple(range(copies)), self.kernel, self.stride,
                                self.padding, self.dilation)[0]
        return avg

    def apply(self, st: State, parameterization: str) -> State:
        avg = self._average(st)
        spatial = st.spatial
        if self.dims:
            spatial = tuple((spatial[i] + 2 * self.padding[i] - self.dilation[i] * (self.kernel[i] - 1) - 1)
                            // self.stride[i] + 1 for i in range(self.dims))
        a_cross = avg(st.cross, 2)
        sw, sb = self.weight_var, (self.bias_var if self.bias else 0.0)
        cross = sw * a_cross + sb
        if not st.track_ntk:
            ntk = None
        elif parameterization == "ntk":
            ntk = cross if st.ntk is None else cross + sw * avg(st.ntk, 2)
        else:
            ntk = self.fan_in * a_cross + (1.0 if self.bias else 0.0)
            if st.ntk is not None:
                ntk = ntk + sw * avg(st.ntk, 2)
        return State(cross, ntk, sw * avg(st.self1, 1) + sb, sw * avg(st.self2, 1) + sb, spatial, st.full, True,
                     track_ntk=st.track_ntk)


@dataclass
class Activation(Step):
    """An elementwise activation with its dual map."""

    name: str
    dual: Dual
    order: int = QUADRATURE_ORDER

    def apply(self, st: State, parameterization: str) -> State:
        if not st.gaussian and self.dual.name != "identity":
            raise UnsupportedLayerError(
                f"layer {self.name!r}: its input is not a Gaussian process in the limit (an activation of "
                "activations, or a residual sum of them); put a Linear or Conv layer before it")
        v1, v2 = st.variances()
        a, b = _spread(v1, st, 1, 2), _spread(v2, st, 2, 2)
        cross, dot = self.dual(a, st.cross, b, st.ntk is not None)
        s1, _ = self.dual(_spread(v1, st, 1, 1), st.self1, _spread(v1, st, 2, 1), False)
        s2, _ = self.dual(_spread(v2, st, 1, 1), st.self2, _spread(v2, st, 2, 1), False)
        ntk = None if st.ntk is None or dot is None else st.ntk * dot
        if ntk is not None and st.gain is not None:  # a LayerNorm gain's term: forward and slope correlated
            term, shift, scale = st.gain
            if self.dual.homogeneous and shift != 0:
                raise UnsupportedLayerError(
                    f"layer {self.name!r}: a LayerNorm with a non-zero bias followed by {self.dual.name} has no NTK "
                    "limit rule here (LayerNorm's default initialization, bias 0, has one)")
            slope = scaled_slope_dual(self.dual, shift, scale, self.order)
            ntk = ntk - term * cast(Tensor, dot) + slope(a, st.cross, b)
        return replace(st, cross=cross, ntk=ntk, self1=s1, self2=s2, zero_mean=st.zero_mean and self.dual.odd,
                       gain=None, gaussian=self.dual.name == "identity")


@dataclass
class Pool(Step):
    """Average pooling (``kernel``/``stride``/``padding``), or adaptive to ``output`` (1 = global)."""

    name: str
    kernel: tuple[int, ...] = ()
    stride: tuple[int, ...] = ()
    padding: tuple[int, ...] = ()
    output: tuple[int, ...] | None = None

    def apply(self, st: State, parameterization: str) -> State:
        if not st.spatial:
            raise InvalidInputError(f"layer {self.name!r}: pooling needs spatial features")
        if not st.full:
            raise InvalidInputError(f"layer {self.name!r}: pooling mixes positions; use spatial='full'")
        d = len(st.spatial)
        kernel, stride, padding = self.kernel, self.stride, self.padding
        if self.output is not None:
            out = self.output if len(self.output) == d else self.output * d
            if any(s % o for s, o in zip(st.spatial, out, strict=True)):
                raise UnsupportedLayerError(f"layer {self.name!r}: adaptive pooling from {st.spatial} to {out} "
                                            "is not a uniform window; no limit rule")
            kernel = tuple(s // o for s, o in zip(st.spatial, out, strict=True))
            stride, padding = kernel, (0,) * d
        one = (1,) * d

        def pool(k: Tensor, nb: int) -> Tensor:
            k, new = _window_mean(k, nb, [st.spatial, st.spatial], (0,), kernel, stride, padding, one)
            return _window_mean(k, nb, [new, st.spatial], (1,), kernel, stride, padding, one)[0]

        new = tuple((st.spatial[i] + 2 * padding[i] - kernel[i]) // stride[i] + 1 for i in range(d))
        return st.map(pool, spatial=new)


@dataclass
class Flatten(Step):
    """``nn.Flatten()``: ``K ↦ mean_p K[p, p]`` (spatial features become a vector)."""

    name: str

    def apply(self, st: State, parameterization: str) -> State:
        if not st.spatial:
            return st
        d = len(st.spatial)

        def flat(k: Tensor, nb: int) -> Tensor:
            return _diagonal(k, st).mean(dim=tuple(range(nb, nb + d)))
        return st.map(flat, spatial=())


@dataclass
class Norm(Step):
    """LayerNorm over the feature vector (see the module docstring)."""

    name: str
    gamma2: float
    beta2: float
    gamma: bool
    beta: bool

    def apply(self, st: State, parameterization: str) -> State:
        if st.spatial:
            raise UnsupportedLayerError(f"layer {self.name!r}: LayerNorm over spatial features has no limit "
                                        "rule here; only over a feature vector")
        if not st.zero_mean:
            raise UnsupportedLayerError(
                f"layer {self.name!r}: LayerNorm after a non-odd activation (the units' mean across the layer "
                "is not zero) has no limit rule here; put it after a Linear layer or an odd activation")
        v1, v2 = st.self1, st.self2
        scale = torch.sqrt(v1[:, None] * v2[None])
        normed = st.cross / scale
        cross = self.gamma2 * normed + self.beta2
        ntk: Any = None if st.ntk is None else self.gamma2 * st.ntk / scale
        grads = (normed if self.gamma else 0) + (1.0 if self.beta else 0.0)  # ∂/∂γ_i = LN_i(x), ∂/∂β_i = 1
        if (self.gamma or self.beta) and st.track_ntk:
            ntk = grads if ntk is None else ntk + grads
        ones1, ones2 = torch.ones_like(v1), torch.ones_like(v2)
        gain = (normed, math.sqrt(self.beta2), math.sqrt(self.gamma2)) if self.gamma else None
        return replace(st, cross=cross, ntk=ntk, self1=self.gamma2 * ones1 + self.beta2,
                       self2=self.gamma2 * ones2 + self.beta2, zero_mean=self.beta2 == 0, gain=gain)


@dataclass
class Skip(Step):
    """A module that is the identity at evaluation (``nn.Identity``, ``nn.Dropout``)."""

    name: str

    def apply(self, st: State, parameterization: str) -> State:
        return st


@dataclass
class ResidualStep(Step):
    """:class:`Residual`: ``K ↦ K + f(K)``, ``Θ ↦ Θ + f(Θ)``."""

    name: str
    steps: list[Step]

    def apply(self, st: State, parameterization: str) -> State:
        if st.gain is not None and st.ntk is not None:
            raise UnsupportedLayerError(f"layer {self.name!r}: a residual block right after a LayerNorm with a gain "
                                        "has no NTK limit rule here; put a Linear layer in between")
        out = run(self.steps, st, parameterization)
        if out.cross.shape != st.cross.shape:
            raise InvalidInputError(f"layer {self.name!r}: the residual branch changes the feature shape "
                                    f"{st.spatial} -> {out.spatial}")
        ntk = st.ntk if out.ntk is None else (out.ntk if st.ntk is None else st.ntk + out.ntk)
        return replace(st, cross=st.cross + out.cross, ntk=ntk, self1=st.self1 + out.self1,
                       self2=st.self2 + out.self2, zero_mean=st.zero_mean and out.zero_mean,
                       gaussian=st.gaussian and out.gaussian)


def run(steps: Sequence[Step], st: State, parameterization: str) -> State:
    """Propagate ``st`` through ``steps``."""
    for step in steps:
        st = step.apply(st, parameterization)
    return st


def initial_state(x1: Tensor, x2: Tensor, full: bool, track_ntk: bool = True) -> State:
    """The input kernels: channel averages of products, ``(N, C, *S)`` or ``(N, d)`` inputs
    (``track_ntk=False``: the NNGP only, ``ntk`` stays ``None``)."""
    if x1.dim() < 2 or x1.shape[1:] != x2.shape[1:]:
        raise InvalidInputError(f"inputs of shapes {tuple(x1.shape)} and {tuple(x2.shape)}: expected (N, d) or "
                                "(N, C, *spatial) with equal trailing shapes")
    if x1.dim() == 2:
        d = x1.shape[1]
        return State(x1 @ x2.T / d, None, (x1 * x1).sum(1) / d, (x2 * x2).sum(1) / d, (), full, True,
                     track_ntk=track_ntk)
    spatial = tuple(x1.shape[2:])
    c = x1.shape[1]
    a, b = x1.reshape(*x1.shape[:2], -1), x2.reshape(*x2.shape[:2], -1)
    if full:
        cross = torch.einsum("ncp,mcq->nmpq", a, b) / c
        s1, s2 = torch.einsum("ncp,ncq->npq", a, a) / c, torch.einsum("ncp,ncq->npq", b, b) / c
        shape = spatial + spatial
    else:
        cross = torch.einsum("ncp,mcp->nmp", a, b) / c
        s1, s2 = (a * a).sum(1) / c, (b * b).sum(1) / c
        shape = spatial
    return State(cross.reshape(*cross.shape[:2], *shape), None, s1.reshape(-1, *shape), s2.reshape(-1, *shape),
                 spatial, full, True, track_ntk=track_ntk)


# --- from modules to steps -------------------------------------------------------------
_SUPPORTED = ("Linear, Conv1d, Conv2d (zeros padding, groups=1), ReLU, LeakyReLU, Erf, Tanh, GELU, Sigmoid, "
              "SiLU, Softplus, ELU, AvgPool1d/2d, AdaptiveAvgPool1d/2d, Flatten, LayerNorm, Identity, Dropout, "
              "nested nn.Sequential and tangentlab.limits.Residual")


def _tuple(v: Any, d: int) -> tuple[int, ...]:
    return tuple(int(a) for a in v) if isinstance(v, (tuple, list)) else (int(v),) * d


def _affine(name: str, mod: Any, variances: Callable[[str, nn.Module], tuple[float, float]]) -> Affine:
    sw, sb = variances(name, mod)
    if isinstance(mod, nn.Linear):
        return Affine(name, 0, mod.in_features, mod.out_features, sw, sb, mod.bias is not None)
    d = 1 if isinstance(mod, nn.Conv1d) else 2
    if mod.groups != 1 or mod.padding_mode != "zeros" or isinstance(mod, nn.modules.conv._ConvTransposeNd):
        raise UnsupportedLayerError(
            f"layer {name!r} ({type(mod).__name__}): only groups=1 and zero padding have a limit rule here")
    kernel, dilation = _tuple(mod.kernel_size, d), _tuple(mod.dilation, d)
    if mod.padding == "same":
        total = [dl * (k - 1) for k, dl in zip(kernel, dilation, strict=True)]
        if any(t % 2 for t in total):
            raise UnsupportedLayerError(f"layer {name!r}: padding='same' with an asymmetric pad has no limit rule")
        padding = tuple(t // 2 for t in total)
    elif mod.padding == "valid":
        padding = (0,) * d
    else:
        padding = _tuple(mod.padding, d)
    fan_in = mod.in_channels * math.prod(kernel)
    return Affine(name, d, fan_in, mod.out_channels, sw, sb, mod.bias is not None, kernel, _tuple(mod.stride, d),
                  padding, dilation)


def _pool(name: str, mod: nn.Module) -> Pool:
    if isinstance(mod, (nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
        out = mod.output_size
        if out is None or (isinstance(out, (tuple, list)) and None in out):
            raise UnsupportedLayerError(f"layer {name!r}: adaptive pooling needs an explicit output size")
        sizes = _tuple(out, 1) if not isinstance(out, (tuple, list)) else tuple(cast(Sequence[int], out))
        return Pool(name, output=sizes)
    d = 1 if isinstance(mod, nn.AvgPool1d) else 2
    if mod.ceil_mode or not mod.count_include_pad or getattr(mod, "divisor_override", None):
        raise UnsupportedLayerError(f"layer {name!r}: average pooling with ceil_mode, count_include_pad=False or "
                                    "divisor_override has no limit rule here")
    kernel = _tuple(mod.kernel_size, d)
    stride = _tuple(mod.stride if mod.stride is not None else mod.kernel_size, d)
    return Pool(name, kernel, stride, _tuple(mod.padding, d))


def plan(model: nn.Module, variances: Callable[[str, nn.Module], tuple[float, float]],
         order: int = QUADRATURE_ORDER) -> list[Step]:
    """The steps of ``model`` (an ``nn.Sequential`` tree or a single supported layer).

    ``variances(name, module)`` gives ``(σ_w², σ_b²)`` of each Linear/Conv layer. A module
    without a known limit raises :class:`~tangentlab.errors.UnsupportedLayerError` naming
    it; a hidden Linear/Conv layer of width 1 warns (:class:`WidthWarning`).
    """
    steps = _steps(model, "", variances, order)
    affines = _affines(steps)
    for a in affines[:-1]:
        if a.width == 1:
            warnings.warn(
                f"layer {a.name!r} has width 1: the network cannot be widened there, so the kernel returned is the "
                "limit of a different family (every hidden layer, this one included, of infinite width)",
                WidthWarning, stacklevel=3)
    return steps


def _affines(steps: Sequence[Step]) -> list[Affine]:
    out: list[Affine] = []
    for s in steps:
        if isinstance(s, Affine):
            out.append(s)
        elif isinstance(s, ResidualStep):
            out.extend(_affines(s.steps))
    return out


def uses_pooling(steps: Sequence[Step]) -> bool:
    """Whether a pooling step (which needs the full spatial covariance) occurs."""
    return any(isinstance(s, Pool) or (isinstance(s, ResidualStep) and uses_pooling(s.steps)) for s in steps)


def _steps(mod: nn.Module, name: str, variances: Callable[[str, nn.Module], tuple[float, float]],
           order: int) -> list[Step]:
    label = name or "<root>"
    if isinstance(mod, nn.Sequential):
        out: list[Step] = []
        for child, sub in mod.named_children():
            out.extend(_steps(sub, f"{name}.{child}" if name else child, variances, order))
        return out
    if isinstance(mod, Residual):
        inner = _steps(mod.block, f"{name}.block" if name else "block", variances, order)
        body = [s for s in inner if not isinstance(s, Skip)]
        if not body or not isinstance(body[-1], Affine):
            raise UnsupportedLayerError(f"layer {label!r}: a residual branch must end with a Linear or Conv layer "
                                        "(so that it is uncorrelated with its input in the limit)")
        return [ResidualStep(label, inner)]
    if isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d)):
        return [_affine(label, mod, variances)]
    if isinstance(mod, (nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d)):
        return [_pool(label, mod)]
    if isinstance(mod, nn.Flatten):
        if mod.start_dim != 1 or mod.end_dim != -1:
            raise UnsupportedLayerError(f"layer {label!r}: only nn.Flatten() over all non-batch dims has a limit rule")
        return [Flatten(label)]
    if isinstance(mod, (nn.Identity, nn.Dropout)):
        return [Skip(label)]
    if isinstance(mod, nn.LayerNorm):
        gamma, beta = mod.weight is not None, getattr(mod, "bias", None) is not None
        g2 = float(mod.weight.detach().pow(2).mean()) if gamma else 1.0
        b2 = float(mod.bias.detach().pow(2).mean()) if beta else 0.0
        return [Norm(label, g2, b2, gamma, beta)]
    dual = dual_for(mod, order)
    if dual is not None:
        return [Activation(label, dual, order)]
    raise UnsupportedLayerError(f"layer {label!r} ({type(mod).__name__}) has no known infinite-width limit; "
                                f"supported: {_SUPPORTED}")
