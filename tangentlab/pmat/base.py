"""The common interface of parameter-space matrices (Fishers, GGNs, empirical Fishers),
and the lazy sums and products of matrices of different representations.

Every representation implements the same verbs; a verb a representation cannot
do raises :class:`~tangentlab.errors.UnsupportedOperationError`, whose message
names one that can.

Normalization: a matrix built from data is ``F = (1/N) Σ_n Σ_c φ_c(x_n) φ_c(x_n)ᵀ``
(mean over examples, sum over output coordinates); see :mod:`tangentlab.outputs`.
"""

from __future__ import annotations

from numbers import Number
from typing import TYPE_CHECKING, Any, Self

import torch

from ..errors import InvalidInputError, UnsupportedOperationError
from ..memory import MemoryBudget
from ..space import ParamSpace
from ..vectors import PVector
from . import registry

if TYPE_CHECKING:
    from scipy.sparse.linalg import LinearOperator


class PMat:
    """A symmetric linear operator on the parameter space ``space``."""

    space: ParamSpace
    budget: MemoryBudget

    # ---- required verbs (overridden) -------------------------------------------
    def mv(self, v: PVector) -> PVector:
        """The matrix-vector product ``M v``.

        Parameters
        ----------
        v : PVector
            A vector on this matrix's parameter space (``P`` entries).

        Returns
        -------
        PVector
            ``M v`` on the same space.
        """
        raise self._unsupported("mv", "PMatDense")

    def trace(self) -> torch.Tensor:
        """The trace ``tr M = Σ_p M_pp``.

        Returns
        -------
        torch.Tensor
            A 0-d tensor.
        """
        raise self._unsupported("trace", "PMatDense")

    def diag(self) -> PVector:
        """The diagonal ``M_pp``.

        Returns
        -------
        PVector
            The ``P`` diagonal entries on this matrix's space.
        """
        raise self._unsupported("diag", "PMatDense")

    def to_dense(self) -> torch.Tensor:
        """The ``P × P`` matrix (checked against the memory budget).

        Returns
        -------
        torch.Tensor
            ``(P, P)``, rows and columns in the order of ``space``.

        Raises
        ------
        MemoryBudgetError
            When ``P²`` entries exceed the memory budget.
        """
        raise self._unsupported("to_dense", "PMatDense")

    def solve(self, v: PVector, damping: float = 0.0) -> PVector:
        """The solution ``x`` of ``(M + damping·I) x = v``.

        Parameters
        ----------
        v : PVector
            The right-hand side, on this matrix's space.
        damping : float
            ``λ ≥ 0`` added to the diagonal.

        Returns
        -------
        PVector
            ``x = (M + λI)⁻¹ v``.

        Raises
        ------
        InvalidInputError
            When ``damping`` is negative or NaN, or ``v`` lives on another space.
        """
        raise self._unsupported("solve", "PMatDense")

    def inverse(self, damping: float = 0.0) -> PMat:
        """The inverse ``(M + damping·I)⁻¹`` in the same representation.

        Parameters
        ----------
        damping : float
            ``λ ≥ 0`` added to the diagonal before inverting.

        Returns
        -------
        PMat
            ``(M + λI)⁻¹``, of this matrix's type.
        """
        raise self._unsupported("inverse", "PMatDense")

    def eigh(self, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The top eigenpairs of the symmetric matrix.

        Parameters
        ----------
        k : int or None
            How many eigenpairs, ``1 ≤ k ≤ P``; None: all ``P``.

        Returns
        -------
        evals : torch.Tensor
            ``(k,)``, in *descending* order.
        evecs : torch.Tensor
            ``(P, k)``, orthonormal eigenvectors as columns.
        """
        raise self._unsupported("eigh", "PMatDense")

    def norm(self, ord: str | int = "fro") -> torch.Tensor:
        """A matrix norm of ``M``.

        Parameters
        ----------
        ord : {"fro", 2}
            ``"fro"``: the Frobenius norm ``‖M‖_F``; ``2``: the spectral norm ``λ_max``.

        Returns
        -------
        torch.Tensor
            A 0-d tensor.
        """
        raise self._unsupported(f"norm({ord!r})", "PMatDense")

    def select(self, params: Any) -> PMat:
        """This matrix restricted to a subset ``S`` of its parameters.

        Parameters
        ----------
        params : str, list of str or ParamSpace
            Parameter names or module prefixes, or a sub-:class:`ParamSpace`.

        Returns
        -------
        PMat
            The sub-block ``M[S, S]``, in the same representation.

        Raises
        ------
        InvalidInputError
            When a selected parameter is not in this matrix's space.
        """
        sub = params if isinstance(params, ParamSpace) else self.space.select(
            [params] if isinstance(params, str) else params)
        missing = [n for n in sub.names if n not in self.space]
        if missing:
            raise InvalidInputError(f"parameters {missing} are not in this matrix's space")
        idx = torch.cat([torch.arange(self.space.info(p.name).offset,
                                      self.space.info(p.name).offset + p.numel) for p in sub.params])
        return self._select(sub, idx.to(self.device))

    def _select(self, sub: ParamSpace, idx: torch.Tensor) -> PMat:
        raise self._unsupported("select", "fim(..., params=...) to rebuild on the subset")

    # ---- derived verbs ------------------------------------------------------------
    def vTMv(self, v: PVector) -> torch.Tensor:
        """The quadratic form ``vᵀ M v``.

        Parameters
        ----------
        v : PVector
            A vector on this matrix's space.

        Returns
        -------
        torch.Tensor
            A 0-d tensor, differentiable in ``v``.
        """
        return v.dot(self.mv(v))

    def size(self) -> tuple[int, int]:
        """The shape ``(P, P)`` of the matrix.

        Returns
        -------
        tuple of int
            ``(P, P)``.
        """
        return (self.space.numel, self.space.numel)

    @property
    def shape(self) -> tuple[int, int]:
        """``(P, P)``, as :meth:`size`."""
        return self.size()

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the stored tensors."""
        raise NotImplementedError

    @property
    def device(self) -> torch.device:
        """The device of the stored tensors."""
        raise NotImplementedError

    def to_scipy(self) -> LinearOperator:
        """This matrix as a ``scipy.sparse.linalg.LinearOperator`` (float64 numpy vectors)."""
        from ..linop import pmat_to_scipy

        return pmat_to_scipy(self)

    # ---- algebra ----------------------------------------------------------------------
    def _same(self, other: PMat) -> bool:
        return type(other) is type(self) and other.space == self.space

    def _add(self, other: Self) -> PMat:  # same type; overridden
        raise NotImplementedError

    def _scale(self, s: float) -> PMat:
        raise NotImplementedError

    def _matmul(self, other: Self) -> PMat:
        raise NotImplementedError

    def __add__(self, other: Any) -> PMat:
        if not isinstance(other, PMat):
            return NotImplemented
        if other.space != self.space:
            raise InvalidInputError("cannot add matrices on different parameter spaces")
        if self._same(other):
            try:
                return self._add(other)
            except NotImplementedError:
                pass
        return PMatSum([self, other])

    def __sub__(self, other: Any) -> PMat:
        if not isinstance(other, PMat):
            return NotImplemented
        return self + (-1.0) * other

    def __neg__(self) -> PMat:
        return (-1.0) * self

    def __mul__(self, s: Any) -> PMat:
        if isinstance(s, torch.Tensor) and s.dim() == 0:
            s = float(s)
        if not isinstance(s, Number):
            return NotImplemented
        a = float(s)  # type: ignore[arg-type]  # typeshed's numbers.Number has no __float__
        try:
            return self._scale(a)
        except NotImplementedError:
            return PMatSum([self], [a])

    __rmul__ = __mul__

    def __truediv__(self, s: Any) -> PMat:
        return self * (1.0 / float(s))

    def __matmul__(self, other: Any) -> Any:
        if isinstance(other, PVector):
            return self.mv(other)
        if isinstance(other, PMat):
            if other.space != self.space:
                raise InvalidInputError("cannot multiply matrices on different parameter spaces")
            if self._same(other):
                try:
                    return self._matmul(other)
                except NotImplementedError:
                    pass
            return PMatProduct([self, other])
        return NotImplemented

    # ---- helpers ----------------------------------------------------------------------
    def _unsupported(self, verb: str, alternative: str, why: str = "") -> UnsupportedOperationError:
        return UnsupportedOperationError(type(self).__name__, verb, alternative, why)

    def _check_vec(self, v: PVector) -> None:
        if not isinstance(v, PVector):
            raise InvalidInputError(f"expected a PVector, got {type(v).__name__}")
        if v.space.names != self.space.names or any(
            a.shape != b.shape for a, b in zip(v.space.params, self.space.params)
        ):
            raise InvalidInputError(
                "the vector lives on a different parameter space than the matrix "
                f"({v.space.numel} vs {self.space.numel} parameters)"
            )

    def _check_dense(self, what: str = "the dense P×P matrix", suggestion: str | None = None) -> None:
        p = self.space.numel
        if suggestion is None and not self.budget.fits(p * p, self.dtype):
            suggestion = ("Keep working with this matrix's own verbs (mv, solve, eigh(k)...). "
                          + registry.fitting_advice(self.space, self.budget, self.dtype, type(self),
                                                    light=True, exact=True))
        self.budget.check(what, p * p, self.dtype, suggestion or "")

    def _vec(self, flat: torch.Tensor) -> PVector:
        return PVector.from_flat(self.space, flat)

    def _topk(self, evals: torch.Tensor, evecs: torch.Tensor,
              k: int | None) -> tuple[torch.Tensor, torch.Tensor]:
        order = torch.argsort(evals, descending=True)
        if k is not None:
            if not 1 <= k <= evals.numel():
                raise InvalidInputError(f"k must be in [1, {evals.numel()}], got {k}")
            order = order[:k]
        return evals[order], evecs[:, order]

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.space.numel} parameters)"

    # ---- persistence -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """Tensors and metadata to rebuild this matrix with :func:`tangentlab.pmat.load`.

        Returns
        -------
        dict
            Tensors and plain Python metadata (``torch.save``-able).
        """
        raise self._unsupported("state_dict", "PMatDense or PMatLowRank")

    def _meta(self) -> dict[str, Any]:
        return {"type": type(self).__name__, "space": self.space.state()}


def check_damping(damping: float) -> float:
    d = float(damping)
    if d < 0 or d != d:
        raise InvalidInputError(f"damping must be >= 0, got {damping}")
    return d


# ---- lazy combinations of matrices of any representations ------------------------------
class PMatSum(PMat):
    """``Σ_i a_i M_i`` evaluated lazily (``mv``, ``vTMv``, ``trace``, ``diag``, ``to_dense``).

    Parameters
    ----------
    terms : list of PMat
        The matrices ``M_i``, on one space (nested sums are flattened).
    coefs : list of float or None
        The coefficients ``a_i`` (None: ones).
    """

    def __init__(self, terms: list[PMat], coefs: list[float] | None = None):
        flat_terms: list[PMat] = []
        flat_coefs: list[float] = []
        for t, a in zip(terms, coefs or [1.0] * len(terms)):
            if isinstance(t, PMatSum):
                flat_terms.extend(t.terms)
                flat_coefs.extend(a * c for c in t.coefs)
            else:
                flat_terms.append(t)
                flat_coefs.append(a)
        self.terms: list[PMat] = flat_terms
        self.coefs: list[float] = flat_coefs
        self.space = flat_terms[0].space
        self.budget = flat_terms[0].budget

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the stored tensors."""
        return self.terms[0].dtype

    @property
    def device(self) -> torch.device:
        """The device of the stored tensors."""
        return self.terms[0].device

    def mv(self, v: PVector) -> PVector:
        out = None
        for t, a in zip(self.terms, self.coefs):
            y = a * t.mv(v)
            out = y if out is None else out + y
        return out  # type: ignore[return-value]

    def trace(self) -> torch.Tensor:
        return sum(a * t.trace() for t, a in zip(self.terms, self.coefs))  # type: ignore[return-value]

    def diag(self) -> PVector:
        out = None
        for t, a in zip(self.terms, self.coefs):
            y = a * t.diag()
            out = y if out is None else out + y
        return out  # type: ignore[return-value]

    def to_dense(self) -> torch.Tensor:
        return sum(a * t.to_dense() for t, a in zip(self.terms, self.coefs))  # type: ignore[return-value]

    def _scale(self, s: float) -> PMatSum:
        return PMatSum(self.terms, [a * s for a in self.coefs])


class PMatProduct(PMat):
    """``M_1 M_2 ⋯`` evaluated lazily (``mv`` and ``to_dense``).

    Parameters
    ----------
    factors : list of PMat
        The matrices ``M_1, M_2, …``, on one space.
    """

    def __init__(self, factors: list[PMat]):
        self.factors = factors
        self.space = factors[0].space
        self.budget = factors[0].budget

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the stored tensors."""
        return self.factors[0].dtype

    @property
    def device(self) -> torch.device:
        """The device of the stored tensors."""
        return self.factors[0].device

    def mv(self, v: PVector) -> PVector:
        for f in reversed(self.factors):
            v = f.mv(v)
        return v

    def to_dense(self) -> torch.Tensor:
        out = self.factors[0].to_dense()
        for f in self.factors[1:]:
            out = out @ f.to_dense()
        return out
