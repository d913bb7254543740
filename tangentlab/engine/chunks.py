"""Merging consecutive small batches into larger chunks for passes that sum over examples.

A representation is ``(1/N) Σ_n Σ_c (something of φ_c(x_n))``: the sum does not depend on
how the examples are grouped into batches. Loaders of small batches (32–256 examples) give
small matrix products whose fixed costs (a forward and a backward pass per batch, per-layer
reductions, Python work) dominate; concatenating consecutive batches into chunks of up to
:func:`merge_limit` examples does the same arithmetic in fewer, larger products.

The limit keeps a chunk's output-gradients ``g`` (``C`` outputs × the hooked layers'
output entries per example, plus the generic route's per-example Jacobians) within
:data:`MERGE_ELEMENTS` entries and a sixteenth of the engine's memory budget, and never
splits a batch: a loader's batch larger than the limit passes unchanged. Batches are merged
only while their tensors agree in every dimension but the first (sequences of different
lengths stay apart). A chunk that fails (non-finite outputs, a shape the model refuses,
...) is retried batch by batch, so the error names the user's batch and its rows.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import torch

from ..data import Batch

if TYPE_CHECKING:
    from .engine import Capture, Engine

#: entries of a merged chunk's ``g`` (and generic Jacobians), all output coordinates
MERGE_ELEMENTS = 1 << 23
#: examples of a merged chunk at most
MERGE_MAX_EXAMPLES = 4096


def merge_limit(cap: Capture, budget_elements: int) -> int:
    """Examples per chunk for the model and output of ``cap`` (a capture of one batch or one
    output block of it): :data:`MERGE_ELEMENTS`, or a sixteenth of the memory budget
    (``budget_elements`` entries) if less, over the ``g`` entries of one example, all output
    coordinates; capped at :data:`MERGE_MAX_EXAMPLES`; at least the batch itself."""
    per_output = sum(lc.g[0].numel() for lc in cap.layers) + sum(v[0].numel() for v in cap.generic.values())
    return max(cap.n, limit_for(per_output * cap.total_outputs // max(1, cap.n), budget_elements))


def limit_for(per_example: int, budget_elements: int) -> int:
    """Examples per chunk when one example's ``g`` has ``per_example`` entries (all outputs):
    :data:`MERGE_ELEMENTS` or a sixteenth of the budget, at most :data:`MERGE_MAX_EXAMPLES`."""
    room = min(MERGE_ELEMENTS, budget_elements // 16)
    return max(1, min(MERGE_MAX_EXAMPLES, room // max(1, per_example)))


def _key(batch: Batch) -> tuple | None:
    """What must agree for two batches to be concatenated; ``None``: never merged."""
    if not isinstance(batch, tuple) or not all(isinstance(t, torch.Tensor) and t.dim() > 0 for t in batch):
        return None
    return tuple((t.shape[1:], t.dtype, t.device) for t in batch)


def merge_batches(src: Iterator[tuple[int, Batch]], engine: Engine
                  ) -> Iterator[tuple[int, Batch, list[tuple[int, Batch]] | None]]:
    """``(chunk index, chunk, parts)``: consecutive batches of ``src`` concatenated while the
    chunk stays within ``engine.merge_limit`` examples; ``parts`` are the ``(index, batch)``
    it was made of (``None`` for a batch passed alone). The limit is set by the engine's
    route plan (its probe forward on the first batch) before the first chunk, so every pass
    over the same data cuts the same chunks; where the probe could not set it, the first
    capture does (and the batches before it pass alone)."""
    pending: list[tuple[int, Batch]] = []
    key: tuple | None = None
    size, j = 0, 0

    def flush() -> tuple[int, Batch, list[tuple[int, Batch]] | None]:
        parts = list(pending)
        pending.clear()
        if len(parts) == 1:
            return j, parts[0][1], None
        return j, tuple(torch.cat(ts) for ts in zip(*(b for _, b in parts))), parts

    for i, b in src:
        if engine.merge_limit is None:
            engine.plan(b)  # its probe forward (two examples) sets the limit
        limit = engine.merge_limit
        k = _key(b)
        n = b[0].shape[0]
        if pending and (limit is None or k is None or k != key or size + n > limit):
            yield flush()
            j += 1
        if not pending:
            key, size = k, 0
        pending.append((i, b))
        size += n
        if limit is None or k is None:
            yield flush()
            j += 1
    if pending:
        yield flush()
