"""The ``lazy_vs_hasty`` study (see :mod:`.study`)."""

from .study import LazyVsHasty

__all__ = ["LazyVsHasty"]
