"""Kernels beyond one process's memory or time: tiled NTK Grams and matrix-free NTK products.

* :func:`ntk_tiled` computes ``K[n, m, c, d] = ⟨φ_c(x_n), φ_d(x'_m)⟩`` block by block.
  Tiles are dealt round-robin to the ranks of a ``torch.distributed`` process group
  (each off-diagonal tile of a symmetric kernel is computed once and mirrored). The
  result is gathered (all-reduced) in memory, or written tile by tile into a NumPy
  ``.npy`` memmap under ``path`` with one marker file per finished tile: a killed run
  restarted with the same arguments skips the finished tiles.
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
from typing import Any

import numpy as np
import torch
from torch import nn

from .data import Batches
from .distributed import Reducer, unwrap
from .engine import Engine, ops
from .engine.functional import jvp, vjp
from .errors import InvalidInputError
from .fmat import FMatDense
from .layers import LayerRegistry
from .outputs import make_output
from .space import ParamSpace, Selector
from .vectors import FVector

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
    return np.load(arr_file, mmap_mode="r+")


def ntk_tiled(model: nn.Module, x1: Any, x2: Any = None, *, block: int = 1024, output: Any = "raw",
              params: Selector | ParamSpace = None, path: str | os.PathLike[str] | None = None,
              distributed: Any = None, gather: str = "all", route: str = "auto",
              registry: LayerRegistry | None = None, memory_budget: Any = None, progress: bool | None = None,
              on_tile: Callable[[int, int], None] | None = None) -> FMatDense | None:
    """The NTK ``(N1, N2, C, D)`` computed in ``block × block`` tiles (see the module doc).

    ``path``: a directory for the on-disk kernel (``kernel.npy``, a memmap, plus
    ``meta.json`` and ``tiles/<i>_<j>.done`` markers); a rerun with the same model and
    data resumes, skipping finished tiles. Without ``path`` the kernel is assembled in
    memory and all-reduced so every rank has it (``gather='rank0'``: only rank 0, the
    others get ``None``). ``on_tile(i, j)`` is called after each tile this rank
    finishes (progress reporting; tests use it to simulate a kill).
    """
    if gather not in ("all", "rank0"):
        raise InvalidInputError(f"gather={gather!r}; accepted: 'all', 'rank0'")
    if isinstance(block, bool) or not isinstance(block, int) or block <= 0:
        raise InvalidInputError(f"block must be a positive integer, got {block!r}")
    engine = Engine(model, make_output(output), params, registry=registry, route=route,
                    memory_budget=memory_budget, progress=False, distributed=distributed)
    red = engine.reducer
    rows = list(engine.batches(Batches(x1, block)))
    symmetric = x2 is None
    cols = rows if symmetric else list(engine.batches(Batches(x2, block)))
    n1 = sum(b[0].shape[0] for _, b in rows)
    n2 = sum(b[0].shape[0] for _, b in cols)
    first = engine.capture(rows[0][1], 0)
    c = first.n_outputs
    shape = (n1, n2, c, c)
    starts1 = np.cumsum([0] + [b[0].shape[0] for _, b in rows]).tolist()
    starts2 = starts1 if symmetric else np.cumsum([0] + [b[0].shape[0] for _, b in cols]).tolist()
    tiles = [(i, j) for i in range(len(rows)) for j in range(len(cols)) if not symmetric or j <= i]
    mine = [t for k, t in enumerate(tiles) if k % red.world_size == red.rank]

    store = None
    if path is not None:
        meta = {"shape": list(shape), "block": block, "symmetric": symmetric, "dtype": str(engine.dtype),
                "output": engine.output.name, "params": list(engine.space.names),
                "fingerprint": _fingerprint(model, [b for _, b in rows], [] if symmetric else [b for _, b in cols])}
        store = _open_store(Path(path), meta, shape, engine.dtype, red)
        done_dir = Path(path) / "tiles"
        mine = [t for t in mine if not (done_dir / f"{t[0]}_{t[1]}.done").exists()]
        out = None
    else:
        engine.budget.check(f"an NTK of shape {shape}", int(np.prod(shape)), engine.dtype,
                            "Pass path=... to write the kernel to disk tile by tile, or use NTKOperator "
                            "(matrix-free products) / tangentlab.fmat.ntk_diag.")
        out = torch.zeros(shape, dtype=engine.dtype, device=engine.device)

    from .progress import progress as bar

    cache: dict[tuple[str, int], Any] = {}

    def capture(kind: str, idx: int):
        key = (kind, idx)
        if key not in cache:
            if kind == "row" and idx == 0:
                cap = first
            else:
                src = rows if kind == "row" else cols
                cap = engine.capture(src[idx][1], src[idx][0])
            if kind == "row":  # keep one row block (tiles come row by row) and the col blocks
                for k in [k for k in cache if k[0] == "row"]:
                    del cache[k]
            cache[key] = cap
        return cache[key]

    for i, j in bar(mine, "NTK tiles", progress if progress is not None else len(mine) > 4):
        ci = capture("row", i)
        cj = ci if symmetric and i == j else capture("col", j)
        blk = ops.gram(ci, cj, engine.space)
        r = slice(starts1[i], starts1[i + 1])
        q = slice(starts2[j], starts2[j + 1])
        if store is not None:
            arr = blk.detach().cpu().numpy()
            store[r, q] = arr
            if symmetric and i != j:
                store[q, r] = arr.transpose(1, 0, 3, 2)
            store.flush()
            _atomic_touch(Path(path) / "tiles" / f"{i}_{j}.done")  # type: ignore[arg-type]
        else:
            out[r, q] = blk  # type: ignore[index]
            if symmetric and i != j:
                out[q, r] = blk.permute(1, 0, 3, 2)  # type: ignore[index]
        if on_tile is not None:
            on_tile(i, j)
        if len([k for k in cache if k[0] == "col"]) > 4:  # bound the cached column captures
            for k in [k for k in cache if k[0] == "col"][:-4]:
                del cache[k]

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
            import torch.distributed as dist

            dist.reduce(out, dst=0, group=red.group)
            if red.rank != 0:
                return None
    return FMatDense(out, symmetric=symmetric)


class NTKOperator:
    """The NTK ``K`` of ``data`` with itself as a matrix-free linear operator on ``(N, C)`` arrays.

    ``mv(u) = J (Jᵀ u)``: one backward pass per batch for ``Jᵀ u`` (summed over batches,
    all-reduced over ranks) then one forward-mode pass per batch; ``diag()`` and
    ``trace()`` from per-example squared norms. Memory ``O(P + N·C)``. Rows are ordered
    ``n·C + c`` in :meth:`to_scipy`, as in :meth:`FMatDense.as_matrix`.
    """

    def __init__(self, model: nn.Module, data: Any, *, output: Any = "raw", params: Selector | ParamSpace = None,
                 batch_size: int | None = None, distributed: Any = None, route: str = "auto",
                 registry: LayerRegistry | None = None, memory_budget: Any = None, progress: bool | None = None):
        self.engine = Engine(model, make_output(output), params, registry=registry, route=route,
                             memory_budget=memory_budget, progress=progress, distributed=distributed)
        self.examples = Batches(data, batch_size)
        if self.examples.shuffles:
            raise InvalidInputError("the data loader shuffles; NTK products need a fixed order (shuffle=False)")
        self._layout: list[tuple[int, int]] | None = None
        self._c: int | None = None

    @property
    def reducer(self) -> Reducer:
        return self.engine.reducer

    def _batches(self):
        """This rank's batches (index ≡ rank mod world size) with their row offsets."""
        red = self.reducer
        start = 0
        for i, b in self.engine.batches(self.examples, "NTK products"):
            n = b[0].shape[0]
            if i % red.world_size == red.rank:
                yield i, b, start
            start += n

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
        n, c = self._shape()
        return (n * c, n * c)

    def mv(self, u: torch.Tensor | FVector) -> torch.Tensor:
        """``K u`` for ``u`` of shape ``(N, C)`` (or an FVector); returns ``(N, C)``."""
        u = u.tensor if isinstance(u, FVector) else torch.as_tensor(u)
        n, c = self._shape()
        if tuple(u.shape) != (n, c):
            raise InvalidInputError(f"u has shape {tuple(u.shape)}, expected ({n}, {c})")
        u = u.to(self.engine.dtype)
        space = self.engine.space
        w = torch.zeros(space.numel, dtype=self.engine.dtype, device=self.engine.device)
        for i, b, s in self._batches():
            w += space.flatten(vjp(self.engine, b, i, u[s:s + b[0].shape[0]]))
        self.reducer.sum_(w)
        wd = space.unflatten(w)
        out = torch.zeros(n, c, dtype=self.engine.dtype, device=self.engine.device)
        for i, b, s in self._batches():
            out[s:s + b[0].shape[0]] = jvp(self.engine, b, i, wd)
        self.reducer.sum_(out)
        return out

    __matmul__ = mv

    def diag(self) -> torch.Tensor:
        """``K[n, n, c, c] = ‖φ_c(x_n)‖²`` as ``(N, C)``."""
        n, c = self._shape()
        out = torch.zeros(n, c, dtype=self.engine.dtype, device=self.engine.device)
        for i, b, s in self._batches():
            for cap in self.engine.capture_blocks(b, i):  # one output block's g alive at a time
                out[s:s + cap.n, cap.out_slice] = ops.sq_norms(cap, self.engine.space).T
        self.reducer.sum_(out)
        return out

    def trace(self) -> torch.Tensor:
        return self.diag().sum()

    def to_scipy(self):
        """A ``scipy.sparse.linalg.LinearOperator`` on flat vectors (rows ``n·C + c``, float64)."""
        from scipy.sparse.linalg import LinearOperator

        n, c = self._shape()

        def matvec(x):
            x = torch.as_tensor(np.asarray(x).reshape(n, c))
            return self.mv(x).to(torch.float64).reshape(-1).cpu().numpy()

        return LinearOperator((n * c, n * c), matvec=matvec, rmatvec=matvec, dtype=np.float64)

    def eigh(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-``k`` eigenpairs by Lanczos (fixed start vector: the same run on every rank)."""
        from scipy.sparse.linalg import eigsh

        r = self.shape[0]
        if not 1 <= k < r:
            raise InvalidInputError(f"k must be in 1..{r - 1} (use tangentlab.ntk for the full spectrum)")
        v0 = torch.randn(r, generator=torch.Generator().manual_seed(0), dtype=torch.float64).numpy()
        vals, vecs = eigsh(self.to_scipy(), k=k, which="LA", v0=v0)
        order = np.argsort(vals)[::-1].copy()
        return torch.as_tensor(vals[order]), torch.as_tensor(vecs[:, order])
