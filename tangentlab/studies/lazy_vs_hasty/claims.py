"""The claims of ``lazy-vs-hasty``, computed from the stored tables only, and the readers they share
with the figures.

* Toy (Fig. 5.1): ``Δloss = loss_{α=1} − loss_{α=100}`` averaged over seeds is negative on the
  large same-class regions and positive on the flipped disks at equal training loss, and the
  non-linear run reaches each milestone first (:func:`toy_summary`, :func:`toy_claims`).
* C-scores, label noise, spurious features (Figs. 5.2, 5.3): at equal training progress the
  loss gap between a hard and an easy group is larger for α = 1 than for α = 100
  (:func:`gap_comparison`, :func:`group_claim`); the best test loss under label noise is lower
  for α = 1 (:func:`noise_claim`); the linearity metrics stay ≈ 1 for α = 100 only
  (:func:`linearity_claim`).
* Quadratic model (§5.4): the closed forms (5.4.5)/(5.4.6) solve the gradient flow, example 1's
  learning order is reversed between the regimes, examples 2/3 have a larger hard-group error
  in the non-linear regime (:func:`quadratic_claims`).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

from ...analysis.linearity import compare_at_progress
from ..framework.report import Claim
from ..framework.store import to_number
from .config import ODE_TOL, LazyVsHastyConfig
from .data import yin_yang_regions

#: ``(part, alpha) → history``: one dict per probe ``{"step", "group/metric": value}``, in probe order.
Histories = dict[tuple[str, float], list[dict[str, Any]]]

#: The linearity metrics of parts 2–4 (``group/metric`` keys of a history).
LINEARITY_KEYS = ("linearity/sign_similarity", "linearity/ntk_alignment", "linearity/representation_alignment")


@dataclass(frozen=True)
class GroupComparison:
    """How a digits part compares two groups: the progress variable, the easy and the hard group's
    loss keys, what the claim calls them, the report's title of the part, and a third regime
    compared with α = 100 as well (part spurious: α = 0.5)."""

    part: str
    progress_key: str
    easy: str
    hard: str
    what: str
    title: str
    extra_alpha: float | None = None


def group_comparisons(cfg: LazyVsHastyConfig) -> list[GroupComparison]:
    """The group comparisons of the configured parts cscores, noise and spurious, in that order."""
    out = []
    if "cscores" in cfg.parts:
        out.append(GroupComparison("cscores", "train/loss", f"decile{cfg.n_bins - 1}/loss", "decile0/loss",
                                   "high-C-score (top decile) vs low (bottom decile)", "C-scores (Fig. 5.2 top)"))
    if "noise" in cfg.parts:
        out.append(GroupComparison("noise", "clean/loss", "clean/loss", "noisy/loss", "clean vs noisy (noisy labels)",
                                   "label noise (Fig. 5.2 bottom)"))
    if "spurious" in cfg.parts:
        out.append(GroupComparison("spurious", "with/loss", "with/loss", "without/loss",
                                   "with spurious (majority) vs without (minority)", "spurious feature (Fig. 5.3)",
                                   extra_alpha=0.5))
    return out


# ---------------------------------------------------------------------------------------------
# readers
# ---------------------------------------------------------------------------------------------
def read_histories(store) -> Histories:
    """The probes of parts 2–4 from ``tables/curves.csv``, per ``(part, alpha)`` (see :data:`Histories`)."""
    acc: dict[tuple[str, float, int], dict[str, Any]] = {}
    for r in store.read("curves"):
        k = (r["part"], float(r["alpha"]), int(r["probe"]))
        d = acc.setdefault(k, {"step": int(r["step"])})
        d[f"{r['group']}/{r['metric']}"] = to_number(r["value"])
    out: Histories = defaultdict(list)
    for (part, alpha, _), d in sorted(acc.items()):
        if part != "toy":
            out[(part, alpha)].append(d)
    return out


@dataclass
class ToySummary:
    """The yin-yang results: the seed-averaged ``Δloss`` map per milestone (``g × g``, rows ``x₂``),
    one summary row per milestone, and the toy's training-loss probes."""

    mean_maps: dict[float, np.ndarray]
    rows: list[dict[str, Any]]
    train: list[dict[str, str]]


def toy_summary(cfg: LazyVsHastyConfig, store) -> ToySummary:
    """Average the ``Δloss`` maps over seeds; per milestone the mean over the easy regions and over the
    disks (:func:`~.data.yin_yang_regions`) and the median steps of each regime to reach it."""
    maps = store.read("toy_maps")
    miles = [{k: to_number(v) if k != "alpha" else float(v) for k, v in r.items()} for r in store.read("milestones")]
    train = [r for r in store.read("curves") if r["part"] == "toy"]
    g = cfg.toy_grid
    mean_maps: dict[float, np.ndarray] = {}
    count: dict[float, np.ndarray] = {}
    for r in maps:
        m = float(r["milestone"])
        if m not in mean_maps:
            mean_maps[m], count[m] = np.zeros((g, g)), np.zeros((g, g))
        iy, ix = int(r["iy"]), int(r["ix"])
        mean_maps[m][iy, ix] += float(r["delta_loss"])
        count[m][iy, ix] += 1
    lin = np.linspace(-1, 1, g)
    gx1, gx2 = np.meshgrid(lin, lin, indexing="xy")
    pts = np.stack([gx1.reshape(-1), gx2.reshape(-1)], 1)
    regions = {k: v.reshape(g, g) for k, v in yin_yang_regions(pts).items()}
    rows = []
    for m in sorted(mean_maps, reverse=True):
        mm = mean_maps[m] / np.maximum(count[m], 1)
        mean_maps[m] = mm
        steps = {a: [r["step"] for r in miles if r["alpha"] == a and r["milestone"] == m and r["step"] >= 0]
                 for a in (1.0, 100.0)}
        rows.append({"milestone": m, "seeds": int(count[m].max()), "delta_easy": float(mm[regions["easy"]].mean()),
                     "delta_disks": float(mm[regions["disks"]].mean()),
                     "median_steps_alpha1": float(np.median(steps[1.0])) if steps[1.0] else math.nan,
                     "median_steps_alpha100": float(np.median(steps[100.0])) if steps[100.0] else math.nan})
    return ToySummary(mean_maps, rows, train)


def progress_thresholds(hist_a: list[dict[str, Any]], hist_b: list[dict[str, Any]], key: str,
                        n: int = 12) -> list[float]:
    """Progress thresholds reached by both runs, log-spaced between the start and the common minimum."""
    if not hist_a or not hist_b:
        return []
    lo = max(min(h[key] for h in hist_a), min(h[key] for h in hist_b))
    hi = min(hist_a[0][key], hist_b[0][key])
    if not (lo < hi and lo > 0):
        return []
    return list(np.geomspace(hi * 0.9, lo * 1.02, n))


def gap_comparison(hist_nl: list[dict[str, Any]], hist_lin: list[dict[str, Any]], progress_key: str, easy: str,
                   hard: str, n: int = 12) -> list[dict[str, Any]]:
    """At equal progress: ``gap = loss(hard) − loss(easy)`` for both runs (``a``: non-linear, ``b``: linear)."""
    ths = progress_thresholds(hist_nl, hist_lin, progress_key, n)
    rows = compare_at_progress(hist_nl, hist_lin, progress_key, ths, [easy, hard])
    by_t: dict[float, dict[str, Any]] = {}
    for r in rows:
        d = by_t.setdefault(r["threshold"], {"threshold": r["threshold"]})
        d[f"{r['key']}_nl"], d[f"{r['key']}_lin"] = r["a"], r["b"]
    out = []
    for _, d in sorted(by_t.items(), reverse=True):
        d["gap_nl"] = d[f"{hard}_nl"] - d[f"{easy}_nl"]
        d["gap_lin"] = d[f"{hard}_lin"] - d[f"{easy}_lin"]
        out.append(d)
    return out


def group_gaps(hists: Histories, c: GroupComparison) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The :func:`gap_comparison` rows of α = 1 vs 100 and (``c.extra_alpha``) of that α vs 100,
    labelled in an ``alpha`` column."""
    nl, lin = hists.get((c.part, 1.0), []), hists.get((c.part, 100.0), [])
    rows = gap_comparison(nl, lin, c.progress_key, c.easy, c.hard)
    for r in rows:
        r["alpha"] = "1 vs 100"
    extra_rows = []
    if c.extra_alpha is not None and (c.part, c.extra_alpha) in hists:
        extra_rows = gap_comparison(hists[(c.part, c.extra_alpha)], lin, c.progress_key, c.easy, c.hard)
        for r in extra_rows:
            r["alpha"] = f"{c.extra_alpha:g} vs 100"
    return rows, extra_rows


def held_fraction(rows: list[dict[str, Any]], cond: Callable[[dict[str, Any]], bool]) -> tuple[int, int]:
    """``(rows where cond holds, rows)`` over the rows whose float values are all finite."""
    ok = [r for r in rows if all(math.isfinite(v) for v in r.values() if isinstance(v, float))]
    return sum(1 for r in ok if cond(r)), len(ok)


def final_linearity(hists: Histories, part: str) -> dict[float, dict[str, float]]:
    """The last measured linearity metrics of α = 1 and α = 100 (only the regimes that measured them)."""
    final = {}
    for a in (1.0, 100.0):
        h = [r for r in hists.get((part, a), []) if LINEARITY_KEYS[1] in r]
        if h:
            final[a] = {k: h[-1][k] for k in LINEARITY_KEYS}
    return final


# ---------------------------------------------------------------------------------------------
# claims
# ---------------------------------------------------------------------------------------------
def toy_claims(rows: list[dict[str, Any]]) -> list[Claim]:
    """Fig. 5.1: the sign of ``Δloss`` by region, and which regime reaches each milestone first."""
    if not rows:
        return [Claim("toy: non-linear regime prioritizes easy regions (Fig. 5.1)",
                      "Δloss < 0 on easy regions, > 0 on the disks", "no milestone reached by both regimes", None)]
    ok = all(r["delta_easy"] < 0 < r["delta_disks"] for r in rows)
    faster = all(r["median_steps_alpha1"] < r["median_steps_alpha100"] for r in rows)
    return [
        Claim("toy: non-linear regime prioritizes easy regions (Fig. 5.1)",
              "Δloss(x) = loss_{α=1} − loss_{α=100} < 0 on the large same-class regions and > 0 on the "
              "small flipped disks, at equal training loss",
              "; ".join(f"loss ≤ {r['milestone']:g}: easy {r['delta_easy']:+.4f}, disks "
                        f"{r['delta_disks']:+.4f} ({r['seeds']} seeds)" for r in rows), ok),
        Claim("toy: the non-linear run reaches each milestone first",
              "training is faster for α = 1 after the first iterations (Fig. 5.1b)",
              "; ".join(f"{r['milestone']:g}: {r['median_steps_alpha1']:.0f} vs "
                        f"{r['median_steps_alpha100']:.0f} steps (median)" for r in rows), faster),
    ]


def group_claim(c: GroupComparison, rows: list[dict[str, Any]], extra_rows: list[dict[str, Any]]) -> Claim:
    """Figs. 5.2/5.3: at equal progress the non-linear run separates the two groups more (at ≥ 3/4 of
    the common thresholds, for α = 1 and for ``c.extra_alpha``)."""
    held, total = held_fraction(rows, lambda r: r["gap_nl"] > r["gap_lin"])
    measured = (f"gap = loss({c.hard.split('/')[0]}) − loss({c.easy.split('/')[0]}) at equal {c.progress_key}: "
                f"larger for α=1 at {held}/{total} thresholds" if total
                else "the regimes never reached common progress")
    if rows:
        mid = rows[len(rows) // 2]
        measured += f" (e.g. at {mid['threshold']:.3g}: {mid['gap_nl']:.3f} vs {mid['gap_lin']:.3f})"
    ok = (held / total >= 0.75) if total else None
    if extra_rows:
        h2, t2 = held_fraction(extra_rows, lambda r: r["gap_nl"] > r["gap_lin"])
        measured += f"; α=0.5 vs 100: larger at {h2}/{t2}"
        ok = ok and (h2 / t2 >= 0.75 if t2 else False) if ok is not None else ok
    return Claim(f"{c.part}: easy examples learned relatively faster in the non-linear regime",
                 f"at equal progress the non-linear run (α=1) separates {c.what} more than the linearized run "
                 "(α=100)", measured, ok)


def noise_claim(hists: Histories) -> Claim | None:
    """Fig. 5.2 bottom: the best test loss under label noise is lower for α = 1 than for α = 100."""
    nl, lin = hists.get(("noise", 1.0), []), hists.get(("noise", 100.0), [])
    if not nl or not lin:
        return None
    best = {a: min(r["test/loss"] for r in h) for a, h in ((1.0, nl), (100.0, lin))}
    return Claim("noise: the non-linear regime is more robust to label noise",
                 "the best test loss ('sweet spot') is lower for α = 1 than for α = 100",
                 f"min test loss {best[1.0]:.4f} (α=1) vs {best[100.0]:.4f} (α=100)", best[1.0] < best[100.0])


def linearity_claim(final: dict[float, dict[str, float]], part: str) -> Claim | None:
    """The three linearity metrics stay above 0.9 for α = 100 and end lower for α = 1."""
    if len(final) < 2:
        return None
    lin_ok = all(v > 0.9 for v in final[100.0].values() if math.isfinite(v))
    nl_lower = all(final[1.0][k] < final[100.0][k] for k in LINEARITY_KEYS if math.isfinite(final[1.0][k]))
    return Claim(f"{part}: linearity metrics", "sign similarity, KA(K_t, K_0) and representation alignment stay "
                 "≈ 1 for α = 100 and decrease for α = 1",
                 "; ".join(f"{k.split('/')[1]}: {final[1.0][k]:.3f} (α=1) vs {final[100.0][k]:.3f} (α=100)"
                           for k in LINEARITY_KEYS), lin_ok and nl_lower)


def quadratic_claims(checks: list[dict[str, str]]) -> list[Claim]:
    """§5.4: closed forms vs gradient flow (Prop. 5.4.1), example 1's learning order, examples 2/3's
    hard-group error at equal easy-group error, for the quadratic model and the 2-layer network."""
    claims = []
    errs = [float(r["value"]) for r in checks if r["metric"].startswith("ode_rel_err")]
    if errs:
        claims.append(Claim("quadratic: closed forms (5.4.5)/(5.4.6) = gradient flow",
                            "Prop. 5.4.1 solves the gradient flow exactly (linear rate 2μθ⁰)",
                            f"max |θ_closed − θ_ODE| / max|θ*| = {max(errs):.2e} over {len(errs)} runs (DOP853, "
                            f"rtol 1e-12); tolerance {ODE_TOL:g}", max(errs) <= ODE_TOL, kind="identity"))
    for source, label in (("closed_form", "quadratic model"), ("two_layer", "2-layer linear network")):
        orders = {r["metric"]: str(int(float(r["value"]))).zfill(5) for r in checks
                  if r["example"] == "ex1" and r["source"] == source and r["metric"].startswith("order")}
        if orders:
            ok = orders.get("order_nonlinear") == "43210" and orders.get("order_linear") == "01234"
            claims.append(Claim(f"{label}: example 1 learning order",
                                "non-linear learns in order of ỹ_i (example 5 first), linearized in order of μ_i "
                                "(example 1 first): the order is reversed",
                                f"half-error order (0-based) non-linear {orders.get('order_nonlinear')}, linear "
                                f"{orders.get('order_linear')}", ok))
        for ex, hard, what in (("ex2", "noisy", "clean"), ("ex3", "minority", "majority")):
            gaps = defaultdict(list)
            for r in checks:
                if r["example"] == ex and r["source"] == source and r["metric"] == f"{hard}_gap":
                    gaps[float(r["threshold"])].append(float(r["value"]))
            if gaps:
                means = {th: float(np.mean([g for g in v if math.isfinite(g)])) if any(map(math.isfinite, v))
                         else math.nan for th, v in sorted(gaps.items(), reverse=True)}
                claims.append(Claim(f"{label}: example {ex[-1]} ({'label noise' if ex == 'ex2' else 'spurious'})",
                                    f"at equal {what} MSE the {hard} MSE is higher in the non-linear regime",
                                    "; ".join(f"{what} MSE {th:g}: Δ{hard} = {m:+.3f}" for th, m in means.items())
                                    + f" (mean over {len(next(iter(gaps.values())))} seeds)",
                                    all(m > 0 for m in means.values()) if all(map(math.isfinite, means.values()))
                                    else False))
    return claims


def build_claims(cfg: LazyVsHastyConfig, store) -> list[Claim]:
    """Every claim of the configured parts, in report order."""
    hists = read_histories(store)
    claims: list[Claim] = []
    if "toy" in cfg.parts:
        claims += toy_claims(toy_summary(cfg, store).rows)
    for c in group_comparisons(cfg):
        claims.append(group_claim(c, *group_gaps(hists, c)))
        if c.part == "noise":
            claims += [x for x in (noise_claim(hists),) if x is not None]
    for part in ("cscores", "noise", "spurious"):
        if part in cfg.parts:
            claims += [x for x in (linearity_claim(final_linearity(hists, part), part),) if x is not None]
    if "quadratic" in cfg.parts:
        claims += quadratic_claims(store.read("quadratic_checks"))
    return claims
