"""Configuration of ``linearized-generalization``: :class:`LinGenConfig`, its presets, and the table schemas.

Tables (tidy, one row per value):

* ``results``: one row per part × setting × index × model × metric (a training unit, a kernel
  measurement, a Lemma 1 vector...); a unit counts as done once its rows are written;
* ``curves``: per-epoch training curves of every trained model;
* ``arrays``: spectra, NAD images and alignments, one row per entry.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np

from ..framework.config import ConfigError, Preset, StudyConfig, option
from ..framework.data import ALL_DATASETS, check_dataset
from .tasks import NAD_ACTIVATIONS, SCALAR_MODELS, Recipe, make_lenet

TITLE = "What can linearized networks say about generalization? (Ortiz-Jiménez et al. 2021)"
PARTS = ("eigen", "nad", "size", "energy", "lemma")
RESULT_COLUMNS = ["part", "setting", "index", "model", "metric", "value"]
RESULT_KEY = ["part", "setting", "index", "model", "metric"]
CURVE_COLUMNS = ["part", "setting", "index", "model", "epoch", "metric", "value"]
CURVE_KEY = ["part", "setting", "index", "model", "epoch", "metric"]
ARRAY_COLUMNS = ["name", "row", "col", "value"]
ARRAY_KEY = ["name", "row", "col"]
#: Relative tolerance of the deterministic identities (float64).
EXACT_TOL = 1e-8



def dataset_names() -> list[str]:
    """The datasets the eigen, size and energy parts accept (every dataset the framework knows)."""
    return list(ALL_DATASETS)


def _n_train(dataset: str) -> int | None:
    """Training-set size known without loading (digits: 75 % of 1797, stratified)."""
    return 1347 if dataset == "digits" else None


@dataclass
class LinGenConfig(StudyConfig):
    """Configuration of ``linearized-generalization`` (see :mod:`tangentlab.studies.linearized_generalization`)."""

    PRESETS: ClassVar[dict[str, Preset]] = {
        "tiny": Preset("seconds-long smoke run (tests)", {
            "hidden": (16, 16), "epochs": 4, "gram_points": 300, "eigen_indices": (1, 4, 16),
            "nad_indices": (0, 5, 40), "nad_epochs": 3, "nad_train": 128, "nad_test": 128, "nad_mc_samples": 64,
            "nad_expect_samples": 8, "nad_show": 4, "sizes": (32, 64, 128), "xor_sizes": (64, 128),
            "xor_epochs": 3, "xor_test": 128, "checkpoint_epochs": (1, 2), "binary_lin_epochs": (1,),
            "rotation_target": 4, "rotation_max_index": 30, "energy_ks": (5, 10), "lemma_random": 3,
            "seeds": (0, 1), "size_seeds": (0, 1)}),
        "paper": Preset("paper scale: CIFAR-10 (data_dir), BN-free ResNet-18, 12,000-point Gram, GPU", {
            "dataset": "cifar10", "model": "resnet18", "device": "cuda", "gram_points": 12000,
            "eigen_indices": (1, 2, 5, 10, 20, 50, 100, 200, 500, 999), "epochs": 100, "sizes":
            (500, 1000, 2000, 5000, 10000, 20000, 50000), "size_epochs": 200, "size_seeds": (0, 1, 2, 3, 4),
            "nad_train": 10000, "nad_test": 10000, "nad_epochs": 100, "nad_indices": (0, 1, 2, 5, 10, 50, 100, 500),
            "nad_mc_samples": 8000, "nad_expect_samples": 500, "rotation_target": 400, "rotation_max_index": 1000,
            "energy_ks": (50,), "checkpoint_epochs": (1, 2, 3, 5, 10, 20, 50), "xor_sizes": (),
            "train_threads": 0, "seeds": (0,)}, needs_gpu=True),
        "paper-lenet": Preset("paper scale with LeNet5 on CIFAR-10 (data_dir), GPU", {
            "dataset": "cifar10", "model": "lenet", "device": "cuda", "gram_points": 12000,
            "eigen_indices": (1, 2, 5, 10, 20, 50, 100, 200, 500, 999), "sizes": (500, 2000, 10000, 50000),
            "size_epochs": 200, "nad_train": 10000, "nad_test": 10000, "nad_epochs": 100,
            "rotation_target": 400, "rotation_max_index": 1000, "energy_ks": (50,), "xor_sizes": (),
            "train_threads": 0, "seeds": (0,)}, needs_gpu=True),
    }

    parts: tuple[str, ...] = option(PARTS, "parts to run", choices=PARTS)
    dataset: str = option("digits", "dataset of the eigenfunction, size and energy parts", choices=dataset_names)
    data_dir: str = option("", "folder of a dataset read from disk (cifar10, mnist...)")
    max_per_class: int = option(0, "examples per class to read (0: all; file datasets)", min=0)
    model: str = option("mlp", "network of the eigen, size and energy parts", choices=SCALAR_MODELS)
    hidden: tuple[int, ...] = option((100, 100), "hidden widths of the MLP", min=1)
    activation: str = option("relu", "activation of the MLP / LeNet", choices=("relu", "tanh", "sigmoid"))
    width: int = option(64, "base width of the ResNet-18", min=1)
    seeds: tuple[int, ...] = option((0, 1, 2, 3, 4), "replicates of the eigen, nad and energy parts: each its "
                                    "own θ₀ (hence K₀ and its eigenfunction tasks), NAD LeNet, eq. 5 samples and "
                                    "minibatch orders; the claims take intervals over them (seed 0 is drawn in the "
                                    "figures)", min=0)
    # recipe
    epochs: int = option(60, "training epochs (networks and linearizations)", min=1)
    batch_size: int = option(128, "minibatch size (min(batch_size, n); last partial batch dropped)", min=1)
    lr: float = option(0.05, "initial learning rate", min=0.0)
    momentum: float = option(0.9, "SGD momentum", min=0.0, max=1.0)
    optimizer: str = option("sgd", "optimizer (Fig. 11: adam)", choices=("sgd", "adam"))
    schedule: str = option("linear", "learning-rate schedule: linear decay to 0, or constant",
                           choices=("linear", "constant"))
    loss_threshold: float = option(0.01, "training loss that counts as converged", min=0.0)
    train_threads: int = option(1, "torch threads inside the training loops (0: the run's threads)", min=0)
    # eigen
    gram_points: int = option(0, "support points of the eigenfunctions (0: all train + test; else a random "
                              "subset of that size)", min=0)
    eigen_indices: tuple[int, ...] = option((1, 2, 5, 10, 20, 50, 100, 200, 400),
                                            "0-based eigenvector indices j of the sign(φ_j) targets", min=0)
    # nad
    nad_activation: str = option("gelu", "activation of the NAD LeNet (differentiable: gelu)",
                                 choices=tuple(NAD_ACTIVATIONS))
    nad_indices: tuple[int, ...] = option((0, 1, 3, 10, 30, 63), "0-based NAD indices of the linear tasks", min=0)
    nad_epochs: int = option(30, "training epochs of the NAD tasks", min=1)
    nad_train: int = option(1000, "training points per NAD task", min=2)
    nad_test: int = option(2000, "test points per NAD task", min=1)
    nad_eps: float = option(1.0, "margin ε of eq. 5 (the authors' code uses ε/2)", min=0.0)
    nad_sigma: float = option(1.0, "noise σ of eq. 5", min=0.0)
    nad_samples: int = option(0, "NADs from ∇²f at the origin (0, the paper's choice) or averaged over this "
                              "many x ∼ N(0, I)", min=0)
    nad_expect_samples: int = option(200, "samples of E_x ∇²f for the Monte-Carlo check of Theorem 1", min=1)
    nad_mc_samples: int = option(2000, "samples of the unbiased Monte-Carlo alignment (0: no check)", min=0)
    nad_check: int = option(4, "NADs checked by Monte Carlo (the first ones)", min=1)
    nad_show: int = option(10, "NADs drawn as images (Fig. 10)", min=1)
    # size
    sizes: tuple[int, ...] = option((32, 64, 128, 256, 512, 1024, 1347), "training-set sizes of the half-classes "
                                    "task", min=2)
    size_epochs: int = option(60, "training epochs of the size part", min=1)
    size_seeds: tuple[int, ...] = option((0, 1, 2, 3, 4), "seeds of the size part (subset, init, batches)", min=0)
    xor_sizes: tuple[int, ...] = option((250, 500, 1000, 2000, 4000), "training-set sizes of the XOR task "
                                        "(empty: skip)", min=2, nonempty=False)
    xor_dim: int = option(20, "input dimension of the XOR task", min=2)
    xor_epochs: int = option(40, "training epochs of the XOR task", min=1)
    xor_test: int = option(1000, "test points of the XOR task", min=1)
    # energy / rotation / late linearization
    energy_ks: tuple[int, ...] = option((10, 50), "orders K of the energy concentration", min=1)
    checkpoint_epochs: tuple[int, ...] = option((1, 2, 3, 5, 10, 20), "network checkpoints (besides 0 and the "
                                                "end) for the energy and late-linearization parts", min=1)
    rotation_target: int = option(100, "eigenfunction index of the rotation / late-linearization task "
                                  "(one of eigen_indices)", min=0)
    rotation_max_index: int = option(400, "eigenvectors of K₀ whose alignment is tracked", min=2)
    binary_lin_epochs: tuple[int, ...] = option((1, 5), "checkpoints (besides 0 and the end) linearized on the "
                                                "half-classes task", min=1, nonempty=False)
    # lemma
    lemma_rcond: float = option(1e-10, "eigenvalue cutoff of the pseudo-inverse, relative to λ_max", min=0.0)
    lemma_random: int = option(5, "random ±1 label vectors checked", min=0)

    def validate(self) -> None:
        if 0 not in self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise self.error("seeds", f"{list(self.seeds)} must be distinct and include 0 (the seed the figures "
                             "draw)", "distinct seeds including 0")
        try:
            check_dataset(self.dataset, "image" if self.model != "mlp" else "flat", self.data_dir)
        except ConfigError as e:
            raise self.error(e.field if e.field in ("data_dir",) else "dataset", str(e).split(": ", 1)[-1]) from None
        n_train = _n_train(self.dataset)
        support = (1797 if self.dataset == "digits" else None) if not self.gram_points else self.gram_points
        if self.dataset == "digits" and self.gram_points > 1797:
            raise self.error("gram_points", f"{self.gram_points} exceeds the 1797 digits", "0..1797")
        need = max(max(self.eigen_indices), self.rotation_target, self.rotation_max_index - 1)
        if support is not None and need >= support:
            raise self.error("eigen_indices", f"eigenvector index {need} (eigen_indices, rotation_target, "
                             f"rotation_max_index) does not exist on {support} support points",
                             f"0..{support - 1}")
        if "energy" in self.parts and self.rotation_target not in self.eigen_indices:
            raise self.error("rotation_target", f"{self.rotation_target} is not one of eigen_indices",
                             ", ".join(map(str, self.eigen_indices)))
        if n_train is not None:
            for s in self.sizes:
                if s > n_train:
                    raise self.error("sizes", f"{s} exceeds the {n_train} training examples", f"2..{n_train}")
            for k in self.energy_ks:
                if k > n_train:
                    raise self.error("energy_ks", f"K={k} exceeds the {n_train} training examples",
                                     f"1..{n_train}")
        for name in ("checkpoint_epochs", "binary_lin_epochs"):
            bad = [e for e in getattr(self, name) if e >= self.epochs]
            if bad:
                raise self.error(name, f"epochs {bad} are not before the end of training ({self.epochs} epochs)",
                                 f"1..{self.epochs - 1}")
        missing = [e for e in self.binary_lin_epochs if e not in self.checkpoint_epochs]
        if missing:
            raise self.error("binary_lin_epochs", f"{missing} are not in checkpoint_epochs",
                             ", ".join(map(str, self.checkpoint_epochs)))
        if "nad" in self.parts:
            shape = self.nad_input_shape()
            d = int(np.prod(shape))
            bad = [j for j in self.nad_indices if j >= d]
            if bad:
                raise self.error("nad_indices", f"{bad} exceed the {d} input dimensions", f"0..{d - 1}")
            make_lenet(shape, self.nad_activation)

    def nad_input_shape(self) -> tuple[int, ...]:
        """Image shape of the NAD tasks: that of the dataset's images (digits: 1×8×8)."""
        return {"digits": (1, 8, 8), "cifar10": (3, 32, 32), "mnist": (1, 28, 28), "kmnist": (1, 28, 28)}.get(
            self.dataset, (1, 8, 8))

    def recipe(self, epochs: int | None = None) -> Recipe:
        """The training recipe shared by networks and linearizations (``epochs``: default ``self.epochs``)."""
        return Recipe(epochs or self.epochs, self.batch_size, self.lr, self.momentum, self.optimizer, self.schedule,
                      self.loss_threshold, self.train_threads)

