"""Parameter-space matrices: one interface, several storage representations.

Each representation registers itself (name, builder, loader, metadata) with
:mod:`tangentlab.pmat.registry` next to its class; importing the class modules below
is what registers them. ``NAMES`` and ``BUILDERS`` are live views of the registry.
"""

from __future__ import annotations

from .base import PMat, PMatProduct, PMatSum
from .build import mean_features
from .dense import PMatBlockDiag, PMatDense, PMatDiag
from .implicit import PMatImplicit
from .kron import PMatEKFAC, PMatKFAC
from .lowrank import PMatLowRank
from .mixed import PMatMixed
from .quasidiag import PMatQuasiDiag
from .registry import BUILDERS, NAMES, Representation, load, register, representations, resolve, unregister

__all__ = ["PMat", "PMatDense", "PMatDiag", "PMatBlockDiag", "PMatLowRank", "PMatImplicit", "PMatKFAC",
           "PMatEKFAC", "PMatMixed", "PMatQuasiDiag", "PMatSum", "PMatProduct", "BUILDERS", "NAMES", "resolve",
           "load", "mean_features", "register", "unregister", "representations", "Representation"]
