"""The ``ekfac`` study (see :mod:`.study`)."""

from .study import EkfacStudy

__all__ = ["EkfacStudy"]
