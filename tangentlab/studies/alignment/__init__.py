"""The ``alignment`` study (see :mod:`.study`)."""

from .study import Alignment

__all__ = ["Alignment"]
