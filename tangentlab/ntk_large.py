"""Kernels beyond one process's memory or time: tiled NTK Grams and matrix-free NTK products.

* :func:`ntk_tiled` computes ``K[n, m, c, d] = ⟨φ_c(x_n), φ_d(x'_m)⟩`` block by block.
  Tiles are dealt round-robin to the ranks of a ``torch.distributed`` process group
  (each off-diagonal tile of a symmetric kernel is computed once and mirrored). The
  result is gathered (all-reduced) in memory, or written tile by tile into a NumPy
  ``.npy`` memmap under ``path`` with one marker file per finished tile: a killed run
  restarted with the same arguments skips the finished tiles. The tiles come from the
  Gram tiler of :mod:`tangentlab.engine.gram`, which :func:`tangentlab.ntk` uses too
  (with the same split over ranks), with captures kept by one
  :class:`~tangentlab.engine.passes.CaptureCache` per side.
* :class:`NTKOperator` applies ``K u = J (Jᵀ u)`` and gives the diagonal and trace
  without forming the kernel (``O(P + N·C)`` memory); with ``distributed=`` the batches
  are split between the ranks. It exports a scipy ``LinearOperator`` and top
  eigenpairs by Lanczos.

For both, every rank passes the *same full* data (the kernel couples all examples);
the ranks split the work, not the data. No normalization: the NTK is a plain sum over
parameters (see the README's conventions).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch
import torch.distributed as dist
from torch import nn

from .data import Batches
from .distributed import Reducer, unwrap
from .engine import EngineOptions, make_engine, ops
from .engine.functional import jvp, vjp
from .engine.gram import deal_tiles, gram_tiles
from .engine.operator import MatrixFreeOperator
from .engine.passes import CaptureCache
from .errors import InvalidInputError
from .fmat import FMatDense, ntk_alternatives
from .layers import LayerRegistry
from .progress import progress as bar
from .space import ParamSpace, Selector
from .vectors import FVector

if TYPE_CHECKING:
    from scipy.sparse.linalg import LinearOperator

_NP_DTYPES = {torch.float32: np.float32, torch.float64: np.float64}


def _fingerprint(model: nn.Module, *datas: list) -> str:
    """A hash of the parameters and the inputs, so a resumed run refuses other inputs."""
    h = hashlib.blake2b(digest_size=16)
    for name, p in sorted(unwrap(model).named_parameters(), key=lambda kv: kv[0]):
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    for data in datas:
        for batch in data:
            for t in batch:
                h.update(t.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _atomic_touch(path: Path, text: str = "") -> None:
    tmp = path.with_name(path.name + f".tmp{os.getpid()}")
    with open(tmp, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def _open_store(path: Path, meta: dict[str, Any], shape: tuple[int, ...], dtype: torch.dtype,
                red: Reducer) -> np.memmap:
    """Create (rank 0) or reopen the ``.npy`` memmap; refuse a directory made for other inputs."""
    path.mkdir(parents=True, exist_ok=True)
    (path / "tiles").mkdir(exist_ok=True)
    meta_file, arr_file = path / "meta.json", path / "kernel.npy"
    if red.rank == 0:
        if meta_file.exists():
            old = json.loads(meta_file.read_text())
            if old != meta:
                diff = sorted(k for k in meta if old.get(k) != meta[k])
                raise InvalidInputError(
                    f"{path} holds a kernel computed with other inputs (differs in {diff}); use a new path "
                    "or delete it"
                )
        else:
            np.lib.format.open_memmap(arr_file, mode="w+", dtype=_NP_DTYPES[dtype], shape=shape).flush()
            _atomic_touch(meta_file, json.dumps(meta, sort_keys=True))
    red.barrier()
    if not meta_file.exists() or json.loads(meta_file.read_text()) != meta:
        raise InvalidInputError(f"{path}: rank 0 did not prepare the kernel store (see its error)")
    return np.load(arr_file, mmap_mode="r+", allow_pickle=False)


def ntk_tiled(model: nn.Module, x1: Any, x2: Any = None, *, block: int = 1024, output: Any = "raw",
              params: Selector | ParamSpace = None, path: str | os.PathLike[str] | None = None,
              gather: str = "all", on_tile: Callable[[int, int], None] | None = None,
              route: str = "auto", registry: LayerRegistry | None = None, seed: int = 0,
              memory_budget: Any = None, progress: bool | None = None, distributed: Any = None,
              precision: Any = None, options: EngineOptions | None = None) -> FMatDense | None:
    """The NTK ``(N1, N2, C, D)`` computed in ``block × block`` tiles (see the module doc).

    ``path``: a directory for the on-disk kernel (``kernel.npy``, a memmap, plus
    ``meta.json`` and ``tiles/<i>_<j>.done`` markers); a rerun with the same model and
    data resumes, skipping finished tiles. Without ``path`` the kernel is assembled in
    memory and all-reduced so every rank has it (``gather='rank0'``: only rank 0, the
    others get ``None``). ``on_tile(i, j)`` is called after each tile this rank
    finishes (progress reporting; tests use it to simulate a kill). The engine keywords
    (``route`` ... ``precision``, or ``options``) are :class:`~tangentlab.engine.EngineOptions`'
    fields, as for :func:`tangentlab.ntk`; ``progress`` shows the tile bar.

    Parameters
    ----------
    model : nn.Module
        The network.
    x1 : Any
        The first ``N1`` examples (anything :class:`~tangentlab.data.Batches` accepts).
    x2 : Any, optional
        The second ``N2`` examples (None: ``x1``).
    block : int
        Examples per tile side.
    output : str or OutputFunction or callable
        The outputs (default the raw outputs).
    params : selector or ParamSpace, optional
        The parameters.
    path : str or os.PathLike, optional
        The directory of the on-disk kernel, as above.
    gather : {"all", "rank0"}
        Which ranks get the in-memory kernel.
    on_tile : callable, optional
        ``on_tile(i, j)`` after each finished tile.
    route, registry, seed, memory_budget, progress, distributed, precision, options
        The engine settings, as in :func:`tangentlab.fim`.

    Returns
    -------
    FMatDense or None
        ``(N1, N2, C, D)``, not normalized (a memmap with ``path``); None on ranks other
        than 0 with ``gather="rank0"``.

    Raises
    ------
    InvalidInputError
        For bad arguments, a ``path`` holding another kernel, or tiles missing after the run.
    """
    if gather not in ("all", "rank0"):
        raise InvalidInputError(f"gather={gather!r}; accepted: 'all', 'rank0'")
    if isinstance(block, bool) or not isinstance(block, int) or block <= 0:
        raise InvalidInputError(f"block must be a positive integer, got {block!r}")
    opts = EngineOptions.merge(options, route=route, registry=registry, seed=seed, memory_budget=memory_budget,
                               progress=progress, distributed=distributed, precision=precision)
    engine = make_engine(model, opts.replace(progress=False), output, params)
    red = engine.reducer
    rows = [b for _, b in engine.batches(Batches(x1, block))]
    symmetric = x2 is None
    cols = rows if symmetric else [b for _, b in engine.batches(Batches(x2, block))]
    src1 = CaptureCache.of(engine, rows, "NTK rows")
    src2 = None if symmetric else CaptureCache.of(engine, cols, "NTK cols")
    n1 = sum(b[0].shape[0] for b in rows)
    n2 = sum(b[0].shape[0] for b in cols)
    c = src1.first().n_outputs
    shape = (n1, n2, c, c)
    tiles = deal_tiles(len(rows), len(cols), symmetric, Reducer())
    mine = deal_tiles(len(rows), len(cols), symmetric, red)

    store = None
    if path is not None:
        meta = {"shape": list(shape), "block": block, "symmetric": symmetric, "dtype": str(engine.dtype),
                "output": engine.output.name, "params": list(engine.space.names),
                "fingerprint": _fingerprint(model, rows, [] if symmetric else cols)}
        if not engine.precision.is_default:
            meta["precision"] = f"{engine.precision.compute}/{engine.dtype}"
        if engine.output.random:
            meta["seed"] = engine.seed
        store = _open_store(Path(path), meta, shape, engine.dtype, red)
        done_dir = Path(path) / "tiles"
        mine = [t for t in mine if not (done_dir / f"{t[0]}_{t[1]}.done").exists()]
        out = None
    else:
        engine.budget.check(f"an NTK of shape {shape}", int(np.prod(shape)), engine.dtype,
                            ntk_alternatives(n1, n2, c, engine.space.numel, engine.dtype, symmetric))
        out = torch.zeros(shape, dtype=engine.dtype, device=engine.device)

    todo = set(mine)
    for t in bar(gram_tiles(engine, src1, src2, keep=lambda i, j: (i, j) in todo), "NTK tiles",
                 opts.progress if opts.progress is not None else len(mine) > 4, total=len(mine)):
        if store is not None:
            arr = t.block.detach().cpu().numpy()
            store[t.rows, t.cols] = arr
            if symmetric and t.i != t.j:
                store[t.cols, t.rows] = arr.transpose(1, 0, 3, 2)
            store.flush()
            _atomic_touch(Path(path) / "tiles" / f"{t.i}_{t.j}.done")  # type: ignore[arg-type]
        else:
            out[t.rows, t.cols] = t.block  # type: ignore[index]
            if symmetric and t.i != t.j:
                out[t.cols, t.rows] = t.block.permute(1, 0, 3, 2)  # type: ignore[index]
        if on_tile is not None:
            on_tile(t.i, t.j)

    red.barrier()
    if store is not None:
        missing = [t for t in tiles if not (Path(path) / "tiles" / f"{t[0]}_{t[1]}.done").exists()]  # type: ignore[arg-type]
        if missing:
            raise InvalidInputError(f"{len(missing)} tiles are missing after the run (first {missing[:5]})")
        return FMatDense(torch.from_numpy(store), symmetric=symmetric)
    if red.active:
        if gather == "all":
            red.sum_(out)
        else:
            dist.reduce(cast(torch.Tensor, out), dst=0, group=red.group)
            if red.rank != 0:
                return None
    return FMatDense(cast(torch.Tensor, out), symmetric=symmetric)


class NTKOperator(MatrixFreeOperator):
    """The NTK ``K`` of ``data`` with itself as a matrix-free linear operator on ``(N, C)`` arrays.

    ``mv(u) = J (Jᵀ u)``: one backward pass per batch for ``Jᵀ u`` (summed over batches,
    all-reduced over ranks) then one forward-mode pass per batch; ``diag()`` and
    ``trace()`` from per-example squared norms. Memory ``O(P + N·C)``. Rows are ordered
    ``n·C + c`` in :meth:`to_scipy`, as in :meth:`FMatDense.as_matrix`. Every rank passes
    the full data and takes every ``world_size``-th batch
    (:class:`~tangentlab.engine.operator.MatrixFreeOperator` with ``split_batches``).
    The engine keywords are :class:`~tangentlab.engine.EngineOptions`' fields.

    Parameters
    ----------
    model : nn.Module
        The network.
    data : Any
        The ``N`` examples, in a fixed order.
    output : str or OutputFunction or callable
        The outputs (default the raw outputs).
    params : selector or ParamSpace, optional
        The parameters.
    batch_size : int, optional
        Split tensors into batches of this size.
    route, registry, seed, memory_budget, progress, distributed, precision, options
        The engine settings, as in :func:`tangentlab.fim`.
    """

    split_batches = True

    def __init__(self, model: nn.Module, data: Any, *, output: Any = "raw", params: Selector | ParamSpace = None,
                 batch_size: int | None = None, route: str = "auto", registry: LayerRegistry | None = None,
                 seed: int = 0, memory_budget: Any = None, progress: bool | None = None, distributed: Any = None,
                 precision: Any = None, options: EngineOptions | None = None):
        opts = EngineOptions.merge(options, route=route, registry=registry, seed=seed, memory_budget=memory_budget,
                                   progress=progress, distributed=distributed, precision=precision)
        super().__init__(make_engine(model, opts, output, params), data, batch_size)
        self._c: int | None = None

    def _shape(self) -> tuple[int, int]:
        if self._c is None:
            n = 0
            for i, b in self.engine.batches(self.examples, "NTK size"):
                if self._c is None:
                    z, aux = self.engine.prepare(b, i)
                    self._c = self.engine.output.head(z, aux, b).shape[1]
                n += b[0].shape[0]
            self._n = n
        return self._n, self._c  # type: ignore[return-value]

    @property
    def shape(self) -> tuple[int, int]:
        """``(N·C, N·C)`` (the first call counts the examples with one pass)."""
        n, c = self._shape()
        return (n * c, n * c)

    def mv(self, u: torch.Tensor | FVector) -> torch.Tensor:
        """``K u`` for ``u`` of shape ``(N, C)`` (or an FVector); returns ``(N, C)``.

        Parameters
        ----------
        u : torch.Tensor or FVector
            ``(N, C)``.
        """
        u = u.tensor if isinstance(u, FVector) else torch.as_tensor(u)
        n, c = self._shape()
        if tuple(u.shape) != (n, c):
            raise InvalidInputError(f"u has shape {tuple(u.shape)}, expected ({n}, {c})")
        u = self._input(u)
        space, eng = self.space, self.engine
        w = torch.zeros(space.numel, dtype=self.dtype, device=self.device)
        self._sum(lambda i, b, s: space.flatten(vjp(eng, b, i, u[s:s + b[0].shape[0]])), w, "NTK products")
        wd = space.unflatten(w)
        return self._rows(lambda i, b, s: jvp(eng, b, i, wd), "NTK products")

    __matmul__ = mv

    def diag(self) -> torch.Tensor:
        """``K[n, n, c, c] = ‖φ_c(x_n)‖²`` as ``(N, C)``."""
        n, c = self._shape()

        def sq_norms(i, b, s):
            d = torch.zeros(b[0].shape[0], c, dtype=self.dtype, device=self.device)
            for cap in self.engine.capture_blocks(b, i):  # one output block's g alive at a time
                d[:, cap.out_slice] = ops.sq_norms(cap, self.space).T
            return d

        return self._rows(sq_norms, "NTK diagonal")

    def trace(self) -> torch.Tensor:
        """``Σ_{n,c} K[n, n, c, c]`` (a 0-d tensor)."""
        return self.diag().sum()

    def to_scipy(self) -> LinearOperator:
        """A ``scipy.sparse.linalg.LinearOperator`` on flat vectors (rows ``n·C + c``, float64)."""
        from scipy.sparse.linalg import LinearOperator

        n, c = self._shape()

        def matvec(x):
            x = torch.as_tensor(np.asarray(x).reshape(n, c))
            return self.mv(x).to(torch.float64).reshape(-1).cpu().numpy()

        return LinearOperator((n * c, n * c), matvec=matvec, rmatvec=matvec, dtype=np.float64)

    def eigh(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` eigenpairs by Lanczos (fixed start vector: the same run on every rank).

        Parameters
        ----------
        k : int
            ``1 ≤ k < N·C``.

        Returns
        -------
        evals : torch.Tensor
            ``(k,)``, descending, float64.
        evecs : torch.Tensor
            ``(N·C, k)``, rows ``n·C + c``.
        """
        from scipy.sparse.linalg import eigsh

        r = self.shape[0]
        if not 1 <= k < r:
            raise InvalidInputError(f"k must be in 1..{r - 1} (use tangentlab.ntk for the full spectrum)")
        v0 = torch.randn(r, generator=torch.Generator().manual_seed(0), dtype=torch.float64).numpy()
        vals, vecs = eigsh(self.to_scipy(), k=k, which="LA", v0=v0)
        order = np.argsort(vals)[::-1].copy()
        return torch.as_tensor(vals[order]), torch.as_tensor(vecs[:, order])
