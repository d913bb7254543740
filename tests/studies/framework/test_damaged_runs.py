"""Damaged run directories: ``--resume`` repairs what it can prove safe and says what it did
(a torn last table line, a half-written ``state.json``, a missing checkpoint, claims left by a
killed multi-rank run) or refuses with a message naming the file and the fix (a malformed
table line, an unreadable ``config.json``, a run directory of another format version); it
never loses or duplicates a row. The toy study of ``test_framework`` is the run."""

from __future__ import annotations

import io
import json

import pytest

from tangentlab.cli import EXIT_ERROR, main
from tangentlab.errors import TangentlabError
from tangentlab.studies.framework.parallel import RankContext
from tangentlab.studies.framework.runner import _clear_claims
from tangentlab.studies.framework.store import FORMAT_VERSION, RunDirectoryError, RunDirectoryWarning, RunStore, Table

from .test_framework import FAIL, _one_error_line, _rows, toy  # noqa: F401 - toy is a fixture

ARGS = ["--set", "steps=14", "--set", "every=4", "--set", "progress=off"]


@pytest.fixture
def killed(toy, tmp_path, capsys):  # noqa: F811
    """``(reference rows of a full run, run directory killed at step 10)``."""
    full = tmp_path / "full"
    assert main(["run", "toy-test", "--out", str(full), *ARGS]) == 0
    run = tmp_path / "killed"
    FAIL["at"] = 10  # after the checkpoint of step 8
    with pytest.raises(RuntimeError, match="simulated kill"):
        main(["run", "toy-test", "--out", str(run), *ARGS])
    capsys.readouterr()
    return _rows(full), run


def _resume(run) -> int:
    return main(["run", "toy-test", "--out", str(run), "--resume"])


def test_a_torn_last_table_line_is_cut_off_and_reported(killed):
    reference, run = killed
    with open(run / "tables" / "steps.csv", "a") as fh:
        fh.write("10,loss,0.12")  # killed in the middle of a write
    with pytest.warns(RunDirectoryWarning, match=r"steps\.csv'?: cut off a torn last line of 12 bytes"):
        assert _resume(run) == 0
    assert _rows(run) == reference


def test_a_malformed_table_line_is_refused_naming_the_file_and_line(tmp_path):
    path = tmp_path / "t.csv"
    Table(path, ["step", "value"], ["step"]).append([{"step": i, "value": 1.0} for i in range(3)])
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join([lines[0], lines[1], "1\n", *lines[2:]]))  # an edited line in the middle
    with pytest.raises(RunDirectoryError, match=r"t\.csv', line 3: 1 cells, expected 2.*another --out") as e:
        Table(path, ["step", "value"], ["step"])
    assert isinstance(e.value, TangentlabError)


def test_a_half_written_state_file_is_rebuilt_and_reported(killed, capsys):
    reference, run = killed
    (run / "state.json").write_text('{"status": "fail')
    with pytest.warns(RunDirectoryWarning, match=r"state\.json'? could not be read.*rebuilt.*results are not affected"):
        assert _resume(run) == 0
    assert _rows(run) == reference
    state = json.loads((run / "state.json").read_text())
    assert state["status"] == "finished" and [s["status"] for s in state["sessions"]] == ["finished"]


def test_an_unreadable_config_file_is_refused(killed, capsys):
    _, run = killed
    (run / "config.json").write_text('{"study": "toy-te')
    assert _resume(run) == EXIT_ERROR
    line = _one_error_line(capsys)
    assert "config.json" in line and "cannot be read" in line and "another --out" in line


def test_a_missing_checkpoint_restarts_its_unit_without_losing_or_duplicating_rows(killed):
    reference, run = killed
    removed = list((run / "checkpoints").glob("toy-*.pt"))
    assert removed
    for p in removed:
        p.unlink()
    with pytest.warns(RunDirectoryWarning, match="checkpoints of 'toy' are missing.*computed again from its start"):
        assert _resume(run) == 0  # the toy run starts again at step 0; rows already written are skipped
    assert _rows(run) == reference


@pytest.mark.parametrize("version", ["0.9", None, "2.0"])
def test_a_run_directory_of_another_format_version_is_refused(killed, capsys, version):
    _, run = killed
    meta = json.loads((run / "config.json").read_text())
    assert meta["format_version"] == FORMAT_VERSION
    if version is None:
        del meta["format_version"]
    else:
        meta["format_version"] = version
    (run / "config.json").write_text(json.dumps(meta))
    assert _resume(run) == EXIT_ERROR
    line = _one_error_line(capsys)
    assert "config.json" in line and "another version of tangentlab" in line and "another --out" in line
    assert (version or "records no format version") in line
    meta["format_version"] = FORMAT_VERSION.split(".")[0] + ".7"  # another minor version resumes
    (run / "config.json").write_text(json.dumps(meta))
    assert _resume(run) == 0


def test_a_table_of_other_columns_is_refused_with_the_fix(tmp_path):
    path = tmp_path / "t.csv"
    Table(path, ["step", "value"], ["step"])
    with pytest.raises(RunDirectoryError, match=r"t\.csv' has columns .*another version of the study.*another --out"):
        Table(path, ["step", "metric", "value"], ["step", "metric"])


def test_claims_left_by_a_killed_multi_rank_run_are_cleared_on_resume(killed, capsys):
    reference, run = killed
    # a killed 2-rank session whose state.json was lost: the resumed session has the same index
    old = RankContext(rank=0, world=2)
    old.set_session(run, 0)
    assert old.claim("unit-a") and (run / "claims" / "session-0000" / "unit-a").exists()
    again = RankContext(rank=0, world=2)
    again.set_session(run, 0)
    assert not again.claim("unit-a")  # without clearing, the unit would be skipped: its rows dropped
    out = io.StringIO()
    _clear_claims(RunStore.open(run), out)
    assert "removed the claims of earlier sessions (session-0000)" in out.getvalue()
    again.set_session(run, 0)
    assert again.claim("unit-a")
    # and through the command line (state.json rebuilt, stale claims removed)
    (run / "state.json").write_text("{")
    with pytest.warns(RunDirectoryWarning, match="state.json"):
        assert _resume(run) == 0
    assert "removed the claims of earlier sessions" in capsys.readouterr().out
    assert not (run / "claims").exists() and _rows(run) == reference
