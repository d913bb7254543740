"""Item 11 of the alignment study: the complexity measure of item 7 over the number of channels of a
VGG (paper 000 Fig. 6 right, "a VGG19 on CIFAR10 as we vary the number of channels"), at CPU scale.

Data: ``channel_n_train`` digits training examples (a seeded subset) and the whole digits test set,
8×8 images upsampled bilinearly to 32×32 (the VGG's five 2×2 max-pools need 32×32). Model: the
BN-free VGG11 of :func:`tangentlab.studies.framework.models.make_vgg` (one input channel) with base
width ``w ∈ channel_widths`` (its channels are ``64, 128, 256, 512`` scaled by ``w/64``; the paper:
VGG19, widths up to 4M parameters). SGD (``channel_lr``, momentum 0.9, batch ``channel_batch_size``)
until the full-training-set cross-entropy is ≤ ``channel_target_loss`` (paper: 0.01) or
``channel_max_epochs`` epochs. Along training, as in item 7 (:mod:`.complexity`),

    C = Σ_t ‖δw_t‖₂ · sqrt(Tr K_t),

with ``Tr K_t`` (uncentered NTK trace on the training set) estimated on ``channel_probe`` training
examples, scaled by ``n/|S'|``, and re-evaluated every ``channel_trace_every`` steps (the step norms
in between are summed with the last value). Baselines at the end of training (γ: 10th percentile
of the training margins; conv kernels read as ``out × (in·k·k)`` matrices): parameter count,
``‖w‖₂``, ``‖w − w₀‖₂``, ``Π‖W_l‖₂/γ``, ``Π‖W_l‖_F/γ`` and the Fisher–Rao norm. Neyshabur et al.
2019, the paper's other measure that follows the gap, is defined for two-layer nets and is not
computed here. The generalization gap is train accuracy − test accuracy.

Table ``channel_sweep`` (width × seed). Config fields: ``channel_widths``, ``channel_seeds``,
``channel_n_train``, ``channel_lr``, ``channel_batch_size``, ``channel_target_loss``,
``channel_max_epochs``, ``channel_probe``, ``channel_trace_every``, ``seed``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ...analysis.capacity import fisher_rao_norm, frobenius_product, kendall_tau, margins, ntk_trace, spectral_product
from ...training import BatchStream, train_step
from ..framework.claims import bootstrap_interval
from ..framework.data import load_dataset
from ..framework.models import make_vgg
from ..framework.report import Claim, FigureSpec, TableSpec
from ..framework.store import RunStore
from .appendix_common import missing, numeric_rows
from .complexity import _eval, _flat, _or_nan, shape_error

PART = "VGG channel sweep"
TABLE = "channel_sweep"
BASE = ("params", "l2", "dist_init", "spectral_product", "frobenius_product", "fisher_rao")
LABELS = {"C": "C = Σ‖δw‖·sqrt(Tr K)", "params": "parameter count", "l2": "‖w‖₂", "dist_init": "‖w − w₀‖₂",
          "spectral_product": "Π‖W‖₂ / γ", "frobenius_product": "Π‖W‖_F / γ", "fisher_rao": "Fisher–Rao norm"}
COLUMNS = ["width", "seed", "params", "epochs", "steps", "reached", "train_loss", "train_acc", "test_acc", "gap",
           "margin", "C", "C_norm", *BASE[1:], "seconds"]


def channel_data(cfg: Any) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The training subset and the test set, as ``(N, 1, 32, 32)`` images."""
    split = load_dataset("digits", int(cfg.seed), "image")
    n = min(int(cfg.channel_n_train), split.x_train.shape[0])
    idx = torch.randperm(split.x_train.shape[0], generator=torch.Generator().manual_seed(int(cfg.seed) + 17))[:n]

    def up(x: torch.Tensor) -> torch.Tensor:
        return nn.functional.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    return up(split.x_train[idx]), split.y_train[idx], up(split.x_test), split.y_test


def weight_matrices(model: nn.Module) -> list[torch.Tensor]:
    """The weights of every convolution (as ``out × in·k·k``) and Linear layer, in float64."""
    return [m.weight.detach().double().reshape(m.weight.shape[0], -1) for m in model.modules()
            if isinstance(m, (nn.Conv2d, nn.Linear))]


def train_and_measure(cfg: Any, width: int, seed: int,
                      data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]) -> dict[str, Any]:
    """Train one VGG11 of base width ``width`` to the target loss and measure C and the baselines."""
    t0 = time.perf_counter()
    x, y, xt, yt = data
    n = x.shape[0]
    base = int(cfg.seed) * 1000 + 700 + 37 * seed + width
    torch.manual_seed(base)
    model = make_vgg("vgg11", 1, 10, int(width))
    w0 = _flat(model)
    opt = torch.optim.SGD(model.parameters(), lr=float(cfg.channel_lr), momentum=0.9)
    stream = BatchStream(n, min(int(cfg.channel_batch_size), n), base + 1)
    k = min(int(cfg.channel_probe), n)
    probe = x[torch.randperm(n, generator=torch.Generator().manual_seed(base + 2))[:k]]
    every = max(1, int(cfg.channel_trace_every))
    C, trk, w_prev, step, epochs, reached = 0.0, math.nan, w0, 0, 0, False
    for epochs in range(1, int(cfg.channel_max_epochs) + 1):  # noqa: B007 (the count is stored)
        for _ in range(stream.steps_per_epoch):
            if step % every == 0:
                model.eval()
                trk = _or_nan(lambda: ntk_trace(model, probe) * n / k)
                model.train()
            idx = stream.next()
            train_step(model, opt, x[idx], y[idx])
            w_new = _flat(model)
            C += float((w_new - w_prev).norm()) * math.sqrt(trk)
            w_prev, step = w_new, step + 1
        model.eval()
        loss = _eval(model, x, y)[0]
        if not math.isfinite(loss):
            break
        if loss <= float(cfg.channel_target_loss):
            reached = True
            break
    model.eval()
    train_loss, train_acc, z = _eval(model, x, y)
    test_acc = _eval(model, xt, yt)[1]
    gamma = float(torch.quantile(margins(z, y), 0.1))
    g = gamma if gamma > 0 else math.nan
    ws = weight_matrices(model)
    w_final = _flat(model)
    return {"width": int(width), "seed": int(seed), "params": int(w0.numel()), "epochs": epochs, "steps": step,
            "reached": int(reached), "train_loss": train_loss, "train_acc": train_acc, "test_acc": test_acc,
            "gap": train_acc - test_acc, "margin": gamma, "C": C, "C_norm": C / n,
            "l2": float(w_final.double().norm()), "dist_init": float((w_final - w0).double().norm()),
            "spectral_product": spectral_product(ws) / g, "frobenius_product": frobenius_product(ws) / g,
            "fisher_rao": _or_nan(lambda: fisher_rao_norm(model, x)), "seconds": time.perf_counter() - t0}


def run_channel_sweep(store: RunStore, cfg: Any, log: Callable[[str], None]) -> None:
    """Every ``(width, seed)`` not yet in table ``channel_sweep`` (a run is written when complete)."""
    table = store.table(TABLE, COLUMNS, ["width", "seed"])
    done = {(int(r["width"]), int(r["seed"])) for r in numeric_rows(store, TABLE)}
    data = None
    for w in sorted(int(v) for v in cfg.channel_widths):
        for s in range(int(cfg.channel_seeds)):
            if (w, s) in done:
                continue
            data = data or channel_data(cfg)
            row = train_and_measure(cfg, w, s, data)
            table.append([row])
            log(f"alignment channel sweep: width {w} seed {s}: {row['params']} parameters, {row['epochs']} epochs "
                f"(target {'reached' if row['reached'] else 'NOT reached'}), gap {row['gap']:.3f}, C/n "
                f"{row['C_norm']:.3g}, {row['seconds']:.1f}s")


def _groups(store: RunStore) -> dict[int, list[dict[str, float]]]:
    out: dict[int, list[dict[str, float]]] = {}
    for r in numeric_rows(store, TABLE):
        out.setdefault(int(r["width"]), []).append(r)
    return dict(sorted(out.items()))


def _measure_stat(measure: str, fn: Callable[[list[float], list[float]], float]
                  ) -> Callable[..., float]:
    """``fn(seed means of measure, seed means of the gap)`` over the widths (one group per width)."""
    def stat(*groups: np.ndarray) -> float:
        return fn([float(np.mean([r[measure] for r in g])) for g in groups],
                  [float(np.mean([r["gap"] for r in g])) for g in groups])
    return stat


def channel_claims(store: RunStore, cfg: Any) -> list[Claim]:
    groups = _groups(store)
    paper = ("\"Our proposed complexity measure and the one by Neyshabur et al. 2018 are the only ones to correctly "
             "reflect the shape of the generalization gap\" (VGG19 on CIFAR10 as we vary the number of channels, "
             "trained to cross-entropy 0.01; paper Fig. 6 right)")
    if len(groups) < 3:
        return [missing("channels: C follows the gap's shape", paper, PART),
                missing("channels: C ranks widths as the gap", paper, PART)]
    gs = [np.array(g, dtype=object) for g in groups.values()]
    setup = (f"CPU analogue: VGG11 (BN-free) of base widths {', '.join(map(str, groups))} on {cfg.channel_n_train} "
             f"digits upsampled to 32×32, trained to cross-entropy {cfg.channel_target_loss:g}; "
             f"{min(len(g) for g in gs)}+ seeds per width; bootstrap resampling the seeds of each width")
    shapes = {m: _measure_stat(m, shape_error)(*gs) for m in ("C", *BASE)}
    finite = {m: v for m, v in shapes.items() if m != "C" and math.isfinite(v)}
    best = min(finite, key=finite.get) if finite else "params"

    def margin(*g: np.ndarray) -> float:
        return _measure_stat(best, shape_error)(*g) - _measure_stat("C", shape_error)(*g)

    v, lo, hi = bootstrap_interval(margin, *gs, seed=int(cfg.seed), n_boot=500)
    listing = ", ".join(f"{LABELS[m]} {s:.3f}" for m, s in shapes.items())
    out = [Claim.compare(
        "channels: C follows the gap's shape", paper,
        "shape error std_w(log measure − log gap) of C ≤ that of the best baseline (chosen on the point estimate "
        f"among {', '.join(LABELS[m] for m in BASE)}): their difference ≥ 0 over the bootstrap interval; {setup}",
        f"shape errors (seed means per width): {listing}; best baseline {LABELS[best]}, its margin over C {v:.3f} "
        f"[{lo:.3f}, {hi:.3f}]", v, ">=", 0.0, low=lo, high=hi, part=PART)]
    v, lo, hi = bootstrap_interval(_measure_stat("C", kendall_tau), *gs, seed=int(cfg.seed) + 1, n_boot=500)
    gaps = [float(np.mean([r["gap"] for r in g])) for g in gs]
    cs = [float(np.mean([r["C_norm"] for r in g])) for g in gs]
    out.append(Claim.compare(
        "channels: C ranks widths as the gap", paper,
        f"Kendall τ(C, gap) over the {len(gs)} widths (seed means) > 0 over the bootstrap interval; {setup}",
        f"τ = {v:.2f} [{lo:.2f}, {hi:.2f}]; gap per width {', '.join(f'{x:.3f}' for x in gaps)}; C/n per width "
        f"{', '.join(f'{x:.3g}' for x in cs)}", v, ">", 0.0, low=lo, high=hi, part=PART))
    rows = [r for g in groups.values() for r in g]
    missed = sum(1 for r in rows if not r["reached"])
    out.append(Claim.compare("channels: training target", f"all networks are trained until cross-entropy reaches "
                             f"{cfg.channel_target_loss:g} (paper Fig. 6; 0.01 in the paper)",
                             "fraction of the runs whose full-training-set cross-entropy reached the target within "
                             f"{cfg.channel_max_epochs} epochs ≥ 1 (a precondition of the comparison)",
                             f"{len(rows) - missed}/{len(rows)} runs reached it", (len(rows) - missed) / len(rows),
                             ">=", 1.0, part=PART))
    return out


def channel_tables(store: RunStore, cfg: Any) -> list[TableSpec]:
    rows = [r for g in _groups(store).values() for r in g]
    if not rows:
        return []
    return [TableSpec("VGG channel sweep (one row per width × seed)", COLUMNS, rows, link=f"tables/{TABLE}.csv",
                      caption="C = Σ_t ‖δw_t‖ sqrt(Tr K_t) along training, C_norm = C/n; baselines at the end of "
                              "training (γ: 10th percentile of the training margins); gap = train − test accuracy.")]


def channel_figures(store: RunStore, cfg: Any) -> list[FigureSpec]:
    groups = _groups(store)
    if len(groups) < 2:
        return []

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        ws = list(groups)

        def rel(m: str) -> np.ndarray:
            v = np.array([np.mean([r[m] for r in groups[w]]) for w in ws])
            return v / v[0] if v[0] > 0 else v * math.nan
        ax.plot(ws, rel("gap"), "k-", lw=3, label="generalization gap")
        ax.plot(ws, rel("C"), "o-", color="red", lw=2.5, label=LABELS["C"])
        for m in BASE:
            ax.plot(ws, rel(m), "o-", ms=3, lw=1, alpha=0.8, label=LABELS[m])
        ax.set_xscale("log", base=2)
        ax.set_yscale("log")
        ax.set_xlabel("VGG11 base width (channels of the first convolution)")
        ax.set_ylabel("value / value at the narrowest width")
        ax.legend(fontsize=7, loc="center left", bbox_to_anchor=(1.0, 0.5))

    return [FigureSpec("channel_sweep", "Fig. 6 (right): complexity measures over the VGG's channels",
                       "Each measure and the train−test accuracy gap (black) relative to the narrowest width (log "
                       "scale; a measure with the gap's shape follows the black curve up to a constant factor). Means "
                       "over seeds.", draw, (9.0, 4.2))]
