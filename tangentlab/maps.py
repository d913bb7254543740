"""Jacobian maps between parameter space and function space.

``PushForward`` is ``J: PVector → FVector``, ``(J v)[n, c] = ⟨φ_c(x_n), v⟩``;
``PullBack`` is ``Jᵀ: FVector → PVector``, ``Jᵀ u = Σ_{n,c} u[n, c] φ_c(x_n)``
(sums, no normalization). Dense versions store ``J`` as an ``(N, C, P)`` tensor;
implicit versions use one forward-mode (``J v``) or backward (``Jᵀ u``) pass per
batch and need a data source with a fixed order.
"""

from __future__ import annotations

from typing import Any

import torch

from .data import Batches
from .engine import Engine, ops
from .engine.functional import jvp, vjp
from .errors import InvalidInputError
from .space import ParamSpace
from .vectors import FVector, PVector


def _check_pvec(space: ParamSpace, v: PVector) -> None:
    if not isinstance(v, PVector) or v.space.names != space.names or any(
        a.shape != b.shape for a, b in zip(v.space.params, space.params)
    ):
        raise InvalidInputError("expected a PVector on the Jacobian's parameter space")


class PushForwardDense:
    """``J`` stored as a ``(N, C, P)`` tensor."""

    def __init__(self, space: ParamSpace, data: torch.Tensor):
        if data.dim() != 3 or data.shape[2] != space.numel:
            raise InvalidInputError(f"Jacobian must be (N, C, {space.numel}), got {tuple(data.shape)}")
        self.space, self.data = space, data

    @classmethod
    def from_engine(cls, engine: Engine, data: Any) -> PushForwardDense:
        b = data if isinstance(data, Batches) else Batches(data)
        p = engine.space.numel
        parts: list[torch.Tensor] = []
        rows = 0
        for cap in engine.captures(b, "Jacobian", block=0):  # filled one output block at a time
            if cap.first:
                rows += cap.n * cap.total_outputs
                engine.budget.check(
                    f"a Jacobian with {rows} rows (so far) × {p} parameters", rows * p, engine.dtype,
                    "Use jacobian(..., implicit=True) for matrix-free products.",
                )
                parts.append(cap.outputs.new_empty(cap.n, cap.total_outputs, p))
            ops.per_example(cap, engine.space, out=parts[-1][:, cap.out_slice].transpose(0, 1))
        return cls(engine.space, parts[0] if len(parts) == 1 else torch.cat(parts))

    def mv(self, v: PVector) -> FVector:
        _check_pvec(self.space, v)
        return FVector(self.data @ v.flat())

    __matmul__ = mv

    def select(self, params: Any) -> PushForwardDense:
        """The Jacobian with respect to a subset of the parameters (names or module prefixes)."""
        sub = params if isinstance(params, ParamSpace) else self.space.select(
            [params] if isinstance(params, str) else params)
        idx = torch.cat([torch.arange(self.space.info(p.name).offset,
                                      self.space.info(p.name).offset + p.numel) for p in sub.params])
        return PushForwardDense(sub, self.data[:, :, idx.to(self.data.device)])

    @property
    def T(self) -> PullBackDense:  # noqa: N802
        return PullBackDense(self.space, self.data)

    def to_dense(self) -> torch.Tensor:
        return self.data

    def to_scipy(self):
        from .linop import jacobian_to_scipy

        return jacobian_to_scipy(self, self.T)


class PullBackDense:
    """``Jᵀ`` from a stored ``(N, C, P)`` Jacobian."""

    def __init__(self, space: ParamSpace, data: torch.Tensor):
        self.space, self.data = space, data

    def mv(self, u: FVector) -> PVector:
        if not isinstance(u, FVector) or u.shape != self.data.shape[:2]:
            raise InvalidInputError(f"expected an FVector of shape {tuple(self.data.shape[:2])}")
        return PVector.from_flat(self.space, torch.einsum("ncp,nc->p", self.data, u.tensor))

    __matmul__ = mv

    @property
    def T(self) -> PushForwardDense:  # noqa: N802
        return PushForwardDense(self.space, self.data)


class _ImplicitBase:
    def __init__(self, engine: Engine, data: Any):
        self.engine, self.space = engine, engine.space
        self.examples = data if isinstance(data, Batches) else Batches(data)
        if self.examples.shuffles:
            raise InvalidInputError(
                "the data loader shuffles, so rows of J would not line up between passes; use "
                "shuffle=False"
            )


class PushForwardImplicit(_ImplicitBase):
    """``J v`` with forward-mode AD, one pass over the data; nothing stored."""

    def mv(self, v: PVector) -> FVector:
        _check_pvec(self.space, v)
        return FVector(torch.cat([jvp(self.engine, b, i, v.to_dict())
                                  for i, b in self.engine.batches(self.examples, "J v")]))

    __matmul__ = mv

    @property
    def T(self) -> PullBackImplicit:  # noqa: N802
        return PullBackImplicit(self.engine, self.examples)

    def to_scipy(self):
        from .linop import jacobian_to_scipy

        return jacobian_to_scipy(self, self.T)


class PullBackImplicit(_ImplicitBase):
    """``Jᵀ u`` with one backward pass per batch; nothing stored."""

    def mv(self, u: FVector) -> PVector:
        if not isinstance(u, FVector):
            raise InvalidInputError("expected an FVector")
        total = None
        start = 0
        for i, b in self.engine.batches(self.examples, "Jᵀ u"):
            n = b[0].shape[0]
            if start + n > u.shape[0]:
                raise InvalidInputError(f"the FVector has {u.shape[0]} rows, the data has more examples")
            g = self.space.flatten(vjp(self.engine, b, i, u.tensor[start:start + n]))
            total = g if total is None else total + g
            start += n
        if start != u.shape[0]:
            raise InvalidInputError(f"the FVector has {u.shape[0]} rows but the data has {start} examples")
        return PVector.from_flat(self.space, total)  # type: ignore[arg-type]

    __matmul__ = mv

    @property
    def T(self) -> PushForwardImplicit:  # noqa: N802
        return PushForwardImplicit(self.engine, self.examples)
