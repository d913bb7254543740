"""Function-space matrices: the empirical NTK Gram tensor.

``FMatDense`` stores ``K[n, m, c, d] = ⟨φ_c(x_n), φ_d(x'_m)⟩`` with layout
``(N1, N2, C, D)`` (examples first, as in ``torch.func`` / neural-tangents).
Flattened as a matrix (:meth:`FMatDense.as_matrix`), row ``n·C + c`` is
(example ``n``, output ``c``), matching :meth:`FVector.flat`. No normalization:
``K = Φ Φᵀ``, so the non-zero eigenvalues of the Fisher ``F = ΦᵀΦ / N`` are those
of ``K`` divided by ``N``.
"""

from __future__ import annotations

from numbers import Number
from typing import TYPE_CHECKING, Any, cast

import torch

from .data import Batches
from .engine import Capture, Engine, OutputBlocks, ops
from .engine.gram import deal_tiles, gram_sq_frobenius, gram_tiles
from .engine.passes import CaptureCache, one_pass
from .errors import InvalidInputError, format_bytes
from .linop import fmat_to_scipy
from .vectors import FVector

if TYPE_CHECKING:
    from scipy.sparse.linalg import LinearOperator

__all__ = ["FMatDense", "build_ntk", "ntk_diag", "gram_sq_frobenius"]


class FMatDense:
    """A dense NTK Gram tensor between two sets of examples (or one set with itself).

    The kernel ``K[n, m, c, d] = ⟨φ_c(x_n), φ_d(x'_m)⟩`` is not normalized (no mean over
    examples); its matrix form has rows ``n·C + c`` and columns ``m·D + d``.

    Parameters
    ----------
    data : torch.Tensor
        ``(N1, N2, C, D)``.
    layers : dict of str to FMatDense, optional
        Each layer's contribution (module path to kernel), summing to ``data``.
    symmetric : bool, optional
        Whether it is the kernel of one set with itself (None: when ``N1 = N2`` and ``C = D``).

    Raises
    ------
    InvalidInputError
        When ``data`` is not 4-d.
    """

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
        """``(N1, N2, C, D)``."""
        return self.data.shape

    def size(self) -> tuple[int, int]:
        """The matrix shape ``(N1·C, N2·D)``."""
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
        """The stored ``(N1, N2, C, D)`` tensor."""
        return self.data

    def _check_fvec(self, v: FVector) -> None:
        if not isinstance(v, FVector) or v.shape != (self.data.shape[1], self.data.shape[3]):
            got = tuple(v.shape) if isinstance(v, FVector) else type(v).__name__
            raise InvalidInputError(
                f"expected an FVector of shape {(self.data.shape[1], self.data.shape[3])}, got {got}"
            )

    def mv(self, v: FVector) -> FVector:
        """The product ``(K v)[n, c] = Σ_{m,d} K[n, m, c, d] v[m, d]``.

        Parameters
        ----------
        v : FVector
            ``(N2, D)``.

        Returns
        -------
        FVector
            ``(N1, C)``.
        """
        self._check_fvec(v)
        return FVector(torch.einsum("nmcd,md->nc", self.data, v.tensor))

    def vTMv(self, v: FVector) -> torch.Tensor:
        """The quadratic form ``vᵀ K v`` of a square kernel.

        Parameters
        ----------
        v : FVector
            ``(N, C)``.

        Returns
        -------
        torch.Tensor
            A 0-d tensor.
        """
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
        """Eigenvalues (descending) and eigenvectors (columns of ``(N·C, k)``, rows ``n·C + c``).

        Parameters
        ----------
        k : int, optional
            How many eigenpairs (None: all ``N·C``).

        Returns
        -------
        evals : torch.Tensor
            ``(k,)``, descending.
        evecs : torch.Tensor
            ``(N·C, k)``.
        """
        self._square("eigh")
        e, u = torch.linalg.eigh(self.as_matrix())
        order = torch.argsort(e, descending=True)
        if k is not None:
            order = order[:k]
        return e[order], u[:, order]

    def solve(self, v: FVector, damping: float = 0.0) -> FVector:
        """``(K + damping·I)⁻¹ v`` (kernel ridge regression coefficients).

        Parameters
        ----------
        v : FVector
            ``(N, C)``, the targets.
        damping : float
            The ridge ``λ`` added to the diagonal.

        Returns
        -------
        FVector
            ``(N, C)``.
        """
        self._square("solve")
        self._check_fvec(v)
        a = self.as_matrix()
        a = a + damping * torch.eye(a.shape[0], dtype=a.dtype, device=a.device)
        x = torch.linalg.solve(a, v.flat())
        return FVector(x.reshape(v.shape))

    def norm(self, ord: str | int = "fro") -> torch.Tensor:
        """A norm of the kernel matrix.

        Parameters
        ----------
        ord : {"fro", 2}
            ``"fro"``: the Frobenius norm; ``2``: the spectral norm of the ``(N1·C, N2·D)`` matrix.

        Returns
        -------
        torch.Tensor
            A 0-d tensor.
        """
        if ord == "fro":
            return torch.linalg.vector_norm(self.data)
        if ord == 2:
            return torch.linalg.matrix_norm(self.as_matrix(), 2)
        raise InvalidInputError(f"unsupported norm {ord!r}")

    def layer(self, name: str) -> FMatDense:
        """The contribution of one layer (module path); needs ``per_layer=True`` at construction.

        Parameters
        ----------
        name : str
            The module path.

        Returns
        -------
        FMatDense
            That layer's kernel.
        """
        if self.layers is None:
            raise InvalidInputError("per-layer kernels were not computed; pass per_layer=True to ntk()")
        return self.layers[name]

    def select(self, layers: list[str] | str) -> FMatDense:
        """The kernel of a subset of layers (module paths): the sum of their per-layer blocks.

        Parameters
        ----------
        layers : str or list of str
            Module paths.

        Returns
        -------
        FMatDense
            The partial kernel.

        Raises
        ------
        InvalidInputError
            Without per-layer kernels, or for an unknown layer.
        """
        names = [layers] if isinstance(layers, str) else list(layers)
        if self.layers is None:
            raise InvalidInputError("per-layer kernels were not computed; pass per_layer=True to ntk(), "
                                    "or ntk(..., params=...) for a subset")
        unknown = [n for n in names if n not in self.layers]
        if unknown:
            raise InvalidInputError(f"no layers {unknown}; this kernel has {sorted(self.layers)}")
        parts = {n: self.layers[n] for n in names}
        return FMatDense(cast(torch.Tensor, sum(p.data for p in parts.values())), parts, self.symmetric)

    def to_scipy(self) -> LinearOperator:
        """The ``(N1·C, N2·D)`` matrix as a ``scipy.sparse.linalg.LinearOperator``."""
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
        return FMatDense(self.data * s, layers, self.symmetric)  # type: ignore[operator]  # torch's stubs omit numbers.Number

    __rmul__ = __mul__

    def state_dict(self) -> dict[str, Any]:
        """Tensors and metadata to rebuild the kernel with :meth:`from_state_dict`."""
        return {"type": "FMatDense", "data": self.data, "symmetric": self.symmetric,
                "layers": {k: v.data for k, v in self.layers.items()} if self.layers else None}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> FMatDense:
        """Rebuild the kernel from ``state``, what its :meth:`state_dict` returned.

        Parameters
        ----------
        state : dict
        """
        layers = {k: cls(v, symmetric=state["symmetric"]) for k, v in state["layers"].items()} \
            if state.get("layers") else None
        return cls(state["data"], layers, state["symmetric"])

    def __repr__(self) -> str:
        return f"FMatDense(N1={self.shape[0]}, N2={self.shape[1]}, C={self.shape[2]}, D={self.shape[3]})"


# ---------------------------------------------------------------------------------------
def build_ntk(engine: Engine, x1: Any, x2: Any = None, per_layer: bool = False,
              centering: bool = False) -> FMatDense:
    """The dense kernel of ``x1`` with ``x2`` (or itself), tile by tile (:mod:`tangentlab.engine.gram`).

    With a distributed engine every rank passes the same full data: the tiles are dealt
    round-robin to the ranks (as in :func:`tangentlab.ntk_large.ntk_tiled`) and the kernel
    is all-reduced, so every rank gets the whole kernel.

    Parameters
    ----------
    engine : Engine
        The engine of the model, its outputs and parameters.
    x1 : Any
        The first ``N1`` examples.
    x2 : Any, optional
        The second ``N2`` examples (None: ``x1``).
    per_layer : bool
        Keep each layer's contribution.
    centering : bool
        Center the tangent features by their mean over ``x1``.

    Returns
    -------
    FMatDense
        ``(N1, N2, C, C)``, not normalized.

    Raises
    ------
    MemoryBudgetError
        When the kernel does not fit the memory budget (the message names the alternatives).
    """
    b1 = x1 if isinstance(x1, Batches) else Batches(x1)
    b2 = None if x2 is None else (x2 if isinstance(x2, Batches) else Batches(x2))
    rows = CaptureCache.of(engine, b1, "NTK rows")
    cols = None if b2 is None else CaptureCache.of(engine, b2, "NTK cols")
    n1 = sum(rows.sizes())  # the examples the output keeps (see Engine.select)
    n2 = n1 if cols is None else sum(cols.sizes())
    c = rows.first().n_outputs  # for the budget check; kept for the tiles
    copies = 1 + (len(engine.space.layers) if per_layer else 0)
    engine.budget.check(
        f"an NTK of shape ({n1}, {n2}, {c}, {c})" + (" with per-layer blocks" if per_layer else ""),
        n1 * n2 * c * c * copies, engine.dtype,
        ntk_alternatives(n1, n2, c, engine.space.numel, engine.dtype, symmetric=b2 is None),
    )
    mean = None
    if centering:
        _, mean = one_pass(engine, b1, "mean features", lambda cap: None, centering=True, local=True)
    out = torch.zeros(n1, n2, c, c, dtype=engine.dtype, device=engine.device)
    per = {lay.module: torch.zeros_like(out) for lay in engine.space.layers} if per_layer else None
    symmetric = b2 is None
    red = engine.reducer
    keep = None
    if red.active:
        mine = set(deal_tiles(len(rows.sizes()), len(cols.sizes()) if cols else len(rows.sizes()), symmetric, red))
        keep = lambda i, j: (i, j) in mine  # noqa: E731
    for t in gram_tiles(engine, rows, cols, per_layer=per_layer, mean=mean, into=None if per_layer else out,
                        keep=keep):
        blk = t.block
        targets = [(out, sum(blk.values()) if per_layer else blk)]
        if per is not None:
            targets += [(per[k], v) for k, v in blk.items()]
        for target, v in targets:
            if per_layer or target is not out:  # otherwise already accumulated in place
                target[t.rows, t.cols] = v
            if symmetric and t.i != t.j:
                target[t.cols, t.rows] = v.permute(1, 0, 3, 2)
    red.sum_(out, *(per.values() if per else ()))
    layers = {k: FMatDense(v, symmetric=symmetric) for k, v in per.items()} if per else None
    return FMatDense(out, layers, symmetric)


def ntk_alternatives(n1: int, n2: int, c: int, p: int, dtype: torch.dtype, symmetric: bool = True) -> str:
    """What to use instead of an in-memory NTK ``(n1, n2, c, c)`` over the memory budget, with
    the size each needs (``p`` parameters)."""
    item = torch.empty((), dtype=dtype).element_size()
    ways = [f"tangentlab.ntk_large.ntk_tiled(model, x1{'' if symmetric else ', x2'}, path=...), which "
            f"writes the kernel to disk tile by tile ({format_bytes(n1 * n2 * c * c * item)} on disk, "
            "one block × block tile in memory; `block=` sets it)"]
    if symmetric:
        ways.append(f"tangentlab.ntk_large.NTKOperator(model, x1), matrix-free (K·u products, diag, "
                    f"trace, top eigenpairs; about {format_bytes((p + 2 * n1 * c) * item)})")
    ways.append(f"tangentlab.fmat.ntk_diag for the diagonal only ({format_bytes(n1 * c * item)})")
    if c > 1:
        ways.append(f"a scalar output (e.g. output=lambda m, b: m(b[0])[:, :1]), 1/{c * c} of the "
                    f"kernel ({format_bytes(n1 * n2 * item)})")
    return "Use " + "; ".join(ways) + "; or fewer examples."


def ntk_diag(engine: Engine, data: Any) -> torch.Tensor:
    """The kernel diagonal ``K[n, n, c, c] = ‖φ_c(x_n)‖²`` as ``(N, C)``, without the kernel
    (batches taken in output blocks: one block's ``g`` alive at a time).

    Parameters
    ----------
    engine : Engine
        The engine of the model, its outputs and parameters.
    data : Any
        The ``N`` examples.

    Returns
    -------
    torch.Tensor
        ``(N, C)``.
    """
    parts: list[torch.Tensor] = []

    def new_rows(cap: Capture) -> None:
        parts.append(cap.outputs.new_empty(cap.n, cap.total_outputs))

    def fill(cap: Capture) -> None:
        parts[-1][:, cap.out_slice] = ops.sq_norms(cap, engine.space).T

    one_pass(engine, data, "NTK diagonal", fill, local=True, output_blocks=OutputBlocks.auto(), per_batch=new_rows)
    return torch.cat(parts)
