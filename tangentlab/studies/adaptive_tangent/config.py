"""Configuration of the ``adaptive-tangent`` study: :class:`AdaptiveTangentConfig`, its
presets, the reference values of its checks and the schemas of its tables."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ...analysis import adaptive_features as af
from ...analysis.adaptive_factorized import CONV_MODES
from ..framework.config import Preset, StudyConfig, option
from ..framework.data import check_dataset

TITLE = "Adaptive tangent features (LeJeune & Alemohammad, CPAL 2024): penalties, kernels, solvers"
PARTS = ("penalties", "theory", "alignment", "solver", "training")
FAMILIES = ("paper", "hard")
TARGETS = ("y", "sign")
KERNELS = ("K0", "Kbar", "Kfinal", "Ktheorem1")
SWEEP_MODELS = ("standard", "fixed", "adaptive")
PENALTY_CHOICES = ("sq", "abs", "abs:0.5", "abs:1.5", "abs:3")

#: Fig. 2 reference values (v, ω̃1, ω̃2, ω̃3), from an independent evaluation of the effective penalties.
FIG2_REFERENCE = [(0.1, 0.0099, 0.0100, 0.0099), (0.5, 0.2114, 0.2500, 0.2114), (1.0, 0.6695, 0.8899, 0.6690),
                  (2.0, 1.8686, 2.0000, 1.5394), (3.0, 3.2441, 2.9311, 2.2337), (5.0, 6.2465, 4.5260, 3.3674),
                  (10.0, 14.404, 7.772, 5.523)]
#: Reference alignments cos(K, K_ŷ) for (y, sign(y)) and diagonal ratios of K̄ measured on digits (paper
#: protocol: seeds 0–3; hard targets: seeds 0–1), quoted next to the Fig. 1 and Fig. 3 claims.
DIGITS_REFERENCE = {"paper": {"Kbar": (0.146, 0.173), "Kfinal": (0.207, 0.306), "K0": (0.087, 0.085),
                              "diag": (1.04, 1.10)},
                    "hard": {"Kbar": (0.082, 0.141), "Kfinal": (0.098, 0.179), "diag": (1.015, 1.37)}}

COLS = {
    "penalties": (["penalty", "v", "value"], ["penalty", "v"]),
    "checks": (["part", "check", "measured", "reference", "tolerance", "held"], ["part", "check"]),
    "alignment": (["seed", "family", "target", "kernel", "metric", "value"],
                  ["seed", "family", "target", "kernel", "metric"]),
    "quadrature": (["seed", "family", "target", "rule", "n", "rel_error"], ["seed", "family", "target", "rule", "n"]),
    "diagonal": (["seed", "family", "target", "point", "y", "target_value", "diag_K0", "diag_Kbar", "diag_Kfinal"],
                 ["seed", "family", "target", "point"]),
    "kernel_maps": (["family", "target", "kernel", "row", "col", "value"],
                    ["family", "target", "kernel", "row", "col"]),
    "training": (["seed", "family", "target", "step", "loss"], ["seed", "family", "target", "step"]),
    "solver": (["family", "target", "step", "half", "objective"], ["family", "target", "step"]),
    "solver_metrics": (["family", "target", "metric", "value"], ["family", "target", "metric"]),
    "solver_spectrum": (["family", "target", "layer", "method", "index", "value"],
                        ["family", "target", "layer", "method", "index"]),
    "sweep": (["dataset", "arch", "n_train", "seed", "model", "metric", "value"],
              ["dataset", "arch", "n_train", "seed", "model", "metric"]),
}

ALIGN_DATASETS = ("digits", "mnist")
SWEEP_DATASETS = ("digits", "mnist", "cifar10")
SWEEP_ARCHS = ("mlp", "cnn")
#: (channels, height = width) of the sweep datasets' images.
SWEEP_IMAGES = {"digits": (1, 8), "mnist": (1, 28), "cifar10": (3, 32)}


@dataclass
class AdaptiveTangentConfig(StudyConfig):
    """Configuration of ``adaptive-tangent`` (see :mod:`tangentlab.studies.adaptive_tangent`)."""

    PRESETS: ClassVar[dict[str, Preset]] = {
        "tiny": Preset("seconds-long smoke run (tests)", {
            "n_points": 40, "width": 16, "seeds": 2, "train_steps": 300, "quadrature_points": 6,
            "quadrature_check": (3, 6), "map_size": 8, "solver_iters": 3, "theory_restarts": 1,
            "sweep_n": (30,), "sweep_seeds": 2, "sweep_width": 16, "sweep_epochs": 3, "sweep_patience": 2,
            "sweep_test": 100, "sweep_channels": (4, 8)}),
        "mnist": Preset("Figs. 1 and 3 at the paper's scale: MNIST 2 vs 3, N = 500, 784-128-128-1 (needs data_dir)", {
            "dataset": "mnist", "n_points": 500, "seeds": 4, "train_steps": 6000, "quadrature_points": 50,
            "normalization": "l2", "parts": ("penalties", "theory", "alignment", "solver")}),
        "fig4": Preset("the preprint's Fig. 4 on MNIST: depth 5, width 128, SGD lr 0.01, n ≤ 60000, 10 seeds (GPU, "
                       "needs data_dir)", {
                           "parts": ("training",), "sweep_dataset": "mnist", "sweep_depth": 5, "sweep_width": 128,
                           "sweep_bias": True, "sweep_lr": 0.01, "sweep_optimizer": "sgd", "sweep_batch": 50,
                           "sweep_n": (125, 250, 500, 1000, 2000, 4000, 8000, 16000, 32000, 60000),
                           "sweep_seeds": 10, "sweep_epochs": 1000, "sweep_patience": 20, "sweep_test": 10000,
                           "sweep_arch": ("mlp",), "device": "cuda"}, needs_gpu=True),
        "fig4_cifar": Preset("the preprint's Fig. 4 on CIFAR-10: the repo's CNN (4 × [conv 3×3, ReLU, avg-pool], "
                             "16-128 channels, dense 128-128-10), factorized conv kernels, Adam lr 1e-3, n ≤ 50000, "
                             "10 seeds (GPU, needs data_dir with the CIFAR-10 python batches)", {
                                 "parts": ("training",), "sweep_dataset": "cifar10", "sweep_arch": ("cnn",),
                                 "sweep_channels": (16, 32, 64, 128), "sweep_depth": 3, "sweep_width": 128,
                                 "sweep_bias": True, "sweep_lr": 1e-3, "sweep_optimizer": "adam", "sweep_batch": 50,
                                 "sweep_n": (125, 250, 500, 1000, 2000, 4000, 8000, 16000, 32000, 50000),
                                 "sweep_seeds": 10, "sweep_epochs": 1000, "sweep_patience": 20, "sweep_test": 10000,
                                 "device": "cuda"}, needs_gpu=True),
    }

    threads: int = option(1, "torch intra-op threads (default 1: these matrices are small, and several threads "
                          "on 2 busy cores are many times slower; 0: torch's default)", min=0)
    parts: tuple[str, ...] = option(PARTS, "parts of the study to run", choices=PARTS)
    # alignment (Figs. 1, 3)
    dataset: str = option("digits", "data of Figs. 1/3: scikit-learn digits or MNIST files (2 vs 3)",
                          choices=ALIGN_DATASETS)
    data_dir: str = option("", "folder with the MNIST IDX files (dataset/sweep_dataset = mnist)")
    n_points: int = option(0, "training points of Figs. 1/3 (0: all 360 digits 2/3; first N of MNIST)", min=0)
    normalization: str = option("l2", "per-image normalization: l2 (zero mean, unit norm; lr 0.1 is stable) or "
                                "standard (zero mean, unit variance; needs lr ≈ 0.1/D)", choices=("l2", "standard"))
    width: int = option(128, "hidden width of the 3-layer bias-free ReLU MLP", min=1)
    families: tuple[str, ...] = option(FAMILIES, "target constructions: paper (least-squares fit of ±1 labels) and "
                                       "hard (random last layer, standardized)", choices=FAMILIES)
    seeds: int = option(5, "network initializations (seed, seed+1, ...); target networks use 100 + seed (5: the "
                        "Figs. 1/3 findings are decided on a Student-t interval over seeds)", min=1)
    train_steps: int = option(1500, "full-batch GD steps (momentum, cosine annealing; float32)", min=1)
    lr: float = option(0.1, "learning rate of the full-batch GD", min=0.0)
    momentum: float = option(0.9, "momentum of all SGD optimizers", min=0.0, max=1.0)
    quadrature: str = option("linspace", "quadrature of the average features (paper: linspace mean)",
                             choices=af.QUADRATURES)
    quadrature_points: int = option(50, "quadrature points on θ0 → θ̂ (paper: 50)", min=1)
    quadrature_check: tuple[int, ...] = option((5, 10, 50), "quadrature sizes of the identity check", min=1)
    near_fraction: float = option(0.15, "fraction of points with smallest / largest |y| in the diagonal ratio",
                                  min=0.01, max=0.5)
    map_size: int = option(40, "kernel heatmaps: block-averaged to map_size × map_size (sorted by y)", min=2)
    # solver (Model A)
    solver_iters: int = option(20, "rounds of the Model A alternating solver", min=1)
    solver_penalty: str = option("sq", "ω of every factor (the last layer's M2 is fixed)", choices=PENALTY_CHOICES)
    solver_scale: float = option(1.0, "λ in λΩ (not in the paper; 1 reproduces it)", min=1e-12)
    theory_restarts: int = option(3, "restarts of the direct L-BFGS cross-checks", min=1)
    # training sweep (Fig. 4)
    sweep_dataset: str = option("digits", "data of the sweep (10 classes; pixels /16 for digits, /255 otherwise)",
                                choices=SWEEP_DATASETS)
    sweep_arch: tuple[str, ...] = option(SWEEP_ARCHS, "networks of the sweep: mlp (sweep_depth Linear layers) and/or "
                                         "cnn (conv blocks of sweep_channels, then sweep_depth Linear layers)",
                                         choices=SWEEP_ARCHS)
    sweep_channels: tuple[int, ...] = option((16, 32), "cnn: output channels of the [conv 3×3, ReLU, avg-pool 2×2] "
                                             "blocks (the repo's CIFAR-10 net: 16,32,64,128)", min=1)
    sweep_conv_factors: str = option("tucker", "cnn: factorization of the conv kernels in the adaptive model: tucker "
                                     "(the repo's spatial, in- and out-channel factors) or matrix (M1 W M2 on the "
                                     "(c_in·kh·kw) × c_out matricization)", choices=CONV_MODES)
    sweep_n: tuple[int, ...] = option((50, 100, 200, 400), "training-set sizes", min=10)
    sweep_seeds: int = option(5, "seeds per size (5: the Fig. 4 findings are decided on a bootstrap interval over "
                              "seeds)", min=1)
    sweep_models: tuple[str, ...] = option(SWEEP_MODELS, "models compared", choices=SWEEP_MODELS)
    sweep_depth: int = option(3, "Linear layers of the sweep MLP (and of the CNN's dense head)", min=2)
    sweep_width: int = option(128, "hidden width of the sweep MLP (and of the CNN's dense head)", min=1)
    sweep_bias: bool = option(False, "biases in the sweep networks")
    sweep_optimizer: str = option("sgd", "optimizer of the sweep", choices=("sgd", "adam"))
    sweep_lr: float = option(0.05, "learning rate of the sweep", min=0.0)
    sweep_batch: int = option(0, "minibatch size (0: 25 when n ≤ 125, else 50, as the repo)", min=0)
    sweep_epochs: int = option(60, "maximum epochs", min=1)
    sweep_patience: int = option(15, "early stopping: epochs without a better test accuracy", min=1)
    sweep_test: int = option(597, "test images (digits: held-out split of this size)", min=10)

    def validate(self) -> None:
        if "alignment" in self.parts or "solver" in self.parts:
            if self.dataset == "mnist":
                check_mnist(self.data_dir, "dataset")
            n_avail = 360 if self.dataset == "digits" else 12000
            if self.n_points > n_avail:
                raise self.error("n_points", f"{self.n_points} exceeds the {n_avail} available 2/3 images",
                                 f"0..{n_avail}")
            if 0 < self.n_points < 4:
                raise self.error("n_points", "too few points for kernels", f"0 or 4..{n_avail}")
        if "solver" in self.parts and "alignment" not in self.parts:
            raise self.error("parts", "the solver part uses the alignment part's targets and networks",
                             "add 'alignment' to parts")
        if "training" in self.parts:
            if "cnn" in self.sweep_arch:
                size = SWEEP_IMAGES[self.sweep_dataset][1]
                if size >> len(self.sweep_channels) < 1:
                    raise self.error("sweep_channels", f"{len(self.sweep_channels)} conv/pool blocks do not fit "
                                     f"{size}×{size} {self.sweep_dataset} images",
                                     f"at most {size.bit_length() - 1} channel counts")
            if self.sweep_dataset == "mnist":
                check_mnist(self.data_dir, "sweep_dataset")
            elif self.sweep_dataset == "cifar10":
                check_dataset("cifar10", "image", self.data_dir, "sweep_dataset")
            else:
                pool = 1797 - self.sweep_test
                if pool < 10:
                    raise self.error("sweep_test", f"{self.sweep_test} leaves no training digits", "10..1787")
                for n in self.sweep_n:
                    if n > pool:
                        raise self.error("sweep_n", f"{n} exceeds the {pool} digits outside the test split",
                                         f"10..{pool}")
        if max(self.quadrature_check) > 10000 or self.quadrature_points > 10000:
            raise self.error("quadrature_points", "too many quadrature points", "1..10000")
        if self.quadrature == "trapezoid":
            for name in ("quadrature_points",):
                if getattr(self, name) < 2:
                    raise self.error(name, "the trapezoid rule needs at least 2 points", ">= 2")
            if min(self.quadrature_check) < 2:
                raise self.error("quadrature_check", "the trapezoid rule needs at least 2 points", ">= 2")



def check_mnist(data_dir: str, field: str) -> None:
    """MNIST IDX files in ``data_dir`` (the framework's dataset check; nothing is downloaded)."""
    check_dataset("mnist", "flat", data_dir, field)

