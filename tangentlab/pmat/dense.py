"""Dense, diagonal and block-diagonal representations."""

from __future__ import annotations

from typing import Any, Self

import torch

from ..errors import InvalidInputError
from ..memory import MemoryBudget
from ..space import ParamSpace
from ..vectors import PVector
from .base import PMat, check_damping
from .registry import block_entries, dense_entries, register, vector_entries


def _chol_solve(a: torch.Tensor, b: torch.Tensor, what: str) -> torch.Tensor:
    """Solve ``a x = b`` for symmetric ``a``: Cholesky first, LU if ``a`` is not positive definite."""
    chol, info = torch.linalg.cholesky_ex(a)
    if int(info) == 0:
        return torch.cholesky_solve(b.unsqueeze(-1) if b.dim() == 1 else b, chol).reshape(b.shape)
    try:
        return torch.linalg.solve(a, b)
    except RuntimeError:
        raise InvalidInputError(
            f"{what} is singular; pass damping > 0 (Tikhonov regularization)"
        ) from None


def _spd_inverse(a: torch.Tensor) -> torch.Tensor:
    """Inverse of a symmetric matrix: through Cholesky when positive definite, else LU."""
    chol, info = torch.linalg.cholesky_ex(a)
    return torch.cholesky_inverse(chol) if int(info) == 0 else torch.linalg.inv(a)


class _TensorPMat(PMat):
    """A representation stored in one tensor ``data`` whose shape is fixed by the space."""

    def __init__(self, space: ParamSpace, data: torch.Tensor, budget: MemoryBudget | None = None):
        want = self._data_shape(space.numel)
        if tuple(data.shape) != want:
            raise InvalidInputError(f"{type(self).__name__} data must be {want}, got {tuple(data.shape)}")
        self.space, self.data = space, data
        self.budget = budget or MemoryBudget.resolve(None, data.device)

    @staticmethod
    def _data_shape(p: int) -> tuple[int, ...]:
        raise NotImplementedError

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the stored tensors."""
        return self.data.dtype

    @property
    def device(self) -> torch.device:
        """The device of the stored tensors."""
        return self.data.device

    def _add(self, other):
        return type(self)(self.space, self.data + other.data, self.budget)

    def _scale(self, s: float):
        return type(self)(self.space, self.data * s, self.budget)

    def state_dict(self) -> dict[str, Any]:
        return {**self._meta(), "data": self.data}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> Self:
        """Rebuild the matrix from ``state``, what its :meth:`state_dict` returned.

        Parameters
        ----------
        state : dict
        """
        return cls(ParamSpace.from_state(state["space"]), state["data"])


@register("dense", build="tangentlab.pmat.build:build_dense", stores="`F`", memory="`P²`",
          summary="everything exact; Cholesky solves", keeps="all", light=False, distributed=True,
          footprint=dense_entries)
class PMatDense(_TensorPMat):
    """The full ``P × P`` matrix. Memory ``P²``; ``solve``/``inverse`` cost ``O(P³)``.

    Parameters
    ----------
    space : ParamSpace
        The parameter space (``P`` entries, in its flat order).
    data : torch.Tensor
        ``(P, P)``, the symmetric matrix.
    budget : MemoryBudget or None
        The memory budget that dense conversions are checked against (None: the device's).
    """

    @staticmethod
    def _data_shape(p: int) -> tuple[int, ...]:
        return (p, p)

    def mv(self, v: PVector) -> PVector:
        self._check_vec(v)
        return self._vec(self.data @ v.flat())

    def vTMv(self, v: PVector) -> torch.Tensor:
        self._check_vec(v)
        f = v.flat()
        return f @ (self.data @ f)

    def trace(self) -> torch.Tensor:
        return torch.diagonal(self.data).sum()

    def diag(self) -> PVector:
        return self._vec(torch.diagonal(self.data).clone())

    def to_dense(self) -> torch.Tensor:
        return self.data

    def solve(self, v: PVector, damping: float = 0.0) -> PVector:
        self._check_vec(v)
        lam = check_damping(damping)
        a = self.data + lam * torch.eye(self.space.numel, dtype=self.dtype, device=self.device)
        return self._vec(_chol_solve(a, v.flat(), "the dense matrix"))

    def inverse(self, damping: float = 0.0) -> PMatDense:
        lam = check_damping(damping)
        a = self.data + lam * torch.eye(self.space.numel, dtype=self.dtype, device=self.device)
        return PMatDense(self.space, _spd_inverse(a), self.budget)

    def eigh(self, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        evals, evecs = torch.linalg.eigh(self.data)
        return self._topk(evals, evecs, k)

    def norm(self, ord: str | int = "fro") -> torch.Tensor:
        if ord == "fro":
            return torch.linalg.matrix_norm(self.data, "fro")
        if ord == 2:
            return torch.linalg.eigvalsh(self.data).abs().max()
        raise InvalidInputError(f"unsupported norm {ord!r}; use 'fro' or 2")

    def _add(self, other: PMatDense) -> PMatDense:
        return PMatDense(self.space, self.data + other.data, self.budget)

    def _scale(self, s: float) -> PMatDense:
        return PMatDense(self.space, self.data * s, self.budget)

    def _matmul(self, other: PMatDense) -> PMatDense:
        return PMatDense(self.space, self.data @ other.data, self.budget)

    def _select(self, sub: ParamSpace, idx: torch.Tensor) -> PMatDense:
        return PMatDense(sub, self.data[idx][:, idx], self.budget)

    def state_dict(self) -> dict[str, Any]:
        return {**self._meta(), "data": self.data}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> PMatDense:
        """Rebuild the matrix from ``state``, what its :meth:`state_dict` returned.

        Parameters
        ----------
        state : dict
        """
        return cls(ParamSpace.from_state(state["space"]), state["data"])


@register("diag", aliases=("diagonal",), build="tangentlab.pmat.build:build_diag", stores="`diag F`",
          memory="`P`", summary="from squared-activation matmuls", keeps="diagonal", distributed=True,
          footprint=vector_entries)
class PMatDiag(PMat):
    """Only the diagonal ``F_pp = (1/N) Σ_{n,c} φ_{c,n,p}²``. Memory ``P``.

    Parameters
    ----------
    space : ParamSpace
        The parameter space (``P`` entries, in its flat order).
    data : torch.Tensor
        ``(P,)``, the diagonal.
    budget : MemoryBudget or None
        The memory budget that dense conversions are checked against (None: the device's).
    """

    def __init__(self, space: ParamSpace, data: torch.Tensor, budget: MemoryBudget | None = None):
        if data.shape != (space.numel,):
            raise InvalidInputError(f"diag data must be ({space.numel},), got {tuple(data.shape)}")
        self.space, self.data = space, data
        self.budget = budget or MemoryBudget.resolve(None, data.device)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the stored tensors."""
        return self.data.dtype

    @property
    def device(self) -> torch.device:
        """The device of the stored tensors."""
        return self.data.device

    def mv(self, v: PVector) -> PVector:
        self._check_vec(v)
        return self._vec(self.data * v.flat())

    def vTMv(self, v: PVector) -> torch.Tensor:
        self._check_vec(v)
        f = v.flat()
        return (self.data * f * f).sum()

    def trace(self) -> torch.Tensor:
        return self.data.sum()

    def diag(self) -> PVector:
        return self._vec(self.data.clone())

    def to_dense(self) -> torch.Tensor:
        self._check_dense()
        return torch.diag(self.data)

    def _shifted(self, damping: float) -> torch.Tensor:
        d = self.data + check_damping(damping)
        if (d == 0).any():
            raise InvalidInputError(
                f"the diagonal has {int((d == 0).sum())} zero entries; pass damping > 0"
            )
        return d

    def solve(self, v: PVector, damping: float = 0.0) -> PVector:
        self._check_vec(v)
        return self._vec(v.flat() / self._shifted(damping))

    def inverse(self, damping: float = 0.0) -> PMatDiag:
        return PMatDiag(self.space, 1.0 / self._shifted(damping), self.budget)

    def eigh(self, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.space.numel
        kk = p if k is None else k
        if not 1 <= kk <= p:
            raise InvalidInputError(f"k must be in [1, {p}], got {k}")
        self.budget.check(f"{kk} eigenvectors of length {p}", p * kk, self.dtype,
                          "Ask for fewer eigenpairs with `k=`.")
        order = torch.argsort(self.data, descending=True)[:kk]
        vecs = torch.zeros(p, kk, dtype=self.dtype, device=self.device)
        vecs[order, torch.arange(kk, device=self.device)] = 1.0
        return self.data[order], vecs

    def norm(self, ord: str | int = "fro") -> torch.Tensor:
        if ord == "fro":
            return torch.linalg.vector_norm(self.data)
        if ord == 2:
            return self.data.abs().max()
        raise InvalidInputError(f"unsupported norm {ord!r}; use 'fro' or 2")

    def _add(self, other: PMatDiag) -> PMatDiag:
        return PMatDiag(self.space, self.data + other.data, self.budget)

    def _scale(self, s: float) -> PMatDiag:
        return PMatDiag(self.space, self.data * s, self.budget)

    def _matmul(self, other: PMatDiag) -> PMatDiag:
        return PMatDiag(self.space, self.data * other.data, self.budget)

    def _select(self, sub: ParamSpace, idx: torch.Tensor) -> PMatDiag:
        return PMatDiag(sub, self.data[idx], self.budget)

    def state_dict(self) -> dict[str, Any]:
        return {**self._meta(), "data": self.data}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> PMatDiag:
        """Rebuild the matrix from ``state``, what its :meth:`state_dict` returned.

        Parameters
        ----------
        state : dict
        """
        return cls(ParamSpace.from_state(state["space"]), state["data"])


@register("blockdiag", build="tangentlab.pmat.build:build_blockdiag", stores="one dense block per layer",
          memory="`Σ P_l²`", summary="cross-layer terms dropped", keeps="layer blocks", distributed=True,
          footprint=block_entries)
class PMatBlockDiag(PMat):
    """One dense block per layer (the parameters owned by one module); cross-layer
    terms are zero. Memory ``Σ_l P_l²``.

    Parameters
    ----------
    space : ParamSpace
        The parameter space (``P`` entries, in its flat order).
    blocks : dict of str to torch.Tensor
        ``{module path: (P_l, P_l)}``, one dense block per layer of ``space``.
    budget : MemoryBudget or None
        The memory budget that dense conversions are checked against (None: the device's).
    """

    def __init__(self, space: ParamSpace, blocks: dict[str, torch.Tensor],
                 budget: MemoryBudget | None = None):
        for lay in space.layers:
            b = blocks.get(lay.module)
            if b is None or b.shape != (lay.numel, lay.numel):
                raise InvalidInputError(f"missing or misshaped block for layer {lay.module!r}")
        self.space = space
        self.blocks = {lay.module: blocks[lay.module] for lay in space.layers}
        first = next(iter(self.blocks.values()))
        self.budget = budget or MemoryBudget.resolve(None, first.device)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the stored tensors."""
        return next(iter(self.blocks.values())).dtype

    @property
    def device(self) -> torch.device:
        """The device of the stored tensors."""
        return next(iter(self.blocks.values())).device

    def _per_block(self, flat: torch.Tensor, fn) -> torch.Tensor:
        return torch.cat([fn(lay.module, flat[lay.slice]) for lay in self.space.layers])

    def mv(self, v: PVector) -> PVector:
        self._check_vec(v)
        return self._vec(self._per_block(v.flat(), lambda m, x: self.blocks[m] @ x))

    def trace(self) -> torch.Tensor:
        return sum(torch.diagonal(b).sum() for b in self.blocks.values())  # type: ignore[return-value]

    def diag(self) -> PVector:
        return self._vec(torch.cat([torch.diagonal(b) for b in self.blocks.values()]).clone())

    def to_dense(self) -> torch.Tensor:
        self._check_dense()
        return torch.block_diag(*self.blocks.values())

    def solve(self, v: PVector, damping: float = 0.0) -> PVector:
        self._check_vec(v)
        lam = check_damping(damping)

        def one(m, x):
            b = self.blocks[m]
            return _chol_solve(b + lam * torch.eye(b.shape[0], dtype=b.dtype, device=b.device), x,
                               f"the block of layer {m!r}")

        return self._vec(self._per_block(v.flat(), one))

    def inverse(self, damping: float = 0.0) -> PMatBlockDiag:
        lam = check_damping(damping)
        out = {}
        for m, b in self.blocks.items():
            out[m] = _spd_inverse(b + lam * torch.eye(b.shape[0], dtype=b.dtype, device=b.device))
        return PMatBlockDiag(self.space, out, self.budget)

    def eigh(self, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.space.numel
        kk = p if k is None else k
        self.budget.check(f"{kk} eigenvectors of length {p}", p * kk, self.dtype,
                          "Ask for fewer eigenpairs with `k=`.")
        vals: list[torch.Tensor] = []
        owners: list[Any] = []
        decomp = {}
        for lay in self.space.layers:
            e, u = torch.linalg.eigh(self.blocks[lay.module])
            decomp[lay.module] = u
            vals.append(e)
            owners.extend((lay, j) for j in range(e.numel()))
        evals = torch.cat(vals)
        if not 1 <= kk <= evals.numel():
            raise InvalidInputError(f"k must be in [1, {evals.numel()}], got {k}")
        order = torch.argsort(evals, descending=True)[:kk].tolist()
        vecs = torch.zeros(p, kk, dtype=self.dtype, device=self.device)
        for col, idx in enumerate(order):
            lay, j = owners[idx]
            vecs[lay.slice, col] = decomp[lay.module][:, j]
        return evals[order], vecs

    def norm(self, ord: str | int = "fro") -> torch.Tensor:
        if ord == "fro":
            return torch.sqrt(sum(b.pow(2).sum() for b in self.blocks.values()))  # type: ignore[arg-type]
        if ord == 2:
            return torch.stack([torch.linalg.eigvalsh(b).abs().max() for b in self.blocks.values()]).max()
        raise InvalidInputError(f"unsupported norm {ord!r}; use 'fro' or 2")

    def _add(self, other: PMatBlockDiag) -> PMatBlockDiag:
        return PMatBlockDiag(self.space, {m: b + other.blocks[m] for m, b in self.blocks.items()}, self.budget)

    def _scale(self, s: float) -> PMatBlockDiag:
        return PMatBlockDiag(self.space, {m: b * s for m, b in self.blocks.items()}, self.budget)

    def _matmul(self, other: PMatBlockDiag) -> PMatBlockDiag:
        return PMatBlockDiag(self.space, {m: b @ other.blocks[m] for m, b in self.blocks.items()}, self.budget)

    def _select(self, sub: ParamSpace, idx: torch.Tensor) -> PMatBlockDiag:
        blocks = {}
        for lay in sub.layers:
            mine = self.space.layer(lay.module)
            local = torch.cat([torch.arange(mine.param(p.local).offset - mine.offset,
                                            mine.param(p.local).offset - mine.offset + p.numel)
                               for p in lay.params]).to(self.device)
            blocks[lay.module] = self.blocks[lay.module][local][:, local]
        return PMatBlockDiag(sub, blocks, self.budget)

    def state_dict(self) -> dict[str, Any]:
        return {**self._meta(), "blocks": dict(self.blocks)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> PMatBlockDiag:
        """Rebuild the matrix from ``state``, what its :meth:`state_dict` returned.

        Parameters
        ----------
        state : dict
        """
        return cls(ParamSpace.from_state(state["space"]), state["blocks"])
