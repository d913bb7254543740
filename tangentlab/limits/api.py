"""``nngp`` / ``ntk``: the infinite-width kernels of an ``nn.Module``, in the layout of ``tl.ntk``.

**Which family of networks.** A PyTorch ``Linear``/``Conv`` layer computes ``W x + b``; its
weights are drawn by its initialization scheme with a variance ``σ_w²/fan_in`` (PyTorch's
default ``kaiming_uniform_(a=√5)``: ``U(−1/√fan_in, 1/√fan_in)``, ``σ_w² = 1/3``; He:
``σ_w² = 2``) and its bias with a variance ``σ_b²``. The limit is that of the networks of the
same architecture whose hidden widths all grow, each layer keeping its ``(σ_w², σ_b²)``.
Unless given (``weight_var=``, ``bias_var=``: one number for every layer, or a mapping
``module path -> number``), they are read from the module's current parameters:
``σ_w² = fan_in · mean(W²)`` and ``σ_b² = mean(b²)`` (second moments about zero, the
variances of a zero-mean initialization), which are the scheme's values in expectation
over its random draws, whatever the scheme (PyTorch's defaults included). A default bias
variance ``1/(3·fan_in)`` is read as it is at the module's width (it vanishes as the width
grows: the limit of the family with the bias variance held fixed is returned).

**Parameterizations** (Jacot et al. 2018; Sohl-Dickstein et al. 2020, as neural-tangents
defines them). Both give the same function distribution, hence the same NNGP; the NTK is
taken with respect to different parameters:

* ``"ntk"``: ``W = σ_w ω / √fan_in``, ``b = σ_b β`` with ``ω, β ~ N(0, 1)``; the NTK with
  respect to ``(ω, β)`` has a finite limit, ``Θ' = K' + σ_w² A(Θ)`` per layer. Its empirical
  counterpart is :func:`empirical_ntk` (each layer's weight block of ``tl.ntk`` scaled by
  ``σ_w²/fan_in``, its bias block by ``σ_b²``).
* ``"standard"``: the module's own parameters ``(W, b)`` — exactly what ``tl.ntk(model, x)``
  computes. Each layer contributes ``fan_in · A(K) + 1`` (weights, bias), which grows with
  the width of its input: with every hidden width ``n_l = s · ν_l`` (``ν_l`` the module's
  own widths), ``Θ_s / s`` converges. The kernel returned is the limit evaluated at
  ``s = 1``: the widths enter explicitly as the module's ``fan_in``, so it is directly
  comparable with ``tl.ntk(model, x)`` (relative error ``O(1/√width)``).

**Layout.** The output units are independent and identically distributed in the limit, so
the kernel of a network with ``C`` outputs is ``K(x, x') ⊗ I_C``, returned as an
:class:`~tangentlab.FMatDense` of shape ``(N1, N2, C, C)`` like ``tl.ntk``'s.

**Convolutions.** ``spatial="full"`` propagates the covariance of every pair of positions
(Novak et al. 2019; Arora et al. 2019; ``P²`` entries per input pair), needed by average
pooling; ``"diagonal"`` only equal positions (``P`` per pair), exact for a network without
pooling (convolutions then ``Flatten`` and dense layers); ``"auto"`` picks the diagonal form
when no pooling layer occurs. Pairs of inputs are processed in ``block × block`` tiles.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, NamedTuple, cast

import torch
from torch import nn

from ..api import ntk as empirical_standard_ntk
from ..errors import InvalidInputError
from ..fmat import FMatDense
from .kernels import QUADRATURE_ORDER
from .layers import Affine, initial_state, plan, run, uses_pooling

__all__ = ["nngp", "ntk", "kernels", "empirical_ntk", "read_variances", "LimitKernels", "PARAMETERIZATIONS"]

PARAMETERIZATIONS = ("ntk", "standard")
SPATIAL = ("auto", "full", "diagonal")
_TILE_ENTRIES = 1 << 22  # kernel entries of one tile (pairs × positions)

Variance = float | Mapping[str, float] | None


class LimitKernels(NamedTuple):
    """The infinite-width NNGP and NTK on the same inputs (``(N1, N2, C, C)`` each)."""

    nngp: FMatDense
    ntk: FMatDense


def _fan_in(mod: nn.Module) -> int:
    w = cast(torch.Tensor, mod.weight)
    return int(w.shape[1] * math.prod(w.shape[2:]))


def _pick(given: Variance, path: str, read: Callable[[], float]) -> float:
    if isinstance(given, Mapping):
        return float(given[path]) if path in given else read()
    return read() if given is None else float(given)


def read_variances(model: nn.Module, weight_var: Variance = None, bias_var: Variance = None
                   ) -> dict[str, tuple[float, float]]:
    """``{module path: (σ_w², σ_b²)}`` of every Linear/Conv layer (see the module docstring).

    Read from the parameters as ``σ_w² = fan_in · mean(W²)``, ``σ_b² = mean(b²)`` (0 without
    bias) unless given: a number for every layer or a mapping ``path -> number``.

    Parameters
    ----------
    model : nn.Module
        The network.
    weight_var, bias_var : float or mapping, optional
        ``σ_w²`` / ``σ_b²``: one number for every layer or ``{module path: number}``; None:
        read from the module's parameters.

    Returns
    -------
    dict
        ``{module path: (σ_w², σ_b²)}``.

    Raises
    ------
    InvalidInputError
        A mapping names a module that is not a Linear/Conv layer of the model.
    """
    out: dict[str, tuple[float, float]] = {}
    for path, mod in model.named_modules():
        if isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            def sw(mod: Any = mod) -> float:
                return _fan_in(mod) * float(mod.weight.detach().double().pow(2).mean())

            def sb(mod: Any = mod) -> float:
                return float(mod.bias.detach().double().pow(2).mean()) if mod.bias is not None else 0.0

            out[path] = (_pick(weight_var, path, sw), _pick(bias_var, path, sb))
    for given, what in ((weight_var, "weight_var"), (bias_var, "bias_var")):
        if isinstance(given, Mapping):
            unknown = set(given) - set(out)
            if unknown:
                raise InvalidInputError(f"{what}: {sorted(unknown)} name no Linear/Conv layer of the model "
                                        f"(layers: {sorted(out)})")
    return out


def _prepare(model: nn.Module, x1: Any, x2: Any, weight_var: Variance, bias_var: Variance, spatial: str,
             order: int) -> tuple[list, torch.Tensor, torch.Tensor | None, bool, int]:
    if spatial not in SPATIAL:
        raise InvalidInputError(f"spatial={spatial!r}; accepted: {', '.join(SPATIAL)}")
    params = list(model.parameters())
    dtype = params[0].dtype if params else torch.get_default_dtype()
    device = params[0].device if params else None

    def tensor(x: Any, what: str) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or x.dim() < 2 or x.shape[0] == 0:
            raise InvalidInputError(f"{what}: expected a tensor (N, d) or (N, C, *spatial) with N >= 1")
        return x.detach().to(dtype=dtype, device=device)

    a = tensor(x1, "x1")
    b = None if x2 is None else tensor(x2, "x2")
    var = read_variances(model, weight_var, bias_var)
    paths = {id(m): p for p, m in model.named_modules()}
    steps = plan(model, lambda name, mod: var[paths[id(mod)]], order)
    pooled = uses_pooling(steps)
    if spatial == "diagonal" and pooled:
        raise InvalidInputError("spatial='diagonal': the model pools over positions, which needs spatial='full'")
    affines = [s for s in _flat(steps) if isinstance(s, Affine)]
    if not affines:
        raise InvalidInputError("the model has no Linear or Conv layer: it has no parameters to take a limit of")
    full = spatial == "full" or (spatial == "auto" and pooled)
    return steps, a, b, full, affines[-1].width


def _flat(steps: list) -> list:
    out = []
    for s in steps:
        out.append(s)
        out.extend(_flat(getattr(s, "steps", [])))
    return out


def _limit(model: nn.Module, x1: Any, x2: Any, want_ntk: bool, parameterization: str, weight_var: Variance,
           bias_var: Variance, spatial: str, order: int, block: int | None
           ) -> tuple[torch.Tensor, torch.Tensor | None, int, bool]:
    """``(K (N1, N2), Θ (N1, N2) or None, C, symmetric)``, tile by tile."""
    if parameterization not in PARAMETERIZATIONS:
        raise InvalidInputError(f"parameterization={parameterization!r}; accepted: 'ntk', 'standard'")
    steps, a, b, full, c = _prepare(model, x1, x2, weight_var, bias_var, spatial, order)
    symmetric = b is None
    b = a if b is None else b
    per_pair = math.prod(a.shape[2:]) ** (2 if full else 1) if a.dim() > 2 else 1
    if block is None:
        block = max(1, int(math.sqrt(_TILE_ENTRIES / per_pair)))
    n1, n2 = a.shape[0], b.shape[0]
    K = a.new_zeros(n1, n2)
    T = a.new_zeros(n1, n2) if want_ntk else None
    for i in range(0, n1, block):
        for j in range(0, n2, block):
            if symmetric and j + block <= i:
                continue  # filled from the mirrored tile
            st = run(steps, initial_state(a[i:i + block], b[j:j + block], full, want_ntk), parameterization)
            if st.spatial:
                raise InvalidInputError(f"the model's output has spatial shape {st.spatial}; end it with a pooling "
                                        "or Flatten and a Linear layer")
            K[i:i + block, j:j + block] = st.cross
            if T is not None:
                T[i:i + block, j:j + block] = st.ntk if st.ntk is not None else 0.0
            if symmetric and i != j:
                K[j:j + block, i:i + block] = st.cross.T
                if T is not None:
                    T[j:j + block, i:i + block] = (st.ntk if st.ntk is not None else st.cross * 0).T
    return K, T, c, symmetric


def _expand(k: torch.Tensor, c: int, symmetric: bool) -> FMatDense:
    """``k ⊗ I_C`` as ``(N1, N2, C, C)``."""
    eye = torch.eye(c, dtype=k.dtype, device=k.device)
    return FMatDense(k[:, :, None, None] * eye, symmetric=symmetric)


def nngp(model: nn.Module, x1: Any, x2: Any = None, *, weight_var: Variance = None, bias_var: Variance = None,
         spatial: str = "auto", order: int = QUADRATURE_ORDER, block: int | None = None) -> FMatDense:
    """The infinite-width NNGP kernel ``K(x, x') ⊗ I_C``: ``E[f(x) f(x')ᵀ]`` over the random
    initializations of ``model``'s architecture as its hidden widths grow.

    ``x1`` ``(N1, d)`` or ``(N1, C_in, *spatial)``; ``x2=None`` is ``x1``. ``weight_var`` /
    ``bias_var`` override ``σ_w²`` / ``σ_b²`` (number or ``{module path: number}``);
    ``spatial``: ``"auto"``, ``"full"`` or ``"diagonal"`` covariance over positions; ``order``:
    Gauss–Hermite nodes per axis for activations without a closed form; ``block``: tile size
    (pairs of examples per side). Returns an ``(N1, N2, C, C)`` :class:`~tangentlab.FMatDense`.

    Parameters
    ----------
    model : nn.Module
        An ``nn.Sequential``-style network of Linear/Conv layers, activations, pooling, Flatten,
        LayerNorm and :class:`Residual` blocks.
    x1 : torch.Tensor
        ``(N1, d)`` or ``(N1, C_in, *spatial)``.
    x2 : torch.Tensor, optional
        ``(N2, ...)``; None: ``x1`` with itself (symmetric).
    weight_var, bias_var : float or mapping, optional
        ``σ_w²`` / ``σ_b²``: one number for every layer or ``{module path: number}``; None:
        read from the module's parameters.
    spatial : {"auto", "full", "diagonal"}
        The covariance over positions of convolutional features.
    order : int
        Gauss–Hermite nodes per axis for activations without a closed form.
    block : int, optional
        Tile size (examples per side of a tile of input pairs).

    Returns
    -------
    FMatDense
        ``K ⊗ I_C``, ``(N1, N2, C, C)``.

    Raises
    ------
    UnsupportedLayerError
        A layer without a known limit (named).
    InvalidInputError
        Bad inputs or options.
    """
    K, _, c, sym = _limit(model, x1, x2, False, "ntk", weight_var, bias_var, spatial, order, block)
    return _expand(K, c, sym)


def ntk(model: nn.Module, x1: Any, x2: Any = None, *, parameterization: str = "ntk", weight_var: Variance = None,
        bias_var: Variance = None, spatial: str = "auto", order: int = QUADRATURE_ORDER,
        block: int | None = None) -> FMatDense:
    """The infinite-width NTK ``Θ(x, x') ⊗ I_C`` (``(N1, N2, C, C)``, as ``tl.ntk``).

    ``parameterization="ntk"``: the finite limit of the NTK with respect to the
    NTK-parameterized weights (compare with :func:`empirical_ntk`); ``"standard"``: the
    limit in the module's own parameters, widths explicit (compare with ``tl.ntk``). Other
    arguments as in :func:`nngp`.

    Parameters
    ----------
    model, x1, x2, weight_var, bias_var, spatial, order, block : as in :func:`nngp`
        The network, the inputs and the options of the propagation.
    parameterization : {"ntk", "standard"}
        The parameters the NTK is taken with respect to (see the module docstring).

    Returns
    -------
    FMatDense
        ``Θ ⊗ I_C``, ``(N1, N2, C, C)``.

    Raises
    ------
    UnsupportedLayerError
        A layer without a known limit (named).
    InvalidInputError
        Bad inputs or options.
    """
    _, T, c, sym = _limit(model, x1, x2, True, parameterization, weight_var, bias_var, spatial, order, block)
    assert T is not None
    return _expand(T, c, sym)


def kernels(model: nn.Module, x1: Any, x2: Any = None, *, parameterization: str = "ntk",
            weight_var: Variance = None, bias_var: Variance = None, spatial: str = "auto",
            order: int = QUADRATURE_ORDER, block: int | None = None) -> LimitKernels:
    """Both limits in one propagation: ``LimitKernels(nngp, ntk)``.

    Parameters
    ----------
    model, x1, x2, parameterization, weight_var, bias_var, spatial, order, block : as in :func:`ntk`
        One propagation computes both kernels.

    Returns
    -------
    LimitKernels
        ``(nngp, ntk)``, each ``(N1, N2, C, C)``.
    """
    K, T, c, sym = _limit(model, x1, x2, True, parameterization, weight_var, bias_var, spatial, order, block)
    assert T is not None
    return LimitKernels(_expand(K, c, sym), _expand(T, c, sym))


def empirical_ntk(model: nn.Module, x1: Any, x2: Any = None, *, parameterization: str = "ntk",
                  weight_var: Variance = None, bias_var: Variance = None, **ntk_kwargs: Any) -> FMatDense:
    """The finite network's NTK in the given parameterization, the counterpart of :func:`ntk`.

    ``"standard"``: ``tl.ntk(model, x1, x2)``. ``"ntk"``: the NTK with respect to
    ``ω = √fan_in W / σ_w`` and ``β = b / σ_b`` (the same network, NTK-parameterized):
    ``Θ = Σ_l (σ_w²/fan_in) J_{W_l} J_{W_l}ᵀ + σ_b² J_{b_l} J_{b_l}ᵀ`` plus the other parameters'
    blocks unscaled, from two ``tl.ntk`` calls with per-layer blocks (weights; the rest).
    ``ntk_kwargs`` go to ``tl.ntk``.

    Parameters
    ----------
    model : nn.Module
        The finite network.
    x1 : torch.Tensor
        ``(N1, d)`` or ``(N1, C_in, *spatial)``.
    x2 : torch.Tensor, optional
        ``(N2, ...)``; None: ``x1`` with itself (symmetric).
    parameterization : {"ntk", "standard"}
        The parameters the NTK is taken with respect to (see the module docstring).
    weight_var, bias_var : float or mapping, optional
        ``σ_w²`` / ``σ_b²``: one number for every layer or ``{module path: number}``; None:
        read from the module's parameters.
    **ntk_kwargs
        Passed to ``tl.ntk``.

    Returns
    -------
    FMatDense
        ``(N1, N2, C, C)``, as ``tl.ntk``.
    """
    if parameterization not in PARAMETERIZATIONS:
        raise InvalidInputError(f"parameterization={parameterization!r}; accepted: 'ntk', 'standard'")
    if parameterization == "standard":
        return empirical_standard_ntk(model, x1, x2, **ntk_kwargs)
    var = read_variances(model, weight_var, bias_var)
    modules = dict(model.named_modules())
    names = [n for n, p in model.named_parameters() if p.requires_grad]
    weights = [n for n in names if n.rpartition(".")[0] in var and n.rpartition(".")[2] == "weight"]
    rest = [n for n in names if n not in set(weights)]
    total: torch.Tensor | None = None
    for group in (weights, rest):
        if not group:
            continue
        Kg = empirical_standard_ntk(model, x1, x2, params=group, per_layer=True, **ntk_kwargs)
        assert Kg.layers is not None
        for path, blk in Kg.layers.items():
            if path in var:
                sw, sb = var[path]
                scale = sw / _fan_in(modules[path]) if group is weights else sb
            else:
                scale = 1.0
            total = scale * blk.data if total is None else total + scale * blk.data
    if total is None:
        raise InvalidInputError("the model has no parameter with requires_grad=True")
    return FMatDense(total, symmetric=x2 is None)
