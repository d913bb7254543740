"""Layer rules: the per-layer maths, found through a registry keyed by module type."""

from .base import LayerRule
from .embedding import EmbeddingRule
from .linear import ConvRule, LinearRule
from .norm import BatchNormRule, GroupNormRule, LayerNormRule, RMSNormRule
from .patch import Patches, PatchRule
from .registry import LayerRegistry, builtin_rules

__all__ = [
    "LayerRegistry", "LayerRule", "builtin_rules", "LinearRule", "ConvRule", "EmbeddingRule",
    "BatchNormRule", "LayerNormRule", "GroupNormRule", "RMSNormRule", "PatchRule", "Patches",
]
