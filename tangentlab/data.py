"""Turning what users pass (a tensor, a tuple batch, a DataLoader...) into batches.

A *batch* inside tangentlab is always a tuple of tensors sharing their leading
(example) dimension; element 0 is the model input ``x``, element 1 (if any) the
targets ``y``. Normalizations use the number of examples actually seen, so
``drop_last`` loaders and custom batch samplers are counted correctly.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sized
from numbers import Integral
from typing import Any, cast

import torch

from .errors import InvalidInputError, MixedDeviceDtypeError

Batch = tuple[torch.Tensor, ...]

DEFAULT_BATCH_SIZE = 256


def _as_tuple(batch: Any, index: int) -> Batch:
    if isinstance(batch, torch.Tensor):
        out: tuple = (batch,)
    elif isinstance(batch, (tuple, list)):
        out = tuple(batch)
    elif isinstance(batch, dict):
        raise InvalidInputError(
            f"batch {index} is a dict (keys {sorted(map(str, batch))}); tangentlab batches are "
            "tuples (x, y, ...) with the model input first. Make the loader yield tuples, e.g. "
            "with a collate_fn returning (x, y) or `[(b['x'], b['y']) for b in loader]`; a "
            "callable `output=lambda model, batch: ...` then receives those tuples."
        )
    else:
        raise InvalidInputError(
            f"batch {index} has type {type(batch).__name__}; expected a tensor or a "
            "tuple/list of tensors"
        )
    if len(out) == 0:
        raise InvalidInputError(f"batch {index} is an empty tuple")
    if not isinstance(out[0], torch.Tensor):
        raise InvalidInputError(
            f"batch {index}: element 0 (the model input) has type {type(out[0]).__name__}, "
            "expected a tensor"
        )
    n = out[0].shape[0] if out[0].dim() > 0 else None
    if n is None:
        raise InvalidInputError(f"batch {index}: the input is a 0-d tensor; it needs an example dimension")
    for k, t in enumerate(out):
        if isinstance(t, torch.Tensor) and t.dim() > 0 and t.shape[0] != n:
            raise InvalidInputError(
                f"ragged batch {index}: element 0 has {n} examples but element {k} has "
                f"{t.shape[0]} (leading dimensions must match)"
            )
    return out


class Batches:
    """A re-iterable source of batches with validation.

    Parameters
    ----------
    data : Any
        A tensor (the inputs of all examples), a *tuple* ``(x, y, ...)`` of
        tensors for all examples, a :class:`torch.utils.data.DataLoader`, a *list*
        of batches, or any re-iterable of batches.
    batch_size : int or None
        Split tensors / tuples into batches of this size (default 256). Ignored
        for loaders, which keep their own batching.
    """

    def __init__(self, data: Any, batch_size: int | None = None):
        if isinstance(data, Batches):
            self._source: Any = data._source
            self._chunked: bool = data._chunked
            self.batch_size: int | None = data.batch_size
            return
        if batch_size is not None and (
            isinstance(batch_size, bool) or not isinstance(batch_size, Integral) or batch_size <= 0
        ):
            raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size!r}")
        self.batch_size = None if batch_size is None else int(batch_size)
        if isinstance(data, dict):
            raise InvalidInputError(
                f"data is a dict (keys {sorted(map(str, data))}); pass the tensors as a tuple "
                "(x, y, ...) with the model input first, e.g. `(d['x'], d['y'])`"
            )
        if isinstance(data, torch.Tensor) or (
            isinstance(data, tuple) and len(data) > 0
            and all(isinstance(t, torch.Tensor) for t in data)
        ):
            full = _as_tuple(data, 0)
            bs = DEFAULT_BATCH_SIZE if self.batch_size is None else self.batch_size
            n = full[0].shape[0]
            if n == 0:
                raise InvalidInputError(
                    f"the data is empty: the input tensor has shape {tuple(full[0].shape)} (no examples)"
                )
            self._source = [tuple(t[i:i + bs] for t in full) for i in range(0, n, bs)]
            self._chunked = True
        elif isinstance(data, Iterator):
            raise InvalidInputError(
                "data is a one-shot iterator (e.g. a generator); tangentlab may need "
                "several passes. Pass a DataLoader, a list of batches, or tensors."
            )
        elif isinstance(data, Iterable):
            self._source = data
            self._chunked = False
            try:
                empty = len(cast(Sized, data)) == 0
            except TypeError:  # no len(): checked when iterated
                empty = False
            if isinstance(data, (list, tuple)):  # in memory: validate every batch now
                empty = sum(_as_tuple(b, i)[0].shape[0] for i, b in enumerate(data)) == 0
            if empty:
                hint = (" (drop_last=True dropped the only, incomplete batch)"
                        if getattr(data, "drop_last", False) else "")
                raise InvalidInputError(f"the data is empty: no batch contains any example{hint}")
        else:
            raise InvalidInputError(
                f"cannot read examples from an object of type {type(data).__name__}; pass a "
                "tensor, a tuple (x, y), or a DataLoader"
            )

    @property
    def shuffles(self) -> bool:
        """True when the underlying loader visits examples in a random order."""
        sampler = getattr(self._source, "sampler", None)
        batch_sampler = getattr(self._source, "batch_sampler", None)
        inner = getattr(batch_sampler, "sampler", None)
        random = (torch.utils.data.RandomSampler, torch.utils.data.SubsetRandomSampler,
                  torch.utils.data.WeightedRandomSampler)
        return isinstance(sampler, random) or isinstance(inner, random)

    def __iter__(self) -> Iterator[Batch]:
        seen = False
        for i, b in enumerate(self._source):
            t = _as_tuple(b, i)
            if t[0].shape[0] == 0:
                continue
            seen = True
            yield t
        if not seen:
            raise InvalidInputError("the data is empty: no batch contained any example")

    def __len__(self) -> int:
        try:
            return len(self._source)
        except TypeError:  # pragma: no cover - plain iterables
            return 0

    def count(self) -> int:
        """Total number of examples (one pass over the data)."""
        return sum(b[0].shape[0] for b in self)


def to_device(batch: Batch, device: torch.device, dtype: torch.dtype, index: int) -> Batch:
    """Move a batch to the parameters' device; refuse floating inputs of another dtype.

    Parameters
    ----------
    batch : tuple
        ``(x, y, ...)``; non-tensor entries are kept as they are.
    device : torch.device
        The parameters' device.
    dtype : torch.dtype
        The parameters' dtype, which floating tensors must have.
    index : int
        The batch's index, for the error messages.

    Returns
    -------
    tuple
        The batch with its tensors on ``device``.

    Raises
    ------
    MixedDeviceDtypeError
        For a floating tensor of another dtype, or one that cannot be moved.
    """
    out = []
    for k, t in enumerate(batch):
        if not isinstance(t, torch.Tensor):
            out.append(t)
            continue
        if t.is_floating_point() and t.dtype != dtype:
            raise MixedDeviceDtypeError(
                f"batch {index}, element {k} has dtype {t.dtype} but the model parameters are "
                f"{dtype}; convert the data (e.g. `x.to({dtype})`) or the model "
                f"(`model.to({t.dtype})`)"
            )
        if t.device != device:
            try:
                t = t.to(device)
            except (RuntimeError, NotImplementedError) as e:
                raise MixedDeviceDtypeError(
                    f"batch {index}, element {k} is on {t.device} and cannot be moved to the "
                    f"parameters' device {device} ({e}); put the data on {device}"
                ) from e
        out.append(t)
    return tuple(out)
