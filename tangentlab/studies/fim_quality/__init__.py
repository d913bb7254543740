"""``tangentlab run fim-quality``: how good are the Fisher approximations?

Reproduces, at CPU scale, thesis Figs. 3.3–3.6 (NNGeometry showcase, §3.4.1), Fig. 3.7 (the
NTK's kernel PCA, §3.4.2) and the EKFAC experiments Fig. 4.2 (left: decorrelation in the KFE;
right: drift) and Fig. 4.4c (spectrum tracking).

**Part 1 — quality (Figs. 3.3–3.6).** A small CNN (no BatchNorm) is trained on digits
with SGD. At ``checkpoints`` log-spaced steps (0 included) a float64 copy of the model
gives, on ``n_probe`` training examples, the exact Fisher ``F`` (``reference``: dense,
or implicit for big models) and its approximations ``F̂`` (``representations``: Diag,
QuasiDiag, BlockDiag, KFAC, EKFAC), for each ``fisher_kinds``: the Monte-Carlo Fisher
with ``mc_samples`` labels per example, as in the thesis, and the exact expectation.
``F`` and every ``F̂`` are built with the same ``seed`` and batch size, so they see the
same sampled labels. For ``n_vectors`` random unit vectors ``v = z/‖z‖``:

* ``mv_cos`` = cos(Fv, F̂v) and ``mv_residual`` = ‖Fv − F̂v‖/‖Fv‖ (Fig. 3.4);
* ``vTMv_rel_err`` = |vᵀF̂v − vᵀFv| / |vᵀFv| (Fig. 3.5);
* for ``λ = ρ·tr(F)/P`` with ``ρ`` in ``lambdas``: ``v' = (F̂ + λI)⁻¹(F + λI)v``,
  ``solve_cos`` = cos(v, v') and ``solve_residual`` = ‖v − v'‖/‖v'‖ (Fig. 3.3), with
  KFAC/EKFAC solved exactly and (``solve_methods``) with factored damping;

and per matrix ``trace_rel_err`` (Fig. 3.6) and ``fro_rel_err`` = ‖F − F̂‖_F/‖F‖_F. Since
shared samples make the traces of Diag, QuasiDiag, BlockDiag and EKFAC exact by construction
(an identity), Fig. 3.6's findings use ``trace_realizations`` further draws (``fisher =
mc_indep``): each approximation on independent Monte-Carlo labels against the trace of the
exact-expectation Fisher, as in the thesis.

**Part 3 — NTK kernel PCA (Fig. 3.7).** At the same checkpoints, for ``ntk_pairs`` class
pairs drawn with the seed, the NTK Gram of ``f_c2 − f_c1`` on ``ntk_per_class`` held-out
examples of each class, its cosine normalization and its first 2 kernel principal components
(:mod:`.ntk_pca`; tables ``ntk``, ``ntk_points``, ``ntk_gram``).

**Part 2 — drift (Figs. 4.2 right, 4.4c).** A sigmoid MLP is trained on digits with
SGD (float64). The reference is the *empirical* Fisher's layer blocks on a fixed
evaluation batch of ``drift_eval_size`` training examples, recomputed at every step.
Every ``recompute_every`` steps KFAC's factors and EKFAC's eigenbasis are recomputed on
that batch (so at those steps ‖F_l − EKFAC_l‖ ≤ ‖F_l − KFAC_l‖ is Theorem 2); in between
KFAC is kept as is and EKFAC's ``s*`` is re-estimated every step, one EKFAC per
``sstar_data`` entry: ``eval`` (approximation ``ekfac``: on the evaluation batch, so only
the basis is stale) and ``minibatch`` (approximation ``ekfac_mb``: on the step's training
minibatch, as in Algorithm 1, with its sampling noise). At the first and last step, the
off-diagonal share of each layer's empirical Fisher block in the parameter basis and in the
KFE (Fig. 4.2 left, :mod:`.decorrelation`; tables ``decorrelation``, ``decorrelation_block``),
on the evaluation batch and on ``decor_splits`` disjoint parts of it. Tracked: ``fro_rel_err`` per
layer (``basis=amortized``), and, with a basis computed once at step 0 and kept
(``basis=fixed``), the ℓ2 distance between the sorted eigenvalues of the exact block
of ``spectrum_layer`` and those of KFAC (fixed factors) and EKFAC (``s*`` updated
every step).

Results: ``tables/quality.csv``, ``tables/drift.csv``, ``tables/training.csv``, the tables of
parts 3 and 4.2 left (tidy),
the figures and the claims table in ``report.html``.

Modules: :mod:`.config` (configuration, table schemas), :mod:`.run` (the study and its
parts), :mod:`.metrics` (the measures), :mod:`.ntk_pca` and :mod:`.decorrelation` (Figs. 3.7
and 4.2 left), :mod:`.claims` (results reader, part 1 claims), :mod:`.claims_parts` (the
other parts' claims), :mod:`.figures` and :mod:`.figures_parts` (figures and report).
"""

from .config import FimQualityConfig
from .run import FimQuality

__all__ = ["FimQuality", "FimQualityConfig"]
