"""The ``fim_quality`` study (see :mod:`.study`)."""

from .study import FimQuality

__all__ = ["FimQuality"]
