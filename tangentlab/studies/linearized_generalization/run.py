"""The run of ``linearized-generalization``: :class:`LinearizedGeneralization` trains networks and their
linearizations part by part.

Parts (one method each, called by :meth:`LinearizedGeneralization.run`): eigenfunction targets
(:meth:`~LinearizedGeneralization.run_eigen`, Figs. 2, 3, 13, 14), NAD tasks
(:meth:`~LinearizedGeneralization.run_nad`, Figs. 4, 10 and Theorem 1), the non-linear advantage
against the training-set size (:meth:`~LinearizedGeneralization.run_size`, Fig. 5), energy
concentration, kernel rotation and late linearizations (:meth:`~LinearizedGeneralization.run_energy`,
Figs. 6–9, 15, 16, Table 1) and Lemma 1 (:meth:`~LinearizedGeneralization.run_lemma`). Every trained
model is a unit of ``tables/results.csv``: a unit whose rows exist is skipped on resume.
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

from ...analysis.anisotropy import (
    alignment,
    alignment_vector,
    binarization_cosine,
    eigenfunction_targets,
    energy_concentration,
    lemma1,
    linear_alignment_mc,
    mixed_derivative,
    neural_anisotropy_directions,
    predicted_linear_alignment,
)
from ...linearize import Linearized
from ..framework.report import ReportContent
from ..framework.runner import Study
from ..framework.threads import torch_threads
from .config import (
    ARRAY_COLUMNS,
    ARRAY_KEY,
    CURVE_COLUMNS,
    CURVE_KEY,
    PARTS,
    RESULT_COLUMNS,
    RESULT_KEY,
    TITLE,
    LinGenConfig,
)
from .figures import build_report
from .setup import Setup, build_setup, ntk_gram, replicate_seed, top_eigh
from .tasks import (
    build_scalar_model,
    distances,
    flat_params,
    half_classes,
    lecun_init_,
    make_lenet,
    nad_task,
    stratified_subset,
    train_binary,
    xor_task,
)


class LinearizedGeneralization(Study):
    """Networks vs their linearizations (see :mod:`tangentlab.studies.linearized_generalization`)."""

    parallel = True
    name = "linearized-generalization"
    title = TITLE
    description = "eigenfunction and NAD tasks, non-linear advantage vs n, energy concentration, kernel rotation"
    config_class = LinGenConfig
    config: LinGenConfig

    # ---- plumbing -----------------------------------------------------------------------------
    def _tables(self) -> None:
        """The three result tables, and the units already written (skipped on resume)."""
        self.results = self.store.table("results", RESULT_COLUMNS, RESULT_KEY)
        self.curves = self.store.table("curves", CURVE_COLUMNS, CURVE_KEY)
        self.arrays = self.store.table("arrays", ARRAY_COLUMNS, ARRAY_KEY)
        self.done = {(r["part"], r["setting"], r["index"], r["model"]) for r in self.results.read()}

    def _s(self, base: str) -> str:
        """The name ``base`` of a setting (or checkpoint, array) for the current replicate: ``base`` for
        seed 0 (the one the figures draw), ``base_s{seed}`` for the others."""
        return base if self.rep == 0 else f"{base}_s{self.rep}"

    def _seed(self) -> int:
        """The base seed of the current replicate (:func:`~.setup.replicate_seed`)."""
        return replicate_seed(self.config, self.rep)

    def _is_done(self, part: str, setting: str, index: Any, model: str) -> bool:
        """Whether the unit's result rows exist."""
        return (part, setting, str(index), model) in self.done

    def _write(self, part: str, setting: str, index: Any, model: str, metrics: dict[str, float],
               history: dict[str, list[float]] | None = None) -> None:
        """Curves first, then the result rows in one append (the unit counts as done after it)."""
        if history:
            self.curves.append({"part": part, "setting": setting, "index": index, "model": model, "epoch": e + 1,
                                "metric": k, "value": float(v)} for k, vs in history.items()
                               for e, v in enumerate(vs))
        self.results.append({"part": part, "setting": setting, "index": index, "model": model, "metric": k,
                             "value": float(v)} for k, v in metrics.items())
        self.done.add((part, setting, str(index), model))

    def _array(self, name: str, values: torch.Tensor | np.ndarray) -> None:
        """Append ``values`` (a vector, or one row per leading index) to ``arrays`` as ``name``."""
        a = np.asarray(torch.as_tensor(values).detach().cpu().to(torch.float64))
        a = a.reshape(a.shape[0], -1) if a.ndim > 1 else a.reshape(-1, 1)
        self.arrays.append({"name": name, "row": i, "col": j, "value": float(a[i, j])}
                           for i in range(a.shape[0]) for j in range(a.shape[1]))

    def _train_pair_metrics(self, out: dict[str, Any], theta: torch.Tensor, theta0: torch.Tensor) -> dict[str, float]:
        """The final metrics of a :func:`~.tasks.train_binary` run and the distances of ``θ`` to ``θ₀``."""
        keys = ("test_accuracy", "train_accuracy", "train_loss", "test_loss", "converged_epoch", "converged_iteration")
        return {**{k: out[k] for k in keys}, **distances(theta, theta0)}

    def run(self) -> None:
        """Set up (data, θ₀, K₀'s spectrum), then the configured parts in the order of :data:`~.config.PARTS`."""
        cfg = self.config
        runners: dict[str, Callable[[], None]] = {"eigen": self.run_eigen, "nad": self.run_nad,
                                                  "size": self.run_size, "energy": self.run_energy,
                                                  "lemma": self.run_lemma}
        self._tables()
        t0 = time.perf_counter()
        # rank 0 computes each replicate's K₀ spectrum; the others load it
        self.setups: dict[int, Setup] = {}
        for s in cfg.seeds:
            self.setups[s] = self.ctx.once(lambda s=s: build_setup(cfg, self.store, self.device, s))
        self.rep = cfg.seeds[0]
        self.setup = self.setups[self.rep]
        self.log(f"linearized-generalization: setup (data, θ₀, K₀ spectrum; seeds {list(cfg.seeds)}) "
                 f"{time.perf_counter() - t0:.1f}s")
        # units of a torchrun launch: (seed, part), with eigen and energy together (both use the rotation
        # run's checkpoints), Lemma 1 on the first seed only, and part size split into its runs (claimed
        # inside run_size)
        units = [(s, p) for s in cfg.seeds for p in PARTS if p in cfg.parts and p != "size"
                 and not (p == "energy" and "eigen" in cfg.parts) and not (p == "lemma" and s != cfg.seeds[0])]
        for s, unit in self.ctx.mine(units, key=lambda u: f"seed{u[0]} {u[1]}"):
            self.rep, self.setup = s, self.setups[s]
            for part in ((unit, "energy") if unit == "eigen" and "energy" in cfg.parts else (unit,)):
                t = time.perf_counter()
                runners[part]()
                self.log(f"linearized-generalization: seed {s} part {part} took {time.perf_counter() - t:.1f}s")
        self.rep, self.setup = cfg.seeds[0], self.setups[cfg.seeds[0]]
        if "size" in cfg.parts:
            t = time.perf_counter()
            runners["size"]()
            self.log(f"linearized-generalization: part size took {time.perf_counter() - t:.1f}s")

    def _bar_flag(self) -> bool | None:
        return self.config.progress_flag

    # ---- part 1: eigenfunction targets ------------------------------------------------------------
    def run_eigen(self) -> None:
        """Figs. 2, 3, 13, 14: network and linearization trained on ``sign(φ_j)`` for each ``eigen_indices``
        (the network on ``rotation_target`` keeps its checkpoints for part energy)."""
        cfg, S = self.config, self.setup
        theta0 = flat_params(S.model0)
        cos = binarization_cosine(S.evecs, cfg.eigen_indices)
        for i, j in enumerate(cfg.eigen_indices):
            if not self._is_done("eigen", self._s("phi"), j, "kernel"):
                self._write("eigen", self._s("phi"), j, "kernel", {"eigenvalue": float(S.evals[j]),
                                                          "binarization_cosine": float(cos[i])})
            xtr, ytr, xte, yte = self.setup.eigen_task(j)
            for kind in ("nn", "lin"):
                if self._is_done("eigen", self._s("phi"), j, kind):
                    continue
                if kind == "nn" and j == cfg.rotation_target and "energy" in cfg.parts:
                    out, model = self._rotation_run()
                else:
                    model = copy.deepcopy(S.model0) if kind == "nn" else Linearized(S.model0)
                    out = train_binary(model, xtr, ytr, xte, yte, cfg.recipe(), self._seed() + 1,
                                       progress=self._bar_flag(), desc=f"eigen φ_{j} {kind}")
                self._write("eigen", self._s("phi"), j, kind,
                            self._train_pair_metrics(out, flat_params(model), theta0), out["history"])
                self.log(f"  seed {self.rep} φ_{j} {kind}: test acc {out['test_accuracy']:.3f}, train loss "
                         f"{out['train_loss']:.4f}")

    def _ckpt_epochs(self) -> list[int]:
        """Epochs of the kept network checkpoints: 0, ``checkpoint_epochs`` and the end."""
        cfg = self.config
        return sorted({0, *cfg.checkpoint_epochs, cfg.epochs})

    def _rotation_run(self) -> tuple[dict[str, Any], nn.Module]:
        """The network trained on ``sign(φ_target)`` with its checkpoints saved (tag ``rot``)."""
        cfg, S = self.config, self.setup
        xtr, ytr, xte, yte = self.setup.eigen_task(cfg.rotation_target)
        keep = set(self._ckpt_epochs())

        def save(e: int, model: nn.Module) -> None:
            if e in keep:
                self.store.save_checkpoint(f"{self._s('rot')}_ep{e}", e, {"model": model.state_dict()}, keep=1)

        model = copy.deepcopy(S.model0)
        out = train_binary(model, xtr, ytr, xte, yte, cfg.recipe(), self._seed() + 1, on_epoch=save,
                           progress=self._bar_flag(), desc=f"eigen φ_{cfg.rotation_target} nn (checkpoints)")
        return out, model

    def _checkpoints(self, tag: str, runner) -> dict[int, dict[str, torch.Tensor]]:
        """State dicts of the checkpoints ``tag_ep{e}``; runs ``runner()`` first when one is missing."""
        epochs = self._ckpt_epochs()
        got = {e: self.store.load_checkpoint(f"{tag}_ep{e}") for e in epochs}
        if any(v is None for v in got.values()):
            runner()
            got = {e: self.store.load_checkpoint(f"{tag}_ep{e}") for e in epochs}
        return {e: v["model"] for e, v in got.items()}

    # ---- part 2: NADs -------------------------------------------------------------------------
    def run_nad(self) -> None:
        """Figs. 4, 10 and Theorem 1: the NADs of a GeLU LeNet, a Monte-Carlo check of Theorem 1, and network
        vs linearization on the linearly separable tasks of eq. 5 along ``v_j``."""
        cfg = self.config
        shape = cfg.nad_input_shape()
        d = int(np.prod(shape))
        torch.manual_seed(self._seed() + 1000)
        model0 = lecun_init_(make_lenet(shape, cfg.nad_activation)).to(self.device).eval()
        ck = self.store.load_checkpoint(self._s("nad"))
        if ck is not None:
            model0.load_state_dict(ck["theta0"])
            alphas, V = ck["alphas"], ck["directions"]
        else:
            m64 = copy.deepcopy(model0).double()
            with torch_threads(0):
                alphas, V, _ = neural_anisotropy_directions(m64, shape, cfg.nad_samples,
                                                            torch.Generator().manual_seed(self._seed() + 1001))
            self.store.save_checkpoint(self._s("nad"), 0, {"theta0": model0.state_dict(), "alphas": alphas.cpu(),
                                                  "directions": V.cpu()})
        first = self.rep == cfg.seeds[0]
        if first:  # the figures' NADs (rows whose key exists are not written again)
            self._array("nad_alpha", alphas)
            self._array("nad_images", V[:min(cfg.nad_show, d)])
        # Theorem 1 is an identity: checked once (first seed)
        if first and cfg.nad_mc_samples and not self._is_done("nad", "theorem1", 0, "mc"):
            self._nad_theorem1(model0, V, shape)
        theta0 = flat_params(model0)
        for j in cfg.nad_indices:
            if not self._is_done("nad", self._s("linear"), j, "kernel"):
                self._write("nad", self._s("linear"), j, "kernel", {"alpha": float(alphas[j])})
            base = self._seed() * 7919
            xtr, ytr = nad_task(V[j], cfg.nad_train, shape, cfg.nad_eps, cfg.nad_sigma, base + 2 * j)
            xte, yte = nad_task(V[j], cfg.nad_test, shape, cfg.nad_eps, cfg.nad_sigma, base + 2 * j + 1)
            xtr, ytr, xte, yte = (t.to(self.device) for t in (xtr, ytr, xte, yte))
            for kind in ("nn", "lin"):
                if self._is_done("nad", self._s("linear"), j, kind):
                    continue
                model = copy.deepcopy(model0) if kind == "nn" else Linearized(model0)
                out = train_binary(model, xtr, ytr, xte, yte, cfg.recipe(cfg.nad_epochs), self._seed() + 2,
                                   progress=self._bar_flag(), desc=f"NAD {j} {kind}")
                self._write("nad", self._s("linear"), j, kind,
                            self._train_pair_metrics(out, flat_params(model), theta0), out["history"])
                self.log(f"  seed {self.rep} NAD {j} {kind}: test acc {out['test_accuracy']:.3f}")

    def _nad_theorem1(self, model0: nn.Module, V: torch.Tensor, shape: tuple[int, ...]) -> None:
        """Theorem 1 by Monte Carlo: ``‖E[∇²_{x,θ} f] v‖²`` (from ``nad_expect_samples`` draws) against
        the unbiased estimate of ``E_{x,x'}[vᵀx Θ(x,x') vᵀx']`` (``nad_mc_samples`` other draws)."""
        cfg = self.config
        k = min(cfg.nad_check, V.shape[0])
        m64 = copy.deepcopy(model0).double().eval()
        g = torch.Generator().manual_seed(self._seed() + 1002)
        with torch_threads(0):
            xe = torch.randn(cfg.nad_expect_samples, *shape, generator=g, dtype=torch.float64).to(self.device)
            A = mixed_derivative(m64, xe)
            pred = predicted_linear_alignment(A, V[:k].double())
            xm = torch.randn(cfg.nad_mc_samples, *shape, generator=g, dtype=torch.float64).to(self.device)
            unbiased, plugin = (t.cpu() for t in linear_alignment_mc(m64, V[:k].double(), xm))
            pred = pred.cpu()
        for i in range(k):
            self._write("nad", "theorem1", i, "check", {"predicted": float(pred[i]), "mc_unbiased": float(unbiased[i]),
                                                        "mc_plugin": float(plugin[i])})
        self._write("nad", "theorem1", 0, "mc", {"samples": cfg.nad_mc_samples})

    # ---- part 3: non-linear advantage vs n --------------------------------------------------------------
    def run_size(self) -> None:
        """Fig. 5: network vs linearization on the half-classes task for growing stratified training sets (per
        ``size_seeds``), and on the XOR task; each model a unit claimed across ranks."""
        cfg, S = self.config, self.setup
        y_tr = half_classes(S.y_train_cls, S.n_classes).to(S.x_train.device)
        y_te = half_classes(S.y_test_cls, S.n_classes).to(S.x_train.device)
        n_tr = S.x_train.shape[0]
        for seed in cfg.size_seeds:
            model0 = build_scalar_model(cfg.model, S.input_shape, hidden=cfg.hidden, activation=cfg.activation,
                                        width=cfg.width, seed=cfg.seed + seed).to(self.device).eval()
            theta0 = flat_params(model0)
            for n in cfg.sizes:
                n = min(n, n_tr)
                idx = stratified_subset(S.y_train_cls.cpu(), n, cfg.seed + seed).to(S.x_train.device)
                for kind in ("nn", "lin"):
                    if self._is_done("size", f"half_s{seed}", n, kind) or \
                            not self.ctx.claim(f"size half_s{seed} n{n} {kind}"):
                        continue
                    model = copy.deepcopy(model0) if kind == "nn" else Linearized(model0)
                    out = train_binary(model, S.x_train[idx], y_tr[idx], S.x_test, y_te, cfg.recipe(cfg.size_epochs),
                                       cfg.seed + seed + 3, progress=self._bar_flag(), desc=f"half n={n} {kind}")
                    self._write("size", f"half_s{seed}", n, kind,
                                self._train_pair_metrics(out, flat_params(model), theta0))
                    self.log(f"  half-classes n={n} seed {seed} {kind}: test acc {out['test_accuracy']:.3f}")
        if not cfg.xor_sizes:
            return
        xte, yte = xor_task(cfg.xor_test, cfg.xor_dim, cfg.seed + 4242)
        xall, yall = xor_task(max(cfg.xor_sizes), cfg.xor_dim, cfg.seed + 4243)
        for seed in cfg.size_seeds:
            model0 = build_scalar_model("mlp", (cfg.xor_dim,), hidden=cfg.hidden, activation=cfg.activation,
                                        seed=cfg.seed + seed + 50).to(self.device).eval()
            theta0 = flat_params(model0)
            for n in cfg.xor_sizes:
                for kind in ("nn", "lin"):
                    if self._is_done("size", f"xor_s{seed}", n, kind) or \
                            not self.ctx.claim(f"size xor_s{seed} n{n} {kind}"):
                        continue
                    model = copy.deepcopy(model0) if kind == "nn" else Linearized(model0)
                    out = train_binary(model, xall[:n].to(self.device), yall[:n].to(self.device), xte.to(self.device),
                                       yte.to(self.device), cfg.recipe(cfg.xor_epochs), cfg.seed + seed + 5,
                                       progress=self._bar_flag(), desc=f"xor n={n} {kind}")
                    self._write("size", f"xor_s{seed}", n, kind,
                                self._train_pair_metrics(out, flat_params(model), theta0))
                    self.log(f"  XOR n={n} seed {seed} {kind}: test acc {out['test_accuracy']:.3f}")

    # ---- part 4: energy concentration, rotation, late linearization ------------------------------------
    def _half_run(self) -> tuple[dict[str, Any], nn.Module]:
        cfg, S = self.config, self.setup
        y_tr = half_classes(S.y_train_cls, S.n_classes).to(S.x_train.device)
        y_te = half_classes(S.y_test_cls, S.n_classes).to(S.x_train.device)
        keep = set(self._ckpt_epochs())

        def save(e: int, model: nn.Module) -> None:
            if e in keep:
                self.store.save_checkpoint(f"{self._s('half')}_ep{e}", e, {"model": model.state_dict()}, keep=1)

        model = copy.deepcopy(S.model0)
        out = train_binary(model, S.x_train, y_tr, S.x_test, y_te, cfg.recipe(), self._seed() + 6, on_epoch=save,
                           progress=self._bar_flag(), desc="half-classes nn (checkpoints)")
        return out, model

    def run_energy(self) -> None:
        """Figs. 6–9, 15, 16, Table 1: energy concentration at the checkpoints of the half-classes and the
        ``sign(φ_target)`` runs, the single-axis rotation, and the unbiased linearizations at the checkpoints."""
        cfg, S = self.config, self.setup
        theta0 = flat_params(S.model0)
        # (a) half-classes task: the network with checkpoints
        y_tr = half_classes(S.y_train_cls, S.n_classes).to(S.x_train.device)
        y_te = half_classes(S.y_test_cls, S.n_classes).to(S.x_train.device)

        def half_runner() -> None:
            out, model = self._half_run()
            if not self._is_done("energy", self._s("half"), "final", "nn"):
                self._write("energy", self._s("half"), "final", "nn",
                            self._train_pair_metrics(out, flat_params(model), theta0), out["history"])

        half_ck = self._checkpoints(self._s("half"), half_runner)
        if not self._is_done("energy", self._s("half"), "final", "nn"):
            half_runner()
        self._energy_rows(self._s("half"), half_ck, S.x_train, y_tr)
        # (b) the eigenfunction target: the rotation run's checkpoints (trained by part eigen when it ran)
        xtr, ytr, xte, yte = self.setup.eigen_task(cfg.rotation_target)

        def rot_runner() -> None:
            out, model = self._rotation_run()
            if not self._is_done("eigen", self._s("phi"), cfg.rotation_target, "nn"):
                self._write("eigen", self._s("phi"), cfg.rotation_target, "nn",
                            self._train_pair_metrics(out, flat_params(model), theta0), out["history"])

        rot_ck = self._checkpoints(self._s("rot"), rot_runner)
        self._energy_rows(self._s("phi"), rot_ck, xtr, ytr)
        self._rotation(rot_ck[cfg.epochs])
        # (c) linearizations at checkpoints θ_t (unbiased), on both tasks
        for t in sorted({0, *cfg.checkpoint_epochs, cfg.epochs}):
            self._late_linear("phi", t, rot_ck[t], xtr, ytr, xte, yte)
        for t in sorted({0, *cfg.binary_lin_epochs, cfg.epochs}):
            self._late_linear("half", t, half_ck[t], S.x_train, y_tr, S.x_test, y_te)

    def _model_at(self, state: dict[str, torch.Tensor]) -> nn.Module:
        """A copy of θ₀'s network holding the checkpointed ``state`` (eval mode)."""
        m = copy.deepcopy(self.setup.model0)
        m.load_state_dict(state)
        return m.eval()

    def _energy_rows(self, setting: str, cks: dict[int, dict[str, torch.Tensor]], x: torch.Tensor,
                     y: torch.Tensor) -> None:
        """``E_K`` of the labels ``y`` on the top-``K`` eigenvectors of the network's NTK Gram on ``x`` at each
        checkpoint (with random labels at epoch 0, and the mean ``‖∇f‖²``)."""
        cfg = self.config
        kmax = max(cfg.energy_ks)
        for e, state in cks.items():
            if self._is_done("energy", setting, e, "kernel"):
                continue
            with torch_threads(0):
                K = ntk_gram(self._model_at(state), x)
                _, U = top_eigh(K, kmax)
            U = U.cpu()
            ec = energy_concentration(U, y.to(torch.float64).cpu(), cfg.energy_ks)
            rows = {}
            for k, (r, r2) in ec.items():
                rows[f"E{k}"], rows[f"E{k}_sq"] = r, r2
                rows[f"E{k}_random"] = math.sqrt(k / x.shape[0])
            if e == 0:
                g = torch.Generator().manual_seed(self._seed() + 99)
                yr = torch.where(torch.rand(x.shape[0], generator=g, dtype=torch.float64) < 0.5, -1.0, 1.0)
                for k, (r, _) in energy_concentration(U, yr, cfg.energy_ks).items():
                    rows[f"E{k}_random_labels"] = r
            rows["jacobian_energy"] = float(torch.diagonal(K).mean().cpu())
            self._write("energy", setting, e, "kernel", rows)

    def _rotation(self, final_state: dict[str, torch.Tensor]) -> None:
        """α_0(φ_j) and α_T(φ_j) = φ_jᵀ K_T φ_j / φ_jᵀφ_j for the leading eigenvectors of K₀, on the whole
        support and restricted (and renormalized) to its train and test parts."""
        cfg, S = self.config, self.setup
        if self._is_done("energy", self._s("rotation"), cfg.rotation_target, "kernel"):
            return
        r = cfg.rotation_max_index
        Phi = S.evecs[:, :r].to(torch.float64)
        xs = S.support_x()
        with torch_threads(0):
            K0 = ntk_gram(S.model0, xs).cpu()
            KT = ntk_gram(self._model_at(final_state), xs).cpu()
        m1 = S.n_support_train
        splits = {"all": slice(None), "train": slice(0, m1), "test": slice(m1, None)}
        summary: dict[str, float] = {}
        for name, sl in splits.items():
            if Phi[sl].shape[0] < 2:
                continue
            a0 = alignment(K0[sl, sl], Phi[sl])
            aT = alignment(KT[sl, sl], Phi[sl])
            self._array(self._s(f"alpha0_{name}"), a0)
            self._array(self._s(f"alphaT_{name}"), aT)
            ratio = aT / a0
            other = torch.cat([ratio[:cfg.rotation_target], ratio[cfg.rotation_target + 1:]])
            summary[f"{name}_ratio_target"] = float(ratio[cfg.rotation_target])
            summary[f"{name}_ratio_median_other"] = float(other.median())
            summary[f"{name}_ratio_max_other"] = float(other.max())
            summary[f"{name}_argmax"] = int(ratio.argmax())
        summary["jacobian_energy_0"] = float(torch.diagonal(K0).mean())
        summary["jacobian_energy_T"] = float(torch.diagonal(KT).mean())
        self._write("energy", self._s("rotation"), cfg.rotation_target, "kernel", summary)

    def _late_linear(self, task: str, t: int, state: dict[str, torch.Tensor], xtr: torch.Tensor,
                     ytr: torch.Tensor, xte: torch.Tensor, yte: torch.Tensor) -> None:
        """The unbiased linearization ``(θ − θ_t)ᵀ∇f_{θ_t}(x)`` trained from ``θ_t`` with the recipe on
        ``task`` (``phi`` or ``half``)."""
        cfg = self.config
        setting = self._s(f"late_{task}")
        if self._is_done("energy", setting, t, "lin"):
            return
        lin = Linearized(self._model_at(state))
        off_tr = lin.initial_output(xtr).reshape(-1).to(ytr.dtype)
        off_te = lin.initial_output(xte).reshape(-1).to(yte.dtype)
        theta_t = flat_params(lin)
        out = train_binary(lin, xtr, ytr, xte, yte, cfg.recipe(), self._seed() + (1 if task == "phi" else 6),
                           offset=off_tr, offset_test=off_te, progress=self._bar_flag(),
                           desc=f"late linearization {task} @ epoch {t}")
        self._write("energy", setting, t, "lin", self._train_pair_metrics(out, flat_params(lin), theta_t),
                    out["history"])
        self.log(f"  seed {self.rep} linearized at epoch {t} ({task}): test acc {out['test_accuracy']:.3f}, "
                 f"train loss {out['train_loss']:.4f}")

    # ---- part 5: Lemma 1 -----------------------------------------------------------------------------
    def run_lemma(self) -> None:
        """Lemma 1 on the support for eigenfunction targets, eigenvectors, the half-classes labels and random
        labels, and ``α(u_j) = ‖Jᵀu_j‖² = λ_j`` through one backward product per vector."""
        cfg, S = self.config, self.setup
        if self._is_done("lemma", "identity", 0, "kernel"):
            return
        xs = S.support_x()
        with torch_threads(0):
            K = ntk_gram(S.model0, xs).cpu()
        m = K.shape[0]
        vecs: dict[str, torch.Tensor] = {}
        for j in cfg.eigen_indices:
            vecs[f"sign_phi_{j}"] = eigenfunction_targets(S.evecs, [j])[0]
        for j in sorted({0, 1, *cfg.eigen_indices[:3]}):
            vecs[f"u_{j}"] = S.evecs[:, j].to(torch.float64)
        y_cls = torch.cat([S.y_train_cls[S.support_train], S.y_test_cls[S.support_test]]).cpu()
        vecs["half_classes"] = half_classes(y_cls, S.n_classes).to(torch.float64)
        g = torch.Generator().manual_seed(cfg.seed + 5)
        for i in range(cfg.lemma_random):
            vecs[f"random_{i}"] = torch.where(torch.rand(m, generator=g, dtype=torch.float64) < 0.5, -1.0, 1.0)
        F = torch.stack(list(vecs.values()), 1)
        res = lemma1(K, F, cfg.lemma_rcond)
        for i, name in enumerate(vecs):
            row = {k: float(v[i]) for k, v in res.items()}
            row["ratio"] = row["bound"] / row["rkhs_norm_sq"]
            self._write("lemma", "vectors", name, "kernel", row)
        # α(u_j) = ‖Jᵀu_j‖² = λ_j through one backward product per vector (no Gram)
        m64 = copy.deepcopy(S.model0).double().eval()
        rows = {}
        for j in sorted({0, *cfg.eigen_indices[:2]}):
            with torch_threads(0):
                v = alignment_vector(m64, xs.double(), S.evecs[:, j], torch.ones(m, dtype=torch.float64))
            rows[f"alpha_u{j}_backward"] = float(v.pow(2).sum())
            rows[f"lambda_{j}"] = float(S.evals[j])
        self._write("lemma", "identity", 0, "kernel", rows)

    # ---- report --------------------------------------------------------------------------------------
    def report(self) -> ReportContent:
        return build_report(self.config, self.store)

