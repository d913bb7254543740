"""Item 8 of the alignment study: the Jacobian hierarchy (paper 000 App. B, thesis §B.1.4, Fig. B.1;
spec E6.3 / S6.3), at CPU scale on digits.

A ReLU MLP ``64 → hierarchy_hidden → 10`` (float64) trained ``hierarchy_epochs`` epochs by SGD
(``hierarchy_lr``, momentum 0.9, batch 100) on the digits training set (the paper: a VGG11 trained
10 epochs on CIFAR-10). On ``hierarchy_n`` test examples, the Jacobian ``J`` (``N·C × P``, by
``torch.func.jacrev``) and its right singular vectors ``v_j = Jᵀ u_j / σ_j`` from the eigenpairs
``(σ_j², u_j)`` of ``K = J Jᵀ``. The parameters are perturbed by ``ε v`` (``ε = hierarchy_eps``)
along the top ``hierarchy_dirs`` singular directions and along as many random unit directions,
and the change of the outputs ``‖f_{w+εv}(X) − f_w(X)‖_F`` on the test examples is recorded, with
its first-order value ``ε ‖J v‖``.

Per seed: ``ratio`` = mean change along the top 10 singular directions / mean change along the
random ones; ``negligible`` = the fraction of random directions whose change is below 10 % of the
change along ``v_1``; and the relative Frobenius difference between the engine's NTK
(:func:`tangentlab.ntk`) and ``J Jᵀ`` of the autograd Jacobian (eq. B.1.22; Prop. B.1.1: ``G = JᵀJ``
and ``K`` share their nonzero spectrum, which is what gives the ``v_j``).

Tables: ``hierarchy_directions`` (seed × kind × index: σ, change, first-order change) and
``hierarchy_summary`` (seed: ratio, negligible, ntk_error, test accuracy). Config fields:
``appendix_seeds``, ``hierarchy_hidden``, ``hierarchy_epochs``, ``hierarchy_lr``, ``hierarchy_n``,
``hierarchy_dirs``, ``hierarchy_eps``, ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ...api import ntk
from ...training import BatchStream, accuracy, train_step
from ..framework.claims import mean_interval
from ..framework.data import load_dataset
from ..framework.models import make_mlp
from ..framework.report import Claim, FigureSpec, TableSpec
from ..framework.store import RunStore
from .appendix_common import done_seeds, missing, numeric_rows, seed_claim
from .config import TOP_DIRS

PART = "B.1 Jacobian hierarchy"
DIRS, SUMMARY = "hierarchy_directions", "hierarchy_summary"
TOP = TOP_DIRS


def jacobian_matrix(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``J`` as an ``(N·C) × P`` matrix (rows ``n·C + c``, parameters in ``model.parameters()`` order)."""
    from torch.func import functional_call, jacrev

    names = [n for n, _ in model.named_parameters()]
    params = {n: p.detach() for n, p in model.named_parameters()}
    jac = jacrev(lambda p: functional_call(model, p, (x,)))(params)
    n, c = x.shape[0], jac[names[0]].shape[1]
    return torch.cat([jac[k].reshape(n * c, -1) for k in names], dim=1)


def right_singular(J: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(σ, V)``: the top ``k`` singular values of ``J`` and its right singular vectors (columns of
    ``V``, ``P × k``) from the eigenpairs of ``J Jᵀ``."""
    lam, U = torch.linalg.eigh(J @ J.T)
    lam, U = lam.flip(0)[:k].clamp_min(0), U.flip(1)[:, :k]
    sigma = lam.sqrt()
    return sigma, (J.T @ U) / sigma


@torch.no_grad()
def output_change(model: nn.Module, x: torch.Tensor, v: torch.Tensor, eps: float) -> float:
    """``‖f_{w + ε v}(x) − f_w(x)‖_F`` (the parameters are restored)."""
    w = nn.utils.parameters_to_vector(model.parameters()).clone()
    f0 = model(x)
    nn.utils.vector_to_parameters(w + eps * v, model.parameters())
    df = float((model(x) - f0).norm())
    nn.utils.vector_to_parameters(w, model.parameters())
    return df


def train_model(cfg: Any, seed: int) -> tuple[nn.Module, torch.Tensor, torch.Tensor, float]:
    """The trained MLP of seed ``seed``, the test inputs of the Jacobian, their labels and the test accuracy."""
    split = load_dataset("digits", int(cfg.seed), "flat")
    x, y = split.x_train.double(), split.y_train
    torch.manual_seed(seed)
    model = make_mlp(x.shape[1], tuple(int(h) for h in cfg.hierarchy_hidden), split.n_classes, "relu",
                     dtype=torch.float64)
    opt = torch.optim.SGD(model.parameters(), lr=float(cfg.hierarchy_lr), momentum=0.9)
    stream = BatchStream(x.shape[0], 100, seed + 1)
    for _ in range(int(cfg.hierarchy_epochs) * stream.steps_per_epoch):
        idx = stream.next()
        train_step(model, opt, x[idx], y[idx])
    xt, yt = split.x_test.double(), split.y_test
    pick = torch.randperm(xt.shape[0], generator=torch.Generator().manual_seed(seed + 2))[:int(cfg.hierarchy_n)]
    return model.eval(), xt[pick], yt[pick], accuracy(model, xt, yt)


def run_hierarchy(store: RunStore, cfg: Any, log: Callable[[str], None]) -> None:
    """Every seed of ``appendix_seeds`` not yet in ``hierarchy_summary``."""
    dirs = store.table(DIRS, ["seed", "kind", "index", "sigma", "change", "first_order"], ["seed", "kind", "index"])
    summary = store.table(SUMMARY, ["seed", "ratio", "negligible", "ntk_error", "test_accuracy"], ["seed"])
    done = done_seeds(store, SUMMARY)
    k, eps = int(cfg.hierarchy_dirs), float(cfg.hierarchy_eps)
    for s in range(int(cfg.appendix_seeds)):
        if s in done:
            continue
        seed = int(cfg.seed) * 1000 + 800 + s
        model, x, _, acc = train_model(cfg, seed)
        J = jacobian_matrix(model, x)
        K = ntk(model, x, progress=False).as_matrix()
        ntk_err = float((K - J @ J.T).norm() / (J @ J.T).norm())
        sigma, V = right_singular(J, k)
        g = torch.Generator().manual_seed(seed + 3)
        R = torch.randn(J.shape[1], k, generator=g, dtype=J.dtype)
        R = R / R.norm(dim=0)
        rows = []
        for kind, D in (("singular", V), ("random", R)):
            for j in range(D.shape[1]):
                rows.append({"seed": s, "kind": kind, "index": j, "sigma": float(sigma[j]) if kind == "singular"
                             else math.nan, "change": output_change(model, x, D[:, j], eps),
                             "first_order": eps * float((J @ D[:, j]).norm())})
        top = [r["change"] for r in rows if r["kind"] == "singular"]
        rnd = [r["change"] for r in rows if r["kind"] == "random"]
        ratio = float(np.mean(top[:TOP]) / np.mean(rnd))
        negligible = float(np.mean(np.array(rnd) < 0.1 * top[0]))
        dirs.append(rows)
        summary.append([{"seed": s, "ratio": ratio, "negligible": negligible, "ntk_error": ntk_err,
                         "test_accuracy": acc}])
        log(f"alignment B.1: seed {s}: top-{TOP}/random output change {ratio:.3g}, random directions below 10% of "
            f"v_1's change {negligible:.2f}, test accuracy {acc:.3f}")


def hierarchy_claims(store: RunStore, cfg: Any) -> list[Claim]:
    rows = numeric_rows(store, SUMMARY)
    paper_r = ("\"perturbations in most directions have almost no effect, except in those aligned with the top "
               "singular vectors\" (VGG11, 10 epochs on CIFAR-10, 50 singular vs 50 random directions; thesis Fig. "
               "B.1)")
    paper_n = "\"perturbations in most directions have almost no effect\" (thesis Fig. B.1)"
    if not rows:
        return [missing("B.1: top singular directions move f", paper_r, PART),
                missing("B.1: most directions have almost no effect", paper_n, PART)]
    net = (f"CPU analogue: MLP 64-{'-'.join(str(h) for h in cfg.hierarchy_hidden)}-10 trained {cfg.hierarchy_epochs} "
           f"epochs on digits, f on {cfg.hierarchy_n} test examples, ε = {cfg.hierarchy_eps:g}, "
           f"{cfg.hierarchy_dirs} singular and {cfg.hierarchy_dirs} random unit directions")
    out = [seed_claim("B.1: top singular directions move f", paper_r,
                      f"mean ‖Δf‖ along the top {TOP} right singular vectors of J / mean ‖Δf‖ along the random "
                      f"directions ≥ 10 (one order of magnitude), on the t-interval over seeds; {net}",
                      "ratio", [r["ratio"] for r in rows], ">=", 10.0, PART),
           seed_claim("B.1: most directions have almost no effect", paper_n,
                      "fraction of the random directions whose ‖Δf‖ is below 10% of ‖Δf‖ along v_1 ≥ 0.9 ('most' "
                      f"read as 90%), on the t-interval over seeds; {net}", "fraction",
                      [r["negligible"] for r in rows], ">=", 0.9, PART)]
    err = max(r["ntk_error"] for r in rows)
    out.append(Claim.identity("B.1: K = J Jᵀ", "(K_w)_{ij} = ⟨Φ_w(x_i), Φ_w(x_j)⟩ = (Φ_w Φ_wᵀ)_{ij} (eq. B.1.22; the "
                              "v_j above are the eigenvectors of G = ΦᵀΦ, which shares K's nonzero spectrum, Prop. "
                              "B.1.1)", f"engine NTK vs the autograd Jacobian's J Jᵀ: largest relative Frobenius "
                              f"difference {err:.1e} over {len(rows)} seeds (float64)", err, 1e-10,
                              criterion="‖K_engine − J Jᵀ‖_F / ‖J Jᵀ‖_F ≤ 1e-10 (float64)", part=PART))
    return out


def hierarchy_tables(store: RunStore, cfg: Any) -> list[TableSpec]:
    rows = numeric_rows(store, SUMMARY)
    if not rows:
        return []
    m, lo, hi = mean_interval([r["ratio"] for r in rows])
    return [TableSpec("B.1 Jacobian hierarchy: per seed", ["seed", "ratio", "negligible", "ntk_error", "test_accuracy"],
                      rows, link=f"tables/{SUMMARY}.csv",
                      caption=f"ratio: mean ‖Δf‖ along the top {TOP} singular directions / along random ones (mean "
                              f"{m:.3g}, t-interval [{lo:.3g}, {hi:.3g}]); negligible: fraction of random directions "
                              f"below 10% of v_1's change. Every direction in tables/{DIRS}.csv.")]


def hierarchy_figures(store: RunStore, cfg: Any) -> list[FigureSpec]:
    rows = [r for r in numeric_rows(store, DIRS, text=("kind",)) if r["seed"] == 0]
    if not rows:
        return []

    def draw(fig: Any) -> None:
        ax = fig.subplots()
        sing = sorted((r for r in rows if r["kind"] == "singular"), key=lambda r: r["index"])
        rnd = sorted((r for r in rows if r["kind"] == "random"), key=lambda r: r["index"])
        k = len(sing)
        ax.bar(np.arange(k), [r["change"] for r in sing], color="tab:red", label="right singular vectors v_j")
        ax.bar(k + np.arange(len(rnd)), [r["change"] for r in rnd], color="tab:gray", label="random directions")
        ax.plot(np.arange(k), [r["first_order"] for r in sing], "k.", ms=3, label="first order ε‖J v‖")
        ax.set_yscale("log")
        ax.set_xlabel("direction (first the singular vectors by decreasing σ, then random)")
        ax.set_ylabel("‖f_{w+εv} − f_w‖ on the test examples")
        ax.legend(fontsize=7)

    return [FigureSpec("appB1_jacobian_hierarchy", "Fig. B.1: output change along singular vs random directions",
                       f"Trained MLP (seed 0): change of the outputs on {cfg.hierarchy_n} test examples when the "
                       f"parameters move by ε = {cfg.hierarchy_eps:g} along the top {cfg.hierarchy_dirs} right "
                       "singular vectors of the Jacobian (red) and along random unit directions (gray).", draw,
                       (8.0, 4.0))]
