"""Capacity (complexity) measures of trained networks and rank correlations with the
generalization gap (Baratin et al., "Implicit regularization via neural feature alignment",
AISTATS 2021, §4.2 and Fig. 6; thesis §6.4).

Notation: an MLP ``f(x) = W_L σ(… σ(W_1 x + b_1) …) + b_L`` with weight matrices
``W_l`` (``out × in``), ``n`` training examples stacked in ``X`` (``n × d``), ``c`` classes,
initial weights ``W_l⁰``, all parameters ``w`` (weights and biases) and margin ``γ``.

* :func:`ntk_trace` — ``Tr K = Σ_i Σ_y ‖∂f_y(x_i)/∂w‖²`` (uncentered NTK Gram on ``x``),
  from the engine as ``N · tr F_raw`` (``F_raw`` = mean over examples of ``JᵀJ``), never
  building ``K`` or a ``P × P`` matrix.
* Norm-type measures on the weight matrices (biases excluded unless stated):
  :func:`spectral_product` ``Π_l ‖W_l‖₂``; :func:`frobenius_product` ``Π_l ‖W_l‖_F``;
  :func:`path_norm` (ℓ2 path norm, Neyshabur et al. 2015)
  ``sqrt(Σ_paths Π_l W_l[path]²) = sqrt(1ᵀ (W_L∘W_L) ⋯ (W_1∘W_1) 1)``;
  :func:`bartlett_spectral` (Bartlett et al. 2017 with reference matrices ``W_l⁰``)
  ``Π_l ‖W_l‖₂ · (Σ_l (‖W_l − W_l⁰‖_{2,1} / ‖W_l‖₂)^{2/3})^{3/2}`` where ``‖A‖_{2,1}`` is
  the sum of the ℓ2 norms of the rows of ``A`` (the columns of ``Aᵀ`` in their notation);
  :func:`neyshabur2018` (Neyshabur et al., ICLR 2019, Thm. 1, for ``f = V relu(U x)``)
  ``(2√2 c + 2)/(γ n) · Σ_j ‖v_j‖₂ (‖u_j − u_j⁰‖₂ ‖X‖_F + ‖X u_j⁰‖₂)`` with ``u_j`` the
  j-th row of ``U`` and ``v_j`` the j-th column of ``V``.
* :func:`fisher_rao_norm` (Liang et al. 2019) ``sqrt(wᵀ F w)`` with ``F`` the exact softmax
  Fisher on the training inputs (mean over examples), by forward-mode products (engine
  ``representation="implicit"``).
* :func:`margins` — ``f_y(x) − max_{y'≠y} f_{y'}(x)``.
* :func:`kendall_tau` (τ-b, tie-corrected) and :func:`spearman_rho` (Pearson correlation of
  average ranks), written out so that they are independent of scipy (tests compare them).

All scalars are computed in float64 and returned as Python floats.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from ..errors import InvalidInputError


# ---------------------------------------------------------------------------------------------
# rank correlations
# ---------------------------------------------------------------------------------------------
def _vec(a: Sequence[float] | torch.Tensor) -> torch.Tensor:
    t = torch.as_tensor(a, dtype=torch.float64).reshape(-1)
    if not torch.isfinite(t).all():
        raise InvalidInputError("rank correlation of values with NaN or Inf")
    return t


def kendall_tau(a: Sequence[float] | torch.Tensor, b: Sequence[float] | torch.Tensor) -> float:
    """Kendall's τ-b: ``(n_c − n_d) / sqrt((n_0 − n_1)(n_0 − n_2))`` over all pairs, with
    ``n_0 = n(n−1)/2`` and ``n_1``, ``n_2`` the pairs tied in ``a``, in ``b``. NaN when either
    sequence is constant (or has fewer than 2 entries)."""
    x, y = _vec(a), _vec(b)
    if x.numel() != y.numel():
        raise InvalidInputError(f"rank correlation of sequences of lengths {x.numel()} and {y.numel()}")
    n = x.numel()
    iu = torch.triu_indices(n, n, offset=1)
    dx = torch.sign(x[iu[0]] - x[iu[1]])
    dy = torch.sign(y[iu[0]] - y[iu[1]])
    n0 = n * (n - 1) / 2
    n1 = float((dx == 0).sum())
    n2 = float((dy == 0).sum())
    denom = math.sqrt((n0 - n1) * (n0 - n2))
    return float((dx * dy).sum()) / denom if denom > 0 else math.nan


def average_ranks(a: Sequence[float] | torch.Tensor) -> torch.Tensor:
    """Ranks 1..n of ``a`` (float64), ties receiving the mean of the ranks they span."""
    x = _vec(a)
    order = torch.argsort(x, stable=True)
    ranks = torch.empty_like(x)
    xs = x[order]
    i = 0
    n = x.numel()
    while i < n:
        j = i
        while j + 1 < n and xs[j + 1] == xs[i]:
            j += 1
        ranks[order[i:j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def spearman_rho(a: Sequence[float] | torch.Tensor, b: Sequence[float] | torch.Tensor) -> float:
    """Spearman's ρ: the Pearson correlation of the average ranks (NaN if a rank vector is constant)."""
    ra, rb = average_ranks(a), average_ranks(b)
    if ra.numel() != rb.numel():
        raise InvalidInputError(f"rank correlation of sequences of lengths {ra.numel()} and {rb.numel()}")
    ra, rb = ra - ra.mean(), rb - rb.mean()
    denom = float(ra.norm() * rb.norm())
    return float(ra @ rb) / denom if denom > 0 else math.nan


# ---------------------------------------------------------------------------------------------
# model quantities
# ---------------------------------------------------------------------------------------------
def linear_layers(model: nn.Module) -> list[nn.Linear]:
    """The ``nn.Linear`` modules of ``model`` in registration (= forward, for Sequential) order."""
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    if not layers:
        raise InvalidInputError("the model has no Linear layer")
    return layers


def _weights(ws: Sequence[torch.Tensor] | nn.Module) -> list[torch.Tensor]:
    if isinstance(ws, nn.Module):
        return [m.weight.detach().to(torch.float64) for m in linear_layers(ws)]
    return [w.detach().to(torch.float64) for w in ws]


def ntk_trace(model: nn.Module, x: torch.Tensor, batch_size: int | None = None) -> float:
    """``Tr K = Σ_i Σ_y ‖∂f_y(x_i)/∂w‖²`` on the ``N`` inputs ``x``: ``N`` times the trace of
    the raw Gauss–Newton matrix ``(1/N) JᵀJ`` from the engine (exact, ``O(P)`` memory)."""
    from ..api import fim

    F = fim(model, x, kind="raw", representation="implicit", batch_size=batch_size, progress=False)
    return float(F.trace()) * int(x.shape[0])


def fisher_rao_norm(model: nn.Module, x: torch.Tensor, batch_size: int | None = None) -> float:
    """``sqrt(wᵀ F w)``, ``F`` the exact softmax Fisher ``(1/N) Σ_i E_{y~p(·|x_i)}[∇log p_y ∇log p_yᵀ]``
    at the current parameters ``w`` (all of them, biases included). Evaluated on a float64 copy
    of the model: a float32 net fitted to a small cross-entropy has saturated softmaxes whose
    closed-form Fisher factors lose all precision. NaN when a parameter is not finite."""
    import copy

    from ..api import fim
    from ..vectors import PVector

    if not all(bool(torch.isfinite(q).all()) for q in model.parameters()):
        return math.nan  # a diverged network
    m64 = copy.deepcopy(model).to(torch.float64)
    F = fim(m64, x.to(torch.float64), kind="exact", representation="implicit", batch_size=batch_size,
            progress=False)
    w = PVector.from_model(m64).detach()
    return math.sqrt(max(float(F.vTMv(w)), 0.0))


def margins(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Multiclass margins ``f_y(x) − max_{y'≠y} f_{y'}(x)`` (float64, shape ``(N,)``)."""
    if logits.dim() != 2 or logits.shape[1] < 2 or tuple(y.shape) != (logits.shape[0],):
        raise InvalidInputError(f"margins needs logits (N, C >= 2) and labels (N,), got {tuple(logits.shape)} "
                                f"and {tuple(y.shape)}")
    z = logits.detach().to(torch.float64)
    true = z.gather(1, y.view(-1, 1)).squeeze(1)
    other = z.scatter(1, y.view(-1, 1), -math.inf).max(1).values
    return true - other


def spectral_product(ws: Sequence[torch.Tensor] | nn.Module) -> float:
    """``Π_l ‖W_l‖₂`` (largest singular values)."""
    return math.prod(float(torch.linalg.matrix_norm(w, ord=2)) for w in _weights(ws))


def frobenius_product(ws: Sequence[torch.Tensor] | nn.Module) -> float:
    """``Π_l ‖W_l‖_F``."""
    return math.prod(float(torch.linalg.matrix_norm(w)) for w in _weights(ws))


def path_norm(ws: Sequence[torch.Tensor] | nn.Module) -> float:
    """ℓ2 path norm ``sqrt(Σ_{i_0, …, i_L} Π_l W_l[i_l, i_{l−1}]²) = sqrt(1ᵀ (W_L∘W_L) ⋯ (W_1∘W_1) 1)``."""
    w = _weights(ws)
    v = torch.ones(w[0].shape[1], dtype=torch.float64)
    for m in w:
        v = (m * m) @ v
    return math.sqrt(float(v.sum()))


def bartlett_spectral(ws: Sequence[torch.Tensor] | nn.Module, ws0: Sequence[torch.Tensor] | nn.Module) -> float:
    """Bartlett et al. (2017) spectral complexity with reference matrices ``W_l⁰``:
    ``Π_l ‖W_l‖₂ · (Σ_l (‖W_l − W_l⁰‖_{2,1} / ‖W_l‖₂)^{2/3})^{3/2}``, ``‖A‖_{2,1} = Σ_rows ‖A_r‖₂``."""
    w, w0 = _weights(ws), _weights(ws0)
    if len(w) != len(w0):
        raise InvalidInputError("bartlett_spectral: the two networks have different numbers of layers")
    specs = [float(torch.linalg.matrix_norm(m, ord=2)) for m in w]
    s = sum((float((m - m0).norm(dim=1).sum()) / sp) ** (2 / 3) for m, m0, sp in zip(w, w0, specs))
    return math.prod(specs) * s ** 1.5


def neyshabur2018(ws: Sequence[torch.Tensor] | nn.Module, ws0: Sequence[torch.Tensor] | nn.Module,
                  x: torch.Tensor, margin: float) -> float:
    """Neyshabur et al. (ICLR 2019) Thm. 1 capacity of a two-layer net ``V relu(U x)``:
    ``(2√2 c + 2)/(γ n) Σ_j ‖v_j‖₂ (‖u_j − u_j⁰‖₂ ‖X‖_F + ‖X u_j⁰‖₂)`` (``X``: ``n × d``)."""
    w, w0 = _weights(ws), _weights(ws0)
    if len(w) != 2 or len(w0) != 2:
        raise InvalidInputError(f"neyshabur2018 is defined for two-layer networks, got {len(w)} layers")
    (u, v), (u0, _) = w, w0
    X = x.detach().to(torch.float64).reshape(x.shape[0], -1)
    n, c = X.shape[0], v.shape[0]
    alpha = v.norm(dim=0)                      # ‖v_j‖, j over hidden units
    beta = (u - u0).norm(dim=1)                # ‖u_j − u_j⁰‖
    init = (X @ u0.T).norm(dim=0)              # ‖X u_j⁰‖ over the n examples
    total = float((alpha * (beta * X.norm() + init)).sum())
    return (2 * math.sqrt(2) * c + 2) / (margin * n) * total


def one_hidden_relu_ntk_trace(model: nn.Module, x: torch.Tensor) -> float:
    """Closed-form ``Tr K`` of ``f = W2 relu(W1 x + b1) + b2`` (a ``Sequential(Linear, ReLU,
    Linear)``): per example ``c (‖h‖² + 1) + Σ_y ‖W2[y, :] ∘ 1(z > 0)‖² (‖x‖² + 1)`` with
    ``z = W1 x + b1``, ``h = relu(z)``; used to check :func:`ntk_trace`."""
    layers = linear_layers(model)
    if len(layers) != 2 or layers[0].bias is None:
        raise InvalidInputError(f"one_hidden_relu_ntk_trace needs Linear-ReLU-Linear with a first-layer bias, got "
                                f"{len(layers)} Linear layers")
    l1, l2 = layers
    W1, b1 = l1.weight.detach().double(), l1.bias.detach().double()
    W2 = l2.weight.detach().double()
    X = x.detach().double().reshape(x.shape[0], -1)
    z = X @ W1.T + b1
    h = z.clamp_min(0)
    act = (z > 0).double()
    c = W2.shape[0]
    second = c * ((h * h).sum(1) + 1)
    first = (act @ (W2 * W2).sum(0)) * ((X * X).sum(1) + 1)
    return float((first + second).sum())
