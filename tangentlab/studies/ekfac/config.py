"""Configuration of ``ekfac``: :class:`EkfacConfig`, its presets, the methods compared, the
schemas of its tables (``search``, ``curves``, ``spectrum``, ``ewc``) and the keys that name a
run in them (:func:`period_tag`, :func:`selection_key`)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from ..framework.config import ConfigError, Preset, StudyConfig, option
from ..framework.store import to_number

#: Title of the study and of its report.
TITLE = "EKFAC, EKFAC-ra and KFAC as optimizers (thesis §4.4: Figs. 4.3, 4.4, 4.5) and an EWC demo"

KRON_METHODS = ("ekfac", "ekfac_ra", "kfac", "kfac_every")
FIRST_ORDER = ("sgd", "adam")
METHODS = KRON_METHODS + FIRST_ORDER
DATASETS = ("digits", "mnist", "cifar10")
CNN_MODELS = ("cnn", "vgg11", "resnet34")

SEARCH_COLUMNS = ["task", "method", "period", "kind", "lr", "damping", "best_train_loss", "final_train_loss",
                  "diverged", "seconds"]
SEARCH_KEY = ["task", "method", "period", "lr", "damping"]
CURVE_COLUMNS = ["task", "method", "period", "seed", "epoch", "step", "time_s", "cpu_s", "train_loss", "val_loss",
                 "val_acc"]
CURVE_KEY = ["task", "method", "period", "seed", "epoch"]
SPECTRUM_COLUMNS = ["step", "approximation", "distance", "rel_distance", "diag_rel_error", "trace_ratio"]
SPECTRUM_APPROXIMATIONS = ("kfac", "ekfac", "ekfac_ra", "kfe_optimum")
SPECTRUM_KEY = ["step", "approximation"]
EWC_COLUMNS = ["seed", "penalty", "strength", "acc_a_before", "acc_a_after", "acc_b_after", "forgetting"]
EWC_KEY = ["seed", "penalty", "strength"]
EWC_PENALTIES = ("none", "diag", "kfac", "ekfac")

MNIST_FILE = "mnist.npz (arrays x_train, y_train, x_test, y_test, as in keras.datasets)"
CIFAR_DIR = "cifar-10-batches-py (data_batch_1..5, test_batch: the python version of CIFAR-10)"


@dataclass
class EkfacConfig(StudyConfig):
    """Configuration of ``ekfac`` (the parts are described in :mod:`tangentlab.studies.ekfac`)."""

    PRESETS: ClassVar[dict[str, Preset]] = {
        "tiny": Preset("seconds-long smoke run (tests)", {
            "ae_hidden": (6,), "batch_size": 300, "epochs": 2, "search_epochs": 1, "lrs": (0.3,),
            "dampings": (0.1,), "first_order_lrs": (0.1,), "n_random": 0, "n_seeds": 2, "period": 2,
            "periods": (5,), "cnn_width": 2, "cnn_batch_size": 400, "cnn_epochs": 1, "cnn_search_epochs": 1,
            "spectrum_layer": "2", "spectrum_steps": 3, "spectrum_eval": 32, "ewc_epochs": 1,
            "ewc_strengths": (10.0,), "ewc_hidden": (8,), "checkpoint_every": 1}),
        "mnist": Preset("thesis §4.4.1: 784-1000-500-250-30 auto-encoder on MNIST (data_dir/mnist.npz), GPU", {
            "dataset": "mnist", "ae_hidden": (1000, 500, 250, 30, 250, 500, 1000), "batch_size": 500,
            "epochs": 40, "search_epochs": 20, "lrs": (0.1, 0.01, 0.001, 0.0001),
            "dampings": (0.1, 0.01, 0.001, 0.0001), "n_random": 20, "period": 100, "periods": (20, 50, 100, 200),
            "device": "cuda", "dtype": "float32", "spectrum_layer": "6", "spectrum_steps": 500,
            "spectrum_eval": 1000, "cnn": False, "ewc": False}, needs_gpu=True),
        "cifar-vgg11": Preset("thesis §4.4.2: BN-free VGG11 on CIFAR-10 (data_dir), SUA, period 500, GPU", {
            "dataset": "cifar10", "cnn_model": "vgg11", "autoencoder": False, "spectrum": False, "ewc": False,
            "cnn_batch_size": 500, "cnn_epochs": 100, "cnn_search_epochs": 10, "period": 500, "device": "cuda",
            "dtype": "float32", "n_random": 4}, needs_gpu=True),
        "cifar-resnet34": Preset("thesis Fig. 4.6: BN-free ResNet34 (A.3 init) on CIFAR-10, period 500, GPU", {
            "dataset": "cifar10", "cnn_model": "resnet34", "autoencoder": False, "spectrum": False, "ewc": False,
            "cnn_batch_size": 500, "cnn_epochs": 100, "cnn_search_epochs": 10, "period": 500, "device": "cuda",
            "dtype": "float32", "n_random": 4, "methods": ("ekfac_ra", "kfac", "sgd")}, needs_gpu=True),
    }

    threads: int = option(1, "torch intra-op threads (0: torch's default; 1 is fastest for these small models, "
                          "and far faster on a loaded machine)", min=0)
    dataset: str = option("digits", "data of the auto-encoder and CNN parts", choices=DATASETS)
    data_dir: str = option("", "folder with mnist.npz or cifar-10-batches-py (nothing is downloaded)")
    dtype: str = option("float64", "dtype of models and optimizers", choices=("float64", "float32"))
    methods: tuple[str, ...] = option(METHODS, "optimizers compared", choices=METHODS)
    kron_damping: str = option("factored", "damping of KFAC (π-factored Tikhonov) and EKFAC (appendix A.4), "
                               "or plain ε", choices=("factored", "plain"))
    ra_decay: float = option(0.75, "EKFAC-ra running-average decay α", min=0.0, max=0.999)
    momentum: float = option(0.9, "momentum of SGD", min=0.0, max=0.999)
    period: int = option(20, "steps between eigenbasis / factor recomputations (amortized methods)", min=1)
    # search
    lrs: tuple[float, ...] = option((1.0, 0.3, 0.1), "learning-rate grid of the KFAC family", min=0.0)
    dampings: tuple[float, ...] = option((1.0, 0.1, 0.01), "damping grid of the KFAC family", min=1e-12)
    first_order_lrs: tuple[float, ...] = option((1.0, 0.3, 0.1, 0.03, 0.01, 0.003),
                                                "learning-rate grid of SGD and Adam", min=0.0)
    n_random: int = option(1, "random (η, ε) perturbations around each of the two best grid points", min=0)
    n_seeds: int = option(5, "seeds of the final runs and of the EWC demo (claims: means over seeds with "
                          "Student-t intervals of paired per-seed differences)", min=1)
    checkpoint_every: int = option(5, "epochs between checkpoints of a training run", min=1)
    # part 1
    autoencoder: bool = option(True, "run part 1 (auto-encoder)")
    ae_hidden: tuple[int, ...] = option((32, 16, 8, 16, 32), "hidden widths of the auto-encoder", min=1)
    batch_size: int = option(200, "minibatch size of the auto-encoder (thesis: 200 or 500)", min=2)
    epochs: int = option(100, "epochs of the final auto-encoder runs (100 × 7 steps at batch 200 on digits; at 25 "
                         "epochs every method but the EKFAC family is still on the initial plateau)", min=1)
    search_epochs: int = option(0, "epochs of each search run (0: epochs, i.e. selection on the best training "
                                "loss of a full-length run, as in the thesis)", min=0)
    periods: tuple[int, ...] = option((5, 20, 80), "recompute periods of the period study", min=1)
    # part 2
    cnn: bool = option(True, "run part 2 (CNN)")
    cnn_model: str = option("cnn", "classifier of part 2", choices=CNN_MODELS)
    cnn_width: int = option(8, "channels of the small CNN", min=1)
    conv_mode: str = option("sua", "KFAC/EKFAC for convolutions: sua or kfc", choices=("sua", "kfc"))
    cnn_batch_size: int = option(100, "minibatch size of part 2", min=2)
    cnn_epochs: int = option(8, "epochs of the final CNN runs", min=1)
    cnn_search_epochs: int = option(0, "epochs of each CNN search run (0: cnn_epochs)", min=0)
    # part 3
    spectrum: bool = option(True, "run part 3 (spectrum tracking, Fig. 4.4c)")
    spectrum_layer: str = option("6", "module path of the tracked Linear layer of the auto-encoder")
    spectrum_steps: int = option(120, "training steps tracked", min=1)
    spectrum_eval: int = option(0, "training examples of the exact empirical Fisher and of the fixed KFE "
                                "(0: the whole training set)", min=0)
    # part 4
    ewc: bool = option(True, "run part 4 (EWC continual-learning demo)")
    ewc_hidden: tuple[int, ...] = option((32,), "hidden widths of the EWC classifier", min=1)
    ewc_epochs: int = option(15, "epochs (Adam) on each task", min=1)
    ewc_strengths: tuple[float, ...] = option((100.0,), "penalty strengths λ", min=0.0)
    ewc_penalties: tuple[str, ...] = option(EWC_PENALTIES, "Fisher representations of the penalty",
                                            choices=EWC_PENALTIES)
    similar_tol: float = option(0.1, "relative gap under which validation losses count as similar", min=0.0)
    much_closer: float = option(0.5, "spectrum tracking: 'much closer' = mean distance at most this fraction of "
                                "KFAC's", min=0.0)
    cost_ratio: float = option(1.5, "every-step KFAC 'much more costly': CPU time per step at least this multiple "
                               "of amortized KFAC's", min=1.0)

    def validate(self) -> None:
        if self.dataset in ("mnist", "cifar10"):
            check_data(self.dataset, self.data_dir)
        if self.dataset == "cifar10":
            if self.autoencoder or self.spectrum or self.ewc:
                raise self.error("dataset", "cifar10 only serves part 2 (CNN); set autoencoder, spectrum and ewc "
                                 "to false", "digits, mnist")
            if self.cnn_model == "cnn":
                raise self.error("cnn_model", "the small CNN is for 8×8 digits", "vgg11, resnet34")
        elif self.cnn and self.cnn_model != "cnn":
            raise self.error("cnn_model", f"{self.cnn_model!r} needs dataset cifar10", "cnn")
        if self.dataset == "mnist" and self.cnn:
            raise self.error("cnn", "part 2 runs on digits or cifar10, not mnist", "false")
        n_train = {"digits": 1347, "mnist": 60000, "cifar10": 50000}[self.dataset]
        if self.spectrum_eval == 1:
            raise self.error("spectrum_eval", "an empirical Fisher needs at least 2 examples", f"0 (all), 2..{n_train}")
        for name in ("batch_size", "cnn_batch_size", "spectrum_eval"):
            if getattr(self, name) > n_train:
                raise self.error(name, f"{getattr(self, name)} exceeds the {n_train} training examples",
                                 f"2..{n_train}")
        if self.autoencoder or self.spectrum:
            if len(self.ae_hidden) < 1:  # pragma: no cover - nonempty
                raise self.error("ae_hidden", "needs at least one hidden layer", "widths >= 1")
            layers = [str(2 * i) for i in range(len(self.ae_hidden) + 1)]
            if self.spectrum and self.spectrum_layer not in layers:
                raise self.error("spectrum_layer", f"no Linear layer {self.spectrum_layer!r} in the auto-encoder",
                                 ", ".join(layers))
        if self.spectrum and "ekfac" not in self.methods:
            raise self.error("methods", "spectrum tracking trains with ekfac: include it or set spectrum=false",
                             ", ".join(METHODS))
        if not any(m in self.methods for m in KRON_METHODS):
            raise self.error("methods", "needs at least one of the KFAC family", ", ".join(KRON_METHODS))


def check_data(dataset: str, data_dir: str) -> None:
    """Refuse a paper-scale dataset whose files are not in ``data_dir`` (nothing is downloaded)."""
    need = MNIST_FILE if dataset == "mnist" else CIFAR_DIR
    if not data_dir:
        raise ConfigError("data_dir", f"dataset {dataset!r} needs data_dir (nothing is downloaded)", need)
    root = Path(data_dir)
    path = root / ("mnist.npz" if dataset == "mnist" else "cifar-10-batches-py")
    if not path.exists():
        raise ConfigError("data_dir", f"{data_dir!r} has no {path.name}", need)


def period_tag(method: str, period: int) -> int:
    """The ``period`` column of a run: 1 for ``kfac_every``, 0 for SGD/Adam, else ``period``."""
    return 1 if method == "kfac_every" else (0 if method in FIRST_ORDER else period)


def nan_inf(v: float) -> float:
    """``v``, with NaN (a diverged run) read as ``inf``."""
    return math.inf if not math.isfinite(v) else v


def selection_key(r: dict[str, str]) -> tuple[bool, float, float]:
    """Order of search rows: runs that did not diverge first, then by the best training loss
    reached during training, then the smaller learning rate."""
    return (r["diverged"] == "true", nan_inf(to_number(r["best_train_loss"])), to_number(r["lr"]))
