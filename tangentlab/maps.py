"""Jacobian maps between parameter space and function space.

``PushForward`` is ``J: PVector → FVector``, ``(J v)[n, c] = ⟨φ_c(x_n), v⟩``;
``PullBack`` is ``Jᵀ: FVector → PVector``, ``Jᵀ u = Σ_{n,c} u[n, c] φ_c(x_n)``
(sums, no normalization). Dense versions store ``J`` as an ``(N, C, P)`` tensor;
implicit versions use one forward-mode (``J v``) or backward (``Jᵀ u``) pass per
batch (:class:`~tangentlab.engine.operator.MatrixFreeOperator`) and need a data source
with a fixed order.

With a distributed engine, as for kernels, every rank passes the same full data: the
ranks split the batches (every ``world_size``-th batch each) and the results are
all-reduced, so every rank gets the single-process ``J``, ``J v`` and ``Jᵀ u``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from .data import Batches
from .engine import Capture, Engine, OutputBlocks, ops
from .engine.functional import jvp, vjp
from .engine.operator import MatrixFreeOperator
from .engine.passes import one_pass
from .errors import InvalidInputError
from .linop import jacobian_to_scipy
from .space import ParamSpace
from .vectors import FVector, PVector

if TYPE_CHECKING:
    from scipy.sparse.linalg import LinearOperator


def _check_pvec(space: ParamSpace, v: PVector) -> None:
    if not isinstance(v, PVector) or v.space.names != space.names or any(
        a.shape != b.shape for a, b in zip(v.space.params, space.params)
    ):
        raise InvalidInputError("expected a PVector on the Jacobian's parameter space")


class PushForwardDense:
    """``J`` stored as a ``(N, C, P)`` tensor.

    Parameters
    ----------
    space : ParamSpace
        The parameter space (``P``).
    data : torch.Tensor
        ``J``, ``(N, C, P)``.
    """

    def __init__(self, space: ParamSpace, data: torch.Tensor):
        if data.dim() != 3 or data.shape[2] != space.numel:
            raise InvalidInputError(f"Jacobian must be (N, C, {space.numel}), got {tuple(data.shape)}")
        self.space, self.data = space, data

    @classmethod
    def from_engine(cls, engine: Engine, data: Any) -> PushForwardDense:
        """``J`` of ``data``, filled one output block at a time (with a distributed engine:
        each rank fills its batches' rows, then the rows are all-reduced).

        Parameters
        ----------
        engine : Engine
            The engine of the model, its outputs and parameters.
        data : Any
            The ``N`` examples.

        Returns
        -------
        PushForwardDense
            ``J``, ``(N, C, P)``.

        Raises
        ------
        MemoryBudgetError
            When ``N·C·P`` entries exceed the memory budget.
        """
        b = data if isinstance(data, Batches) else Batches(data)
        space, red = engine.space, engine.reducer
        p = space.numel
        starts = np.cumsum([0] + [t[0].shape[0] for t in b]).tolist() if red.active else None
        parts: list[torch.Tensor] = []
        rows = [0]

        def new_rows(cap: Capture) -> None:
            if starts is not None:  # the whole (N, C, P) Jacobian, this rank's rows filled
                if not parts:
                    engine.budget.check(f"a Jacobian with {starts[-1] * cap.total_outputs} rows × {p} parameters",
                                        starts[-1] * cap.total_outputs * p, engine.dtype,
                                        "Use jacobian(..., implicit=True) for matrix-free products.")
                    parts.append(cap.outputs.new_zeros(starts[-1], cap.total_outputs, p))
                return
            rows[0] += cap.n * cap.total_outputs
            engine.budget.check(
                f"a Jacobian with {rows[0]} rows (so far) × {p} parameters", rows[0] * p, engine.dtype,
                "Use jacobian(..., implicit=True) for matrix-free products.",
            )
            parts.append(cap.outputs.new_empty(cap.n, cap.total_outputs, p))

        def fill(cap: Capture) -> None:
            part = parts[-1] if starts is None else parts[0][starts[cap.index]:starts[cap.index] + cap.n]
            ops.per_example(cap, space, out=part[:, cap.out_slice].transpose(0, 1))

        take = None if starts is None else (lambda i: i % red.world_size == red.rank)
        one_pass(engine, b, "Jacobian", fill, local=True, output_blocks=OutputBlocks.auto(), per_batch=new_rows,
                 take=take)
        if starts is not None:
            c = max(red.counts(parts[0].shape[1] if parts else 0, engine.device))
            if not parts:  # this rank had no batch
                parts.append(torch.zeros(starts[-1], c, p, dtype=engine.dtype, device=engine.device))
            red.sum_(parts[0])
        return cls(space, parts[0] if len(parts) == 1 else torch.cat(parts))

    def mv(self, v: PVector) -> FVector:
        """The push-forward ``J v``: ``(J v)[n, c] = ⟨φ_c(x_n), v⟩``.

        Parameters
        ----------
        v : PVector
            A vector on the Jacobian's parameter space.

        Returns
        -------
        FVector
            ``(N, C)``.
        """
        _check_pvec(self.space, v)
        return FVector(self.data @ v.flat())

    __matmul__ = mv

    def select(self, params: Any) -> PushForwardDense:
        """The Jacobian with respect to a subset of the parameters (names or module prefixes).

        Parameters
        ----------
        params : str, list of str or ParamSpace
            Parameter names or module prefixes, or a sub-space.

        Returns
        -------
        PushForwardDense
            ``(N, C, P_S)``.
        """
        sub = params if isinstance(params, ParamSpace) else self.space.select(
            [params] if isinstance(params, str) else params)
        idx = torch.cat([torch.arange(self.space.info(p.name).offset,
                                      self.space.info(p.name).offset + p.numel) for p in sub.params])
        return PushForwardDense(sub, self.data[:, :, idx.to(self.data.device)])

    @property
    def T(self) -> PullBackDense:  # noqa: N802
        """The pull-back ``Jᵀ`` (sharing the stored tensor)."""
        return PullBackDense(self.space, self.data)

    def to_dense(self) -> torch.Tensor:
        """The stored ``(N, C, P)`` tensor."""
        return self.data

    def to_scipy(self) -> LinearOperator:
        """``J`` as a ``scipy.sparse.linalg.LinearOperator`` of shape ``(N·C, P)`` (float64 numpy vectors)."""
        return jacobian_to_scipy(self, self.T)


class PullBackDense:
    """``Jᵀ`` from a stored ``(N, C, P)`` Jacobian.

    Parameters
    ----------
    space : ParamSpace
        The parameter space (``P``).
    data : torch.Tensor
        ``J``, ``(N, C, P)``.
    """

    def __init__(self, space: ParamSpace, data: torch.Tensor):
        self.space, self.data = space, data

    def mv(self, u: FVector) -> PVector:
        """The pull-back ``Jᵀ u = Σ_{n,c} u[n, c] φ_c(x_n)``.

        Parameters
        ----------
        u : FVector
            ``(N, C)``, one value per example and output.

        Returns
        -------
        PVector
            A vector on the Jacobian's parameter space.
        """
        if not isinstance(u, FVector) or u.shape != self.data.shape[:2]:
            raise InvalidInputError(f"expected an FVector of shape {tuple(self.data.shape[:2])}")
        return PVector.from_flat(self.space, torch.einsum("ncp,nc->p", self.data, u.tensor))

    __matmul__ = mv

    @property
    def T(self) -> PushForwardDense:  # noqa: N802
        """The push-forward ``J`` (sharing the stored tensor)."""
        return PushForwardDense(self.space, self.data)


class PushForwardImplicit(MatrixFreeOperator):
    """``J v`` with forward-mode AD, one pass over the data; nothing stored.

    Parameters
    ----------
    engine : Engine
        The engine of the model, its outputs and parameters.
    data : Any
        The ``N`` examples (anything :class:`~tangentlab.data.Batches` accepts), in a fixed order.
    batch_size : int, optional
        Split tensors into batches of this size.
    """

    split_batches = True

    def mv(self, v: PVector) -> FVector:
        """The push-forward ``J v`` by forward-mode products, as :meth:`PushForwardDense.mv`.

        Parameters
        ----------
        v : PVector
        """
        _check_pvec(self.space, v)
        vd = v.to_dict()
        return FVector(self._rows(lambda i, b, s: jvp(self.engine, b, i, vd), "J v"))

    __matmul__ = mv

    @property
    def T(self) -> PullBackImplicit:  # noqa: N802
        """The pull-back ``Jᵀ`` on the same data."""
        return PullBackImplicit(self.engine, self.examples)

    def to_scipy(self) -> LinearOperator:
        """``J`` as a ``scipy.sparse.linalg.LinearOperator`` of shape ``(N·C, P)`` (float64 numpy vectors)."""
        return jacobian_to_scipy(self, self.T)


class PullBackImplicit(MatrixFreeOperator):
    """``Jᵀ u`` with one backward pass per batch; nothing stored.

    Parameters
    ----------
    engine : Engine
        The engine of the model, its outputs and parameters.
    data : Any
        The ``N`` examples (anything :class:`~tangentlab.data.Batches` accepts), in a fixed order.
    batch_size : int, optional
        Split tensors into batches of this size.
    """

    split_batches = True

    def mv(self, u: FVector) -> PVector:
        """The pull-back ``Jᵀ u`` by backward passes, as :meth:`PullBackDense.mv`.

        Parameters
        ----------
        u : FVector
        """
        if not isinstance(u, FVector):
            raise InvalidInputError("expected an FVector")
        ut = u.tensor

        def pull(i: int, b: tuple, start: int) -> torch.Tensor:
            n = b[0].shape[0]
            if start + n > ut.shape[0]:
                raise InvalidInputError(f"the FVector has {ut.shape[0]} rows, the data has more examples")
            return self.space.flatten(vjp(self.engine, b, i, ut[start:start + n]))

        total = torch.zeros(self.space.numel, dtype=self.dtype, device=self.device)
        n = self._sum(pull, total, "Jᵀ u")
        if n != ut.shape[0]:
            raise InvalidInputError(f"the FVector has {ut.shape[0]} rows but the data has {n} examples")
        return PVector.from_flat(self.space, total)

    __matmul__ = mv

    @property
    def T(self) -> PushForwardImplicit:  # noqa: N802
        """The push-forward ``J`` on the same data."""
        return PushForwardImplicit(self.engine, self.examples)
