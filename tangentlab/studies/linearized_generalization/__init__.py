"""``tangentlab run linearized-generalization``: what linearized networks say about generalization.

Reproduces at CPU scale Ortiz-Jiménez, Moosavi-Dezfooli & Frossard, "What can linearized neural
networks actually say about generalization?" (NeurIPS 2021). Every network has one output; networks and their
linearizations (:class:`tangentlab.linearize.Linearized`, forward-mode products) are trained
with the same recipe (:func:`.tasks.train_binary`: SGD, momentum 0.9, learning rate
decayed linearly to 0, logistic loss on ±1 labels, same minibatch order) from the same ``θ₀``.

* **eigen** (Figs. 2, 3, 13, 14): NTK Gram ``K₀ = J Jᵀ`` at initialization on the support
  (train + test inputs, float64), eigenvectors ``u_j`` (0-based, decreasing eigenvalue);
  targets ``sign(φ_j)``; network vs linearization: test accuracy, epochs/iterations to a
  training loss below ``loss_threshold``, ``‖θ_T − θ₀‖`` (and its square), cosine distance.
* **nad** (Figs. 4, 10): NADs of a GeLU LeNet (Theorem 1, :mod:`tangentlab.analysis.anisotropy`),
  predicted alignments ``α(g_{v_j}) = s_j²``, a Monte-Carlo check of Theorem 1, and the
  linearly separable tasks of eq. 5 along ``v_j``: network vs linearization accuracy.
* **size** (Fig. 5): first half of the classes vs the second half, stratified training
  subsets of growing size (and the synthetic XOR task ``sign(x₁x₂)``): test accuracy and
  distance to init, network vs linearization.
* **energy** (Figs. 6–9, 15, 16, Table 1): energy concentration ``E_K = ‖Φ_K y‖/‖y‖`` of the
  training labels on the top-``K`` eigenvectors of the training Gram of the network's NTK at
  checkpoints (half-classes task and the ``sign(φ_target)`` task); alignment ``α_T(φ_j)`` of
  ``K₀``'s eigenvectors under the final kernel vs ``α_0(φ_j) = λ_j`` (single-axis rotation);
  unbiased linearizations ``(θ − θ_t)ᵀ∇f_{θ_t}(x)`` at checkpoints ``θ_t`` trained on the
  same task (Figs. 8, 9).
* **lemma** (Lemma 1): ``‖f‖²_Θ = fᵀK⁺f ≥ ‖f‖⁴₂/α(f) = (fᵀf)²/(fᵀKf)`` on the support for
  eigenfunction targets, the half-classes labels, random labels and eigenvectors (equality),
  plus the identity ``α(u_j) = ‖Jᵀu_j‖² = λ_j`` through a backward product (no Gram).

Replicates: ``seeds`` (default 0, 1, 2) repeats the eigen, nad and energy parts, each seed with its
own ``θ₀`` (hence ``K₀`` and its eigenfunction tasks), NAD LeNet, eq. 5 samples and minibatch orders;
``size_seeds`` repeats part size. Every finding is decided on the 95 % Student-t interval of a per-seed
statistic against the pass criterion the spec digest states for its CPU-scale analogue (quoted in the
claim); Lemma 1, ``α(u_j) = λ_j`` and the Monte-Carlo check of Theorem 1 are identities (seed 0).

Presets: ``tiny`` (tests); ``paper`` / ``paper-lenet`` (CIFAR-10 read from ``data_dir``, a 12,000-point
Gram support, GPU; refused otherwise). The ResNet-18 is the shared BN-free one
(:func:`tangentlab.studies.framework.models.make_resnet`), so no BatchNorm statistics need
freezing; the paper's uses BN.

Results: ``tables/results.csv`` (one row per part × setting × index × model × metric),
``tables/curves.csv`` (per-epoch training curves), ``tables/arrays.csv`` (spectra, NAD
images, alignments); the figures and the claims in ``report.html``. A killed run resumes:
finished training units are skipped, ``θ₀``, the eigenvectors and the rotation checkpoints
are reloaded from ``checkpoints/``.

Modules: :mod:`.config` (options, presets, table schemas), :mod:`.setup` (data, θ₀, K₀'s spectrum),
:mod:`.run` (the :class:`LinearizedGeneralization` study), :mod:`.claims` and :mod:`.figures` (the
report, from the stored tables only; :mod:`.claims_energy` for E5–E8, :mod:`.verdicts` for the table reader
and how a verdict is reached), :mod:`.tasks` (models, binary tasks, the training recipe).
"""

from .config import LinGenConfig
from .run import LinearizedGeneralization

__all__ = ["LinGenConfig", "LinearizedGeneralization"]
