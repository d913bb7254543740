"""The registry of layer rules keyed by module type, and the built-in rules."""

from __future__ import annotations

from torch import nn

from .attention import MultiheadAttentionRule
from .base import LayerRule
from .embedding import EmbeddingRule
from .linear import ConvRule, LinearRule
from .norm import BatchNormRule, GroupNormRule, LayerNormRule, RMSNormRule


def builtin_rules() -> dict[type, LayerRule]:
    """A new ``{module type: rule}`` dict of the rules for torch's own layers."""
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
        nn.MultiheadAttention: MultiheadAttentionRule(),
    }
    if hasattr(nn, "RMSNorm"):
        rules[nn.RMSNorm] = RMSNormRule()
    return rules


class LayerRegistry:
    """Maps module types to rules; lookup follows the class hierarchy (subclasses match).

    ``LayerRegistry.default()`` returns a *new* registry with the built-in rules,
    so registering a rule never changes anyone else's registry::

        reg = LayerRegistry.default()
        reg.register(MyLayer, MyLayerRule())
        F = tangentlab.fim(model, data, registry=reg)
    """

    def __init__(self, rules: dict[type, LayerRule] | None = None):
        self._rules: dict[type, LayerRule] = dict(rules or {})

    @classmethod
    def default(cls) -> LayerRegistry:
        return cls(builtin_rules())

    def register(self, module_type: type, rule: LayerRule) -> LayerRegistry:
        if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
            raise TypeError(f"{module_type!r} is not an nn.Module subclass")
        if not isinstance(rule, LayerRule):
            raise TypeError(f"{rule!r} is not a LayerRule")
        self._rules[module_type] = rule
        return self

    def copy(self) -> LayerRegistry:
        return LayerRegistry(self._rules)

    def lookup(self, module: nn.Module) -> LayerRule | None:
        for klass in type(module).__mro__:
            if klass in self._rules:
                return self._rules[klass]
        return None

    def __contains__(self, module_type: type) -> bool:
        return module_type in self._rules
