"""Export to ``scipy.sparse.linalg.LinearOperator`` (float64 numpy vectors in and out),
for ``eigsh``, ``cg``, ``lsqr`` and friends. scipy is imported on the first export, so
``import tangentlab`` does not load it."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .vectors import FVector, PVector

if TYPE_CHECKING:
    from scipy.sparse.linalg import LinearOperator


def _to_torch(x: np.ndarray, dtype: torch.dtype, device: torch.device) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(x).reshape(-1), dtype=dtype, device=device)


def _to_numpy(t: torch.Tensor) -> np.ndarray:
    return t.detach().to("cpu", torch.float64).numpy()


def pmat_to_scipy(m: Any) -> LinearOperator:
    p = m.space.numel

    def mv(x: np.ndarray) -> np.ndarray:
        v = PVector.from_flat(m.space, _to_torch(x, m.dtype, m.device))
        return _to_numpy(m.mv(v).flat())

    from scipy.sparse.linalg import LinearOperator

    return LinearOperator((p, p), matvec=mv, rmatvec=mv, dtype=np.float64)


def fmat_to_scipy(k: Any) -> LinearOperator:
    n1, n2, c, d = k.data.shape

    def mv(x: np.ndarray) -> np.ndarray:
        u = FVector(_to_torch(x, k.data.dtype, k.data.device).reshape(n2, d))
        return _to_numpy(k.mv(u).flat())

    def rmv(x: np.ndarray) -> np.ndarray:
        u = _to_torch(x, k.data.dtype, k.data.device).reshape(n1, c)
        return _to_numpy(torch.einsum("nmcd,nc->md", k.data, u).reshape(-1))

    from scipy.sparse.linalg import LinearOperator

    return LinearOperator((n1 * c, n2 * d), matvec=mv, rmatvec=rmv, dtype=np.float64)


def jacobian_to_scipy(push: Any, pull: Any) -> LinearOperator:
    """``J`` as an ``(N·C) × P`` operator (rows ``n·C + c``); ``rmatvec`` is ``Jᵀ``."""
    space = push.space
    probe = push.mv(PVector.zeros(space, dtype=_dtype(push), device=_device(push)))
    n, c = probe.shape

    def mv(x: np.ndarray) -> np.ndarray:
        v = PVector.from_flat(space, _to_torch(x, _dtype(push), _device(push)))
        return _to_numpy(push.mv(v).flat())

    def rmv(x: np.ndarray) -> np.ndarray:
        u = FVector(_to_torch(x, _dtype(push), _device(push)).reshape(n, c))
        return _to_numpy(pull.mv(u).flat())

    from scipy.sparse.linalg import LinearOperator

    return LinearOperator((n * c, space.numel), matvec=mv, rmatvec=rmv, dtype=np.float64)


def _dtype(push: Any) -> torch.dtype:
    return push.data.dtype if hasattr(push, "data") else push.engine.dtype


def _device(push: Any) -> torch.device:
    return push.data.device if hasattr(push, "data") else push.engine.device
