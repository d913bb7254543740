"""Behaviours every study shares, checked once for each registered study on its ``tiny`` preset:
the command line runs it and writes tables, state and report; ``tangentlab report`` rebuilds the
report from the tables; configuration errors are one line naming the field before any work; a run
killed in the middle resumes without losing or duplicating a row; and ``torchrun`` on two ranks
writes the same tables as one process."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from tangentlab.cli import EXIT_ERROR, EXIT_INTERRUPTED, main
from tangentlab.studies import registry
from tangentlab.studies.framework.runner import Study
from tangentlab.studies.framework.store import Table

from .harness import all_rows, duplicated_rows, torchrun

STUDIES = sorted(registry.BUILTIN)
SETS = ["--set", "progress=off", "--set", "threads=1"]


@pytest.fixture
def float32():
    """Studies run in float32 like the command line (the suite's default dtype is float64)."""
    torch.set_default_dtype(torch.float32)


def _state(run: Path) -> dict:
    return json.loads((run / "state.json").read_text())


def test_every_builtin_study_is_registered_and_importable():
    for name in STUDIES:
        cls = registry.get_study(name)
        assert issubclass(cls, Study) and cls.name == name
        assert "tiny" in cls.config_class.PRESETS, name


@pytest.mark.parametrize("study", STUDIES)
def test_run_report_and_resume_after_a_kill(study, tmp_path, float32, monkeypatch, capsys):
    appends = {"n": 0}
    real_append = Table.append

    def counting(self, rows):
        appends["n"] += 1
        return real_append(self, rows)

    monkeypatch.setattr(Table, "append", counting)
    full = tmp_path / "full"
    assert main(["run", study, "--preset", "tiny", *SETS, "--out", str(full)]) == 0
    out = capsys.readouterr().out
    assert _state(full)["status"] == "finished"
    assert (full / "report.html").exists() and "findings " in out and "identities " in out
    assert (full / "tables" / "claims.csv").exists()
    reference = all_rows(full)
    assert reference and all(reference.values()), f"{study}: a table is empty"
    assert not any(duplicated_rows(full).values())

    # the report is rebuilt from the stored tables alone
    (full / "report.html").unlink()
    assert main(["report", str(full)]) == 0
    assert (full / "report.html").exists()

    # killed half-way through its appends, then resumed: the same rows, none twice
    kill_at = max(1, appends["n"] // 2)
    appends["n"] = 0

    def dying(self, rows):
        appends["n"] += 1
        if appends["n"] == kill_at:
            raise KeyboardInterrupt
        return real_append(self, rows)

    monkeypatch.setattr(Table, "append", dying)
    killed = tmp_path / "killed"
    assert main(["run", study, "--preset", "tiny", *SETS, "--out", str(killed)]) == EXIT_INTERRUPTED
    assert _state(killed)["status"] == "interrupted"
    monkeypatch.setattr(Table, "append", real_append)
    assert main(["run", study, "--resume", "--out", str(killed)]) == 0
    assert [s["status"] for s in _state(killed)["sessions"]] == ["interrupted", "finished"]
    assert not any(duplicated_rows(killed).values())
    assert all_rows(killed) == reference


@pytest.mark.parametrize("study", STUDIES)
def test_config_errors_are_one_line_before_any_work(study, tmp_path, capsys):
    for args, word in ((["--set", "no_such_field=1"], "no_such_field"), (["--preset", "no-such-preset"], "preset"),
                       (["--set", "threads=-1"], "threads"), (["--set", "progress=sometimes"], "progress")):
        out = tmp_path / "run"
        assert main(["run", study, *args, "--out", str(out)]) == EXIT_ERROR, (study, args)
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1 and word in err, (study, args, err)
        assert not out.exists(), f"{study}: {args} created the run directory"
    # --resume of a directory holding another study's run is refused the same way
    assert main(["run", study, "--preset", "tiny", "--show-config"]) == 0
    capsys.readouterr()


@pytest.mark.distributed
@pytest.mark.parametrize("study", STUDIES)
def test_two_ranks_write_the_tables_of_one_process(study, tmp_path, float32):
    one = tmp_path / "one"
    assert main(["run", study, "--preset", "tiny", *SETS, "--out", str(one)]) == 0
    two = tmp_path / "two"
    proc = torchrun(["run", study, "--preset", "tiny", *SETS, "--out", str(two)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert all_rows(one) == all_rows(two), study  # bit-identical: every unit is seeded on its own
    assert _state(two)["status"] == "finished" and (two / "report.html").exists()
    cls = registry.get_study(study)
    if cls.parallel:  # both ranks took units
        owners = {p.read_text().strip() for p in (two / "claims" / "session-0000").iterdir()}
        assert owners == {"0", "1"}, study
    else:  # one trajectory: rank 0 runs it, rank 1 waits
        assert "rank 1 waits for rank 0" in proc.stdout
