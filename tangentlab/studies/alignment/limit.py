"""Distance to the infinite-width limit: how far the study's network is from the
kernel regime, at initialization across widths and during training.

Both parts compare the empirical NTK ``K`` of the model of items 2-5 (``tl.ntk``: the standard
parameterization, the module's own parameters) with the infinite-width NTK ``Θ`` of the same
architecture (:func:`tangentlab.limits.ntk` with ``parameterization="standard"``: the limit of
``K``, with each layer's weight and bias variances read from the initial parameters), on the
same probe inputs, both ``(N, N, C, C)``, through
:func:`tangentlab.analysis.limits.distance_to_limit`:

* ``rel_frobenius = ‖K − Θ‖_F / ‖Θ‖_F``;
* ``cka = CKA(K, Θ)`` (centering per output over the examples, the study's ``centering``).

**(a) At initialization across widths** (:func:`run_limit_widths`): for each hidden width of
``limit_widths`` and each of ``limit_seeds`` initializations, the distance on ``limit_n`` digits
test examples; table ``limit_width`` (``width, seed, rel_frobenius, cka``). The fluctuations of
the empirical NTK around its limit are ``O(1/√width)`` (Jacot et al. 2018; Hanin & Nica 2020,
whose corrections also grow with depth/width), so the fitted slope of ``log rel_frobenius``
against ``log width`` is about ``−1/2``.

**(b) During training** (:class:`LimitProbe`): at each probe step of the label-noise runs
(items 2-3), the distance of the current NTK to the limit ``Θ`` of the initial network, which
stays fixed; rows of the ``probes`` table with metrics ``rel_frobenius_limit`` and ``cka_limit``.
They reuse the NTK the probe computes anyway (no extra kernel pass). A network that learns
features moves its kernel away from ``Θ`` (Chizat et al. 2019, "lazy" versus feature learning).

A model with a layer that :mod:`tangentlab.limits` has no rule for (the ViT's attention) skips
both parts: :func:`limit_refusal` gives the reason, stored in the ``limit_skipped`` table and
printed in the report.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ... import limits
from ...analysis.limits import distance_to_limit, limit_probe
from ...errors import TangentlabError
from ..framework.data import Split
from ..framework.probes import ProbeResult, ProbeSet
from ..framework.report import FigureSpec, TableSpec
from ..framework.store import to_number
from .config import AlignmentConfig
from .models import make_model
from .vit import GroupedProbe

LIMIT_WIDTH_TABLE = "limit_width"
LIMIT_WIDTH_KEY = ["width", "seed"]
LIMIT_WIDTH_COLUMNS = [*LIMIT_WIDTH_KEY, "rel_frobenius", "cka"]
LIMIT_SKIP_TABLE = "limit_skipped"
LIMIT_SKIP_COLUMNS = ["part", "reason"]
#: the probe metrics of part (b): ``‖K_t − Θ‖_F / ‖Θ‖_F`` and ``CKA(K_t, Θ)``.
LIMIT_METRICS = ("rel_frobenius_limit", "cka_limit")
#: the claimed range of the fitted log-log slope at initialization (theory: −1/2).
SLOPE_RANGE = (-0.75, -0.25)


def wanted(cfg: AlignmentConfig) -> bool:
    """Whether the part runs: ``limit`` on and the label-noise runs of items 2-3 asked for."""
    return cfg.limit and bool(set(cfg.items) & {2, 3})


def limit_refusal(model: nn.Module, x: torch.Tensor) -> str | None:
    """``None`` when :mod:`tangentlab.limits` has a limit for ``model`` on inputs like ``x``, else
    its refusal (naming the layer without a rule); checked on the first two inputs."""
    try:
        limits.nngp(model, x[:2])
    except TangentlabError as e:
        return str(e)
    return None


def init_model(cfg: AlignmentConfig, split: Split, width: int, seed: int) -> nn.Module:
    """Initialization ``seed`` of the model of items 2-5 at hidden ``width``, in float64."""
    torch.manual_seed(cfg.seed + 1000 * seed + 63)
    return make_model(cfg.model, split.input_shape, split.n_classes, width, cfg.depth,
                      **cfg.model_kwargs()).to(torch.float64)


def limit_inputs(cfg: AlignmentConfig, split: Split) -> torch.Tensor:
    """The ``limit_n`` probe inputs of part (a): a seeded subset of the test split, float64."""
    g = torch.Generator().manual_seed(cfg.seed + 61)
    idx = torch.randperm(split.x_test.shape[0], generator=g)[:cfg.limit_n]
    return split.x_test[idx].to(torch.float64)


def run_limit_widths(store: Any, cfg: AlignmentConfig, split: Split, log: Callable[[str], None]) -> None:
    """Part (a): the distance to the limit at initialization for every ``(width, seed)`` of
    ``limit_widths × range(limit_seeds)`` not stored yet, on :func:`limit_inputs` (one row
    appended per initialization). A model without a limit rule stores the refusal instead."""
    x = limit_inputs(cfg, split)
    reason = limit_refusal(init_model(cfg, split, min(cfg.limit_widths), 0), x)
    if reason is not None:
        log(f"alignment: distance to the infinite-width limit skipped: {reason}")
        store.table(LIMIT_SKIP_TABLE, LIMIT_SKIP_COLUMNS, ["part"]).append(
            [{"part": "limit", "reason": f"{cfg.model_label}: {reason}"}])
        return
    table = store.table(LIMIT_WIDTH_TABLE, LIMIT_WIDTH_COLUMNS, LIMIT_WIDTH_KEY)
    done = {(int(k[0]), int(k[1])) for k in table.keys}
    for width in cfg.limit_widths:
        for seed in range(cfg.limit_seeds):
            if (width, seed) not in done:
                d = limit_probe(init_model(cfg, split, width, seed), x, parameterization="standard",
                                centering=cfg.centering_mode)
                table.append([{"width": width, "seed": seed, **d}])


class LimitProbe(GroupedProbe):
    """The probe of the label-noise runs with part (b): each evaluation also adds, for every probe
    set, the rows ``rel_frobenius_limit`` and ``cka_limit`` of the NTK it computed against the
    limit ``Θ`` of the reference (initial) network (:meth:`set_reference`)."""

    def __init__(self, probes: list[ProbeSet], **kwargs: Any):
        super().__init__(probes, **kwargs)
        self.limit: dict[str, Any] = {}
        self.found: dict[str, dict[str, float]] = {}

    def set_reference(self, model: nn.Module) -> None:
        """The reference of the kernel distance, and the limit NTK ``Θ`` of ``model`` (the initial
        network: its variances are read from its parameters) on each probe set."""
        super().set_reference(model)
        m = self._model(model)
        dev = next(m.parameters()).device
        self.limit = {p.name: limits.ntk(m, p.x.to(dev, self.dtype), parameterization="standard")
                      for p in self.probes}

    def kernel(self, model: nn.Module, probe: ProbeSet, per_layer: bool = False):
        """The raw NTK of :meth:`GroupedProbe.kernel`; its distance to ``Θ`` is kept for the rows."""
        K = super().kernel(model, probe, per_layer)
        if probe.name in self.limit:
            self.found[probe.name] = distance_to_limit(K, self.limit[probe.name], self.centering)
        return K

    def evaluate(self, model: nn.Module, step: int, vectors: bool = True) -> ProbeResult:
        """:meth:`GroupedProbe.evaluate`, then the two limit rows per probe set."""
        self.found = {}
        res = super().evaluate(model, step, vectors)
        for name, d in self.found.items():
            for metric, key in zip(LIMIT_METRICS, ("rel_frobenius", "cka"), strict=True):
                res.rows.append({"step": int(step), "probe": name, "metric": metric, "layer": "",
                                 "value": float(d[key])})
        return res


# ---- report -----------------------------------------------------------------------------------
def width_points(store: Any) -> dict[int, list[tuple[float, float]]]:
    """``width → [(rel_frobenius, cka) per seed]`` of the ``limit_width`` table."""
    out: dict[int, list[tuple[float, float]]] = {}
    for r in store.read(LIMIT_WIDTH_TABLE):
        out.setdefault(int(r["width"]), []).append((to_number(r["rel_frobenius"]), to_number(r["cka"])))
    return dict(sorted(out.items()))


def width_fit(points: dict[int, list[tuple[float, float]]]) -> tuple[float, float]:
    """``(slope, intercept)`` of the least-squares line ``log rel_frobenius ≈ slope · log width +
    intercept`` over every stored initialization (``nan`` with fewer than two widths)."""
    if len(points) < 2:
        return math.nan, math.nan
    w = [math.log(k) for k, v in points.items() for _ in v]
    d = [math.log(r) for v in points.values() for r, _ in v]
    slope, intercept = np.polyfit(w, d, 1)
    return float(slope), float(intercept)


def training_series(R: Any, run: str, probe: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """``(steps, rel_frobenius_limit)`` of ``run`` on ``probe`` (``R``: :class:`.claims.Results`)."""
    return R.series(run, probe, LIMIT_METRICS[0])


def limit_figures(store: Any, R: Any, runs: list[tuple[float, str]]) -> list[FigureSpec]:
    """Left: the distance at initialization against the width (log-log, every seed, the mean and
    the fitted line); right: the distance during the label-noise runs against the step."""
    pts = width_points(store)
    series = {run: training_series(R, run, pr) for _, run in runs for pr in ("train", "test")
              if training_series(R, run, pr)[1].size}
    if not pts and not series:
        return []

    def draw(fig: Any) -> None:
        ax1, ax2 = fig.subplots(1, 2)
        if pts:
            ws = np.array(list(pts), dtype=float)
            for w, v in pts.items():
                ax1.scatter([w] * len(v), [r for r, _ in v], s=10, color="C0", alpha=0.5)
            mean = np.array([np.mean([r for r, _ in v]) for v in pts.values()])
            ax1.plot(ws, mean, "o-", color="C0", label="mean over seeds")
            slope, intercept = width_fit(pts)
            if math.isfinite(slope):
                ax1.plot(ws, np.exp(intercept) * ws ** slope, "--", color="C1", label=f"fit: slope {slope:.2f}")
                ax1.plot(ws, mean[0] * (ws / ws[0]) ** -0.5, ":", color="gray", label="slope −1/2")
            ax1.set_xscale("log")
            ax1.set_yscale("log")
            ax1.set_xlabel("hidden width")
            ax1.set_ylabel("‖K − Θ‖_F / ‖Θ‖_F at initialization")
            ax1.legend(fontsize=8)
        for i, (_, run) in enumerate(runs):
            for pr, ls in (("train", "-"), ("test", "--")):
                s, d = training_series(R, run, pr)
                if d.size:
                    ax2.plot(s, d, ls, color=f"C{i}", label=f"{run} ({pr})")
        ax2.set_xscale("symlog", linthresh=1.0)
        ax2.set_yscale("log")
        ax2.set_xlabel("iteration")
        ax2.set_ylabel("‖K_t − Θ‖_F / ‖Θ‖_F")
        if series:
            ax2.legend(fontsize=8)

    return [FigureSpec("limit_distance", "Distance to the infinite-width NTK",
                       "Relative Frobenius distance between the empirical NTK K and the infinite-width NTK Θ of the "
                       "same architecture (tangentlab.limits, standard parameterization). Left: at initialization "
                       "against the hidden width (dots: seeds; dashed: least-squares fit in log-log; dotted: the "
                       "theoretical slope −1/2). Right: during the label-noise runs, Θ that of the initial network "
                       "(solid: train probe, dashed: test probe).", draw, (10, 3.8))]


def limit_tables(store: Any) -> list[TableSpec]:
    """Part (a) in the report: per width, the mean and the spread over seeds of both numbers."""
    pts = width_points(store)
    if not pts:
        return []
    rows = []
    for w, v in pts.items():
        r, c = np.array([a for a, _ in v]), np.array([b for _, b in v])
        rows.append({"width": w, "seeds": len(v), "rel_frobenius (mean ± sd)": f"{r.mean():.4f} ± {r.std():.4f}",
                     "CKA (mean ± sd)": f"{c.mean():.4f} ± {c.std():.4f}"})
    return [TableSpec("Distance to the infinite-width NTK at initialization", list(rows[0]), rows,
                      link=f"tables/{LIMIT_WIDTH_TABLE}.csv",
                      caption=f"‖K − Θ‖_F/‖Θ‖_F and CKA(K, Θ) on the probe inputs; fitted log-log slope "
                              f"{width_fit(pts)[0]:.3f} (theory: −1/2).")]


def skipped_notes(store: Any) -> list[str]:
    """The report lines of a skipped part (a model without a limit rule)."""
    return [f"Distance to the infinite-width limit: skipped, no infinite-width limit for {r['reason']}"
            for r in store.read(LIMIT_SKIP_TABLE)]
