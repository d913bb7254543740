"""The studies of ``tangentlab run``: an explicit map from a study's name to its class.

Each built-in study is a package ``tangentlab.studies.<name>`` whose class derives from
:class:`tangentlab.studies.framework.runner.Study`. The map names the class by its import
path, so the registry imports a study only when it is asked for (``tangentlab run --help``
stays cheap) and no study imports the registry. :func:`register` adds a study of your own
(a class, or an ``"module:Class"`` path) for the command line and :func:`run_study`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

from .framework.config import ConfigError

if TYPE_CHECKING:
    from .framework.runner import Study

#: Built-in studies: command-line name -> ``"module:Class"``.
BUILTIN: dict[str, str] = {
    "adaptive-tangent": "tangentlab.studies.adaptive_tangent:AdaptiveTangent",
    "alignment": "tangentlab.studies.alignment:Alignment",
    "compression": "tangentlab.studies.compression:Compression",
    "ekfac": "tangentlab.studies.ekfac:EkfacStudy",
    "fim-quality": "tangentlab.studies.fim_quality:FimQuality",
    "lazy-vs-hasty": "tangentlab.studies.lazy_vs_hasty:LazyVsHasty",
    "linearized-generalization": "tangentlab.studies.linearized_generalization:LinearizedGeneralization",
}

#: Every registered study: name -> class, or ``"module:Class"`` not imported yet.
STUDIES: dict[str, str | type[Study]] = dict(BUILTIN)


def register(study: type[Study] | str, name: str | None = None) -> None:
    """Register a study class (or its ``"module:Class"`` path) under ``name`` (default: the
    class's ``name`` attribute; required for a path)."""
    if name is None:
        if isinstance(study, str):
            raise ValueError("a study given by its import path needs a name")
        name = study.name
    if not name:
        raise ValueError("a study needs a name")
    STUDIES[name] = study


def get_study(name: str) -> type[Study]:
    """The class of the study registered as ``name`` (imported on first use)."""
    if name not in STUDIES:
        raise ConfigError("study", f"unknown study {name!r}", ", ".join(sorted(STUDIES)))
    entry = STUDIES[name]
    if isinstance(entry, str):
        module, _, attr = entry.partition(":")
        entry = getattr(importlib.import_module(module), attr)
        STUDIES[name] = entry
    return entry


def study_names() -> list[str]:
    """The names of the registered studies, sorted."""
    return sorted(STUDIES)
