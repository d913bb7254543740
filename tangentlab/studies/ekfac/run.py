"""The run of ``ekfac``: :class:`EkfacStudy` and its parts (auto-encoder and CNN
optimization with hyperparameter search, spectrum tracking, EWC demo; see
:mod:`tangentlab.studies.ekfac`). Final training runs are resumable through
:class:`~tangentlab.studies.framework.training.TrainingCheckpoint`."""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from functools import cached_property
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...api import fim
from ...optim import EKFAC, FisherPenalty
from ...training import BatchStream, TrainingCheckpoint
from ...vectors import PVector
from ..framework.models import make_cnn, make_mlp, make_resnet
from ..framework.report import ReportContent
from ..framework.runner import Study
from ..framework.store import cell, to_number
from .config import (
    CURVE_COLUMNS,
    CURVE_KEY,
    EWC_COLUMNS,
    EWC_KEY,
    FIRST_ORDER,
    METHODS,
    SEARCH_COLUMNS,
    SEARCH_KEY,
    SPECTRUM_APPROXIMATIONS,
    SPECTRUM_COLUMNS,
    SPECTRUM_KEY,
    TITLE,
    EkfacConfig,
    period_tag,
    selection_key,
)
from .data import Task, bce_loss, ce_loss, load_cifar10, load_mnist_npz, load_unit_digits
from .figures import build_report
from .models import make_autoencoder, make_optimizer, make_vgg11


def _dtype(name: str) -> torch.dtype:
    return torch.float64 if name == "float64" else torch.float32


class EkfacStudy(Study):
    parallel = True
    name = "ekfac"
    title = TITLE
    description = "Auto-encoder and CNN optimization, recompute period, spectrum tracking, EWC forgetting"
    config_class = EkfacConfig
    config: EkfacConfig

    @property
    def dtype(self) -> torch.dtype:
        return _dtype(self.config.dtype)

    # ---- tasks ---------------------------------------------------------------------------
    @cached_property
    def ae_task(self) -> Task:
        """The auto-encoder problem of parts 1 and 3 (built once per run)."""
        cfg = self.config
        if cfg.dataset == "mnist":
            xt, yt, xv, yv = load_mnist_npz(cfg.data_dir)
        else:
            xt, yt, xv, yv = load_unit_digits(cfg.seed, image=False)
        dt, dev = self.dtype, self.device
        xt, xv = xt.to(dev, dt), xv.to(dev, dt)
        return Task("autoencoder", xt, xt, xv, xv, lambda: make_autoencoder(xt.shape[1], cfg.ae_hidden, dt).to(dev),
                    bce_loss, cfg.batch_size, False)

    def cnn_task(self) -> Task:
        """The classification problem of part 2."""
        cfg = self.config
        dt, dev = self.dtype, self.device
        if cfg.dataset == "cifar10":
            xt, yt, xv, yv = load_cifar10(cfg.data_dir)
            build = (lambda: make_vgg11(10, dt).to(dev)) if cfg.cnn_model == "vgg11" else \
                (lambda: make_resnet(34, 3, 10, 64, dt).to(dev))
        else:
            xt, yt, xv, yv = load_unit_digits(cfg.seed, image=True)
            build = lambda: make_cnn(1, 8, 10, cfg.cnn_width, dt).to(dev)  # noqa: E731
        return Task("cnn", xt.to(dev, dt), yt.to(dev), xv.to(dev, dt), yv.to(dev), build, ce_loss, cfg.cnn_batch_size,
                    True)

    # ---- run -----------------------------------------------------------------------------
    def parts(self) -> list[tuple[str, Callable[[], None]]]:
        """The parts of the run that the configuration enables, in order, as ``(label, method)``."""
        cfg = self.config
        table = (("auto-encoder part", cfg.autoencoder, self.run_autoencoder),
                 ("spectrum tracking", cfg.spectrum, self.run_spectrum),
                 ("CNN part", cfg.cnn, self.run_cnn),
                 ("EWC demo", cfg.ewc, self.run_ewc))
        return [(label, part) for label, enabled, part in table if enabled]

    def run(self) -> None:
        t0 = time.perf_counter()
        for label, part in self.parts():
            t = time.perf_counter()
            part()
            self.log(f"ekfac: {label} took {time.perf_counter() - t:.1f}s")
        self.log(f"ekfac: total {time.perf_counter() - t0:.1f}s")

    def run_autoencoder(self) -> None:
        """Part 1: search and final runs on the auto-encoder, with the recompute period study."""
        cfg = self.config
        self._optimize(self.ae_task, cfg.search_epochs, cfg.epochs, periods=cfg.periods)

    def run_spectrum(self) -> None:
        """Part 3: spectrum tracking, with the (η, ε) selected for EKFAC (a collective search
        when part 1 ran; ``(0.1, 0.01)`` otherwise)."""
        cfg = self.config
        sel = (self._search(self.ae_task, "ekfac", cfg.search_epochs or cfg.epochs, cfg.period) if cfg.autoencoder
               else (0.1, 0.01))
        if self.ctx.claim("spectrum"):
            self._spectrum(self.ae_task, *sel)

    def run_cnn(self) -> None:
        """Part 2: search and final runs on the classifier."""
        cfg = self.config
        self._optimize(self.cnn_task(), cfg.cnn_search_epochs, cfg.cnn_epochs, periods=())

    def run_ewc(self) -> None:
        """Part 4: the EWC demo (one rank)."""
        if self.ctx.claim("ewc"):
            self._ewc()

    # ---- one training run ----------------------------------------------------------------
    @torch.no_grad()
    def _evaluate(self, task: Task, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """Mean loss (and accuracy for classifiers) over ``x`` in chunks."""
        total, hits = 0.0, 0
        for i in range(0, x.shape[0], 1000):
            z = model(x[i:i + 1000])
            total += float(task.loss(z, y[i:i + 1000]).sum())
            if task.classify:
                hits += int((z.argmax(1) == y[i:i + 1000]).sum())
        return total / x.shape[0], (hits / x.shape[0] if task.classify else math.nan)

    def _train(self, task: Task, method: str, lr: float, damping: float, period: int, seed: int, epochs: int,
               tag: str | None = None) -> list[dict[str, Any]]:
        """Train ``epochs`` epochs; returns one row per epoch (0: initialization). ``tag``: the
        run's :class:`TrainingCheckpoint` tag (saved every ``checkpoint_every`` epochs with the
        epoch, the training time, the step count and the rows so far) and the key of its rows
        in the ``curves`` table; without it the run is neither recorded nor resumable."""
        cfg = self.config
        torch.manual_seed(seed)
        model = task.build()
        conv = cfg.conv_mode if task.name == "cnn" else "kfc"
        opt = make_optimizer(method, model, lr, damping, period, cfg, conv)
        n = task.x_train.shape[0]
        stream = BatchStream(n, task.batch_size, seed + 1)
        rows: list[dict[str, Any]] = []
        start, elapsed, cpu, step = 0, 0.0, 0.0, 0
        curves = self.store.table("curves", CURVE_COLUMNS, CURVE_KEY) if tag else None
        base = {"task": task.name, "method": method, "period": period_tag(method, period), "seed": seed}
        ck = TrainingCheckpoint(self.store, tag, model, opt, stream) if tag else None
        saved = ck.restore() if ck is not None else None
        if saved is not None:
            start, elapsed, step = int(saved["epoch"]), float(saved["elapsed"]), int(saved["n_steps"])
            cpu = float(saved.get("cpu_elapsed", math.nan))
            rows = saved["rows"]
        if start == 0:
            tl_, va = self._evaluate(task, model, task.x_train, task.y_train)
            vl, acc = self._evaluate(task, model, task.x_val, task.y_val)
            rows = [{**base, "epoch": 0, "step": 0, "time_s": 0.0, "cpu_s": 0.0, "train_loss": tl_, "val_loss": vl,
                     "val_acc": acc}]
            if curves is not None:
                curves.append(rows)
        diverged = False
        for epoch in range(start + 1, epochs + 1):
            model.train()
            for _ in range(stream.steps_per_epoch):
                # per step: wall time and CPU time of this process (time.process_time; with
                # threads=1 the training's own work, unaffected by the time spent waiting for a core)
                t, c = time.perf_counter(), time.process_time()
                idx = stream.next().to(task.x_train.device)
                opt.zero_grad(set_to_none=True)
                loss = task.loss(model(task.x_train[idx]), task.y_train[idx]).mean()
                if not torch.isfinite(loss):
                    diverged = True
                    break
                loss.backward()
                opt.step()
                if task.x_train.is_cuda:
                    torch.cuda.synchronize()
                cpu += time.process_time() - c
                elapsed += time.perf_counter() - t
                step += 1
            model.eval()
            tl_, _ = self._evaluate(task, model, task.x_train, task.y_train)
            vl, acc = self._evaluate(task, model, task.x_val, task.y_val)
            if diverged or not math.isfinite(tl_):
                tl_, vl, diverged = math.inf, math.inf, True
            row = {**base, "epoch": epoch, "step": step, "time_s": elapsed, "cpu_s": cpu, "train_loss": tl_,
                   "val_loss": vl, "val_acc": acc}
            rows.append(row)
            if curves is not None:
                curves.append([row])
            if diverged:
                break
            if ck is not None and (epoch % cfg.checkpoint_every == 0) and epoch < epochs:
                ck.save(epoch, epoch=epoch, elapsed=elapsed, cpu_elapsed=cpu, n_steps=step, rows=rows)
        if hasattr(opt, "remove_hooks"):
            opt.remove_hooks()
        return rows

    # ---- search + final runs ---------------------------------------------------------------
    def _grid(self, method: str) -> list[tuple[float, float]]:
        cfg = self.config
        if method in FIRST_ORDER:
            return [(lr, 0.0) for lr in cfg.first_order_lrs]
        return [(lr, d) for lr in cfg.lrs for d in cfg.dampings]

    def _search(self, task: Task, method: str, epochs: int, period: int) -> tuple[float, float]:
        """Grid + random perturbations on seed ``seed`` for ``method`` at recompute ``period``;
        returns the selected ``(η, ε)``: the run with the best training loss reached during
        training (thesis §4.4), among the runs that did not diverge (a diverged run has no
        final loss to compare; they count only when every run diverged).

        Collective under ``torchrun``: the ranks split each phase's runs and wait for each
        other between the grid and the perturbations and before selecting."""
        self._search_phases(task, [(method, period)], epochs)
        return self._selected(task, method, period)

    def _search_phases(self, task: Task, configs: list[tuple[str, int]], epochs: int) -> None:
        """The grid runs of every ``(method, period)`` of ``configs``, then (once every rank has
        finished them) the random perturbations around each one's two best grid points."""
        cfg = self.config
        for phase in ("grid", "random"):
            for method, period in configs:
                done = self._search_rows(task, method, period)
                if phase == "grid":
                    cells = [(lr, d, "grid") for lr, d in self._grid(method)]
                else:
                    scored = sorted((r for r in done.values() if r["kind"] == "grid"), key=selection_key)
                    gen = np.random.default_rng([cfg.seed, METHODS.index(method), 7])
                    cells = []
                    for r in scored[:2]:
                        lr, d = to_number(r["lr"]), to_number(r["damping"])
                        for _ in range(cfg.n_random):
                            u = gen.uniform(-0.5, 0.5, size=2)
                            cells.append((float(lr * 10 ** u[0]), float(d * 10 ** u[1]) if d > 0 else 0.0, "random"))
                ptag = period_tag(method, period)
                bar = self.progress_bar(len(cells), f"ekfac: {task.name} search {method} (period {ptag}, {phase})",
                                        unit="run")
                try:
                    for lr, d, kind in cells:
                        if (cell(lr), cell(d)) not in done and \
                                self.ctx.claim(f"search {task.name} {method} p{ptag} lr{cell(lr)} d{cell(d)}"):
                            self._search_run(task, method, lr, d, kind, period, epochs)
                        bar.update(1)
                finally:
                    bar.close()
            self.ctx.barrier()  # every rank's runs of this phase are in the table

    def _search_rows(self, task: Task, method: str, period: int) -> dict[tuple[str, str], dict[str, str]]:
        ptag = str(period_tag(method, period))
        return {(r["lr"], r["damping"]): r for r in self.store.read("search")
                if r["task"] == task.name and r["method"] == method and r["period"] == ptag}

    def _search_run(self, task: Task, method: str, lr: float, damping: float, kind: str, period: int,
                    epochs: int) -> None:
        t = time.perf_counter()
        rows = self._train(task, method, lr, damping, period, self.config.seed, epochs)
        losses = [r["train_loss"] for r in rows[1:]]
        self.store.table("search", SEARCH_COLUMNS, SEARCH_KEY).append([{
            "task": task.name, "method": method, "period": period_tag(method, period), "kind": kind, "lr": lr,
            "damping": damping, "best_train_loss": min(losses), "final_train_loss": losses[-1],
            "diverged": not math.isfinite(losses[-1]), "seconds": time.perf_counter() - t}])

    def _selected(self, task: Task, method: str, period: int) -> tuple[float, float]:
        best = min(self._search_rows(task, method, period).values(), key=selection_key)
        return to_number(best["lr"]), to_number(best["damping"])

    def _optimize(self, task: Task, search_epochs: int, epochs: int, periods: tuple[int, ...]) -> None:
        """Per method — and, for the period study, per recompute period — select (η, ε) by
        :meth:`_search` (runs of ``search_epochs`` epochs, ``0``: ``epochs``), then train the
        selected configuration on ``n_seeds`` seeds (split across the ranks of a torchrun launch)."""
        cfg = self.config
        search_epochs = search_epochs or epochs
        seeds = [cfg.seed + k for k in range(cfg.n_seeds)]
        configs = [(m, cfg.period) for m in cfg.methods]
        configs += [(m, p) for p in periods for m in ("kfac", "ekfac") if m in cfg.methods and p != cfg.period]
        self._search_phases(task, configs, search_epochs)
        chosen = {(m, p): self._selected(task, m, p) for m, p in configs}
        runs = [(m, p, s) for m, p in configs for s in seeds]
        have = self.store.table("curves", CURVE_COLUMNS, CURVE_KEY).keys
        bar = self.progress_bar(len(runs), f"ekfac: {task.name} final runs", unit="run")
        try:
            for m, p, s in runs:
                key = (task.name, m, str(period_tag(m, p)), str(s), str(epochs))
                tag = f"{task.name}_{m}_p{period_tag(m, p)}_s{s}"
                if key not in have and not self._diverged_before(task.name, m, period_tag(m, p), s) \
                        and self.ctx.claim(f"final {tag}"):
                    lr, d = chosen[(m, p)]
                    self._train(task, m, lr, d, p, s, epochs, tag=tag)
                bar.update(1)
        finally:
            bar.close()

    def _diverged_before(self, task: str, method: str, period: int, seed: int) -> bool:
        return any(r["task"] == task and r["method"] == method and int(r["period"]) == period
                   and int(r["seed"]) == seed and not math.isfinite(to_number(r["train_loss"]))
                   for r in self.store.read("curves"))

    # ---- part 3: spectrum tracking -----------------------------------------------------------
    def _spectrum(self, ae: Task, lr: float, damping: float) -> None:
        """Fig. 4.4c: the KFE ``Q = U_A ⊗ U_B`` of layer ``spectrum_layer`` is computed once at
        initialization on the evaluation examples (``spectrum_eval``, default the whole
        training set) and kept. The auto-encoder is trained with EKFAC (selected (η, ε)) and
        at every step ``t``, with ``G_t`` the layer's exact empirical Fisher on the evaluation
        examples and ``B_t`` the training minibatch of that step, four diagonals in the fixed
        KFE are compared:

        * ``kfac``: ``S_B ⊗ S_A`` of step 0 (amortized KFAC between recomputations);
        * ``ekfac``: ``s*`` re-estimated on ``B_t`` from per-example gradients (Algorithm 1);
        * ``ekfac_ra``: ``m ← α m + (1 − α) N (Qᵀ ḡ_t)²`` from the minibatch-mean gradient
          ``ḡ_t`` (the reference implementation's estimator), ``m₀ = S_B ⊗ S_A``;
        * ``kfe_optimum``: ``diag(Qᵀ G_t Q)``, the true empirical Fisher projected in the fixed
          basis — what ``s*`` estimates, and the best diagonal in that basis (Lemma 1).

        Recorded: ``distance`` = ‖sort(λ(G_t)) − sort(d)‖ (the thesis' spectrum distance) and
        ``rel_distance`` = that over ‖λ(G_t)‖; ``diag_rel_error`` = ‖d − diag(QᵀG_tQ)‖ /
        ‖diag(QᵀG_tQ)‖ (the error of the diagonal itself, coordinate by coordinate) and
        ``trace_ratio`` = Σ d / tr(G_t) (> 1: overestimation)."""
        cfg = self.config
        table = self.store.table("spectrum", SPECTRUM_COLUMNS, SPECTRUM_KEY)
        if len(table) >= len(SPECTRUM_APPROXIMATIONS) * (cfg.spectrum_steps + 1):
            return
        torch.manual_seed(cfg.seed)
        model = ae.build()
        n_train = ae.x_train.shape[0]
        if cfg.spectrum_eval:
            gen = torch.Generator().manual_seed(cfg.seed + 3)
            ev = torch.randperm(n_train, generator=gen)[:cfg.spectrum_eval].to(ae.x_train.device)
            xe = ae.x_train[ev]
        else:
            xe = ae.x_train
        layer = cfg.spectrum_layer
        kw = {"kind": "empirical", "loss": ae.loss, "params": layer}
        fixed = fim(model, (xe, xe), representation="ekfac", **kw)  # the KFE, computed once
        blk = fixed.blocks[0]
        ua, ub = blk.ua[0], blk.ub[0]
        kfac = (blk.eb[:, :, None] * blk.ea[:, None, :])[0]
        ra = kfac.clone()
        flat_index = blk.index[0].reshape(-1)
        opt = EKFAC(model, lr, damping, period=cfg.period, damping_scheme=cfg.kron_damping)
        stream = BatchStream(n_train, ae.batch_size, cfg.seed + 1)
        space = fixed.space
        bar = self.progress_bar(cfg.spectrum_steps + 1, "ekfac: spectrum tracking", unit="run")
        try:
            for step in range(cfg.spectrum_steps + 1):
                exact = fim(model, (xe, xe), representation="dense", **kw).to_dense()
                ev_exact = torch.linalg.eigvalsh(exact)  # ascending
                o, i = ub.shape[0], ua.shape[0]
                g_mat = exact[flat_index][:, flat_index].reshape(o, i, o, i)
                optimum = torch.einsum("ap,bq,abcd,cp,dq->pq", ub, ua, g_mat, ub, ua)  # diag(Qᵀ G Q)
                idx = stream.next().to(ae.x_train.device)
                xb = ae.x_train[idx]
                s_batch = fixed.update_diag((xb, xb)).blocks[0].s[0]
                opt.zero_grad(set_to_none=True)
                ae.loss(model(xb), xb).mean().backward()
                g = PVector.from_grad(model, space).flat()[blk.index][0]
                ra = cfg.ra_decay * ra + (1 - cfg.ra_decay) * idx.numel() * (ub.T @ g @ ua).pow(2)
                norm, opt_norm, trace = float(ev_exact.norm()), float(optimum.norm()), float(ev_exact.sum())
                rows = []
                for name, d in (("kfac", kfac), ("ekfac", s_batch), ("ekfac_ra", ra), ("kfe_optimum", optimum)):
                    dist = float((torch.sort(d.reshape(-1)).values - ev_exact).norm())
                    rows.append({"step": step, "approximation": name, "distance": dist, "rel_distance": dist / norm,
                                 "diag_rel_error": float((d - optimum).norm()) / opt_norm,
                                 "trace_ratio": float(d.sum()) / trace})
                table.append(rows)
                if step < cfg.spectrum_steps:
                    opt.step()
                bar.update(1)
        finally:
            bar.close()
            opt.remove_hooks()

    # ---- part 4: EWC -----------------------------------------------------------------------
    def _ewc(self) -> None:
        cfg = self.config
        table = self.store.table("ewc", EWC_COLUMNS, EWC_KEY)
        xt, yt, xv, yv = load_unit_digits(cfg.seed, image=False)
        dt = self.dtype
        xt, xv = xt.to(self.device, dt), xv.to(self.device, dt)
        yt, yv = yt.to(self.device), yv.to(self.device)
        a_tr, b_tr, a_te, b_te = yt < 5, yt >= 5, yv < 5, yv >= 5
        seeds = [cfg.seed + k for k in range(cfg.n_seeds)]
        todo = [(s, p, lam) for s in seeds for p in cfg.ewc_penalties
                for lam in (cfg.ewc_strengths if p != "none" else (0.0,))]
        bar = self.progress_bar(len(todo), "ekfac: EWC demo", unit="run")

        def acc(model, mask):
            with torch.no_grad():
                return float((model(xv[mask]).argmax(1) == yv[mask]).double().mean())

        def train(model, x, y, seed, penalty=None):
            opt = torch.optim.Adam(model.parameters(), lr=1e-2)
            stream = BatchStream(x.shape[0], 64, seed + 1)
            for _ in range(cfg.ewc_epochs * stream.steps_per_epoch):
                idx = stream.next()
                opt.zero_grad()
                loss = F.cross_entropy(model(x[idx]), y[idx])
                if penalty is not None:
                    loss = loss + penalty(model)
                loss.backward()
                opt.step()

        try:
            for s, p, lam in todo:
                key = (str(s), p, repr(float(lam)))
                if key in table.keys:
                    bar.update(1)
                    continue
                torch.manual_seed(s)
                model = make_mlp(64, cfg.ewc_hidden, 10, "tanh", dt).to(self.device)
                train(model, xt[a_tr], yt[a_tr], s)
                before = acc(model, a_te)
                penalty = None
                if p != "none":
                    fa = fim(model, (xt[a_tr],), kind="exact", representation=p)
                    penalty = FisherPenalty(fa, model, strength=lam)
                train(model, xt[b_tr], yt[b_tr], s + 100, penalty)
                after = acc(model, a_te)
                table.append([{"seed": s, "penalty": p, "strength": float(lam), "acc_a_before": before,
                               "acc_a_after": after, "acc_b_after": acc(model, b_te), "forgetting": before - after}])
                bar.update(1)
        finally:
            bar.close()

    # ---- report ------------------------------------------------------------------------------
    def report(self) -> ReportContent:
        return build_report(self.config, self.store)
