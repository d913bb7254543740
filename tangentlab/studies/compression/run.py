"""The run of the ``compression`` study: :class:`Compression`.

Two parts, each resumable unit by unit: :meth:`Compression.run_models` (the stripe and
cylinder models: one unit per ``(model, p, seed)``, resumed inside a unit from its last
training checkpoint) and :meth:`Compression.run_cnn` (the MnasNet-like CNN on digit parity:
one unit per ``(p, seed)``).
"""

from __future__ import annotations

import math
import time
from typing import Any

import numpy as np
import torch

from ...analysis.compression import (
    MeanFieldNet,
    NetParams,
    amplification,
    compress,
    init_params,
    kernel_test_error,
    knn_mutual_information,
    label_projections,
    net_output,
)
from ...api import ntk
from ...progress import progress
from ...training import TrainingCheckpoint
from ..framework.report import ReportContent
from ..framework.runner import Study
from .config import (
    KERNEL_COLUMNS,
    KERNEL_KEY,
    KERNELS,
    MODEL_SEED,
    RUN_COLUMNS,
    RUN_KEY,
    SPECTRA_COLUMNS,
    SPECTRA_KEY,
    TITLE,
    TRAJ_COLUMNS,
    TRAJ_KEY,
    CompressionConfig,
)
from .data import TaskSplit, gaussian_task, n_images, parity_task
from .experiments import fit_kernel, run_alpha_scan, run_fixed_points
from .figures import build_report
from .models import MnasNetLike
from .training import FeatureRun, train_feature


def checkpoint_tag(model: str, p: int, seed: int) -> str:
    """Checkpoint tag of one training unit (one per unit: ranks of a torchrun launch train side by side)."""
    return f"train_{model}_p{p}_s{seed}"


def _kernel_matrix(net: MeanFieldNet, x1: torch.Tensor, x2: torch.Tensor | None = None,
                   last_only: bool = False) -> torch.Tensor:
    """Empirical NTK (all parameters, or the last layer's β only) as an (N1, N2) matrix."""
    K = ntk(net, x1, x2, params=net.last if last_only else None, progress=False)
    return K.as_matrix()


def _spectrum_rows(cfg: CompressionConfig, key: dict[str, Any], K: torch.Tensor, y: torch.Tensor,
                   tail: bool = True) -> list[dict[str, Any]]:
    """Kernel-PCA rows of one kernel: eigenvalue, ω_r², cumulative Σ ω² and the k-NN mutual
    information for the top ``n_modes`` eigenvectors, then (``tail``) the cumulative label
    energy at ~12 log-spaced ranks down to p (no MI)."""
    evals, evecs, omega2 = label_projections(K, y)
    cum = omega2.cumsum(0)
    p = y.numel()
    ranks = [(r, True) for r in range(1, cfg.n_modes + 1)]
    if tail:
        ranks += [(int(r), False) for r in np.unique(np.geomspace(cfg.n_modes + 1, p, 12).astype(int))]
    return [{**key, "r": r, "eigenvalue": float(evals[r - 1]), "omega2": float(omega2[r - 1]),
             "cumulative": float(cum[r - 1]),
             "mi": knn_mutual_information(evecs[:, r - 1], y, k=cfg.mi_k) if mi else math.nan} for r, mi in ranks]


class Compression(Study):
    parallel = True
    name = "compression"
    title = TITLE
    description = "Λ* ~ √p, feature vs lazy learning curves, NTK kernel PCA before/after training"
    config_class = CompressionConfig
    config: CompressionConfig

    def run(self) -> None:
        self.run_models()
        if self.config.fixed_points:
            run_fixed_points(self)
        if self.config.alpha_scan:
            run_alpha_scan(self)
        if self.config.cnn:
            self.run_cnn()

    def run_models(self) -> None:
        """The stripe and cylinder models: one unit per ``(model, p, seed)``; a unit is done
        when its ``runs`` row is written."""
        cfg, store = self.config, self.store
        runs = store.table("runs", RUN_COLUMNS, RUN_KEY)
        units = [(m, p, s) for s in range(cfg.seeds + cfg.lambda_seeds) for m in cfg.models
                 for p in cfg.ps(m) + cfg.lambda_p_values]
        done = {(r["model"], int(r["p"]), int(r["seed"])) for r in store.read("runs")}
        todo = [u for u in units if u not in done]
        if done:
            self.log(f"compression: resuming, {len(units) - len(todo)} of {len(units)} runs done")
        t0 = time.perf_counter()
        for model, p, s in progress(todo, "compression: runs", cfg.progress_flag):
            if not self.ctx.claim(f"run {model} p{p} s{s}"):  # another rank of a torchrun launch does it
                continue
            t1 = time.perf_counter()
            row = self.model_unit(model, p, s)
            row["wall_s"] = time.perf_counter() - t1
            runs.append([row])
            store.drop_checkpoints(checkpoint_tag(model, p, s))  # the row is written: the unit is done
            self.log(f"compression: {model} p={p} seed={s}: Λ*={row['lambda_star']:.3g} Λmax={row['lambda_max']:.3g} "
                     f"err={row['test_error']:.4f} lazy={row['lazy_error']:.4f} "
                     f"compressed={row['compressed_error']:.4f} ({row['stop']}, {row['wall_s']:.1f}s)"
                     if s < cfg.seeds else f"compression: {model} p={p} seed={s}: Λ*={row['lambda_star']:.3g} "
                     f"(Λ*-only run, {row['wall_s']:.1f}s)")
        self.log(f"compression: {len(todo)} runs took {time.perf_counter() - t0:.1f}s")

    def run_cnn(self) -> None:
        """The CNN part: one unit per ``(p, seed)``; a unit is done when its ``network`` row
        of the ``kernels`` table is written."""
        cfg = self.config
        done_cnn = {(int(r["p"]), int(r["seed"])) for r in self.store.read("kernels")
                    if r["model"] == "cnn" and r["kernel"] == "network"}
        t0 = time.perf_counter()
        for s in range(cfg.seed, cfg.seed + cfg.cnn_seeds):
            for p in cfg.cnn_p_values:
                if (p, s) not in done_cnn and self.ctx.claim(f"cnn p{p} s{s}"):
                    t1 = time.perf_counter()
                    err = self.cnn_unit(p, s)
                    self.log(f"compression: CNN p={p} seed={s}: " + ", ".join(f"{k} {v:.4f}" for k, v in err.items())
                             + f" ({time.perf_counter() - t1:.1f}s)")
        self.log(f"compression: CNN part took {time.perf_counter() - t0:.1f}s")

    def model_unit(self, model: str, p: int, seed: int) -> dict[str, Any]:
        """One ``(model, p, seed)``: feature training (up to t* only for the Λ*-only runs), then
        kernel learning in the lazy and compressed-lazy regimes and, at ``ntk_p``, the NTK
        signatures. Writes the ``trajectory``, ``kernels`` and ``spectra`` rows; returns the
        ``runs`` row."""
        cfg, store = self.config, self.store
        dev = self.device
        d, d_par = cfg.dims(model)
        lambda_only = seed >= cfg.seeds or p in cfg.lambda_p_values
        n_kernel = p if (cfg.ntk_p == p and model in cfg.ntk_models and not lambda_only) else 0
        data = gaussian_task("cylinder" if model == "cylinder" else "stripe", d, p, cfg.n_test, n_kernel, seed,
                             d_par=d_par,
                             interfaces=tuple(cfg.interfaces))
        data = data.to(dev)
        gen = torch.Generator().manual_seed(7919 * seed + 17 + MODEL_SEED[model] + 131 * p)
        P0 = init_params(d, cfg.width, gen)
        P0 = NetParams(P0.w.to(dev), P0.b.to(dev), P0.beta.to(dev))
        f0_train, f0_test = net_output(P0, data.x_train), net_output(P0, data.x_test)
        run = FeatureRun(P0.clone())
        ck = TrainingCheckpoint(store, checkpoint_tag(model, p, seed), run, None)
        if ck.restore() is not None:
            self.log(f"compression: resuming {model} p={p} seed={seed} at step {run.step}")

        def save(r: FeatureRun) -> None:
            ck.save(r.step)

        bar = self.progress_bar(cfg.max_steps, f"compression: {model} p={p} seed={seed}")
        bar.update(run.step)
        try:
            train_feature(run, data.x_train, data.y_train, f0_train, cfg.alpha, d_par, max_dgrad=cfg.max_dgrad,
                          max_dout=cfg.max_dout, dt_min=cfg.dt_min,
                          stop_fraction=min(cfg.stop_fraction, 0.1 + 1e-9) if lambda_only else cfg.stop_fraction,
                          max_steps=cfg.max_steps, on_checkpoint=save, checkpoint_every=cfg.checkpoint_every,
                          bar=bar)
        finally:
            bar.close()
        h = cfg.width
        store.table("trajectory", TRAJ_COLUMNS, TRAJ_KEY).append(
            [{"model": model, "p": p, "seed": seed, "step": r["step"], "t": r["t"] / h, "lambda": r["lambda"],
              "fitted": r["fitted"]} for r in run.trajectory])
        F_test = cfg.alpha * (net_output(run.params, data.x_test) - f0_test)
        err = float((data.y_test * F_test <= 0).double().mean())
        row: dict[str, Any] = {
            "model": model, "d": d, "d_par": d_par, "p": p, "seed": seed, "t_star": run.t_star / h,
            "lambda_star": run.lambda_star, "lambda_max": run.lambda_max,
            "lambda_final": amplification(run.params.w, d_par), "t_final": run.t / h, "steps": run.step,
            "fitted_final": run.fitted, "stop": run.stop, "test_error": err, "lazy_error": math.nan,
            "lazy_converged": "", "compressed_error": math.nan, "compressed_converged": ""}
        if lambda_only:  # trained up to t* only: Λ* (and the trajectory up to t*), nothing else
            row.update(stop="t* (Λ*-only run)", test_error=math.nan, lambda_max=math.nan, lambda_final=math.nan)
            return row
        net0 = MeanFieldNet(P0).to(dev)
        kernels = store.table("kernels", KERNEL_COLUMNS, KERNEL_KEY)
        krows = []

        def kernel_learning(name: str, xtr: torch.Tensor, ytr: torch.Tensor, xte: torch.Tensor,
                            net: MeanFieldNet, last_only: bool = False) -> tuple[float, bool]:
            K = _kernel_matrix(net, xtr, last_only=last_only)
            fit = fit_kernel(cfg, K, ytr)
            e = kernel_test_error(_kernel_matrix(net, xte, xtr, last_only), fit, data.y_test)
            krows.append({"model": model, "p": p, "seed": seed, "kernel": name, "test_error": e, "steps": fit.steps,
                          "converged": fit.converged})
            return e, fit.converged

        if cfg.lazy:
            row["lazy_error"], row["lazy_converged"] = kernel_learning("lazy", data.x_train, data.y_train,
                                                                       data.x_test, net0)
        if cfg.compressed_lazy and math.isfinite(run.lambda_star):
            lam = run.lambda_star
            row["compressed_error"], row["compressed_converged"] = kernel_learning(
                "compressed_lazy", compress(data.x_train, d_par, lam), data.y_train,
                compress(data.x_test, d_par, lam), net0)
        if n_kernel:
            self.signatures(model, p, seed, data, net0, MeanFieldNet(run.params).to(dev), kernel_learning)
        krows.append({"model": model, "p": p, "seed": seed, "kernel": "network", "test_error": err,
                      "steps": run.step, "converged": run.fitted >= 1.0})
        kernels.append(krows)
        return row

    def signatures(self, model: str, p: int, seed: int, data: TaskSplit, net0: MeanFieldNet,
                    net1: MeanFieldNet, kernel_learning: Any) -> None:
        """Kernel PCA of the NTK / last-layer kernel at init and after training on the
        independent kernel set, and kernel learning with each frozen kernel."""
        cfg = self.config
        rows = []
        for name in KERNELS:
            net = net0 if name.endswith("init") else net1
            last = name.startswith("last")
            kernel_learning(name, data.x_kernel, data.y_kernel, data.x_test, net, last)
            K = _kernel_matrix(net, data.x_kernel, last_only=last)
            rows += _spectrum_rows(cfg, {"model": model, "p": p, "seed": seed, "kernel": name}, K, data.y_kernel)
        self.store.table("spectra", SPECTRA_COLUMNS, SPECTRA_KEY).append(rows)

    def cnn_unit(self, p: int, seed: int) -> dict[str, float]:
        """§5.2 on digit parity at one training-set size ``p`` and seed: the MnasNet-like CNN
        trained in the feature regime by full-batch gradient descent (adaptive step, no
        momentum; the paper used continuous momentum) on the α-normalized soft hinge
        ``softplus_β(1 − y F)/α`` with ``F = α (f − f₀)``, until ``stop_fraction`` of the
        margins are met or ``cnn_steps``; then the NTK and the last-layer kernel at
        initialization and after training on an independent kernel set of ``p`` images:
        kernel-learning test errors, label projections and mutual information per mode.
        The test set is the same for every ``p`` (given the seed); the initialization depends
        on the seed only. Returns the test errors by kernel (and ``network``)."""
        cfg = self.config
        dev = self.device
        n_test = cfg.cnn_n_test or n_images(cfg.cnn_dataset) - 2 * max(cfg.cnn_p_values)
        data = parity_task(cfg.cnn_dataset, p, p, n_test, seed, cfg.data_dir)
        data = data.to(dev)
        torch.manual_seed(seed)
        net0 = MnasNetLike(cfg.cnn_width, data.x_train.shape[-1]).to(dev, torch.float64)
        net = MnasNetLike(cfg.cnn_width, data.x_train.shape[-1]).to(dev, torch.float64)
        net.load_state_dict(net0.state_dict())
        with torch.no_grad():
            f0, f0_test = net0(data.x_train)[:, 0], net0(data.x_test)[:, 0]
        a, b = cfg.cnn_alpha, cfg.cnn_loss_beta
        params = [q for q in net.parameters()]
        rows = []
        dt, t = cfg.cnn_lr, 0.0
        def outputs() -> torch.Tensor:
            return a * (net(data.x_train)[:, 0] - f0)

        F = outputs()
        fitted, steps = 0.0, 0
        for step in progress(range(cfg.cnn_steps), f"compression: CNN p={p} seed={seed}", cfg.progress_flag):
            loss = torch.nn.functional.softplus(1 - data.y_train * F, beta=b).mean() / a
            grads = torch.autograd.grad(loss, params)
            old = [q.detach().clone() for q in params]
            F_old = F.detach()
            while True:  # adaptive Euler step: no output moves by more than max_dout·max(1, |F|)
                with torch.no_grad():
                    for q, q0, g in zip(params, old, grads):
                        q.copy_(q0 - dt * g)
                F = outputs()
                dout = float(((F.detach() - F_old).abs() / F_old.abs().clamp_min(1.0)).max())
                if math.isfinite(dout) and dout < cfg.max_dout:
                    break
                dt /= 2
            t += dt
            steps = step + 1
            if dout < cfg.max_dout / 2:
                dt *= 1.1
            fitted = float((data.y_train * F.detach() >= 1).double().mean())
            if step % max(1, cfg.cnn_steps // 25) == 0 or fitted >= cfg.stop_fraction:
                rows.append({"model": "cnn", "p": p, "seed": seed, "step": steps, "t": t, "lambda": math.nan,
                             "fitted": fitted})
            if fitted >= cfg.stop_fraction:
                break
        if not rows or rows[-1]["step"] != steps:
            rows.append({"model": "cnn", "p": p, "seed": seed, "step": steps, "t": t, "lambda": math.nan,
                         "fitted": fitted})
        self.store.table("trajectory", TRAJ_COLUMNS, TRAJ_KEY).append(rows)
        with torch.no_grad():
            F_test = a * (net(data.x_test)[:, 0] - f0_test)
        err = float((data.y_test * F_test <= 0).double().mean())
        errors = {"network": err}
        krows = [{"model": "cnn", "p": p, "seed": seed, "kernel": "network", "test_error": err, "steps": steps,
                  "converged": fitted >= 1.0}]
        net.eval()
        net0.eval()
        spec = []
        for name in KERNELS:
            m = net0 if name.endswith("init") else net
            sel = m.classifier if name.startswith("last") else None
            K = ntk(m, data.x_kernel, params=sel, progress=False).as_matrix()
            Kte = ntk(m, data.x_test, data.x_kernel, params=sel, progress=False).as_matrix()
            fit = fit_kernel(cfg, K, data.y_kernel)
            errors[name] = kernel_test_error(Kte, fit, data.y_test)
            krows.append({"model": "cnn", "p": p, "seed": seed, "kernel": name, "test_error": errors[name],
                          "steps": fit.steps, "converged": fit.converged})
            spec += _spectrum_rows(cfg, {"model": "cnn", "p": p, "seed": seed, "kernel": name}, K, data.y_kernel,
                                   tail=False)
        self.store.table("spectra", SPECTRA_COLUMNS, SPECTRA_KEY).append(spec)
        # the "network" row last: its presence marks the unit as done (resume)
        self.store.table("kernels", KERNEL_COLUMNS, KERNEL_KEY).append(krows[1:] + krows[:1])
        return errors

    def report(self) -> ReportContent:
        return build_report(self.config, self.store)

