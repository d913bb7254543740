"""``tangentlab run alignment``: neural feature alignment during training (paper 000, thesis ch. 6).

Items (``items``; default ``1,2,3,4,7``):

1. **Disk task eigenfunctions** (Fig. 1): ``disk_n`` points uniform on ``[−1, 1]²``, label
   ``1[‖x‖ < √(2/π)]``; a ReLU MLP ``2 → disk_width×disk_depth → 1`` trained by full-batch
   gradient descent on the binary cross-entropy. At log-spaced steps, the centered NTK on a
   ``disk_grid × disk_grid`` grid (one output, so ``K`` is ``R² × R²``): ``λ_20/λ_1``, effective
   rank, ``CKA(K, y yᵀ)`` with the grid's ±1 labels, and at ``disk_snapshots`` steps the top
   ``disk_eigen`` eigenvectors as images (eigen-index × iteration figure).
2. **Spectrum evolution** (Figs. 2, 14): ``dataset`` (digits by default) with ``model`` (a ReLU
   MLP with ``depth`` Linear layers of ``width`` units), SGD with momentum, for each
   ``noise`` fraction of random labels. At log-spaced steps (``schedule``), on fixed probe
   batches of ``n_probe`` training examples (with their possibly random training labels)
   and ``n_probe`` test examples: the ``(N·C) × (N·C)`` centered NTK's ``λ_max``, mean and
   median eigenvalue, effective rank, trace ratios ``T_k`` (``ks``; full spectrum stored),
   kernel distance to the initial kernel, loss, accuracy, kernel-PCA coordinates.
3. **CKA with the labels** (Figs. 3, 11): on the same runs, ``CKA(K, YYᵀ)`` with the one-hot
   label kernel, overall and per layer, train and test probes.
4. **Hierarchical alignment** (Fig. 4): easy vs difficult examples. (a) a fraction
   ``hier_random_fraction`` of the training labels is replaced by uniform random labels;
   (b) a fraction ``hier_other_fraction`` of the training set is replaced by a harder but
   learnable "other dataset" (``make_classification``, digest S6.8(b)). ``CKA(K(S), Y_S Y_Sᵀ)``
   on ``hier_subset`` easy and ``hier_subset`` difficult training examples (their training
   labels), and the ratio ``CKA_easy / CKA_diff``.
5. **Ablations** (Figs. 13, 14; presets): item 4(a) with width ``ablation_width`` and depth in
   ``ablation_depths``; item 2 with learning rate in ``ablation_lrs``; ``ablation_seeds`` seeds each.
6. **SuperNat** (Fig. 5) and 7. **complexity measure** (Fig. 6): computed by
   :mod:`tangentlab.studies.alignment.supernat` and :mod:`tangentlab.studies.alignment.complexity`
   (tables ``supernat`` and ``complexity``), included in this report.

Conventions: NTK ``K[n, m, c, d] = ⟨∂f_c(x_n)/∂θ, ∂f_d(x_m)/∂θ⟩`` unnormalized, rows
``n·C + c``; centering ``"examples"`` = tangent features centered over the probe examples per
output (thesis ch. 6); ``T_k`` = mass of the ``k`` largest eigenvalues. See
:mod:`tangentlab.studies.framework.probes` for every metric.

Results (tidy, append-only, resumable): ``tables/probes.csv`` (run × step × probe × metric
× layer), ``tables/training.csv`` (run × step × metric), ``tables/spectra.csv`` (full
eigenvalue lists), ``tables/eigenfunctions.csv`` (disk grid eigenvectors), ``tables/pca.csv``
(kernel-PCA coordinates at a few steps), ``tables/probe_labels.csv`` (labels of the probe
examples). Each training run checkpoints after every probe and
a killed study resumes from the last checkpoint of the unfinished run.
"""

from __future__ import annotations

import functools
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ..framework.config import Preset, StudyConfig, option
from ..framework.data import Split, check_dataset, load_dataset
from ..framework.datasets import DISK_RADIUS, disk_task, grid_2d, mix_other_dataset, randomize_labels
from ..framework.models import MODELS, VGG_CONFIGS, build_model, make_mlp, make_vgg, model_spec
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
from ..framework.report import Claim, FigureSpec, ReportContent, TableSpec
from ..framework.runner import Study
from ..framework.store import to_number
from ..framework.threads import blas_threads
from ..framework.training import BatchStream, accuracy, mean_loss, rng_state, set_rng_state
from . import complexity as alignment_complexity
from . import supernat

ITEMS = (1, 2, 3, 4, 5, 6, 7)
DATASETS = ("digits", "mnist", "cifar10")
#: digits training examples (75% of 1797, stratified).
DIGITS_TRAIN = 1347

PROBE_COLUMNS = ["run", "step", "probe", "metric", "layer", "value"]
PROBE_KEY = ["run", "step", "probe", "metric", "layer"]
TRAINING_COLUMNS = ["run", "step", "metric", "value"]
TRAINING_KEY = ["run", "step", "metric"]
SPECTRA_COLUMNS = ["run", "step", "probe", "index", "value"]
SPECTRA_KEY = ["run", "step", "probe", "index"]
EIGEN_COLUMNS = ["run", "step", "component", "point", "value"]
EIGEN_KEY = ["run", "step", "component", "point"]
PCA_COLUMNS = ["run", "step", "probe", "component", "row", "value"]
PCA_KEY = ["run", "step", "probe", "component", "row"]
LABEL_COLUMNS = ["run", "probe", "example", "label"]
LABEL_KEY = ["run", "probe", "example"]


@dataclass
class AlignmentConfig(StudyConfig):
    """Configuration of ``alignment`` (see the module docstring)."""

    PRESETS: ClassVar[dict[str, Preset]] = {
        "tiny": Preset("seconds-long smoke run (tests)", {
            "items": (1, 2, 3, 4), "width": 16, "depth": 3, "train_steps": 40, "n_probe": 12, "batch_size": 50,
            "lr": 0.05, "schedule_base": 1.6, "ks": (2, 5), "noise": (0.0, 0.5), "hier_subset": 10,
            "n_pca": 2, "disk_n": 40, "disk_width": 12, "disk_depth": 2, "disk_steps": 30, "disk_grid": 8,
            "disk_eigen": 3, "disk_snapshots": 3, "ablation_depths": (2, 3), "ablation_width": 12,
            "ablation_lrs": (0.02, 0.05), "ablation_seeds": 1, "ablation_steps": 20,
            "complexity_widths": (8, 16), "complexity_noise": (0.0, 0.5), "complexity_seeds": 1,
            "complexity_target_loss": 0.3, "complexity_max_epochs": 3, "complexity_n_train": 200,
            "supernat_n_train": 20, "supernat_dim": 5, "supernat_steps": 50}),
        "ablation": Preset("item 5: depth and learning-rate ablations (Figs. 13, 14), 3 seeds, CPU, about 8 CPU-"
                           "minutes", {
            "items": (5,), "ablation_seeds": 3}),
        "supernat": Preset("item 6: SuperNat vs GD on the noisy linear regression (Fig. 5), CPU", {
            "items": (6,), "supernat_n_train": 50, "supernat_dim": 10, "supernat_noise": 0.1,
            "supernat_steps": 3000}),
        "full": Preset("all items 1-7 at CPU scale with the full sweeps (about an hour on 2 cores)", {
            "items": ITEMS, "train_steps": 3000, "schedule_base": 1.15, "noise": (0.0, 0.2, 0.5),
            "disk_steps": 3000, "ablation_seeds": 3, "complexity_widths": (16, 64, 256, 1024),
            "complexity_noise": (0.0, 0.2, 0.4, 0.6), "complexity_seeds": 3, "complexity_target_loss": 0.01,
            "complexity_max_epochs": 1000, "complexity_n_train": 1347, "supernat_n_train": 50,
            "supernat_dim": 10, "supernat_steps": 3000}),
        "paper-mnist": Preset("paper scale: MNIST (IDX files in data_dir), MLP 6x80, items 2-4, GPU", {
            "items": (2, 3, 4), "dataset": "mnist", "device": "cuda", "width": 80, "depth": 6, "lr": 0.02,
            "train_steps": 60000, "schedule_base": 1.15, "noise": (0.0, 0.2, 0.5), "hier_random_fraction": 0.1,
            "hier_other_fraction": 0.1}, needs_gpu=True),
        "paper-cifar": Preset("paper scale: CIFAR-10 (python batches in data_dir), BN-free VGG19, items 2-3, "
                              "GPU", {
                                  "items": (2, 3), "dataset": "cifar10", "model": "vgg19", "width": 64,
                                  "device": "cuda", "lr": 0.01, "batch_size": 100, "train_steps": 200000,
                                  "schedule_base": 1.15, "noise": (0.0, 0.2, 0.5)}, needs_gpu=True),
    }

    items: tuple[int, ...] = option((1, 2, 3, 4, 7), "items of paper 000 to run (5: ablations, 6: SuperNat, "
                                    "7: complexity measure)", choices=ITEMS)
    # items 2-5: data, model, optimizer
    dataset: str = option("digits", "dataset of items 2-5", choices=DATASETS)
    data_dir: str = option("", "folder with the MNIST IDX files / CIFAR-10 python batches (nothing is downloaded)")
    max_per_class: int = option(0, "training examples per class to keep (0: all; mnist, cifar10)", min=0)
    model: str = option("mlp", "model of items 2-5 (vgg11/vgg19: BN-free VGG for 32x32 CIFAR-10)",
                        choices=lambda: [*MODELS, *VGG_CONFIGS])
    width: int = option(80, "hidden width of the MLP (base width of a CNN/ResNet)", min=1)
    depth: int = option(6, "Linear layers of the MLP (hidden layers = depth - 1)", min=2)
    lr: float = option(0.02, "SGD learning rate (items 2-4)", min=0.0)
    momentum: float = option(0.9, "SGD momentum", min=0.0, max=1.0)
    batch_size: int = option(100, "minibatch size", min=1)
    train_steps: int = option(1500, "SGD steps of each run of items 2-4", min=1)
    schedule: str = option("thesis", "probe steps: thesis (0 and 5*floor(base^k)) or decade (round(10^(k/10)))",
                           choices=("thesis", "decade"))
    schedule_base: float = option(1.25, "growth factor of the thesis schedule (thesis: 1.15)", min=1.01)
    n_probe: int = option(100, "examples of the train and the test probe batches (kernel (N*C)^2)", min=2)
    centering: str = option("examples", "kernel centering: examples (per output), full (N*C rows) or none",
                            choices=("examples", "full", "none"))
    ks: tuple[int, ...] = option((40, 80, 160), "trace ratios T_k highlighted (out of N*C)", min=1)
    n_pca: int = option(3, "kernel-PCA components stored", min=0)
    pca_snapshots: int = option(4, "probe steps whose kernel-PCA coordinates are stored", min=0)
    noise: tuple[float, ...] = option((0.0, 0.5), "fractions of random labels (items 2-3)", min=0.0, max=1.0)
    # item 4
    hier_random_fraction: float = option(0.2, "item 4(a): fraction of training labels made random", min=0.0,
                                         max=1.0)
    hier_other_fraction: float = option(0.1, "item 4(b): fraction of the training set replaced by the other task",
                                        min=0.0, max=1.0)
    hier_subset: int = option(100, "item 4: easy and difficult training examples in each CKA probe", min=2)
    # item 1
    disk_n: int = option(200, "item 1: training points of the disk task", min=4)
    disk_width: int = option(64, "item 1: hidden width", min=1)
    disk_depth: int = option(5, "item 1: hidden layers", min=1)
    disk_lr: float = option(0.05, "item 1: gradient-descent learning rate", min=0.0)
    disk_steps: int = option(2000, "item 1: full-batch gradient-descent steps", min=1)
    disk_grid: int = option(30, "item 1: grid resolution (kernel of size grid^2)", min=4)
    disk_eigen: int = option(6, "item 1: eigenfunctions shown", min=1)
    disk_snapshots: int = option(5, "item 1: iterations shown in the eigenfunction figure", min=2)
    # item 5
    ablation_depths: tuple[int, ...] = option((2, 4, 6, 8), "item 5: depths (Linear layers) of the depth ablation",
                                              min=2)
    ablation_width: int = option(60, "item 5: width of the depth ablation", min=1)
    ablation_lrs: tuple[float, ...] = option((0.005, 0.02), "item 5: learning rates of the lr ablation", min=0.0)
    ablation_seeds: int = option(2, "item 5: seeds per setting", min=1)
    ablation_steps: int = option(1500, "item 5: SGD steps per run", min=1)
    # item 7 (tangentlab.studies.alignment.complexity)
    # defaults: the digest's S6.12 sweep (widths 16-1024; noise 0-0.6 at width 256; CE target 0.01) on all
    # 1347 digits training examples, 3 seeds (the width sweep's gaps differ by less than the seed noise):
    # 7 settings x 3 seeds = 21 runs, ~1.5 CPU-minutes with threads=1 (57 s measured for 2 seeds, light load)
    complexity_widths: tuple[int, ...] = option((16, 64, 256, 1024), "item 7: hidden widths of the width sweep",
                                                min=1)
    complexity_noise: tuple[float, ...] = option((0.2, 0.4, 0.6), "item 7: label-noise fractions of the noise "
                                                 "sweep (0 is always added)", min=0.0, max=1.0)
    complexity_seeds: int = option(3, "item 7: seeds per setting", min=1)
    complexity_target_loss: float = option(0.01, "item 7: train until the full-train cross-entropy is below this "
                                           "(paper: 0.01)", min=1e-6)
    complexity_max_epochs: int = option(400, "item 7: epoch limit per run", min=1)
    complexity_n_train: int = option(DIGITS_TRAIN, "item 7: training examples (a seeded subset of the digits "
                                     "training split)", min=10)
    complexity_lr: float = option(0.05, "item 7: SGD learning rate (digest S6.12: 0.05)", min=1e-8)
    complexity_momentum: float = option(0.9, "item 7: SGD momentum", min=0.0, max=0.999)
    complexity_batch_size: int = option(100, "item 7: minibatch size (<= complexity_n_train)", min=1)
    complexity_probe: int = option(100, "item 7: training examples S' on which Tr K is estimated (scaled to "
                                   "n_train; <= complexity_n_train)", min=1)
    complexity_trace_every: int = option(1, "item 7: re-evaluate Tr K every this many SGD steps (1: every step)",
                                         min=1)
    complexity_noise_width: int = option(0, "item 7: hidden width of the label-noise sweep (0: 256 if among "
                                         "complexity_widths, else the largest width)", min=0)
    # item 6 (tangentlab.studies.alignment.supernat)
    supernat_n_train: int = option(50, "item 6: training examples of the noisy regression", min=2)
    supernat_dim: int = option(10, "item 6: noise-feature dimension d", min=1)
    supernat_noise: float = option(0.1, "item 6: label-noise variance sigma^2", min=0.0)
    supernat_steps: int = option(3000, "item 6: gradient steps", min=1)
    supernat_lr: float = option(0.2, "item 6: learning rate eta (function-space GD / SuperNat)", min=1e-8)
    supernat_seeds: int = option(20, "item 6: independent draws of the regression problem", min=1)
    supernat_n_test: int = option(2000, "item 6: test points (clean targets)", min=1)
    supernat_kappas: tuple[str, ...] = option(("fixed", "trace"), "item 6: SuperNat isotropic rescalings kappa "
                                              "(fixed: kappa of step 0; trace: Tr K kept; max: lambda_max kept)",
                                              choices=supernat.KAPPAS)
    supernat_records: int = option(60, "item 6: log-spaced steps recorded per run", min=2)

    # ---- validation -----------------------------------------------------------------------------
    def validate(self) -> None:
        if self.model in VGG_CONFIGS and self.dataset != "cifar10":
            raise self.error("model", f"{self.model} needs 32x32 CIFAR-10 images, not {self.dataset!r}",
                             "mlp, cnn (digits); mlp (mnist); mlp, resnet18/34/50, vgg11, vgg19 (cifar10)")
        spec = _model_spec(self.model)
        if 7 in self.items and self.dataset != "digits":
            raise self.error("dataset", f"item 7 (complexity measure) runs on digits only, not {self.dataset!r}",
                             "digits, or items without 7")
        if self.dataset == "digits":
            if spec.layout != "flat" and self.model != "cnn":
                raise self.error("model", f"model {self.model!r} does not fit 8x8 digits", "mlp, cnn")
        else:
            check_dataset(self.dataset, spec.layout, self.data_dir)
        n_train = self.n_train_estimate()
        for name in ("n_probe", "batch_size"):
            if getattr(self, name) > n_train:
                raise self.error(name, f"{getattr(self, name)} exceeds the {n_train} training examples",
                                 f"1..{n_train}")
        if self.dataset == "digits" and self.n_probe > 1797 - DIGITS_TRAIN:
            raise self.error("n_probe", f"{self.n_probe} exceeds the {1797 - DIGITS_TRAIN} test examples",
                             f"2..{1797 - DIGITS_TRAIN}")
        wants = set(self.items)
        if wants & {4, 5}:
            for name, frac in (("hier_random_fraction", self.hier_random_fraction),
                               ("hier_other_fraction", self.hier_other_fraction)):
                if name == "hier_other_fraction" and 4 not in wants:
                    continue
                k = int(round(frac * n_train))
                if k < self.hier_subset or n_train - k < self.hier_subset:
                    need = self.hier_subset / n_train
                    raise self.error(name, f"{frac} of {n_train} training examples gives {k} difficult and "
                                     f"{n_train - k} easy ones, fewer than hier_subset={self.hier_subset}",
                                     f"a fraction between {need:.3f} and {1 - need:.3f}")
        if 7 in wants:
            if self.complexity_n_train > DIGITS_TRAIN:
                raise self.error("complexity_n_train", f"{self.complexity_n_train} exceeds the {DIGITS_TRAIN} digits "
                                 "training examples", f"10..{DIGITS_TRAIN}")
            for name in ("complexity_batch_size", "complexity_probe"):
                if getattr(self, name) > self.complexity_n_train:
                    raise self.error(name, f"{getattr(self, name)} exceeds complexity_n_train="
                                     f"{self.complexity_n_train}", f"1..{self.complexity_n_train}")
        r = self.n_probe * 10  # every dataset here has 10 classes
        if wants & {2, 3, 5} and max(self.ks) > r:
            raise self.error("ks", f"T_{max(self.ks)} needs more than the {r} = n_probe*10 kernel rows", f"1..{r}")

    def n_train_estimate(self) -> int:
        """Training examples of items 2-5 (exact for digits; per-class limit for the others)."""
        if self.dataset == "digits":
            return DIGITS_TRAIN
        full = 60000 if self.dataset == "mnist" else 50000
        return min(full, 10 * self.max_per_class) if self.max_per_class else full

    @property
    def centering_mode(self) -> str | None:
        return None if self.centering == "none" else self.centering


def _model_spec(name: str) -> Any:
    if name in VGG_CONFIGS:
        return type("VggSpec", (), {"layout": "image"})()
    return model_spec(name)


def load_alignment_split(cfg: AlignmentConfig) -> Split:
    """The train/test split of items 2-5, through the shared loader
    :func:`tangentlab.studies.framework.data.load_dataset`: digits (75/25 stratified, standardized per
    pixel), or MNIST / CIFAR-10 from ``data_dir`` (official splits; the first ``max_per_class``
    *training* examples of each class, the whole test set; ``x/255`` standardized with the
    training mean and std, one scalar for MNIST as in the paper's code, per channel for CIFAR-10)."""
    return load_dataset(cfg.dataset, cfg.seed, _model_spec(cfg.model).layout, cfg.data_dir,
                        cfg.max_per_class or None)


# =============================================================================================
# runs
# =============================================================================================
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


def plan_runs(cfg: AlignmentConfig) -> list[RunSpec]:
    """The training runs of items 2-5, in execution order."""
    runs: list[RunSpec] = []
    items = set(cfg.items)
    base = dict(depth=cfg.depth, width=cfg.width, lr=cfg.lr, steps=cfg.train_steps, seed=cfg.seed)
    if items & {2, 3}:
        for p in cfg.noise:
            runs.append(RunSpec(f"noise_{round(100 * p)}", 2, "noise", noise=p, **base))
    if 4 in items:
        runs.append(RunSpec("hier_random", 4, "hier", difficult="random", fraction=cfg.hier_random_fraction, **base))
        runs.append(RunSpec("hier_other", 4, "hier", difficult="other", fraction=cfg.hier_other_fraction, **base))
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


def _tag(name: str) -> str:
    return "run_" + "".join(ch if ch.isalnum() or ch in "_." else "_" for ch in name)


def _subset(mask: torch.Tensor, k: int, seed: int) -> torch.Tensor:
    """``k`` indices where ``mask`` is true, drawn with a seeded generator."""
    idx = torch.nonzero(mask, as_tuple=False).flatten()
    perm = torch.randperm(idx.numel(), generator=torch.Generator().manual_seed(seed))
    return idx[perm[:k]]


def _pca_steps(steps: list[int], k: int) -> set[int]:
    if k <= 0:
        return set()
    idx = np.unique(np.round(np.linspace(0, len(steps) - 1, k)).astype(int))
    return {steps[i] for i in idx}


def _snapshot_steps(steps: list[int], total: int, k: int) -> set[int]:
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


class Alignment(Study):
    name = "alignment"
    title = "Neural feature alignment during training (paper 000 / thesis ch. 6)"
    description = "NTK spectra, effective rank, trace ratios, CKA with labels, easy vs difficult alignment"
    config_class = AlignmentConfig
    config: AlignmentConfig
    parallel = True

    def run(self) -> None:
        """All items of ``items``. Torch's intra-op threads are ``threads`` (set by the runner);
        the BLAS pools outside torch (numpy's OpenBLAS: item 6's SVDs, the report's statistics)
        are limited to the same count here, so ``--set threads=1`` holds for every item."""
        with blas_threads(self.config.threads):
            self._run_items()

    def _run_items(self) -> None:
        cfg = self.config
        t0, c0 = time.perf_counter(), time.process_time()

        def took(what: str, t: float, c: float) -> None:
            self.log(f"alignment: {what} took {time.perf_counter() - t:.1f}s "
                     f"(CPU {time.process_time() - c:.1f}s)")

        # independent units, claimed one at a time by the ranks of a torchrun launch (all here with one process)
        units: list[tuple[str, Callable[[], None]]] = []
        if 1 in cfg.items:
            units.append(("item 1 (disk)", self._run_disk))
        split: list[Any] = []

        def training_run(spec: RunSpec) -> None:
            if not split:
                split.append(load_alignment_split(cfg))
            self._run_training(spec, split[0])

        units += [(f"run {spec.name}", functools.partial(training_run, spec)) for spec in plan_runs(cfg)]
        if 6 in cfg.items:
            units.append(("item 6", functools.partial(supernat.run_supernat, self.store, cfg, self.log,
                                                      cfg.progress_flag)))
        for what, unit in self.ctx.mine(units, key=lambda u: u[0]):
            t, c = time.perf_counter(), time.process_time()
            unit()
            took(what, t, c)
        if 7 in cfg.items:  # its (width, noise, seed) runs are claimed one by one
            t, c = time.perf_counter(), time.process_time()
            alignment_complexity.run_complexity(self.store, cfg, self.log, cfg.progress_flag,
                                                claim=self.ctx.claim if self.ctx.active else None)
            took("item 7", t, c)
        took("the whole study", t0, c0)

    # ---- shared training driver -----------------------------------------------------------------
    def _train(self, tag: str, model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, *,
               steps: int, batch_size: int, seed: int, probe: Probe, schedule: list[int],
               sink: Callable[[ProbeResult], None], extra: Callable[[int, nn.Module], list[dict[str, Any]]],
               loss_fn: Any = None, desc: str = "", vector_steps: set[int] | None = None) -> None:
        """Train with probes at ``schedule``, checkpointing after every probe; resumes from the
        checkpoint ``tag`` (and does nothing when it says the run finished)."""
        store = self.store
        training = store.table("training", TRAINING_COLUMNS, TRAINING_KEY)
        run = tag[len("run_"):]
        model0 = {k: v.detach().clone() for k, v in model.state_dict().items()}
        state: TrainingState | None = None
        cb = ProbeCallback(probe, schedule, sink, vector_steps)
        ck = store.load_checkpoint(tag)
        if ck is not None:
            if ck.get("finished"):
                return
            model0 = ck["model0"]
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            stream = BatchStream(x.shape[0], min(batch_size, x.shape[0]), seed)
            stream.load_state_dict(ck["stream"])
            set_rng_state(ck["rng"])
            state = TrainingState(int(ck["step"]), stream)
            cb.done = {s for s in schedule if s <= state.step}
            self.log(f"alignment: resuming run {run} at step {state.step}")
        # the kernel-distance reference is the initial model
        init = _clone_with(model, model0)
        probe.set_reference(init)
        pending: list[dict[str, Any]] = []
        resumed_at = state.step if state is not None else -1

        def on_step(t: int, loss: float) -> None:
            pending.append({"run": run, "step": t, "metric": "train_loss", "value": loss})

        def after(t: int, st: TrainingState) -> None:
            if t in cb.steps and t > resumed_at:
                pending.extend(extra(t, model))
                training.append(pending)
                pending.clear()
                store.save_checkpoint(tag, t, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                               "stream": st.stream.state_dict(), "rng": rng_state(),
                                               "model0": model0, "finished": t == steps}, keep=1)

        train_with_probes(model, opt, x, y, steps=steps, batch_size=batch_size, seed=seed, callbacks=[cb],
                          loss_fn=loss_fn, state=state, on_step=on_step, after_callbacks=after,
                          progress=self.config.progress_flag, desc=desc or f"alignment: {run}")
        training.append(pending)

    # ---- item 1 ---------------------------------------------------------------------------------
    def _run_disk(self) -> None:
        cfg, store = self.config, self.store
        dev = self.device
        x, y = disk_task(cfg.disk_n, cfg.seed)
        grid = grid_2d(cfg.disk_grid)
        y_grid = (grid.norm(dim=1) < DISK_RADIUS).long()
        torch.manual_seed(cfg.seed + 101)
        model = make_mlp(2, (cfg.disk_width,) * cfg.disk_depth, 1, "relu").to(dev)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.disk_lr)
        schedule = log_schedule(cfg.schedule, cfg.disk_steps, cfg.schedule_base)
        snaps = _snapshot_steps(schedule, cfg.disk_steps, cfg.disk_snapshots)
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
            rows = [{"run": "disk", **r} for r in res.rows]
            rows += [{"run": "disk", **r} for r in train_probe.evaluate(model, s).rows]
            probes.append(rows)
            lam = res.spectra["grid"]
            spectra.append({"run": "disk", "step": s, "probe": "grid", "index": i + 1, "value": float(v)}
                           for i, v in enumerate(lam[:max(50, 2 * n_eig)].tolist()))
            if s in snaps:
                U = res.eigvecs["grid"]
                # sign convention: the entry of largest magnitude is positive
                sign = torch.sign(U.gather(0, U.abs().argmax(0, keepdim=True))).flatten()
                U = U * torch.where(sign == 0, torch.ones_like(sign), sign)
                eig.append({"run": "disk", "step": s, "component": j + 1, "point": i, "value": float(U[i, j])}
                           for j in range(U.shape[1]) for i in range(U.shape[0]))

        def extra(t: int, m: nn.Module) -> list[dict[str, Any]]:
            with torch.no_grad():
                z = m(x.to(dev)).flatten()
                zg = m(grid.to(dev)).flatten()
            return [{"run": "disk", "step": t, "metric": "train_accuracy",
                     "value": float(((z > 0).long().cpu() == y).double().mean())},
                    {"run": "disk", "step": t, "metric": "grid_accuracy",
                     "value": float(((zg > 0).long().cpu() == y_grid).double().mean())}]

        self._train(_tag("disk"), model, opt, x.to(dev), y.to(dev).float(), steps=cfg.disk_steps,
                    batch_size=cfg.disk_n, seed=cfg.seed + 102, probe=probe, schedule=schedule, sink=sink,
                    extra=extra, loss_fn=bce_loss, desc="alignment: item 1 (disk, full-batch GD)", vector_steps=snaps)

    # ---- items 2-5 ------------------------------------------------------------------------------
    def _run_training(self, spec: RunSpec, split: Split) -> None:
        cfg, store = self.config, self.store
        dev = self.device
        n_classes = split.n_classes
        x, y = split.x_train, split.y_train
        seed = spec.seed
        is_hard = torch.zeros(len(y), dtype=torch.bool)
        if spec.kind == "noise" and spec.noise > 0:
            y, is_hard = randomize_labels(y, spec.noise, n_classes, seed + 11)
        elif spec.kind == "hier" and spec.difficult == "random":
            y, is_hard = randomize_labels(y, spec.fraction, n_classes, seed + 12)
        elif spec.kind == "hier":
            x, y, is_hard = mix_other_dataset(x, y, spec.fraction, seed + 13, n_classes)
        x, y = x.to(dev), y.to(dev)
        xt, yt = split.x_test.to(dev), split.y_test.to(dev)
        g = torch.Generator().manual_seed(seed + 21)
        if spec.kind == "noise":
            tr = torch.randperm(x.shape[0], generator=g)[:cfg.n_probe]
            te = torch.randperm(xt.shape[0], generator=g)[:cfg.n_probe]
            sets = [ProbeSet("train", x[tr.to(dev)], y[tr.to(dev)]), ProbeSet("test", xt[te.to(dev)], yt[te.to(dev)])]
            probe = Probe(sets, ks=cfg.ks, centering=cfg.centering_mode, n_pca=cfg.n_pca, keep_spectrum=True)
        else:
            easy = _subset(~is_hard, cfg.hier_subset, seed + 22).to(dev)
            hard = _subset(is_hard, cfg.hier_subset, seed + 23).to(dev)
            sets = [ProbeSet("easy", x[easy], y[easy]), ProbeSet("difficult", x[hard], y[hard])]
            probe = Probe(sets, metrics=("cka", "loss"), centering=cfg.centering_mode)
        torch.manual_seed(seed + 31)
        hidden = (spec.width,) * (spec.depth - 1)
        if cfg.model in VGG_CONFIGS:
            model = make_vgg(cfg.model, split.input_shape[0], n_classes, spec.width).to(dev)
        else:
            model = build_model(cfg.model, split.input_shape, n_classes, width=spec.width, hidden=hidden,
                                activation="relu").to(dev)
        opt = torch.optim.SGD(model.parameters(), lr=spec.lr, momentum=cfg.momentum)
        schedule = log_schedule(cfg.schedule, spec.steps, cfg.schedule_base)
        pca_at = _pca_steps(schedule, cfg.pca_snapshots) if spec.item == 2 else set()
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

        self._train(_tag(run), model, opt, x, y, steps=spec.steps, batch_size=cfg.batch_size, seed=seed + 41,
                    probe=probe, schedule=schedule, sink=sink, extra=extra, desc=f"alignment: item {spec.item} {run}",
                    vector_steps=pca_at)

    # ---- report ---------------------------------------------------------------------------------
    def report(self) -> ReportContent:
        return build_report(self.config, self.store)


def _clone_with(model: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    import copy

    m = copy.deepcopy(model)
    m.load_state_dict(state)
    return m


# =============================================================================================
# the report (from the stored tables only)
# =============================================================================================
class Results:
    """The stored tables of a run, indexed for the report."""

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
        return self._arrays(self.p.get((run, probe, metric, layer), []))

    def train_series(self, run: str, metric: str) -> tuple[np.ndarray, np.ndarray]:
        return self._arrays(self.t.get((run, metric), []))

    def layers(self, run: str, probe: str) -> list[str]:
        names = {k[3] for k in self.p if k[0] == run and k[1] == probe and k[2] == "cka" and k[3]}
        return sorted(names, key=lambda s: [int(t) if t.isdigit() else t for t in s.split(".")])

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


def _noise_runs(cfg: AlignmentConfig, R: Results) -> list[tuple[float, str]]:
    return [(p, f"noise_{round(100 * p)}") for p in cfg.noise if R.has(f"noise_{round(100 * p)}")]


def _fmt(v: float) -> str:
    return f"{v:.3g}" if math.isfinite(v) else "nan"


def alignment_claims(cfg: AlignmentConfig, R: Results) -> list[Claim]:
    claims: list[Claim] = []
    # ---- item 1
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
    # ---- items 2-3
    noise_runs = _noise_runs(cfg, R)
    for p, run in noise_runs:
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
                                f"(MLP {cfg.depth}x{cfg.width} on {cfg.dataset}, N·C = {cfg.n_probe * 10})",
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
    if noise_runs:
        p, run = noise_runs[0]
        layers = R.layers(run, "train")
        if len(layers) >= 3:
            mx = [R.series(run, "train", "cka", la)[1].max() for la in layers]
            mid = max(mx[1:-1])
            claims.append(Claim("Fig. 3: layer-wise CKA", "intermediate layers align most; the first and last "
                                "layers less", f"max CKA per layer (input → output, {round(100 * p)}% noise): "
                                + ", ".join(f"{v:.3f}" for v in mx), bool(mid > mx[0] and mid > mx[-1])))
    # ---- item 4
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
    # ---- item 5
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


def _xlog(ax: Any, steps: np.ndarray) -> None:
    ax.set_xscale("symlog", linthresh=max(1.0, float(steps[1]) if steps.size > 1 else 1.0))
    ax.set_xlim(left=0, right=max(1.0, float(steps.max())) if steps.size else None)
    ax.set_xlabel("iteration")


def alignment_figures(cfg: AlignmentConfig, R: Results) -> list[FigureSpec]:
    import matplotlib

    figs: list[FigureSpec] = []
    if R.eig:
        steps = sorted(R.eig)
        comps = sorted({c for s in steps for c in R.eig[s]})

        def draw_eig(fig: Any) -> None:
            axes = fig.subplots(len(steps), len(comps), squeeze=False)
            res = cfg.disk_grid
            for i, s in enumerate(steps):
                for j, c in enumerate(comps):
                    pts = sorted(R.eig[s][c])
                    img = np.array([v for _, v in pts]).reshape(res, res)
                    m = np.abs(img).max() or 1.0
                    ax = axes[i, j]
                    ax.imshow(img, cmap="RdBu_r", vmin=-m, vmax=m, origin="lower", extent=(-1, 1, -1, 1))
                    ax.add_patch(matplotlib.patches.Circle((0, 0), DISK_RADIUS, fill=False, lw=0.6, ls="--"))
                    ax.set_xticks([])
                    ax.set_yticks([])
                    if i == 0:
                        ax.set_title(f"u_{c}", fontsize=9)
                    if j == 0:
                        ax.set_ylabel(f"it {s}", fontsize=9)

        figs.append(FigureSpec("fig1_eigenfunctions", "Fig. 1: top NTK eigenfunctions on the disk task",
                               f"Top {len(comps)} eigenvectors of the centered NTK on a {cfg.disk_grid}×"
                               f"{cfg.disk_grid} grid (columns) at iterations {', '.join(map(str, steps))} (rows); "
                               "dashed circle: the class boundary.", draw_eig,
                               (1.6 * len(comps) + 0.8, 1.6 * len(steps) + 0.6)))

        def draw_disk(fig: Any) -> None:
            axes = fig.subplots(1, 3)
            for ax, metric, lab in ((axes[0], "ratio20", "λ20/λ1"), (axes[1], "erank", "effective rank"),
                                    (axes[2], "cka", "CKA with labels")):
                s, v = R.series("disk", "grid", metric)
                if s.size:
                    ax.plot(s, v, "o-", ms=3, label="grid")
                    _xlog(ax, s)
                if metric == "cka":
                    s2, v2 = R.series("disk", "train", "cka")
                    if s2.size:
                        ax.plot(s2, v2, "s--", ms=3, label="training points")
                    ax.legend(fontsize=7)
                if metric == "ratio20":
                    ax.set_yscale("log")
                ax.set_ylabel(lab)

        figs.append(FigureSpec("fig1_disk_metrics", "Fig. 1: anisotropy and alignment on the disk task",
                               "λ20/λ1, effective rank and CKA with the ±1 labels of the grid kernel during "
                               "full-batch gradient descent.", draw_disk, (12, 3.4)))
    noise_runs = _noise_runs(cfg, R)
    if noise_runs:
        def draw_spec(fig: Any) -> None:
            axes = fig.subplots(4, len(noise_runs), squeeze=False)
            cmap = matplotlib.colormaps["viridis"]
            for j, (p, run) in enumerate(noise_runs):
                ax = axes[0, j]
                for metric, col in (("train_accuracy", "tab:blue"), ("test_accuracy", "tab:orange")):
                    s, v = R.train_series(run, metric)
                    if s.size:
                        ax.plot(s, v, "-" if metric.startswith("train") else "--", color=col, label=metric)
                ax.set_title(f"{round(100 * p)}% random labels", fontsize=9)
                ax.set_ylabel("accuracy")
                ax.legend(fontsize=7)
                ax = axes[1, j]
                for metric, col in (("max", "tab:red"), ("mean", "tab:green"), ("median", "tab:purple")):
                    for pr, ls in (("train", "-"), ("test", "--")):
                        s, v = R.series(run, pr, metric)
                        if s.size:
                            ax.plot(s, np.maximum(v, 1e-300), ls, color=col, label=f"{metric} ({pr})")
                ax.set_yscale("log")
                ax.set_ylabel("eigenvalue")
                ax.legend(fontsize=6, ncol=2)
                ax = axes[2, j]
                for pr, ls in (("train", "-"), ("test", "--")):
                    s, v = R.series(run, pr, "erank")
                    ax.plot(s, v, ls, color="k", label=pr)
                ax.set_ylabel("effective rank")
                ax.legend(fontsize=7)
                ax = axes[3, j]
                steps = sorted({st for (r, pr, st) in R.spectra if r == run and pr == "train"})
                if steps:
                    lam = np.array([[v for _, v in sorted(R.spectra[(run, "train", st)])] for st in steps])
                    cum = np.cumsum(lam, 1) / np.maximum(lam.sum(1, keepdims=True), 1e-300)
                    r = cum.shape[1]
                    ks = np.unique(np.geomspace(1, r, 40).astype(int))
                    for k in ks:
                        ax.plot(steps, cum[:, k - 1], color=cmap(np.log(k) / np.log(r)), lw=0.6)
                    for k in cfg.ks:
                        if k <= r:
                            ax.plot(steps, cum[:, k - 1], color="red", lw=1.3)
                            ax.annotate(f"T{k}", (steps[-1], cum[-1, k - 1]), fontsize=7, color="red")
                ax.set_ylabel("trace ratio T_k (train)")
                for i in range(4):
                    s0, _ = R.series(run, "train", "erank")
                    if s0.size:
                        _xlog(axes[i, j], s0)

        figs.append(FigureSpec("fig2_spectrum", "Fig. 2: spectrum of the NTK during training",
                               f"Centered NTK ({cfg.centering}) on {cfg.n_probe} train (solid) and {cfg.n_probe} test "
                               "(dashed) examples: accuracy; λ_max, mean and median eigenvalue; effective rank; trace "
                               "ratios T_k for k = 1..N·C (viridis by log k; red: "
                               + ", ".join(f"T{k}" for k in cfg.ks) + ").", draw_spec,
                               (4.2 * len(noise_runs) + 1, 12)))

        def draw_cka(fig: Any) -> None:
            axes = fig.subplots(2, len(noise_runs), squeeze=False)
            cmap = matplotlib.colormaps["viridis"]
            for j, (p, run) in enumerate(noise_runs):
                ax = axes[0, j]
                for pr, ls in (("train", "-"), ("test", "--")):
                    s, v = R.series(run, pr, "cka")
                    ax.plot(s, v, ls, color="k", label=pr)
                ax.set_title(f"{round(100 * p)}% random labels", fontsize=9)
                ax.set_ylabel("CKA(K, YYᵀ)")
                ax.legend(fontsize=7)
                layers = R.layers(run, "train")
                ax = axes[1, j]
                for i, la in enumerate(layers):
                    col = cmap(i / max(1, len(layers) - 1))
                    for pr, ls in (("train", "-"), ("test", "--")):
                        s, v = R.series(run, pr, "cka", la)
                        ax.plot(s, v, ls, color=col, label=f"layer {la}" if pr == "train" else None)
                ax.set_ylabel("layer-wise CKA")
                ax.legend(fontsize=6)
                for i in range(2):
                    s0, _ = R.series(run, "train", "cka")
                    if s0.size:
                        _xlog(axes[i, j], s0)

        figs.append(FigureSpec("fig3_cka", "Fig. 3: alignment with the labels",
                               "CKA of the NTK with the one-hot label kernel, train probe (solid, training labels) "
                               "and test probe (dashed); below, per layer (dark: input, light: output).", draw_cka,
                               (4.2 * len(noise_runs) + 1, 6.5)))
        p, run = noise_runs[0]
        pca_steps = sorted({st for (r, pr, st) in R.pca if r == run and pr == "train"})
        if pca_steps:
            def draw_pca(fig: Any) -> None:
                axes = fig.subplots(1, len(pca_steps), squeeze=False)[0]
                labels = R.labels.get((run, "train"), {})
                sc = None
                for ax, st in zip(axes, pca_steps):
                    comps = R.pca[(run, "train", st)]
                    if 1 not in comps or 2 not in comps:
                        continue
                    c1 = np.array([v for _, v in sorted(comps[1])])
                    c2 = np.array([v for _, v in sorted(comps[2])])
                    n_cls = 10
                    rows = np.arange(c1.size)
                    n, c = rows // n_cls, rows % n_cls
                    lab = np.array([labels.get(int(i), -1) for i in n])
                    on = c == lab  # the label row (n, y_n) of each example
                    ax.scatter(c1[~on], c2[~on], c="0.8", s=2, alpha=0.5)
                    sc = ax.scatter(c1[on], c2[on], c=lab[on], cmap="tab10", vmin=-0.5, vmax=9.5, s=9)
                    ax.set_title(f"iteration {st}", fontsize=9)
                    ax.set_xticks([])
                    ax.set_yticks([])
                if sc is not None:
                    fig.colorbar(sc, ax=axes[-1], label="training label y_n")

            figs.append(FigureSpec("kernel_pca", "Kernel PCA of the train-probe NTK",
                                   "Coordinates √λ_j u_j of the N·C rows (n, c) on the first two principal "
                                   f"components of the centered NTK ({round(100 * p)}% random labels): the label "
                                   "rows (n, y_n) coloured by their training label y_n, the other rows in grey.",
                                   draw_pca, (3.2 * len(pca_steps) + 1, 3.3)))
    hier = [(r, w) for r, w in (("hier_random", "random labels"), ("hier_other", "other dataset")) if R.has(r)]
    if hier:
        def draw_hier(fig: Any) -> None:
            axes = fig.subplots(3, len(hier), squeeze=False)
            for j, (run, what) in enumerate(hier):
                se, ce = R.series(run, "easy", "cka")
                sd, cd = R.series(run, "difficult", "cka")
                ax = axes[0, j]
                ax.plot(se, ce, "-", color="tab:blue", label="easy")
                ax.plot(sd, cd, "-", color="tab:red", label="difficult")
                ax.set_title(f"difficult = {what}", fontsize=9)
                ax.set_ylabel("CKA with training labels")
                ax.legend(fontsize=7)
                axes[1, j].plot(se, ce / np.maximum(np.abs(cd), 1e-12), color="k")
                axes[1, j].set_ylabel("CKA_easy / CKA_diff")
                for metric, col in (("easy_accuracy", "tab:blue"), ("difficult_accuracy", "tab:red"),
                                    ("test_accuracy", "tab:gray")):
                    s, v = R.train_series(run, metric)
                    axes[2, j].plot(s, v, color=col, label=metric.replace("_", " "))
                axes[2, j].set_ylabel("accuracy")
                axes[2, j].legend(fontsize=7)
                for i in range(3):
                    if se.size:
                        _xlog(axes[i, j], se)

        figs.append(FigureSpec("fig4_hierarchical", "Fig. 4: easy vs difficult examples",
                               f"CKA of the NTK with the training labels on {cfg.hier_subset} easy and "
                               f"{cfg.hier_subset} difficult training examples, their ratio, and training accuracy "
                               "of each group.", draw_hier, (4.5 * len(hier) + 1, 8)))
    depth_runs = [r for r in R.runs if r.startswith("depth_")]
    lr_runs = [r for r in R.runs if r.startswith("lr_")]
    if depth_runs or lr_runs:
        def draw_abl(fig: Any) -> None:
            axes = fig.subplots(1, 2)
            for r in depth_runs:
                se, ce = R.series(r, "easy", "cka")
                _, cd = R.series(r, "difficult", "cka")
                if ce.size:
                    axes[0].plot(se, ce / np.maximum(np.abs(cd), 1e-12), label=r, lw=0.9)
            axes[0].set_ylabel("CKA_easy / CKA_diff")
            axes[0].legend(fontsize=6)
            for r in lr_runs:
                s, er = R.series(r, "train", "erank")
                if er.size:
                    axes[1].plot(s, er / er[0], label=r, lw=0.9)
            axes[1].set_ylabel("erank / initial (train probe)")
            axes[1].legend(fontsize=6)
            for ax in axes:
                ax.set_xscale("symlog", linthresh=5)
                ax.set_xlabel("iteration")

        figs.append(FigureSpec("fig13_14_ablations", "Figs. 13-14: depth and learning-rate ablations",
                               "Left: easy/difficult CKA ratio for each depth and seed (item 4(a) setting). "
                               "Right: effective rank relative to its initial value for each learning rate.",
                               draw_abl, (11, 4)))
    train_runs = [r for r in dict.fromkeys(k[0] for k in R.t) if (r, "train_loss") in R.t]
    if train_runs:
        def draw_loss(fig: Any) -> None:
            ax = fig.subplots(1, 1)
            for r in train_runs:
                s, v = R.train_series(r, "train_loss")
                ax.plot(s + 1, v, lw=0.7, label=r)
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("iteration + 1")
            ax.set_ylabel("minibatch loss")
            ax.legend(fontsize=6, ncol=2)

        figs.append(FigureSpec("training", "Training curves", "Minibatch loss of every run.", draw_loss, (9, 3.6)))
    return figs


def alignment_tables(cfg: AlignmentConfig, R: Results) -> list[TableSpec]:
    rows = []
    for run in R.runs:
        row: dict[str, Any] = {"run": run}
        for pr in ("train", "test", "grid", "easy", "difficult"):
            s, er = R.series(run, pr, "erank")
            if er.size:
                row[f"erank {pr} (init/min/final)"] = f"{er[0]:.1f} / {er.min():.1f} / {er[-1]:.1f}"
            s, c = R.series(run, pr, "cka")
            if c.size:
                row[f"CKA {pr} (init/max/final)"] = f"{c[0]:.3f} / {c.max():.3f} / {c[-1]:.3f}"
        s, a = R.train_series(run, "test_accuracy")
        if a.size:
            row["test acc (max/final)"] = f"{a.max():.3f} / {a[-1]:.3f}"
        rows.append(row)
    cols = list(dict.fromkeys(k for r in rows for k in r))
    return [TableSpec("Per-run summary", cols, rows, link="tables/probes.csv",
                      caption="From tables/probes.csv and tables/training.csv.")]


def build_report(cfg: AlignmentConfig, store: Any) -> ReportContent:
    R = Results(store)
    claims = alignment_claims(cfg, R)
    figures = alignment_figures(cfg, R)
    tables = alignment_tables(cfg, R) if R.runs else []
    notes: list[str] = []
    if 6 in cfg.items:
        claims += supernat.supernat_claims(store, cfg)
        figures += supernat.supernat_figures(store, cfg)
        tables += supernat.supernat_tables(store, cfg)
    if 7 in cfg.items:
        claims += alignment_complexity.complexity_claims(store, cfg)
        figures += alignment_complexity.complexity_figures(store, cfg)
        tables += alignment_complexity.complexity_tables(store, cfg)
    summary = [
        f"Items run: {', '.join(map(str, cfg.items))}. Items 2-5: {cfg.dataset}, "
        + (f"ReLU MLP with {cfg.depth} Linear layers of width {cfg.width}" if cfg.model == "mlp" else cfg.model)
        + f", SGD lr {cfg.lr}, momentum {cfg.momentum}, batch {cfg.batch_size}, {cfg.train_steps} steps; NTK probes "
        f"of {cfg.n_probe} train and {cfg.n_probe} test examples (all 10 outputs, so (N·C)² = "
        f"{(cfg.n_probe * 10) ** 2:,} entries), centering {cfg.centering}, at {cfg.schedule} log-spaced steps "
        f"(base {cfg.schedule_base}).",
        f"Item 1: disk task, {cfg.disk_n} points, ReLU MLP 2-{cfg.disk_width}×{cfg.disk_depth}-1, full-batch GD lr "
        f"{cfg.disk_lr}, {cfg.disk_steps} steps, NTK on a {cfg.disk_grid}×{cfg.disk_grid} grid.",
        "Absolute CKA values at this scale are small (≈ 0.1); the paper's claims are about trends.",
    ]
    return ReportContent(Alignment.title, summary=summary, claims=claims, figures=figures, tables=tables,
                         notes=notes)
