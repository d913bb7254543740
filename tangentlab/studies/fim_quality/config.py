"""Configuration of ``fim-quality``: :class:`FimQualityConfig`, its presets, the
representations it compares and the schemas of its tables (``quality``, ``drift``,
``training``)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from ...memory import MemoryBudget
from ..framework.config import Preset, StudyConfig, option
from ..framework.data import DATASETS
from ..framework.models import MODELS, build_model, count_parameters, make_mlp, model_spec, weight_layers

#: Title of the study and of its report.
TITLE = "Quality of Fisher approximations (thesis Figs. 3.3–3.7, 4.2, 4.4c)"
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
#: The Fisher kind of the trace rows of Fig. 3.6 with independent samples (``probe`` = realization).
INDEP = "mc_indep"


def _registered() -> list[str]:
    from ...pmat import NAMES

    return sorted(NAMES)


def _approximations() -> list[str]:
    return [n for n in _registered() if n not in ("implicit", "mixed")]


@dataclass
class FimQualityConfig(StudyConfig):
    """Configuration of ``fim-quality`` (the parts and metrics are described in
    :mod:`tangentlab.studies.fim_quality`)."""

    PRESETS: ClassVar[dict[str, Preset]] = {
        "tiny": Preset("seconds-long smoke run (tests)", {
            "train_steps": 30, "checkpoints": 2, "n_probe": 48, "width": 4, "fim_batch_size": 48,
            "lambdas": (1e-4, 1e-2, 1.0), "n_vectors": 20,
            "drift_hidden": (12, 12), "drift_steps": 12, "recompute_every": 4, "drift_eval_size": 96,
            "drift_batch_size": 32, "trace_realizations": 3, "ntk_pairs": 2, "ntk_per_class": 15,
            "decor_splits": 2}),
        "paper": Preset("thesis scale: ResNet-50 (BN-free, A.3 init) on TinyImageNet, implicit reference, GPU", {
            "dataset": "tinyimagenet", "model": "resnet50", "width": 64, "device": "cuda", "dtype": "float32",
            "reference": "implicit", "representations": PAPER_REPRESENTATIONS, "train_steps": 20000,
            "batch_size": 128, "lr": 0.05, "checkpoints": 5, "n_probe": 1000, "fim_batch_size": 50,
            "checkpoint_every": 1000, "drift_hidden": (256, 256, 256, 256), "drift_steps": 1000,
            "recompute_every": 100, "drift_eval_size": 1000, "drift_batch_size": 200,
            "ntk_per_class": 50}, needs_gpu=True),
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
    trace_realizations: int = option(5, "independent Monte-Carlo realizations of each approximation's trace, "
                                     "against the exact-expectation trace (Fig. 3.6; 0: skip)", min=0)
    # part 3 (Fig. 3.7)
    ntk: bool = option(True, "NTK kernel PCA of class-difference functions at the checkpoints (Fig. 3.7)")
    ntk_pairs: int = option(5, "class pairs (c1, c2), drawn with the seed: the realizations of Fig. 3.7", min=1)
    ntk_per_class: int = option(40, "held-out examples of each class of a pair (thesis: 50; digits has ≥ 43)",
                                min=2)
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
    decor_splits: int = option(4, "disjoint parts of the evaluation batch on which the decorrelation in the KFE "
                               "is measured (Fig. 4.2 left; the realizations of its claims)", min=1)
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
        if self.ntk and self.dataset == "digits" and self.ntk_per_class > 43:
            raise self.error("ntk_per_class", f"{self.ntk_per_class} exceeds the 43 held-out digits of the "
                             "smallest class", "2..43")
        if self.drift and self.drift_eval_size // self.decor_splits < 2:
            raise self.error("decor_splits", f"{self.decor_splits} parts of {self.drift_eval_size} examples "
                             "leave fewer than 2 per part", f"1..{self.drift_eval_size // 2}")
        if self.drift:
            layers = weight_layers(make_mlp(64, self.drift_hidden, 10, "sigmoid"))
            if self.spectrum_layer and self.spectrum_layer not in layers:
                raise self.error("spectrum_layer", f"no Linear layer {self.spectrum_layer!r} in the drift MLP",
                                 ", ".join(layers))
            if self.recompute_every > self.drift_steps:
                raise self.error("recompute_every", f"{self.recompute_every} exceeds drift_steps "
                                 f"({self.drift_steps})", f"1..{self.drift_steps}")
