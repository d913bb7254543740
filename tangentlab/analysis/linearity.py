"""How far training is from its linearization, and group-wise progress (thesis ch. 5).

Linearity metrics, evaluated on a fixed probe
set ``x`` against a reference model (usually the initialization ``θ₀``):

* **sign similarity** ``S_t = mean 1[relu_t(x) > 0 = relu_0(x) > 0]`` over every unit,
  spatial position and probe input of every ``nn.ReLU`` module (forward hooks);
* **tangent-kernel alignment** ``KA(K_t, K_0) = Tr[K_t K_0] / (‖K_t‖_F ‖K_0‖_F)``
  (uncentered, eq. 5.2.5) of the ``(N·C) × (N·C)`` empirical NTKs (``tl.ntk``);
* **representation alignment** ``KA(R_t R_tᵀ, R_0 R_0ᵀ)`` of the ``N × N`` Gram matrices of
  the last hidden representation ``R`` (the input of the last ``nn.Linear`` called), or of
  the ``d × d`` matrices ``RᵀR`` (``gram="features"``, the authors' code).

All three equal 1 for a model that has not moved and stay ≈ 1 in the lazy regime. For an
:class:`~tangentlab.linearize.AlphaScaled` model they are measured on the wrapped network
``f_θ`` (α-scaling multiplies the NTK by α², and KA is scale-invariant); a
:class:`~tangentlab.linearize.Linearized` model has, by construction, the features,
kernel and ReLU pattern of its base network at ``θ₀`` (all metrics exactly 1).

Group-wise tracking (§1.8): :func:`group_metrics` gives the mean loss and accuracy of each
group of examples (difficulty deciles, clean/noisy, with/without a spurious feature);
:func:`values_at_progress` reads a run's history at the first record whose *monotone*
progress variable (cumulative minimum of e.g. the mean training loss, or cumulative maximum
of an accuracy) crosses each threshold, and :func:`compare_at_progress` puts two runs
(non-linear vs linearized) side by side at equal progress.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from ..errors import InvalidInputError
from .kernels import kernel_alignment

__all__ = [
    "network", "relu_signs", "sign_similarity", "last_hidden_representation", "representation_gram",
    "representation_alignment", "ntk_matrix", "LinearityProbe", "per_example_loss", "group_metrics",
    "monotone", "first_crossing", "values_at_progress", "compare_at_progress",
]


def network(model: nn.Module) -> nn.Module:
    """The network whose features are measured: ``AlphaScaled → f_θ``, ``Linearized → f_{θ₀}``."""
    from ..linearize import AlphaScaled, Linearized

    if isinstance(model, AlphaScaled):
        return model.model
    if isinstance(model, Linearized):
        return model.base_model()
    return model


def _dtype(model: nn.Module) -> torch.dtype:
    p = next(model.parameters(), None)
    return p.dtype if p is not None else torch.get_default_dtype()


@torch.no_grad()
def _run_hooked(net: nn.Module, x: torch.Tensor, hooks: list) -> None:
    """One eval-mode forward pass of ``net`` on ``x`` with ``hooks`` registered; restores the train/eval
    mode and removes the hooks afterwards."""
    was = net.training
    try:
        net.eval()
        net(x.to(_dtype(net)))
    finally:
        net.train(was)
        for h in hooks:
            h.remove()


@torch.no_grad()
def relu_signs(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The activation pattern ``relu(·) > 0`` of every ``nn.ReLU`` call on ``x``, flattened (bool).

    Example-major within each call, calls in execution order. Raises when the network has no
    ``nn.ReLU`` module.
    """
    net = network(model)
    relus = [m for m in net.modules() if isinstance(m, nn.ReLU)]
    if not relus:
        raise InvalidInputError("sign similarity needs nn.ReLU modules; the model has none")
    outs: list[torch.Tensor] = []
    _run_hooked(net, x, [m.register_forward_hook(lambda _m, _i, o: outs.append((o > 0).reshape(-1)))
                         for m in relus])
    return torch.cat(outs)


def sign_similarity(signs_t: torch.Tensor, signs_0: torch.Tensor) -> float:
    """Fraction of ReLU units whose on/off status is the same in both patterns."""
    if signs_t.shape != signs_0.shape:
        raise InvalidInputError(f"sign patterns of different sizes {tuple(signs_t.shape)} and {tuple(signs_0.shape)}")
    return float((signs_t == signs_0).to(torch.float64).mean())


@torch.no_grad()
def last_hidden_representation(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``R`` ``(N, d)``: the input of the last ``nn.Linear`` called in a forward pass on ``x``."""
    net = network(model)
    linears = [m for m in net.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise InvalidInputError("representation alignment needs an nn.Linear output layer; the model has none")
    seen: list[torch.Tensor] = []
    _run_hooked(net, x, [m.register_forward_pre_hook(lambda _m, args: seen.append(args[0])) for m in linears])
    r = seen[-1]
    return r.reshape(r.shape[0], -1).to(torch.float64)


def representation_gram(R: torch.Tensor, gram: str = "examples") -> torch.Tensor:
    """``R Rᵀ`` (``gram="examples"``, ``N × N``) or ``Rᵀ R`` (``"features"``, ``d × d``)."""
    if gram == "examples":
        return R @ R.T
    if gram == "features":
        return R.T @ R
    raise InvalidInputError(f"gram: unknown {gram!r}; accepted: 'examples', 'features'")


def representation_alignment(R_t: torch.Tensor, R_0: torch.Tensor, gram: str = "examples") -> float:
    """``KA`` of the representation Gram matrices (see :func:`representation_gram`)."""
    return kernel_alignment(representation_gram(R_t, gram), representation_gram(R_0, gram))


def ntk_matrix(model: nn.Module, x: torch.Tensor, batch_size: int | None = None) -> torch.Tensor:
    """The ``(N·C) × (N·C)`` empirical NTK of the measured network on ``x`` (``tl.ntk``, rows ``n·C + c``)."""
    from ..api import ntk

    net = network(model)
    was = net.training
    net.eval()
    try:
        return ntk(net, x.to(_dtype(net)), batch_size=batch_size, progress=False).as_matrix()
    finally:
        net.train(was)


class LinearityProbe:
    """The three linearity metrics of a model on a fixed probe set, against a reference.

    ``reference`` (usually the model at initialization) is evaluated once at construction
    (ReLU pattern, last hidden representation, NTK); :meth:`measure` returns
    ``{"sign_similarity", "ntk_alignment", "representation_alignment"}`` for another model
    with the same architecture (``sign_similarity`` is ``nan`` without ReLU modules).
    ``metrics`` restricts what is computed.
    """

    METRICS = ("sign_similarity", "ntk_alignment", "representation_alignment")

    def __init__(self, reference: nn.Module, x: torch.Tensor, *, gram: str = "examples",
                 metrics: Sequence[str] = METRICS, batch_size: int | None = None):
        bad = [m for m in metrics if m not in self.METRICS]
        if bad:
            raise InvalidInputError(f"metrics: unknown {bad}; accepted: {', '.join(self.METRICS)}")
        representation_gram(torch.zeros(1, 1), gram)  # validates gram
        self.x, self.gram, self.metrics, self.batch_size = x, gram, tuple(metrics), batch_size
        net = network(reference)
        self.has_relu = any(isinstance(m, nn.ReLU) for m in net.modules())
        self.signs0 = relu_signs(net, x) if self.has_relu and "sign_similarity" in metrics else None
        self.R0 = last_hidden_representation(net, x) if "representation_alignment" in metrics else None
        self.K0 = ntk_matrix(net, x, batch_size) if "ntk_alignment" in metrics else None

    def measure(self, model: nn.Module) -> dict[str, float]:
        out: dict[str, float] = {}
        if "sign_similarity" in self.metrics:
            out["sign_similarity"] = (sign_similarity(relu_signs(model, self.x), self.signs0)
                                      if self.signs0 is not None else math.nan)
        if self.K0 is not None:
            out["ntk_alignment"] = kernel_alignment(ntk_matrix(model, self.x, self.batch_size), self.K0)
        if self.R0 is not None:
            out["representation_alignment"] = representation_alignment(
                last_hidden_representation(model, self.x), self.R0, self.gram)
        return out


# --- group-wise tracking -------------------------------------------------------------------
def per_example_loss(out: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-example loss and correctness ``(N,)`` of outputs ``out`` ``(N, C)``.

    Cross-entropy for ``C > 1`` (class labels); binary cross-entropy with logits for ``C = 1``
    (labels ``{0, 1}`` or ``±1``; a prediction is correct when ``sign(z)`` matches).
    """
    out = out.reshape(out.shape[0], -1)
    if out.shape[1] > 1:
        y = y.long()
        return (nn.functional.cross_entropy(out, y, reduction="none"),
                (out.argmax(1) == y).to(torch.float64))
    z = out[:, 0]
    pos = y.reshape(-1) > 0  # {0, 1} and ±1 labels alike
    t = pos.to(z.dtype)
    return (nn.functional.binary_cross_entropy_with_logits(z, t, reduction="none"),
            ((z > 0) == pos).to(torch.float64))


def group_metrics(out: torch.Tensor, y: torch.Tensor, groups: Mapping[str, Any]) -> dict[str, float]:
    """``{"loss/<g>", "accuracy/<g>"}``: mean per-example loss and accuracy over each group.

    ``groups`` maps a name to a boolean mask or an index tensor over the ``N`` examples; an
    empty group gives ``nan``.
    """
    loss, correct = per_example_loss(out, y)
    res: dict[str, float] = {}
    for name, sel in groups.items():
        sel = torch.as_tensor(sel)
        if sel.dtype == torch.bool and sel.shape[0] != loss.shape[0]:
            raise InvalidInputError(f"groups[{name!r}]: mask of length {sel.shape[0]}, expected {loss.shape[0]}")
        lv, cv = loss[sel], correct[sel]
        res[f"loss/{name}"] = float(lv.mean()) if lv.numel() else math.nan
        res[f"accuracy/{name}"] = float(cv.mean()) if cv.numel() else math.nan
    return res


def monotone(values: Sequence[float], decreasing: bool = True) -> np.ndarray:
    """Cumulative minimum (``decreasing``) or maximum of a progress variable (NaNs carried over)."""
    v = np.asarray(values, dtype=np.float64)
    v = np.where(np.isnan(v), np.inf if decreasing else -np.inf, v)
    return np.minimum.accumulate(v) if decreasing else np.maximum.accumulate(v)


def first_crossing(progress: Sequence[float], threshold: float, decreasing: bool = True) -> int | None:
    """Index of the first record whose progress is ``≤ threshold`` (``≥`` if not ``decreasing``)."""
    p = monotone(progress, decreasing)
    hit = np.nonzero(p <= threshold if decreasing else p >= threshold)[0]
    return int(hit[0]) if hit.size else None


def values_at_progress(history: Sequence[Mapping[str, Any]], progress_key: str, thresholds: Sequence[float],
                       keys: Sequence[str], decreasing: bool = True) -> list[dict[str, Any]]:
    """For each threshold, the values of ``keys`` at the first record of ``history`` (a list of
    dicts in training order) whose progress ``history[i][progress_key]`` crosses it; ``nan``
    (and ``index = None``) when the run never gets there."""
    prog = [float(r[progress_key]) for r in history]
    rows = []
    for th in thresholds:
        i = first_crossing(prog, th, decreasing)
        row: dict[str, Any] = {"threshold": float(th), "index": i}
        for k in keys:
            row[k] = float(history[i][k]) if i is not None else math.nan
        rows.append(row)
    return rows


def compare_at_progress(history_a: Sequence[Mapping[str, Any]], history_b: Sequence[Mapping[str, Any]],
                        progress_key: str, thresholds: Sequence[float], keys: Sequence[str],
                        decreasing: bool = True) -> list[dict[str, Any]]:
    """Rows ``{threshold, key, a, b, diff = a − b}`` comparing two runs at equal progress."""
    va = values_at_progress(history_a, progress_key, thresholds, keys, decreasing)
    vb = values_at_progress(history_b, progress_key, thresholds, keys, decreasing)
    rows = []
    for ra, rb in zip(va, vb, strict=True):
        for k in keys:
            rows.append({"threshold": ra["threshold"], "key": k, "a": ra[k], "b": rb[k], "diff": ra[k] - rb[k],
                         "index_a": ra["index"], "index_b": rb["index"]})
    return rows
