"""The tangent-feature engine: per-layer inputs and output gradients for all examples at once."""

from . import ops
from .engine import ROUTES, Capture, Engine, LayerCapture
from .plan import GenericRouteWarning, RoutePlan, TrainingModeWarning

__all__ = ["Engine", "Capture", "LayerCapture", "RoutePlan", "GenericRouteWarning",
           "TrainingModeWarning", "ROUTES", "ops"]
