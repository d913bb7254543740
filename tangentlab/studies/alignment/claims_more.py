"""The claims of items 4-5 of the alignment study (paper 000 Figs. 4, 13, 14) and of the distance
to the infinite-width limit (:mod:`.limit`), over seeds, from the stored tables only (``R``: a
:class:`.claims.Results`). Items 1-3: :mod:`.claims`."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from ..framework.claims import Claim, all_hold, bootstrap_interval, decide, mean_interval, seed_claim, seeds_text
from .criteria import half_rise_step
from .limit import SLOPE_RANGE, training_series, width_fit, width_points

#: Fig. 14: "a similar drop of the effective rank ... but to a much (about 3 times) higher value"
#: for the smaller learning rate: the ratio of minimum eranks must be at least this.
LR_FACTOR = 2.0


def _ratio_max(R: Any, run: str) -> float:
    _, ce = R.series(run, "easy", "cka")
    _, cd = R.series(run, "difficult", "cka")
    return float((ce / np.maximum(np.abs(cd), 1e-12)).max()) if ce.size and cd.size else math.nan


def hierarchy_claims(R: Any) -> list[Claim]:
    """Item 4 (Fig. 4) over the seeds of each run: easy examples align faster (half-rise step of
    their CKA no later) and higher (max CKA_easy / max CKA_difficult > 1) than difficult ones."""
    claims: list[Claim] = []
    for run, what in (("hier_random", "random labels"), ("hier_other", "other dataset")):
        higher, faster = [], []
        for r in R.seeds(run):
            se, ce = R.series(r, "easy", "cka")
            sd, cd = R.series(r, "difficult", "cka")
            if ce.size and cd.size:
                higher.append(ce.max() / max(cd.max(), 1e-12))
                faster.append(half_rise_step(se, ce) <= half_rise_step(sd, cd))
        if not higher:
            continue
        m, lo, hi = mean_interval(higher)
        verdict = all_hold(decide(m, ">", 1.0, lo, hi), "yes" if all(faster) else "NO")
        claims.append(Claim(
            f"Fig. 4: easy vs difficult ({what})", "§3.4 / Fig. 4: \"the alignment to (train) labels increases "
            "faster and to a higher value for the easy examples\" (difficult: " + ("random-label MNIST" if what ==
            "random labels" else "KMNIST; its CKA also increases later") + ")",
            criterion="max CKA_easy / max CKA_difficult > 1 (mean over seeds and its 95% t-interval) and, in every "
            "seed, the half-rise step of CKA_easy ≤ that of CKA_difficult (both must hold)",
            measured=f"max-CKA ratio {seeds_text(higher)}; easy no later in {sum(faster)}/{len(faster)} seeds",
            kind="finding", value=m, low=lo, high=hi, part="item 4", verdict=verdict))
    return claims


def ablation_claims(R: Any) -> list[Claim]:
    """Item 5: the CKA_easy/CKA_diff ratio grows with depth (Fig. 13; Spearman ρ of the per-depth
    means, bootstrap over seeds); a smaller learning rate keeps a higher minimum effective rank
    (Fig. 14; ratio of means, bootstrap over seeds)."""
    claims: list[Claim] = []
    by: dict[int, list[float]] = defaultdict(list)
    for r in R.runs:
        if r.startswith("depth_"):
            v = _ratio_max(R, r)
            if math.isfinite(v):
                by[int(r.split("_")[1])].append(v)
    if len(by) >= 3:
        from scipy.stats import spearmanr

        depths = sorted(by)

        def rho(*groups: np.ndarray) -> float:
            return float(spearmanr(depths, [float(np.mean(g)) for g in groups]).statistic)

        est, lo, hi = bootstrap_interval(rho, *[by[d] for d in depths], seed=0)
        claims.append(Claim.compare(
            "Fig. 13: depth", "§3.5 / Fig. 13: \"the ratio of the maximum alignment between easy and difficult "
            "examples is increased with depth\"",
            "Spearman ρ(depth, mean over seeds of max CKA_easy/CKA_diff) > 0, with a 95% percentile-bootstrap "
            "interval resampling the seeds of each depth",
            "mean max ratio by depth: " + ", ".join(f"{d}: {np.mean(by[d]):.2f} ({len(by[d])} seeds)" for d in depths)
            + f"; ρ = {est:.2f}", est, ">", 0.0, low=lo, high=hi, part="item 5"))
    erank: dict[tuple[float, str], list[float]] = defaultdict(list)
    for r in R.runs:
        if r.startswith("lr_"):
            parts = r.split("_")
            _, er = R.series(r, "train", "erank")
            if er.size:
                erank[(float(parts[1]), parts[3])].append(er.min() / er[0])
    for nz in sorted({k[1] for k in erank}):
        lrs = sorted(k[0] for k in erank if k[1] == nz)
        if len(lrs) < 2:
            continue
        small, large = erank[(lrs[0], nz)], erank[(lrs[-1], nz)]
        est, lo, hi = bootstrap_interval(lambda a, b: float(np.mean(a) / np.mean(b)), small, large, seed=0)
        claims.append(Claim.compare(
            f"Fig. 14: learning rate ({nz}% noise)", "§3.5 / Fig. 14: with the learning rate reduced (0.01 → 0.003), "
            "\"a similar drop of the effective rank ... but to a much (about 3 times) higher value\"",
            f"mean min-erank/initial at lr {lrs[0]:g} ÷ that at lr {lrs[-1]:g} ≥ {LR_FACTOR:g} (\"about 3 times\" "
            "read as at least 2), 95% percentile-bootstrap interval resampling the seeds of each lr",
            "min erank / initial: " + ", ".join(f"lr {lr:g}: {np.mean(erank[(lr, nz)]):.3f}" for lr in lrs)
            + f"; ratio {est:.2f}", est, ">=", LR_FACTOR, low=lo, high=hi, part="item 5"))
    return claims


def limit_claims(store: Any, R: Any, runs: list[tuple[float, str]]) -> list[Claim]:
    """Part (a): the fitted log-log slope of the distance at initialization against the width lies
    in :data:`SLOPE_RANGE` (bootstrap over the seeds of each width); part (b): for each label-noise
    fraction ``(noise, name of seed 0)``, the train-probe distance grows during training (final /
    initial > 1 over the seeds)."""
    claims: list[Claim] = []
    pts = width_points(store)
    if len(pts) >= 2:
        widths = list(pts)

        def slope(*groups: np.ndarray) -> float:
            return width_fit({w: [(float(r), 0.0) for r in g] for w, g in zip(widths, groups)})[0]

        groups = [[r for r, _ in pts[w]] for w in widths]
        est, lo, hi = bootstrap_interval(slope, *groups, seed=0)
        means = {w: float(np.mean(g)) for w, g in zip(widths, groups)}
        a, b = SLOPE_RANGE
        claims.append(Claim.compare(
            "Distance to the limit at initialization", "(not in paper 000) the fluctuations of the empirical NTK "
            "around its infinite-width limit are O(1/√width) (Jacot et al. 2018; Hanin & Nica 2020): log-log slope "
            "−1/2", f"least-squares slope of log(‖K − Θ‖_F/‖Θ‖_F) on log(width) in [{a}, {b}], 95% percentile-"
            "bootstrap interval resampling the initializations of each width",
            f"slope {est:.3f}; mean distance {means[widths[0]]:.3g} at width {widths[0]} → {means[widths[-1]]:.3g} "
            f"at width {widths[-1]} ({min(len(g) for g in groups)}+ seeds per width)", est, "in", (a, b), low=lo,
            high=hi, part="limit"))
    for p, run in runs:
        growth = []
        for r in R.seeds(run):
            _, d = training_series(R, r)
            if d.size >= 2:
                growth.append(d[-1] / d[0])
        if growth:
            claims.append(seed_claim(
                f"Distance to the limit during training ({round(100 * p)}% random labels)", "(not in paper 000) "
                "feature learning moves the NTK away from the infinite-width NTK of the initial network (Chizat et "
                "al. 2019, lazy versus feature learning)", "train-probe ‖K_t − Θ‖_F/‖Θ‖_F at the last probe step / "
                "at step 0 > 1, mean over seeds and its 95% t-interval", "growth factor", growth, ">", 1.0,
                part="limit"))
    return claims
