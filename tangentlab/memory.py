"""Memory budget: every large allocation is checked here before it happens.

The budget is an explicit value passed down from the entry points
(``memory_budget=`` in bytes, or a string such as ``"4GiB"``). Its default is
read from the ``TANGENTLAB_MEMORY_BUDGET`` environment variable if set, else
half of the memory available now (RAM for CPU tensors, free device memory for
CUDA tensors).
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, fields, is_dataclass
from typing import Any

import torch

from .errors import InvalidInputError, MemoryBudgetError

_UNITS = {"": 1, "b": 1, "k": 1e3, "kb": 1e3, "kib": 1024, "m": 1e6, "mb": 1e6,
          "mib": 1024**2, "g": 1e9, "gb": 1e9, "gib": 1024**3, "t": 1e12,
          "tb": 1e12, "tib": 1024**4}


def parse_size(value: int | float | str) -> int:
    """Parse ``123``, ``"4GiB"``, ``"500 MB"`` into a number of bytes."""
    if isinstance(value, (int, float)):
        if value <= 0 or math.isnan(value):
            raise InvalidInputError(f"memory budget must be positive, got {value!r}")
        return int(value)
    m = re.fullmatch(r"\s*([0-9.]+)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise InvalidInputError(
            f"cannot parse memory size {value!r}; use bytes or e.g. '4GiB', '500MB'"
        )
    return parse_size(float(m.group(1)) * _UNITS[m.group(2).lower()])


def available_bytes(device: torch.device | None = None) -> int:
    """Memory available now on ``device`` (RAM for CPU)."""
    if device is not None and device.type == "cuda" and torch.cuda.is_available():
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:  # pragma: no cover - non-Linux
        pass
    try:  # pragma: no cover - non-Linux
        import psutil

        return int(psutil.virtual_memory().available)
    except ImportError:  # pragma: no cover
        return 8 * 1024**3


@dataclass(frozen=True)
class MemoryBudget:
    """A byte budget for single allocations the user did not explicitly size."""

    nbytes: int

    @classmethod
    def resolve(cls, value: MemoryBudget | int | float | str | None,
                device: torch.device | None = None) -> MemoryBudget:
        if isinstance(value, MemoryBudget):
            return value
        if value is None:
            env = os.environ.get("TANGENTLAB_MEMORY_BUDGET")
            if env:
                return cls(parse_size(env))
            return cls(available_bytes(device) // 2)
        return cls(parse_size(value))

    def check(self, what: str, numel: int, dtype: torch.dtype, suggestion: str) -> None:
        """Raise :class:`MemoryBudgetError` if ``numel`` elements of ``dtype`` do not fit."""
        nbytes = int(numel) * _itemsize(dtype)
        if nbytes > self.nbytes:
            raise MemoryBudgetError(what, nbytes, self.nbytes, suggestion)

    def fits(self, numel: int, dtype: torch.dtype) -> bool:
        return int(numel) * _itemsize(dtype) <= self.nbytes

    def max_elements(self, dtype: torch.dtype) -> int:
        return max(1, self.nbytes // _itemsize(dtype))


def _itemsize(dtype: torch.dtype) -> int:
    return torch.empty((), dtype=dtype).element_size()


def tensor_nbytes(obj: Any, skip: tuple[str, ...] = ()) -> int:
    """Bytes held by the tensors inside ``obj`` (recursing through dicts, lists, tuples and
    dataclasses; dataclass fields named in ``skip`` are ignored)."""
    if isinstance(obj, torch.Tensor):
        return obj.numel() * obj.element_size()
    if isinstance(obj, dict):
        return sum(tensor_nbytes(v, skip) for v in obj.values())
    if isinstance(obj, (list, tuple)):
        return sum(tensor_nbytes(v, skip) for v in obj)
    if is_dataclass(obj) and not isinstance(obj, type):
        return sum(tensor_nbytes(getattr(obj, f.name), skip) for f in fields(obj) if f.name not in skip)
    return 0
