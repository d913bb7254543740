"""The run of ``fim-quality``: :class:`FimQuality`, its part 1 (quality of the
approximations at log-spaced checkpoints of a training run, thesis Figs. 3.3–3.6) and part 2
(drift of amortized KFAC/EKFAC during training, Figs. 4.2 right and 4.4c), both resumable
through :class:`~tangentlab.studies.framework.training.TrainingCheckpoint`."""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from torch import nn

from ...api import fim
from ...training import BatchStream, TrainingCheckpoint, accuracy, mean_loss, train_step
from ...vectors import PVector
from ..framework.data import load_dataset
from ..framework.models import build_model, make_mlp, model_spec, weight_layers
from ..framework.report import ReportContent
from ..framework.runner import Study
from .config import (
    DRIFT_COLUMNS,
    DRIFT_KEY,
    INDEP,
    KRON,
    QUALITY_COLUMNS,
    QUALITY_KEY,
    TITLE,
    TRAINING_COLUMNS,
    TRAINING_KEY,
    FimQualityConfig,
)
from .decorrelation import DECOR_COLUMNS, DECOR_KEY, decorrelation_rows
from .figures import build_report
from .metrics import cosine, damped_solver, eigenvalues, fro_error, rel_error
from .ntk_pca import (
    GRAM_COLUMNS,
    GRAM_KEY,
    NTK_COLUMNS,
    NTK_KEY,
    POINT_COLUMNS,
    POINT_KEY,
    class_pairs,
    pair_examples,
    pair_rows,
)

#: Columns of ``tables/decorrelation_block.csv`` (correlation blocks of the figure of Fig. 4.2 left).
BLOCK_COLUMNS = ["step", "basis", "i", "j", "value"]
BLOCK_KEY = ["step", "basis", "i", "j"]
#: Coordinates of each correlation block stored for the figure.
FIGURE_BLOCK = 64


def checkpoint_steps(total: int, n: int) -> list[int]:
    """``n`` probe steps in ``[0, total]``: 0 and log-spaced values up to ``total`` (from
    ``total/25``), deduplicated (fewer if ``total`` is small)."""
    if n <= 1 or total == 0:
        return [0] if n <= 1 else sorted({0, total})
    pts = np.geomspace(max(1.0, total / 25), total, n - 1) if n > 2 else [total]
    steps = sorted({0, *(int(round(p)) for p in pts), total})
    # too few distinct values: fill linearly
    while len(steps) < min(n, total + 1):
        gaps = [(b - a, a) for a, b in zip(steps, steps[1:])]
        width, a = max(gaps)
        steps = sorted({*steps, a + width // 2})
    return steps



def _dtype(name: str) -> torch.dtype:
    return torch.float64 if name == "float64" else torch.float32


class FimQuality(Study):
    name = "fim-quality"
    title = TITLE
    description = "Diag/QuasiDiag/BlockDiag/KFAC/EKFAC vs the exact Fisher during training; EKFAC vs KFAC drift"
    config_class = FimQualityConfig
    config: FimQualityConfig

    # ---- helpers -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return torch.device(self.config.resolved_device())

    def parts(self) -> list[tuple[str, Callable[[], None]]]:
        """The parts of the run, in order, as ``(label, method)``."""
        parts = [("part 1 (quality)", self.run_quality)]
        if self.config.drift:
            parts.append(("part 2 (drift)", self.run_drift))
        return parts

    def run(self) -> None:
        for label, part in self.parts():
            t = time.perf_counter()
            part()
            self.log(f"fim-quality: {label} took {time.perf_counter() - t:.1f}s")

    # ---- part 1 ------------------------------------------------------------------------------
    def run_quality(self) -> None:
        """Train the model of part 1 with SGD and probe the approximations at the checkpoint
        steps (rows of ``quality``; losses and test accuracy in ``training``)."""
        cfg, store = self.config, self.store
        layout = model_spec(cfg.model).layout
        split = load_dataset(cfg.dataset, cfg.seed, layout, cfg.data_dir, cfg.max_per_class or None)
        dev = self.device
        x, y = split.x_train.to(dev), split.y_train.to(dev)
        n_train = x.shape[0]
        torch.manual_seed(cfg.seed)
        model = build_model(cfg.model, split.input_shape, split.n_classes, width=cfg.width, hidden=cfg.hidden,
                            activation=cfg.activation).to(dev)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
        stream = BatchStream(n_train, cfg.batch_size, cfg.seed + 1)
        probe = torch.randperm(n_train, generator=torch.Generator().manual_seed(cfg.seed + 2))[:cfg.n_probe]
        x_probe, y_probe = x[probe.to(dev)], y[probe.to(dev)]
        steps = checkpoint_steps(cfg.train_steps, cfg.checkpoints)
        quality = store.table("quality", QUALITY_COLUMNS, QUALITY_KEY)
        training = store.table("training", TRAINING_COLUMNS, TRAINING_KEY)
        pending: list[dict[str, Any]] = []
        ntk_sets = []
        if cfg.ntk:
            pairs = class_pairs(split.n_classes, cfg.ntk_pairs, cfg.seed + 17)
            ntk_sets = [(i, c1, c2, *pair_examples(split.x_test, split.y_test, c1, c2, cfg.ntk_per_class))
                        for i, (c1, c2) in enumerate(pairs)]

        start, probed = 0, set()
        ck = TrainingCheckpoint(store, "quality", model, opt, stream)
        saved = ck.restore()
        if saved is not None:
            start, probed = int(saved["step"]), set(saved["probed"])
            self.log(f"fim-quality: resuming part 1 at step {start} ({len(probed)} of {len(steps)} probes done)")

        def save(step: int) -> None:
            training.append(pending)
            pending.clear()
            ck.save(step, probed=sorted(probed))

        bar = self.progress_bar(cfg.train_steps, f"fim-quality: training {cfg.model}")
        bar.update(start)
        try:
            for step in range(start, cfg.train_steps + 1):
                if step in steps and step not in probed:
                    bar.set_postfix_str(f"probing step {step}")
                    quality.append(self._probe(model, x_probe, y_probe, step))
                    if ntk_sets:
                        self._ntk(model, ntk_sets, step)
                    pending += [{"phase": "quality", "step": step, "metric": "test_accuracy",
                                 "value": accuracy(model, split.x_test.to(dev), split.y_test.to(dev))},
                                {"phase": "quality", "step": step, "metric": "probe_loss",
                                 "value": mean_loss(model, x_probe, y_probe)}]
                    probed.add(step)
                    save(step)
                elif step > start and step % cfg.checkpoint_every == 0:
                    save(step)
                if step == cfg.train_steps:
                    break
                idx = stream.next().to(dev)
                loss = train_step(model, opt, x[idx], y[idx])
                pending.append({"phase": "quality", "step": step, "metric": "train_loss", "value": loss})
                bar.update(1)
        finally:
            bar.close()
        training.append(pending)

    def _ntk(self, model32: nn.Module, sets: list[tuple], step: int) -> None:
        """Part 3 (Fig. 3.7): the NTK Gram of each pair's class difference and its kernel PCA,
        on a ``cfg.dtype`` copy of the model (rows of ``ntk``, ``ntk_points``, ``ntk_gram``)."""
        dtype = _dtype(self.config.dtype)
        model = copy.deepcopy(model32).to(dtype=dtype).eval()
        rows, points, gram = [], [], []
        for i, c1, c2, xs, labels in sets:
            r, p, g = pair_rows(model, xs.to(self.device, dtype), labels, step, i, c1, c2, keep_gram=i == 0)
            rows += r
            points += p
            gram += g
        self.store.table("ntk_points", POINT_COLUMNS, POINT_KEY).append(points)
        self.store.table("ntk_gram", GRAM_COLUMNS, GRAM_KEY).append(gram)
        self.store.table("ntk", NTK_COLUMNS, NTK_KEY).append(rows)

    def _fisher_kw(self, kind: str) -> dict[str, Any]:
        if kind == "mc":
            return {"kind": "mc", "n_samples": self.config.mc_samples}
        return {"kind": "exact"}

    def _probe(self, model32: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int) -> list[dict[str, Any]]:
        """All quality rows of one checkpoint (metrics of :mod:`tangentlab.studies.fim_quality`),
        on a ``cfg.dtype`` copy of the model."""
        cfg = self.config
        dtype = _dtype(cfg.dtype)
        model = copy.deepcopy(model32).to(dtype=dtype).eval()
        xd = x.to(dtype)
        rows: list[dict[str, Any]] = []
        gen = torch.Generator().manual_seed(cfg.seed * 1000003 + step)
        bar = self.progress_bar(len(cfg.fisher_kinds) * (1 + len(cfg.representations)),
                                f"fim-quality: probing step {step}")
        try:
            for kind in cfg.fisher_kinds:
                rows += self._probe_kind(model, xd, step, kind, gen, bar)
            rows += self._trace_realizations(model, xd, step)
        finally:
            bar.close()
        return rows

    def _trace_realizations(self, model: nn.Module, xd: torch.Tensor, step: int) -> list[dict[str, Any]]:
        """Fig. 3.6 with independent samples, as in the thesis: the relative error of each
        approximation's trace, built on ``trace_realizations`` independent Monte-Carlo draws
        (``mc_samples`` labels per example), against the trace of the exact-expectation
        Fisher (rows with ``fisher = mc_indep``, ``probe`` = the realization)."""
        cfg = self.config
        if not cfg.trace_realizations:
            return []
        common = dict(batch_size=cfg.fim_batch_size, progress=False)
        # tr F of the exact expectation: the trace of its diagonal (an identity the claims check)
        exact = float(fim(model, (xd,), kind="exact", representation="diag", **common).trace())
        rows = [{"step": step, "fisher": INDEP, "representation": "exact", "method": "", "metric": "trace",
                 "lambda_rel": None, "lambda": None, "probe": -1, "value": exact}]
        for r in range(cfg.trace_realizations):
            seed = cfg.seed * 7919 + 100003 * (r + 1) + step
            for rep in [x for x in cfg.representations if x != "blockdiag"]:
                tr = float(fim(model, (xd,), representation=rep, kind="mc", n_samples=cfg.mc_samples, seed=seed,
                               **common).trace())
                rows.append({"step": step, "fisher": INDEP, "representation": rep, "method": "",
                             "metric": "trace_rel_err", "lambda_rel": None, "lambda": None, "probe": r,
                             "value": abs(tr - exact) / abs(exact)})
        return rows

    def _probe_kind(self, model: nn.Module, xd: torch.Tensor, step: int, kind: str, gen: torch.Generator,
                    bar: Any) -> list[dict[str, Any]]:
        cfg = self.config
        dtype = xd.dtype
        rows: list[dict[str, Any]] = []
        common = dict(self._fisher_kw(kind), seed=cfg.seed + step, batch_size=cfg.fim_batch_size,
                      progress=False)

        def row(rep: str, metric: str, value: float, probe: int = -1, method: str = "",
                lam_rel: float | None = None, lam: float | None = None, kind: str = kind) -> dict[str, Any]:
            return {"step": step, "fisher": kind, "representation": rep, "method": method, "metric": metric,
                    "lambda_rel": lam_rel, "lambda": lam, "probe": probe, "value": float(value)}

        t = time.perf_counter()
        F = fim(model, (xd,), representation=cfg.reference, **common)
        space = F.space
        p = space.numel
        trace = float(F.trace())
        dense = F.to_dense() if cfg.reference == "dense" else None
        fro = float(torch.linalg.matrix_norm(dense)) if dense is not None else math.nan
        z = torch.randn(cfg.n_vectors, p, generator=gen, dtype=dtype).to(xd.device)
        vs = [PVector.from_flat(space, zi / zi.norm()) for zi in z]
        fv = [F.mv(v).flat() for v in vs]
        vfv = [float(v.flat() @ f) for v, f in zip(vs, fv)]
        lams = [(rho, rho * trace / p) for rho in cfg.lambdas]
        rows += [row(cfg.reference, "trace", trace), row(cfg.reference, "fro_norm", fro),
                 row(cfg.reference, "build_s", time.perf_counter() - t)]
        bar.update(1)
        for rep in cfg.representations:
            bar.set_postfix_str(f"{kind} {rep}")
            t = time.perf_counter()
            M = fim(model, (xd,), representation=rep, **common)
            rows.append(row(rep, "build_s", time.perf_counter() - t))
            tr = float(M.trace())
            rows += [row(rep, "trace", tr), row(rep, "trace_rel_err", abs(tr - trace) / abs(trace))]
            if dense is not None:
                rows.append(row(rep, "fro_rel_err", float(torch.linalg.matrix_norm(dense - M.to_dense())) / fro))
            for i, v in enumerate(vs):
                mv = M.mv(v).flat()
                rows += [row(rep, "mv_cos", cosine(fv[i], mv), i), row(rep, "mv_residual", rel_error(mv, fv[i]), i),
                         row(rep, "vTMv_rel_err", abs(float(v.flat() @ mv) - vfv[i]) / abs(vfv[i]), i)]
            methods = [m for m in cfg.solve_methods] if rep in KRON else ["exact"]
            for method in methods:
                for rho, lam in lams:
                    solve = damped_solver(M, rep, lam, method)
                    for i, v in enumerate(vs):
                        rhs = PVector.from_flat(space, fv[i] + lam * v.flat())
                        w = solve(rhs).flat()
                        vf = v.flat()
                        rows += [row(rep, "solve_cos", cosine(vf, w), i, method, rho, lam),
                                 row(rep, "solve_residual", float((vf - w).norm() / w.norm()), i, method,
                                     rho, lam)]
            bar.update(1)
        del F, dense
        return rows

    # ---- part 2 ------------------------------------------------------------------------------
    def run_drift(self) -> None:
        """Train the sigmoid MLP of part 2 and record, at every step, the per-layer error of
        amortized KFAC / EKFAC and of a basis fixed at step 0 against the exact empirical
        Fisher blocks (rows of ``drift``)."""
        cfg, store = self.config, self.store
        split = load_dataset("digits", cfg.seed, "flat")
        dev = self.device
        dtype = _dtype(cfg.dtype)
        x, y = split.x_train.to(dev, dtype), split.y_train.to(dev)
        n_train = x.shape[0]
        torch.manual_seed(cfg.seed + 7)
        model = make_mlp(x.shape[1], cfg.drift_hidden, split.n_classes, "sigmoid", dtype).to(dev)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.drift_lr, momentum=cfg.momentum)
        stream = BatchStream(n_train, cfg.drift_batch_size, cfg.seed + 11)
        ev = torch.randperm(n_train, generator=torch.Generator().manual_seed(cfg.seed + 13))[:cfg.drift_eval_size]
        eval_data = (x[ev.to(dev)], y[ev.to(dev)])
        layers = weight_layers(model)
        spec_layer = cfg.spectrum_layer or layers[min(1, len(layers) - 1)]
        drift = store.table("drift", DRIFT_COLUMNS, DRIFT_KEY)
        training = store.table("training", TRAINING_COLUMNS, TRAINING_KEY)
        fkw = dict(kind="empirical", batch_size=cfg.fim_batch_size, progress=False)

        start = 0
        basis0 = copy.deepcopy(model.state_dict())
        ck = TrainingCheckpoint(store, "drift", model, opt, stream)
        saved = ck.restore()
        if saved is not None:
            basis0, start = saved["basis0"], int(saved["step"])
            self.log(f"fim-quality: resuming part 2 at step {start}")

        variants = [("ekfac", "eval"), ("ekfac_mb", "minibatch")]
        variants = [(name, src) for name, src in variants if src in cfg.sstar_data]

        def build() -> dict[str, Any]:
            mats = {"kfac": fim(model, eval_data, representation="kfac", **fkw)}
            for name, _ in variants:
                mats[name] = fim(model, eval_data, representation="ekfac", **fkw)
            return mats

        # fixed basis (Fig. 4.4c): KFAC and the EKFAC basis of the step-0 model
        now = copy.deepcopy(model.state_dict())
        model.load_state_dict(basis0)
        fixed = build()
        model.load_state_dict(now)
        amortized: dict[str, Any] = {}
        last_recompute = start
        pending: list[dict[str, Any]] = []
        bar = self.progress_bar(cfg.drift_steps, "fim-quality: drift (sigmoid MLP)")
        bar.update(start)
        try:
            for step in range(start, cfg.drift_steps + 1):
                recompute = step % cfg.recompute_every == 0 or not amortized
                if recompute and step > start:
                    training.append(pending)
                    pending.clear()
                    ck.save(step, basis0=basis0)
                idx = stream.next().to(dev)
                data = {"eval": eval_data, "minibatch": (x[idx], y[idx])}
                if recompute:  # (checkpoints are taken at recompute steps only, so a resume starts here)
                    amortized = build()
                    last_recompute = step
                for name, src in variants:
                    if not (recompute and src == "eval"):  # fresh EKFACs hold s* of the evaluation batch
                        amortized[name].update_diag(data[src])
                    fixed[name].update_diag(data[src])
                if step in (0, cfg.drift_steps):
                    self._decorrelation(model, eval_data, step, layers, spec_layer, fkw)
                exact = fim(model, eval_data, representation="blockdiag", **fkw)
                mats = {**{(a, "amortized"): m for a, m in amortized.items()},
                        **{(a, "fixed"): m for a, m in fixed.items()}}
                drift.append(self._drift_rows(step, step - last_recompute, exact, mats, layers, spec_layer))
                if step == cfg.drift_steps:
                    break
                loss = train_step(model, opt, x[idx], y[idx])
                pending.append({"phase": "drift", "step": step, "metric": "train_loss", "value": loss})
                bar.update(1)
        finally:
            bar.close()
        pending.append({"phase": "drift", "step": cfg.drift_steps, "metric": "eval_loss",
                        "value": mean_loss(model, *eval_data)})
        training.append(pending)

    def _decorrelation(self, model: nn.Module, data: tuple[torch.Tensor, torch.Tensor], step: int,
                       layers: list[str], spec_layer: str, fkw: dict[str, Any]) -> None:
        """Fig. 4.2 left: off-diagonal mass of each layer's empirical Fisher block in the
        parameter basis and in the KFE (rows of ``decorrelation``), and the correlation blocks of
        ``spec_layer`` for the figure (``decorrelation_block``)."""
        rows, blocks = decorrelation_rows(model, data, step, layers, self.config.decor_splits, fkw)
        cells = []
        for basis, c in zip(("parameter", "kfe"), blocks[spec_layer]):
            k = min(FIGURE_BLOCK, c.shape[0])
            cells += [{"step": step, "basis": basis, "i": i, "j": j, "value": float(c[i, j])} for i in range(k)
                      for j in range(k)]
        self.store.table("decorrelation_block", BLOCK_COLUMNS, BLOCK_KEY).append(cells)
        self.store.table("decorrelation", DECOR_COLUMNS, DECOR_KEY).append(rows)

    def _drift_rows(self, step: int, since: int, exact: Any, approx: dict[tuple[str, str], Any],
                    layers: list[str], spec_layer: str) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []

        def row(layer: str, a: str, basis: str, metric: str, value: float) -> dict[str, Any]:
            return {"step": step, "layer": layer, "approximation": a, "basis": basis, "metric": metric,
                    "value": float(value), "since_recompute": since}

        for layer in layers:
            f = exact.blocks[layer]
            nf = float(torch.linalg.matrix_norm(f))
            rows.append(row(layer, "exact", "", "fro_norm", nf))
            cache: dict[bytes, torch.Tensor] = {}
            for (a, basis), M in approx.items():
                rows.append(row(layer, a, basis, "fro_rel_err", fro_error(f, M.select([layer]), cache) / nf))
        lam = torch.linalg.eigvalsh(exact.blocks[spec_layer]).flip(0)
        scale = float(lam.norm())
        for (a, basis), M in approx.items():
            mu = eigenvalues(M.select([spec_layer]))
            d = float((lam - mu).norm())
            rows += [row(spec_layer, a, basis, "spectrum_l2", d),
                     row(spec_layer, a, basis, "spectrum_l2_rel", d / scale)]
        return rows

    # ---- report ------------------------------------------------------------------------------
    def report(self) -> ReportContent:
        return build_report(self.config, self.store)
