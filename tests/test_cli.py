"""The ``tangentlab`` command line and the ``tangentlab demo`` main job."""

import contextlib
import csv
import io
import json
import math
import subprocess
import sys

import pytest
import torch

import tangentlab.demo as demo
from tangentlab import cli
from tangentlab.cli import main
from tangentlab.errors import InvalidInputError, TangentlabError


def _stderr_lines(capsys) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.strip()]


def test_demo_quick(tmp_path):
    """``tangentlab demo --quick`` (a few seconds): exit status, files, checks, training
    effects, and determinism (a second run with the same seed gives the same numbers).

    One test rather than several sharing a fixture, so that ``pytest -n 2`` runs the demo
    on one worker only."""
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        rc = main(["demo", "--quick", "--out", str(tmp_path), "--no-progress"])
    assert rc == 0
    summary = json.loads((tmp_path / "summary.json").read_text())
    _check_files(tmp_path, summary)
    _check_consistency(summary, buf.getvalue())
    _check_training(summary)

    again = demo.run_demo(tmp_path / "again", epochs=demo.QUICK_EPOCHS, seed=0, n_probe=demo.QUICK_N_PROBE,
                          progress=False, stream=io.StringIO())
    assert _numbers(json.loads(json.dumps(again))) == _numbers(summary)


def _numbers(s: dict) -> dict:
    """A summary without its wall-clock timings and file paths."""
    reps = {k: {m: v for m, v in r.items() if not m.endswith("_s")} for k, r in s["representations"].items()}
    return {**s, "timings": None, "files": None, "representations": reps}


def _check_files(out, summary) -> None:
    # exactly the two outputs: the atomic writes leave no temporary files behind
    assert sorted(p.name for p in out.iterdir()) == ["representations.csv", "summary.json"]
    assert summary["config"]["n_probe"] == demo.QUICK_N_PROBE
    assert summary["config"]["epochs"] == demo.QUICK_EPOCHS
    assert summary["fisher_spectrum"]["n_parameters"] == 64 * 32 + 32 + 32 * 32 + 32 + 32 * 10 + 10
    assert summary["timings"]["total_s"] < 60  # quick mode takes a few seconds

    with open(out / "representations.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == len(demo.REPRESENTATIONS) * len(demo.METRICS)
    assert {(r["representation"], r["metric"]) for r in rows} == {
        (rep, m) for rep in demo.REPRESENTATIONS for m in demo.METRICS
    }
    values = {(r["representation"], r["metric"]): float(r["value"]) for r in rows}
    assert all(math.isfinite(v) for v in values.values())
    # the CSV and the JSON agree
    for rep in demo.REPRESENTATIONS:
        assert values[(rep, "trace")] == pytest.approx(summary["representations"][rep]["trace"], rel=1e-12)
    mem = {rep: values[(rep, "memory_bytes")] for rep in demo.REPRESENTATIONS}
    assert mem["dense"] == 8 * summary["fisher_spectrum"]["n_parameters"] ** 2
    assert mem["implicit"] == 0
    assert mem["diag"] < mem["lowrank"] < mem["blockdiag"] < mem["dense"]
    assert values[("lowrank", "mv_rel_err")] < 1e-10 and values[("implicit", "mv_rel_err")] < 1e-10


def _check_consistency(summary, stdout: str) -> None:
    checks = summary["checks"]
    names = " ".join(c["name"] for c in checks)
    for needed in ("trace equal", "implicit mv == dense mv", "FIM/NTK duality"):
        assert needed in names
    failed = [c["line"] for c in checks if not c["passed"]]
    assert not failed, failed
    assert summary["all_checks_passed"] is True
    lines = stdout.splitlines()
    assert sum(line.startswith("PASS") for line in lines) == len(checks)
    assert not any(line.startswith("FAIL") for line in lines)


def _check_training(s) -> None:
    assert s["accuracy"]["test_trained"] > max(0.8, s["accuracy"]["test_init"])
    init, trained = s["ntk"]["init"], s["ntk"]["trained"]
    # label alignment of the NTK (output-traced N×N kernel vs Y Yᵀ) grows with training
    assert trained["cka_traced"] > init["cka_traced"]
    assert s["alignment_increased"]["traced"] is True
    for st in (init, trained):
        assert -1 <= st["cka_flat"] <= 1 and 0 < st["cka_traced"] <= 1
        assert 1 <= st["effective_rank"] <= st["shape"][0] * st["shape"][2]
        assert st["top_eigenvalues"] == sorted(st["top_eigenvalues"], reverse=True)


# ---- errors -------------------------------------------------------------------------------
def test_tangentlab_error_in_command_is_one_line_exit_2(monkeypatch, capsys, tmp_path):
    def boom(*args, **kwargs):
        raise InvalidInputError("something is wrong\nwith this input")

    monkeypatch.setattr(demo, "run_demo", boom)
    assert main(["demo", "--quick", "--out", str(tmp_path)]) == 2
    err = _stderr_lines(capsys)
    assert len(err) == 1
    assert "something is wrong with this input" in err[0]
    assert "Traceback" not in err[0]


def test_error_from_the_library_is_one_line(monkeypatch, capsys, tmp_path):
    # a memory budget too small for the dense Fisher: MemoryBudgetError from tl.fim
    monkeypatch.setenv("TANGENTLAB_MEMORY_BUDGET", "1MiB")
    assert main(["demo", "--epochs", "0", "--n-probe", "4", "--out", str(tmp_path), "--no-progress"]) == 2
    err = _stderr_lines(capsys)
    assert len(err) == 1 and "memory budget" in err[0]


def test_invalid_demo_arguments_exit_2(capsys, tmp_path):
    assert main(["demo", "--n-probe", "1", "--out", str(tmp_path)]) == 2
    assert len(_stderr_lines(capsys)) == 1
    assert main(["demo", "--epochs", "-1", "--out", str(tmp_path)]) == 2
    assert "epochs" in _stderr_lines(capsys)[0]
    (tmp_path / "file").write_text("x")
    assert main(["demo", "--out", str(tmp_path / "file"), "--epochs", "0"]) == 2
    assert "not a directory" in _stderr_lines(capsys)[0]


def test_registered_subcommand_errors(monkeypatch, capsys):
    """Adding a subcommand is one function plus one entry in COMMANDS; its TangentlabErrors
    become one line and exit status 2 like the demo's."""
    def _fail(sub):
        p = sub.add_parser("fail")
        p.add_argument("what")
        p.set_defaults(handler=lambda args: (_ for _ in ()).throw(TangentlabError(f"no {args.what}")))

    def _ok(sub):
        sub.add_parser("ok").set_defaults(handler=lambda args: 0)

    monkeypatch.setattr(cli, "COMMANDS", (*cli.COMMANDS, _fail, _ok))
    assert main(["ok"]) == 0
    assert main(["fail", "thing"]) == 2
    assert _stderr_lines(capsys) == ["tangentlab fail: error: no thing"]


def test_usage(capsys):
    assert main([]) == 2
    assert "demo" in capsys.readouterr().err
    assert main(["demo", "--bogus"]) == 2
    assert main(["nonexistent"]) == 2
    assert main(["--version"]) == 0
    assert "tangentlab" in capsys.readouterr().out
    assert main(["demo", "--help"]) == 0
    assert "--quick" in capsys.readouterr().out


def test_python_dash_m():
    r = subprocess.run([sys.executable, "-m", "tangentlab", "--version"], capture_output=True, text=True,
                       timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("tangentlab ")


# ---- the maths helpers ---------------------------------------------------------------------
def test_centered_alignment_and_effective_rank():
    g = torch.Generator().manual_seed(0)
    a = torch.randn(12, 5, generator=g, dtype=torch.float64)
    k = a @ a.T
    assert demo.centered_alignment(k, k) == pytest.approx(1.0)
    assert demo.centered_alignment(3.0 * k + 7.0, k) == pytest.approx(1.0)  # scale and shift invariant
    b = torch.randn(12, 5, generator=g, dtype=torch.float64)
    assert abs(demo.centered_alignment(k, b @ b.T)) < 1
    assert demo.effective_rank(torch.ones(7, dtype=torch.float64)) == pytest.approx(7.0)
    assert demo.effective_rank(torch.tensor([2.0, 0.0, -1e-18], dtype=torch.float64)) == pytest.approx(1.0)
