"""Studies on several processes (``torchrun -m tangentlab run STUDY``): shared tables under
concurrent appends, unit claims, and multi-rank runs that equal the single-process run."""

from __future__ import annotations

import csv
import json
import multiprocessing as mp
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tangentlab.studies.alignment import run as al
from tangentlab.studies.framework.parallel import RankContext
from tangentlab.studies.framework.runner import run_study
from tangentlab.studies.framework.store import Table, read_table

from ..harness import ROOT, torchrun

COLUMNS, KEY = ["rank", "i", "value"], ["i"]


# ---------------------------------------------------------------- tables shared by processes
def _appender(path: str, rank: int, n: int) -> None:
    t = Table(path, COLUMNS, KEY)
    for i in range(n):  # both processes try every key; each key must be written once
        t.append([{"rank": rank, "i": i, "value": float(i) / 7}])


def test_table_appends_from_two_processes_never_duplicate(tmp_path):
    path = str(tmp_path / "t.csv")
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_appender, args=(path, r, 150)) for r in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
        assert p.exitcode == 0
    rows = read_table(path)
    assert sorted(int(r["i"]) for r in rows) == list(range(150))
    assert all(float(r["value"]) == int(r["i"]) / 7 for r in rows)
    # a table opened before the other process wrote sees its keys on the next append / lookup
    t = Table(path, COLUMNS, KEY)
    other = Table(path, COLUMNS, KEY)
    assert other.append([{"rank": 9, "i": 1000, "value": 1.0}]) == 1
    assert ("1000",) in t
    assert t.append([{"rank": 8, "i": 1000, "value": 2.0}, {"rank": 8, "i": 1001, "value": 2.0}]) == 1
    assert [r["rank"] for r in read_table(path) if r["i"] in ("1000", "1001")] == ["9", "8"]


def test_single_process_context_claims_everything(tmp_path):
    ctx = RankContext()
    assert not ctx.active and ctx.is_main
    assert list(ctx.mine(["a", "b", "c"])) == ["a", "b", "c"]
    assert ctx.once(lambda: 3) == 3 and ctx.broadcast("x") == "x" and ctx.gather(1) == [1]
    assert not (tmp_path / "claims").exists()


def test_claims_are_exclusive_and_per_session(tmp_path):
    a = RankContext(rank=0, world=2)
    b = RankContext(rank=1, world=2)
    for c in (a, b):
        c.set_session(tmp_path, 0)
    assert a.claim("run x") and not b.claim("run x") and b.claim("run/y")
    assert a.claimed == ["run x"] and b.claimed == ["run/y"]
    # a new session (a resumed run) starts with no claims
    a2, b2 = RankContext(rank=0, world=2), RankContext(rank=1, world=2)
    for c in (a2, b2):
        c.set_session(tmp_path, 1)
    assert b2.claim("run x") and not a2.claim("run x")
    with pytest.raises(RuntimeError):
        RankContext(rank=0, world=2).claim("z")


# ---------------------------------------------------------------- torchrun launches
def _rows(run: Path, name: str) -> dict[tuple[str, ...], list[str]]:
    with open(run / "tables" / f"{name}.csv", newline="") as fh:
        rows = list(csv.reader(fh))
    header, body = rows[0], rows[1:]
    assert len(body) == len({tuple(r) for r in body})  # no duplicated rows
    vcols = {i for i, c in enumerate(header) if c in ("value", "seconds", "wall_s")}
    keyed = {tuple(v for i, v in enumerate(r) if i not in vcols): r for r in body}
    assert len(keyed) == len(body), f"{name}: a key was written twice"
    return keyed


SETS = ["--set", "progress=off", "--set", "threads=1", "--set", "items=1,2,7", "--set", "noise=0,0.5",
        "--set", "complexity_widths=8", "--set", "complexity_noise=0,0.5"]
TABLES = ("probes", "training", "spectra", "complexity")


def _same_tables(a: Path, b: Path) -> None:
    for name in TABLES:
        ra, rb = _rows(a, name), _rows(b, name)
        assert ra.keys() == rb.keys(), name
        if name != "complexity":  # complexity rows hold wall-clock seconds; the rest is deterministic
            assert ra == rb, name


@pytest.mark.distributed
def test_torchrun_alignment_equals_one_process_and_splits_the_work(tmp_path):
    one = tmp_path / "one"
    run_study("alignment", preset="tiny", sets=[s for s in SETS if s != "--set"], out=str(one), report=False)
    two = tmp_path / "two"
    proc = torchrun(["run", "alignment", "--preset", "tiny", *SETS, "--out", str(two)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _same_tables(one, two)
    # both ranks did units, rank 0 alone wrote the report and the state
    out = proc.stdout
    assert "[rank 0/2]" in out and "[rank 1/2]" in out
    claims = sorted((two / "claims" / "session-0000").iterdir())
    owners = {p.read_text().strip() for p in claims}
    assert owners == {"0", "1"}
    # the tiny preset's 2 disk seeds, the distance to the limit at init, 2 noise runs x 2 seeds, two complexity runs
    assert len(claims) == 2 + 1 + 2 * 2 + 2
    assert (two / "report.html").exists()
    state = json.loads((two / "state.json").read_text())
    assert state["status"] == "finished" and len(state["sessions"]) == 1


@pytest.mark.distributed
def test_interrupted_run_resumes_on_two_ranks(tmp_path, monkeypatch):
    sets = [s for s in SETS if s != "--set"]
    full = tmp_path / "full"
    run_study("alignment", preset="tiny", sets=sets, out=str(full), report=False)
    killed = tmp_path / "killed"
    calls = {"n": 0}
    real = al.Probe.evaluate

    def dying(self, model, step, vectors=True):
        calls["n"] += 1
        if calls["n"] == 12:  # in the middle of the first noise run
            raise KeyboardInterrupt
        return real(self, model, step, vectors)

    monkeypatch.setattr(al.Probe, "evaluate", dying)
    with pytest.raises(KeyboardInterrupt):
        run_study("alignment", preset="tiny", sets=sets, out=str(killed), report=False)
    monkeypatch.setattr(al.Probe, "evaluate", real)
    proc = torchrun(["run", "alignment", "--resume", "--out", str(killed)])
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    _same_tables(full, killed)
    state = json.loads((killed / "state.json").read_text())
    assert [s["status"] for s in state["sessions"]] == ["interrupted", "finished"]
    assert (killed / "claims" / "session-0001").is_dir()


@pytest.mark.distributed
def test_torchrun_ranks_with_different_arguments_refuse(tmp_path):
    # every rank must run the same configuration: a rank whose arguments differ stops with a clear error
    script = ("import os,sys; from tangentlab.cli import main; r=os.environ['RANK']; "
              "sys.exit(main(['run','alignment','--preset','tiny','--set','progress=off','--set','items=1',"
              "'--set', 'disk_steps=' + ('20' if r == '0' else '21'), '--out', sys.argv[1]]))")
    torchrun = shutil.which("torchrun", path=os.path.dirname(sys.executable)) or shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not installed")
    proc = subprocess.run([torchrun, "--standalone", "--nproc-per-node=2", "--no-python", sys.executable, "-c",
                           script, str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert proc.returncode != 0
    assert "another configuration" in proc.stdout + proc.stderr
