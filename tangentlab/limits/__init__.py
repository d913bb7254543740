"""Infinite-width limits of an ``nn.Module``: the NNGP kernel and the NTK.

For an ``nn.Sequential``-style network (nested Sequentials and :class:`Residual` blocks) of
Linear, Conv1d/Conv2d, average/global pooling, Flatten, LayerNorm and elementwise
activations, :func:`nngp` and :func:`ntk` return the kernels of the same architecture with
every hidden width infinite (Lee et al. 2018; Jacot et al. 2018; Novak et al. 2019; Arora et
al. 2019), in the ``(N1, N2, C, C)`` layout of ``tl.ntk``, with the weight and bias variances
read from the module itself. :func:`empirical_ntk` is the finite network's NTK in the same
parameterization, for comparison (``tangentlab.analysis.limits`` measures the distance).

* :mod:`.kernels`: the dual activations (closed forms and Gauss–Hermite quadrature);
* :mod:`.layers`: the per-layer rules and the walk over the module tree;
* :mod:`.api`: variances, parameterizations, tiles and the public functions.
"""

from .api import PARAMETERIZATIONS, LimitKernels, empirical_ntk, kernels, nngp, ntk, read_variances
from .kernels import Erf, dual_for, hermite_rule
from .layers import Residual, WidthWarning

__all__ = ["nngp", "ntk", "kernels", "empirical_ntk", "read_variances", "LimitKernels", "PARAMETERIZATIONS",
           "Erf", "Residual", "WidthWarning", "dual_for", "hermite_rule"]
