"""The Kronecker pipeline shared by the KFAC/EKFAC representations and optimizers.

Data flow: the layer rules' Kronecker layouts and per-layer kernels
(:meth:`~tangentlab.layers.base.LayerRule.kron_layout`, ``kfac_factors``, ``kfe_diag``)
→ the engine's captures → this package → :mod:`tangentlab.pmat` (``PMatKFAC``,
``PMatEKFAC``) and :mod:`tangentlab.optim` (``KFAC``, ``EKFAC``).

* :mod:`.stats`: factor statistics ``A``, ``B`` (KFAC-expand or KFAC-reduce for weights shared
  over positions) and the eigen-corrected diagonal ``s*`` accumulated from captures, per layer
  of a parameter space;
* :mod:`.eigen`: the Kronecker-factored eigenbasis (KFE) and the rotations into and out of it;
* :mod:`.damping`: π and factored (Tikhonov) damping, the damped denominators in the KFE;
* :mod:`.sua`: the spatially-uncorrelated-activations (SUA) variant of the convolution factors.
"""

from .damping import ekfac_shift, factored_inverses, kfac_denominator, tikhonov_pi
from .eigen import eye_like, right_mul, rotate, solve_in_basis, sym_eigh, sym_fn, unrotate
from .stats import KFAC_APPROXIMATIONS, FactorSums, KfeSums, check_approx, kfe_diagonals, kron_layouts

__all__ = ["KFAC_APPROXIMATIONS", "FactorSums", "KfeSums", "check_approx", "kfe_diagonals", "ekfac_shift", "eye_like",
           "factored_inverses", "kfac_denominator", "kron_layouts", "right_mul", "rotate", "solve_in_basis",
           "sym_eigh", "sym_fn", "tikhonov_pi", "unrotate"]
