"""The built-in rules, keyed by module type."""

from __future__ import annotations

from torch import nn

from .base import LayerRule
from .embedding import EmbeddingRule
from .linear import ConvRule, LinearRule
from .norm import BatchNormRule, GroupNormRule, LayerNormRule, RMSNormRule


def builtin_rules() -> dict[type, LayerRule]:
    conv = ConvRule()
    bn = BatchNormRule()
    rules: dict[type, LayerRule] = {
        nn.Linear: LinearRule(),
        nn.Conv1d: conv,
        nn.Conv2d: conv,
        nn.Embedding: EmbeddingRule(),
        nn.BatchNorm1d: bn,
        nn.BatchNorm2d: bn,
        nn.LayerNorm: LayerNormRule(),
        nn.GroupNorm: GroupNormRule(),
    }
    if hasattr(nn, "RMSNorm"):
        rules[nn.RMSNorm] = RMSNormRule()
    return rules
