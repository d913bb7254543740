"""tangentlab: neural networks through their linearization.

Tangent features, Jacobians, Fisher information matrices and empirical neural
tangent kernels, with one set of linear-algebra verbs over many storage
representations.

Quick start::

    import tangentlab as tl
    F = tl.fim(model, (x, y), kind="exact", representation="diag")
    v = tl.PVector.from_model(model)
    F.vTMv(v), F.trace(), F.solve(v, damping=1e-3)
    K = tl.ntk(model, x)              # (N, N, C, C)
"""

from . import limits, optim
from .api import fim, jacobian, ntk
from .engine import Engine, EngineOptions, GenericRouteWarning
from .errors import (
    InvalidInputError,
    MemoryBudgetError,
    MixedDeviceDtypeError,
    NonFiniteError,
    TangentlabError,
    UnsupportedLayerError,
    UnsupportedOperationError,
)
from .fmat import FMatDense
from .layers import LayerRegistry, LayerRule
from .maps import PullBackDense, PullBackImplicit, PushForwardDense, PushForwardImplicit
from .outputs import OutputFunction, make_output
from .pmat import (
    PMat,
    PMatBlockDiag,
    PMatDense,
    PMatDiag,
    PMatEKFAC,
    PMatImplicit,
    PMatKFAC,
    PMatLowRank,
    PMatMixed,
    PMatQuasiDiag,
)
from .space import ParamSpace
from .vectors import FVector, PVector

__version__ = "0.1.0"

__all__ = [
    "fim", "ntk", "jacobian", "optim", "limits", "Engine", "EngineOptions", "PVector", "FVector", "ParamSpace",
    "PMat", "PMatDense", "PMatDiag", "PMatBlockDiag", "PMatLowRank", "PMatImplicit", "FMatDense",
    "PMatKFAC", "PMatEKFAC", "PMatQuasiDiag", "PMatMixed",
    "PushForwardDense", "PushForwardImplicit", "PullBackDense", "PullBackImplicit",
    "LayerRegistry", "LayerRule", "OutputFunction", "make_output", "GenericRouteWarning",
    "TangentlabError", "UnsupportedOperationError", "MemoryBudgetError", "InvalidInputError",
    "NonFiniteError", "UnsupportedLayerError", "MixedDeviceDtypeError",
]
