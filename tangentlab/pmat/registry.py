"""The representations known to :func:`tangentlab.fim`, each registered next to its class.

A representation is a :class:`~tangentlab.pmat.base.PMat` subclass plus

* the names accepted by ``fim(..., representation=...)`` (its canonical ``name``, any
  ``aliases``, and the class name, with or without the ``PMat`` prefix, in any case);
* a *builder* ``build(engine, data, centering=False, **options) -> PMat`` that fills it
  from the engine in one or more passes over ``data`` (``options``: ``assign`` for ``mixed``,
  ``kfac_approx`` for ``kfac``/``ekfac``, passed on by :func:`tangentlab.fim`; a callable, or the string
  ``"package.module:function"`` of one, imported on first use so that a class module
  need not import the engine-facing module that builds it; none: the class's own
  constructor, called as ``cls(engine, data, centering)``);
* the loader of :meth:`PMat.state_dict` (the class's ``from_state_dict`` classmethod;
  a class without one cannot be saved);
* metadata for messages and documentation: what it ``stores``, its ``memory`` (a formula
  for people) and ``footprint`` (an estimator ``footprint(space) -> entries`` of what it
  stores for a :class:`~tangentlab.space.ParamSpace`, ``None`` where that depends on the
  data, as ``N·C·P`` does; :func:`fitting` uses it to offer only what fits a memory
  budget), a one-line ``summary``; ``keeps``, the part of the Fisher it holds exactly (``"all"``,
  ``"diagonal"``, ``"layer blocks"``, ``"quasi-diagonal"``; ``None`` for approximations
  such as KFAC); ``light``, whether it never allocates a ``P × P`` matrix when built;
  ``distributed``, whether its builder sums over ranks.

Registering a new representation (from any module, even outside the package)::

    @register("toy", build=build_toy, stores="s", memory="1", summary="F ≈ s·I")
    class PMatToy(PMat):
        ...

after which ``tangentlab.fim(model, data, representation="toy")`` returns a ``PMatToy``.
:func:`unregister` removes it again.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch

from ..errors import InvalidInputError, format_bytes

if TYPE_CHECKING:  # the registry sits below the classes: pmat.base asks it for alternatives
    from .base import PMat


@dataclass(frozen=True)
class Representation:
    """One registered representation (see the module docstring for the fields).

    Attributes
    ----------
    name : str
        The canonical name (lower case, without ``pmat`` and underscores).
    cls : type
        The :class:`PMat` subclass.
    build_ref : callable or str or None
        The builder, or the ``"package.module:function"`` of one (None: the class itself).
    stores : str
        What it stores, for people.
    memory : str
        A formula of its memory, for people.
    summary : str
        A one-line summary.
    aliases : tuple of str
        Other accepted names.
    keeps : str or None
        The part of the Fisher it holds exactly (None: an approximation).
    light : bool
        Whether building it never allocates a ``P × P`` matrix.
    distributed : bool
        Whether its builder sums over ranks.
    footprint : callable or None
        ``footprint(space) -> entries`` stored (None: depends on the data).
    """

    name: str
    cls: type
    build_ref: Callable[..., PMat] | str | None = field(repr=False)
    stores: str = ""
    memory: str = ""
    summary: str = ""
    aliases: tuple[str, ...] = ()
    keeps: str | None = None
    light: bool = True
    distributed: bool = False
    footprint: Callable[[Any], int] | None = field(default=None, repr=False)

    @property
    def build(self) -> Callable[..., PMat]:
        """The builder ``build(engine, data, centering=False, **options) -> PMat``."""
        ref = self.build_ref
        if ref is None:
            return self.cls
        if isinstance(ref, str):
            module, _, attr = ref.partition(":")
            return getattr(importlib.import_module(module), attr)
        return ref

    @property
    def loadable(self) -> bool:
        """Whether :func:`load` can rebuild it from its ``state_dict``."""
        return hasattr(self.cls, "from_state_dict")


_BY_NAME: dict[str, Representation] = {}


def _key(name: str) -> str:
    return name.lower().replace("pmat", "").replace("_", "")


def register(name: str, *, build: Callable[..., PMat] | str | None = None, stores: str = "", memory: str = "",
             summary: str = "", aliases: tuple[str, ...] = (), keeps: str | None = None,
             light: bool = True, distributed: bool = False,
             footprint: Callable[[Any], int] | None = None) -> Callable[[type], type]:
    """Class decorator registering a :class:`PMat` subclass under ``name`` (see the module
    docstring). ``build=None``: the class itself is the builder (its constructor takes
    ``(engine, data, centering)``). Registering a name again replaces the previous entry.

    Parameters
    ----------
    name : str
        The name ``fim(..., representation=name)`` accepts.
    build : callable or str or None
        The builder ``build(engine, data, centering=False, **options) -> PMat``, or the
        ``"package.module:function"`` of one.
    stores, memory, summary, aliases, keeps, light, distributed, footprint
        The metadata, as the attributes of :class:`Representation`.

    Returns
    -------
    callable
        The decorator, which returns the class unchanged.
    """

    def deco(cls: type) -> type:
        if not (isinstance(cls, type) and callable(getattr(cls, "mv", None))):
            raise TypeError(f"{cls!r} is not a PMat subclass")
        rep = Representation(_key(name), cls, build, stores, memory, summary,
                             tuple(_key(a) for a in aliases), keeps, light, distributed, footprint)
        unregister(rep.name)
        _BY_NAME[rep.name] = rep
        return cls

    return deco


def unregister(name_or_cls: str | type) -> None:
    """Remove a representation (by name or class); unknown ones are ignored.

    Parameters
    ----------
    name_or_cls : str or type
        A name accepted by :func:`tangentlab.fim`, or the registered class.
    """
    for key, rep in list(_BY_NAME.items()):
        if rep.cls is name_or_cls or (isinstance(name_or_cls, str) and key == _key(name_or_cls)):
            del _BY_NAME[key]


def representations() -> list[Representation]:
    """Every registered representation, in registration order."""
    return list(_BY_NAME.values())


def names() -> list[str]:
    """The canonical names, sorted (what error messages offer)."""
    return sorted(_BY_NAME)


def _unknown(representation: Any) -> InvalidInputError:
    return InvalidInputError(f"unknown representation {representation!r}; choose one of {names()}")


def lookup(representation: Any) -> Representation:
    """The entry for a name (canonical, alias or class name, any case) or a registered class."""
    if isinstance(representation, str):
        key = _key(representation)
        for rep in _BY_NAME.values():
            if key == rep.name or key in rep.aliases or key == _key(rep.cls.__name__):
                return rep
        raise _unknown(representation)
    if isinstance(representation, type):
        for rep in _BY_NAME.values():
            if rep.cls is representation:
                return rep
    raise _unknown(representation)


def resolve(representation: Any) -> type:
    """The class of a representation name (or of a registered class).

    Parameters
    ----------
    representation : str or type
        A canonical name, alias or class name (any case), or a registered class.

    Returns
    -------
    type
        The :class:`PMat` subclass.

    Raises
    ------
    InvalidInputError
        For an unknown representation.
    """
    return lookup(representation).cls


def build(representation: Any, engine: Any, data: Any, centering: bool = False, **options: Any) -> PMat:
    """Fill ``representation`` from ``engine`` on ``data`` with its registered builder."""
    return lookup(representation).build(engine, data, centering=centering, **options)


def load(state: dict[str, Any]) -> PMat:
    """Rebuild a matrix from its :meth:`PMat.state_dict`.

    Parameters
    ----------
    state : dict
        What :meth:`PMat.state_dict` returned (its ``"type"`` names the class).

    Returns
    -------
    PMat
        The matrix.

    Raises
    ------
    InvalidInputError
        When the type is not a loadable registered representation.
    """
    kind = state.get("type")
    for rep in _BY_NAME.values():
        if rep.cls.__name__ == kind and rep.loadable:
            return rep.cls.from_state_dict(state)  # type: ignore[attr-defined]
    loadable = sorted(r.cls.__name__ for r in _BY_NAME.values() if r.loadable)
    raise InvalidInputError(f"cannot load a matrix of type {kind!r}; loadable types: {loadable}")


def alternatives(exclude: Any = None, *, fmt: str = "class", **wanted: Any) -> list[str]:
    """Registered representations whose metadata match ``wanted`` (e.g. ``light=True``,
    ``distributed=True``, ``exact=True`` for those with ``keeps`` set), in registration
    order, without ``exclude`` (a class or name). ``fmt="class"`` gives class names
    (``"PMatDiag"``), ``fmt="name"`` the names ``fim`` accepts (``"diag"``)."""
    skip = lookup(exclude).name if exclude is not None and _known(exclude) else None
    out = []
    for rep in _BY_NAME.values():
        if rep.name == skip:
            continue
        if wanted.get("exact") is not None and (rep.keeps is not None) != wanted["exact"]:
            continue
        if any(getattr(rep, k) != v for k, v in wanted.items() if k != "exact"):
            continue
        out.append(rep.cls.__name__ if fmt == "class" else rep.name)
    return out


def fitting(space: Any, budget: Any, dtype: Any, exclude: Any = None, **wanted: Any) -> list[tuple[str, int]]:
    """``(name, bytes)`` of the registered representations (matching ``wanted``, as in
    :func:`alternatives`, without ``exclude``) whose :attr:`~Representation.footprint` on
    ``space`` fits ``budget`` (a :class:`~tangentlab.memory.MemoryBudget`) in ``dtype``;
    those without a footprint are left out. At most two parameter vectors (``2P`` entries)
    always fit: the budget bounds the allocations beyond the size of the model itself, and
    vectors of the parameters' size are not checked against it."""
    item = torch.empty((), dtype=dtype).element_size()
    out = []
    for name in alternatives(exclude, fmt="name", **wanted):
        rep = _BY_NAME[name]
        if rep.footprint is not None:
            entries = int(rep.footprint(space))
            if entries * item <= budget.nbytes or entries <= 2 * space.numel:
                out.append((name, entries * item))
    return out


def fitting_advice(space: Any, budget: Any, dtype: Any, exclude: Any = None, **wanted: Any) -> str:
    """A sentence offering the representations that :func:`fitting` keeps, with their sizes,
    for a refusal message; when none fits, says so."""
    fit = fitting(space, budget, dtype, exclude, **wanted)
    if not fit:
        return (f"No representation of the {space.numel} parameters fits the budget: select fewer "
                "parameters with `params=` or raise the budget.")
    reps = ", ".join(f"representation={n!r} ({format_bytes(b)})" for n, b in fit)
    return f"The budget allows {reps}; or select fewer parameters with `params=`."


def dense_entries(space: Any) -> int:
    """Footprint of a dense ``P × P`` matrix."""
    return space.numel ** 2


def vector_entries(space: Any) -> int:
    """Footprint of one vector of length ``P``."""
    return space.numel


def block_entries(space: Any) -> int:
    """Footprint of one dense block per layer: ``Σ_l P_l²``."""
    return sum(lay.numel ** 2 for lay in space.layers)


def kron_entries(space: Any, eigen: bool = False) -> int:
    """Footprint of Kronecker factors ``A_l`` (``I_l × I_l``, the bias as one more input) and
    ``B_l`` (``O_l × O_l``) per layer with a weight of two or more dimensions (``O_l``
    its first), plus ``O_l·I_l`` for the eigenvalue-corrected diagonal when ``eigen``;
    a layer without such a weight is counted as a dense block (an upper bound of what
    each rule stores)."""
    total = 0
    for lay in space.layers:
        weight = next((p for p in lay.params if len(p.shape) >= 2), None)
        if weight is None:
            total += lay.numel ** 2
            continue
        o = weight.shape[0]
        i = weight.numel // o + (1 if len(lay.params) > 1 else 0)
        total += i * i + o * o + (o * i if eigen else 0)
    return total


def quoted(items: list[str]) -> str:
    """``'a', 'b' or 'c'``: a list of names for a message."""
    q = [repr(s) for s in items]
    return q[0] if len(q) == 1 else f"{', '.join(q[:-1])} or {q[-1]}"


def _known(representation: Any) -> bool:
    try:
        lookup(representation)
    except InvalidInputError:
        return False
    return True


class _Live(Mapping):
    """A read-only mapping recomputed from the registry on every access."""

    def __init__(self, make: Callable[[], dict]):
        self._make = make

    def __getitem__(self, key: Any) -> Any:
        return self._make()[key]

    def __iter__(self) -> Iterator:
        return iter(self._make())

    def __len__(self) -> int:
        return len(self._make())

    def __repr__(self) -> str:
        return repr(self._make())


#: ``{name: class}`` of every registered representation (live).
NAMES: Mapping[str, type] = _Live(lambda: {r.name: r.cls for r in _BY_NAME.values()})
#: ``{class: builder}`` of every registered representation (live).
BUILDERS: Mapping[type, Callable[..., PMat]] = _Live(lambda: {r.cls: r.build for r in _BY_NAME.values()})
