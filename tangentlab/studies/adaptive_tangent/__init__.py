"""``tangentlab run adaptive-tangent``: the adaptive tangent feature perspective (LeJeune &
Alemohammad, "An adaptive tangent feature perspective of neural networks", CPAL 2024), at
CPU scale.

Modules: :mod:`.config` (configuration, presets, reference values, table schemas),
:mod:`.data` (digits 2 vs 3 and their targets, the sweep images), :mod:`.models` (the
He-initialized MLP and CNN), :mod:`.run` (the study's run), :mod:`.claims` (the checks',
the solver's and the sweep's claims), :mod:`.alignment_claims` (Figs. 1/3) and
:mod:`.figures` (the report).

Claims: identities (Fig. 2's values and shape, Proposition 3, Theorem 1, App. A.1, Lemma 5,
the average-feature identity at the paper's 50 quadrature points, the Model A solver's
objective ≤ the NTK value) hold to stated tolerances; findings are decided on intervals over
seeds: a Student-t interval of the per-seed gaps for Figs. 1/3 (``seeds`` = 5 by default), a
percentile bootstrap of the smallest mean paired difference over the sizes for Fig. 4
(``sweep_seeds`` = 5); the Model A solver's findings use the first seed's networks only.

Parts (``parts``):

* ``penalties`` — Fig. 2: the effective penalties ``ω̃`` of ``ω1 = (v−1)²``, ``ω2 = |v−1|``
  and of the joint ``ω1 ⊕ ω2`` on ``v ∈ [0, 5]``, with reference values and
  Proposition 3's properties (below ``v²``, ``≈ v²`` at 0, concave in ``v²``).
* ``theory`` — exact checks on small random problems: Theorem 1's closed form
  against direct L-BFGS minimization over all entries of ``M`` and its kernel identity
  ``GM̂²Gᵀ = K0 + (s²−1)/‖β̂‖²·rrᵀ``; the diagonal reweighted solver with ``ω = v²`` against
  the ℓ1 linear program (``Ω̃ = 2‖β‖₁``); the Model A alternating solver on one block against
  direct minimization over ``(M1, M2)``.
* ``alignment`` — Figs. 1 and 3 on digits 2-vs-3 (MNIST as a preset): a bias-free ReLU MLP
  ``D → width → width → 1`` (He init), targets from a frozen random network whose last
  layer is fitted by least squares to ±1 labels (``paper``: ``y = Zb``; ``hard``: ``b``
  Gaussian, ``y`` standardized), trained from init seed ``s`` on ``y`` and on ``sign(y)`` by
  full-batch GD (momentum, cosine annealing, MSE). Average tangent features along
  ``θ0 → θ̂`` (``quadrature`` with ``quadrature_points``), kernels ``K0``, ``K̄``, ``K(θ̂)``,
  ``K_ŷ = ΔfΔfᵀ`` and Theorem 1's ``K0 + (s²−1)/‖β̂‖²·K_ŷ``; cosine alignment ("sim"),
  centered alignment, least squares ``K ≈ a K0 + c K_ŷ`` with residual, and the diagonal
  near ``y ≈ 0`` vs far from it; the average-feature identity
  ``f0 + J̄(θ̂ − θ0) = f_θ̂`` for each quadrature size in ``quadrature_check``.
* ``solver`` — Model A (Theorem 2) on the initial tangent features of the first seed's
  network for each target: objective per half step from the ridgeless NTK value
  ``rᵀK0⁻¹r``, singular values of ``B̂_ℓ`` against the NTK solution's, the adapted kernel's
  alignment, norm and diagonal.
* ``training`` — fixed vs adaptive vs standard networks (the preprint's Fig. 4): a
  linearized ``f0 + J0δ`` (:class:`tangentlab.linearize.Linearized`), a factorized
  ``δ_ℓ = M1_ℓ W_ℓ M2_ℓ`` (``M = I``, ``W = 0`` at start; bias deviation ``M2ᵀb``; conv
  kernels factorized along their spatial, input- and output-channel modes or on their
  ``(c_in·kh·kw) × c_out`` matricization, ``sweep_conv_factors``; see
  :mod:`tangentlab.analysis.adaptive_factorized`) and the standard network, trained with
  cross-entropy, early stopping on test accuracy (as the repo), over ``sweep_n`` training
  sizes and ``sweep_seeds`` seeds, for each architecture of ``sweep_arch``: the MLP and/or
  the CNN (``sweep_channels`` blocks [conv 3×3, ReLU, avg-pool 2×2], then a dense head;
  8×8 digits on CPU by default, the repo's CIFAR-10 CNN with the ``fig4_cifar`` preset).

Tables (tidy, appended as each unit finishes; a killed run resumes at the next unit):
``penalties``, ``checks``, ``alignment``, ``quadrature``, ``diagonal``, ``kernel_maps``,
``training``, ``solver``, ``solver_metrics``, ``solver_spectrum``, ``sweep``.
"""

from .config import AdaptiveTangentConfig
from .run import AdaptiveTangent

__all__ = ["AdaptiveTangent", "AdaptiveTangentConfig"]
