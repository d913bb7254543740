"""The tangent-feature engine: per-layer inputs and output gradients for all examples at once.

Layers: :mod:`.engine` (the capture of one batch), :mod:`.options` (the settings every
engine is built from), :mod:`.blocks` (the output-block policy), :mod:`.passes` (the pass
driver and the capture cache), :mod:`.gram` (the Gram tiler), :mod:`.operator` (the base
of matrix-free operators).
"""

from . import ops
from .blocks import OutputBlocks
from .engine import Capture, Engine, LayerCapture, make_engine
from .options import ROUTES, EngineOptions
from .plan import GenericRouteWarning, RoutePlan, TrainingModeWarning

__all__ = ["Engine", "EngineOptions", "make_engine", "OutputBlocks", "Capture", "LayerCapture", "RoutePlan",
           "GenericRouteWarning", "TrainingModeWarning", "ROUTES", "ops"]
