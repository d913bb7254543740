"""``tangentlab run ekfac``: EKFAC vs KFAC, SGD and Adam as optimizers (thesis §4.4, CPU scale).

**Part 1 — deep sigmoid auto-encoder** (Figs. 4.3, 4.4a/b). Digits pixels scaled to
``[0, 1]``, an auto-encoder ``64-h₁-…-h_k-64`` (``ae_hidden``; sigmoid hidden layers, untied
weights, logistic outputs) trained on the per-example reconstruction cross-entropy
(summed over pixels, averaged over the minibatch). Methods (``methods``): ``ekfac``
(Algorithm 1, s* from per-example gradients every step), ``ekfac_ra`` (running average,
decay ``ra_decay``), ``kfac`` (amortized: recomputed every ``period`` steps),
``kfac_every`` (the strong baseline: recomputed every step), ``sgd`` (momentum) and
``adam``. KFAC-family methods approximate the empirical Fisher, as in the thesis, with
the damping schemes of :mod:`tangentlab.optim` (``kron_damping``).

Hyperparameters: constant ``η`` and ``ε`` chosen per method on seed ``seed`` by a grid
(``lrs`` × ``dampings``; SGD/Adam: ``first_order_lrs``) plus ``n_random`` random
perturbations (``±0.5`` decade, log-uniform) around the two best grid points, each run as
long as the final runs (``search_epochs``, default ``epochs``); the selection is on the
best *training* loss reached during training (the thesis' criterion), among the runs that
did not diverge. The (η, ε) grid of each KFAC-family method is the sensitivity map
(Fig. 4.3d). The selected hyperparameters are then run for ``epochs`` epochs on
``n_seeds`` seeds (initialization and minibatch order change with the seed; the data
split does not), recording per epoch the training loss (whole training set), the
validation loss and the training time, measured per step both as CPU time of the process
(``time.process_time``, column ``cpu_s``) and as wall time (``time_s``) (Figs. 4.3a–c). The
**wall-clock comparison** (Fig. 4.3b; Fig. 4.5b for the CNN, :mod:`.wallclock`) reads each
method's training loss at a common CPU-time budget per seed (the cheapest run's total) and
decides on per-seed paired gaps with a Student-t interval: CPU time, because on a shared
machine wall time mostly measures the other jobs. The recompute period study
runs ``kfac`` and ``ekfac`` at every ``periods`` value, (η, ε) selected again for each
period (Fig. 4.4a/b).

**Part 2 — small CNN without BatchNorm** on 8×8 digit images (Fig. 4.5 analogue):
the same search / final runs with cross-entropy, convolutions preconditioned with
``conv_mode`` (SUA by default, as in the thesis' CIFAR experiments).

**Part 3 — spectrum tracking** (Fig. 4.4c): the KFE ``Q`` of layer ``spectrum_layer`` (the
4th Linear by default) is computed once at initialization on the evaluation examples
(``spectrum_eval``, default the whole training set) and kept; the auto-encoder is trained
with EKFAC (selected hyperparameters) for ``spectrum_steps`` steps, and at every step the
ℓ2 distance between the sorted eigenvalues of the layer's exact empirical Fisher ``G`` (on
the evaluation examples) and those of KFAC (fixed factors), EKFAC (s* re-estimated on the
step's training minibatch in the fixed basis, as Algorithm 1 does) and EKFAC-ra (running
average of ``N``·(minibatch-mean gradient)² in the fixed basis) is recorded, relative to
the norm of the exact spectrum — together with ``diag(QᵀGQ)``, the true empirical Fisher
projected in the fixed basis (what s* estimates; the best diagonal there), the error of
each diagonal against it, and its trace relative to ``tr G``.

**Part 4 — EWC demo**: an MLP classifier is trained on digits 0–4 (task A), then on
digits 5–9 (task B) with a penalty ``(λ/2)(θ − θ_A)ᵀ F_A (θ − θ_A)``, ``F_A`` the exact
Fisher on task A in each of ``ewc_penalties`` (none, diag, kfac, ekfac; ``λ`` in
``ewc_strengths``); forgetting = accuracy on A's test digits before − after task B.

Claims (:mod:`.claims`): every comparison over the ``n_seeds`` final runs is decided on the
mean of per-seed paired differences (the same seed gives every method the same
initialization and minibatch order) with its Student-t 95% interval (``inconclusive`` when
it straddles the threshold); a claim against several baselines is decided on the binding
one. The thesis states no number for these figures: the criteria say which reading they
test (``similar_tol``, ``much_closer``, ``cost_ratio``).

Results: ``tables/search.csv``, ``curves.csv``, ``spectrum.csv``, ``ewc.csv`` (tidy),
``claims.csv``, figures and the claims table in ``report.html``. Every training run is resumable: rows are
appended per epoch and a checkpoint (model, optimizer, batch stream, RNG) is saved every
``checkpoint_every`` epochs.

Paper-scale presets: ``mnist`` (784-1000-500-250-30 auto-encoder; needs ``data_dir`` with
``mnist.npz`` and a GPU), ``cifar-vgg11`` and ``cifar-resnet34`` (BN-free, appendix A.3
initialization; need ``data_dir`` with ``cifar-10-batches-py`` and a GPU).

Modules: :mod:`.config` (configuration, table schemas), :mod:`.data` (tasks and datasets),
:mod:`.models` (auto-encoder, VGG11, optimizers), :mod:`.run` (the study and its parts),
:mod:`.claims` (results readers and claims), :mod:`.wallclock` (Fig. 4.3b), :mod:`.figures`
(figures and report).
"""

from .config import EkfacConfig
from .run import EkfacStudy

__all__ = ["EkfacConfig", "EkfacStudy"]
