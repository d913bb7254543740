"""Studies: reproducible experiments run from the command line.

``tangentlab run <study> [--preset NAME] [--set key=value ...] [--config file.toml]
[--out DIR] [--resume]`` runs a registered study into a *run directory*;
``tangentlab report RUN_DIR`` renders its HTML report again from the stored tables.

Modules:

* :mod:`.config`: typed (dataclass) configurations, presets, ``--set`` / TOML
  overrides and validation with one-line errors;
* :mod:`.store`: the run directory, tidy results tables appended atomically,
  checkpoints and resume;
* :mod:`.report`: the HTML report (claims table, figures, tables);
* :mod:`.registry`: study name → study class;
* :mod:`.data`, :mod:`.models`, :mod:`.training`: datasets, small models and the
  seeded minibatch training loop shared with ``tangentlab demo``;
* :mod:`.fim_quality`: the ``fim-quality`` study (thesis Figs. 3.3–3.6, 4.2, 4.4c).

Importing this package is cheap: matplotlib and the studies load on demand.
"""

from __future__ import annotations

from .config import ConfigError, StudyConfig, option

__all__ = ["ConfigError", "StudyConfig", "option"]
