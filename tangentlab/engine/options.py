"""The engine's settings in one object: :class:`EngineOptions`.

Every entry point that builds an :class:`~tangentlab.engine.Engine` (``fim``, ``ntk``,
``jacobian``, ``ntk_tiled``, ``NTKOperator``, and the optimizers through
:func:`tangentlab.engine.make_engine`) takes the same keywords with the same defaults, collects them in an
:class:`EngineOptions` (or takes one as ``options=``) and builds its engine from it, so
that a bad value is refused with the same error everywhere.

The fields:

* ``route``: ``'auto'`` (layer rules where they exist, ``torch.func`` elsewhere),
  ``'generic'`` (``torch.func`` for every parameter) or ``'joint'`` (Jacobian of the whole
  batch function, for batch-coupled models such as BatchNorm in train mode);
* ``registry``: the layer rules (:class:`~tangentlab.layers.base.LayerRegistry`;
  default: the built-in rules);
* ``seed``: seed of the per-batch random generators (Monte-Carlo Fishers);
* ``memory_budget``: bytes (or a string such as ``"2GB"``) for allocations the user
  did not size (:class:`~tangentlab.memory.MemoryBudget`; default: half the free memory);
* ``progress``: progress bars (``None``: after 2 s on a terminal);
* ``distributed``: ``None``/``False`` (one process), ``True`` (the default process
  group) or a process group (:mod:`tangentlab.distributed`);
* ``precision``: the mixed-precision policy (:class:`~tangentlab.engine.precision.Precision`).

The device and the parameter dtype are the model's; the dtype of the results is the
precision's accumulation dtype (the model's by default).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from numbers import Integral
from typing import Any

import torch.distributed as dist

from ..distributed import Reducer
from ..errors import InvalidInputError
from ..layers.registry import LayerRegistry

ROUTES = ("auto", "generic", "joint")


@dataclass(frozen=True)
class EngineOptions:
    """How an engine computes (see the module docstring); validated on construction.

    Attributes
    ----------
    route : str
        ``"auto"``, ``"generic"`` or ``"joint"``.
    registry : LayerRegistry or None
        The layer rules (None: the built-in rules).
    seed : int
        Seed of the per-batch random generators.
    memory_budget : Any
        Bytes, or a string such as ``"2GB"`` (None: half the free memory).
    progress : bool or None
        Progress bars (None: after 2 s on a terminal).
    distributed : Any
        None/False, True (the default process group) or a process group.
    precision : Any
        The mixed-precision policy (a string, a dict or a Precision).

    Raises
    ------
    InvalidInputError
        For a value outside those listed.
    """

    route: str = "auto"
    registry: LayerRegistry | None = None
    seed: int = 0
    memory_budget: Any = None
    progress: bool | None = None
    distributed: Any = None
    precision: Any = None

    def __post_init__(self) -> None:
        if not isinstance(self.route, str) or self.route not in ROUTES:
            raise InvalidInputError(f"route must be one of {ROUTES}, got {self.route!r}")
        if self.registry is not None and not isinstance(self.registry, LayerRegistry):
            raise InvalidInputError(f"registry must be a LayerRegistry or None, got {type(self.registry).__name__}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, Integral):
            raise InvalidInputError(f"seed must be an integer, got {self.seed!r}")
        if self.progress is not None and not isinstance(self.progress, bool):
            raise InvalidInputError(f"progress must be None, True or False, got {self.progress!r}")
        d = self.distributed
        if not (d is None or isinstance(d, (bool, Reducer))
                or (dist.is_available() and isinstance(d, dist.ProcessGroup))):
            raise InvalidInputError(f"distributed must be None, False, True or a torch.distributed "
                                    f"ProcessGroup, got {type(d).__name__}")

    @classmethod
    def merge(cls, options: EngineOptions | None, **keywords: Any) -> EngineOptions:
        """The options of an entry point: ``options`` when given (then every engine keyword
        must keep its default), else the keywords.

        Parameters
        ----------
        options : EngineOptions or None
            The options passed as ``options=``.
        **keywords
            The entry point's engine keywords (``route`` ... ``precision``).

        Returns
        -------
        EngineOptions
            The merged options.

        Raises
        ------
        InvalidInputError
            When ``options`` is given together with a non-default keyword.
        """
        if options is None:
            return cls(**keywords)
        if not isinstance(options, EngineOptions):
            raise InvalidInputError(f"options must be an EngineOptions, got {type(options).__name__}")
        defaults = {f.name: f.default for f in dataclasses.fields(cls)}
        changed = sorted(k for k, v in keywords.items() if not _same(v, defaults[k]))
        if changed:
            raise InvalidInputError(f"engine settings given both in options= and as keywords {changed}; "
                                    "pass them in one place")
        return options

    def replace(self, **changes: Any) -> EngineOptions:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    def keywords(self) -> dict[str, Any]:
        """The options as the keyword arguments of :class:`~tangentlab.engine.Engine`."""
        return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def _same(value: Any, default: Any) -> bool:
    return value is default or (isinstance(value, (str, int)) and not isinstance(value, bool)
                                and type(value) is type(default) and value == default)
