"""Function-space matrices: the empirical NTK Gram tensor.

``FMatDense`` stores ``K[n, m, c, d] = ⟨φ_c(x_n), φ_d(x'_m)⟩`` with layout
``(N1, N2, C, D)`` (examples first, as in ``torch.func`` / neural-tangents).
Flattened as a matrix (:meth:`FMatDense.as_matrix`), row ``n·C + c`` is
(example ``n``, output ``c``), matching :meth:`FVector.flat`. No normalization:
``K = Φ Φᵀ``, so the non-zero eigenvalues of the Fisher ``F = ΦᵀΦ / N`` are those
of ``K`` divided by ``N``.
"""

from __future__ import annotations

from collections.abc import Iterator
from numbers import Number
from typing import Any

import torch

from .data import Batches
from .engine import Capture, Engine, ops
from .errors import InvalidInputError
from .memory import tensor_nbytes
from .vectors import FVector


class FMatDense:
    """A dense NTK Gram tensor between two sets of examples (or one set with itself)."""

    def __init__(self, data: torch.Tensor, layers: dict[str, FMatDense] | None = None,
                 symmetric: bool | None = None):
        if data.dim() != 4:
            raise InvalidInputError(f"FMatDense expects (N1, N2, C, D), got {tuple(data.shape)}")
        self.data = data
        self.layers = layers
        self.symmetric = (data.shape[0] == data.shape[1] and data.shape[2] == data.shape[3]) \
            if symmetric is None else symmetric

    @property
    def shape(self) -> torch.Size:
        return self.data.shape

    def size(self) -> tuple[int, int]:
        n1, n2, c, d = self.data.shape
        return (n1 * c, n2 * d)

    def _square(self, verb: str) -> None:
        if not self.symmetric:
            raise InvalidInputError(f"`{verb}` needs a square (one-set) kernel; this one is "
                                    f"{tuple(self.data.shape)}")

    def as_matrix(self) -> torch.Tensor:
        """The ``(N1·C) × (N2·D)`` matrix, row ``n·C + c``."""
        n1, n2, c, d = self.data.shape
        return self.data.permute(0, 2, 1, 3).reshape(n1 * c, n2 * d)

    def to_dense(self) -> torch.Tensor:
        return self.data

    def _check_fvec(self, v: FVector) -> None:
        if not isinstance(v, FVector) or v.shape != (self.data.shape[1], self.data.shape[3]):
            got = tuple(v.shape) if isinstance(v, FVector) else type(v).__name__
            raise InvalidInputError(
                f"expected an FVector of shape {(self.data.shape[1], self.data.shape[3])}, got {got}"
            )

    def mv(self, v: FVector) -> FVector:
        """``(K v)[n, c] = Σ_{m,d} K[n, m, c, d] v[m, d]``."""
        self._check_fvec(v)
        return FVector(torch.einsum("nmcd,md->nc", self.data, v.tensor))

    def vTMv(self, v: FVector) -> torch.Tensor:
        self._square("vTMv")
        return v.dot(self.mv(v))

    def trace(self) -> torch.Tensor:
        """``Σ_n Σ_c K[n, n, c, c]``."""
        self._square("trace")
        return self.diag().sum()

    def diag(self) -> torch.Tensor:
        """``K[n, n, c, c]`` as an ``(N, C)`` tensor."""
        self._square("diag")
        return torch.einsum("nncc->nc", self.data).clone()

    def eigh(self, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Eigenvalues (descending) and eigenvectors (columns of ``(N·C, k)``, rows ``n·C + c``)."""
        self._square("eigh")
        e, u = torch.linalg.eigh(self.as_matrix())
        order = torch.argsort(e, descending=True)
        if k is not None:
            order = order[:k]
        return e[order], u[:, order]

    def solve(self, v: FVector, damping: float = 0.0) -> FVector:
        """``(K + damping·I)⁻¹ v`` (kernel ridge regression coefficients)."""
        self._square("solve")
        self._check_fvec(v)
        a = self.as_matrix()
        a = a + damping * torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
        x = torch.linalg.solve(a, v.flat())
        return FVector(x.reshape(v.shape))

    def norm(self, ord: str | int = "fro") -> torch.Tensor:
        if ord == "fro":
            return torch.linalg.vector_norm(self.data)
        if ord == 2:
            return torch.linalg.matrix_norm(self.as_matrix(), 2)
        raise InvalidInputError(f"unsupported norm {ord!r}")

    def layer(self, name: str) -> FMatDense:
        """The contribution of one layer (module path); needs ``per_layer=True`` at construction."""
        if self.layers is None:
            raise InvalidInputError("per-layer kernels were not computed; pass per_layer=True to ntk()")
        return self.layers[name]

    def select(self, layers: list[str] | str) -> FMatDense:
        """The kernel of a subset of layers (module paths): the sum of their per-layer blocks."""
        names = [layers] if isinstance(layers, str) else list(layers)
        if self.layers is None:
            raise InvalidInputError("per-layer kernels were not computed; pass per_layer=True to ntk(), "
                                    "or ntk(..., params=...) for a subset")
        unknown = [n for n in names if n not in self.layers]
        if unknown:
            raise InvalidInputError(f"no layers {unknown}; this kernel has {sorted(self.layers)}")
        parts = {n: self.layers[n] for n in names}
        return FMatDense(sum(p.data for p in parts.values()), parts, self.symmetric)

    def to_scipy(self):
        from .linop import fmat_to_scipy

        return fmat_to_scipy(self)

    def __add__(self, other: FMatDense) -> FMatDense:
        if not isinstance(other, FMatDense):
            return NotImplemented
        return FMatDense(self.data + other.data, symmetric=self.symmetric and other.symmetric)

    def __sub__(self, other: FMatDense) -> FMatDense:
        return self + (-1.0) * other

    def __mul__(self, s: Any) -> FMatDense:
        if not isinstance(s, (Number, torch.Tensor)):
            return NotImplemented
        layers = {k: v * s for k, v in self.layers.items()} if self.layers else None
        return FMatDense(self.data * s, layers, self.symmetric)

    __rmul__ = __mul__

    def state_dict(self) -> dict[str, Any]:
        return {"type": "FMatDense", "data": self.data, "symmetric": self.symmetric,
                "layers": {k: v.data for k, v in self.layers.items()} if self.layers else None}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> FMatDense:
        layers = {k: cls(v, symmetric=state["symmetric"]) for k, v in state["layers"].items()} \
            if state.get("layers") else None
        return cls(state["data"], layers, state["symmetric"])

    def __repr__(self) -> str:
        return f"FMatDense(N1={self.shape[0]}, N2={self.shape[1]}, C={self.shape[2]}, D={self.shape[3]})"


# ---------------------------------------------------------------------------------------
def capture_nbytes(cap: Capture) -> int:
    """Bytes held by the tensors of a capture (not the module, rule or layer description)."""
    return tensor_nbytes(cap, skip=("module", "rule", "layer"))


class _CaptureSource:
    """Captures of one data set, computed lazily in data order and kept in memory while they
    fit in a quarter of the budget; past that they are recomputed when visited again."""

    def __init__(self, engine: Engine, data: Batches, desc: str, first: Capture | None = None):
        self.engine, self.data, self.desc = engine, data, desc
        self.cache: list[Capture] | None = [] if first is None else [first]
        self.used = 0 if first is None else capture_nbytes(first)
        self.complete = False

    def _fresh(self, start: int = 0) -> Iterator[Capture]:
        for i, b in self.engine.batches(self.data, self.desc):
            if i >= start:
                yield self.engine.capture(b, i)

    def _keep(self, cap: Capture) -> None:
        if self.cache is None:
            return
        self.used += capture_nbytes(cap)
        if self.used > self.engine.budget.nbytes // 4:
            self.cache = None
        else:
            self.cache.append(cap)

    def __iter__(self) -> Iterator[Capture]:
        """All captures in order (extending the cache on the first full pass)."""
        if self.complete and self.cache is not None:
            yield from self.cache
            return
        if self.cache is None:
            yield from self._fresh()
            return
        done = list(self.cache)
        yield from done
        for cap in self._fresh(len(done)):
            self._keep(cap)
            yield cap
        self.complete = True

    def head(self, k: int) -> Iterator[Capture]:
        """The first ``k`` captures (already computed by an enclosing pass when cached)."""
        if self.cache is not None and len(self.cache) >= k:
            return iter(self.cache[:k])
        return (c for i, c in zip(range(k), self._fresh()))


def _center_terms(cap: Capture, engine: Engine, mean: torch.Tensor, space) -> torch.Tensor:
    """``A[n, c, d] = ⟨φ_c(x_n), m_d⟩`` for mean features ``m`` (D, P) on ``space``."""
    cols = []
    for d in range(mean.shape[0]):
        cols.append(ops.dot(cap, space, space.unflatten(mean[d])))  # (C, N)
    return torch.stack(cols, -1).transpose(0, 1)  # (N, C, D)


def gram_tiles(engine: Engine, data1: Any, data2: Any = None, per_layer: bool = False,
               mean: torch.Tensor | None = None,
               first: Capture | None = None,
               into: torch.Tensor | None = None) -> Iterator[tuple[slice, slice, Any]]:
    """Yield ``(rows, cols, block)`` tiles of the Gram tensor; for one set, only tiles with
    ``cols ≤ rows`` (the caller mirrors them). ``mean``: mean features ``(C, P)`` to center
    with; ``first``: the already computed capture of the first batch of ``data1``;
    ``into``: a zero ``(N1, N2, C, D)`` tensor the tiles are accumulated into in place
    (``per_layer=False`` only; the yielded block is then the view ``into[rows, cols]``)."""
    b1 = data1 if isinstance(data1, Batches) else Batches(data1)
    src1 = _CaptureSource(engine, b1, "NTK rows", first)
    symmetric = data2 is None
    src2 = None
    if not symmetric:
        src2 = _CaptureSource(engine, data2 if isinstance(data2, Batches) else Batches(data2), "NTK cols")
    layers = {lay.module: engine.space.select([p.name for p in lay.params]) for lay in engine.space.layers}
    row0 = 0
    for i, c1 in enumerate(src1):
        col0 = 0
        inner = src1.head(i + 1) if symmetric else iter(src2)  # type: ignore[arg-type]
        for c2 in inner:
            rows, cols = slice(row0, row0 + c1.n), slice(col0, col0 + c2.n)
            target = into[rows, cols] if into is not None and not per_layer else None
            blk = ops.gram(c1, c2, engine.space, per_layer=per_layer, out=target)
            if mean is not None:
                def corr(sp, m, c1=c1, c2=c2):
                    a1 = _center_terms(c1, engine, m, sp)
                    a2 = _center_terms(c2, engine, m, sp)
                    return -a1[:, None, :, :] - a2.permute(0, 2, 1)[None] + (m @ m.T)[None, None]

                if per_layer:
                    for name, sp in layers.items():
                        lay = engine.space.layer(name)
                        blk[name] = blk[name] + corr(sp, mean[:, lay.slice])
                elif target is not None:
                    blk += corr(engine.space, mean)
                else:
                    blk = blk + corr(engine.space, mean)
            yield rows, cols, blk
            col0 += c2.n
        row0 += c1.n


def build_ntk(engine: Engine, x1: Any, x2: Any = None, per_layer: bool = False,
              centering: bool = False) -> FMatDense:
    b1 = x1 if isinstance(x1, Batches) else Batches(x1)
    b2 = None if x2 is None else (x2 if isinstance(x2, Batches) else Batches(x2))
    n1 = b1.count()
    n2 = n1 if b2 is None else b2.count()
    index, batch = next(engine.batches(b1))
    first = engine.capture(batch, index)  # C, for the budget check; reused by the tiles
    c = first.n_outputs
    copies = 1 + (len(engine.space.layers) if per_layer else 0)
    engine.budget.check(
        f"an NTK of shape ({n1}, {n2}, {c}, {c})" + (" with per-layer blocks" if per_layer else ""),
        n1 * n2 * c * c * copies, engine.dtype,
        "Use fewer examples, a scalar output (e.g. output=lambda m, b: m(b[0])[:, :1]), "
        "tangentlab.fmat.ntk_diag for the diagonal only, or PMatImplicit / ntk-vector products.",
    )
    mean = None
    if centering:
        from .pmat.build import one_pass

        _, mean = one_pass(engine, b1, "mean features", lambda cap: None, centering=True, local=True)
    out = torch.zeros(n1, n2, c, c, dtype=engine.dtype, device=engine.device)
    per = {lay.module: torch.zeros_like(out) for lay in engine.space.layers} if per_layer else None
    symmetric = b2 is None
    for rows, cols, blk in gram_tiles(engine, b1, b2, per_layer, mean, first, into=None if per_layer else out):
        targets = [(out, sum(blk.values()) if per_layer else blk)]
        if per is not None:
            targets += [(per[k], v) for k, v in blk.items()]
        for t, v in targets:
            if per_layer or t is not out:  # otherwise already accumulated in place
                t[rows, cols] = v
            if symmetric and rows != cols:
                t[cols, rows] = v.permute(1, 0, 3, 2)
    layers = {k: FMatDense(v, symmetric=symmetric) for k, v in per.items()} if per else None
    return FMatDense(out, layers, symmetric)


def gram_sq_frobenius(engine: Engine, data: Any, mean: torch.Tensor | None = None) -> tuple[torch.Tensor, int]:
    """``‖Φ Φᵀ‖_F²`` tile by tile (without storing the kernel) and the number of examples."""
    total = torch.zeros((), dtype=engine.dtype, device=engine.device)
    n = 0
    for rows, cols, blk in gram_tiles(engine, data, None, False, mean):
        w = 1.0 if rows == cols else 2.0
        total += w * blk.pow(2).sum()
        if rows == cols:
            n += rows.stop - rows.start
    return total, n


def ntk_diag(engine: Engine, data: Any) -> torch.Tensor:
    """The kernel diagonal ``K[n, n, c, c] = ‖φ_c(x_n)‖²`` as ``(N, C)``, without the kernel
    (batches taken in output blocks: one block's ``g`` alive at a time)."""
    parts: list[torch.Tensor] = []
    for cap in engine.captures(data, "NTK diagonal", block=0):
        if cap.first:
            parts.append(cap.outputs.new_empty(cap.n, cap.total_outputs))
        parts[-1][:, cap.out_slice] = ops.sq_norms(cap, engine.space).T
    return torch.cat(parts)


