"""The ``adaptive_tangent`` study (see :mod:`.study`)."""

from .study import AdaptiveTangent

__all__ = ["AdaptiveTangent"]
