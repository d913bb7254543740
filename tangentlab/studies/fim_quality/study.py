"""``tangentlab run fim-quality``: how good are the Fisher approximations?

Reproduces, at CPU scale, thesis Figs. 3.3–3.6 (NNGeometry showcase, §3.4.1) and the
EKFAC drift experiments, Fig. 4.2 (right) and Fig. 4.4c (spectrum tracking).

**Part 1 — quality (Figs. 3.3–3.6).** A small CNN (no BatchNorm) is trained on digits
with SGD. At ``checkpoints`` log-spaced steps (0 included) a float64 copy of the model
gives, on ``n_probe`` training examples, the exact Fisher ``F`` (``reference``: dense,
or implicit for big models) and its approximations ``F̂`` (``representations``: Diag,
QuasiDiag, BlockDiag, KFAC, EKFAC), for each ``fisher_kinds``: the Monte-Carlo Fisher
with ``mc_samples`` labels per example, as in the thesis, and the exact expectation.
``F`` and every ``F̂`` are built with the same ``seed`` and batch size, so they see the
same sampled labels. For ``n_vectors`` random unit vectors ``v = z/‖z‖``:

* ``mv_cos`` = cos(Fv, F̂v) and ``mv_residual`` = ‖Fv − F̂v‖/‖Fv‖ (Fig. 3.4);
* ``vTMv_rel_err`` = |vᵀF̂v − vᵀFv| / |vᵀFv| (Fig. 3.5);
* for ``λ = ρ·tr(F)/P`` with ``ρ`` in ``lambdas``: ``v' = (F̂ + λI)⁻¹(F + λI)v``,
  ``solve_cos`` = cos(v, v') and ``solve_residual`` = ‖v − v'‖/‖v'‖ (Fig. 3.3), with
  KFAC/EKFAC solved exactly and (``solve_methods``) with factored damping;

and per matrix ``trace_rel_err`` (Fig. 3.6) and ``fro_rel_err`` = ‖F − F̂‖_F/‖F‖_F.

**Part 2 — drift (Figs. 4.2 right, 4.4c).** A sigmoid MLP is trained on digits with
SGD (float64). The reference is the *empirical* Fisher's layer blocks on a fixed
evaluation batch of ``drift_eval_size`` training examples, recomputed at every step.
Every ``recompute_every`` steps KFAC's factors and EKFAC's eigenbasis are recomputed on
that batch (so at those steps ‖F_l − EKFAC_l‖ ≤ ‖F_l − KFAC_l‖ is Theorem 2); in between
KFAC is kept as is and EKFAC's ``s*`` is re-estimated every step, one EKFAC per
``sstar_data`` entry: ``eval`` (approximation ``ekfac``: on the evaluation batch, so only
the basis is stale) and ``minibatch`` (approximation ``ekfac_mb``: on the step's training
minibatch, as in Algorithm 1, with its sampling noise). Tracked: ``fro_rel_err`` per
layer (``basis=amortized``), and, with a basis computed once at step 0 and kept
(``basis=fixed``), the ℓ2 distance between the sorted eigenvalues of the exact block
of ``spectrum_layer`` and those of KFAC (fixed factors) and EKFAC (``s*`` updated
every step).

Results: ``tables/quality.csv``, ``tables/drift.csv``, ``tables/training.csv`` (tidy),
the figures and the claims table in ``report.html``.
"""

from __future__ import annotations

import copy
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ...api import fim
from ...errors import UnsupportedOperationError
from ...memory import MemoryBudget
from ...vectors import PVector
from ..framework.config import Preset, StudyConfig, option
from ..framework.data import DATASETS, load_dataset
from ..framework.models import MODELS, build_model, count_parameters, make_mlp, model_spec, weight_layers
from ..framework.report import Claim, FigureSpec, ReportContent, TableSpec
from ..framework.runner import Study
from ..framework.store import to_number
from ..framework.training import BatchStream, accuracy, mean_loss, rng_state, set_rng_state, train_step

#: The representations the thesis compares (Figs. 3.3–3.6); BlockDiag is shown as a reference.
PAPER_REPRESENTATIONS = ("diag", "quasidiag", "kfac", "ekfac")
#: Representations with a ``solve(..., method=)`` (exact / factored damping).
KRON = ("kfac", "ekfac")
#: Tolerance of the deterministic identities (float64).
EXACT_TOL = 1e-8

QUALITY_COLUMNS = ["step", "fisher", "representation", "method", "metric", "lambda_rel", "lambda", "probe",
                   "value"]
QUALITY_KEY = ["step", "fisher", "representation", "method", "metric", "lambda_rel", "probe"]
DRIFT_COLUMNS = ["step", "layer", "approximation", "basis", "metric", "value", "since_recompute"]
DRIFT_KEY = ["step", "layer", "approximation", "basis", "metric"]
TRAINING_COLUMNS = ["phase", "step", "metric", "value"]
TRAINING_KEY = ["phase", "step", "metric"]


def _registered() -> list[str]:
    from ...pmat import NAMES

    return sorted(NAMES)


def _approximations() -> list[str]:
    return [n for n in _registered() if n not in ("implicit", "mixed")]


@dataclass
class FimQualityConfig(StudyConfig):
    """Configuration of ``fim-quality`` (see the module docstring)."""

    PRESETS: ClassVar[dict[str, Preset]] = {
        "tiny": Preset("seconds-long smoke run (tests)", {
            "train_steps": 30, "checkpoints": 2, "n_probe": 48, "width": 4, "fim_batch_size": 48,
            "lambdas": (1e-4, 1e-2, 1.0), "n_vectors": 20,
            "drift_hidden": (12, 12), "drift_steps": 12, "recompute_every": 4, "drift_eval_size": 96,
            "drift_batch_size": 32}),
        "paper": Preset("thesis scale: ResNet-50 (BN-free, A.3 init) on TinyImageNet, implicit reference, GPU", {
            "dataset": "tinyimagenet", "model": "resnet50", "width": 64, "device": "cuda", "dtype": "float32",
            "reference": "implicit", "representations": PAPER_REPRESENTATIONS, "train_steps": 20000,
            "batch_size": 128, "lr": 0.05, "checkpoints": 5, "n_probe": 1000, "fim_batch_size": 50,
            "checkpoint_every": 1000, "drift_hidden": (256, 256, 256, 256), "drift_steps": 1000,
            "recompute_every": 100, "drift_eval_size": 1000, "drift_batch_size": 200}, needs_gpu=True),
    }

    # data and model of part 1
    dataset: str = option("digits", "dataset of part 1", choices=lambda: list(DATASETS))
    data_dir: str = option("", "folder of a dataset read from disk (tinyimagenet)")
    max_per_class: int = option(0, "training images per class to read (0: all; tinyimagenet)", min=0)
    model: str = option("cnn", "model of part 1", choices=lambda: list(MODELS))
    width: int = option(8, "channels of the CNN / base width of the ResNet", min=1)
    hidden: tuple[int, ...] = option((32, 32), "hidden widths when model = mlp", min=1)
    activation: str = option("relu", "activation when model = mlp", choices=("relu", "tanh", "sigmoid"))
    train_steps: int = option(600, "SGD steps of part 1", min=0)
    batch_size: int = option(32, "minibatch size of part 1", min=1)
    lr: float = option(0.05, "SGD learning rate of part 1", min=0.0)
    momentum: float = option(0.9, "SGD momentum (both parts)", min=0.0, max=1.0)
    checkpoints: int = option(4, "log-spaced probe points in [0, train_steps], 0 included", min=1)
    checkpoint_every: int = option(200, "also save a resume checkpoint every this many steps", min=1)
    # the matrices
    n_probe: int = option(400, "training examples defining F", min=2)
    fisher_kinds: tuple[str, ...] = option(("mc", "exact"), "Fisher kinds: Monte-Carlo and/or exact expectation",
                                           choices=("mc", "exact"))
    mc_samples: int = option(5, "sampled labels per example of the Monte-Carlo Fisher (thesis: 5)", min=1)
    reference: str = option("dense", "the exact matrix: dense (P² memory) or implicit (matrix-free)",
                            choices=("dense", "implicit"))
    representations: tuple[str, ...] = option(("diag", "quasidiag", "blockdiag", "kfac", "ekfac"),
                                              "approximations compared", choices=_approximations)
    solve_methods: tuple[str, ...] = option(("exact", "factored"),
                                            "KFAC/EKFAC damped solves (others are always exact)",
                                            choices=("exact", "factored"))
    n_vectors: int = option(20, "random unit vectors per checkpoint", min=2)
    lambdas: tuple[float, ...] = option((1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0, 10.0, 100.0, 1e3, 1e4),
                                        "Tikhonov λ of the solves, relative to tr(F)/P", min=1e-300)
    fim_batch_size: int = option(200, "examples per engine batch", min=1)
    dtype: str = option("float64", "dtype of the matrices", choices=("float64", "float32"))
    # part 2
    drift: bool = option(True, "run part 2 (Figs. 4.2 right and 4.4c)")
    drift_hidden: tuple[int, ...] = option((32, 32, 32), "hidden widths of the sigmoid MLP", min=1)
    drift_steps: int = option(200, "SGD steps of part 2", min=1)
    drift_batch_size: int = option(128, "minibatch size of part 2 (and of s* with sstar_data=minibatch)", min=2)
    drift_lr: float = option(0.5, "SGD learning rate of part 2", min=0.0)
    recompute_every: int = option(20, "steps between recomputations of KFAC / the EKFAC basis", min=1)
    drift_eval_size: int = option(400, "evaluation batch of the exact empirical Fisher", min=2)
    sstar_data: tuple[str, ...] = option(("eval", "minibatch"), "data of EKFAC's per-step s* (one EKFAC each): "
                                         "the evaluation batch and/or the training minibatch",
                                         choices=("eval", "minibatch"))
    spectrum_layer: str = option("", "module path of the layer of Fig. 4.4c (default: the second Linear)")

    def validate(self) -> None:
        spec = model_spec(self.model)
        if self.dataset not in DATASETS:  # pragma: no cover - caught by choices
            raise self.error("dataset", f"unknown dataset {self.dataset!r}", ", ".join(DATASETS))
        ds = DATASETS[self.dataset]
        if spec.layout not in ds.layouts:
            raise self.error("model", f"model {self.model!r} needs {spec.layout} inputs, which dataset "
                             f"{self.dataset!r} does not provide",
                             ", ".join(n for n, m in MODELS.items() if m.layout in ds.layouts))
        try:
            ds.check(self.data_dir)
        except Exception as e:
            raise self.error("data_dir", str(e).split(": ", 1)[-1]) from None
        n_train = 1347 if self.dataset == "digits" else None  # 75% of 1797, stratified
        if n_train is not None:
            for name in ("n_probe", "batch_size"):
                if getattr(self, name) > n_train:
                    raise self.error(name, f"{getattr(self, name)} exceeds the {n_train} training examples",
                                     f"1..{n_train}")
        for name in ("drift_eval_size", "drift_batch_size"):
            if getattr(self, name) > 1347:
                raise self.error(name, f"{getattr(self, name)} exceeds the 1347 digits training examples",
                                 "2..1347")
        if self.checkpoints > self.train_steps + 1:
            raise self.error("checkpoints", f"{self.checkpoints} probe points do not fit in "
                             f"{self.train_steps} training steps", f"1..{self.train_steps + 1}")
        if "kfac" in self.representations or "ekfac" in self.representations or self.drift:
            missing = [r for r in KRON if r not in _registered()]
            if missing:
                field = "drift" if self.drift else "representations"
                raise self.error(field, f"needs representations {missing}, not registered in this tangentlab",
                                 "false" if field == "drift" else ", ".join(_approximations()))
        if self.reference == "dense":
            dtype = torch.float64 if self.dtype == "float64" else torch.float32
            shape = (3, 64, 64) if self.dataset == "tinyimagenet" else (1, 8, 8) if spec.layout == "image" else (64,)
            with torch.device("meta"):
                p = count_parameters(build_model(self.model, shape, 200 if self.dataset == "tinyimagenet" else 10,
                                                 width=self.width, hidden=self.hidden, activation=self.activation))
            budget = MemoryBudget.resolve(None, torch.device("cpu"))
            if not budget.fits(p * p * 3, dtype):  # F, F̂ densified and F − F̂
                raise self.error("reference", f"a dense {p}×{p} Fisher of model {self.model!r} does not fit in "
                                 "memory", "implicit")
            if "blockdiag" in self.representations and not budget.fits(p * p, dtype):  # pragma: no cover
                raise self.error("representations", "blockdiag does not fit in memory",
                                 ", ".join(r for r in self.representations if r != "blockdiag"))
        if self.drift:
            layers = weight_layers(make_mlp(64, self.drift_hidden, 10, "sigmoid"))
            if self.spectrum_layer and self.spectrum_layer not in layers:
                raise self.error("spectrum_layer", f"no Linear layer {self.spectrum_layer!r} in the drift MLP",
                                 ", ".join(layers))
            if self.recompute_every > self.drift_steps:
                raise self.error("recompute_every", f"{self.recompute_every} exceeds drift_steps "
                                 f"({self.drift_steps})", f"1..{self.drift_steps}")


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


def _cos(a: torch.Tensor, b: torch.Tensor) -> float:
    den = float(a.norm() * b.norm())
    return float(a @ b) / den if den > 0 else math.nan


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """``‖a − b‖ / ‖b‖``."""
    den = float(b.norm())
    return float((a - b).norm()) / den if den > 0 else math.nan


def _dtype(name: str) -> torch.dtype:
    return torch.float64 if name == "float64" else torch.float32


class FimQuality(Study):
    name = "fim-quality"
    title = "Quality of Fisher approximations (thesis Figs. 3.3–3.6, 4.2 right, 4.4c)"
    description = "Diag/QuasiDiag/BlockDiag/KFAC/EKFAC vs the exact Fisher during training; EKFAC vs KFAC drift"
    config_class = FimQualityConfig
    config: FimQualityConfig

    # ---- helpers -------------------------------------------------------------------------
    @property
    def device(self) -> torch.device:
        return torch.device(self.config.resolved_device())

    def _bar(self, total: int, desc: str):
        from tqdm.auto import tqdm

        flag = self.config.progress_flag
        return tqdm(total=total, desc=desc, unit="step", leave=False, disable=None if flag is None else not flag)

    def run(self) -> None:
        t0 = time.perf_counter()
        self._run_quality()
        t1 = time.perf_counter()
        self.log(f"fim-quality: part 1 (quality) took {t1 - t0:.1f}s")
        if self.config.drift:
            self._run_drift()
            self.log(f"fim-quality: part 2 (drift) took {time.perf_counter() - t1:.1f}s")

    # ---- part 1 ------------------------------------------------------------------------------
    def _run_quality(self) -> None:
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

        start, probed = 0, set()
        ck = store.load_checkpoint("quality")
        if ck is not None:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            stream.load_state_dict(ck["stream"])
            set_rng_state(ck["rng"])
            start, probed = int(ck["step"]), set(ck["probed"])
            self.log(f"fim-quality: resuming part 1 at step {start} ({len(probed)} of {len(steps)} probes done)")

        def save(step: int) -> None:
            training.append(pending)
            pending.clear()
            store.save_checkpoint("quality", step, {
                "model": model.state_dict(), "optimizer": opt.state_dict(), "stream": stream.state_dict(),
                "rng": rng_state(), "probed": sorted(probed)})

        bar = self._bar(cfg.train_steps, f"fim-quality: training {cfg.model}")
        bar.update(start)
        try:
            for step in range(start, cfg.train_steps + 1):
                if step in steps and step not in probed:
                    bar.set_postfix_str(f"probing step {step}")
                    quality.append(self._probe(model, x_probe, y_probe, step))
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

    def _fisher_kw(self, kind: str) -> dict[str, Any]:
        if kind == "mc":
            return {"kind": "mc", "n_samples": self.config.mc_samples}
        return {"kind": "exact"}

    def _probe(self, model32: nn.Module, x: torch.Tensor, y: torch.Tensor, step: int) -> list[dict[str, Any]]:
        """All quality rows of one checkpoint (see the module docstring)."""
        cfg = self.config
        dtype = _dtype(cfg.dtype)
        model = copy.deepcopy(model32).to(dtype=dtype).eval()
        xd = x.to(dtype)
        rows: list[dict[str, Any]] = []
        gen = torch.Generator().manual_seed(cfg.seed * 1000003 + step)
        bar = self._bar(len(cfg.fisher_kinds) * (1 + len(cfg.representations)), f"fim-quality: probing step {step}")
        try:
            for kind in cfg.fisher_kinds:
                rows += self._probe_kind(model, xd, step, kind, gen, bar)
        finally:
            bar.close()
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
                rows += [row(rep, "mv_cos", _cos(fv[i], mv), i), row(rep, "mv_residual", _rel(mv, fv[i]), i),
                         row(rep, "vTMv_rel_err", abs(float(v.flat() @ mv) - vfv[i]) / abs(vfv[i]), i)]
            methods = [m for m in cfg.solve_methods] if rep in KRON else ["exact"]
            for method in methods:
                for rho, lam in lams:
                    solve = _solver(M, rep, lam, method)
                    for i, v in enumerate(vs):
                        rhs = PVector.from_flat(space, fv[i] + lam * v.flat())
                        w = solve(rhs).flat()
                        vf = v.flat()
                        rows += [row(rep, "solve_cos", _cos(vf, w), i, method, rho, lam),
                                 row(rep, "solve_residual", float((vf - w).norm() / w.norm()), i, method,
                                     rho, lam)]
            bar.update(1)
        del F, dense
        return rows

    # ---- part 2 ------------------------------------------------------------------------------
    def _run_drift(self) -> None:
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
        ck = store.load_checkpoint("drift")
        if ck is not None:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            stream.load_state_dict(ck["stream"])
            set_rng_state(ck["rng"])
            basis0, start = ck["basis0"], int(ck["step"])
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
        bar = self._bar(cfg.drift_steps, "fim-quality: drift (sigmoid MLP)")
        bar.update(start)
        try:
            for step in range(start, cfg.drift_steps + 1):
                recompute = step % cfg.recompute_every == 0 or not amortized
                if recompute and step > start:
                    training.append(pending)
                    pending.clear()
                    store.save_checkpoint("drift", step, {
                        "model": model.state_dict(), "optimizer": opt.state_dict(), "stream": stream.state_dict(),
                        "rng": rng_state(), "basis0": basis0})
                idx = stream.next().to(dev)
                data = {"eval": eval_data, "minibatch": (x[idx], y[idx])}
                if recompute:  # (checkpoints are taken at recompute steps only, so a resume starts here)
                    amortized = build()
                    last_recompute = step
                for name, src in variants:
                    if not (recompute and src == "eval"):  # fresh EKFACs hold s* of the evaluation batch
                        amortized[name].update_diag(data[src])
                    fixed[name].update_diag(data[src])
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
            mu = _eigenvalues(M.select([spec_layer]))
            d = float((lam - mu).norm())
            rows += [row(spec_layer, a, basis, "spectrum_l2", d),
                     row(spec_layer, a, basis, "spectrum_l2_rel", d / scale)]
        return rows

    # ---- report ------------------------------------------------------------------------------
    def report(self) -> ReportContent:
        return build_report(self.config, self.store)


def fro_error(f: torch.Tensor, M: Any, cache: dict[bytes, torch.Tensor] | None = None) -> float:
    """``‖f − M‖_F`` for a dense ``f`` on ``M``'s parameter space.

    An EKFAC is not densified (``Q S Qᵀ`` costs ``P_l³``): with ``Q = U_B ⊗ U_A`` orthogonal,
    ``‖f − Q S Qᵀ‖² = ‖f‖² − ‖diag(Qᵀ f Q)‖² + ‖diag(Qᵀ f Q) − s‖²`` over each Kronecker group
    (cross-group entries of ``f`` count fully), where ``diag(Qᵀ f Q)`` is computed from ``f``
    by two Kronecker contractions in ``O(P_l² (O + I))``. Other representations: ``to_dense``.
    ``cache`` (one dict per ``f``) keeps ``f``'s entries regathered in each group's layout."""
    blocks = getattr(M, "blocks", None)
    if type(M).__name__ != "PMatEKFAC" or not isinstance(blocks, list) or not all(
            hasattr(b, name) for b in blocks for name in ("ua", "ub", "s", "index")):
        return float(torch.linalg.matrix_norm(f - M.to_dense()))
    err2 = f.pow(2).sum()
    for blk in blocks:
        n_groups, o, i = blk.s.shape
        for g in range(n_groups):
            idx = blk.index[g].reshape(-1)
            key = idx.cpu().numpy().tobytes()
            f4 = cache.get(key) if cache is not None else None
            if f4 is None:
                f4 = f[idx[:, None], idx[None, :]].reshape(o, i * o * i)
                if cache is not None:
                    cache[key] = f4
            ub = blk.ub[g]
            t = (ub.T @ f4).reshape(o, i, o, i)  # contract the first output index with U_B
            t = torch.einsum("pbcd,cp->pbd", t, ub)  # ... and the second one, keeping p = r
            if blk.ua is None:
                d = torch.diagonal(t, dim1=1, dim2=2)
            else:
                ua = blk.ua[g]
                d = ((t @ ua) * ua[None]).sum(1)  # Σ_bd ua[b,q] t[p,b,d] ua[d,q]
            # within the group: ‖fg‖² − ‖d‖² off the diagonal (in the KFE) + ‖d − s‖² on it
            err2 = err2 - d.pow(2).sum() + (d - blk.s[g]).pow(2).sum()
    return float(err2.clamp_min(0).sqrt())


def _eigenvalues(M: Any) -> torch.Tensor:
    """All eigenvalues of ``M``, descending: for KFAC the products of its factors' eigenvalues
    (``M.factors``), for EKFAC its diagonal ``s`` (the basis is orthogonal), otherwise ``M.eigh()``
    (which for the Kronecker representations also builds every eigenvector)."""
    blocks = getattr(M, "blocks", None)
    if type(M).__name__ == "PMatEKFAC" and isinstance(blocks, list) and all(hasattr(b, "s") for b in blocks):
        return torch.sort(torch.cat([b.s.reshape(-1) for b in blocks]), descending=True).values
    factors = getattr(M, "factors", None)
    if type(M).__name__ == "PMatKFAC" and isinstance(factors, dict):
        vals = []
        for pairs in factors.values():
            for a, b in pairs:
                ea = a if a.dim() == 1 else torch.linalg.eigvalsh(a)
                vals.append(torch.outer(torch.linalg.eigvalsh(b), ea).reshape(-1))
        return torch.sort(torch.cat(vals), descending=True).values
    return M.eigh()[0]


def _solver(M: Any, rep: str, lam: float, method: str) -> Callable[[PVector], PVector]:
    """``u ↦ (M + λI)⁻¹ u``: KFAC/EKFAC through ``solve(method=)``; the others through
    ``inverse(λ)`` once, then products (per-vector ``solve`` when there is no inverse)."""
    if rep in KRON:
        return lambda u: M.solve(u, lam, method=method)
    try:
        inv = M.inverse(lam)
    except UnsupportedOperationError:
        return lambda u: M.solve(u, lam)
    return inv.mv


# =============================================================================================
# the report (from the stored tables only)
# =============================================================================================
def _quality_frame(store) -> list[dict[str, Any]]:
    out = []
    for r in store.read("quality"):
        out.append({"step": int(r["step"]), "fisher": r["fisher"], "rep": r["representation"],
                    "method": r["method"], "metric": r["metric"], "lam_rel": to_number(r["lambda_rel"]),
                    "probe": int(r["probe"]), "value": to_number(r["value"])})
    return out


def _stats(values: list[float]) -> dict[str, float]:
    a = np.asarray(values, dtype=float)
    a = a[np.isfinite(a)]
    if a.size == 0:
        return {"median": math.nan, "q1": math.nan, "q3": math.nan, "n": 0}
    q1, med, q3 = np.quantile(a, [0.25, 0.5, 0.75])
    return {"median": float(med), "q1": float(q1), "q3": float(q3), "n": int(a.size)}


def summarize_quality(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Median and quartiles over probe vectors: one row per step × fisher × representation ×
    method × metric × λ."""
    groups: dict[tuple, list[float]] = defaultdict(list)
    for r in rows:
        lam = r["lam_rel"]
        groups[(r["step"], r["fisher"], r["rep"], r["method"], r["metric"], "" if math.isnan(lam) else lam)].append(
            r["value"])
    out = []
    for (step, fisher, rep, method, metric, lam), vals in sorted(groups.items(), key=lambda kv: tuple(
            (str(k) if not isinstance(k, (int, float)) else f"{k:020.10f}") for k in kv[0])):
        out.append({"step": step, "fisher": fisher, "representation": rep, "method": method, "metric": metric,
                    "lambda_rel": lam, **_stats(vals)})
    return out


def _label(rep: str, method: str) -> str:
    names = {"diag": "Diag", "quasidiag": "QuasiDiag", "blockdiag": "BlockDiag", "kfac": "KFAC", "ekfac": "EKFAC",
             "dense": "Dense", "lowrank": "LowRank"}
    base = names.get(rep, rep)
    return f"{base} ({method})" if method and method != "exact" else base


_COLORS = {"diag": "tab:blue", "quasidiag": "tab:orange", "blockdiag": "tab:gray", "kfac": "tab:red",
           "ekfac": "tab:green", "ekfac_mb": "tab:olive", "lowrank": "tab:purple", "dense": "black"}


def build_report(cfg: FimQualityConfig, store) -> ReportContent:
    q = _quality_frame(store)
    summary = summarize_quality(q)
    S = {(s["step"], s["fisher"], s["representation"], s["method"], s["metric"], s["lambda_rel"]): s
         for s in summary}
    steps = sorted({s["step"] for s in summary})
    kinds = [k for k in cfg.fisher_kinds if any(s["fisher"] == k for s in summary)]
    reps = [r for r in cfg.representations if any(s["representation"] == r for s in summary)]
    paper = [r for r in PAPER_REPRESENTATIONS if r in reps]
    lams = sorted({s["lambda_rel"] for s in summary if s["lambda_rel"] != ""})

    def med(step, kind, rep, metric, method="", lam=""):
        s = S.get((step, kind, rep, method, metric, lam))
        return s["median"] if s else math.nan

    drift_rows = [{"step": int(r["step"]), "layer": r["layer"], "a": r["approximation"], "basis": r["basis"],
                   "metric": r["metric"], "value": to_number(r["value"]), "since": int(r["since_recompute"])}
                  for r in store.read("drift")]
    training = [{"phase": r["phase"], "step": int(r["step"]), "metric": r["metric"], "value": to_number(r["value"])}
                for r in store.read("training")]

    claims = _claims(cfg, S, steps, kinds, reps, paper, lams, med, drift_rows)
    figures = _figures(cfg, S, steps, kinds, reps, lams, drift_rows, training)
    p_info = [s for s in summary if s["metric"] == "trace" and s["representation"] == cfg.reference]
    intro = [
        "Part 1 (Figs. 3.3–3.6): a " + (f"{cfg.model} (width {cfg.width})" if cfg.model != "mlp" else "MLP")
        + f" trained on {cfg.dataset} with SGD (lr {cfg.lr}, momentum {cfg.momentum}, batch {cfg.batch_size}) "
        f"for {cfg.train_steps} steps; at steps {', '.join(map(str, steps))} the Fisher on {cfg.n_probe} training "
        f"examples ({', '.join(kinds)}; mc = {cfg.mc_samples} sampled labels per example, the same samples for F and "
        f"every approximation) in {cfg.dtype}, reference {cfg.reference}, against "
        f"{', '.join(_label(r, '') for r in reps)}; medians and quartiles over {cfg.n_vectors} random unit "
        "vectors.",
        f"Part 2 (Figs. 4.2 right, 4.4c): a sigmoid MLP 64-{'-'.join(map(str, cfg.drift_hidden))}-10 trained with "
        f"SGD (lr {cfg.drift_lr}, batch {cfg.drift_batch_size}) for {cfg.drift_steps} steps; empirical Fisher "
        f"layer blocks on a fixed batch of {cfg.drift_eval_size} examples; KFAC / EKFAC basis recomputed every "
        f"{cfg.recompute_every} steps on that batch; EKFAC's s* re-estimated every step on "
        + " and ".join({"eval": "the evaluation batch (EKFAC)", "minibatch": "the training minibatch (EKFAC mb)"}[d]
                       for d in cfg.sstar_data) + "."
        if cfg.drift else "Part 2 (drift) was not run (drift = false).",
    ]
    if p_info:
        intro.append("Reference traces: " + "; ".join(f"step {s['step']} {s['fisher']}: {s['median']:.4g}"
                                                      for s in p_info))
    headline = [s for s in summary if s["metric"] in ("trace_rel_err", "fro_rel_err", "mv_cos", "vTMv_rel_err")]
    tables = [
        TableSpec("Headline metrics (median over probe vectors)", ["step", "fisher", "representation", "metric",
                  "median", "q1", "q3", "n"], headline, max_rows=None, link="tables/quality_summary.csv"),
        TableSpec("Solve cosine cos(v, (F̂+λI)⁻¹(F+λI)v), median",
                  ["step", "fisher", "representation", "method", "lambda_rel", "median", "q1", "q3"],
                  [s for s in summary if s["metric"] == "solve_cos"], max_rows=400,
                  link="tables/quality_summary.csv"),
    ]
    if drift_rows:
        tables.append(TableSpec("Drift at recompute points and just before them",
                                ["step", "layer", "approximation", "basis", "metric", "value", "since_recompute"],
                                [{"step": r["step"], "layer": r["layer"], "approximation": r["a"], "basis": r["basis"],
                                  "metric": r["metric"], "value": r["value"], "since_recompute": r["since"]}
                                 for r in drift_rows if r["basis"] == "amortized" and r["metric"] == "fro_rel_err"
                                 and (r["since"] == 0 or r["since"] == cfg.recompute_every - 1)],
                                max_rows=300, link="tables/drift.csv"))
    from ..framework.store import atomic_write_text, cell

    cols = ["step", "fisher", "representation", "method", "metric", "lambda_rel", "median", "q1", "q3", "n"]
    atomic_write_text(store.tables_dir / "quality_summary.csv",
                      ",".join(cols) + "\n" + "".join(",".join(cell(s[c]) for c in cols) + "\n" for s in summary))
    notes = [
        "mc: Monte-Carlo Fisher with the same sampled labels for F and the approximations, so the traces of Diag, "
        "QuasiDiag, BlockDiag and EKFAC equal tr F exactly (the thesis used independent samples, hence its "
        "'fluctuation from Monte-Carlo sampling').",
        "Solves: KFAC (exact) is (A⊗B + λI)⁻¹ through the factors' eigenbases; KFAC (factored) is Tikhonov damping "
        "split over the factors with π (what the thesis-era library did); EKFAC (exact) divides by s* + λ, EKFAC "
        "(factored) by s* + λ + √λ(λ_A + λ_B) (thesis appendix A.4).",
        "BlockDiag is not in the thesis' figures; it is the exact layer-diagonal part that KFAC and EKFAC "
        "approximate, shown as a reference. The claims 'best for …' compare Diag, QuasiDiag, KFAC and EKFAC.",
        "Residuals: mv_residual = ‖Fv − F̂v‖/‖Fv‖; solve_residual = ‖v − v'‖/‖v'‖ (thesis Fig. 3.3).",
        "QuasiDiag (diagonal plus the bias–weight cross terms of each output unit) is not positive semi-definite "
        "in general: when its smallest eigenvalue is negative, F̂ + λI is nearly singular for λ close to it, which "
        "shows as dips of its solve cosine at some λ (its solve itself is exact).",
        "Part 2 measures ‖F_l − EKFAC_l‖_F without densifying EKFAC: with Q = U_B ⊗ U_A orthogonal, "
        "‖F − Q S Qᵀ‖² = ‖F‖² − ‖diag(QᵀFQ)‖² + ‖diag(QᵀFQ) − s‖², diag(QᵀFQ) computed from F.",
    ]
    return ReportContent(title=FimQuality.title, summary=intro, claims=claims, figures=figures, tables=tables,
                         notes=notes)


def _fmt_e(x: float) -> str:
    return "nan" if not math.isfinite(x) else f"{x:.2e}"


def _claims(cfg, S, steps, kinds, reps, paper, lams, med, drift_rows) -> list[Claim]:
    claims: list[Claim] = []
    # --- Fig. 3.6: trace
    exact_tr = [r for r in ("diag", "quasidiag", "blockdiag", "ekfac") if r in reps]
    if exact_tr:
        worst = {r: max(med(s, k, r, "trace_rel_err") for s in steps for k in kinds) for r in exact_tr}
        held = all(v <= EXACT_TOL for v in worst.values())
        claims.append(Claim("Fig. 3.6 trace (Diag, QuasiDiag, EKFAC)",
                            "Diag, QuasiDiag and EKFAC estimate the trace 'very accurately': only Monte-Carlo "
                            "fluctuation remains (zero with the same samples)",
                            "max relative trace error over checkpoints and kinds: "
                            + ", ".join(f"{_label(r, '')} {_fmt_e(v)}" for r, v in worst.items()),
                            held, "deterministic"))
    if "kfac" in reps:
        errs = [med(s, k, "kfac", "trace_rel_err") for s in steps for k in kinds]
        lo, hi = min(errs), max(errs)
        claims.append(Claim("Fig. 3.6 trace (KFAC)", "the KFAC trace tr(A)·tr(B) is less accurate",
                            f"KFAC relative trace error {_fmt_e(lo)} … {_fmt_e(hi)} over checkpoints and kinds",
                            lo > 1e3 * EXACT_TOL, "deterministic"))
    # --- Fig. 3.4 / 3.5: forward operations
    for metric, fig, what, best_is_max in (("mv_cos", "Fig. 3.4 Fv", "cos(Fv, F̂v)", True),
                                           ("vTMv_rel_err", "Fig. 3.5 vᵀFv", "relative error of vᵀF̂v", False)):
        if "ekfac" not in paper or len(paper) < 2:
            continue
        wins, points, detail = 0, 0, []
        for k in kinds:
            for s in steps:
                vals = {r: med(s, k, r, metric) for r in paper}
                best = (max if best_is_max else min)(vals, key=lambda r: vals[r])
                wins += best == "ekfac"
                points += 1
            mean_by_rep = {r: float(np.nanmedian([med(s, k, r, metric) for s in steps])) for r in paper}
            detail.append(f"{k}: " + ", ".join(f"{_label(r, '')} {mean_by_rep[r]:.3g}" for r in paper))
        claims.append(Claim(fig, f"EKFAC is the best representation for forward operations ({what})",
                            f"EKFAC best at {wins}/{points} (checkpoint, kind) points; median over checkpoints of "
                            f"the median {what}: " + "; ".join(detail), wins == points))
    # --- Fig. 3.3: solve
    if "kfac" in paper and lams:
        wins = points = 0
        per_rep: dict[str, list[float]] = defaultdict(list)
        for k in kinds:
            for s in steps:
                for lam in lams:
                    vals = {}
                    for r in paper:
                        methods = cfg.solve_methods if r in KRON else ("exact",)
                        vals[r] = max(med(s, k, r, "solve_cos", m, lam) for m in methods)
                        per_rep[r].append(vals[r])
                    if min(vals.values()) >= 0.999:
                        continue  # every representation solves well: no ranking
                    best = max(vals, key=lambda r: vals[r])
                    wins += best == "kfac"
                    points += 1
        held = points > 0 and wins >= points / 2
        claims.append(Claim("Fig. 3.3 solve", "use KFAC for inverse-FIM operations: best cos(v, (F̂+λI)⁻¹(F+λI)v)",
                            f"KFAC (best of its solve methods) best at {wins}/{points} (checkpoint, kind, λ) points "
                            "where some representation has cos < 0.999; mean median cos over all points: "
                            + ", ".join(f"{_label(r, '')} {np.nanmean(per_rep[r]):.3f}" for r in paper),
                            held if points else None))
        top, bottom = max(lams), min(lams)

        def worst(lam: float, factored: bool) -> float:
            vals = [med(s, k, r, "solve_cos", m, lam) for s in steps for k in kinds for r in reps
                    for m in ((cfg.solve_methods if r in KRON else ("exact",)) if not factored else
                              (("factored",) if r in KRON and "factored" in cfg.solve_methods else ()))]
            return float(np.nanmin(vals)) if vals else math.nan

        fac = ("; with factored damping (not (F̂+λI)⁻¹, so slower to reach 1): "
               f"{worst(top, True):.4f}" if "factored" in cfg.solve_methods else "")
        exact_top = min(med(s, k, r, "solve_cos", "exact", top) for s in steps for k in kinds for r in reps)
        claims.append(Claim("Fig. 3.3 solve vs λ", "the solve cosine tends to 1 as λ grows and degrades as λ → 0",
                            f"min median cos, exact damping, at λ = {top:g}·tr/P: {exact_top:.4f}; at λ = "
                            f"{bottom:g}·tr/P: {worst(bottom, False):.4f}" + fac,
                            bool(exact_top >= 0.99 and worst(bottom, False) < exact_top)))
    # --- Theorem 2 on the whole matrix at the checkpoints
    if "kfac" in reps and "ekfac" in reps and any(S.get((s, k, "ekfac", "", "fro_rel_err", "")) for s in steps
                                                   for k in kinds):
        pairs = [(med(s, k, "ekfac", "fro_rel_err"), med(s, k, "kfac", "fro_rel_err")) for s in steps for k in kinds]
        claims.append(Claim("Thm 2 (checkpoints)", "‖F − F_EKFAC‖_F ≤ ‖F − F_KFAC‖_F",
                            "relative Frobenius errors EKFAC vs KFAC: "
                            + ", ".join(f"{e:.3f} ≤ {k_:.3f}" for e, k_ in pairs),
                            all(e <= k_ + 1e-12 for e, k_ in pairs), "deterministic"))
    # --- Fig. 4.2 right / Theorem 2 at recompute points / Fig. 4.4c
    if drift_rows:
        claims += _drift_claims(drift_rows)
    return claims


DRIFT_LABELS = {"kfac": "KFAC", "ekfac": "EKFAC", "ekfac_mb": "EKFAC (s* on minibatches)"}


def _drift_claims(drift_rows: list[dict[str, Any]]) -> list[Claim]:
    claims: list[Claim] = []
    fro = [r for r in drift_rows if r["metric"] == "fro_rel_err" and r["basis"] == "amortized"]
    by = {(r["step"], r["layer"], r["a"]): r for r in fro}
    rec = [(st, la) for (st, la, a) in by if a == "kfac" and by[(st, la, a)]["since"] == 0
           and (st, la, "ekfac") in by]
    if rec:
        viol = [(st, la) for st, la in rec if by[(st, la, "ekfac")]["value"] > by[(st, la, "kfac")]["value"] + 1e-12]
        claims.append(Claim("Thm 2 (recompute points)", "per layer, ‖F_l − EKFAC_l‖_F ≤ ‖F_l − KFAC_l‖_F",
                            f"{len(rec) - len(viol)}/{len(rec)} (step, layer) pairs at recompute points hold",
                            not viol, "deterministic"))
    layers = list(dict.fromkeys(r["layer"] for r in fro))
    base = {(r["step"], r["layer"], r["a"]): r["value"] for r in fro if r["since"] == 0}

    def mean(vals: list[float]) -> float:
        return float(np.mean(vals)) if vals else math.nan

    def between(a: str, layer: str | None = None) -> list[dict[str, Any]]:
        return [r for r in fro if r["a"] == a and r["since"] > 0 and (layer is None or r["layer"] == layer)]

    kfac_err = mean([r["value"] for r in between("kfac")])
    kfac_growth = mean([r["value"] - base[(r["step"] - r["since"], r["layer"], "kfac")] for r in between("kfac")])
    for a in ("ekfac", "ekfac_mb"):
        if not between(a):
            continue
        err = mean([r["value"] for r in between(a)])
        growth = mean([r["value"] - base.get((r["step"] - r["since"], r["layer"], a), math.nan)
                       for r in between(a)])
        per_layer = {la: (mean([r["value"] for r in between("kfac", la)]), mean([r["value"] for r in between(a, la)]))
                     for la in layers}
        held = all(e < k for k, e in per_layer.values()) and growth < kfac_growth
        how = ("s* on the evaluation batch, only the basis is stale" if a == "ekfac" else
               "s* on each training minibatch, as in Algorithm 1")
        claims.append(Claim(f"Fig. 4.2 right (drift), {DRIFT_LABELS[a]}",
                            "between recomputations, EKFAC (s* tracked every step) drifts far less from the exact "
                            "empirical Fisher than amortized KFAC",
                            f"{how}: mean ‖F−F̂‖/‖F‖ between recomputations KFAC {kfac_err:.3f} vs EKFAC {err:.3f}; "
                            f"mean growth since the last recompute KFAC {kfac_growth:+.3f} vs EKFAC {growth:+.3f}; "
                            "per layer (KFAC/EKFAC): "
                            + ", ".join(f"{la} {k:.3f}/{e:.3f}" for la, (k, e) in per_layer.items()), held))
    spec = [r for r in drift_rows if r["metric"] == "spectrum_l2_rel" and r["basis"] == "fixed"]
    if spec:
        last = max(r["step"] for r in spec)
        first = min(r["step"] for r in spec)
        d = {(r["step"], r["a"]): r["value"] for r in spec}
        avg = {a: mean([r["value"] for r in spec if r["a"] == a]) for a in DRIFT_LABELS}
        for a in ("ekfac", "ekfac_mb"):
            if (last, a) not in d:
                continue
            held = d[(last, a)] < d[(last, "kfac")] and avg[a] < avg["kfac"] and d[(last, "kfac")] > d[(first, "kfac")]
            claims.append(Claim(f"Fig. 4.4c (spectrum, fixed basis), {DRIFT_LABELS[a]}",
                                "with a basis fixed at the start, KFAC's spectrum quickly diverges from the exact "
                                "one; EKFAC's stays much closer",
                                f"ℓ2 distance of sorted eigenvalues / ‖eig(G)‖ at step {first} → {last}: KFAC "
                                f"{d[(first, 'kfac')]:.3f} → {d[(last, 'kfac')]:.3f}, EKFAC "
                                f"{d[(first, a)]:.3f} → {d[(last, a)]:.3f} (means {avg['kfac']:.3f} vs "
                                f"{avg[a]:.3f})", held))
    return claims


def _figures(cfg, S, steps, kinds, reps, lams, drift_rows, training) -> list[FigureSpec]:
    figs: list[FigureSpec] = []

    def series(kind, rep, metric, method="", lam=""):
        xs, m, lo, hi = [], [], [], []
        for s in steps:
            st = S.get((s, kind, rep, method, metric, lam))
            if st:
                xs.append(s)
                m.append(st["median"])
                lo.append(st["q1"])
                hi.append(st["q3"])
        return np.array(xs), np.array(m), np.array(lo), np.array(hi)

    def xstep(ax):
        ax.set_xscale("symlog", linthresh=max(1, steps[1] if len(steps) > 1 else 1))
        ax.set_xlabel("training step")

    variants = [(r, m) for r in reps for m in (cfg.solve_methods if r in KRON else ("exact",))]

    if lams:
        for kind in kinds:
            def draw_solve(fig, kind=kind):
                axes = fig.subplots(2, len(steps), squeeze=False, sharex=True)
                for j, s in enumerate(steps):
                    for rep, method in variants:
                        for i, metric in enumerate(("solve_cos", "solve_residual")):
                            pts = [(lam, S[(s, kind, rep, method, metric, lam)]) for lam in lams
                                   if (s, kind, rep, method, metric, lam) in S]
                            if not pts:
                                continue
                            x = [p[0] for p in pts]
                            ax = axes[i, j]
                            ls = "--" if method == "factored" else "-"
                            ax.plot(x, [p[1]["median"] for p in pts], ls, marker="o", ms=3,
                                    color=_COLORS.get(rep), label=_label(rep, method))
                            ax.fill_between(x, [p[1]["q1"] for p in pts], [p[1]["q3"] for p in pts],
                                            color=_COLORS.get(rep), alpha=0.12)
                    axes[0, j].set_title(f"step {s}", fontsize=9)
                    axes[1, j].set_yscale("log")
                    for i in range(2):
                        axes[i, j].set_xscale("log")
                    axes[1, j].set_xlabel("λ / (tr F / P)")
                axes[0, 0].set_ylabel("cos(v, v')")
                axes[1, 0].set_ylabel("‖v − v'‖ / ‖v'‖")
                axes[0, -1].legend(fontsize=7)

            figs.append(FigureSpec(f"fig3_3_solve_{kind}", f"Fig. 3.3 analogue: solve quality ({kind} Fisher)",
                                   "v' = (F̂ + λI)⁻¹(F + λI)v for random unit v: cosine (top, higher is better) and "
                                   "residual (bottom, lower is better) vs Tikhonov λ, at each checkpoint; median and "
                                   "interquartile band over the probe vectors; dashed: factored damping.",
                                   draw_solve, (3.0 * len(steps) + 1.5, 5.5)))

    def draw_forward(fig, metrics, ylabels, logs):
        axes = fig.subplots(len(metrics), len(kinds), squeeze=False)
        for j, kind in enumerate(kinds):
            for i, metric in enumerate(metrics):
                ax = axes[i, j]
                for rep in reps:
                    x, m, lo, hi = series(kind, rep, metric)
                    if x.size == 0:
                        continue
                    if logs[i]:
                        m, lo, hi = (np.maximum(a, 1e-17) for a in (m, lo, hi))
                    ax.errorbar(x, m, yerr=[m - lo, hi - m], marker="o", ms=4, capsize=2,
                                color=_COLORS.get(rep), label=_label(rep, ""))
                if logs[i]:
                    ax.set_yscale("log")
                xstep(ax)
                ax.set_ylabel(ylabels[i])
                ax.set_title(f"{kind} Fisher", fontsize=9)
        axes[0, -1].legend(fontsize=7)

    figs.append(FigureSpec("fig3_4_mv", "Fig. 3.4 analogue: Fv",
                           "cos(Fv, F̂v) (higher is better) and ‖Fv − F̂v‖/‖Fv‖ (lower is better) during training; "
                           "median and quartiles over the probe vectors.",
                           lambda fig: draw_forward(fig, ("mv_cos", "mv_residual"), ("cos(Fv, F̂v)", "residual"),
                                                    (False, True)), (4.5 * len(kinds) + 1, 6)))
    figs.append(FigureSpec("fig3_5_vTMv", "Fig. 3.5 analogue: vᵀFv",
                           "|vᵀF̂v − vᵀFv| / |vᵀFv| (lower is better); median and quartiles over the probe vectors.",
                           lambda fig: draw_forward(fig, ("vTMv_rel_err",), ("relative error",), (True,)),
                           (4.5 * len(kinds) + 1, 3.5)))
    figs.append(FigureSpec("fig3_6_trace", "Fig. 3.6 analogue: trace",
                           "|tr F̂ − tr F| / |tr F| (lower is better); values at 1e-17 are exact to round-off "
                           "(shared samples).",
                           lambda fig: draw_forward(fig, ("trace_rel_err",), ("relative error",), (True,)),
                           (4.5 * len(kinds) + 1, 3.5)))

    fro = [r for r in drift_rows if r["metric"] == "fro_rel_err"]
    if fro:
        layers = list(dict.fromkeys(r["layer"] for r in fro))

        def draw_drift(fig):
            axes = fig.subplots(1, len(layers), squeeze=False, sharey=False)[0]
            for ax, la in zip(axes, layers):
                for a in DRIFT_LABELS:
                    for basis, ls in (("amortized", "-"), ("fixed", ":")):
                        pts = sorted((r["step"], r["value"]) for r in fro if r["layer"] == la and r["a"] == a
                                     and r["basis"] == basis)
                        if pts:
                            ax.plot(*zip(*pts), ls, color=_COLORS[a], lw=1.2 if basis == "amortized" else 0.9,
                                    label=f"{DRIFT_LABELS[a]} ({basis})")
                for s in sorted({r["step"] for r in fro if r["since"] == 0}):
                    ax.axvline(s, color="0.85", lw=0.6, zorder=0)
                ax.set_title(f"layer {la}", fontsize=9)
                ax.set_xlabel("step")
            axes[0].set_ylabel("‖F_l − F̂_l‖_F / ‖F_l‖_F")
            axes[-1].legend(fontsize=7)

        figs.append(FigureSpec("fig4_2_drift", "Fig. 4.2 (right) analogue: approximation error during training",
                               f"Per-layer relative Frobenius error against the exact empirical Fisher block; KFAC "
                               f"factors and the EKFAC basis recomputed every {cfg.recompute_every} steps (grey "
                               "lines), EKFAC's s* every step. Dotted: basis fixed at step 0.",
                               draw_drift, (3.2 * len(layers) + 1, 3.6)))
    spec = [r for r in drift_rows if r["metric"] == "spectrum_l2"]
    if spec:
        def draw_spec(fig):
            ax1, ax2 = fig.subplots(1, 2)
            for ax, metric in ((ax1, "spectrum_l2"), (ax2, "spectrum_l2_rel")):
                for a in DRIFT_LABELS:
                    for basis, ls in (("fixed", "-"), ("amortized", ":")):
                        pts = sorted((r["step"], r["value"]) for r in drift_rows if r["metric"] == metric
                                     and r["a"] == a and r["basis"] == basis)
                        if pts:
                            ax.plot(*zip(*pts), ls, color=_COLORS[a], label=f"{DRIFT_LABELS[a]} ({basis} basis)")
                ax.set_xlabel("step")
            ax1.set_ylabel("‖eig(G_l) − eig(Ĝ_l)‖₂")
            ax2.set_ylabel("relative to ‖eig(G_l)‖₂")
            ax2.legend(fontsize=7)

        la = spec[0]["layer"]
        figs.append(FigureSpec("fig4_4c_spectrum", "Fig. 4.4c analogue: spectrum tracking with a fixed basis",
                               f"ℓ2 distance between the sorted eigenvalues of the exact empirical-Fisher block of "
                               f"layer {la} and those of KFAC (factors fixed at step 0) and EKFAC (basis fixed at "
                               "step 0, s* re-estimated every step); dotted: amortized basis.",
                               draw_spec, (10, 3.8)))
    if training:
        def draw_training(fig):
            axes = fig.subplots(1, 2)
            for ax, phase in zip(axes, ("quality", "drift")):
                pts = sorted((r["step"], r["value"]) for r in training if r["phase"] == phase
                             and r["metric"] == "train_loss")
                if pts:
                    ax.plot(*zip(*pts), lw=0.8, label="minibatch loss")
                acc = sorted((r["step"], r["value"]) for r in training if r["phase"] == phase
                             and r["metric"] == "test_accuracy")
                if acc:
                    ax2 = ax.twinx()
                    ax2.plot(*zip(*acc), "o-", color="tab:green", label="test accuracy")
                    ax2.set_ylabel("test accuracy")
                ax.set_title(f"part {'1 (CNN)' if phase == 'quality' else '2 (sigmoid MLP)'}", fontsize=9)
                ax.set_xlabel("step")
                ax.set_ylabel("training loss")

        figs.append(FigureSpec("training", "Training curves", "Minibatch cross-entropy (and test accuracy at the "
                               "probe points).", draw_training, (10, 3.3)))
    return figs


