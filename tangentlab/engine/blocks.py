"""Output blocks: how many output coordinates one capture holds.

A capture of a batch holds ``g``, the gradients of the ``C`` pseudo-outputs with respect
to every hooked layer's output: ``C·N·Σ_layers |out|`` entries. Consumers that *sum over
output coordinates* (diagonals, traces, dense and block sums, Kronecker factors) may take
a batch in several captures, one per block of outputs: one forward pass, then one
backward per block with the graph retained, so only one block's ``g`` is alive.

:class:`OutputBlocks` is that choice, made explicit:

* ``OutputBlocks.all()``: one capture per batch holding every output (consumers that need
  all outputs of an example together: Gram tiles, low-rank rows, replayed captures);
* ``OutputBlocks.auto()``: blocks sized so that one block's ``g`` holds about
  ``target`` entries (all outputs when they fit);
* ``OutputBlocks.of(size)``: blocks of ``size`` outputs (tests, tuning).

**What is counted once per batch.** The captures of the blocks of one batch share the
batch's features, example count and pseudo-outputs; each holds ``g`` for its own outputs
``cap.out_slice`` of ``cap.total_outputs``. Quantities that do not depend on the outputs
(the number of examples ``N``, per-batch allocations, input-side factors) are taken from
the batch's *first* block only. The pass driver (:func:`tangentlab.engine.passes.one_pass`)
applies this rule itself: it counts ``N``, and calls its ``per_batch`` hook once per batch
(with the first block) before the per-block ``consume``; consumers only add each block's
part of their sums.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..errors import InvalidInputError


@dataclass(frozen=True)
class OutputBlocks:
    """The output-block policy of a pass (see the module docstring)."""

    mode: str = "all"  # "all", "auto" or "fixed"
    size: int = 0  # outputs per block for mode "fixed"

    def __post_init__(self) -> None:
        if self.mode not in ("all", "auto", "fixed"):
            raise InvalidInputError(f"OutputBlocks mode must be 'all', 'auto' or 'fixed', got {self.mode!r}")
        if self.mode == "fixed" and (isinstance(self.size, bool) or not isinstance(self.size, int)
                                     or self.size <= 0):
            raise InvalidInputError(f"OutputBlocks.of(size): size must be a positive integer, got {self.size!r}")

    @classmethod
    def all(cls) -> OutputBlocks:
        """One capture per batch with every output coordinate."""
        return cls("all")

    @classmethod
    def auto(cls) -> OutputBlocks:
        """Blocks whose ``g`` holds about the engine's target number of entries."""
        return cls("auto")

    @classmethod
    def of(cls, size: int) -> OutputBlocks:
        """Blocks of ``size`` output coordinates (the last one may be smaller)."""
        return cls("fixed", size)

    @classmethod
    def resolve(cls, value: Any) -> OutputBlocks:
        """An :class:`OutputBlocks`, or a bool: ``True`` is :meth:`auto` (the consumer sums
        over outputs), ``False`` is :meth:`all`."""
        if isinstance(value, OutputBlocks):
            return value
        if isinstance(value, bool):
            return cls.auto() if value else cls.all()
        raise InvalidInputError(f"output blocks must be an OutputBlocks (OutputBlocks.all(), .auto(), "
                                f".of(size)) or a bool, got {value!r}")

    def width(self, n_outputs: int, out_numel: int, target: int) -> int:
        """Outputs per capture for ``n_outputs`` outputs whose ``g`` has ``out_numel``
        entries per output (summed over the hooked layers); ``target``: entries of one
        block's ``g`` in mode ``auto``."""
        if self.mode == "all":
            size = n_outputs
        elif self.mode == "auto":
            size = max(1, target // max(1, out_numel))
        else:
            size = self.size
        return max(1, min(size, n_outputs))


#: the policies as module constants (argument defaults)
ALL_OUTPUTS = OutputBlocks.all()
AUTO_BLOCKS = OutputBlocks.auto()
