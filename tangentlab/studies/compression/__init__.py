"""``tangentlab run compression``: geometric compression of invariant manifolds (paper 004).

Paccolat, Petrini, Geiger, Tyloo & Wyart, "Geometric compression of invariant manifolds
in neural nets", at CPU scale.

Modules: :mod:`.config` (configuration, presets, table schemas), :mod:`.data` (the data
models), :mod:`.training` (feature-regime gradient descent), :mod:`.models` (the MnasNet-like
CNN), :mod:`.theory` (the closed-form fixed points of Eq. 6), :mod:`.run` (the study's run) and
:mod:`.experiments` (its fixed-point and α-scan parts), :mod:`.claims`, :mod:`.claims_extra`,
:mod:`.figures` and :mod:`.figures_extra` (the report).

Every claim carries the paper's statement (figure / equation), the criterion tested and a value
with a 95 % interval over seeds (seed bootstrap for fitted exponents, resampling the seeds at
each p jointly for the metrics of one seed; Student t for per-seed differences and ratios);
it is ``inconclusive`` when the interval straddles the threshold.

**Data** (:mod:`.data`): the single-stripe model (d = ``stripe_d``; and ``stripe_hd``, the same
in the paper's higher dimension d = ``stripe_hd_d`` = 10 at ``stripe_hd_p_values``; label
``−1`` for ``−0.3 < x₁ < 1.18549``; other interfaces via ``interfaces``) and the
cylinder model (d = ``cylinder_d``, label ``+1`` for ``‖x_∥‖ > R``, d_∥ = ``cylinder_d_par``),
Gaussian inputs, ``p`` training points (each of ``p_values``), an independent kernel set of
size p and ``n_test`` test points, for ``seeds`` seeds.

**Feature regime** (:mod:`.training`, :mod:`tangentlab.analysis.compression`): the network of Eq. (1)
(width ``width``, σ = √2 ReLU, N(0, 1) init) with the predictor ``F = α (f − f₀)``,
α = ``alpha``, trained by full-batch gradient descent on the α-normalized hinge loss in
the paper's time ``t`` (Eq. 2: ``dW/dt = −∇L``, learning rate = ``dt``; times are reported in
units of h). ``dt`` is adapted by the paper's integrator rule: a step is accepted when the
relative gradient change ``‖g − g'‖²/(‖g‖‖g'‖) < max_dgrad`` and no training output moves by
more than ``max_dout·max(1, |F_μ|)``; ``dt ×1.1`` when both are below half, ``÷10`` and
retry otherwise. Two deviations from the released code, both needed on CPU: the gradient
is discontinuous (ReLU kinks, the hinge), so below ``dt_min·h`` the ``dgrad`` rule is
waived (``dout`` still applies; without it ``dt`` collapses to zero after t*), and the
``dout`` bound is relative for outputs beyond the margin scale 1.
``t*`` is the first time more than 10 % of the training points have ``y F ≥ 1``; training
stops when a fraction ``stop_fraction`` of the margins is met (1 = the paper's "all
margins") or after ``max_steps`` steps. Recorded: ``Λ(t)`` (Eq. 9, the d_∥ > 1 form for the
cylinder) at log-spaced steps, ``Λ* = Λ(t*)``, ``Λ_max``, and the test error of the net.

**Lazy regime** (α → ∞): kernel learning with the frozen NTK of ``f₀`` (``tl.ntk`` of the
width-h network): by default the kernel SVC of the lazy-regime theory (:func:`kernel_svc`,
``kernel_solver = svc``), or the paper's hinge kernel gradient descent until all margins
are met (:func:`hinge_kernel_gd`, ``kernel_solver = hinge_gd``; its step count explodes for
ill-conditioned kernels such as the rank-≤h last-layer kernel). **Compressed lazy**: the
same on data with ``x_⊥ → x_⊥/Λ*`` (the run's own Λ*).

**NTK signatures** (§5), at ``p = ntk_p``: on the kernel set, the NTK and the last-layer
kernel (NTK restricted to ``β``) at initialization and after training: eigenvalues, label
projections ``ω_r² = (v_r·y)²/p`` (cumulative: :func:`~tangentlab.analysis.label_energy`),
the k-NN mutual information (bits) of the top ``n_modes`` eigenvectors with the label,
and the test error of hinge kernel learning with each frozen kernel.

``lambda_seeds`` extra seeds per (model, p) are trained only up to t*: Λ* is set by the
training set (its spread between seeds is ~3×) and costs ~100 steps. The
training-set sizes of ``lambda_p_values`` get only such runs (every seed): Λ* ∝ √p is an
asymptotic law and p ≤ 1024 alone is pre-asymptotic (median stripe Λ* 6.9, 11.6, 19, 37 at
p = 128…1024: local slopes 0.76–0.95, flattening to 0.4–0.6 beyond 1024).

**CNN** (§5.2, ``cnn = true``): the 16-convolution MnasNet-like CNN (NTK parameterization,
normalized swish, mean-field output; width ``cnn_width``) on digit parity (scikit-learn
digits by default; MNIST IDX files with the ``mnist`` preset), α = ``cnn_alpha``, soft hinge
``softplus_β(1 − yF)/α``, full-batch gradient descent with the ``dout`` step rule, at each
training-set size of ``cnn_p_values`` and ``cnn_seeds`` seeds (one test set for all p); then
kernel learning with the NTK and the last-layer kernel at initialization and after training
on an independent kernel set of p images, and their label projections / mutual information
(Fig. 8, 9). Learning-curve exponents of the network and of the frozen kernels are fitted
as for the stripe/cylinder models (the paper, on MNIST: β_feature ≈ 0.5 > β_lazy ≈ 0.3).

**Fixed points** (§3.2.1, Fig. 3; ``fixed_points = true``): the zeros of ``G^± = d C_b^± + ζ C₁^±``
(closed form, :mod:`.theory`: three attractors in the single stripe) against the neurons of the
network trained to t* in d = ``fp_d`` = 2 (p = ``fp_p``, h = ``fp_width``, ``fp_seeds`` seeds): share
of the amplified neurons (``|λ_n| > fp_lambda_min``) with ``|z₁ − z*| ≤ fp_window``.

**α-scan** (App. B, Fig. 11; ``alpha_scan = true``): the stripe in d = ``alpha_d`` with
p = ``alpha_p`` trained at each α of ``alpha_values`` (same data and initialization per seed)
and kernel learning with its frozen initial NTK: error, t*, Λ*, Λ_max vs α.

Tables: ``fixed_points`` (per seed and neuron), ``alpha_scan`` (per α and seed), ``runs`` (one row
per model, p, seed), ``trajectory`` (Λ(t), fitted fraction),
``kernels`` (kernel-learning test errors), ``spectra`` (eigenvalue, ω_r², cumulative, MI per
mode). Runs resume unit by unit (a finished ``(model, p, seed)`` is skipped) and inside a
unit from the last training checkpoint.
"""

from .config import CompressionConfig
from .run import Compression
from .training import FeatureRun, train_feature

__all__ = ["Compression", "CompressionConfig", "FeatureRun", "train_feature"]
