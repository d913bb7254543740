"""The run of the ``adaptive-tangent`` study: :class:`AdaptiveTangent`.

Each part is a method named after it (``run_penalties``, ``run_theory``, ``run_alignment``
(with the solver), ``run_sweep``) and made of units (one per part, per trained network, per
sweep run) recorded in the ``units`` table when finished: a killed run resumes at the next
unit, and the ranks of a torchrun launch share the units.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ...analysis import adaptive as ad
from ...analysis import adaptive_features as af
from ...analysis.adaptive_factorized import Factorized
from ...analysis.kernels import cka, kernel_alignment
from ...api import ntk
from ...linearize import Linearized
from ...progress import progress
from ..framework.report import ReportContent
from ..framework.runner import Study
from .config import COLS, FIG2_REFERENCE, PARTS, TARGETS, TITLE, AdaptiveTangentConfig
from .data import make_targets, pair_data, sweep_data
from .figures import build_report
from .models import he_mlp, sweep_network


def train_regression(model: nn.Module, x: torch.Tensor, t: torch.Tensor, steps: int, lr: float, momentum: float,
                     log_every: int = 50, show: bool | None = None, desc: str = "training") -> list[tuple[int, float]]:
    """Full-batch GD with momentum and cosine annealing on the mean squared error; the loss
    every ``log_every`` steps and at the end."""
    opt = torch.optim.SGD(model.parameters(), lr=lr, momentum=momentum)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps)
    hist = []
    for step in progress(range(steps), desc, show):
        opt.zero_grad(set_to_none=True)
        loss = ((model(x).reshape(-1) - t) ** 2).mean()
        loss.backward()
        opt.step()
        sched.step()
        if step % log_every == 0:
            hist.append((step, float(loss.detach())))
    with torch.no_grad():
        hist.append((steps, float(((model(x).reshape(-1) - t) ** 2).mean())))
    return hist


def block_average(K: torch.Tensor, size: int) -> np.ndarray:
    """``K`` block-averaged to ``size × size`` (contiguous row/column groups)."""
    n = K.shape[0]
    size = min(size, n)
    edges = np.linspace(0, n, size + 1).round().astype(int)
    Kn = K.numpy()
    return np.array([[Kn[edges[i]:edges[i + 1], edges[j]:edges[j + 1]].mean() for j in range(size)]
                     for i in range(size)])


class AdaptiveTangent(Study):
    parallel = True
    name = "adaptive-tangent"
    title = TITLE
    description = "Fig. 2 penalties, Theorems 1-2, Figs. 1/3 kernel alignment on digits, fixed vs adaptive training"
    config_class = AdaptiveTangentConfig
    config: AdaptiveTangentConfig

    def run(self) -> None:
        cfg = self.config
        self.T = {name: self.store.table(name, cols, key) for name, (cols, key) in COLS.items()}
        # finished units, shared by the ranks of a torchrun launch
        self.units = self.store.table("units", ["unit", "seconds"], ["unit"])
        if len(self.units):
            self.log(f"adaptive-tangent: resuming ({len(self.units)} units done)")
        self.dev = self.device
        t0 = time.perf_counter()
        # the solver part runs inside the alignment part, on its first seed's networks
        parts: dict[str, Callable[[], None]] = {"penalties": self.run_penalties, "theory": self.run_theory,
                                                "alignment": self.run_alignment, "training": self.run_sweep}
        for part in PARTS:
            if part in cfg.parts and part in parts:
                parts[part]()
        self.log(f"adaptive-tangent: done in {time.perf_counter() - t0:.1f}s")

    def run_penalties(self) -> None:
        self.unit("penalties", self.penalties)

    def run_theory(self) -> None:
        self.unit("theory", self.theory)

    def unit(self, key: str, fn, *args) -> None:
        """Run ``fn(*args)`` unless unit ``key`` is finished (by any rank, in any session) or
        another rank claimed it; record it as finished."""
        if (key,) in self.units or not self.ctx.claim(key):
            return
        t = time.perf_counter()
        fn(*args)
        self.units.append([{"unit": key, "seconds": time.perf_counter() - t}])
        self.log(f"adaptive-tangent: {key} ({time.perf_counter() - t:.1f}s)")

    def check(self, part: str, check: str, measured: float, reference: float, tol: float, held: bool) -> None:
        """One row of the ``checks`` table."""
        self.T["checks"].append([{"part": part, "check": check, "measured": float(measured),
                                  "reference": float(reference), "tolerance": float(tol), "held": bool(held)}])

    # ---- part: penalties (Fig. 2) -----------------------------------------------------------
    def penalties(self) -> None:
        """Fig. 2's effective penalties on a grid, checked against :data:`FIG2_REFERENCE`, and
        Proposition 3's properties (below v², ≈ v² at 0, concave in v²)."""
        v = np.round(np.linspace(0, 5, 101), 10)
        curves = {"w1": ad.effective_penalty("sq", v), "w2": ad.effective_penalty("abs", v),
                  "w3": ad.joint_effective_penalty("sq", "abs", v), "v2": v ** 2}
        rows = [{"penalty": k, "v": float(vi), "value": float(c)} for k, cs in curves.items() for vi, c in zip(v, cs)]
        vj = np.linspace(1, 6, 51)
        rows += [{"penalty": "joint", "v": float(a), "value": float(b)}
                 for a, b in zip(vj, ad.joint_penalty("sq", "abs", vj))]
        self.T["penalties"].append(rows)
        ref_v = np.array([r[0] for r in FIG2_REFERENCE])
        for col, name in ((1, "w1"), (2, "w2"), (3, "w3")):
            got = {"w1": ad.effective_penalty("sq", ref_v), "w2": ad.effective_penalty("abs", ref_v),
                   "w3": ad.joint_effective_penalty("sq", "abs", ref_v)}[name]
            for vi, g, r in zip(ref_v, got, [row[col] for row in FIG2_REFERENCE]):
                tol = 6e-4 * max(1.0, r)
                self.check("penalties", f"{name}({vi:g})", g, r, tol, abs(g - r) <= tol)
        for vi, r in ((2, 0.581), (3, 1.235), (6, 2.965)):
            g = float(ad.joint_penalty("sq", "abs", [vi])[0])
            self.check("penalties", f"joint({vi})", g, r, 6e-4, abs(g - r) <= 6e-4)
        # Proposition 3
        u = np.linspace(0.01, 25, 400)
        worst_concave, worst_above, worst_small = -np.inf, -np.inf, 0.0
        for om in ("sq", "abs"):
            w = ad.effective_penalty(om, np.sqrt(u))
            worst_concave = max(worst_concave, float(np.diff(w, 2).max()))
            worst_above = max(worst_above, float((w - u).max()))
            worst_small = max(worst_small, abs(float(ad.effective_penalty(om, [1e-3])[0]) / 1e-6 - 1))
        worst_concave = max(worst_concave, float(np.diff(ad.joint_effective_penalty("sq", "abs", np.sqrt(u)), 2).max()))
        self.check("penalties", "max second difference in v² (concavity)", worst_concave, 0.0, 1e-9,
                    worst_concave <= 1e-9)
        self.check("penalties", "max(ω̃(v) − v²)", worst_above, 0.0, 1e-12, worst_above <= 1e-12)
        self.check("penalties", "|ω̃(1e-3)/1e-6 − 1|", worst_small, 0.0, 1e-2, worst_small <= 1e-2)

    # ---- part: theory (Theorem 1, App. A.1, Theorem 2 on one block) -------------------------------
    def theory(self) -> None:
        """Exact checks on small random problems: Theorem 1's closed form against direct
        minimization and its kernel identity; the diagonal solver with ω = v² against the ℓ1
        linear program (App. A.1); the Model A solver on one block against direct minimization."""
        cfg = self.config
        gen = torch.Generator().manual_seed(cfg.seed)
        G = torch.randn(4, 10, generator=gen, dtype=torch.float64) / math.sqrt(10)
        r = 2 * torch.randn(4, generator=gen, dtype=torch.float64)
        K0 = G @ G.T
        sol = ad.theorem1(K0, r, "sq")
        beta = G.T @ sol.alpha
        M = torch.eye(10, dtype=torch.float64) + (sol.s - 1) * torch.outer(beta, beta) / sol.beta_norm ** 2
        best, vals = ad.direct_minimize(G, r, "sq", restarts=cfg.theory_restarts, seed=cfg.seed)
        self.check("theory", "Theorem 1: direct L-BFGS min − closed form", best - sol.objective, 0.0, 1e-6,
                    best >= sol.objective - 1e-9 and abs(best - sol.objective) <= 1e-6)
        self.check("theory", "Theorem 1: closed-form objective ω̃(‖β̂‖)", sol.objective, sol.objective, 0, True)
        self.check("theory", "Theorem 1: s", sol.s, sol.s, 0, True)
        self.check("theory", "Theorem 1: ‖β̂‖", sol.beta_norm, sol.beta_norm, 0, True)
        kerr = float((G @ M @ M @ G.T - sol.kernel(K0)).abs().max())
        self.check("theory", "Theorem 1: max|GM̂²Gᵀ − K0 − (s²−1)/‖β̂‖² rrᵀ|", kerr, 0.0, 1e-12, kerr <= 1e-12)
        cerr = float((G @ M @ beta / sol.s - r).abs().max())
        self.check("theory", "Theorem 1: constraint residual", cerr, 0.0, 1e-12, cerr <= 1e-12)
        # diagonal M, ω = v²: Ω̃ = 2‖β‖₁ (App. A.1) against the ℓ1 LP
        from scipy.optimize import linprog

        J = torch.randn(14, 30, generator=gen, dtype=torch.float64)
        bstar = torch.zeros(30, dtype=torch.float64)
        bstar[[2, 11, 25]] = torch.tensor([3.0, -2.0, 1.5], dtype=torch.float64)
        rd = J @ bstar
        dsol = ad.diagonal_irls(J, rd, "square", iters=400)
        lp = linprog(np.ones(60), A_eq=np.hstack([J.numpy(), -J.numpy()]), b_eq=rd.numpy(), bounds=(0, None))
        rel = abs(dsol.objectives[-1] - 2 * lp.fun) / (2 * lp.fun)
        self.check("theory", "diagonal ω=v²: |objective − 2·LP min ‖β‖₁| / (2·LP)", rel, 0.0, 1e-5, rel <= 1e-5)
        mono = float(np.diff(dsol.objectives).max())
        self.check("theory", "diagonal solver: largest objective increase", mono, 0.0, 1e-9, mono <= 1e-9)
        # Model A on one block vs direct minimization over (M1, M2)
        torch.manual_seed(cfg.seed + 4)
        m = nn.Sequential(nn.Linear(4, 3, bias=False), nn.Tanh(), nn.Linear(3, 3, bias=False), nn.Tanh(),
                          nn.Linear(3, 2, bias=False)).double()
        feats, _ = af.layer_features(m, torch.randn(3, 4, generator=gen, dtype=torch.float64))
        blk = [feats[1]]
        Gb = af.features_jacobian(blk)
        rb = 2 * torch.randn(6, generator=gen, dtype=torch.float64)
        msol = ad.model_a_irls(blk, rb, [("sq", "sq")], iters=400)
        dbest, _ = ad.direct_minimize(Gb, rb, "sq", shape=blk[0].shape, omega2="sq",
                                      restarts=cfg.theory_restarts, seed=cfg.seed)
        gap = msol.objectives[-1] - dbest
        self.check("theory", "Model A one block: alternating − direct (relative)", gap / dbest, 0.0, 1e-6,
                    gap <= 1e-6 * dbest)
        inc = float(np.diff(msol.objectives).max())
        self.check("theory", "Model A one block: largest objective increase (relative)", inc / msol.objectives[0],
                    0.0, 1e-10, inc <= 1e-10 * msol.objectives[0])

    # ---- part: alignment (Figs. 1, 3) + solver ---------------------------------------------------
    def run_alignment(self) -> None:
        """Figs. 1 and 3: one unit per (seed, target family, target y or sign(y))."""
        cfg = self.config
        x, lab = pair_data(cfg)
        x = x.to(self.dev)
        for k in range(cfg.seeds):
            seed = cfg.seed + k
            for fam in cfg.families:
                y, acc = make_targets(x.cpu(), lab, fam, seed, cfg.width)
                for tgt in TARGETS:
                    key = f"align:{seed}:{fam}:{tgt}"
                    self.unit(key, self.align_one, x, y.to(self.dev), acc, seed, fam, tgt, k == 0)

    def align_one(self, x: torch.Tensor, y: torch.Tensor, acc: float, seed: int, fam: str, tgt: str,
                   first: bool) -> None:
        """Train the network of ``seed`` on ``y`` or ``sign(y)``, then its kernels, alignments,
        average-feature identity and diagonals; on the first seed also the kernel maps and the
        solver."""
        cfg = self.config
        t = y if tgt == "y" else torch.sign(y)
        net0 = he_mlp(x.shape[1], (cfg.width, cfg.width), 1, seed).to(self.dev)
        th0 = af.flat_params(net0)
        # trained in float32; the path θ0 → θ̂ and every kernel are float64
        net32 = copy.deepcopy(net0).float()
        hist = train_regression(net32, x.float(), t.float(), cfg.train_steps, cfg.lr, cfg.momentum,
                                show=self.config.progress_flag,
                                desc=f"adaptive-tangent: training seed {seed} {fam}/{tgt}")
        self.T["training"].append([{"seed": seed, "family": fam, "target": tgt, "step": s, "loss": v}
                                   for s, v in hist])
        net = copy.deepcopy(net32).double().eval()
        th1 = af.flat_params(net)
        f1 = af.outputs_at(net, x).reshape(-1)
        f0 = af.outputs_at(net0, x).reshape(-1)
        delta = f1 - f0
        Ky = af.label_kernel(delta)
        K0 = ntk(net0, x, progress=False).as_matrix().to(torch.float64)
        Kf = ntk(net, x, progress=False).as_matrix().to(torch.float64)
        Jbar = af.average_jacobian(net, x, th0, th1, cfg.quadrature_points, cfg.quadrature,
                                   show_progress=cfg.progress_flag)
        Kbar = Jbar @ Jbar.T
        ident = float((f0 + Jbar @ (th1 - th0) - f1).norm() / f1.norm())
        th = ad.theorem1(K0, delta, "sq")
        Kt = th.kernel(K0)
        rows: list[dict[str, Any]] = []

        def row(kernel: str, metric: str, value: float) -> None:
            rows.append({"seed": seed, "family": fam, "target": tgt, "kernel": kernel, "metric": metric,
                         "value": float(value)})

        ycpu = y.cpu()
        for name, K in (("K0", K0), ("Kbar", Kbar), ("Kfinal", Kf), ("Ktheorem1", Kt)):
            row(name, "cos", kernel_alignment(K, Ky))
            row(name, "cka", cka(K, Ky, "examples", 1))
            row(name, "norm_ratio", float(K.norm() / K0.norm()))
            for k2, v2 in af.lsq_decomposition(K, K0, Ky).items():
                row(name, f"lsq_{k2}", v2)
            row(name, "diag_ratio", af.diag_ratio(torch.diagonal(K).cpu(), ycpu, cfg.near_fraction))
        row("", "train_mse", hist[-1][1])
        row("", "sign_accuracy", acc)
        row("", "identity_rel_error", ident)
        row("", "rel_param_change", float((th1 - th0).norm() / th0.norm()))
        row("", "ntk_norm2", th.beta_norm ** 2)
        row("", "theorem1_s", th.s)
        self.T["alignment"].append(rows)
        qrows = [{"seed": seed, "family": fam, "target": tgt, "rule": cfg.quadrature, "n": cfg.quadrature_points,
                  "rel_error": ident}]
        for n in cfg.quadrature_check:
            if n == cfg.quadrature_points:
                continue
            jv = af.average_jvp(net, x, th0, th1, n, cfg.quadrature)
            qrows.append({"seed": seed, "family": fam, "target": tgt, "rule": cfg.quadrature, "n": n,
                          "rel_error": float((f0 + jv - f1).norm() / f1.norm())})
        self.T["quadrature"].append(qrows)
        d0, db, df = (torch.diagonal(K).cpu() for K in (K0, Kbar, Kf))
        self.T["diagonal"].append([{"seed": seed, "family": fam, "target": tgt, "point": i, "y": float(ycpu[i]),
                                    "target_value": float(t[i]), "diag_K0": float(d0[i]), "diag_Kbar": float(db[i]),
                                    "diag_Kfinal": float(df[i])} for i in range(len(ycpu))])
        if first:
            order = torch.argsort(ycpu)
            maps = []
            for name, K in (("K0", K0), ("Kbar", Kbar), ("Kfinal", Kf), ("Ky", Ky)):
                Ks = K.cpu()[order][:, order]
                B = block_average(Ks, cfg.map_size)
                maps += [{"family": fam, "target": tgt, "kernel": name, "row": i, "col": j, "value": float(B[i, j])}
                         for i in range(B.shape[0]) for j in range(B.shape[1])]
            self.T["kernel_maps"].append(maps)
            if "solver" in cfg.parts:
                self.solver(net0, x, delta, ycpu, K0, Ky, fam, tgt)
        del Jbar

    def solver(self, net0: nn.Module, x: torch.Tensor, r: torch.Tensor, y: torch.Tensor, K0: torch.Tensor,
                Ky: torch.Tensor, fam: str, tgt: str) -> None:
        """Model A (Theorem 2) on the initial tangent features, residual ``r = f_θ̂ − f_θ0`` on
        the training points (= ŷ − f0 at interpolation)."""
        cfg = self.config
        feats, _ = af.layer_features(net0, x)
        om = cfg.solver_penalty
        omegas = [(om, om)] * (len(feats) - 1) + [(om, "fixed")]
        sol = ad.model_a_irls(feats, r, omegas, iters=cfg.solver_iters, scale=cfg.solver_scale)
        self.T["solver"].append([{"family": fam, "target": tgt, "step": i, "half": "M" if i % 2 else "B",
                                  "objective": v} for i, v in enumerate(sol.objectives)])
        Ka = sol.kernel(feats)
        per = sol.kernel(feats, per_layer=True)
        rows = [("ntk_objective", sol.ntk_objective), ("final_objective", sol.objectives[-1]),
                ("max_increase", float(np.diff(sol.objectives).max()) if len(sol.objectives) > 1 else 0.0),
                ("cos_adapted", kernel_alignment(Ka, Ky)), ("cos_K0", kernel_alignment(K0, Ky)),
                ("cka_adapted", cka(Ka, Ky, "examples", 1)), ("cka_K0", cka(K0, Ky, "examples", 1)),
                ("norm_ratio", float(Ka.norm() / K0.norm())),
                ("diag_ratio_adapted", af.diag_ratio(torch.diagonal(Ka).cpu(), y, cfg.near_fraction)),
                ("diag_ratio_K0", af.diag_ratio(torch.diagonal(K0).cpu(), y, cfg.near_fraction))]
        for i, f in enumerate(feats):
            K0l = f.kernel()
            rows.append((f"layer{i}_change", float((per[f.name] - K0l).norm() / K0.norm())))
        ntk_sol = ad.model_a_irls(feats, r, omegas, iters=0)
        spec = []
        for i, (b, bn) in enumerate(zip(sol.blocks, ntk_sol.blocks)):
            for method, sv in (("adaptive", b.singular_values), ("ntk", bn.singular_values)):
                sv = sv.cpu().numpy()
                spec += [{"family": fam, "target": tgt, "layer": i, "method": method, "index": j, "value": float(s)}
                         for j, s in enumerate(sv[:min(len(sv), 64)])]
                e = sv ** 2
                rows.append((f"layer{i}_{method}_top1_energy", float(e[0] / e.sum()) if e.sum() > 0 else 0.0))
        self.T["solver_spectrum"].append(spec)
        self.T["solver_metrics"].append([{"family": fam, "target": tgt, "metric": k, "value": float(v)}
                                         for k, v in rows])

    # ---- part: training sweep (Fig. 4) -----------------------------------------------------------
    def run_sweep(self) -> None:
        """The preprint's Fig. 4: one unit per (architecture, n, seed, model)."""
        cfg = self.config
        data = sweep_data(cfg)
        for arch in cfg.sweep_arch:
            for n in cfg.sweep_n:
                for k in range(cfg.sweep_seeds):
                    for model in cfg.sweep_models:
                        self.unit(f"sweep:{arch}:{n}:{cfg.seed + k}:{model}", self.sweep_one, data, arch, n,
                                   cfg.seed + k, model)

    def sweep_one(self, data, arch: str, n: int, seed: int, which: str) -> None:
        """One Fig. 4 run: the ``which`` model (standard, fixed = linearized, adaptive =
        factorized) on ``n`` training images, cross-entropy, early stopping on the test error."""
        cfg = self.config
        xtr, ytr, xte, yte = (t.to(self.dev) for t in data)
        perm = torch.randperm(len(xtr), generator=torch.Generator().manual_seed(seed))[:n].to(self.dev)
        x, y = xtr[perm], ytr[perm]
        base = sweep_network(cfg, arch, seed).to(self.dev)
        model: nn.Module
        if which == "standard":
            model = base
        elif which == "adaptive":
            model = Factorized(base, cfg.sweep_conv_factors)
        else:
            model = Linearized(base)
        params = [p for p in model.parameters() if p.requires_grad]
        opt = (torch.optim.SGD(params, lr=cfg.sweep_lr, momentum=cfg.momentum) if cfg.sweep_optimizer == "sgd"
               else torch.optim.Adam(params, lr=cfg.sweep_lr))
        bs = cfg.sweep_batch or (25 if n <= 125 else 50)
        gen = torch.Generator().manual_seed(seed + 17)
        best_err, best_epoch, since, t0 = 1.0, -1, 0, time.perf_counter()
        loss_v = math.nan
        for epoch in range(cfg.sweep_epochs):
            order = torch.randperm(n, generator=gen).to(self.dev)
            for i in range(0, n - bs + 1 if n >= bs else 1, bs):
                idx = order[i:i + bs]
                opt.zero_grad(set_to_none=True)
                loss = nn.functional.cross_entropy(model(x[idx]), y[idx])
                if not torch.isfinite(loss):
                    break
                loss.backward()
                opt.step()
                loss_v = float(loss.detach())
            with torch.no_grad():
                err = float((model(xte).argmax(1) != yte).float().mean())
            if err < best_err:
                best_err, best_epoch, since = err, epoch, 0
            else:
                since += 1
            if since >= cfg.sweep_patience or not math.isfinite(loss_v):
                break
        rows = [("test_error", best_err), ("best_epoch", best_epoch), ("epochs", epoch + 1),
                ("seconds", time.perf_counter() - t0), ("last_train_loss", loss_v)]
        self.T["sweep"].append([{"dataset": cfg.sweep_dataset, "arch": arch, "n_train": n, "seed": seed,
                                 "model": which, "metric": k, "value": float(v)} for k, v in rows])

    def report(self) -> ReportContent:
        return build_report(self.config, self.store)

