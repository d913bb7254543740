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

# Classes whose modules do not carry their own registration line yet.
register("kfac", build="tangentlab.pmat.kron_build:build_kfac", stores="Kronecker factors `A_l`, `B_l` per layer",
         memory="`Σ_l (I_l² + O_l²)`", summary="Martens & Grosse (2015), KFC for convolutions; exact or "
         "factored damped `solve`/`inverse`, `pow`")(PMatKFAC)
register("ekfac", build="tangentlab.pmat.kron_build:build_ekfac",
         stores="eigenbases of the KFAC factors and a diagonal `s*` in that basis",
         memory="`Σ_l (I_l² + O_l² + O_l·I_l)`", summary="George et al. (2018); `trace` exact, "
         "`update_diag` re-estimates `s*` in the fixed basis")(PMatEKFAC)

__all__ = ["PMat", "PMatDense", "PMatDiag", "PMatBlockDiag", "PMatLowRank", "PMatImplicit", "PMatKFAC",
           "PMatEKFAC", "PMatMixed", "PMatQuasiDiag", "PMatSum", "PMatProduct", "BUILDERS", "NAMES", "resolve",
           "load", "mean_features", "register", "unregister", "representations", "Representation"]
