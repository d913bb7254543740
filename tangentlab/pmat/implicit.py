"""Matrix-free representation: the exact matrix, never stored.

``mv`` and ``vTMv`` take one pass over the data with forward-mode products
(``J v``) and, for ``mv``, one backward pass (``Jᵀ(J v)``). ``trace`` and
``diag`` take one engine pass (per-example squared norms / squared
activations). ``solve`` runs conjugate gradients; ``eigh`` runs Lanczos
(``scipy.sparse.linalg.eigsh``); ``norm('fro')`` is exact through the NTK Gram
identity ``‖F‖_F = ‖Φ Φᵀ‖_F / N``, computed tile by tile.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from ..engine import Engine, OutputBlocks, ops
from ..engine.functional import jvp, vjp
from ..engine.gram import gram_sq_frobenius
from ..engine.operator import MatrixFreeOperator
from ..engine.passes import one_pass
from ..errors import InvalidInputError
from ..vectors import PVector
from .base import PMat, check_damping
from .registry import register, vector_entries


@register("implicit", stores="nothing (model + data)", memory="`O(P)`",
          summary="`mv`/`vTMv` by forward-mode products, exact `trace`/`diag`, CG `solve`, Lanczos "
          "`eigh(k)`, exact Frobenius norm through the Gram matrix", keeps="all", distributed=True,
          footprint=vector_entries)
class PMatImplicit(MatrixFreeOperator, PMat):
    """``F = (1/N) Σ_n J_nᵀ J_n`` applied on the fly from ``model`` and ``data``.

    Memory ``O(P)`` (plus one batch of activations). Random outputs (Monte-Carlo
    Fisher) draw the same samples on every pass, so repeated products see one
    fixed matrix as long as the data order is fixed: for them a shuffling loader is
    refused. The batch loop, the reduction over ranks (each rank passes its shard) and
    the precision policy are :class:`~tangentlab.engine.operator.MatrixFreeOperator`'s.

    Parameters
    ----------
    engine : Engine
        The engine of the model, its outputs and parameters.
    data : Any
        The examples (anything :class:`~tangentlab.data.Batches` accepts).
    centering : bool
        Subtract the mean over examples of the pseudo-outputs' gradients first (a covariance).
    """

    def __init__(self, engine: Engine, data: Any, centering: bool = False):
        self.centering = centering
        super().__init__(engine, data)
        self.budget = engine.budget
        self._mean: torch.Tensor | None = None
        self._n: int | None = None

    def needs_order(self) -> bool:
        return self.engine.output.random  # a sum over examples, but samples are tied to batch positions

    def __getstate__(self) -> dict[str, Any]:
        raise self._unsupported("pickling", "PMatDense or PMatLowRank",
                                "it holds the model and the data, not the matrix")

    def _means(self) -> torch.Tensor:
        """Mean tangent features ``(C, P)`` (computed once)."""
        if self._mean is None:
            self._n, self._mean = one_pass(self.engine, self.examples, "mean features",
                                           lambda cap: None, centering=True, reduce=[])
        return self._mean  # type: ignore[return-value]

    def _center_mv(self, v: torch.Tensor) -> torch.Tensor:
        m = self._means()
        return m.T @ (m @ v)

    def mv(self, v: PVector) -> PVector:
        self._check_vec(v)
        vd = v.to_dict()
        total = torch.zeros(self.space.numel, dtype=self.dtype, device=self.device)
        n = self._sum(lambda i, b, s: self.space.flatten(vjp(self.engine, b, i, jvp(self.engine, b, i, vd))),
                      total, "implicit mv")
        out = total / n
        if self.centering:
            out = out - self._center_mv(self._input(v.flat()))
        return self._vec(out)

    def vTMv(self, v: PVector) -> torch.Tensor:
        self._check_vec(v)
        vd = v.to_dict()
        total = torch.zeros((), dtype=self.dtype, device=self.device)
        n = self._sum(lambda i, b, s: jvp(self.engine, b, i, vd).pow(2).sum(), total, "implicit vTMv")
        out = total / n
        if self.centering:
            out = out - (self._means() @ self._input(v.flat())).pow(2).sum()
        return out

    def trace(self) -> torch.Tensor:
        acc = [torch.zeros((), dtype=self.dtype, device=self.device)]

        def consume(cap):
            acc[0] += ops.sq_norms(cap, self.space).sum()

        n, _ = one_pass(self.engine, self.examples, "implicit trace", consume, reduce=acc, merge=True,
                        output_blocks=OutputBlocks.auto())
        out = acc[0] / n
        if self.centering:
            out = out - self._means().pow(2).sum()
        return out

    def diag(self) -> PVector:
        acc = torch.zeros(self.space.numel, dtype=self.dtype, device=self.device)

        def consume(cap):
            acc.add_(ops.diag(cap, self.space))

        n, _ = one_pass(self.engine, self.examples, "implicit diag", consume, reduce=[acc], merge=True,
                        output_blocks=OutputBlocks.auto())
        out = acc / n
        if self.centering:
            out = out - self._means().pow(2).sum(0)
        return self._vec(out)

    def _select(self, sub, idx) -> PMatImplicit:
        return PMatImplicit(self.engine.with_space(sub), self.examples, self.centering)

    def to_dense(self) -> torch.Tensor:
        raise self._unsupported("to_dense", "PMatDense (fim(..., representation='dense'))",
                                "it never stores the matrix")

    def inverse(self, damping: float = 0.0) -> PMat:
        raise self._unsupported("inverse", "solve(v, damping) (conjugate gradients) or PMatDense")

    def state_dict(self) -> dict[str, Any]:
        raise self._unsupported("state_dict", "PMatDense or PMatLowRank",
                                "it holds the model and the data, not the matrix")

    def solve(self, v: PVector, damping: float = 0.0, *, preconditioner: PMat | None = None,
              x0: PVector | None = None, rtol: float = 1e-8, maxiter: int | None = None) -> PVector:
        """Conjugate gradients on ``(F + damping·I) x = v``.

        ``preconditioner`` is any PMat with ``solve`` (e.g. a PMatDiag or
        PMatBlockDiag of the same Fisher), applied as ``P⁻¹ r =
        preconditioner.solve(r, damping)``. Stops when ``‖r‖ ≤ rtol·‖v‖``.

        Parameters
        ----------
        v : PVector
            The right-hand side.
        damping : float
            ``λ ≥ 0``.
        preconditioner : PMat, optional
            A matrix with ``solve`` approximating ``F``.
        x0 : PVector, optional
            The starting point (default zero).
        rtol : float
            The relative tolerance on the residual.
        maxiter : int, optional
            The most iterations (default ``10 P``).

        Returns
        -------
        PVector
            ``x``.
        """
        self._check_vec(v)
        lam = check_damping(damping)
        b = v.flat().detach().to(self.dtype)
        x = torch.zeros_like(b) if x0 is None else x0.flat().detach().to(self.dtype).clone()

        def op(z: torch.Tensor) -> torch.Tensor:
            return self.mv(self._vec(z)).flat() + lam * z

        def prec(r: torch.Tensor) -> torch.Tensor:
            if preconditioner is None:
                return r
            return preconditioner.solve(self._vec(r), lam).flat()

        r = b - op(x) if x0 is not None else b.clone()
        z = prec(r)
        p = z.clone()
        rz = r @ z
        bnorm = b.norm()
        if bnorm == 0:
            return self._vec(torch.zeros_like(b))
        for _ in range(maxiter or 10 * self.space.numel):
            if r.norm() <= rtol * bnorm:
                break
            ap = op(p)
            alpha = rz / (p @ ap)
            x = x + alpha * p
            r = r - alpha * ap
            z = prec(r)
            rz_new = r @ z
            p = z + (rz_new / rz) * p
            rz = rz_new
        self.last_residual = float(r.norm() / bnorm)
        return self._vec(x)

    def eigh(self, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` eigenpairs by Lanczos (``k`` is required and must be < P)."""
        p = self.space.numel
        if k is None or not 1 <= k < p:
            raise self._unsupported("eigh() of the full spectrum", "eigh(k) with k < P, or PMatDense",
                                    "Lanczos gives the top eigenpairs")
        from scipy.sparse.linalg import eigsh

        # A fixed start vector: the same Lanczos run on every rank when distributed, and
        # reproducible results on one process.
        v0 = torch.randn(p, generator=torch.Generator().manual_seed(0), dtype=torch.float64).numpy()
        vals, vecs = eigsh(self.to_scipy(), k=k, which="LA", v0=v0)
        order = np.argsort(vals)[::-1].copy()
        return (torch.as_tensor(vals[order], dtype=self.dtype, device=self.device),
                torch.as_tensor(vecs[:, order], dtype=self.dtype, device=self.device))

    def norm(self, ord: str | int = "fro") -> torch.Tensor:
        if ord == 2:
            return self.eigh(1)[0][0]
        if ord != "fro":
            raise InvalidInputError(f"unsupported norm {ord!r}; use 'fro' or 2")
        if self.engine.reducer.active:
            raise self._unsupported("norm('fro') with distributed=...", "norm(2), or norm('fro') on one process",
                                    "the Gram identity needs every pair of examples, across shards")
        m = self._means() if self.centering else None
        sq, n = gram_sq_frobenius(self.engine, self.examples, mean=m)
        return torch.sqrt(sq) / n
