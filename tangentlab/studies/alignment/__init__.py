"""``tangentlab run alignment``: neural feature alignment during training (paper 000, thesis ch. 6).

Items (``items``; default ``1,2,3,4,6,7``):

1. **Disk task eigenfunctions** (Fig. 1): ``disk_n`` points uniform on ``[−1, 1]²``, label
   ``1[‖x‖ < √(2/π)]``; a ReLU MLP ``2 → disk_width×disk_depth → 1`` trained by full-batch
   gradient descent on the binary cross-entropy. At log-spaced steps, the centered NTK on a
   ``disk_grid × disk_grid`` grid (one output, so ``K`` is ``R² × R²``): ``λ_20/λ_1``, effective
   rank, ``CKA(K, y yᵀ)`` with the grid's ±1 labels, and at ``disk_snapshots`` steps the top
   ``disk_eigen`` eigenvectors as images (eigen-index × iteration figure).
2. **Spectrum evolution** (Figs. 2, 14): ``dataset`` (digits by default) with ``model`` (a ReLU
   MLP with ``depth`` Linear layers of ``width`` units), SGD with momentum, for each
   ``noise`` fraction of random labels. At log-spaced steps (``schedule``), on fixed probe
   batches of ``n_probe`` training examples (with their possibly random training labels)
   and ``n_probe`` test examples: the ``(N·C) × (N·C)`` centered NTK's ``λ_max``, mean and
   median eigenvalue, effective rank, trace ratios ``T_k`` (``ks``; full spectrum stored),
   kernel distance to the initial kernel, loss, accuracy, kernel-PCA coordinates.
3. **CKA with the labels** (Figs. 3, 11): on the same runs, ``CKA(K, YYᵀ)`` with the one-hot
   label kernel, overall and per layer, train and test probes.
4. **Hierarchical alignment** (Fig. 4): easy vs difficult examples. (a) a fraction
   ``hier_random_fraction`` of the training labels is replaced by uniform random labels;
   (b) a fraction ``hier_other_fraction`` of the training set is replaced by a harder but
   learnable "other dataset" (``make_classification``). ``CKA(K(S), Y_S Y_Sᵀ)``
   on ``hier_subset`` easy and ``hier_subset`` difficult training examples (their training
   labels), and the ratio ``CKA_easy / CKA_diff``.
5. **Ablations** (Figs. 13, 14; presets): item 4(a) with width ``ablation_width`` and depth in
   ``ablation_depths``; item 2 with learning rate in ``ablation_lrs``; ``ablation_seeds`` seeds each.
6. **SuperNat** (Fig. 5) and 7. **complexity measure** (Fig. 6): computed by
   :mod:`tangentlab.studies.alignment.supernat` and :mod:`tangentlab.studies.alignment.complexity`
   (tables ``supernat`` and ``complexity``), included in this report.

Appendix parts (items 8-11): 8. **Jacobian hierarchy** (thesis Fig. B.1, :mod:`.appendix_hierarchy`):
output change along the top right singular vectors of the Jacobian vs random directions, for a digits
MLP; 9. **spectral bias** (Fig. B.2, :mod:`.spectral_bias`): Fourier content of the NTK eigenvectors of a
random MLP on 1-D points; 10. **which norm measures capacity** (Fig. B.3, :mod:`.norm_capacity`): ℓ2 vs
optimized (Prop. B.2.5) bounds of min-norm interpolators on RBF random features; 11. **VGG channel
sweep** (Fig. 6 right, :mod:`.channel_sweep`): item 7's complexity measure and baselines over the base
width of a BN-free VGG11 on digits upsampled to 32×32. The default preset runs items 8-10 at full size
(``appendix_seeds = 3``, about 25 s CPU on one thread) and not item 11; preset ``appendix`` runs items
8-11 (5 seeds for 8-9); ``tiny`` runs reduced versions of all four.

**Distance to the infinite-width limit** (``limit``, with items 2-3; :mod:`.limit`): the relative
Frobenius distance and the CKA between the empirical NTK and the infinite-width NTK of the same
architecture (:func:`tangentlab.limits.ntk`, standard parameterization) at initialization for the
hidden widths ``limit_widths`` (``limit_seeds`` draws each, ``limit_n`` test examples; expected
log-log slope −1/2), and at every probe step of the label-noise runs against the limit of the
initial network. Skipped, with a note in the report, for a model without a limit rule (the ViT).

Preset ``transformer``: items 2-3 with ``model = "vit"`` (:mod:`.vit`) instead of the MLP: the
8×8 digits cut into ``vit_patch × vit_patch`` patches, a linear patch embedding plus a learned
position embedding, ``vit_blocks`` pre-norm encoder blocks (self-attention with ``vit_heads`` heads,
feed-forward of width ``vit_hidden``, LayerNorm), mean pooling and a linear head. The blocks are
written GPT-style (``nn.Linear`` query/key/value and output projections around
``scaled_dot_product_attention``), so every parameter is in a Linear, LayerNorm or Embedding layer and
the NTK takes the per-layer fast path; ``vit_block = "torch"`` uses ``nn.TransformerEncoderLayer``
(same maths, attention on the generic route). Same probes and claim code as the MLP; the layer-wise
CKA covers every layer and, in rows ``"blocks.k:attention"`` / ``"blocks.k:feed-forward"``, the
kernel of each block's attention and feed-forward parts (sums of their layers' kernels).
``transformer-tiny`` is its smoke run.

**Seeds and claims.** Items 2-3 run ``noise_seeds`` seeds of every label-noise run (``noise_<p>``,
``noise_<p>_s1``, ...), item 4 ``hier_seeds`` seeds of each run and item 1 ``disk_seeds`` seeds;
the figures show seed 0. Every finding is decided on the mean over the seeds with its 95%
Student-t interval (or a percentile bootstrap over seeds for fitted slopes, rank correlations and
ratios of means): ``yes`` when the whole interval satisfies the criterion, ``NO`` when none of it
does, ``inconclusive`` otherwise. Each claim states the paper's sentence and the criterion tested,
with the paper's numbers (e.g. T_k > 70% with ``k`` = 40/1000 of our ``N·C``; λ20/λ1 dropping by a
factor ≥ 5, the paper's 1.5% → 0.2%); the statistics are in :mod:`.criteria`, the claims in
:mod:`.claims` (items 1-3), :mod:`.claims_more` (items 4-5, limit), :mod:`.supernat` (item 6,
judged for each κ, the trace-preserving one included) and :mod:`.complexity` (item 7).

Conventions: NTK ``K[n, m, c, d] = ⟨∂f_c(x_n)/∂θ, ∂f_d(x_m)/∂θ⟩`` unnormalized, rows
``n·C + c``; centering ``"examples"`` = tangent features centered over the probe examples per
output (thesis ch. 6); ``T_k`` = mass of the ``k`` largest eigenvalues. See
:mod:`tangentlab.studies.framework.probes` for every metric.

Results (tidy, append-only, resumable): ``tables/probes.csv`` (run × step × probe × metric
× layer), ``tables/training.csv`` (run × step × metric), ``tables/spectra.csv`` (full
eigenvalue lists), ``tables/eigenfunctions.csv`` (disk grid eigenvectors), ``tables/pca.csv``
(kernel-PCA coordinates at a few steps), ``tables/probe_labels.csv`` (labels of the probe
examples). Each training run checkpoints after every probe and a killed study resumes from
the last checkpoint of the unfinished run.

Modules: :mod:`.config` (options, presets, table schemas), :mod:`.data`, :mod:`.models` and
:mod:`.vit` (items 2-5), :mod:`.run` (the :class:`Alignment` study), :mod:`.claims`, :mod:`.claims_more`,
:mod:`.criteria` and :mod:`.figures` (the report, from the stored tables only), :mod:`.supernat` (item 6),
:mod:`.complexity` (item 7), :mod:`.limit` (the distance to the infinite-width limit),
:mod:`.appendix_hierarchy`, :mod:`.spectral_bias`, :mod:`.norm_capacity` and :mod:`.channel_sweep` (items
8-11, with :mod:`.appendix_common`).
"""

from .config import AlignmentConfig
from .run import Alignment

__all__ = ["Alignment", "AlignmentConfig"]
