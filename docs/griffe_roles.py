"""Griffe extension for the API reference: Sphinx cross-reference roles in docstrings
(``:func:`fim```, ``:class:`~tangentlab.PVector```) are shown as code spans, as
:func:`plain_docstring` in ``docs/hooks.py`` writes them, instead of as literal text."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import griffe

_spec = importlib.util.spec_from_file_location("tangentlab_docs_hooks", Path(__file__).with_name("hooks.py"))
_hooks = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_hooks)


class SphinxRolesAsCode(griffe.Extension):
    """Rewrite each object's docstring before it is parsed."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = _hooks.plain_docstring(obj.docstring.value)
