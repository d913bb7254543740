"""The claims of the alignment study (paper 000 Figs. 1-4, 13, 14), computed from the stored
tables only, and :class:`Results`, the reader of those tables that the claims and the figures
share."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

import numpy as np

from ..framework.report import Claim
from ..framework.store import to_number
from .config import AlignmentConfig
from .limit import SLOPE_RANGE, training_series, width_fit, width_points


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


def half_rise_step(steps: np.ndarray, values: np.ndarray) -> float:
    """First step where ``values`` reaches ``v_0 + (max − v_0)/2`` (``nan`` when empty)."""
    if values.size == 0:
        return math.nan
    if values.max() <= values[0]:
        return math.inf  # never rises
    target = values[0] + 0.5 * (values.max() - values[0])
    return float(steps[np.argmax(values >= target)])


def noise_runs(cfg: AlignmentConfig, R: Results) -> list[tuple[float, str]]:
    """``(noise fraction, run name)`` of the stored runs of items 2-3, in the order of ``cfg.noise``."""
    return [(p, f"noise_{round(100 * p)}") for p in cfg.noise if R.has(f"noise_{round(100 * p)}")]


def _fmt(v: float) -> str:
    return f"{v:.3g}" if math.isfinite(v) else "nan"


def disk_claims(R: Results) -> list[Claim]:
    """Item 1 (Fig. 1): the grid kernel's anisotropy λ20/λ1 falls and its CKA with the labels rises."""
    claims: list[Claim] = []
    if R.has("disk"):
        s, r20 = R.series("disk", "grid", "ratio20")
        if r20.size:
            claims.append(Claim("Fig. 1: λ20/λ1 (disk grid)", "λ20/λ1 decreases during training (paper: 1.5% → "
                                "0.2% at iteration 2000)",
                                f"{100 * r20[0]:.2f}% at step 0 → {100 * r20[-1]:.2f}% at step {int(s[-1])} "
                                f"(min {100 * r20.min():.2f}%)", bool(r20[-1] < r20[0])))
        s, c = R.series("disk", "grid", "cka")
        if c.size:
            claims.append(Claim("Fig. 1: CKA on the grid", "the kernel aligns with the disk labels (class "
                                "structure appears in the top eigenfunctions)",
                                f"CKA(K_grid, yyᵀ) {c[0]:.3f} → {c[-1]:.3f} (max {c.max():.3f})",
                                bool(c[-1] > c[0])))
    return claims


def spectrum_claims(cfg: AlignmentConfig, R: Results) -> list[Claim]:
    """Items 2-3 (Figs. 2, 3) for each label-noise run: the effective rank drops (and rebounds
    under label noise), the trace ratios and the eigenvalues grow, train and test spectra agree,
    the CKA with the labels rises (more on the clean test labels than on the noisy training ones);
    then the layer-wise CKA of the first run."""
    claims: list[Claim] = []
    runs = noise_runs(cfg, R)
    for p, run in runs:
        s, er = R.series(run, "train", "erank")
        if er.size < 2:
            continue
        ratio = er.min() / er[0]
        smin = int(s[np.argmin(er)])
        _, acc = R.train_series(run, "train_accuracy")
        claims.append(Claim(f"Fig. 2: erank drop ({round(100 * p)}% random labels)",
                            "the effective rank drops sharply early in training",
                            f"train probe erank {er[0]:.1f} → min {er.min():.1f} at step {smin} "
                            f"({100 * ratio:.1f}% of initial); final train accuracy "
                            f"{_fmt(acc[-1] if acc.size else math.nan)}", bool(ratio < 0.5)))
        paper = {0.0: 0.10, 0.5: 0.20}.get(round(p, 3))
        if paper is not None:
            claims.append(Claim(f"Fig. 2: erank < {round(100 * paper)}% ({round(100 * p)}% random labels)",
                                f"the minimum erank is below {round(100 * paper)}% of its initial value "
                                "(VGG19/CIFAR-10)", f"measured minimum {100 * ratio:.1f}% of initial "
                                f"({cfg.model_label} on {cfg.dataset}, N·C = {cfg.n_probe * 10})",
                                bool(ratio < paper)))
        ks = [k for k in cfg.ks if R.series(run, "train", f"T{k}")[1].size]
        if ks:
            grew = [(kk, R.series(run, "train", f"T{kk}")[1]) for kk in ks]
            claims.append(Claim(f"Fig. 2: trace ratios ({round(100 * p)}% random labels)",
                                "the top trace ratios T_k grow (top 40 of 1000 eigenvalues hold > 70% of the "
                                "trace)", "; ".join(f"T{kk} {v[0]:.3f} → max {v.max():.3f}" for kk, v in grew),
                                all(bool(v.max() > v[0]) for _, v in grew)))
        _, lmax = R.series(run, "train", "max")
        _, lmean = R.series(run, "train", "mean")
        claims.append(Claim(f"Fig. 2: eigenvalue growth ({round(100 * p)}% random labels)",
                            "λ_max and the mean eigenvalue gain more than 2 orders of magnitude",
                            f"λ_max ×{lmax.max() / lmax[0]:.3g}, mean ×{lmean.max() / lmean[0]:.3g} (max over "
                            "training / initial)", bool(lmax.max() / lmax[0] > 100 and lmean.max() / lmean[0] > 100)))
        st, ert = R.series(run, "test", "erank")
        if ert.size == er.size and ert.size:
            q = ert / er
            claims.append(Claim(f"Fig. 2: train vs test spectra ({round(100 * p)}%)",
                                "train and test kernels have strikingly similar spectra",
                                f"erank(test)/erank(train) between {q.min():.2f} and {q.max():.2f} over training",
                                bool(q.min() > 0.5 and q.max() < 2.0)))
        # item 3
        ckas = {pr: R.series(run, pr, "cka")[1] for pr in ("train", "test")}
        if all(v.size for v in ckas.values()):
            claims.append(Claim(f"Fig. 3: CKA with labels ({round(100 * p)}%)",
                                "CKA(K, YYᵀ) increases during training on the train and the test probes",
                                "; ".join(f"{pr} {v[0]:.3f} → max {v.max():.3f} (final {v[-1]:.3f})"
                                          for pr, v in ckas.items()),
                                all(bool(v.max() > 1.2 * v[0]) for v in ckas.values())))
            sa, tacc = R.train_series(run, "test_accuracy")
            if p > 0 and tacc.size:
                # the learning phase: up to the peak of the test accuracy (before overfitting)
                peak = sa[int(np.argmax(tacc))]
                sc, _ = R.series(run, "train", "cka")
                phase = sc <= peak
                mt, mtr = ckas["test"][phase].max(), ckas["train"][phase].max()
                claims.append(Claim(f"Fig. 3: test vs train CKA ({round(100 * p)}%)",
                                    "with label noise the test-batch CKA (clean labels) gets much higher than the "
                                    "train-batch CKA (noisy labels) in the learning phase",
                                    f"up to the test-accuracy peak (step {int(peak)}): max test CKA {mt:.3f} vs max "
                                    f"train CKA {mtr:.3f}; over the whole run {ckas['test'].max():.3f} vs "
                                    f"{ckas['train'].max():.3f}", bool(mt > mtr)))
        if p > 0:
            _, tacc = R.train_series(run, "test_accuracy")
            if tacc.size:
                rebound = er[-1] / er.min()
                drop = tacc.max() - tacc[-1]
                claims.append(Claim(f"Fig. 2: erank rebound ({round(100 * p)}%)",
                                    "under label noise the train-probe erank rises again when overfitting starts "
                                    "(test accuracy decreases)",
                                    f"erank min {er.min():.1f} (step {smin}) → final {er[-1]:.1f} (×{rebound:.2f}); "
                                    f"test accuracy peak {tacc.max():.3f} → final {tacc[-1]:.3f}",
                                    bool(rebound > 1.2 and drop > 0.02)))
    if runs:
        p, run = runs[0]
        layers = R.layers(run, "train")
        if len(layers) >= 3:
            mx = [R.series(run, "train", "cka", la)[1].max() for la in layers]
            mid = max(mx[1:-1])
            claims.append(Claim("Fig. 3: layer-wise CKA", "intermediate layers align most; the first and last "
                                "layers less", f"max CKA per layer (input → output, {round(100 * p)}% noise): "
                                + ", ".join(f"{v:.3f}" for v in mx), bool(mid > mx[0] and mid > mx[-1])))
    return claims


def hierarchy_claims(R: Results) -> list[Claim]:
    """Item 4 (Fig. 4): easy examples align faster and higher than difficult ones."""
    claims: list[Claim] = []
    for run, what in (("hier_random", "random labels"), ("hier_other", "other dataset")):
        if not R.has(run):
            continue
        se, ce = R.series(run, "easy", "cka")
        sd, cd = R.series(run, "difficult", "cka")
        if not (ce.size and cd.size):
            continue
        te, td = half_rise_step(se, ce), half_rise_step(sd, cd)
        ratio = ce / np.maximum(np.abs(cd), 1e-12)
        claims.append(Claim(f"Fig. 4: easy vs difficult ({what})",
                            "easy examples align faster and to a higher CKA than difficult ones",
                            f"max CKA easy {ce.max():.3f} vs difficult {cd.max():.3f}; half-rise step easy "
                            f"{te:.0f} vs difficult {td:.0f}; max ratio CKA_easy/CKA_diff {ratio.max():.2f}",
                            bool(ce.max() > cd.max() and te <= td)))
    return claims


def ablation_claims(R: Results) -> list[Claim]:
    """Item 5: the CKA_easy/CKA_diff ratio grows with depth (Fig. 13); a smaller learning rate
    keeps a higher minimum effective rank (Fig. 14)."""
    claims: list[Claim] = []
    depth_runs = [r for r in R.runs if r.startswith("depth_")]
    if depth_runs:
        pts = []
        for r in depth_runs:
            _, ce = R.series(r, "easy", "cka")
            _, cd = R.series(r, "difficult", "cka")
            if ce.size and cd.size:
                pts.append((int(r.split("_")[1]), float((ce / np.maximum(np.abs(cd), 1e-12)).max())))
        if len(pts) >= 3:
            from scipy.stats import spearmanr

            rho = float(spearmanr([a for a, _ in pts], [b for _, b in pts]).statistic)
            by = defaultdict(list)
            for d, v in pts:
                by[d].append(v)
            claims.append(Claim("Fig. 13: depth", "deeper networks reach a higher max CKA_easy/CKA_diff ratio",
                                "mean max ratio by depth: " + ", ".join(f"{d}: {np.mean(v):.2f}"
                                                                       for d, v in sorted(by.items()))
                                + f"; Spearman ρ(depth, ratio) = {rho:.2f}", bool(rho > 0)))
    lr_runs = [r for r in R.runs if r.startswith("lr_")]
    if lr_runs:
        by = defaultdict(list)
        for r in lr_runs:
            parts = r.split("_")
            _, er = R.series(r, "train", "erank")
            if er.size:
                by[(float(parts[1]), parts[3])].append(er.min() / er[0])
        for nz in sorted({k[1] for k in by}):
            lrs = sorted(k[0] for k in by if k[1] == nz)
            if len(lrs) >= 2:
                lo, hi = np.mean(by[(lrs[0], nz)]), np.mean(by[(lrs[-1], nz)])
                claims.append(Claim(f"Fig. 14: learning rate ({nz}% noise)",
                                    "a smaller learning rate gives a higher minimum erank (paper: about 3×)",
                                    "min erank / initial: " + ", ".join(f"lr {lr:g}: {np.mean(by[(lr, nz)]):.3f}"
                                                                        for lr in lrs)
                                    + f" (ratio smallest/largest lr {lo / hi:.2f})", bool(lo > hi)))
    return claims


def limit_claims(store: Any, R: Results, runs: list[tuple[float, str]]) -> list[Claim]:
    """Part (a): the distance falls with width with a fitted slope in :data:`SLOPE_RANGE`;
    part (b): for each label-noise run ``(noise, name)``, the train-probe distance at the last
    probe step exceeds its value at step 0."""
    claims: list[Claim] = []
    pts = width_points(store)
    if len(pts) >= 2:
        slope = width_fit(pts)[0]
        means = {w: float(np.mean([r for r, _ in v])) for w, v in pts.items()}
        lo, hi = SLOPE_RANGE
        first, last = next(iter(means)), list(means)[-1]
        claims.append(Claim("Distance to the limit at initialization",
                            "the relative Frobenius distance ‖K − Θ‖_F/‖Θ‖_F between the empirical and the "
                            "infinite-width NTK falls with the width, with a fitted log-log slope in "
                            f"[{lo}, {hi}] (theory: −1/2, Jacot et al. 2018; Hanin & Nica 2020)",
                            f"slope {slope:.3f}; mean distance {means[first]:.3g} at width {first} → "
                            f"{means[last]:.3g} at width {last}",
                            bool(lo <= slope <= hi and means[last] < means[first])))
    for p, run in runs:
        s, d = training_series(R, run)
        if d.size < 2:
            continue
        claims.append(Claim(f"Distance to the limit during training ({round(100 * p)}% random labels)",
                            "training moves the NTK away from the infinite-width NTK (feature learning leaves the "
                            "kernel regime): the train-probe distance at the last probe step exceeds the initial one",
                            f"‖K_t − Θ‖_F/‖Θ‖_F {d[0]:.3g} at step 0 → {d[-1]:.3g} at step {int(s[-1])} "
                            f"(max {d.max():.3g})", bool(d[-1] > d[0])))
    return claims


def alignment_claims(cfg: AlignmentConfig, R: Results) -> list[Claim]:
    """The claims of items 1-5, in item order (items 6 and 7: :mod:`.supernat`, :mod:`.complexity`)."""
    return [*disk_claims(R), *spectrum_claims(cfg, R), *hierarchy_claims(R), *ablation_claims(R)]
