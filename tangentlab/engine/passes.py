"""Passes over the data: the pass driver :func:`one_pass` and the capture cache
:class:`CaptureCache`.

Every representation is ``(1/N) Σ_n Σ_c (something of φ_c(x_n))``, filled in one pass:
:func:`one_pass` runs a consumer on every capture of the data (under an output-block
policy, :class:`~tangentlab.engine.blocks.OutputBlocks`), counts ``N`` once per batch,
optionally sums the tangent features for centering, and reduces the accumulators over
the ranks of a distributed engine.

:class:`CaptureCache` keeps the captures of one data set while they fit a byte limit, for
work that visits them again: a second pass over the same data (EKFAC's eigenvalue
correction after its factors), or the Gram tiles of a kernel, which pair every row block
with every column block. Past the limit it drops what it kept, and later visits recompute
the captures (same batches, same random streams: the same values).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch

from ..data import Batches
from ..distributed import Reducer
from ..errors import UnsupportedOperationError
from ..memory import tensor_nbytes
from . import ops
from .blocks import ALL_OUTPUTS, OutputBlocks
from .engine import Capture, Engine


def capture_nbytes(cap: Capture) -> int:
    """Bytes held by the tensors of a capture (not the module, rule or layer description)."""
    return tensor_nbytes(cap, skip=("module", "rule", "layer"))


class CaptureCache:
    """Captures kept while they fit ``limit`` bytes.

    Two uses:

    * a *stash* (no ``engine``): :func:`one_pass` ``add``\\ s every capture of a pass
      (``stash=``), and a later pass over the same data replays :attr:`caps` instead of
      recomputing them (``replay=``) when :attr:`ok` (all kept);
    * a *source* (with ``engine`` and ``data``, one capture per batch):
      :meth:`captures` yields the captures of the batches in data order, replaying the
      kept prefix and computing the rest in one sweep over the data (kept while they
      fit); :meth:`sizes` gives the batch sizes without capturing.

    Past the limit everything kept is dropped (``ok`` becomes ``False``) and nothing more
    is kept.
    """

    def __init__(self, limit: int, engine: Engine | None = None, data: Any = None, desc: str = "captures"):
        self.caps: list[Any] = []
        self.limit, self.nbytes = int(limit), 0
        self.ok = self.limit > 0
        self.engine, self.desc = engine, desc
        self.data = None if data is None else (data if isinstance(data, Batches) else Batches(data))
        self._n_batches: int | None = None
        self._sizes: list[int] | None = None

    @classmethod
    def of(cls, engine: Engine, data: Any, desc: str = "captures") -> CaptureCache:
        """A source over ``data`` kept within a quarter of the engine's memory budget."""
        return cls(engine.budget.nbytes // 4, engine, data, desc)

    def add(self, cap: Capture) -> None:
        """Keep ``cap`` (or drop everything when the limit is passed)."""
        if not self.ok:
            return
        self.nbytes += capture_nbytes(cap)
        if self.nbytes > self.limit:
            self.ok, self.caps = False, []
        else:
            self.caps.append(cap)

    @property
    def complete(self) -> bool:
        """Whether every batch of the data is kept."""
        return self.ok and self._n_batches is not None and len(self.caps) == self._n_batches

    def sizes(self) -> list[int]:
        """The number of examples of every batch (one read of the data, no capture)."""
        if self._sizes is None:
            sel = self.engine.select if self.engine is not None else (lambda b, i: b)
            self._sizes = [sel(b, i)[0].shape[0] for i, b in enumerate(self.data)]  # type: ignore[arg-type]
            self._n_batches = len(self._sizes)
        return self._sizes

    def first(self) -> Capture:
        """The capture of the first batch."""
        return next(self.captures(stop=1))[1]

    def captures(self, need: Callable[[int], bool] | None = None,
                 stop: int | None = None) -> Iterator[tuple[int, Capture]]:
        """``(index, capture)`` of batches ``0 .. stop`` (all by default) that ``need``
        accepts (all by default), in data order."""
        assert self.engine is not None, "a stash has no data to capture"
        i = 0
        fresh = None
        while stop is None or i < stop:
            if self.ok and i < len(self.caps):
                if need is None or need(i):
                    yield i, self.caps[i]
                i += 1
                continue
            if self._n_batches is not None and i >= self._n_batches:
                return
            if fresh is None:
                fresh = self.engine.batches(self.data, self.desc, start=i)
            try:
                idx, batch = next(fresh)
            except StopIteration:
                self._n_batches = i
                return
            if need is None or need(idx):
                cap = self.engine.capture(batch, idx)
                if idx == len(self.caps):
                    self.add(cap)
                yield idx, cap
            i += 1


def one_pass(engine: Engine, data: Any, desc: str, consume: Callable[[Capture], None],
             centering: bool = False,
             reduce: Sequence[torch.Tensor] | Callable[[], Sequence[torch.Tensor]] | None = None,
             local: bool = False, stash: CaptureCache | None = None,
             replay: CaptureCache | None = None,
             output_blocks: OutputBlocks | bool = ALL_OUTPUTS,
             per_batch: Callable[[Capture], None] | None = None,
             take: Callable[[int], bool] | None = None, merge: bool = False) -> tuple[int, torch.Tensor | None]:
    """Run ``consume`` on every capture; return ``N`` and, if centering, the mean features ``(C, P)``.

    ``reduce``: the accumulators ``consume`` adds to (or a function returning them after
    the pass, in the same order on every rank). With a distributed engine they are
    summed over the ranks (in place) after the pass, as are ``N`` and the feature sums;
    a builder that does not name its accumulators refuses to run distributed.
    ``local=True``: no reduction (every rank passes the same full data, as for kernels).
    ``stash``: keep the captures for a later pass; ``replay``: use the captures a previous
    pass over the same data kept (if it kept them all) instead of recomputing them.
    ``output_blocks``: the output-block policy (:class:`OutputBlocks`; ``True`` is
    ``OutputBlocks.auto()``, for consumers that sum over output coordinates). Per the
    policy's rule, ``N`` is counted once per batch here, and ``per_batch`` is called once
    per batch, with its first capture, before ``consume`` sees it. ``take``: capture only
    the batches whose index it accepts (the others are read, not captured). ``merge``: the
    consumer only sums over examples, so consecutive batches may be captured as larger
    chunks (:meth:`Engine.captures`).
    """
    blocks = OutputBlocks.resolve(output_blocks)
    red = Reducer() if local else engine.reducer
    if red.active and reduce is None:
        raise UnsupportedOperationError(
            desc, "distributed=...", "one process, or a representation whose build sums across ranks "
            "(those marked distributed in tangentlab.pmat.representations())",
            "this computation does not support distributed accumulation yet")
    n = 0
    total = None
    caps = replay.caps if replay is not None and replay.ok else engine.captures(data, desc, blocks, take, merge)
    for cap in caps:
        if stash is not None:
            stash.add(cap)
        if cap.first:
            n += cap.n
            if per_batch is not None:
                per_batch(cap)
        consume(cap)
        if centering:
            s = ops.grad_sum(cap, engine.space)
            if total is None:
                total = s.new_zeros(cap.total_outputs, s.shape[1])
            total[cap.out_slice] += s
        del cap  # an output block's g is freed before the next block's backward
    if red.active:
        n = red.total(n, device=engine.device)  # refuses, on every rank, when a shard is empty
        accs = reduce() if callable(reduce) else reduce
        red.sum_(*(accs or ()), total)
    return n, (total / n if total is not None else None)
