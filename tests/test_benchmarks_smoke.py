"""Smoke test of the benchmark suite: quick mode, W1, W2 and W5, one subprocess per row.

Checks that every runnable row ran and that all libraries agree (float32,
relative error < 1e-3). No timing assertions.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_quick_suite_runs_and_libraries_agree(tmp_path):
    cmd = [sys.executable, "-m", "benchmarks.run", "--quick", "--only", "W1,W2,W5", "--repeats", "1",
           "--threads", "1", "--out", str(tmp_path)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]

    report = json.loads((tmp_path / "results.json").read_text())
    groups = report["workloads"]
    assert [g["id"] for g in groups] == ["W1", "W2", "W5"]
    for g in groups:
        rows = {r["library"]: r for r in g["rows"]}
        assert "tangentlab" in rows and "torch.func vmap(jacrev/grad)" in rows
        ran = [r for r in g["rows"] if r["status"] == "ok"]
        assert len(ran) >= 2, g["rows"]
        for r in g["rows"]:
            assert r["status"] in ("ok", "not installed", "not implemented yet"), r
            if r["status"] == "ok":
                assert r["rel_err"] < 1e-3, (g["id"], r["library"], r["rel_err"])
                assert r["median_s"] > 0 and r["peak_rss_bytes"] > 0
        assert sum(1 for r in ran if r.get("reference")) == 1
        assert g["lower_bound_flops"] > 0

    md = (tmp_path / "RESULTS.md").read_text()
    for heading in ("## Machine", "## W1:", "## W2:", "## W5:"):
        assert heading in md


def test_fisher_flop_counts_by_hand():
    """The W3 lower bounds for one Linear(3 -> 2) layer, N = 5, C−1 = 4 pseudo-outputs."""
    from benchmarks import flops

    s = [flops.LayerShape("fc", t=1, i=3, o=2, bias=True)]  # ih = 4
    n, c = 5, 4
    fwd = 2 * n * 6  # no backward: the first layer's input gradient is never needed
    factors = fwd + n * 4 * 5 + c * n * 2 * 3
    kron_mv = 2 * (2 * 2 * 4 + 2 * 4 * 4)
    assert flops.kfac_fisher(s, n, c) == factors + kron_mv
    eigh = (4 / 3 + 2) * (4**3 + 2**3)
    s_star = 2 * n * (4 * 4 + c * 2 * 2) + 2 * n * 2 * 4
    assert abs(flops.ekfac_fisher(s, n, c) - (factors + eigh + s_star + 2 * kron_mv)) < 1e-9
    assert flops.diag_fisher(s, n, c, 8) < flops.kfac_fisher(s, n, c) < flops.ekfac_fisher(s, n, c)


def test_device_option_refuses_without_cuda():
    import pytest
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--quick", "--device", "cuda"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "no CUDA device here" in proc.stderr
    proc = subprocess.run([sys.executable, "-m", "benchmarks.run", "--device", "npu:x"], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "not a torch device" in proc.stderr


def test_case_to_device_keeps_the_values():
    import torch

    from benchmarks.workloads import WORKLOADS

    case = WORKLOADS["W5"].build({"n": 4})
    moved = case.to("cpu")
    assert moved.model is case.model and torch.equal(moved.x, case.x) and torch.equal(moved.y, case.y)
    w3 = WORKLOADS["W3"].build({"n": 6, "batch_size": 3})
    moved = w3.to(torch.device("cpu"))
    assert moved.v.keys() == w3.v.keys() and moved.batch_size == 3 and moved.n_classes == 10
