"""``tangentlab run adaptive-tangent``: the adaptive tangent feature perspective (LeJeune &
Alemohammad, CPAL 2024; digest ``adaptive_tangent.md``), at CPU scale.

Parts (``parts``):

* ``penalties`` — Fig. 2: the effective penalties ``ω̃`` of ``ω1 = (v−1)²``, ``ω2 = |v−1|``
  and of the joint ``ω1 ⊕ ω2`` on ``v ∈ [0, 5]``, with the digest's reference values and
  Proposition 3's properties (below ``v²``, ``≈ v²`` at 0, concave in ``v²``).
* ``theory`` — exact checks on small random problems (digest S2–S4): Theorem 1's closed form
  against direct L-BFGS minimization over all entries of ``M`` and its kernel identity
  ``GM̂²Gᵀ = K0 + (s²−1)/‖β̂‖²·rrᵀ``; the diagonal reweighted solver with ``ω = v²`` against
  the ℓ1 linear program (``Ω̃ = 2‖β‖₁``); the Model A alternating solver on one block against
  direct minimization over ``(M1, M2)``.
* ``alignment`` — Figs. 1 and 3 on digits 2-vs-3 (MNIST as a preset): a bias-free ReLU MLP
  ``D → width → width → 1`` (He init), targets from a frozen random network whose last
  layer is fitted by least squares to ±1 labels (``paper``: ``y = Zb``; ``hard``: ``b``
  Gaussian, ``y`` standardized), trained from init seed ``s`` on ``y`` and on ``sign(y)`` by
  full-batch GD (momentum, cosine annealing, MSE). Average tangent features along
  ``θ0 → θ̂`` (``quadrature`` with ``quadrature_points``), kernels ``K0``, ``K̄``, ``K(θ̂)``,
  ``K_ŷ = ΔfΔfᵀ`` and Theorem 1's ``K0 + (s²−1)/‖β̂‖²·K_ŷ``; cosine alignment ("sim"),
  centered alignment, least squares ``K ≈ a K0 + c K_ŷ`` with residual, and the diagonal
  near ``y ≈ 0`` vs far from it; the average-feature identity
  ``f0 + J̄(θ̂ − θ0) = f_θ̂`` for each quadrature size in ``quadrature_check``.
* ``solver`` — Model A (Theorem 2) on the initial tangent features of the first seed's
  network for each target: objective per half step from the ridgeless NTK value
  ``rᵀK0⁻¹r``, singular values of ``B̂_ℓ`` against the NTK solution's, the adapted kernel's
  alignment, norm and diagonal.
* ``training`` — fixed vs adaptive vs standard networks (the preprint's Fig. 4): a
  linearized ``f0 + J0δ`` (:class:`tangentlab.linearize.Linearized`), a factorized
  ``δ_ℓ = M1_ℓ W_ℓ M2_ℓ`` (``M = I``, ``W = 0`` at start; bias deviation ``M2ᵀb``; conv
  kernels factorized along their spatial, input- and output-channel modes or on their
  ``(c_in·kh·kw) × c_out`` matricization, ``sweep_conv_factors``; see
  :mod:`tangentlab.analysis.adaptive_factorized`) and the standard network, trained with
  cross-entropy, early stopping on test accuracy (as the repo), over ``sweep_n`` training
  sizes and ``sweep_seeds`` seeds, for each architecture of ``sweep_arch``: the MLP and/or
  the CNN (``sweep_channels`` blocks [conv 3×3, ReLU, avg-pool 2×2], then a dense head;
  8×8 digits on CPU by default, the repo's CIFAR-10 CNN with the ``fig4_cifar`` preset).

Tables (tidy, appended as each unit finishes; a killed run resumes at the next unit):
``penalties``, ``checks``, ``alignment``, ``quadrature``, ``diagonal``, ``kernel_maps``,
``training``, ``solver``, ``solver_metrics``, ``solver_spectrum``, ``sweep``.
"""

from __future__ import annotations

import copy
import math
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from ...analysis import adaptive as ad
from ...analysis import adaptive_features as af
from ...analysis.adaptive_factorized import CONV_MODES, Factorized
from ...analysis.kernels import cka, kernel_alignment
from ...api import ntk
from ..framework.config import Preset, StudyConfig, option
from ..framework.report import Claim, FigureSpec, ReportContent, TableSpec
from ..framework.runner import Study
from ..framework.store import to_number

PARTS = ("penalties", "theory", "alignment", "solver", "training")
FAMILIES = ("paper", "hard")
TARGETS = ("y", "sign")
KERNELS = ("K0", "Kbar", "Kfinal", "Ktheorem1")
SWEEP_MODELS = ("standard", "fixed", "adaptive")
PENALTY_CHOICES = ("sq", "abs", "abs:0.5", "abs:1.5", "abs:3")

#: digest §2 E1 (verified there): v, ω̃1, ω̃2, ω̃3.
FIG2_REFERENCE = [(0.1, 0.0099, 0.0100, 0.0099), (0.5, 0.2114, 0.2500, 0.2114), (1.0, 0.6695, 0.8899, 0.6690),
                  (2.0, 1.8686, 2.0000, 1.5394), (3.0, 3.2441, 2.9311, 2.2337), (5.0, 6.2465, 4.5260, 3.3674),
                  (10.0, 14.404, 7.772, 5.523)]
#: digest §3 S5 (digits, seeds 0–3, paper protocol) and S5b (hard target, seeds 0–1).
DIGEST_S5 = {"paper": {"Kbar": (0.146, 0.173), "Kfinal": (0.207, 0.306), "K0": (0.087, 0.085), "diag": (1.04, 1.10)},
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
    """Configuration of ``adaptive-tangent`` (see the module docstring)."""

    PRESETS: ClassVar[dict[str, Preset]] = {
        "tiny": Preset("seconds-long smoke run (tests)", {
            "n_points": 40, "width": 16, "seeds": 1, "train_steps": 300, "quadrature_points": 6,
            "quadrature_check": (3, 6), "map_size": 8, "solver_iters": 3, "theory_restarts": 1,
            "sweep_n": (30,), "sweep_seeds": 1, "sweep_width": 16, "sweep_epochs": 3, "sweep_patience": 2,
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
    seeds: int = option(2, "network initializations (seed, seed+1, ...); target networks use 100 + seed", min=1)
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
    sweep_seeds: int = option(2, "seeds per size", min=1)
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
                _check_mnist(self.data_dir, "dataset")
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
                _check_mnist(self.data_dir, "sweep_dataset")
            elif self.sweep_dataset == "cifar10":
                from ..framework.data import check_dataset

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


def _check_mnist(data_dir: str, field: str) -> None:
    """MNIST IDX files in ``data_dir`` (the shared dataset registry's check; nothing is downloaded)."""
    from ..framework.data import check_dataset

    check_dataset("mnist", "flat", data_dir, field)


# ---------------------------------------------------------------------------------------------
# data, models, targets
# ---------------------------------------------------------------------------------------------
def _normalize(x: torch.Tensor, how: str) -> torch.Tensor:
    x = x - x.mean(1, keepdim=True)
    if how == "l2":
        return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return x / x.std(1, keepdim=True).clamp_min(1e-12)


def pair_data(cfg: AdaptiveTangentConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of digits 2 and 3 (flattened, normalized per image) and labels −1 (2) / +1 (3)."""
    if cfg.dataset == "digits":
        from sklearn.datasets import load_digits

        X, Y = load_digits(return_X_y=True)
    else:
        from ..framework.datasets import load_mnist_arrays

        X, Y = load_mnist_arrays(cfg.data_dir, "train")
        X = X.reshape(len(X), -1) / 255.0
    keep = np.flatnonzero((Y == 2) | (Y == 3))
    if cfg.n_points:
        keep = keep[:cfg.n_points]
    x = torch.as_tensor(np.asarray(X[keep], dtype=np.float64))
    lab = torch.as_tensor(np.where(Y[keep] == 3, 1.0, -1.0))
    return _normalize(x, cfg.normalization), lab


def he_mlp(n_in: int, hidden: tuple[int, ...], n_out: int, seed: int, bias: bool = False,
           dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """``Linear → ReLU → … → Linear`` with He-normal weights ``N(0, 2/fan_in)`` drawn from a
    generator seeded with ``seed`` (biases zero)."""
    gen = torch.Generator().manual_seed(int(seed))
    layers: list[nn.Module] = []
    width = n_in
    for h in (*hidden, n_out):
        lin = nn.Linear(width, h, bias=bias, dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen, dtype=dtype) * math.sqrt(2.0 / width))
            if bias:
                lin.bias.zero_()
        layers += [lin, nn.ReLU()]
        width = h
    return nn.Sequential(*layers[:-1])


def make_targets(x: torch.Tensor, lab: torch.Tensor, family: str, seed: int, width: int) -> tuple[torch.Tensor, float]:
    """``y = Z b`` with ``Z`` the penultimate features of a frozen He-initialized network
    (seed ``100 + seed``): ``paper``: ``b`` = least-squares fit of the ±1 labels;
    ``hard``: ``b`` Gaussian, ``y`` standardized. Returns ``(y, accuracy of sign(y))``."""
    net = he_mlp(x.shape[1], (width, width), 1, 100 + seed)
    with torch.no_grad():
        Z = net[:-1](x)
    if family == "paper":
        b = np.linalg.lstsq(Z.numpy(), lab.numpy(), rcond=None)[0]
        y = torch.as_tensor(Z.numpy() @ b)
    else:
        gen = torch.Generator().manual_seed(1000 + seed)
        y = Z @ torch.randn(Z.shape[1], generator=gen, dtype=torch.float64)
        y = (y - y.mean()) / y.std()
    return y, float(((y > 0) == (lab > 0)).double().mean())


def train_regression(model: nn.Module, x: torch.Tensor, t: torch.Tensor, steps: int, lr: float, momentum: float,
                     log_every: int = 50, show: bool | None = None, desc: str = "training") -> list[tuple[int, float]]:
    """Full-batch GD with momentum and cosine annealing on the mean squared error."""
    from ...progress import progress

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


# ---------------------------------------------------------------------------------------------
# the models of the preprint's Fig. 4 (the factorized model: analysis.adaptive_factorized)
# ---------------------------------------------------------------------------------------------
def he_cnn(in_channels: int, image_size: int, channels: tuple[int, ...], hidden: tuple[int, ...], n_out: int,
           seed: int, bias: bool = False, dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """The Fig. 4 CNN (the authors' CIFAR-10 model, any number of blocks): ``len(channels)``
    blocks ``Conv 3×3 (padding 1) → ReLU → AvgPool 2×2``, then ``Flatten → Linear → ReLU →
    … → Linear(n_out)`` with the ``hidden`` widths. He-normal weights ``N(0, 2/fan_in)``
    (``fan_in = c_in·9`` for a convolution) from a generator seeded with ``seed``; biases 0.
    The repo's CIFAR-10 net is ``channels = (16, 32, 64, 128)``, ``hidden = (128, 128)``."""
    if image_size >> len(channels) < 1:
        raise ValueError(f"{len(channels)} pooling blocks do not fit {image_size}×{image_size} images")
    gen = torch.Generator().manual_seed(int(seed))
    layers: list[nn.Module] = []
    c, size = in_channels, image_size
    for co in channels:
        conv = nn.Conv2d(c, co, 3, padding=1, bias=bias, dtype=dtype)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen, dtype=dtype) * math.sqrt(2.0 / (c * 9)))
            if bias:
                conv.bias.zero_()
        layers += [conv, nn.ReLU(), nn.AvgPool2d(2)]
        c, size = co, size // 2
    head = he_mlp(c * size * size, hidden, n_out, seed + 7_777, bias, dtype)
    return nn.Sequential(*layers, nn.Flatten(), *head)


def sweep_data(cfg: AdaptiveTangentConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pool of training images and the fixed test set, 10 classes, as ``(N, C, H, W)`` float32
    images: digits /16 (stratified held-out split of ``sweep_test``), MNIST and CIFAR-10 /255
    (the first ``sweep_test`` test images), no other normalization (as the repo)."""
    if cfg.sweep_dataset == "digits":
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        X, Y = load_digits(return_X_y=True)
        xtr, xte, ytr, yte = train_test_split(X / 16.0, Y, test_size=cfg.sweep_test, random_state=0, stratify=Y)
    else:
        if cfg.sweep_dataset == "mnist":
            from ..framework.datasets import load_mnist_arrays as load
        else:
            from ..framework.datasets import load_cifar10_arrays as load
        xtr, ytr = load(cfg.data_dir, "train")
        xte, yte = load(cfg.data_dir, "test")
        xtr, xte = xtr / 255.0, xte[:cfg.sweep_test] / 255.0
        yte = yte[:cfg.sweep_test]
    c, size = SWEEP_IMAGES[cfg.sweep_dataset]
    f = torch.float32
    return (torch.as_tensor(xtr, dtype=f).reshape(-1, c, size, size), torch.as_tensor(ytr, dtype=torch.int64),
            torch.as_tensor(xte, dtype=f).reshape(-1, c, size, size), torch.as_tensor(yte, dtype=torch.int64))


def sweep_network(cfg: AdaptiveTangentConfig, arch: str, seed: int) -> nn.Sequential:
    """The standard network of the sweep (float32): the MLP on flattened images or the CNN."""
    c, size = SWEEP_IMAGES[cfg.sweep_dataset]
    hidden = (cfg.sweep_width,) * (cfg.sweep_depth - 1)
    if arch == "mlp":
        return nn.Sequential(nn.Flatten(), *he_mlp(c * size * size, hidden, 10, seed, cfg.sweep_bias, torch.float32))
    return he_cnn(c, size, tuple(cfg.sweep_channels), hidden, 10, seed, cfg.sweep_bias, torch.float32)


# ---------------------------------------------------------------------------------------------
# the study
# ---------------------------------------------------------------------------------------------
class AdaptiveTangent(Study):
    parallel = True
    name = "adaptive-tangent"
    title = "Adaptive tangent features (LeJeune & Alemohammad, CPAL 2024): penalties, kernels, solvers"
    description = "Fig. 2 penalties, Theorems 1-2, Figs. 1/3 kernel alignment on digits, fixed vs adaptive training"
    config_class = AdaptiveTangentConfig
    config: AdaptiveTangentConfig

    def _tables(self) -> dict[str, Any]:
        return {name: self.store.table(name, cols, key) for name, (cols, key) in COLS.items()}

    def run(self) -> None:
        cfg = self.config
        self.T = self._tables()
        # finished units: table "units" (shared by the ranks of a torchrun launch); run directories of
        # earlier versions listed them in a "progress" checkpoint
        self.units = self.store.table("units", ["unit", "seconds"], ["unit"])
        ck = self.store.load_checkpoint("progress")
        legacy = set(ck["done"]) if ck else set()
        if legacy or len(self.units):
            self.log(f"adaptive-tangent: resuming ({len(legacy | {k[0] for k in self.units.keys})} units done)")
        self.units.append([{"unit": key} for key in sorted(legacy)])
        self.dev = self.device
        t0 = time.perf_counter()
        if "penalties" in cfg.parts:
            self._unit("penalties", self._penalties)
        if "theory" in cfg.parts:
            self._unit("theory", self._theory)
        if "alignment" in cfg.parts:
            self._alignment()
        if "training" in cfg.parts:
            self._sweep()
        self.log(f"adaptive-tangent: done in {time.perf_counter() - t0:.1f}s")

    def _unit(self, key: str, fn, *args) -> None:
        """Run ``fn(*args)`` unless unit ``key`` is finished (by any rank, in any session) or
        another rank claimed it; record it as finished."""
        if (key,) in self.units or not self.ctx.claim(key):
            return
        t = time.perf_counter()
        fn(*args)
        self.units.append([{"unit": key, "seconds": time.perf_counter() - t}])
        self.log(f"adaptive-tangent: {key} ({time.perf_counter() - t:.1f}s)")

    def _check(self, part: str, check: str, measured: float, reference: float, tol: float, held: bool) -> None:
        self.T["checks"].append([{"part": part, "check": check, "measured": float(measured),
                                  "reference": float(reference), "tolerance": float(tol), "held": bool(held)}])

    # ---- part: penalties (Fig. 2) -----------------------------------------------------------
    def _penalties(self) -> None:
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
                self._check("penalties", f"{name}({vi:g})", g, r, tol, abs(g - r) <= tol)
        for vi, r in ((2, 0.581), (3, 1.235), (6, 2.965)):
            g = float(ad.joint_penalty("sq", "abs", [vi])[0])
            self._check("penalties", f"joint({vi})", g, r, 6e-4, abs(g - r) <= 6e-4)
        # Proposition 3
        u = np.linspace(0.01, 25, 400)
        worst_concave, worst_above, worst_small = -np.inf, -np.inf, 0.0
        for om in ("sq", "abs"):
            w = ad.effective_penalty(om, np.sqrt(u))
            worst_concave = max(worst_concave, float(np.diff(w, 2).max()))
            worst_above = max(worst_above, float((w - u).max()))
            worst_small = max(worst_small, abs(float(ad.effective_penalty(om, [1e-3])[0]) / 1e-6 - 1))
        worst_concave = max(worst_concave, float(np.diff(ad.joint_effective_penalty("sq", "abs", np.sqrt(u)), 2).max()))
        self._check("penalties", "max second difference in v² (concavity)", worst_concave, 0.0, 1e-9,
                    worst_concave <= 1e-9)
        self._check("penalties", "max(ω̃(v) − v²)", worst_above, 0.0, 1e-12, worst_above <= 1e-12)
        self._check("penalties", "|ω̃(1e-3)/1e-6 − 1|", worst_small, 0.0, 1e-2, worst_small <= 1e-2)

    # ---- part: theory (S2–S4) ------------------------------------------------------------------
    def _theory(self) -> None:
        cfg = self.config
        gen = torch.Generator().manual_seed(cfg.seed)
        G = torch.randn(4, 10, generator=gen, dtype=torch.float64) / math.sqrt(10)
        r = 2 * torch.randn(4, generator=gen, dtype=torch.float64)
        K0 = G @ G.T
        sol = ad.theorem1(K0, r, "sq")
        beta = G.T @ sol.alpha
        M = torch.eye(10, dtype=torch.float64) + (sol.s - 1) * torch.outer(beta, beta) / sol.beta_norm ** 2
        best, vals = ad.direct_minimize(G, r, "sq", restarts=cfg.theory_restarts, seed=cfg.seed)
        self._check("theory", "Theorem 1: direct L-BFGS min − closed form", best - sol.objective, 0.0, 1e-6,
                    best >= sol.objective - 1e-9 and abs(best - sol.objective) <= 1e-6)
        self._check("theory", "Theorem 1: closed-form objective ω̃(‖β̂‖)", sol.objective, sol.objective, 0, True)
        self._check("theory", "Theorem 1: s", sol.s, sol.s, 0, True)
        self._check("theory", "Theorem 1: ‖β̂‖", sol.beta_norm, sol.beta_norm, 0, True)
        kerr = float((G @ M @ M @ G.T - sol.kernel(K0)).abs().max())
        self._check("theory", "Theorem 1: max|GM̂²Gᵀ − K0 − (s²−1)/‖β̂‖² rrᵀ|", kerr, 0.0, 1e-12, kerr <= 1e-12)
        cerr = float((G @ M @ beta / sol.s - r).abs().max())
        self._check("theory", "Theorem 1: constraint residual", cerr, 0.0, 1e-12, cerr <= 1e-12)
        # diagonal M, ω = v²: Ω̃ = 2‖β‖₁ (App. A.1) against the ℓ1 LP
        from scipy.optimize import linprog

        J = torch.randn(14, 30, generator=gen, dtype=torch.float64)
        bstar = torch.zeros(30, dtype=torch.float64)
        bstar[[2, 11, 25]] = torch.tensor([3.0, -2.0, 1.5], dtype=torch.float64)
        rd = J @ bstar
        dsol = ad.diagonal_irls(J, rd, "square", iters=400)
        lp = linprog(np.ones(60), A_eq=np.hstack([J.numpy(), -J.numpy()]), b_eq=rd.numpy(), bounds=(0, None))
        rel = abs(dsol.objectives[-1] - 2 * lp.fun) / (2 * lp.fun)
        self._check("theory", "diagonal ω=v²: |objective − 2·LP min ‖β‖₁| / (2·LP)", rel, 0.0, 1e-5, rel <= 1e-5)
        mono = float(np.diff(dsol.objectives).max())
        self._check("theory", "diagonal solver: largest objective increase", mono, 0.0, 1e-9, mono <= 1e-9)
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
        self._check("theory", "Model A one block: alternating − direct (relative)", gap / dbest, 0.0, 1e-6,
                    gap <= 1e-6 * dbest)
        inc = float(np.diff(msol.objectives).max())
        self._check("theory", "Model A one block: largest objective increase (relative)", inc / msol.objectives[0],
                    0.0, 1e-10, inc <= 1e-10 * msol.objectives[0])

    # ---- part: alignment (Figs. 1, 3) + solver ---------------------------------------------------
    def _alignment(self) -> None:
        cfg = self.config
        x, lab = pair_data(cfg)
        x = x.to(self.dev)
        for k in range(cfg.seeds):
            seed = cfg.seed + k
            for fam in cfg.families:
                y, acc = make_targets(x.cpu(), lab, fam, seed, cfg.width)
                for tgt in TARGETS:
                    key = f"align:{seed}:{fam}:{tgt}"
                    self._unit(key, self._align_one, x, y.to(self.dev), acc, seed, fam, tgt, k == 0)

    def _align_one(self, x: torch.Tensor, y: torch.Tensor, acc: float, seed: int, fam: str, tgt: str,
                   first: bool) -> None:
        cfg = self.config
        t = y if tgt == "y" else torch.sign(y)
        net0 = he_mlp(x.shape[1], (cfg.width, cfg.width), 1, seed).to(self.dev)
        th0 = af.flat_params(net0)
        # trained in float32 (twice as fast); the path θ0 → θ̂ and every kernel are float64
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
                self._solver(net0, x, delta, ycpu, K0, Ky, fam, tgt)
        del Jbar

    def _solver(self, net0: nn.Module, x: torch.Tensor, r: torch.Tensor, y: torch.Tensor, K0: torch.Tensor,
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
    def _sweep(self) -> None:
        cfg = self.config
        data = sweep_data(cfg)
        for arch in cfg.sweep_arch:
            for n in cfg.sweep_n:
                for k in range(cfg.sweep_seeds):
                    for model in cfg.sweep_models:
                        self._unit(f"sweep:{arch}:{n}:{cfg.seed + k}:{model}", self._sweep_one, data, arch, n,
                                   cfg.seed + k, model)

    def _sweep_one(self, data, arch: str, n: int, seed: int, which: str) -> None:
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
            from ...linearize import Linearized

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

    # ---- report ------------------------------------------------------------------------------------
    def report(self) -> ReportContent:
        return build_report(self.config, self.store)


# ---------------------------------------------------------------------------------------------
# report (from the stored tables only)
# ---------------------------------------------------------------------------------------------
def _num(rows: list[dict[str, str]], *cols: str) -> list[dict[str, Any]]:
    out = []
    for r in rows:
        d: dict[str, Any] = dict(r)
        for c in cols:
            d[c] = to_number(r[c])
        out.append(d)
    return out


def _mean(xs: list[float]) -> float:
    xs = [x for x in xs if x == x]
    return float(np.mean(xs)) if xs else math.nan


def build_report(cfg: AdaptiveTangentConfig, store: Any) -> ReportContent:
    checks = store.read("checks")
    align = _num(store.read("alignment"), "seed", "value")
    quad = _num(store.read("quadrature"), "seed", "n", "rel_error")
    diag = _num(store.read("diagonal"), "seed", "point", "y", "target_value", "diag_K0", "diag_Kbar", "diag_Kfinal")
    maps = _num(store.read("kernel_maps"), "row", "col", "value")
    pens = _num(store.read("penalties"), "v", "value")
    solver = _num(store.read("solver"), "step", "objective")
    smet = _num(store.read("solver_metrics"), "value")
    sspec = _num(store.read("solver_spectrum"), "layer", "index", "value")
    sweep = _num(store.read("sweep"), "n_train", "seed", "value")
    training = _num(store.read("training"), "seed", "step", "loss")
    claims: list[Claim] = []
    summary = [f"dataset {cfg.dataset} (2 vs 3, {cfg.normalization} normalization), MLP width {cfg.width}, "
               f"{cfg.seeds} seed(s), {cfg.train_steps} GD steps, quadrature {cfg.quadrature} × "
               f"{cfg.quadrature_points}."]

    # ---- deterministic checks
    by_part: dict[str, list[dict[str, str]]] = defaultdict(list)
    for c in checks:
        by_part[c["part"]].append(c)
    pen = [c for c in by_part.get("penalties", []) if c["check"].startswith(("w1", "w2", "w3", "joint"))]
    if pen:
        bad = [c["check"] for c in pen if c["held"] != "true"]
        worst = max(abs(float(c["measured"]) - float(c["reference"])) for c in pen)
        vals = {c["check"]: float(c["measured"]) for c in pen}
        claims.append(Claim("Fig. 2 penalty values", "ω̃1, ω̃2, ω̃3 = (ω1⊕ω2)~ at v = 0.1…10 as in the digest table "
                            "(e.g. v = 5: 6.2465, 4.5260, 3.3674); (ω1⊕ω2)(2, 3, 6) = 0.581, 1.235, 2.965",
                            f"v = 5: {vals.get('w1(5)', math.nan):.4f}, {vals.get('w2(5)', math.nan):.4f}, "
                            f"{vals.get('w3(5)', math.nan):.4f}; largest deviation from the table {worst:.1e} "
                            f"over {len(pen)} values" + (f"; failed: {', '.join(bad)}" if bad else ""),
                            not bad, "deterministic"))
    prop = [c for c in by_part.get("penalties", []) if c not in pen]
    if prop:
        claims.append(Claim("Proposition 3", "ω̃ ≤ v², ω̃(v) = v² + o(v²) at 0, concave in v² (sub-quadratic tails)",
                            "; ".join(f"{c['check']} = {float(c['measured']):.2e}" for c in prop),
                            all(c["held"] == "true" for c in prop), "deterministic"))
    th = by_part.get("theory", [])
    if th:
        d = {c["check"]: c for c in th}
        t1 = [c for k, c in d.items() if k.startswith("Theorem 1")]
        s_, b_, o_ = (float(d[k]["measured"]) for k in ("Theorem 1: s", "Theorem 1: ‖β̂‖",
                                                         "Theorem 1: closed-form objective ω̃(‖β̂‖)"))
        claims.append(Claim("Theorem 1 (structureless M)", "closed form M̂ = I + (s−1)β̂β̂ᵀ/‖β̂‖², θ̂ = θ0 + β̂/s "
                            "equals the direct minimum of Ω(M) + rᵀ(GMMᵀGᵀ)⁻¹r (digest S2: all restarts agree to "
                            "1e-9; kernel identity to 1e-15)",
                            f"G 4×10: ‖β̂‖ = {b_:.4f}, s = {s_:.4f}, objective {o_:.6f}; direct − closed form = "
                            f"{float(d['Theorem 1: direct L-BFGS min − closed form']['measured']):.1e}; kernel "
                            f"identity {float(d['Theorem 1: max|GM̂²Gᵀ − K0 − (s²−1)/‖β̂‖² rrᵀ|']['measured']):.1e}",
                            all(c["held"] == "true" for c in t1), "deterministic"))
        dg = [c for k, c in d.items() if k.startswith("diagonal")]
        claims.append(Claim("App. A.1 (diagonal M)", "ω(m) = m² with diagonal M gives Ω̃ = 2‖β‖₁ (reweighted solver "
                            "= ℓ1 LP)", "; ".join(f"{c['check']}: {float(c['measured']):.1e}" for c in dg),
                            all(c["held"] == "true" for c in dg), "deterministic"))
        ma = [c for k, c in d.items() if k.startswith("Model A")]
        claims.append(Claim("Lemma 5 / Theorem 2 on one block", "alternating solver ≤ direct bilinear minimization + "
                            "1e-2, monotone (digest S4)", "; ".join(f"{c['check']}: {float(c['measured']):.1e}"
                                                                  for c in ma),
                            all(c["held"] == "true" for c in ma), "deterministic"))

    # ---- alignment
    A: dict[tuple, float] = {(r["seed"], r["family"], r["target"], r["kernel"], r["metric"]): r["value"] for r in align}
    seeds = sorted({r["seed"] for r in align})
    fams = [f for f in FAMILIES if any(r["family"] == f for r in align)]
    summary_rows = []
    for fam in fams:
        for tgt in TARGETS:
            for kern in KERNELS:
                vals = {m: _mean([A.get((s, fam, tgt, kern, m), math.nan) for s in seeds])
                        for m in ("cos", "cka", "norm_ratio", "lsq_a", "lsq_c", "lsq_residual", "diag_ratio")}
                summary_rows.append({"family": fam, "target": tgt, "kernel": kern, **vals})
    if align:
        for fam in fams:
            idents = [r["value"] for r in align if r["metric"] == "identity_rel_error" and r["family"] == fam]
            mses = [r["value"] for r in align if r["metric"] == "train_mse" and r["family"] == fam]
            claims.append(Claim(f"§1.2 average-feature identity ({fam} targets)",
                                "f_θ̂ − f_θ0 = ∇̄f (θ̂ − θ0); the 50-point linspace mean is accurate to < 1e-2 "
                                "(digest, paper-protocol targets: 4.5e-3, 3.2e-3)",
                                f"{cfg.quadrature} × {cfg.quadrature_points}: relative error max {max(idents):.2e} "
                                f"over {len(idents)} trained networks (final training MSE ≤ {max(mses):.1e})",
                                max(idents) < 1e-2 if cfg.quadrature_points >= 50 else None))
        slopes = []
        for key in sorted({(r["seed"], r["family"], r["target"]) for r in quad}):
            pts = sorted((r["n"], r["rel_error"]) for r in quad if (r["seed"], r["family"], r["target"]) == key)
            if len(pts) >= 2 and pts[0][1] > 0 and pts[-1][1] > 0:
                slopes.append(math.log(pts[-1][1] / pts[0][1]) / math.log(pts[-1][0] / pts[0][0]))
        if slopes and cfg.quadrature in ("linspace", "left"):
            claims.append(Claim("§1.2 quadrature convergence", "the endpoint-inclusive mean converges like 1/T "
                                "(digest S8: expected, not measured there)",
                                f"log-log slope of the relative error vs T: median {float(np.median(slopes)):.2f} "
                                f"(range {min(slopes):.2f} … {max(slopes):.2f}) over {len(slopes)} networks",
                                all(-1.3 <= sl <= -0.7 for sl in slopes)))
        for fam in fams:
            c0 = [A.get((s, fam, t, "K0", "cos"), math.nan) for s in seeds for t in TARGETS]
            cb = [A.get((s, fam, t, "Kbar", "cos"), math.nan) for s in seeds for t in TARGETS]
            cf = [A.get((s, fam, t, "Kfinal", "cos"), math.nan) for s in seeds for t in TARGETS]
            held = all(b > a and f > a for a, b, f in zip(c0, cb, cf))
            claims.append(Claim(f"Fig. 1: training aligns the kernel ({fam} targets)",
                                "cos(K̄, K_ŷ) and cos(K_final, K_ŷ) exceed cos(K0, K_ŷ)",
                                f"mean cos K0 {_mean(c0):.3f}, K̄ {_mean(cb):.3f}, K_final {_mean(cf):.3f} "
                                f"({len(c0)} networks)", held))
            for kern, label in (("Kbar", "K̄"), ("Kfinal", "K_final")):
                gaps = [A.get((s, fam, "sign", kern, "cos"), math.nan) - A.get((s, fam, "y", kern, "cos"), math.nan)
                        for s in seeds]
                ny, ns = (_mean([A.get((s, fam, t, kern, "cos"), math.nan) for s in seeds]) for t in TARGETS)
                ref = DIGEST_S5[fam].get(kern)
                wins = sum(g > 0 for g in gaps)
                need = len(gaps) if len(gaps) < 4 else math.ceil(0.75 * len(gaps))
                claims.append(Claim(f"Fig. 1: harder target, higher alignment ({label}, {fam} targets)",
                                    f"cos({label}, K_ŷ) higher for sign(y) than for y (paper MNIST 0.17 → 0.40 for K̄; "
                                    f"digest digits {ref[0]:.3f} → {ref[1]:.3f})" if ref else
                                    f"cos({label}, K_ŷ) higher for sign(y) than for y",
                                    f"y {ny:.3f} → sign(y) {ns:.3f}; sign higher in {wins}/{len(gaps)} seeds "
                                    f"(gaps {', '.join(f'{g:+.3f}' for g in gaps)})", wins >= need))
            dr = [(A.get((s, fam, "y", "Kbar", "diag_ratio"), math.nan),
                   A.get((s, fam, "sign", "Kbar", "diag_ratio"), math.nan)) for s in seeds]
            wins = sum(b > a for a, b in dr)
            ref = DIGEST_S5[fam]["diag"]
            claims.append(Claim(f"Fig. 3: diagonal of K̄ amplified near y ≈ 0 for sign(y) ({fam} targets)",
                                f"mean diag K̄ over the {cfg.near_fraction:.0%} smallest |y| / over the largest |y| is "
                                f"larger for sign(y) than for y (digest digits {ref[0]:.2f} → {ref[1]:.2f})",
                                f"y {_mean([a for a, _ in dr]):.3f} → sign(y) {_mean([b for _, b in dr]):.3f}; "
                                f"larger in {wins}/{len(dr)} seeds", wins == len(dr) and _mean([b for _, b in dr]) > 1))
            res = [A.get((s, fam, "y", "Kbar", "lsq_residual"), math.nan) for s in seeds]
            res_sign = [A.get((s, fam, "sign", "Kbar", "lsq_residual"), math.nan) for s in seeds]
            aa = _mean([A.get((s, fam, "y", "Kbar", "lsq_a"), math.nan) for s in seeds])
            cc = _mean([A.get((s, fam, "y", "Kbar", "lsq_c"), math.nan) for s in seeds])
            claims.append(Claim(f"Fig. 1: K̄ ≈ a K0 + c K_ŷ for linear targets ({fam} family)",
                                "for the linear targets y, K̄ looks like a combination of K0 and K_ŷ (digest: 2.09 K0 + "
                                "0.37 K_ŷ, relative residual ≈ 10%); for sign(y) more structure remains",
                                f"y: K̄ ≈ {aa:.2f} K0 + {cc:.2f} K_ŷ, relative residual mean {_mean(res):.1%} (max "
                                f"{max(res):.1%}); sign(y): residual mean {_mean(res_sign):.1%}", max(res) < 0.2))
    # ---- solver
    S: dict[tuple, float] = {(r["family"], r["target"], r["metric"]): r["value"] for r in smet}
    if smet:
        pairs = sorted({(r["family"], r["target"]) for r in smet})
        below = all(S[(f, t, "final_objective")] < S[(f, t, "ntk_objective")] for f, t in pairs)
        mono = max(S[(f, t, "max_increase")] / S[(f, t, "ntk_objective")] for f, t in pairs)
        claims.append(Claim("Theorem 2 solver: objective below the NTK value",
                            "the Model A solution's objective is below the ridgeless NTK value rᵀK0⁻¹r (digest S6: "
                            "59.5 → 42.9 for y, 48.6 → 35.9 for sign(y)); alternating steps never increase it",
                            "; ".join(f"{f}/{t}: {S[(f, t, 'ntk_objective')]:.1f} → {S[(f, t, 'final_objective')]:.1f}"
                                      for f, t in pairs) + f"; largest relative increase {mono:.1e}",
                            below and mono <= 1e-9, "deterministic"))
        lows = []
        for f, t in pairs:
            layers = sorted({int(k[2].split("_")[0][5:]) for k in S if k[0] == f and k[1] == t
                             and k[2].endswith("_adaptive_top1_energy")})
            for la in layers:
                lows.append((f, t, la, S[(f, t, f"layer{la}_ntk_top1_energy")],
                             S[(f, t, f"layer{la}_adaptive_top1_energy")]))
        held = all(b >= a - 1e-12 for *_, a, b in lows)
        claims.append(Claim("Theorem 2: B̂ approximately low rank",
                            "the leading singular values of B̂_ℓ are amplified relative to the rest (group "
                            "approximately-"
                            "low-rank penalty)", "top singular value's share of ‖B_ℓ‖²_F, NTK → adaptive: "
                            + "; ".join(f"{f}/{t} L{la} {a:.2f}→{b:.2f}" for f, t, la, a, b in lows), held))
        for fam in sorted({f for f, _ in pairs}):
            if (fam, "y", "norm_ratio") in S and (fam, "sign", "norm_ratio") in S:
                a, b = S[(fam, "y", "norm_ratio")], S[(fam, "sign", "norm_ratio")]
                claims.append(Claim(f"Theorem 2: kernel change grows with difficulty ({fam} targets)",
                                    "‖K_adapted‖/‖K0‖ larger for the harder target (digest S6: 6.0 vs 14.4 on the hard "
                                    "digits targets; 1.11 vs 1.11 on the easy paper targets)",
                                    f"y {a:.2f} vs sign(y) {b:.2f}; rᵀK0⁻¹r {S[(fam, 'y', 'ntk_objective')]:.1f} vs "
                                    f"{S[(fam, 'sign', 'ntk_objective')]:.1f}",
                                    b > a if S[(fam, "sign", "ntk_objective")] > S[(fam, "y", "ntk_objective")]
                                    else None))
    # ---- sweep
    sweep_rows = _sweep_summary(sweep)
    ref = {"mlp": "MNIST MLP n = 125: 0.068 < 0.140 < 0.187", "cnn": "CIFAR-10 CNN n = 125: 0.544 < 0.613 < 0.697"}
    for arch in [a for a in SWEEP_ARCHS if any(r["arch"] == a for r in sweep_rows)]:
        mean_err = {(r["n_train"], r["model"]): r["mean"] for r in sweep_rows if r["arch"] == arch}
        ns = sorted({k[0] for k in mean_err})
        label = {"mlp": "MLP", "cnn": "CNN"}[arch]
        if not all((n, m) in mean_err for n in ns for m in SWEEP_MODELS):
            continue
        std_best = all(mean_err[(n, "standard")] <= min(mean_err[(n, "fixed")], mean_err[(n, "adaptive")])
                       for n in ns)
        claims.append(Claim(f"Fig. 4 (preprint, {label} on {cfg.sweep_dataset}): the standard network is best",
                            f"test error NN < Adaptive < Fixed ({ref[arch]})",
                            "; ".join(f"n={int(n)}: NN {mean_err[(n, 'standard')]:.3f}, adaptive "
                                      f"{mean_err[(n, 'adaptive')]:.3f}, fixed {mean_err[(n, 'fixed')]:.3f}"
                                      for n in ns), std_best))
        wins = sum(mean_err[(n, "adaptive")] < mean_err[(n, "fixed")] for n in ns)
        claims.append(Claim(f"Fig. 4 (preprint, {label} on {cfg.sweep_dataset}): adaptive beats fixed tangent "
                            "features",
                            "adaptive (factorized) < fixed (linearized) test error at small and medium n, ≈ 4–8× "
                            "sample-complexity gain"
                            + (" (digest S7: NOT reproduced on 8×8 digits with depth 3)" if arch == "mlp" else ""),
                            f"adaptive better at {wins}/{len(ns)} sizes"
                            + (f" (conv kernels factorized: {cfg.sweep_conv_factors})" if arch == "cnn" else ""),
                            wins == len(ns)))
    figures = _figures(cfg, pens, maps, diag, align, quad, solver, sspec, sweep, training, A, seeds, fams)
    tables = [TableSpec("Deterministic checks", ["part", "check", "measured", "reference", "tolerance", "held"],
                        [dict(c) for c in checks], link="tables/checks.csv")]
    if summary_rows:
        tables.append(TableSpec("Kernel alignment with K_ŷ (mean over seeds)",
                                ["family", "target", "kernel", "cos", "cka", "norm_ratio", "lsq_a", "lsq_c",
                                 "lsq_residual", "diag_ratio"], summary_rows, link="tables/alignment.csv"))
    if smet:
        tables.append(TableSpec("Model A solver (first seed)", ["family", "target", "metric", "value"],
                                [dict(r) for r in smet], link="tables/solver_metrics.csv"))
    if sweep_rows:
        tables.append(TableSpec(f"Fig. 4 sweep on {cfg.sweep_dataset}: best test error over seeds",
                                ["arch", "n_train", "model", "mean", "std", "seeds", "mean_epochs"], sweep_rows,
                                max_rows=None, link="tables/sweep.csv"))
    notes = ["Kernels live on the N training points (C = 1); cos is the Frobenius cosine (the paper's 'sim'), cka the "
             "alignment after centering over examples.",
             "Ktheorem1 = K0 + (s²−1)/‖β̂‖²·K_ŷ is Theorem 1's structureless adapted kernel for r = f_θ̂ − f_θ0.",
             "The solver uses r = f_θ̂ − f_θ0 of the trained network (= ŷ − f0 at interpolation) and ω = "
             f"{cfg.solver_penalty} for every factor, the last layer's M2 fixed (χ_{{1}}), λ = {cfg.solver_scale:g}.",
             "Fig. 4 is supplementary (arXiv v1/v2 and the authors' repo, not the CPAL text); early stopping selects "
             "on the test set, as in the repo. Fixed = f0 + J0δ; adaptive = f0 + J0δ with δ_ℓ = M1 W M2 per Linear "
             "layer and, per Conv2d, "
             + ("δ[s,i,o] = Ms[s,s'] M1[i,i'] W[s',i',o'] M2[o',o] (spatial, in- and out-channel factors: the "
                "repo's Tucker-style extension)" if cfg.sweep_conv_factors == "tucker" else
                "δ = M1 W M2 on the (c_in·kh·kw) × c_out matricization")
             + f"; CNN: {len(cfg.sweep_channels)} blocks [conv 3×3, ReLU, avg-pool 2×2] with channels "
             f"{', '.join(map(str, cfg.sweep_channels))}, then {cfg.sweep_depth} Linear layers (width "
             f"{cfg.sweep_width}); the preset fig4_cifar is the repo's CIFAR-10 CNN."]
    return ReportContent(AdaptiveTangent.title, summary, claims, figures, tables, notes)


def _sweep_summary(sweep: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Mean and standard deviation over seeds of the best test error per (arch, n, model)."""
    errs: dict[tuple, list[float]] = defaultdict(list)
    epochs: dict[tuple, list[float]] = defaultdict(list)
    for r in sweep:
        key = (r.get("arch") or "mlp", r["n_train"], r["model"])
        if r["metric"] == "test_error":
            errs[key].append(r["value"])
        elif r["metric"] == "epochs":
            epochs[key].append(r["value"])
    order = {m: i for i, m in enumerate(SWEEP_MODELS)}
    return [{"arch": k[0], "n_train": int(k[1]), "model": k[2], "mean": _mean(v),
             "std": float(np.std(v)) if len(v) > 1 else math.nan, "seeds": len(v),
             "mean_epochs": _mean(epochs.get(k, []))}
            for k, v in sorted(errs.items(), key=lambda kv: (kv[0][0], kv[0][1], order.get(kv[0][2], 9)))]


def _figures(cfg, pens, maps, diag, align, quad, solver, sspec, sweep, training, A, seeds, fams) -> list[FigureSpec]:
    figs: list[FigureSpec] = []
    if pens:
        def draw_pen(fig):
            ax1, ax2 = fig.subplots(1, 2)
            labels = {"w1": "ω̃₁, ω₁=(v−1)²", "w2": "ω̃₂, ω₂=|v−1|", "w3": "(ω₁⊕ω₂)~", "v2": "v²"}
            for k, lab in labels.items():
                pts = sorted((r["v"], r["value"]) for r in pens if r["penalty"] == k)
                ax1.plot(*zip(*pts), "--" if k == "v2" else "-", color="0.5" if k == "v2" else None, label=lab)
            ax1.set_ylim(0, 8)
            ax1.set_xlabel("v")
            ax1.legend(fontsize=7)
            pts = sorted((r["v"], r["value"]) for r in pens if r["penalty"] == "joint")
            ax2.plot(*zip(*pts))
            ax2.set_xlabel("v")
            ax2.set_title("joint penalty (ω₁⊕ω₂)(v)", fontsize=9)

        figs.append(FigureSpec("fig2_penalties", "Fig. 2: effective penalties",
                               "Effective penalties are ≈ v² near 0 and sub-quadratic for large v (left); the joint "
                               "penalty ω₁⊕ω₂ (right).", draw_pen, (10, 3.6)))
    for fam in fams:
        sub = [r for r in maps if r["family"] == fam]
        if not sub:
            continue

        def draw_maps(fig, sub=sub, fam=fam):
            axes = fig.subplots(2, 4, squeeze=False)
            for i, tgt in enumerate(TARGETS):
                for j, kern in enumerate(("K0", "Kbar", "Kfinal", "Ky")):
                    pts = [r for r in sub if r["target"] == tgt and r["kernel"] == kern]
                    if not pts:
                        continue
                    n = int(max(r["row"] for r in pts)) + 1
                    M = np.zeros((n, n))
                    for r in pts:
                        M[int(r["row"]), int(r["col"])] = r["value"]
                    lim = np.abs(M).max()
                    ax = axes[i, j]
                    ax.imshow(M, cmap="RdBu_r", vmin=-lim, vmax=lim)
                    ax.set_xticks([])
                    ax.set_yticks([])
                    sim = A.get((seeds[0], fam, tgt, {"Ky": "", "K0": "K0", "Kbar": "Kbar",
                                                      "Kfinal": "Kfinal"}[kern], "cos")) if kern != "Ky" else 1.0
                    ax.set_title(f"{kern} ({'y' if tgt == 'y' else 'sign(y)'}) sim={sim:.2f}", fontsize=8)

        figs.append(FigureSpec(f"fig1_kernels_{fam}", f"Fig. 1: kernels, {fam} targets (seed {int(seeds[0])})",
                               "Kernels on the training points sorted by y (block-averaged), symmetric colour limits; "
                               "sim = cosine with K_ŷ. Top: linear targets y; bottom: sign(y).", draw_maps, (11, 5.6)))
    for fam in fams:
        sub = [r for r in diag if r["family"] == fam and r["seed"] == seeds[0]]
        if not sub:
            continue

        def draw_diag(fig, sub=sub):
            ax1, ax2 = fig.subplots(1, 2)
            s = sorted((r["y"], r["target_value"]) for r in sub if r["target"] == "sign")
            ax1.plot([a for a, _ in s], [b for _, b in s], ".", ms=3, label="ŷ = sign(y)")
            ax1.plot([a for a, _ in s], [a for a, _ in s], "k:", label="y")
            ax1.set_xlabel("y")
            ax1.legend(fontsize=7)
            for tgt, mk in (("y", "o"), ("sign", "x")):
                pts = [(r["y"], r["diag_Kbar"]) for r in sub if r["target"] == tgt]
                ax2.plot(*zip(*pts), mk, ms=3, alpha=0.6, label=f"diag K̄ ({tgt})")
            ax3 = ax2.twinx()
            ax3.plot([a for a, _ in s], [b - a for a, b in s], "r--", lw=0.8)
            ax3.set_ylabel("sign(y) − y", color="r")
            ax2.set_xlabel("y")
            ax2.legend(fontsize=7)

        figs.append(FigureSpec(f"fig3_diagonal_{fam}", f"Fig. 3: targets and diag K̄ vs y ({fam} targets)",
                               "Left: the binarized target against y. Right: diagonal of the average-feature kernel "
                               "for the two targets, and the residual sign(y) − y (red).", draw_diag, (10, 3.6)))
    if align:
        def draw_align(fig):
            axes = fig.subplots(1, len(fams), squeeze=False)[0]
            for ax, fam in zip(axes, fams):
                for j, kern in enumerate(KERNELS):
                    for i, tgt in enumerate(TARGETS):
                        vals = [A.get((s, fam, tgt, kern, "cos"), math.nan) for s in seeds]
                        ax.bar(j * 3 + i, np.nanmean(vals), color="tab:blue" if tgt == "y" else "tab:orange",
                               label=("y" if tgt == "y" else "sign(y)") if j == 0 else None)
                        ax.plot([j * 3 + i] * len(vals), vals, "k.", ms=3)
                ax.set_xticks([j * 3 + 0.5 for j in range(len(KERNELS))], KERNELS, fontsize=8)
                ax.set_ylabel("cos(K, K_ŷ)")
                ax.set_title(f"{fam} targets", fontsize=9)
                ax.legend(fontsize=7)

        figs.append(FigureSpec("alignment", "Alignment with the label kernel",
                               "Cosine of each kernel with K_ŷ (bars: mean over seeds; dots: seeds).", draw_align,
                               (5 * len(fams) + 1, 3.6)))
    if quad:
        def draw_quad(fig):
            ax = fig.subplots()
            for key in sorted({(r["seed"], r["family"], r["target"]) for r in quad}):
                pts = sorted((r["n"], r["rel_error"]) for r in quad if (r["seed"], r["family"], r["target"]) == key)
                ax.loglog(*zip(*pts), "o-", ms=3, lw=0.8, label=f"s{int(key[0])} {key[1]}/{key[2]}")
            ax.set_xlabel("quadrature points")
            ax.set_ylabel("‖f0 + J̄Δθ − f_θ̂‖ / ‖f_θ̂‖")
            ax.legend(fontsize=6, ncol=2)

        figs.append(FigureSpec("quadrature", "Average-feature identity vs quadrature size",
                               f"Relative error of the {cfg.quadrature} quadrature.", draw_quad, (6, 3.6)))
    if solver:
        def draw_solver(fig):
            ax1, ax2 = fig.subplots(1, 2)
            for key in sorted({(r["family"], r["target"]) for r in solver}):
                pts = sorted((r["step"] / 2, r["objective"]) for r in solver if (r["family"], r["target"]) == key)
                ax1.semilogy(*zip(*pts), ".-", ms=3, label=f"{key[0]}/{key[1]}")
            ax1.set_xlabel("round")
            ax1.set_ylabel("objective")
            ax1.legend(fontsize=7)
            for key in sorted({(r["family"], r["target"], r["layer"]) for r in sspec}):
                for method, ls in (("ntk", ":"), ("adaptive", "-")):
                    pts = sorted((r["index"], r["value"]) for r in sspec
                                 if (r["family"], r["target"], r["layer"]) == key and r["method"] == method)
                    if pts and key[0] == sorted({r["family"] for r in sspec})[-1]:
                        top = max(pts[0][1], 1e-300)
                        ax2.semilogy([p[0] for p in pts], [max(p[1] / top, 1e-6) for p in pts], ls, lw=0.9,
                                     label=f"{key[1]} L{int(key[2])} {method}")
            ax2.set_ylim(1e-4, 1.5)
            ax2.set_xlabel("index")
            ax2.set_ylabel(f"σ_j(B_ℓ) / σ_1 ({sorted({r['family'] for r in sspec})[-1]} targets)")
            ax2.legend(fontsize=6, ncol=2)

        figs.append(FigureSpec("solver", "Model A solver on the initial tangent features",
                               "Left: objective after every half step (starts at the NTK value). Right: singular "
                               "values "
                               "of B̂_ℓ (solid) vs the ridgeless NTK solution's (dotted).", draw_solver, (10, 3.8)))
    archs = [a for a in SWEEP_ARCHS if any((r.get("arch") or "mlp") == a for r in sweep)]
    if archs:
        rows = _sweep_summary(sweep)

        def draw_sweep(fig):
            axes = fig.subplots(1, len(archs), squeeze=False)[0]
            for ax, arch in zip(axes, archs):
                for model in SWEEP_MODELS:
                    pts = [(r["n_train"], r["mean"], r["std"]) for r in rows if r["arch"] == arch
                           and r["model"] == model]
                    if pts:
                        n, m, sd = zip(*pts)
                        ax.errorbar(n, m, yerr=[0 if v != v else v for v in sd], marker="o", capsize=2,
                                    label={"standard": "NN", "fixed": "Fixed", "adaptive": "Adaptive"}[model])
                ax.set_xscale("log")
                ax.set_xlabel("training examples")
                ax.set_ylabel("test error")
                ax.set_title(f"{arch.upper()} on {cfg.sweep_dataset}", fontsize=9)
                ax.legend()

        figs.append(FigureSpec("fig4_sweep", "Fig. 4 (preprint): fixed vs adaptive vs standard",
                               "Best test error (early stopping on test accuracy, as the repo), mean ± std over seeds; "
                               "one panel per architecture (MLP; CNN with factorized conv kernels).",
                               draw_sweep, (5.5 * len(archs), 3.8)))
    if training:
        def draw_training(fig):
            ax = fig.subplots()
            for key in sorted({(r["seed"], r["family"], r["target"]) for r in training}):
                pts = sorted((r["step"], r["loss"]) for r in training if (r["seed"], r["family"], r["target"]) == key)
                ax.semilogy(*zip(*pts), lw=0.8, label=f"s{int(key[0])} {key[1]}/{key[2]}")
            ax.set_xlabel("GD step")
            ax.set_ylabel("training MSE")
            ax.legend(fontsize=6, ncol=2)

        figs.append(FigureSpec("training", "Training curves (Figs. 1/3 networks)", "Full-batch MSE.", draw_training,
                               (6, 3.6)))
    return figs
