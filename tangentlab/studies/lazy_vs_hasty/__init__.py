"""``tangentlab run lazy-vs-hasty``: linearized ("lazy") vs non-linear ("hasty") training (thesis ch. 5).

Every comparison trains the *same* initialization ``θ₀`` in several regimes with
:class:`~tangentlab.linearize.AlphaScaled` ``f^α = f_{θ₀} + α(f_θ − f_{θ₀})`` and learning rate
``η/α²`` (``α = 1``: standard, ``α = 100``: ≈ linearized, ``α = 0.5``: more adaptive), on the same
minibatch sequence, and compares groups of examples **at equal training progress** (the first
probe at which the monotone progress variable — cumulative minimum of a training loss — crosses
each threshold; :mod:`tangentlab.analysis.linearity`).

Parts (``parts``):

1. ``toy`` (Fig. 5.1): yin-yang task, ``toy_n`` points, MLP 2-60-60-60-1 (ReLU, float64),
   full-batch GD on the binary cross-entropy, ``toy_seeds`` seeds, α = 1 vs 100. At each
   training-loss milestone the per-point loss on a ``toy_grid²`` grid of ``[−1, 1]²``;
   ``Δloss = loss_{α=1} − loss_{α=100}`` averaged over seeds (negative: the non-linear run is better).
2. ``cscores`` (Fig. 5.2 top): C-scores of the digits training set estimated by their definition
   (:func:`.data.estimate_cscores`, cached in ``tables/cscores.csv``), ten equal-size deciles,
   loss and accuracy per decile against the mean training loss for α = 1 vs 100.
3. ``noise`` (Fig. 5.2 bottom): 15 % of the training labels moved to a different class; loss on
   clean examples, on noisy examples (noisy labels) and on the test set against the clean loss.
4. ``lr`` (App. C.5, Fig. C.1, "the learning rate is not α"): the label-noise setting with α = 1
   at ``lr × lr_factors`` and α-scaled runs at lr/α² (one α with the smallest factor's step size),
   ``lr_seeds`` seeds, each run stopped at clean loss ``min(lr_milestones)``; noisy/test loss and
   the linearity metrics compared at the clean-loss milestones (:mod:`.learning_rate`,
   :mod:`.learning_rate_report`).
5. ``spurious`` (Fig. 5.3): binary digits with a synthetic spurious patch agreeing with the label
   on 90 % of the training set; α ∈ {0.5, 1, 100}; loss/accuracy with and without the spurious
   agreement on a balanced training subset and a balanced test set, against the loss of the
   balanced subset's majority ("with spurious") examples (the thesis plots w/o- against
   with-spurious accuracy). ``spurious_dataset = waterbirds | celeba`` reads the real datasets from
   ``data_dir`` (:func:`.data.spurious_images`: ``image_size²`` RGB, MLP on the flattened pixels or
   the BN-free ResNet-18; balanced subsets of ``balanced_per_group`` per (label, spurious) group).
6. ``quadratic`` (§5.4, Fig. 5.4, Fig. C.9): closed forms (5.4.5)/(5.4.6) against numerical gradient
   flow, examples 1–3, and the dense 2-layer linear network with α = 0.1 vs 10.

The three linearity metrics (ReLU sign similarity, ``KA(K_t, K_0)``, last-layer representation
alignment) are measured on ``n_linearity`` held-out examples at every ``linearity_every``-th
probe of parts 2–4 (part lr: at each clean-loss milestone). Probes fire when the minibatch loss
crosses ``L₀·0.96^k`` (authors' code).

Results: ``tables/curves.csv`` (tidy probes: part, seed, alpha, probe, step, group, metric,
value), ``tables/toy_maps.csv``, ``tables/milestones.csv``, ``tables/cscores.csv``,
``tables/quadratic.csv``, ``tables/quadratic_checks.csv``, ``tables/lr_curves.csv``,
``tables/units.csv`` (finished work
units: a killed run resumes at the first unfinished unit).

Modules: :mod:`.config` (options, presets, table schemas), :mod:`.run` (the :class:`LazyVsHasty`
study), :mod:`.claims` and :mod:`.figures` (the report, from the stored tables only),
:mod:`.data` (datasets) and :mod:`.quadratic` (the quadratic model and its 2-layer counterpart).
"""

from .config import LazyVsHastyConfig
from .run import LazyVsHasty

__all__ = ["LazyVsHasty", "LazyVsHastyConfig"]
