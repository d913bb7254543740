"""Helpers shared by the study tests: launching ``torchrun`` and reading a run's tables."""

from __future__ import annotations

import csv
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

#: Columns and metric names that hold wall-clock or CPU-time measurements (not reproducible).
WALL_CLOCK = ("seconds", "wall_s", "time_s", "build_s", "cpu_s")
#: Tables derived from the others by every report (their measured text may quote timings).
DERIVED = ("claims",)


def torchrun(args: list[str], nproc: int = 2, timeout: int = 600) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node=nproc -m tangentlab ARGS`` (1 thread per rank)."""
    exe = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    if exe is None:
        pytest.skip("torchrun is not installed")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run([exe, "--standalone", f"--nproc-per-node={nproc}", "-m", "tangentlab", *args],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)


def all_rows(run: Path) -> dict[str, list[tuple[str, ...]]]:
    """Every table of a run directory as sorted rows, wall-clock columns and rows and the
    :data:`DERIVED` tables left out."""
    out = {}
    for path in sorted((Path(run) / "tables").glob("*.csv")):
        if path.stem in DERIVED:
            continue
        with open(path, newline="") as fh:
            rows = list(csv.reader(fh))
        skip = {i for i, c in enumerate(rows[0]) if c in WALL_CLOCK}
        out[path.stem] = sorted(tuple(v for i, v in enumerate(r) if i not in skip) for r in rows[1:]
                                if not any(v in WALL_CLOCK for v in r))
    return out


def duplicated_rows(run: Path) -> dict[str, int]:
    """Per table, how many data lines are exact repeats of an earlier line (must be 0)."""
    out = {}
    for path in sorted((Path(run) / "tables").glob("*.csv")):
        with open(path, newline="") as fh:
            rows = [tuple(r) for r in csv.reader(fh)][1:]
        out[path.stem] = len(rows) - len(set(rows))
    return out
