"""The public API is documented in the NumPy docstring convention.

Walks the public symbols of the modules in :data:`PUBLIC_MODULES` (their ``__all__``, or,
without one, the functions and classes the module defines under a name without a leading
underscore) and the public methods and properties of the public classes, and checks:

* every symbol has a docstring whose first line is a summary;
* a function or method with parameters (other than ``self``, ``cls``, ``*args``,
  ``**kwargs``) has a ``Parameters`` section (a title underlined with dashes) naming each
  of them; a class whose constructor takes parameters names them in the ``Parameters``
  (or ``Attributes``, for dataclasses) section of the class or of ``__init__``;
* the section titles are NumPy's, and no section names a parameter the signature lacks.

An inherited docstring counts (:func:`inspect.getdoc`), and so do the parameters that the
docstring of the same method on a tangentlab base class documents: a verb's parameters are
documented once, on the base class (e.g. :class:`~tangentlab.pmat.PMat`), and an override
documents what it adds. The parser below is
self-contained (no docstring library is a dependency).
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import re
from types import ModuleType

import pytest

PUBLIC_MODULES = [
    "tangentlab", "tangentlab.api", "tangentlab.vectors", "tangentlab.maps", "tangentlab.ntk_large",
    "tangentlab.linearize", "tangentlab.optim", "tangentlab.pmat", "tangentlab.analysis",
    "tangentlab.engine.options", "tangentlab.errors", "tangentlab.training", "tangentlab.data",
    "tangentlab.distributed", "tangentlab.fmat", "tangentlab.space", "tangentlab.outputs",
    "tangentlab.limits", "tangentlab.kernel_predictor",
]

# Classes whose methods need a docstring but no Parameters section: the Engine's methods are
# the protocol between the engine and the representations' builders (``batch``, ``index``,
# ``blocks`` in its module's conventions, described in prose); its constructor is checked.
SUMMARY_ONLY_METHODS = {"tangentlab.engine.engine.Engine"}

SECTIONS = {
    "Parameters", "Returns", "Yields", "Receives", "Other Parameters", "Raises", "Warns", "Warnings",
    "See Also", "Notes", "References", "Examples", "Attributes", "Methods",
}
_SKIP_PARAMS = {"self", "cls"}
# an entry: ``name``, ``a, b`` or ``name : type`` (a space before the colon, as numpydoc parses it)
_ENTRY = re.compile(r"^(\*{0,2}[A-Za-z_]\w*(?:\s*,\s*\*{0,2}[A-Za-z_]\w*)*)(?:\s+:(?:\s.*)?)?$")


def sections(doc: str) -> dict[str, list[str]]:
    """``{title: lines}`` of the NumPy sections of a cleaned docstring (title underlined by dashes)."""
    lines = doc.splitlines()
    out: dict[str, list[str]] = {}
    current: str | None = None
    i = 0
    while i < len(lines):
        line = lines[i]
        nxt = lines[i + 1] if i + 1 < len(lines) else ""
        if line.strip() and re.fullmatch(r"\s*-{3,}\s*", nxt) and not line.startswith(" "):
            current = line.strip()
            out[current] = []
            i += 2
            continue
        if current is not None:
            out[current].append(line)
        i += 1
    return out


def entry_names(lines: list[str]) -> set[str]:
    """The names a ``Parameters``-like section documents (entries at the section's indent)."""
    names: set[str] = set()
    for line in lines:
        if not line.strip() or line.startswith((" ", "\t")):
            continue
        m = _ENTRY.match(line.strip())
        if m:
            names.update(n.strip().lstrip("*") for n in m.group(1).split(","))
    return names


def parameters(obj) -> list[str]:
    """The named parameters of a callable that a docstring must document."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return []
    return [p.name for p in sig.parameters.values()
            if p.name not in _SKIP_PARAMS
            and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]


def variadic(obj) -> set[str]:
    """The names of the ``*args``/``**kwargs`` of a callable (documenting them is allowed)."""
    try:
        sig = inspect.signature(obj)
    except (TypeError, ValueError):
        return set()
    return {p.name for p in sig.parameters.values()
            if p.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)}


def check_doc(what: str, doc: str | None, params: list[str] | None, extra_titles: tuple[str, ...] = (),
              inherited: set[str] = frozenset(), allowed: set[str] = frozenset()) -> list[str]:
    """The problems of one docstring against the parameters it must document (``inherited``:
    those the base classes' docstrings of the same method document; ``params=None``: a class
    docstring, whose ``Parameters`` the constructor check reads)."""
    if not doc or not doc.strip():
        return [f"{what}: no docstring"]
    problems = []
    first = doc.strip().splitlines()[0].strip()
    if not first or first.endswith(",") or first in SECTIONS:
        problems.append(f"{what}: no summary line")
    secs = sections(doc)
    for title in secs:
        if title not in SECTIONS:
            problems.append(f"{what}: unknown section {title!r}")
    documented: set[str] = set(inherited)
    for title in ("Parameters", "Other Parameters", *extra_titles):
        documented |= entry_names(secs.get(title, []))
    if params:
        if not inherited and not any(t in secs for t in ("Parameters", "Other Parameters", *extra_titles)):
            problems.append(f"{what}: no Parameters section for {params}")
        else:
            missing = [p for p in params if p not in documented]
            if missing:
                problems.append(f"{what}: Parameters lacks {missing}")
    if "Parameters" in secs and params is not None:
        stale = sorted(entry_names(secs["Parameters"]) - set(params) - set(allowed))
        if stale:
            problems.append(f"{what}: Parameters names {stale}, not in the signature")
    return problems


def public_names(mod: ModuleType) -> list[str]:
    """``__all__``, or the functions and classes the module defines under a public name."""
    if hasattr(mod, "__all__"):
        return list(mod.__all__)
    return sorted(n for n, v in vars(mod).items()
                  if not n.startswith("_") and (inspect.isfunction(v) or inspect.isclass(v))
                  and getattr(v, "__module__", None) == mod.__name__)


def _own_members(cls: type):
    """Public methods and properties a tangentlab class defines or inherits from tangentlab."""
    seen = set()
    for klass in cls.__mro__:
        if not klass.__module__.startswith("tangentlab"):
            continue
        for name in vars(klass):
            if name.startswith("_") or name in seen:
                continue
            seen.add(name)
            yield name, inspect.getattr_static(cls, name)


def _property_doc(cls: type, name: str) -> str | None:
    """The docstring of property ``name``: its own, or that of a base class's property."""
    for klass in cls.__mro__:
        raw = vars(klass).get(name)
        if isinstance(raw, property) and raw.__doc__:
            return inspect.cleandoc(raw.__doc__)
    return None


def _base_documented(cls: type, name: str) -> set[str]:
    """The parameters the docstrings of ``name`` on the tangentlab base classes of ``cls`` document."""
    out: set[str] = set()
    for klass in cls.__mro__[1:]:
        if klass.__module__.startswith("tangentlab") and name in vars(klass):
            raw = vars(klass)[name]
            fn = raw.__func__ if isinstance(raw, (staticmethod, classmethod)) else raw
            out |= entry_names(sections(inspect.getdoc(fn) or "").get("Parameters", []))
    return out


def _constructor_problems(qual: str, cls: type) -> list[str]:
    init = cls.__dict__.get("__init__")
    if init is None:
        init = next((k.__dict__["__init__"] for k in cls.__mro__[1:]
                     if "__init__" in k.__dict__ and k.__module__.startswith("tangentlab")), None)
    if init is None:
        return []
    params = parameters(init)
    if not params:
        return []
    class_doc = inspect.getdoc(cls) or ""
    # an inherited constructor may be documented on the class that defines it
    owner = next((k for k in cls.__mro__ if vars(k).get("__init__") is init), cls)
    if owner is not cls:
        class_doc += "\n\n" + (inspect.getdoc(owner) or "")
    init_doc = init.__doc__ or ""
    extra = ("Attributes",) if dataclasses.is_dataclass(cls) else ()
    # the constructor's parameters may be documented on the class or on __init__
    doc = class_doc + "\n\n" + init_doc if init_doc else class_doc
    return check_doc(f"{qual} (constructor)", doc, params, extra, allowed=variadic(init))


def problems_of(modname: str) -> list[str]:
    """Every documentation problem of one public module."""
    try:
        mod = importlib.import_module(modname)
    except ModuleNotFoundError as e:
        if e.name == modname:
            pytest.skip(f"{modname} not in this tree")
        raise
    out = check_doc(modname, mod.__doc__, [])
    for name in public_names(mod):
        obj = getattr(mod, name)
        qual = f"{modname}.{name}"
        if inspect.ismodule(obj):
            continue
        if inspect.isclass(obj):
            out += check_doc(qual, inspect.getdoc(obj), None)
            out += _constructor_problems(qual, obj)
            if issubclass(obj, BaseException):
                continue
            summary_only = f"{obj.__module__}.{obj.__qualname__}" in SUMMARY_ONLY_METHODS
            for mname, member in _own_members(obj):
                mqual = f"{qual}.{mname}"
                if summary_only and not isinstance(member, property):
                    out += check_doc(mqual, inspect.getdoc(getattr(obj, mname)), [])
                    continue
                if isinstance(member, property):
                    out += check_doc(mqual, _property_doc(obj, mname), [])
                elif isinstance(member, (staticmethod, classmethod)):
                    fn = member.__func__
                    out += check_doc(mqual, inspect.getdoc(getattr(obj, mname)), parameters(fn),
                                     inherited=_base_documented(obj, mname), allowed=variadic(fn))
                elif inspect.isfunction(member):
                    out += check_doc(mqual, inspect.getdoc(getattr(obj, mname)), parameters(member),
                                     inherited=_base_documented(obj, mname), allowed=variadic(member))
        elif callable(obj):
            out += check_doc(qual, inspect.getdoc(obj), parameters(obj), allowed=variadic(obj))
    return out


@pytest.mark.parametrize("modname", PUBLIC_MODULES)
def test_public_api_documented(modname):
    problems = problems_of(modname)
    assert not problems, f"{len(problems)} documentation problems:\n" + "\n".join(problems)


def test_parser_reads_numpy_sections():
    doc = inspect.cleandoc("""Summary.

        Parameters
        ----------
        x, y : Tensor
            Inputs.
        *args
            More.

        Returns
        -------
        Tensor
        """)
    secs = sections(doc)
    assert set(secs) == {"Parameters", "Returns"}
    assert entry_names(secs["Parameters"]) == {"x", "y", "args"}


def test_checker_catches_missing_and_stale_parameters():
    def f(a, b, *args, **kwargs):
        """Summary.

        Parameters
        ----------
        a : int
            One.
        c : int
            Not a parameter.
        """
    problems = check_doc("f", inspect.getdoc(f), parameters(f), allowed=variadic(f))
    assert any("lacks ['b']" in p for p in problems)
    assert any("['c']" in p for p in problems)
    assert check_doc("g", None, []) == ["g: no docstring"]
    assert any("no Parameters section" in p for p in check_doc("h", "Summary only.", ["x"]))
