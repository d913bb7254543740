"""Parameter-space matrices: one interface, several storage representations."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from ..errors import InvalidInputError
from .base import PMat
from .build import build_blockdiag, build_dense, build_diag, build_lowrank, mean_features
from .combine import PMatProduct, PMatSum
from .dense import PMatBlockDiag, PMatDense, PMatDiag
from .implicit import PMatImplicit
from .kron import PMatEKFAC, PMatKFAC
from .kron_build import build_ekfac, build_kfac
from .lowrank import PMatLowRank
from .mixed import PMatMixed, build_mixed
from .quasidiag import PMatQuasiDiag, build_quasidiag

#: How each representation is filled from an engine: ``builder(engine, data, centering)``.
BUILDERS: dict[type, Callable[..., PMat]] = {
    PMatDense: build_dense,
    PMatDiag: build_diag,
    PMatBlockDiag: build_blockdiag,
    PMatLowRank: build_lowrank,
    PMatImplicit: lambda engine, data, centering=False: PMatImplicit(engine, data, centering),
    PMatKFAC: build_kfac,
    PMatEKFAC: build_ekfac,
    PMatMixed: build_mixed,
    PMatQuasiDiag: build_quasidiag,
}

#: Names accepted by ``fim(..., representation=...)``.
NAMES: dict[str, type] = {
    "dense": PMatDense,
    "diag": PMatDiag,
    "blockdiag": PMatBlockDiag,
    "lowrank": PMatLowRank,
    "implicit": PMatImplicit,
    "kfac": PMatKFAC,
    "ekfac": PMatEKFAC,
    "mixed": PMatMixed,
    "quasidiag": PMatQuasiDiag,
}


def resolve(representation: Any) -> type:
    if isinstance(representation, str):
        key = representation.lower().replace("pmat", "").replace("_", "")
        if key not in NAMES:
            raise InvalidInputError(
                f"unknown representation {representation!r}; choose one of {sorted(NAMES)}"
            )
        return NAMES[key]
    if isinstance(representation, type) and representation in BUILDERS:
        return representation
    raise InvalidInputError(f"unknown representation {representation!r}; choose one of {sorted(NAMES)}")


_LOADABLE = {c.__name__: c for c in (PMatDense, PMatDiag, PMatBlockDiag, PMatLowRank, PMatKFAC, PMatEKFAC,
                                      PMatMixed, PMatQuasiDiag)}


def load(state: dict[str, Any]) -> PMat:
    """Rebuild a matrix from its :meth:`PMat.state_dict`."""
    kind = state.get("type")
    if kind not in _LOADABLE:
        raise InvalidInputError(f"cannot load a matrix of type {kind!r}")
    return _LOADABLE[kind].from_state_dict(state)  # type: ignore[attr-defined]


__all__ = ["PMat", "PMatDense", "PMatDiag", "PMatBlockDiag", "PMatLowRank", "PMatImplicit", "PMatKFAC",
           "PMatEKFAC", "PMatMixed", "PMatQuasiDiag", "PMatSum", "PMatProduct", "BUILDERS", "NAMES", "resolve",
           "load", "mean_features"]
