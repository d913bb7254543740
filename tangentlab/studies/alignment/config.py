"""Configuration of the ``alignment`` study: :class:`AlignmentConfig` (options, presets,
validation) and the schemas of its tables.

Tables (tidy, append-only): ``probes`` (run × step × probe × metric × layer), ``training``
(run × step × metric), ``spectra`` (full eigenvalue lists), ``eigenfunctions`` (disk grid
eigenvectors), ``pca`` (kernel-PCA coordinates at a few steps), ``probe_labels`` (labels of the
probe examples); ``supernat`` (item 6); ``complexity`` and ``complexity_trace`` (item 7);
``limit_width`` (distance to the infinite-width NTK at initialization, :mod:`.limit`; its
distances during training are ``probes`` rows) and ``limit_skipped`` (why that part did not run).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..framework.config import Preset, StudyConfig, option
from ..framework.data import check_dataset
from ..framework.models import MODELS, VGG_CONFIGS
from .models import model_layout
from .vit import VIT_BLOCKS

TITLE = "Neural feature alignment during training (paper 000 / thesis ch. 6)"
ITEMS = (1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11)
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

#: item 6 (:mod:`.supernat`): one row per seed × method × recorded step; the SuperNat rescalings κ.
SUPERNAT_TABLE = "supernat"
SUPERNAT_KEY = ["seed", "method", "step"]
SUPERNAT_COLUMNS = [*SUPERNAT_KEY, "train_mse", "test_mse", "signal_alignment", "signal_stretch", "bound_gd",
                    "bound_opt", "trace_K"]
KAPPAS = ("fixed", "trace", "max")

#: item 7 (:mod:`.complexity`): one row per finished (width, noise, seed) run with every measure, and
#: its trajectory (partial sums of C at log-spaced steps); the baseline measures compared with C.
COMPLEXITY_TABLE = "complexity"
COMPLEXITY_TRACE_TABLE = "complexity_trace"
COMPLEXITY_KEY = ["width", "noise", "seed"]
BASELINES = ("params", "l2", "dist_init", "spectral_product", "frobenius_product", "path_norm", "bartlett",
             "neyshabur2018", "fisher_rao")
COMPLEXITY_COLUMNS = [*COMPLEXITY_KEY, "params", "n_train", "epochs", "steps", "reached", "train_loss", "train_acc",
                      "test_loss", "test_acc", "gap", "margin", "C", "C_norm", "C_code", *BASELINES[1:], "trK_final",
                      "trK_closed_form", "seconds"]
COMPLEXITY_TRACE_COLUMNS = [*COMPLEXITY_KEY, "step", "epoch", "batch_loss", "trK", "dw", "C_partial"]
COMPLEXITY_TRACE_KEY = [*COMPLEXITY_KEY, "step"]
#: items 8 (B.1): the top singular directions averaged in the ratio (hierarchy_dirs is at least this).
TOP_DIRS = 10


@dataclass
class AlignmentConfig(StudyConfig):
    """Configuration of ``alignment`` (the items are described in :mod:`tangentlab.studies.alignment`)."""

    PRESETS: ClassVar[dict[str, Preset]] = {
        "tiny": Preset("seconds-long smoke run (tests)", {
            "items": (1, 2, 3, 4, 6, 8, 9, 10, 11),
            "width": 16, "depth": 3, "train_steps": 40, "n_probe": 12, "batch_size": 50,
            "lr": 0.05, "schedule_base": 1.6, "ks": (2, 5), "noise": (0.0, 0.5), "hier_subset": 10,
            "n_pca": 2, "disk_n": 40, "disk_width": 12, "disk_depth": 2, "disk_steps": 30, "disk_grid": 8,
            "disk_eigen": 3, "disk_snapshots": 3, "ablation_depths": (2, 3), "ablation_width": 12,
            "ablation_lrs": (0.02, 0.05), "ablation_seeds": 1, "ablation_steps": 20,
            "complexity_widths": (8, 16), "complexity_noise": (0.0, 0.5), "complexity_seeds": 1,
            "complexity_target_loss": 0.3, "complexity_max_epochs": 3, "complexity_n_train": 200,
            "supernat_n_train": 20, "supernat_dim": 5, "supernat_steps": 50, "supernat_seeds": 3,
            "limit_widths": (16, 64), "limit_seeds": 2, "limit_n": 12, "noise_seeds": 2, "hier_seeds": 2,
            "disk_seeds": 2,
            # appendix parts (items 8-11), reduced
            "appendix_seeds": 2, "hierarchy_hidden": (16,), "hierarchy_epochs": 2, "hierarchy_n": 10,
            "hierarchy_dirs": 10, "bias_width": 32, "bias_depth": 3, "bias_points": 20, "capacity_points": 200,
            "capacity_features": 100, "capacity_n": 20, "capacity_subsamples": 10,
            "capacity_scales": (0.0, 0.5, 1.0), "channel_widths": (2, 4, 8), "channel_seeds": 1,
            "channel_n_train": 40, "channel_max_epochs": 2, "channel_probe": 5, "channel_batch_size": 20}),
        "transformer": Preset("items 2-3 with a small ViT (2x2 patches of the 8x8 digits, 2 GPT-style encoder "
                               "blocks of width 32, 4 heads) instead of the MLP: spectra, effective rank, CKA with "
                               "the labels, per-layer and per-block (attention, feed-forward) CKA; one seed per run "
                               "(its claims have no interval); a few minutes, one torch thread", {
            "items": (2, 3), "model": "vit", "width": 32, "vit_patch": 2, "vit_blocks": 2, "vit_heads": 4,
            "vit_hidden": 64, "lr": 0.02, "train_steps": 1000, "schedule_base": 1.4, "n_probe": 100,
            "noise": (0.0, 0.5), "noise_seeds": 1, "threads": 1}),
        "transformer-tiny": Preset("seconds-long smoke run of the transformer preset (tests)", {
            "items": (2, 3), "model": "vit", "width": 8, "vit_patch": 4, "vit_blocks": 1, "vit_heads": 2,
            "vit_hidden": 16, "lr": 0.05, "train_steps": 30, "batch_size": 50, "schedule_base": 1.6,
            "n_probe": 10, "ks": (2, 5), "n_pca": 2, "noise": (0.0, 0.5), "noise_seeds": 1}),
        "ablation": Preset("item 5: depth and learning-rate ablations (Figs. 13, 14), 3 seeds, CPU, about 8 CPU-"
                           "minutes", {
            "items": (5,), "ablation_seeds": 3}),
        "supernat": Preset("item 6: SuperNat vs GD on the noisy linear regression (Fig. 5), CPU", {
            "items": (6,), "supernat_n_train": 50, "supernat_dim": 10, "supernat_noise": 0.1,
            "supernat_steps": 3000, "supernat_seeds": 20}),
        "appendix": Preset("the appendix parts at full size: B.1 Jacobian hierarchy (item 8), B.2 spectral bias "
                           "(item 9), B.3 norm capacity (item 10) with 5 seeds, and the VGG channel sweep of the "
                           "complexity measure (item 11, paper Fig. 6 right), CPU, under 15 minutes on 2 cores", {
            "items": (8, 9, 10, 11), "appendix_seeds": 5, "threads": 1}),
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

    items: tuple[int, ...] = option((1, 2, 3, 4, 6, 7), "items of paper 000 to run (5: ablations, 6: SuperNat, "
                                    "7: complexity measure, 8-10: appendix B.1 Jacobian hierarchy, B.2 spectral "
                                    "bias, B.3 norm capacity, 11: VGG channel sweep of the complexity measure; the "
                                    "default leaves 5 and 8-11 to the 'ablation' and 'appendix' presets to stay "
                                    "under 5 minutes)", choices=ITEMS)
    # items 2-5: data, model, optimizer
    dataset: str = option("digits", "dataset of items 2-5", choices=DATASETS)
    data_dir: str = option("", "folder with the MNIST IDX files / CIFAR-10 python batches (nothing is downloaded)")
    max_per_class: int = option(0, "training examples per class to keep (0: all; mnist, cifar10)", min=0)
    model: str = option("mlp", "model of items 2-5 (vgg11/vgg19: BN-free VGG for 32x32 CIFAR-10; vit: small "
                        "vision transformer, options vit_*)", choices=lambda: [*MODELS, *VGG_CONFIGS, "vit"])
    width: int = option(80, "hidden width of the MLP (base width of a CNN/ResNet; token width of the ViT)", min=1)
    depth: int = option(6, "Linear layers of the MLP (hidden layers = depth - 1)", min=2)
    vit_patch: int = option(2, "ViT: side of the square patches (divides the image side)", min=1)
    vit_blocks: int = option(2, "ViT: encoder blocks", min=1)
    vit_heads: int = option(4, "ViT: attention heads (divide width)", min=1)
    vit_hidden: int = option(0, "ViT: feed-forward width (0: 2*width)", min=0)
    vit_block: str = option("gpt", "ViT block: gpt (nn.Linear projections around scaled_dot_product_attention) "
                            "or torch (nn.TransformerEncoderLayer)", choices=VIT_BLOCKS)
    lr: float = option(0.02, "SGD learning rate (items 2-4)", min=0.0)
    momentum: float = option(0.9, "SGD momentum", min=0.0, max=1.0)
    batch_size: int = option(100, "minibatch size", min=1)
    train_steps: int = option(1500, "SGD steps of each run of items 2-4", min=1)
    schedule: str = option("thesis", "probe steps: thesis (0 and 5*floor(base^k)) or decade (round(10^(k/10)))",
                           choices=("thesis", "decade"))
    schedule_base: float = option(1.5, "growth factor of the thesis schedule (thesis: 1.15; 1.5: 16 probe steps "
                                  "in 1500, which keeps 3-4 seeds of each run within the main job's budget)",
                                  min=1.01)
    n_probe: int = option(100, "examples of the train and the test probe batches (kernel (N*C)^2)", min=2)
    centering: str = option("examples", "kernel centering: examples (per output), full (N*C rows) or none",
                            choices=("examples", "full", "none"))
    ks: tuple[int, ...] = option((40, 80, 160), "trace ratios T_k highlighted (out of N*C)", min=1)
    n_pca: int = option(3, "kernel-PCA components stored", min=0)
    pca_snapshots: int = option(4, "probe steps whose kernel-PCA coordinates are stored", min=0)
    noise: tuple[float, ...] = option((0.0, 0.5), "fractions of random labels (items 2-3)", min=0.0, max=1.0)
    noise_seeds: int = option(3, "items 2-3: seeds of each label-noise run (run noise_<p> is seed 0, noise_<p>_s<k> "
                              "seed k); the claims are decided on the interval over the seeds", min=1)
    # item 4
    hier_random_fraction: float = option(0.2, "item 4(a): fraction of training labels made random", min=0.0,
                                         max=1.0)
    hier_other_fraction: float = option(0.1, "item 4(b): fraction of the training set replaced by the other task",
                                        min=0.0, max=1.0)
    hier_subset: int = option(100, "item 4: easy and difficult training examples in each CKA probe", min=2)
    hier_seeds: int = option(4, "item 4: seeds of each run (hier_<kind> is seed 0, hier_<kind>_s<k> seed k)", min=1)
    # item 1
    disk_n: int = option(200, "item 1: training points of the disk task", min=4)
    disk_width: int = option(64, "item 1: hidden width", min=1)
    disk_depth: int = option(5, "item 1: hidden layers", min=1)
    disk_lr: float = option(0.05, "item 1: gradient-descent learning rate", min=0.0)
    disk_steps: int = option(2000, "item 1: full-batch gradient-descent steps", min=1)
    disk_grid: int = option(30, "item 1: grid resolution (kernel of size grid^2)", min=4)
    disk_eigen: int = option(6, "item 1: eigenfunctions shown", min=1)
    disk_snapshots: int = option(5, "item 1: iterations shown in the eigenfunction figure", min=2)
    disk_seeds: int = option(3, "item 1: seeds (data and initialization; run disk is seed 0, disk_s<k> seed k; "
                             "eigenfunctions stored for seed 0)", min=1)
    # item 5
    ablation_depths: tuple[int, ...] = option((2, 4, 6, 8), "item 5: depths (Linear layers) of the depth ablation",
                                              min=2)
    ablation_width: int = option(60, "item 5: width of the depth ablation", min=1)
    ablation_lrs: tuple[float, ...] = option((0.005, 0.02), "item 5: learning rates of the lr ablation", min=0.0)
    ablation_seeds: int = option(2, "item 5: seeds per setting", min=1)
    ablation_steps: int = option(1500, "item 5: SGD steps per run", min=1)
    # distance to the infinite-width limit (tangentlab.studies.alignment.limit), with items 2-3
    limit: bool = option(True, "distance of the NTK to its infinite-width limit (tangentlab.limits): at "
                         "initialization across limit_widths, and at every probe step of the label-noise runs "
                         "(runs with items 2-3; skipped for a model without a limit rule, e.g. the vit)")
    limit_widths: tuple[int, ...] = option((64, 128, 256, 512, 1024), "limit: hidden widths of the model at "
                                           "initialization (depth as the model's)", min=1)
    limit_seeds: int = option(3, "limit: initializations per width", min=1)
    limit_n: int = option(100, "limit: test examples of the kernels at initialization (kernel (N*C)^2)",
                          min=2)
    # item 7 (tangentlab.studies.alignment.complexity). Defaults: the sweeps of paper 000 Fig. 6 (widths
    # 16-1024; noise 0-0.6 at width 256; cross-entropy target 0.01) on all 1347 digits training examples,
    # 3 seeds (the width sweep's gaps differ by less than the seed noise): 7 settings x 3 seeds = 21 runs
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
    complexity_lr: float = option(0.05, "item 7: SGD learning rate (paper 000 Fig. 6: 0.05)", min=1e-8)
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
    supernat_seeds: int = option(10, "item 6: independent draws of the regression problem (preset supernat: 20)",
                                 min=1)
    supernat_n_test: int = option(2000, "item 6: test points (clean targets)", min=1)
    supernat_kappas: tuple[str, ...] = option(("fixed", "trace"), "item 6: SuperNat isotropic rescalings kappa "
                                              "(fixed: kappa of step 0; trace: Tr K kept; max: lambda_max kept)",
                                              choices=KAPPAS)
    supernat_records: int = option(60, "item 6: log-spaced steps recorded per run", min=2)
    # items 8-11: appendix B.1-B.3 and the VGG channel sweep (modules appendix_hierarchy, spectral_bias,
    # norm_capacity, channel_sweep); always on digits / generated data, whatever `dataset` says
    appendix_seeds: int = option(3, "items 8-9: seeds (initializations) of B.1 and B.2", min=1)
    hierarchy_hidden: tuple[int, ...] = option((64, 64), "item 8 (B.1): hidden widths of the digits MLP", min=1)
    hierarchy_epochs: int = option(10, "item 8 (B.1): training epochs (paper: 10)", min=0)
    hierarchy_lr: float = option(0.05, "item 8 (B.1): SGD learning rate (momentum 0.9, batch 100)", min=0.0)
    hierarchy_n: int = option(100, "item 8 (B.1): test examples of the Jacobian (N*C rows)", min=1, max=450)
    hierarchy_dirs: int = option(50, "item 8 (B.1): singular and random directions each (paper: 50)", min=TOP_DIRS)
    hierarchy_eps: float = option(0.1, "item 8 (B.1): length of the parameter perturbation", min=1e-12)
    bias_width: int = option(256, "item 9 (B.2): width of the random MLP (paper: 256)", min=1)
    bias_depth: int = option(6, "item 9 (B.2): Linear layers of the random MLP (paper: 6)", min=2)
    bias_points: int = option(50, "item 9 (B.2): equally spaced points of [0, 1] (paper: 50)", min=20)
    capacity_points: int = option(1000, "item 10 (B.3): points N of [-a, a] (paper: 1000)", min=20)
    capacity_features: int = option(1000, "item 10 (B.3): random Fourier features P (paper: 1000)", min=10)
    capacity_range: float = option(3.0, "item 10 (B.3): half-width a of the interval (unspecified in the paper)",
                                   min=1e-6)
    capacity_n: int = option(50, "item 10 (B.3): training subsample size n (paper: 50)", min=2)
    capacity_subsamples: int = option(100, "item 10 (B.3): training subsamples (paper: 100)", min=2)
    capacity_scales: tuple[float, ...] = option((0.0, 0.25, 0.5, 0.75, 1.0), "item 10 (B.3): feature scalings c "
                                                "(0: whitened, 1: original)", min=0.0, max=1.0)
    channel_widths: tuple[int, ...] = option((4, 8, 16), "item 11: VGG11 base widths (channels of the first conv)",
                                             min=1)
    channel_seeds: int = option(2, "item 11: seeds per width", min=1)
    channel_n_train: int = option(300, "item 11: digits training examples", min=10, max=DIGITS_TRAIN)
    channel_lr: float = option(0.02, "item 11: SGD learning rate (momentum 0.9)", min=1e-8)
    channel_batch_size: int = option(50, "item 11: minibatch size", min=1)
    channel_target_loss: float = option(0.01, "item 11: train until the full-train cross-entropy is below this "
                                        "(paper: 0.01)", min=1e-6)
    channel_max_epochs: int = option(100, "item 11: epoch limit per run", min=1)
    channel_probe: int = option(20, "item 11: training examples on which Tr K is estimated", min=1)
    channel_trace_every: int = option(6, "item 11: re-evaluate Tr K every this many SGD steps", min=1)

    # ---- validation -----------------------------------------------------------------------------
    def validate(self) -> None:
        if self.model in VGG_CONFIGS and self.dataset != "cifar10":
            raise self.error("model", f"{self.model} needs 32x32 CIFAR-10 images, not {self.dataset!r}",
                             "mlp, cnn (digits); mlp (mnist); mlp, resnet18/34/50, vgg11, vgg19 (cifar10)")
        layout = model_layout(self.model)
        if 7 in self.items and self.dataset != "digits":
            raise self.error("dataset", f"item 7 (complexity measure) runs on digits only, not {self.dataset!r}",
                             "digits, or items without 7")
        if self.dataset == "digits":
            if layout != "flat" and self.model not in ("cnn", "vit"):
                raise self.error("model", f"model {self.model!r} does not fit 8x8 digits", "mlp, cnn, vit")
        else:
            check_dataset(self.dataset, layout, self.data_dir)
        if self.model == "vit":
            self.validate_vit()
        n_train = self.n_train_estimate()
        for name in ("n_probe", "batch_size"):
            if getattr(self, name) > n_train:
                raise self.error(name, f"{getattr(self, name)} exceeds the {n_train} training examples",
                                 f"1..{n_train}")
        for name in ("n_probe", "limit_n"):
            if self.dataset == "digits" and getattr(self, name) > 1797 - DIGITS_TRAIN:
                raise self.error(name, f"{getattr(self, name)} exceeds the {1797 - DIGITS_TRAIN} test examples",
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
        if 10 in wants and self.capacity_n >= self.capacity_points:
            raise self.error("capacity_n", f"{self.capacity_n} is not below capacity_points={self.capacity_points}",
                             f"2..{self.capacity_points - 1}")
        if 11 in wants and max(self.channel_batch_size, self.channel_probe) > self.channel_n_train:
            raise self.error("channel_batch_size", "channel_batch_size and channel_probe must not exceed "
                             f"channel_n_train={self.channel_n_train}", f"1..{self.channel_n_train}")
        r = self.n_probe * 10  # every dataset here has 10 classes
        if wants & {2, 3, 5} and max(self.ks) > r:
            raise self.error("ks", f"T_{max(self.ks)} needs more than the {r} = n_probe*10 kernel rows", f"1..{r}")

    def validate_vit(self) -> None:
        """The ViT's patches tile the image, its heads divide the width, and item 5 (whose depth
        ablation varies the MLP's ``depth``) is not asked for."""
        side = {"digits": 8, "mnist": 28, "cifar10": 32}[self.dataset]
        if side % self.vit_patch:
            divisors = [p for p in range(1, side + 1) if side % p == 0]
            raise self.error("vit_patch", f"{self.vit_patch}x{self.vit_patch} patches do not tile the {side}x{side} "
                             f"{self.dataset} images", ", ".join(map(str, divisors)))
        if self.width % self.vit_heads:
            raise self.error("vit_heads", f"{self.vit_heads} heads do not divide width={self.width}",
                             "a divisor of width")
        if 5 in self.items:
            raise self.error("items", "item 5's depth ablation varies the MLP depth, which the vit does not have",
                             "items without 5, or model=mlp")

    def model_kwargs(self) -> dict[str, object]:
        """The keyword arguments of :func:`.models.make_model` beyond the width and depth (the ViT's)."""
        if self.model != "vit":
            return {}
        return {"patch": self.vit_patch, "blocks": self.vit_blocks, "heads": self.vit_heads,
                "hidden": self.vit_hidden, "block": self.vit_block}

    @property
    def model_label(self) -> str:
        """The model of items 2-5 in words, for the report (``MLP 6x80`` for the MLP)."""
        if self.model == "mlp":
            return f"MLP {self.depth}x{self.width}"
        if self.model == "vit":
            return (f"ViT ({self.vit_patch}x{self.vit_patch} patches, {self.vit_blocks} {self.vit_block} block"
                    f"{'s' if self.vit_blocks > 1 else ''} of width {self.width}, {self.vit_heads} heads, "
                    f"feed-forward {self.vit_hidden or 2 * self.width})")
        return self.model

    def n_train_estimate(self) -> int:
        """Training examples of items 2-5 (exact for digits; per-class limit for the others)."""
        if self.dataset == "digits":
            return DIGITS_TRAIN
        full = 60000 if self.dataset == "mnist" else 50000
        return min(full, 10 * self.max_per_class) if self.max_per_class else full

    @property
    def centering_mode(self) -> str | None:
        return None if self.centering == "none" else self.centering

