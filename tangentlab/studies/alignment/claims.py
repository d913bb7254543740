"""The claims of items 1-3 of the alignment study (paper 000 Figs. 1-3), computed from the stored
tables only, and :class:`Results`, the reader of those tables that the claims and the figures
share. Items 4-5 and the distance to the infinite-width limit: :mod:`.claims_more`.

Every finding is decided on the mean over the seeds of a run (``noise_seeds``, ``hier_seeds``,
``disk_seeds``: run ``name`` for seed 0, ``name_s<k>`` for seed ``k``) with its Student-t
interval (:func:`~tangentlab.studies.framework.claims.seed_claim`); the criteria and their thresholds are stated in each
claim and were fixed before the runs that decide them."""

from __future__ import annotations

import math
import re
from collections import defaultdict
from typing import Any

import numpy as np

from ..framework.claims import Claim, all_hold, decide, mean_interval, seed_claim, seeds_text
from ..framework.store import to_number
from .claims_more import ablation_claims, hierarchy_claims
from .config import AlignmentConfig
from .criteria import (
    drop_step,
    scaled_k,
    spectrum_distance,
    top_share,
)


class Results:
    """The stored tables of a run, indexed for the report: ``p`` (probe metrics), ``t`` (training
    metrics) as sorted ``(step, value)`` lists, ``spectra``, ``eig`` (disk eigenfunctions by
    step and component), ``pca``, ``labels`` (probe labels) and ``runs`` (in stored order)."""

    def __init__(self, store: Any):
        self.p: dict[tuple[str, str, str, str], list[tuple[int, float]]] = defaultdict(list)
        for r in store.read("probes"):
            self.p[(r["run"], r["probe"], r["metric"], r["layer"])].append((int(r["step"]), to_number(r["value"])))
        self.t: dict[tuple[str, str], list[tuple[int, float]]] = defaultdict(list)
        for r in store.read("training"):
            self.t[(r["run"], r["metric"])].append((int(r["step"]), to_number(r["value"])))
        self.spectra: dict[tuple[str, str, int], list[tuple[int, float]]] = defaultdict(list)
        for r in store.read("spectra"):
            self.spectra[(r["run"], r["probe"], int(r["step"]))].append((int(r["index"]), to_number(r["value"])))
        self.eig: dict[int, dict[int, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
        for r in store.read("eigenfunctions"):
            self.eig[int(r["step"])][int(r["component"])].append((int(r["point"]), to_number(r["value"])))
        self.pca: dict[tuple[str, str, int], dict[int, list[tuple[int, float]]]] = defaultdict(
            lambda: defaultdict(list))
        for r in store.read("pca"):
            self.pca[(r["run"], r["probe"], int(r["step"]))][int(r["component"])].append(
                (int(r["row"]), to_number(r["value"])))
        self.labels: dict[tuple[str, str], dict[int, int]] = defaultdict(dict)
        for r in store.read("probe_labels"):
            self.labels[(r["run"], r["probe"])][int(r["example"])] = int(r["label"])
        for d in (self.p, self.t):
            for k in d:
                d[k].sort()
        self.runs = list(dict.fromkeys(k[0] for k in self.p))

    @staticmethod
    def _arrays(pts: list[tuple[int, float]]) -> tuple[np.ndarray, np.ndarray]:
        return np.array([s for s, _ in pts], dtype=float), np.array([v for _, v in pts], dtype=float)

    def series(self, run: str, probe: str, metric: str, layer: str = "") -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` of one probe metric (``layer = ""``: the whole network)."""
        return self._arrays(self.p.get((run, probe, metric, layer), []))

    def train_series(self, run: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
        """``(steps, values)`` of one training metric."""
        return self._arrays(self.t.get((run, metric), []))

    def _layer_names(self, run: str, probe: str) -> list[str]:
        """The ``layer`` values of the per-layer CKA rows of ``probe``, in stored order (the probe
        writes them in network order)."""
        return [k[3] for k in self.p if k[0] == run and k[1] == probe and k[2] == "cka" and k[3]]

    def layers(self, run: str, probe: str) -> list[str]:
        """The layers with a per-layer CKA on ``probe``, in network order (module paths)."""
        return [name for name in self._layer_names(run, probe) if ":" not in name]

    def blocks(self, run: str, probe: str) -> list[str]:
        """The block parts with a CKA on ``probe`` (``"<block>:attention"``, ``"<block>:feed-forward"``:
        sums of layer kernels, see :mod:`.vit`), in network order."""
        return [name for name in self._layer_names(run, probe) if ":" in name]

    def has(self, run: str) -> bool:
        return run in self.runs

    def seeds(self, run: str) -> list[str]:
        """The stored runs of every seed of ``run``: ``run`` itself (seed 0) and ``run_s<k>``."""
        pat = re.compile(re.escape(run) + r"(_s\d+)?")
        return [r for r in self.runs if pat.fullmatch(r)]

    def spectrum(self, run: str, probe: str, step: int) -> np.ndarray:
        """The stored eigenvalues of ``probe`` at ``step`` of ``run``, in stored (decreasing) order."""
        return np.array([v for _, v in sorted(self.spectra.get((run, probe, step), []))], dtype=float)


def noise_runs(cfg: AlignmentConfig, R: Results) -> list[tuple[float, str]]:
    """``(noise fraction, run name)`` of the stored runs of items 2-3 (seed 0), in the order of
    ``cfg.noise``."""
    return [(p, f"noise_{round(100 * p)}") for p in cfg.noise if R.has(f"noise_{round(100 * p)}")]


def _fmt(v: float) -> str:
    return f"{v:.3g}" if math.isfinite(v) else "nan"


def _pct(p: float) -> str:
    return f"{round(100 * p)}% random labels"


#: paper 000 §3.2: "a drop of the effective rank early in training": half of the drop reached
#: within this fraction of the training steps.
EARLY_FRACTION = 0.1
#: paper 000 Fig. 2: the minimum erank relative to its initial value, by label-noise fraction.
ERANK_PAPER = {0.0: 0.10, 0.5: 0.20}
#: "strikingly similar spectra": the largest gap between the train and test trace-ratio curves.
SPECTRUM_GAP = 0.1
#: "much higher" test than train CKA: at least this factor.
MUCH_HIGHER = 1.5
#: λ20/λ1 "1.5% at iteration 0, 0.2% at iteration 2000" (factor 7.5): at least this factor.
ANISOTROPY_FACTOR = 5.0


def disk_claims(R: Results) -> list[Claim]:
    """Item 1 (Fig. 1) over the disk seeds: the grid kernel's anisotropy λ20/λ1 falls by the
    paper's order of magnitude, and its CKA with the disk labels rises."""
    runs = R.seeds("disk")
    r20 = [R.series(r, "grid", "ratio20")[1] for r in runs]
    r20 = [v for v in r20 if v.size]
    claims: list[Claim] = []
    if r20:
        claims.append(seed_claim(
            "Fig. 1: λ20/λ1 drop (disk grid)", "Fig. 1 / §3.1: an increasing anisotropy of the spectrum, "
            "\"λ20/λ1 = 1.5% at iteration 0, 0.2% at iteration 2000\" (a drop by a factor 7.5)",
            f"(λ20/λ1 at step 0) / (λ20/λ1 at the last step) ≥ {ANISOTROPY_FACTOR:g}, the mean over the disk seeds "
            "and its 95% t-interval (the paper's factor 7.5 with a margin for our smaller network: 2-64×5-1, "
            "30×30 grid)", "λ20/λ1 " + ", ".join(f"{100 * v[0]:.2f}% → {100 * v[-1]:.2f}%" for v in r20)
            + "; drop factor", [v[0] / v[-1] for v in r20], ">=", ANISOTROPY_FACTOR, part="item 1"))
    c = [R.series(r, "grid", "cka")[1] for r in runs]
    c = [v for v in c if v.size]
    if c:
        claims.append(seed_claim(
            "Fig. 1: CKA with the disk labels", "Fig. 1: \"after a number of iterations, we observe modes "
            "corresponding to the class structure (e.g. boundary circle) in the top eigenfunctions\": the kernel "
            "stretches along directions \"highly correlated with the classes\"",
            "CKA(K_grid, y yᵀ) at the last step / at step 0 ≥ 1.5 (a clear rise, not a drift), mean over the disk "
            "seeds and its 95% t-interval", "CKA " + ", ".join(f"{v[0]:.3f} → {v[-1]:.3f}" for v in c)
            + "; ratio", [v[-1] / v[0] for v in c], ">=", 1.5, part="item 1"))
    return claims


def noise_groups(cfg: AlignmentConfig, R: Results) -> list[tuple[float, list[str]]]:
    """``(noise fraction, [run of each seed])`` of the label-noise runs, in the order of ``cfg.noise``."""
    return [(p, R.seeds(run)) for p, run in noise_runs(cfg, R)]


def spectrum_claims(cfg: AlignmentConfig, R: Results) -> list[Claim]:
    """Item 2 (Fig. 2) for each label-noise fraction, over its seeds: the eigenvalues grow, the
    effective rank drops early and far, the top 4% of the eigenvalues hold most of the trace, the
    train and test spectra agree, and under label noise the erank rises again."""
    claims: list[Claim] = []
    r = cfg.n_probe * 10
    k = scaled_k(r)
    for p, runs in noise_groups(cfg, R):
        er = {run: R.series(run, "train", "erank") for run in runs}
        runs = [run for run in runs if er[run][1].size >= 2]
        if not runs:
            continue
        tag = _pct(p)
        gains = []
        for run in runs:
            lmax, lmean = R.series(run, "train", "max")[1], R.series(run, "train", "mean")[1]
            gains.append(min(math.log10(lmax.max() / lmax[0]), math.log10(lmean.max() / lmean[0])))
        claims.append(seed_claim(
            f"Fig. 2: eigenvalue growth ({tag})", "§3.2 / Fig. 2: \"by 100% training accuracy, λ_max and the mean "
            "eigenvalue have gained more than 2 orders of magnitude\"",
            "min(log10 gain of λ_max, log10 gain of the mean eigenvalue) > 2, gains = max over training / step 0 "
            "on the train probe; mean over seeds and its 95% t-interval", "orders of magnitude gained", gains, ">",
            2.0, part="item 2"))
        ratios = [er[run][1].min() / er[run][1][0] for run in runs]
        paper = ERANK_PAPER.get(round(p, 3))
        if paper is not None:
            claims.append(seed_claim(
                f"Fig. 2: erank < {round(100 * paper)}% ({tag})", "§3.2: the effective rank drops \"to less than "
                "10% of its initial value in our experiments with no random labels; less than 20% when half of the "
                "labels are randomized\" (VGG19 / CIFAR-10)", f"min erank / erank at step 0 (train probe) < "
                f"{paper:g}, mean over seeds and its 95% t-interval ({cfg.model_label} on {cfg.dataset}, N·C = {r})",
                "min erank / initial", ratios, "<", paper, part="item 2"))
        frac = [drop_step(*er[run]) / cfg.train_steps for run in runs]
        claims.append(seed_claim(
            f"Fig. 2: early erank drop ({tag})", "§3.2 / Fig. 2: \"a drop of the effective rank early in training\"",
            f"the step where the train-probe erank has made half of its drop (erank_0 − (erank_0 − min)/2), as a "
            f"fraction of the {cfg.train_steps} training steps, ≤ {EARLY_FRACTION:g} (fixed before the run: the "
            f"paper's drop happens within the first ~1% of its log-scale axis), mean over seeds and 95% t-interval",
            f"erank {er[runs[0]][1][0]:.1f} → min {er[runs[0]][1].min():.1f} (seed 0); half-drop step / steps",
            frac, "<=", EARLY_FRACTION, part="item 2"))
        shares = []
        for run in runs:
            steps = sorted({s for (rr, pr, s) in R.spectra if rr == run and pr == "train"})
            vals = [top_share(R.spectrum(run, "train", s), k) for s in steps]
            shares.append(max(vals) if vals else math.nan)
        claims.append(seed_claim(
            f"Fig. 2: top-{k} trace share ({tag})", "§3.2 / Fig. 2: \"the first top 40 eigenvalues (T40), over 1000 "
            "in total, accounting for more than 70% of the total trace\"",
            f"max over the probe steps of T_{k} (train probe) > 0.7, with k = {k} = 40/1000 of our N·C = {r} "
            "eigenvalues (the paper's fraction of the spectrum); mean over seeds and its 95% t-interval",
            f"max T_{k}", shares, ">", 0.7, part="item 2"))
        gaps = []
        for run in runs:
            steps = sorted({s for (rr, pr, s) in R.spectra if rr == run and pr == "train"})
            d = [spectrum_distance(R.spectrum(run, "train", s), R.spectrum(run, "test", s)) for s in steps
                 if (run, "test", s) in R.spectra]
            gaps.append(max(d) if d else math.nan)
        claims.append(seed_claim(
            f"Fig. 2: train vs test spectra ({tag})", "§3.2 / Fig. 2: train and test kernels have \"strikingly "
            "similar\" spectra (solid and dashed lines overlap)",
            f"the normalized spectra λ/Tr K of the train and the test probes compared: max over probe steps of "
            f"max_k |T_k(train) − T_k(test)| (Kolmogorov–Smirnov distance of the trace-ratio curves) < "
            f"{SPECTRUM_GAP:g}, mean over seeds and its 95% t-interval", "largest trace-ratio gap", gaps, "<",
            SPECTRUM_GAP, part="item 2"))
        if p > 0:
            claims.append(rebound_claim(R, runs, tag))
    return claims


def rebound_claim(R: Results, runs: list[str], tag: str) -> Claim:
    """Fig. 2 under label noise: the train-probe erank rises again (final / min > 1.2) while the
    test accuracy falls from its peak (by more than 0.02), both over the seeds."""
    rebound, drop = [], []
    for run in runs:
        er = R.series(run, "train", "erank")[1]
        acc = R.train_series(run, "test_accuracy")[1]
        rebound.append(er[-1] / er.min())
        drop.append(acc.max() - acc[-1] if acc.size else math.nan)
    m1, lo1, hi1 = mean_interval(rebound)
    m2, lo2, hi2 = mean_interval(drop)
    verdict = all_hold(decide(m1, ">", 1.2, lo1, hi1), decide(m2, ">", 0.02, lo2, hi2))
    return Claim(f"Fig. 2: erank rebound ({tag})", "§3.2: with high label noise the train-kernel erank, \"while "
                 "decreasing and remaining relatively low during the learning phase, begins to rise again when "
                 "overfitting starts (decrease of test accuracy)\"",
                 criterion="final erank / min erank > 1.2 and test accuracy peak − final > 0.02, each on the mean "
                 "over seeds with its 95% t-interval (both must hold)", measured=f"erank rebound "
                 f"{seeds_text(rebound)}; test-accuracy drop {seeds_text(drop)}", kind="finding", value=m1,
                 low=lo1, high=hi1, part="item 2", verdict=verdict)


def cka_claims(cfg: AlignmentConfig, R: Results) -> list[Claim]:
    """Item 3 (Fig. 3) over the seeds: CKA with the labels rises; with label noise the test CKA is
    much higher than the train CKA in the learning phase; intermediate layers align most and
    several exceed 0.5."""
    claims: list[Claim] = []
    groups = noise_groups(cfg, R)
    for p, runs in groups:
        runs = [run for run in runs if all(R.series(run, pr, "cka")[1].size for pr in ("train", "test"))]
        if not runs:
            continue
        tag = _pct(p)
        rise = [min(R.series(run, pr, "cka")[1].max() / R.series(run, pr, "cka")[1][0] for pr in ("train", "test"))
                for run in runs]
        claims.append(seed_claim(
            f"Fig. 3: CKA with labels ({tag})", "§3.3 / Fig. 3: \"an increasingly high CKA between the tangent "
            "kernel and the labels as training progresses\" (train and test batches)",
            "min over the train and test probes of (max CKA(K, YYᵀ) over training / CKA at step 0) ≥ 1.2, mean over "
            "seeds and its 95% t-interval", "rise factor", rise, ">=", 1.2, part="item 3"))
        if p > 0:
            ratio = []
            for run in runs:
                sa, tacc = R.train_series(run, "test_accuracy")
                peak = sa[int(np.argmax(tacc))] if tacc.size else math.inf
                sc, ctr = R.series(run, "train", "cka")
                _, cte = R.series(run, "test", "cka")
                phase = sc <= peak
                ratio.append(cte[phase].max() / ctr[phase].max())
            claims.append(seed_claim(
                f"Fig. 3: test vs train CKA ({tag})", "§3.3: \"in the presence of high level noise, the CKA reaches a "
                "much higher value during the learning phase (increase of test accuracy) for tangent kernels and "
                "labels evaluated for test than for train inputs\"",
                f"max test-probe CKA / max train-probe CKA up to the test-accuracy peak ≥ {MUCH_HIGHER:g} (\"much "
                "higher\"), mean over seeds and its 95% t-interval", "ratio", ratio, ">=", MUCH_HIGHER, part="item 3"))
    if groups:
        claims += layer_claims(R, *groups[0])
    return claims


def layer_claims(R: Results, p: float, runs: list[str]) -> list[Claim]:
    """Fig. 3 (layer-wise CKA) on the seeds of the first label-noise fraction."""
    per_seed = []
    for run in runs:
        layers = R.layers(run, "train")
        if len(layers) >= 3:
            per_seed.append([R.series(run, "train", "cka", la)[1].max() for la in layers])
    if not per_seed:
        return []
    tag = _pct(p)
    lead = [max(mx[1:-1]) - max(mx[0], mx[-1]) for mx in per_seed]
    second = [sorted(mx[1:-1])[-2] if len(mx) >= 4 else math.nan for mx in per_seed]
    shown = ", ".join(f"{v:.3f}" for v in per_seed[0])
    return [
        seed_claim(f"Fig. 3: intermediate layers align most ({tag})", "§3.3 / Fig. 3: the layer-wise CKA is high "
                   "for intermediate layers; \"the top layers are unexpectedly low\"",
                   "max over intermediate layers of the max layer CKA − max(first layer, last layer) > 0 (train "
                   "probe), mean over seeds and its 95% t-interval",
                   f"max CKA per layer, input → output (seed 0): {shown}; lead", lead, ">", 0.0, part="item 3"),
        seed_claim(f"Fig. 3: layer CKA > 0.5 ({tag})", "§3.3: \"we observe a high CKA, reaching more than 0.5 for a "
                   "number of intermediate layers\"",
                   "the second-highest max CKA (train probe) among the intermediate layers > 0.5, i.e. at least two "
                   "intermediate layers exceed 0.5; mean over seeds and its 95% t-interval",
                   "second-highest intermediate-layer CKA", second, ">", 0.5, part="item 3")]


def alignment_claims(cfg: AlignmentConfig, R: Results) -> list[Claim]:
    """The claims of items 1-5, in item order (items 6 and 7: :mod:`.supernat`, :mod:`.complexity`)."""
    return [*disk_claims(R), *spectrum_claims(cfg, R), *cka_claims(cfg, R), *hierarchy_claims(R),
            *ablation_claims(R)]
