"""Layer rules: the per-layer maths, found through a registry keyed by module type."""

from .base import LayerRegistry, LayerRule
from .builtin import builtin_rules
from .embedding import EmbeddingRule
from .linear import ConvRule, LinearRule
from .norm import BatchNormRule, GroupNormRule, LayerNormRule, RMSNormRule
from .patch import Patches, PatchRule

__all__ = [
    "LayerRegistry", "LayerRule", "builtin_rules", "LinearRule", "ConvRule", "EmbeddingRule",
    "BatchNormRule", "LayerNormRule", "GroupNormRule", "RMSNormRule", "PatchRule", "Patches",
]
