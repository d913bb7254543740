"""Studies: reproducible experiments run from the command line.

``tangentlab run <study> [--preset NAME] [--set key=value ...] [--config file.toml]
[--out DIR] [--resume]`` runs a registered study into a *run directory*;
``tangentlab report RUN_DIR`` renders its HTML report again from the stored tables.

Layout:

* :mod:`.framework`: what every study shares (typed configurations, the run store,
  reports, the runner, multi-process units, the resumable training loop, datasets, models,
  probes, thread control);
* :mod:`.registry`: the explicit map from a study's name to its class;
* one package per study (:mod:`.alignment`, :mod:`.fim_quality`, :mod:`.ekfac`,
  :mod:`.lazy_vs_hasty`, :mod:`.linearized_generalization`, :mod:`.compression`,
  :mod:`.adaptive_tangent`).

Importing this package is cheap: matplotlib and the studies load on demand.
"""

from __future__ import annotations

from .framework.config import ConfigError, StudyConfig, option

__all__ = ["ConfigError", "StudyConfig", "option"]
