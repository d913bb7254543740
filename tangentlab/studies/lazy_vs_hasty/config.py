"""Configuration of ``lazy-vs-hasty``: :class:`LazyVsHastyConfig`, its presets, and the table schemas.

Tables (tidy, one row per value):

* ``curves``: probes of the α-scaled runs (``part, seed, alpha, probe, step, group, metric, value``);
* ``toy_maps``: ``Δloss = loss_{α=1} − loss_{α=100}`` on the yin-yang grid at each training-loss milestone;
* ``milestones``: the GD step at which each toy run reached each milestone (``-1``: never);
* ``cscores``: the C-score, tie-break score and decile of every training example;
* ``quadratic``: per-group squared-error curves of the quadratic model and its 2-layer counterpart;
* ``quadratic_checks``: closed form vs gradient flow, learning orders, hard-group gaps;
* ``lr_curves``: part lr (App. C.5): α = 1 at several learning rates and the α-scaled runs, probed at a
  fixed step period until the clean training loss reaches the last milestone
  (``seed, alpha, lr_factor, probe, step, group, metric, value``; group ``check``: the first-step identities);
* ``units``: finished work units (a killed run resumes at the first unfinished one).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import torch

from ..framework.config import Preset, StudyConfig, option
from .data import read_celeba, read_waterbirds

TITLE = "Lazy vs hasty: linearized vs non-linear training (thesis ch. 5)"
PARTS = ("toy", "cscores", "noise", "lr", "spurious", "quadratic")
CURVE_COLUMNS = ["part", "seed", "alpha", "probe", "step", "group", "metric", "value"]
CURVE_KEY = ["part", "seed", "alpha", "probe", "group", "metric"]
MAP_COLUMNS = ["seed", "milestone", "ix", "iy", "x1", "x2", "delta_loss"]
MAP_KEY = ["seed", "milestone", "ix", "iy"]
MILESTONE_COLUMNS = ["seed", "alpha", "milestone", "step"]
MILESTONE_KEY = ["seed", "alpha", "milestone"]
CSCORE_COLUMNS = ["index", "label", "score", "soft", "decile"]
QUAD_COLUMNS = ["example", "seed", "source", "regime", "t", "group", "value"]
QUAD_KEY = ["example", "seed", "source", "regime", "t", "group"]
CHECK_COLUMNS = ["example", "seed", "source", "metric", "threshold", "value"]
CHECK_KEY = ["example", "seed", "source", "metric", "threshold"]
LR_COLUMNS = ["seed", "alpha", "lr_factor", "probe", "step", "group", "metric", "value"]
LR_KEY = ["seed", "alpha", "lr_factor", "probe", "group", "metric"]
UNIT_COLUMNS = ["unit", "seconds"]
#: Relative tolerance of closed form vs numerical gradient flow.
ODE_TOL = 1e-8
DATA_FILES = {
    "cifar10": "the CIFAR-10 python batches (data_batch_1..5) and cifar10-cscores-orig-order.npz",
    "waterbirds": "waterbirds metadata.csv and its image folders",
    "celeba": "CelebA list_attr_celeba.txt, list_eval_partition.txt and img_align_celeba/",
}


@dataclass
class LazyVsHastyConfig(StudyConfig):
    """Configuration of ``lazy-vs-hasty`` (see :mod:`tangentlab.studies.lazy_vs_hasty`)."""

    PRESETS: ClassVar[dict[str, Preset]] = {
        "tiny": Preset("seconds-long smoke run (tests)", {
            "toy_seeds": 2, "toy_n": 30, "toy_hidden": (16, 16), "toy_grid": 8, "toy_max_steps": 150,
            "toy_milestones": (0.66, 0.63), "cscore_subsets": 2, "cscore_ratios": (0.5,), "hidden": (24,),
            "steps_alpha1": 40, "steps_alpha100": 80, "steps_alpha05": 30, "batch_size": 64,
            "n_linearity": 10, "linearity_every": 3, "quad_seeds": 2, "quad_points": 40, "quad_d": 24,
            "mlp_seeds": 1, "mlp_steps": (40, 200), "mlp_d": 24, "lr_seeds": 2, "lr_factors": (1.0, 0.25),
            "lr_alphas": (2.0, 100.0), "lr_milestones": (1.5, 1.0), "lr_max_steps": 400}),
        "paper": Preset("thesis scale: BN-free ResNet-18 on CIFAR-10 (C-scores from data_dir), 100 toy seeds; GPU", {
            "dataset": "cifar10", "model": "resnet18", "device": "cuda", "dtype": "float32", "toy_seeds": 100,
            "toy_grid": 60, "toy_max_steps": 25000, "toy_milestones": (0.5, 0.4, 0.3), "lr": 0.01,
            "batch_size": 125, "steps_alpha1": 64000, "steps_alpha100": 320000, "steps_alpha05": 64000,
            "n_linearity": 100, "linearity_every": 5, "quad_seeds": 20, "mlp_seeds": 20, "eval_per_group": 1000,
            "lr_factors": (1.0, 0.3, 0.01, 1e-4), "lr_alphas": (100.0,),
            "parts": ("toy", "cscores", "noise", "lr", "quadratic")}, needs_gpu=True),
        "waterbirds": Preset("Fig. 5.3 bottom: Waterbirds from data_dir, 64x64, BN-free ResNet-18 from scratch "
                             "(the thesis: ImageNet-pretrained, 224x224); GPU", {
            "spurious_dataset": "waterbirds", "model": "resnet18", "image_size": 64, "device": "cuda",
            "dtype": "float32", "parts": ("spurious",), "lr": 0.001, "batch_size": 100}, needs_gpu=True),
        "celeba": Preset("Fig. 5.3 top: CelebA blond/gender from data_dir (first 15,000 training images, as the "
                         "authors' code), 64x64, BN-free ResNet-18; GPU", {
            "spurious_dataset": "celeba", "model": "resnet18", "image_size": 64, "max_train": 15000,
            "device": "cuda", "dtype": "float32", "parts": ("spurious",), "lr": 0.01, "batch_size": 100},
            needs_gpu=True),
    }

    threads: int = option(1, "torch intra-op threads (small models: 1 avoids contention; 0: torch's default)",
                          min=0)
    parts: tuple[str, ...] = option(PARTS, "parts of the study to run", choices=PARTS)
    dataset: str = option("digits", "data of parts cscores/noise", choices=("digits", "cifar10"))
    spurious_dataset: str = option("digits", "data of part spurious", choices=("digits", "waterbirds", "celeba"))
    data_dir: str = option("", "folder of the file-based datasets (cifar10, waterbirds, celeba)")
    model: str = option("mlp", "network of parts cscores/noise/spurious", choices=("mlp", "resnet18"))
    hidden: tuple[int, ...] = option((128, 128), "hidden widths of the ReLU MLP", min=1)
    resnet_width: int = option(64, "base width of the BN-free ResNet-18 (cifar10)", min=1)
    dtype: str = option("float64", "dtype of parts 2-4 (the toy and part 5 always use float64)",
                        choices=("float64", "float32"))
    subtract_initial_output: bool = option(False, "f^α = α(f − f₀) (authors' code) instead of f₀ + α(f − f₀)")
    # toy
    toy_seeds: int = option(8, "yin-yang seeds (thesis: 100)", min=1)
    toy_n: int = option(100, "yin-yang training points", min=4)
    toy_hidden: tuple[int, ...] = option((60, 60, 60), "hidden widths of the toy ReLU MLP", min=1)
    toy_lr: float = option(0.1, "full-batch GD learning rate of the toy (divided by α²)", min=1e-12)
    toy_max_steps: int = option(3000, "maximum GD steps per toy run", min=1)
    toy_milestones: tuple[float, ...] = option((0.5, 0.4), "training-loss milestones of the Δloss maps",
                                               min=1e-6, max=0.69)
    toy_grid: int = option(40, "resolution of the Δloss grid", min=2)
    # digits parts
    lr: float = option(0.05, "SGD learning rate of parts 2-4 (divided by α²)", min=1e-12)
    momentum: float = option(0.9, "SGD momentum of parts 2-4", min=0.0, max=0.999)
    batch_size: int = option(100, "minibatch size of parts 2-4", min=1)
    steps_alpha1: int = option(1000, "SGD steps with α = 1 (noise part: twice as many)", min=1)
    steps_alpha100: int = option(3000, "SGD steps with α = 100 (noise part: 4/3 as many)", min=1)
    steps_alpha05: int = option(600, "SGD steps with α = 0.5 (spurious part)", min=1)
    cscore_ratios: tuple[float, ...] = option((0.25, 0.5, 0.75), "subset sizes of the C-score estimate "
                                              "(fractions of the training set)", min=0.01, max=0.99)
    cscore_subsets: int = option(8, "random subsets per size", min=1)
    cscore_c: float = option(0.05, "inverse ℓ2 strength of the C-score logistic regressions", min=1e-9)
    n_bins: int = option(10, "C-score bins (deciles)", min=2)
    noise_fraction: float = option(0.15, "fraction of training labels moved to another class", min=0.01, max=0.9)
    spurious_agree: float = option(0.9, "fraction of training examples whose spurious patch agrees with the label",
                                   min=0.51, max=0.99)
    spurious_strength: float = option(2.0, "scale of the standardized spurious patch", min=0.0)
    image_size: int = option(32, "side of the resized square images (waterbirds, celeba)", min=4)
    max_train: int = option(0, "first training images kept, in file order (waterbirds, celeba; 0: all)", min=0)
    max_per_group: int = option(0, "training examples kept per (label, spurious) group, first in file order "
                                "(waterbirds, celeba; 0: all)", min=0)
    balanced_per_group: int = option(180, "examples per (label, spurious) group of the balanced train subset and "
                                     "test set (waterbirds, celeba)", min=1)
    probe_ratio: float = option(0.96, "probes fire when the minibatch loss crosses L₀·ratio^k", min=0.5, max=0.999)
    eval_per_group: int = option(0, "examples evaluated per group at each probe (0: all; paper: 1000)", min=0)
    n_linearity: int = option(100, "held-out examples of the linearity metrics", min=2)
    linearity_every: int = option(5, "linearity metrics at every k-th probe", min=1)
    # learning rate vs α (App. C.5, Fig. C.1)
    lr_seeds: int = option(5, "seeds of part lr (initialization, noisy labels and minibatch order)", min=1)
    lr_factors: tuple[float, ...] = option((1.0, 0.1, 0.01), "part lr: α = 1 trained with lr × each factor (thesis: "
                                           "0.01, 0.003, 1e-4, 1e-6, i.e. factors 1, 0.3, 0.01, 1e-4)",
                                           min=1e-12, max=1.0)
    lr_alphas: tuple[float, ...] = option((10.0, 100.0), "part lr: α-scaled runs at lr/α²; one α must have lr/α² "
                                          "= lr × min(lr_factors) (the same rescaled lr), the largest is the α "
                                          "comparator of Fig. 5.2", min=1.0)
    lr_milestones: tuple[float, ...] = option((1.0, 0.6, 0.3), "part lr: clean training losses at which the runs "
                                              "are compared; a run stops at the smallest", min=1e-6)
    lr_max_steps: int = option(1500, "part lr: step budget at lr (× √α / factor for the other runs)", min=1)
    lr_eval_every: int = option(2, "part lr: evaluation period at lr (÷ factor for the smaller lrs)", min=1)
    # quadratic model
    quad_seeds: int = option(5, "seeds of examples 2 and 3", min=1)
    quad_points: int = option(250, "time points of the Fig. 5.4 curves", min=10)
    quad_sigma: float = option(1e-3, "init scale σ (w⁰ = √σ)", min=1e-12, max=1.0)
    quad_eta: float = option(2.0, "η of examples 2 and 3 (η² ≪ n keeps the prediction basis-independent)",
                             min=1e-6)
    quad_lambda: float = option(0.5, "core-feature scale λ of example 3", min=1e-6, max=1.0)
    quad_d: int = option(200, "input dimension of examples 2 and 3", min=23)
    mlp_seeds: int = option(3, "seeds of the 2-layer network counterpart", min=1)
    mlp_alphas: tuple[float, ...] = option((0.1, 10.0), "α of the 2-layer counterpart: (non-linear, linear)",
                                           min=1e-6)
    mlp_steps: tuple[int, ...] = option((150, 4000), "GD steps for each mlp_alphas", min=1)
    mlp_lr: float = option(1e-3, "learning rate of the 2-layer counterpart (divided by α²)", min=1e-12)
    mlp_d: int = option(40, "input dimension of examples 2 and 3 for the 2-layer counterpart", min=23)

    def validate(self) -> None:
        if len(self.mlp_alphas) != 2 or len(self.mlp_steps) != 2:
            raise self.error("mlp_alphas", "mlp_alphas and mlp_steps need exactly two entries (non-linear, linear)",
                             "two numbers each, e.g. (0.1, 10)")
        if not self.mlp_alphas[0] < self.mlp_alphas[1]:
            raise self.error("mlp_alphas", f"{self.mlp_alphas}: the non-linear α must be the smaller one",
                             "(small, large)")
        if "lr" in self.parts:
            matched = 1.0 / math.sqrt(min(self.lr_factors))
            if 1.0 not in self.lr_factors or not any(math.isclose(a, matched, rel_tol=1e-9) for a in self.lr_alphas):
                raise self.error("lr_alphas", f"part lr needs factor 1 in lr_factors {self.lr_factors} and the α "
                                 f"{matched:g} = 1/√min(lr_factors) in lr_alphas {self.lr_alphas}",
                                 f"e.g. lr_factors=1,0.1,0.01 and lr_alphas={matched:g},100")
        ds_parts = {"cscores", "noise", "lr"} & set(self.parts)
        if self.dataset != "digits" and ds_parts:
            self._check_files(self.dataset)
        if self.spurious_dataset != "digits" and "spurious" in self.parts:
            self._check_files(self.spurious_dataset)
        if self.model == "resnet18" and "spurious" in self.parts and self.spurious_dataset == "digits":
            raise self.error("model", "part spurious runs the MLP on digits",
                             "mlp, spurious_dataset waterbirds/celeba, or parts without spurious")
        if self.model == "mlp" and self.dataset == "cifar10" and ds_parts:
            raise self.error("model", "cifar10 uses the BN-free ResNet-18", "resnet18")
        if self.model == "resnet18" and self.dataset == "digits" and ds_parts:
            raise self.error("model", "resnet18 is for the cifar10 preset; the 8x8 digits use the MLP", "mlp")
        if self.dataset == "digits" and self.batch_size > 1347:
            raise self.error("batch_size", f"{self.batch_size} exceeds the 1347 digits training examples",
                             "1..1347")
        if self.dataset == "digits" and self.n_linearity > 450:
            raise self.error("n_linearity", f"{self.n_linearity} exceeds the 450 held-out digits", "2..450")
        if self.dataset == "digits" and min(self.cscore_ratios) * 1347 < 20:
            raise self.error("cscore_ratios", "subsets of fewer than 20 examples cannot train a classifier",
                             ">= 0.015")

    def _check_files(self, name: str) -> None:
        field = "dataset" if name == "cifar10" else "spurious_dataset"
        if not self.data_dir:
            raise self.error("data_dir", f"{field} = {name!r} reads {DATA_FILES[name]} from data_dir, which is empty",
                             f"a folder holding those files, or {field} = 'digits'")
        if name != "cifar10":  # the metadata files (the images are checked when they are read)
            if name == "waterbirds":
                read_waterbirds(self.data_dir)
            else:
                read_celeba(self.data_dir)
            return
        d = Path(self.data_dir)
        need = ["cifar10-cscores-orig-order.npz", "data_batch_1"]
        missing = [f for f in need if not (d / f).exists() and not any(d.rglob(f))]
        if missing:
            raise self.error("data_dir", f"{str(d)!r} lacks {', '.join(missing)} ({DATA_FILES[name]})",
                             "a folder holding those files, or 'digits'")


def torch_dtype(name: str) -> torch.dtype:
    """The torch dtype of the ``dtype`` option (``float64`` or ``float32``)."""
    return torch.float64 if name == "float64" else torch.float32
