"""Low-rank representation ``M = shift·I + Uᵀ diag(w) U`` from a stored Jacobian.

Built from data, ``U`` holds the ``R = N·C`` tangent features ``φ_c(x_n)/√N`` as
rows, ``w = 1`` and ``shift = 0``, so ``M = (1/N) ΦᵀΦ``. The form is closed under
damped inversion, which is what makes :meth:`PMatLowRank.inverse` exact.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import InvalidInputError
from ..memory import MemoryBudget
from ..space import ParamSpace
from ..vectors import PVector
from .base import PMat, check_damping
from .registry import register


@register("lowrank", build="tangentlab.pmat.build:build_lowrank", stores="`U = Φ/√N` (`shift·I + UᵀWU`)",
          memory="`N·C·P`", summary="exact damped `solve`/`inverse`, including the part outside the row space",
          keeps="all", distributed=True)
class PMatLowRank(PMat):
    """``M = shift·I + Uᵀ diag(w) U`` with ``U`` of shape ``(R, P)``. Memory ``R·P``.

    ``solve(v, λ)`` is the exact ``(M + λI)⁻¹ v``, including the component of ``v``
    outside the row space of ``U`` (which is divided by ``shift + λ``). ``eigh``
    returns the ``R`` eigenpairs on the row space of ``U``; the other ``P − R``
    eigenvalues all equal ``shift`` (0 for a Fisher built from data).

    Parameters
    ----------
    space : ParamSpace
        The parameter space (``P`` entries, in its flat order).
    factor : torch.Tensor
        ``U``, ``(R, P)``.
    weights : torch.Tensor or None
        ``w``, ``(R,)`` (None: ones).
    shift : float
        The multiple of the identity added.
    budget : MemoryBudget or None
        The memory budget that dense conversions are checked against (None: the device's).
    """

    def __init__(self, space: ParamSpace, factor: torch.Tensor, weights: torch.Tensor | None = None,
                 shift: float = 0.0, budget: MemoryBudget | None = None):
        if factor.dim() != 2 or factor.shape[1] != space.numel:
            raise InvalidInputError(
                f"factor must be (R, {space.numel}), got {tuple(factor.shape)}"
            )
        if weights is not None and weights.shape != (factor.shape[0],):
            raise InvalidInputError(f"weights must be ({factor.shape[0]},), got {tuple(weights.shape)}")
        self.space, self.factor, self.weights, self.shift = space, factor, weights, float(shift)
        self.budget = budget or MemoryBudget.resolve(None, factor.device)
        self._eig: tuple[torch.Tensor, torch.Tensor] | None = None

    def __getstate__(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["_eig"] = None
        return d

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the stored tensors."""
        return self.factor.dtype

    @property
    def device(self) -> torch.device:
        """The device of the stored tensors."""
        return self.factor.device

    @property
    def rank(self) -> int:
        """The number ``R`` of rows of ``U``."""
        return self.factor.shape[0]

    def _w(self) -> torch.Tensor:
        if self.weights is None:
            return torch.ones(self.rank, dtype=self.dtype, device=self.device)
        return self.weights

    def _core(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Eigen-form of ``Uᵀ W U = Q E Qᵀ`` with orthonormal ``Q`` (P, r), cached."""
        if self._eig is None:
            qm, rm = torch.linalg.qr(self.factor.T)  # Uᵀ = Q R
            core = rm @ (self._w()[:, None] * rm.T)
            e, v = torch.linalg.eigh((core + core.T) / 2)
            self._eig = (e, qm @ v)
        return self._eig

    def mv(self, v: PVector) -> PVector:
        self._check_vec(v)
        f = v.flat()
        out = self.factor.T @ (self._w() * (self.factor @ f))
        if self.shift:
            out = out + self.shift * f
        return self._vec(out)

    def vTMv(self, v: PVector) -> torch.Tensor:
        self._check_vec(v)
        f = v.flat()
        u = self.factor @ f
        return (self._w() * u * u).sum() + self.shift * (f * f).sum()

    def trace(self) -> torch.Tensor:
        return (self._w() * self.factor.pow(2).sum(1)).sum() + self.shift * self.space.numel

    def diag(self) -> PVector:
        return self._vec(self._w() @ self.factor.pow(2) + self.shift)

    def to_dense(self) -> torch.Tensor:
        self._check_dense()
        m = self.factor.T @ (self._w()[:, None] * self.factor)
        if self.shift:
            m = m + self.shift * torch.eye(self.space.numel, dtype=self.dtype, device=self.device)
        return m

    def _s(self, damping: float) -> float:
        s = self.shift + check_damping(damping)
        if s == 0:
            raise InvalidInputError(
                f"a rank-{self.rank} matrix on {self.space.numel} parameters is singular: pass "
                "damping > 0 to solve or invert it"
            )
        return s

    def solve(self, v: PVector, damping: float = 0.0) -> PVector:
        self._check_vec(v)
        s = self._s(damping)
        e, q = self._core()
        f = v.flat()
        coef = 1.0 / (s + e) - 1.0 / s
        return self._vec(f / s + q @ (coef * (q.T @ f)))

    def inverse(self, damping: float = 0.0) -> PMatLowRank:
        s = self._s(damping)
        e, q = self._core()
        out = PMatLowRank(self.space, q.T.contiguous(), 1.0 / (s + e) - 1.0 / s, 1.0 / s, self.budget)
        out._eig = (1.0 / (s + e) - 1.0 / s, q)
        return out

    def eigh(self, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        e, q = self._core()
        return self._topk(e + self.shift, q, k)

    def norm(self, ord: str | int = "fro") -> torch.Tensor:
        e, _ = self._core()
        rest = self.space.numel - e.numel()
        if ord == "fro":
            return torch.sqrt((e + self.shift).pow(2).sum() + rest * self.shift**2)
        if ord == 2:
            return torch.maximum((e + self.shift).abs().max(),
                                 e.new_tensor(abs(self.shift) if rest else 0.0))
        raise InvalidInputError(f"unsupported norm {ord!r}; use 'fro' or 2")

    def gram(self) -> torch.Tensor:
        """``U Uᵀ`` (R × R): shares its non-zero spectrum with ``Uᵀ U``."""
        return self.factor @ self.factor.T

    def _add(self, other: PMatLowRank) -> PMatLowRank:
        return PMatLowRank(self.space, torch.cat([self.factor, other.factor]),
                           torch.cat([self._w(), other._w()]), self.shift + other.shift, self.budget)

    def _scale(self, s: float) -> PMatLowRank:
        return PMatLowRank(self.space, self.factor, self._w() * s, self.shift * s, self.budget)

    def _select(self, sub: ParamSpace, idx: torch.Tensor) -> PMatLowRank:
        return PMatLowRank(sub, self.factor[:, idx], self.weights, self.shift, self.budget)

    def state_dict(self) -> dict[str, Any]:
        return {**self._meta(), "factor": self.factor, "weights": self.weights, "shift": self.shift}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> PMatLowRank:
        """Rebuild the matrix from ``state``, what its :meth:`state_dict` returned.

        Parameters
        ----------
        state : dict
        """
        return cls(ParamSpace.from_state(state["space"]), state["factor"], state["weights"], state["shift"])
