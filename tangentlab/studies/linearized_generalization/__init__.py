"""The ``linearized_generalization`` study (see :mod:`.study`)."""

from .study import LinearizedGeneralization

__all__ = ["LinearizedGeneralization"]
