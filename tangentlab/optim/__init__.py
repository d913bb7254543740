"""Natural-gradient optimizers (KFAC, EKFAC, EKFAC-ra) and Fisher-based regularizers."""

from .kfac import EKFAC, EKFACRA, KFAC, KronOptimizer
from .regularizers import FisherPenalty, natural_gradient_step

__all__ = ["KFAC", "EKFAC", "EKFACRA", "KronOptimizer", "FisherPenalty", "natural_gradient_step"]
