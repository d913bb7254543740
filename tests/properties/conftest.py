"""Hypothesis profiles of the property tests.

* ``ci`` (default): derandomized (a fixed sequence of examples, the same on every run),
  few examples per test so that ``tests/properties`` runs in about a minute on one core,
  no deadline, no example database (nothing is written into the repository).
* ``long``: many random examples per test, for hunting bugs::

      TANGENTLAB_HYPOTHESIS=long python -m pytest -p no:cacheprovider tests/properties

  ``TANGENTLAB_HYPOTHESIS_EXAMPLES=2000`` changes its number of examples. Every failure it
  finds must become a regular, explicit test in ``tests/properties/test_found.py`` (the
  minimized case built by hand, fixed or marked ``xfail`` with the reason), so that the
  fixed-seed CI profile keeps checking it.

Neither profile writes into the repository (no example database; hypothesis' caches go to
the temporary directory unless ``HYPOTHESIS_STORAGE_DIRECTORY`` says otherwise).
"""

from __future__ import annotations

import os
import tempfile

from hypothesis import HealthCheck, settings

# hypothesis' own caches (e.g. the constants it collects from the source) go to a temporary
# directory, not to a `.hypothesis` folder in the repository
os.environ.setdefault("HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "tangentlab-hypothesis"))

_SLOW_DRAWS = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture]

settings.register_profile("ci", derandomize=True, max_examples=150, deadline=None, database=None,
                          print_blob=True, suppress_health_check=_SLOW_DRAWS)
settings.register_profile("long", derandomize=False, deadline=None, database=None, print_blob=True,
                          max_examples=int(os.environ.get("TANGENTLAB_HYPOTHESIS_EXAMPLES", "500")),
                          suppress_health_check=_SLOW_DRAWS)
settings.load_profile(os.environ.get("TANGENTLAB_HYPOTHESIS", "ci"))
