"""Progress bars (tqdm) that appear only for work that lasts more than a couple of seconds."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import TypeVar

T = TypeVar("T")


def progress(it: Iterable[T], desc: str, enabled: bool | None = None,
             total: int | None = None) -> Iterator[T]:
    """Wrap ``it`` in a tqdm bar. ``enabled=None`` shows it after 2 s on a terminal;
    ``True`` always; ``False`` never."""
    if enabled is False:
        yield from it
        return
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover
        yield from it
        return
    if total is None:
        try:
            total = len(it)  # type: ignore[arg-type]
        except TypeError:
            total = None
    bar = tqdm(it, desc=desc, total=total or None, delay=0 if enabled else 2.0,
               disable=None if enabled is None else False, leave=False)
    yield from bar
