"""Configuration of the ``compression`` study: :class:`CompressionConfig`, its presets and the
schemas of its tables.

Tables: ``runs`` (one row per model, p, seed), ``trajectory`` (Λ(t), fitted fraction),
``kernels`` (kernel-learning test errors), ``spectra`` (eigenvalue, ω_r², cumulative, MI per
mode).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from ..framework.config import Preset, StudyConfig, option
from .data import STRIPE_X_MAX, STRIPE_X_MIN, check_mnist, n_images

TITLE = "Geometric compression of invariant manifolds (paper 004): stripe (d = 5, 10) and cylinder models"
MODELS = ("stripe", "cylinder", "stripe_hd")
#: Seed offsets of the network initializations per model (stripe and cylinder as before stripe_hd existed).
MODEL_SEED = {"stripe": 0, "cylinder": 1, "stripe_hd": 2}
RUN_COLUMNS = ["model", "d", "d_par", "p", "seed", "t_star", "lambda_star", "lambda_max", "lambda_final",
               "t_final", "steps", "fitted_final", "stop", "test_error", "lazy_error", "lazy_converged",
               "compressed_error", "compressed_converged", "wall_s"]
RUN_KEY = ["model", "p", "seed"]
FP_COLUMNS = ["seed", "neuron", "z1", "z_perp", "lam", "norm", "lambda_star", "t_star"]
FP_KEY = ["seed", "neuron"]
ALPHA_COLUMNS = ["alpha", "seed", "t_star", "lambda_star", "lambda_max", "test_error", "lazy_error", "steps", "stop",
                 "wall_s"]
ALPHA_KEY = ["alpha", "seed"]
TRAJ_COLUMNS = ["model", "p", "seed", "step", "t", "lambda", "fitted"]
TRAJ_KEY = ["model", "p", "seed", "step"]
KERNEL_COLUMNS = ["model", "p", "seed", "kernel", "test_error", "steps", "converged"]
KERNEL_KEY = ["model", "p", "seed", "kernel"]
SPECTRA_COLUMNS = ["model", "p", "seed", "kernel", "r", "eigenvalue", "omega2", "cumulative", "mi"]
SPECTRA_KEY = ["model", "p", "seed", "kernel", "r"]
KERNELS = ("ntk_init", "ntk_final", "last_init", "last_final")
#: Tolerance of the Λ* ∝ √p claim: |fitted slope − 1/2| ≤ SLOPE_TOL.
SLOPE_TOL = 0.15
#: Tolerance of "fitted exponents near the predictions" (pre-asymptotic effects at CPU-scale p).
EXPONENT_TOL = 0.2
#: "Compressed lazy ≈ feature" (§3.1, Fig. 2): the paper gives no number for "closely matches"; tested as
#: median errors within this factor of each other at every p (and exponents within EXPONENT_TOL).
MATCH_FACTOR = 2.0
#: Fixed points (Fig. 3c): share of the amplified neurons within FP_WINDOW of a predicted attractor of their
#: λ sign ("all neuron vectors converge", less those not yet at their fixed point at t*, the paper's own caveat),
#: and the least share each of the three attractors must hold.
FP_SHARE = 0.8
FP_MIN_SHARE = 0.05
#: α-scan (App. B, Fig. 11): large-α error within this factor of the frozen-kernel error; Λ* at the largest α
#: in [1 − LAMBDA_ONE_TOL, 1 + LAMBDA_ONE_TOL]; t* ∝ 1/α slope in [−1 − T_SLOPE_TOL, −1 + T_SLOPE_TOL]; R² of
#: t* vs ln(1/α) at small α ≥ LOG_R2; plateau: Λ* at the two smallest α within PLATEAU_FACTOR.
LAZY_FACTOR = 1.5
LAMBDA_ONE_TOL = 0.1
T_SLOPE_TOL = 0.2
LOG_R2 = 0.95
PLATEAU_FACTOR = 1.33

#: Curves of the CNN part: the network and kernel learning with each frozen kernel.
CNN_CURVES = ("network", "ntk_init", "ntk_final", "last_init", "last_final")
#: The paper's measured MNIST exponents (Fig. 8 triangles: −1/2 for the network, −1/3 for the initial NTK).
CNN_PAPER_BETA = {"network": 0.5, "ntk_final": 0.5, "ntk_init": 0.3}
CNN_NAMES = {"network": "network (feature)", "ntk_init": "initial NTK", "ntk_final": "final NTK",
              "last_init": "initial last-layer kernel", "last_final": "final last-layer kernel"}


@dataclass
class CompressionConfig(StudyConfig):
    """Configuration of ``compression`` (see :mod:`tangentlab.studies.compression`)."""

    PRESETS: ClassVar[dict[str, Preset]] = {
        "tiny": Preset("seconds-long smoke run (tests)", {
            "width": 40, "p_values": (32, 64), "cylinder_p_values": (32, 64), "seeds": 2, "n_test": 300,
            "max_steps": 400, "ntk_p": 64, "stop_fraction": 0.6, "n_modes": 5, "cnn_width": 1, "cnn_p": 64,
            "cnn_p_values": (32, 64), "cnn_steps": 30, "cnn_n_test": 300, "lambda_seeds": 1,
            "lambda_p_values": (128,), "stripe_hd_p_values": (32, 64), "fp_p": 1000, "fp_width": 100,
            "fp_seeds": 2, "alpha_values": (1e-6, 1e-2, 1e2, 1e4), "alpha_p": 64, "alpha_seeds": 2}),
        "mnist": Preset("the CNN part only, on MNIST parity with the paper's 16-conv MnasNet-like CNN (h = 10); "
                        "needs the MNIST IDX files in data_dir and a GPU", {
            "models": ("stripe",), "p_values": (128, 256), "seeds": 1, "ntk_p": 0, "cnn_dataset": "mnist",
            "fixed_points": False, "alpha_scan": False,
            "cnn_width": 10, "cnn_p": 1024, "cnn_p_values": (128, 256, 512, 1024, 2048, 4096), "cnn_seeds": 3,
            "cnn_n_test": 10000, "cnn_steps": 5000, "device": "cuda"},
            needs_gpu=True),
        "paper": Preset("paper scale: h = 10⁴, p up to 8192, 20 seeds, all margins met, GPU", {
            "width": 10000, "p_values": (128, 256, 512, 1024, 2048, 4096, 8192),
            "cylinder_p_values": (128, 256, 512, 1024, 2048, 4096, 8192), "seeds": 20, "n_test": 10000,
            "stripe_hd_p_values": (128, 256, 512, 1024, 2048, 4096, 8192), "lambda_p_values": (),
            "alpha_d": 10, "alpha_p": 1000, "alpha_width": 10000, "alpha_seeds": 5, "fp_width": 10000,
            "alpha_values": (1e-16, 1e-12, 1e-8, 1e-6, 1e-4, 1e-2, 1.0, 1e2, 1e4, 1e8),
            "stop_fraction": 1.0, "max_steps": 1_000_000, "max_dgrad": 1e-4, "ntk_p": 1024, "device": "cuda"},
            needs_gpu=True),
    }

    threads: int = option(1, "torch intra-op threads (the study's matrices are small: more threads only spin)",
                          min=0)
    models: tuple[str, ...] = option(MODELS, "data models studied", choices=MODELS)
    stripe_d: int = option(5, "input dimension of the stripe model", min=2)
    interfaces: tuple[float, ...] = option((STRIPE_X_MIN, STRIPE_X_MAX),
                                           "x₁ of the stripe interfaces (default: the single stripe)")
    stripe_hd_d: int = option(10, "input dimension of the higher-dimensional stripe model stripe_hd (Fig. 2 and "
                              "Fig. 5: d = 5 and d = 10)", min=2)
    stripe_hd_p_values: tuple[int, ...] = option((128, 256, 512, 1024), "training-set sizes of stripe_hd",
                                                 min=10)
    cylinder_d: int = option(3, "input dimension of the cylinder model", min=2)
    cylinder_d_par: int = option(2, "informative dimensions d_∥ of the cylinder", min=1)
    p_values: tuple[int, ...] = option((128, 256, 512, 1024), "training-set sizes of the stripe model", min=10)
    cylinder_p_values: tuple[int, ...] = option((128, 256, 512, 1024), "training-set sizes of the cylinder model",
                                                min=10)
    seeds: int = option(5, "seeds per (model, p); medians are reported", min=1)
    lambda_seeds: int = option(15, "extra seeds per (model, p) trained only up to t* (Λ* only: cheap, and Λ* "
                               "varies ~3× with the training set); default: seeds + lambda_seeds = 20, the paper's "
                               "median over 20 realizations (Fig. 5)", min=0)
    lambda_p_values: tuple[int, ...] = option((2048, 4096, 8192), "larger training-set sizes with Λ*-only runs "
                                              "(every seed trained up to t*, both models): they extend the Λ* vs p "
                                              "fit beyond the pre-asymptotic p ≤ 1024 for a few seconds each",
                                              min=10, nonempty=False)
    n_test: int = option(4000, "test points", min=10)
    width: int = option(250, "hidden neurons h", min=1)
    alpha: float = option(1e-6, "network scale α of F = α(f − f₀) (feature regime: α ≪ 1)", min=1e-300)
    max_dgrad: float = option(1e-3, "integrator: largest relative gradient change per step", min=0.0)
    max_dout: float = option(0.5, "integrator: largest change of a training output per step, relative to "
                             "max(1, |F|)", min=1e-12)
    dt_min: float = option(0.5, "integrator: step (in units of h) below which the dgrad rule is waived", min=0.0)
    stop_fraction: float = option(0.9, "stop when this fraction of margins y F ≥ 1 is met (paper: 1)",
                                  min=0.11, max=1.0)
    max_steps: int = option(10000, "largest number of accepted gradient steps per run (the default runs reach "
                            "90 % of the margins in 700-2700 steps)", min=1)
    lazy: bool = option(True, "lazy regime: kernel learning with the initial NTK")
    compressed_lazy: bool = option(True, "lazy regime on data compressed by the run's Λ*")
    kernel_solver: str = option("svc", "kernel learning: svc (the theory's kernel SVC) or hinge_gd (the paper's "
                                "hinge kernel gradient descent, slow for ill-conditioned kernels)",
                                choices=("svc", "hinge_gd"))
    svc_C: float = option(1e4, "SVC regularization C on the kernel normalized by its mean diagonal",  # noqa: N815
                          min=1e-12)
    kernel_max_steps: int = option(200_000, "largest number of hinge kernel-GD steps", min=1)
    ntk_p: int = option(512, "p of the NTK-signature runs (one of p_values; 0: none)", min=0)
    ntk_models: tuple[str, ...] = option(("stripe",), "models with NTK signatures", choices=MODELS)
    n_modes: int = option(10, "top eigenvectors whose label information is measured", min=1)
    mi_k: int = option(5, "k of the k-NN mutual-information estimator", min=1)
    checkpoint_every: int = option(500, "training steps between resume checkpoints", min=1)
    # fixed points of the compressing regime (§3.2.1, Fig. 3)
    fixed_points: bool = option(True, "train the stripe network up to t* and compare its neurons' z₁ with the "
                                "predicted attractors (Fig. 3c)")
    fp_d: int = option(2, "input dimension of the fixed-point runs (paper: 2)", min=2)
    fp_p: int = option(10000, "training-set size of the fixed-point runs (paper: 10 000)", min=10)
    fp_width: int = option(500, "hidden neurons of the fixed-point runs (paper: 10⁴)", min=1)
    fp_seeds: int = option(3, "seeds of the fixed-point runs", min=1)
    fp_lambda_min: float = option(5.0, "neurons with |λ_n| above this count as amplified (compressed)", min=0.0)
    fp_window: float = option(0.1, "a neuron sits at an attractor when |z₁ − z*| ≤ this", min=0.0)
    # α-scan (App. B, Fig. 11)
    alpha_scan: bool = option(True, "scan the network scale α from the feature to the lazy regime (Fig. 11)")
    alpha_values: tuple[float, ...] = option((1e-8, 1e-6, 1e-4, 1e-2, 1.0, 1e2, 1e4), "network scales α of the "
                                             "scan (paper: 10⁻¹⁶ … 10⁸)", min=1e-300)
    alpha_d: int = option(5, "input dimension of the α-scan (paper: 10; CPU scale: 5)", min=2)
    alpha_p: int = option(256, "training-set size of the α-scan (paper: 1000; CPU scale: 256)", min=10)
    alpha_width: int = option(250, "hidden neurons of the α-scan (paper: 10⁴)", min=1)
    alpha_seeds: int = option(3, "seeds of the α-scan (paper: 5)", min=1)
    # CNN on digit parity (§5.2)
    cnn: bool = option(True, "also train the MnasNet-like CNN on digit parity and compare its NTKs")
    cnn_dataset: str = option("digits", "digit images of the CNN part: digits (sklearn 8x8, shipped) or mnist "
                              "(IDX files in data_dir)", choices=("digits", "mnist"))
    data_dir: str = option("", "folder of the MNIST IDX files (cnn_dataset = mnist)")
    cnn_width: int = option(2, "width h of the MnasNet-like CNN (paper: 10)", min=1)
    cnn_p_values: tuple[int, ...] = option((64, 128, 256, 512), "training-set sizes of the CNN (each with an "
                                           "independent kernel set of the same size): learning curves of the network "
                                           "and of kernel learning with its initial and final NTKs", min=10)
    cnn_p: int = option(256, "p of the CNN's NTK-signature claims and figure (one of cnn_p_values)", min=10)
    cnn_seeds: int = option(5, "seeds of the CNN part (data split and initialization) per p; medians reported",
                            min=1)
    cnn_n_test: int = option(0, "test images of the CNN part, the same for every p (0: all images left after the "
                             "largest p's training and kernel sets)", min=0)
    cnn_alpha: float = option(2e-3, "α of the CNN predictor (paper: 2e-3)", min=1e-300)
    cnn_steps: int = option(1000, "largest number of full-batch gradient steps of the CNN (it stops earlier when "
                            "stop_fraction of the margins are met)", min=1)
    cnn_lr: float = option(1.0, "initial step of the CNN's full-batch gradient descent on the α-normalized loss "
                           "(then adapted: ×1.1, or halved when an output moves by more than max_dout)", min=1e-12)
    cnn_loss_beta: float = option(3.0, "β of the CNN's soft hinge softplus_β(1 − yF)/α (paper: 3)", min=1e-6)

    def validate(self) -> None:
        if self.cylinder_d_par >= self.cylinder_d:
            raise self.error("cylinder_d_par", f"{self.cylinder_d_par} informative dimensions need cylinder_d > "
                             f"{self.cylinder_d_par}", f"1..{self.cylinder_d - 1}")
        for name in ("p_values", "cylinder_p_values", "stripe_hd_p_values", "lambda_p_values", "alpha_values"):
            vals = getattr(self, name)
            if len(set(vals)) != len(vals):
                raise self.error(name, f"repeated values in {list(vals)}",
                                 "distinct positive numbers" if name == "alpha_values" else "distinct integers ≥ 10")
        both = sorted(set(self.lambda_p_values) & set(self.p_values + self.cylinder_p_values
                                                       + self.stripe_hd_p_values))
        if both:
            raise self.error("lambda_p_values", f"{both} also in p_values/cylinder_p_values/stripe_hd_p_values "
                             "(those sizes already have full runs)", "sizes without full runs")
        if self.ntk_p:
            pools = {"stripe": self.p_values, "cylinder": self.cylinder_p_values}
            for m in self.ntk_models:
                if m in self.models and self.ntk_p not in pools[m]:
                    field_ = "p_values" if m == "stripe" else "cylinder_p_values"
                    raise self.error("ntk_p", f"{self.ntk_p} is not one of {field_} {list(pools[m])}",
                                     "0, " + ", ".join(map(str, pools[m])))
            if self.n_modes > self.ntk_p:
                raise self.error("n_modes", f"{self.n_modes} modes exceed ntk_p = {self.ntk_p}",
                                 f"1..{self.ntk_p}")
            if 2 * self.mi_k > self.ntk_p:
                raise self.error("mi_k", f"k = {self.mi_k} neighbours per label need ntk_p ≥ {2 * self.mi_k}",
                                 f"1..{self.ntk_p // 2}")
        if self.cnn:
            if self.cnn_dataset == "mnist":
                check_mnist(self.data_dir)
            n = n_images(self.cnn_dataset)
            vals = self.cnn_p_values
            if len(set(vals)) != len(vals):
                raise self.error("cnn_p_values", f"repeated values in {list(vals)}", "distinct integers ≥ 10")
            if 2 * max(vals) + max(self.cnn_n_test, 1) > n:
                raise self.error("cnn_p_values", f"2·max(cnn_p_values) + cnn_n_test = "
                                 f"{2 * max(vals) + self.cnn_n_test} exceeds the {n} images of {self.cnn_dataset!r}",
                                 f"values ≤ {(n - max(self.cnn_n_test, 1)) // 2}")
            if self.n_modes > min(vals) or 2 * self.mi_k > min(vals):
                raise self.error("cnn_p_values", f"{min(vals)} is below n_modes = {self.n_modes} or 2·mi_k = "
                                 f"{2 * self.mi_k}", f"values ≥ {max(self.n_modes, 2 * self.mi_k)}")
            if self.cnn_p not in vals:
                raise self.error("cnn_p", f"{self.cnn_p} is not one of cnn_p_values {list(vals)}",
                                 ", ".join(map(str, vals)))
        if "stripe" in self.models and len(self.interfaces) == 0:  # pragma: no cover - nonempty
            raise self.error("interfaces", "no interface", "a list of x₁ values")

    def dims(self, model: str) -> tuple[int, int]:
        """``(d, d_∥)`` of a data model."""
        if model == "stripe_hd":
            return self.stripe_hd_d, 1
        return (self.stripe_d, 1) if model == "stripe" else (self.cylinder_d, self.cylinder_d_par)

    def ps(self, model: str) -> tuple[int, ...]:
        """Training-set sizes of the full runs of a data model."""
        return {"stripe": self.p_values, "stripe_hd": self.stripe_hd_p_values}.get(model, self.cylinder_p_values)

