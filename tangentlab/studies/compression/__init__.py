"""The ``compression`` study (see :mod:`.study`)."""

from .study import Compression

__all__ = ["Compression"]
