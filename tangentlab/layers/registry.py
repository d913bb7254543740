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

    Parameters
    ----------
    rules : dict of type to LayerRule, optional
        The initial ``{module type: rule}`` (copied; default empty).
    """

    def __init__(self, rules: dict[type, LayerRule] | None = None):
        self._rules: dict[type, LayerRule] = dict(rules or {})

    @classmethod
    def default(cls) -> LayerRegistry:
        """A new registry with the built-in rules."""
        return cls(builtin_rules())

    def register(self, module_type: type, rule: LayerRule) -> LayerRegistry:
        """Handle ``module_type`` (and its subclasses) with ``rule``; returns ``self``.

        Parameters
        ----------
        module_type : type
            An ``nn.Module`` subclass.
        rule : LayerRule
            Its rule (replacing any previous one).

        Raises
        ------
        TypeError
            For a type that is not a module, or a rule that is not a LayerRule.
        """
        if not (isinstance(module_type, type) and issubclass(module_type, nn.Module)):
            raise TypeError(f"{module_type!r} is not an nn.Module subclass")
        if not isinstance(rule, LayerRule):
            raise TypeError(f"{rule!r} is not a LayerRule")
        self._rules[module_type] = rule
        return self

    def copy(self) -> LayerRegistry:
        """A new registry with the same rules."""
        return LayerRegistry(self._rules)

    def lookup(self, module: nn.Module) -> LayerRule | None:
        """The rule of the module's class or of its nearest registered base class.

        Parameters
        ----------
        module : nn.Module

        Returns
        -------
        LayerRule or None
            None when no class in the module's hierarchy is registered.
        """
        for klass in type(module).__mro__:
            if klass in self._rules:
                return self._rules[klass]
        return None

    def __contains__(self, module_type: type) -> bool:
        return module_type in self._rules
