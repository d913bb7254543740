"""Lazy sums, scalings and products of matrices of different representations."""

from __future__ import annotations

import torch

from ..vectors import PVector
from .base import PMat


class PMatSum(PMat):
    """``Σ_i a_i M_i`` evaluated lazily (``mv``, ``vTMv``, ``trace``, ``diag``, ``to_dense``)."""

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
        self.terms, self.coefs = flat_terms, flat_coefs
        self.space = flat_terms[0].space
        self.budget = flat_terms[0].budget

    @property
    def dtype(self) -> torch.dtype:
        return self.terms[0].dtype

    @property
    def device(self) -> torch.device:
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
    """``M_1 M_2 ⋯`` evaluated lazily (``mv`` and ``to_dense``)."""

    def __init__(self, factors: list[PMat]):
        self.factors = factors
        self.space = factors[0].space
        self.budget = factors[0].budget

    @property
    def dtype(self) -> torch.dtype:
        return self.factors[0].dtype

    @property
    def device(self) -> torch.device:
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
