"""The run of the alignment study: :class:`Alignment` (``tangentlab run alignment``).

:meth:`Alignment.run` lists the study's independent units (item 1, one training run per
:class:`RunSpec` of items 2-5, item 6) and the ranks of a ``torchrun`` launch claim them one at
a time; item 7 splits its own ``(width, noise, seed)`` runs. Every training run of items 1-5
goes through :meth:`Alignment.train_run`: probes at log-spaced steps, a checkpoint
(:class:`~tangentlab.studies.framework.training.TrainingCheckpoint`) after every probe, and a
killed run resumes from its last checkpoint.
"""

from __future__ import annotations

import copy
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ...training import BatchStream, TrainingCheckpoint, accuracy, mean_loss
from ..framework.data import Split
from ..framework.datasets import DISK_RADIUS, disk_task, grid_2d
from ..framework.models import make_mlp
from ..framework.probes import (
    Probe,
    ProbeCallback,
    ProbeResult,
    ProbeSet,
    TrainingState,
    bce_loss,
    log_schedule,
    train_with_probes,
)
from ..framework.report import ReportContent
from ..framework.runner import Study
from ..framework.threads import blas_threads
from . import appendix_hierarchy, channel_sweep, complexity, limit, norm_capacity, spectral_bias, supernat
from .config import (
    EIGEN_COLUMNS,
    EIGEN_KEY,
    LABEL_COLUMNS,
    LABEL_KEY,
    PCA_COLUMNS,
    PCA_KEY,
    PROBE_COLUMNS,
    PROBE_KEY,
    SPECTRA_COLUMNS,
    SPECTRA_KEY,
    TITLE,
    TRAINING_COLUMNS,
    TRAINING_KEY,
    AlignmentConfig,
)
from .data import load_alignment_split, subset, training_set
from .figures import build_report
from .models import make_model
from .vit import GroupedProbe, layer_groups


@dataclass
class RunSpec:
    """One training run of items 2-5: ``kind`` = ``noise`` (items 2-3, train/test probes) or
    ``hier`` (item 4, easy/difficult probes); ``difficult`` = ``random`` or ``other``."""

    name: str
    item: int
    kind: str
    noise: float = 0.0
    difficult: str = ""
    fraction: float = 0.0
    depth: int = 6
    width: int = 80
    lr: float = 0.02
    steps: int = 1500
    seed: int = 0


def seed_name(run: str, seed: int) -> str:
    """The name of seed ``seed`` of ``run``: ``run`` for seed 0, ``run_s<seed>`` after."""
    return run if seed == 0 else f"{run}_s{seed}"


def plan_runs(cfg: AlignmentConfig) -> list[RunSpec]:
    """The training runs of items 2-5, in execution order (every label-noise and item-4 run of
    seed 0 first, then those of the next seeds)."""
    runs: list[RunSpec] = []
    items = set(cfg.items)
    base = dict(depth=cfg.depth, width=cfg.width, lr=cfg.lr, steps=cfg.train_steps, seed=cfg.seed)
    if items & {2, 3}:
        for s in range(cfg.noise_seeds):
            for p in cfg.noise:
                runs.append(RunSpec(seed_name(f"noise_{round(100 * p)}", s), 2, "noise", noise=p,
                                    **{**base, "seed": cfg.seed + s}))
    if 4 in items:
        for s in range(cfg.hier_seeds):
            for kind, frac in (("random", cfg.hier_random_fraction), ("other", cfg.hier_other_fraction)):
                runs.append(RunSpec(seed_name(f"hier_{kind}", s), 4, "hier", difficult=kind, fraction=frac,
                                    **{**base, "seed": cfg.seed + s}))
    if 5 in items:
        for s in range(cfg.ablation_seeds):
            for d in cfg.ablation_depths:
                runs.append(RunSpec(f"depth_{d}_s{s}", 5, "hier", difficult="random", fraction=cfg.hier_random_fraction,
                                    depth=d, width=cfg.ablation_width, lr=cfg.lr, steps=cfg.ablation_steps,
                                    seed=cfg.seed + s))
            for p in cfg.noise:
                for lr in cfg.ablation_lrs:
                    runs.append(RunSpec(f"lr_{lr:g}_noise_{round(100 * p)}_s{s}", 5, "noise", noise=p, depth=cfg.depth,
                                        width=cfg.width, lr=lr, steps=cfg.ablation_steps, seed=cfg.seed + s))
    return runs


def checkpoint_tag(run: str) -> str:
    """The checkpoint tag of training run ``run`` (``run_`` + its name, other characters as ``_``)."""
    return "run_" + "".join(ch if ch.isalnum() or ch in "_." else "_" for ch in run)


def pca_steps(steps: list[int], k: int) -> set[int]:
    """``k`` schedule steps evenly spread over ``steps`` (first and last included)."""
    if k <= 0:
        return set()
    idx = np.unique(np.round(np.linspace(0, len(steps) - 1, k)).astype(int))
    return {steps[i] for i in idx}


def snapshot_steps(steps: list[int], total: int, k: int) -> set[int]:
    """``0``, ``total`` and schedule steps closest to geometric targets in between."""
    targets = [0.0, *np.geomspace(max(1.0, total / 30), total, k - 1)]
    out = []
    for t in targets:
        free = [v for v in steps if v not in out]
        if free:
            out.append(min(free, key=lambda v: abs(v - t)))
    if total in steps and total not in out:
        out[-1] = total
    return set(out)


def _clone_with(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    m = copy.deepcopy(model)
    m.load_state_dict(state)
    return m


class Alignment(Study):
    """``tangentlab run alignment``: items 1-7 of paper 000 (see :mod:`tangentlab.studies.alignment`)."""

    name = "alignment"
    title = TITLE
    description = "NTK spectra, effective rank, trace ratios, CKA with labels, easy vs difficult alignment"
    config_class = AlignmentConfig
    config: AlignmentConfig
    parallel = True

    def run(self) -> None:
        """All items of ``items``. Torch's intra-op threads are ``threads`` (set by the runner);
        the BLAS pools outside torch (numpy's OpenBLAS: item 6's SVDs, the report's statistics)
        are limited to the same count here, so ``--set threads=1`` holds for every item."""
        with blas_threads(self.config.threads):
            self.run_items()

    def run_items(self) -> None:
        """Items 1-6 as independent units claimed one at a time by the ranks (all of them with one
        process), then item 7, whose runs are claimed one by one."""
        cfg = self.config
        t0, c0 = time.perf_counter(), time.process_time()

        def took(what: str, t: float, c: float) -> None:
            self.log(f"alignment: {what} took {time.perf_counter() - t:.1f}s "
                     f"(CPU {time.process_time() - c:.1f}s)")

        units: list[tuple[str, Callable[[], None]]] = []
        if 1 in cfg.items:
            units += [(f"item 1 (disk, seed {s})", functools.partial(self.run_disk, s)) for s in range(cfg.disk_seeds)]
        split: list[Split] = []

        def get_split() -> Split:
            if not split:
                split.append(load_alignment_split(cfg))
            return split[0]

        def training_run(spec: RunSpec) -> None:
            self.run_training(spec, get_split())

        if limit.wanted(cfg):
            units.append(("distance to the limit at initialization",
                          lambda: limit.run_limit_widths(self.store, cfg, get_split(), self.log)))
        units += [(f"run {spec.name}", functools.partial(training_run, spec)) for spec in plan_runs(cfg)]
        if 6 in cfg.items:
            units.append(("item 6", functools.partial(supernat.run_supernat, self.store, cfg, self.log,
                                                      cfg.progress_flag)))
        for item, what, fn in ((8, "item 8 (B.1 Jacobian hierarchy)", appendix_hierarchy.run_hierarchy),
                               (9, "item 9 (B.2 spectral bias)", spectral_bias.run_spectral_bias),
                               (10, "item 10 (B.3 norm capacity)", norm_capacity.run_norm_capacity),
                               (11, "item 11 (VGG channel sweep)", channel_sweep.run_channel_sweep)):
            if item in cfg.items:
                units.append((what, functools.partial(fn, self.store, cfg, self.log)))
        for what, unit in self.ctx.mine(units, key=lambda u: u[0]):
            t, c = time.perf_counter(), time.process_time()
            unit()
            took(what, t, c)
        if 7 in cfg.items:
            t, c = time.perf_counter(), time.process_time()
            complexity.run_complexity(self.store, cfg, self.log, cfg.progress_flag,
                                      claim=self.ctx.claim if self.ctx.active else None)
            took("item 7", t, c)
        took("the whole study", t0, c0)

    # ---- shared training driver -----------------------------------------------------------------
    def train_run(self, run: str, model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, *,
              steps: int, batch_size: int, seed: int, probe: Probe, schedule: list[int],
              sink: Callable[[ProbeResult], None], extra: Callable[[int, nn.Module], list[dict[str, Any]]],
              loss_fn: Any = None, desc: str = "", vector_steps: set[int] | None = None) -> None:
        """Train run ``run`` with probes at ``schedule``: ``sink`` stores each probe's result,
        ``extra(t, model)`` the training-table rows of a probe step. Checkpoints after every probe
        and resumes from the run's checkpoint (does nothing when it says the run finished)."""
        store = self.store
        training = store.table("training", TRAINING_COLUMNS, TRAINING_KEY)
        model0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
        state = TrainingState(0, BatchStream(x.shape[0], min(batch_size, x.shape[0]), seed))
        checkpoint = TrainingCheckpoint(store, checkpoint_tag(run), model, opt, state.stream, keep=1)
        cb = ProbeCallback(probe, schedule, sink, vector_steps)
        resumed_at = -1
        ck = checkpoint.load()
        if ck is not None:
            if ck.get("finished"):
                return
            checkpoint.apply(ck)
            model0 = ck["model0"]
            state.step = resumed_at = int(ck["step"])
            cb.done = {s for s in schedule if s <= state.step}
            self.log(f"alignment: resuming run {run} at step {state.step}")
        # the kernel-distance reference is the initial model
        probe.set_reference(_clone_with(model, model0))
        pending: list[dict[str, Any]] = []

        def on_step(t: int, loss: float) -> None:
            pending.append({"run": run, "step": t, "metric": "train_loss", "value": loss})

        def after(t: int, st: TrainingState) -> None:
            if t in cb.steps and t > resumed_at:
                pending.extend(extra(t, model))
                training.append(pending)
                pending.clear()
                checkpoint.save(t, model0=model0, finished=t == steps)

        train_with_probes(model, opt, x, y, steps=steps, batch_size=batch_size, seed=seed, callbacks=[cb],
                          loss_fn=loss_fn, state=state, on_step=on_step, after_callbacks=after,
                          progress=self.config.progress_flag, desc=desc or f"alignment: {run}")
        training.append(pending)

    # ---- item 1 ---------------------------------------------------------------------------------
    def run_disk(self, seed: int = 0) -> None:
        """Item 1 (paper 000 Fig. 1), seed ``seed`` (run ``disk`` / ``disk_s<seed>``): full-batch
        gradient descent on the disk task, with the grid kernel's spectrum, alignment and (seed 0)
        top eigenfunctions at the probe steps."""
        cfg, store = self.config, self.store
        dev = self.device
        name, base = seed_name("disk", seed), cfg.seed + seed
        x, y = disk_task(cfg.disk_n, base)
        grid = grid_2d(cfg.disk_grid)
        y_grid = (grid.norm(dim=1) < DISK_RADIUS).long()
        torch.manual_seed(base + 101)
        model = make_mlp(2, (cfg.disk_width,) * cfg.disk_depth, 1, "relu").to(dev)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.disk_lr)
        schedule = log_schedule(cfg.schedule, cfg.disk_steps, cfg.schedule_base)
        snaps = snapshot_steps(schedule, cfg.disk_steps, cfg.disk_snapshots) if seed == 0 else set()
        n_eig = min(cfg.disk_eigen, cfg.disk_grid ** 2)
        probe = Probe([ProbeSet("grid", grid.to(dev), y_grid.to(dev))], metrics=("spectrum", "cka", "distance"),
                      ks=(1, 5, 20), ratios=(2, 5, 10, 20), centering=cfg.centering_mode, keep_eigvecs=n_eig,
                      keep_spectrum=True)
        train_probe = Probe([ProbeSet("train", x.to(dev), y.to(dev))], metrics=("cka", "loss", "spectrum"),
                            centering=cfg.centering_mode)
        probes = store.table("probes", PROBE_COLUMNS, PROBE_KEY)
        spectra = store.table("spectra", SPECTRA_COLUMNS, SPECTRA_KEY)
        eig = store.table("eigenfunctions", EIGEN_COLUMNS, EIGEN_KEY)

        def sink(res: ProbeResult) -> None:
            s = res.step
            rows = [{"run": name, **r} for r in res.rows]
            rows += [{"run": name, **r} for r in train_probe.evaluate(model, s).rows]
            probes.append(rows)
            lam = res.spectra["grid"]
            spectra.append({"run": name, "step": s, "probe": "grid", "index": i + 1, "value": float(v)}
                           for i, v in enumerate(lam[:max(50, 2 * n_eig)].tolist()))
            if s in snaps and seed == 0:
                U = res.eigvecs["grid"]
                # sign convention: the entry of largest magnitude is positive
                sign = torch.sign(U.gather(0, U.abs().argmax(0, keepdim=True))).flatten()
                U = U * torch.where(sign == 0, torch.ones_like(sign), sign)
                eig.append({"run": name, "step": s, "component": j + 1, "point": i, "value": float(U[i, j])}
                           for j in range(U.shape[1]) for i in range(U.shape[0]))

        def extra(t: int, m: nn.Module) -> list[dict[str, Any]]:
            with torch.no_grad():
                z = m(x.to(dev)).flatten()
                zg = m(grid.to(dev)).flatten()
            return [{"run": name, "step": t, "metric": "train_accuracy",
                     "value": float(((z > 0).long().cpu() == y).double().mean())},
                    {"run": name, "step": t, "metric": "grid_accuracy",
                     "value": float(((zg > 0).long().cpu() == y_grid).double().mean())}]

        self.train_run(name, model, opt, x.to(dev), y.to(dev).float(), steps=cfg.disk_steps,
                   batch_size=cfg.disk_n, seed=base + 102, probe=probe, schedule=schedule, sink=sink,
                   extra=extra, loss_fn=bce_loss, desc="alignment: item 1 (disk, full-batch GD)", vector_steps=snaps)

    # ---- items 2-5 ------------------------------------------------------------------------------
    def run_training(self, spec: RunSpec, split: Split) -> None:
        """One training run of items 2-5 (paper 000 Figs. 2-4, 13, 14): SGD with momentum, with
        train/test probes (``noise`` runs) or easy/difficult probes (``hier`` runs)."""
        cfg, store = self.config, self.store
        dev = self.device
        seed = spec.seed
        x, y, is_hard = training_set(split, spec.kind, spec.noise, spec.difficult, spec.fraction, seed)
        x, y = x.to(dev), y.to(dev)
        xt, yt = split.x_test.to(dev), split.y_test.to(dev)
        torch.manual_seed(seed + 31)
        model = make_model(cfg.model, split.input_shape, split.n_classes, spec.width, spec.depth,
                           **cfg.model_kwargs()).to(dev)
        g = torch.Generator().manual_seed(seed + 21)
        if spec.kind == "noise":
            tr = torch.randperm(x.shape[0], generator=g)[:cfg.n_probe]
            te = torch.randperm(xt.shape[0], generator=g)[:cfg.n_probe]
            sets = [ProbeSet("train", x[tr.to(dev)], y[tr.to(dev)]), ProbeSet("test", xt[te.to(dev)], yt[te.to(dev)])]
            # per-layer CKA, and per block part (attention, feed-forward) for a transformer; the
            # distance to the infinite-width NTK for a model with a limit rule
            with_limit = limit.wanted(cfg) and limit.limit_refusal(model, x[:2]) is None
            probe = (limit.LimitProbe if with_limit else GroupedProbe)(
                sets, groups=layer_groups(model), ks=cfg.ks, centering=cfg.centering_mode, n_pca=cfg.n_pca,
                keep_spectrum=True)
        else:
            easy = subset(~is_hard, cfg.hier_subset, seed + 22).to(dev)
            hard = subset(is_hard, cfg.hier_subset, seed + 23).to(dev)
            sets = [ProbeSet("easy", x[easy], y[easy]), ProbeSet("difficult", x[hard], y[hard])]
            probe = Probe(sets, metrics=("cka", "loss"), centering=cfg.centering_mode)
        opt = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=cfg.momentum)
        schedule = log_schedule(cfg.schedule, spec.steps, cfg.schedule_base)
        pca_at = pca_steps(schedule, cfg.pca_snapshots) if spec.item == 2 else set()
        probes = store.table("probes", PROBE_COLUMNS, PROBE_KEY)
        spectra = store.table("spectra", SPECTRA_COLUMNS, SPECTRA_KEY)
        pca = store.table("pca", PCA_COLUMNS, PCA_KEY)
        run = spec.name
        store.table("probe_labels", LABEL_COLUMNS, LABEL_KEY).append(
            {"run": run, "probe": ps.name, "example": i, "label": int(v)} for ps in sets
            for i, v in enumerate(ps.y.tolist()))

        def sink(res: ProbeResult) -> None:
            probes.append({"run": run, **r} for r in res.rows)
            for name, lam in res.spectra.items():
                spectra.append({"run": run, "step": res.step, "probe": name, "index": i + 1, "value": float(v)}
                               for i, v in enumerate(lam.tolist()))
            if res.step in pca_at:
                for name, coords in res.pca.items():
                    pca.append({"run": run, "step": res.step, "probe": name, "component": j + 1, "row": i,
                                "value": float(coords[i, j])} for j in range(coords.shape[1])
                               for i in range(coords.shape[0]))

        def extra(t: int, m: nn.Module) -> list[dict[str, Any]]:
            rows = [("test_accuracy", accuracy(m, xt, yt)), ("test_loss", mean_loss(m, xt, yt)),
                    ("train_accuracy", accuracy(m, x, y)), ("train_loss_full", mean_loss(m, x, y))]
            if is_hard.any():
                e, h = (~is_hard).to(dev), is_hard.to(dev)
                rows += [("easy_accuracy", accuracy(m, x[e], y[e])), ("difficult_accuracy", accuracy(m, x[h], y[h]))]
            return [{"run": run, "step": t, "metric": k, "value": v} for k, v in rows]

        self.train_run(run, model, opt, x, y, steps=spec.steps, batch_size=cfg.batch_size, seed=seed + 41,
                   probe=probe, schedule=schedule, sink=sink, extra=extra, desc=f"alignment: item {spec.item} {run}",
                   vector_steps=pca_at)

    # ---- report ---------------------------------------------------------------------------------
    def report(self) -> ReportContent:
        return build_report(self.config, self.store)
