"""Interleaved A/B of tangentlab's own benchmark rows between two source trees.

``python -m benchmarks.ab TREE_A TREE_B [--rounds R] [--only W1,W3] [--repeats K] [--quick]``

Refactors and speed-ups are judged against the code they replace on the same machine at
the same time: each round runs every tangentlab row once from each tree (the order
alternating between rounds and rows), each in a fresh interpreter running that tree's
``benchmarks.worker``; a row's time is the median over rounds of the per-run medians.
Prints a Markdown table (A, B, B/A, peak RSS of each) and writes ``--out`` (JSON, every run).
A typical use: ``git worktree add /tmp/base HEAD~3`` then
``python -m benchmarks.ab /tmp/base .``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from .workloads import WORKLOADS


def rows(only: str, quick: bool, repeats: int, threads: int) -> list[dict[str, Any]]:
    out = []
    for wid in only.split(","):
        if wid not in WORKLOADS:
            raise SystemExit(f"benchmarks.ab: unknown workload {wid!r}; choose from {', '.join(WORKLOADS)}")
        wl = WORKLOADS[wid]
        for params in wl.case_list(quick):
            for q in wl.quantities:
                out.append({"workload": wid, "case": params, "quantity": q, "adapter": "tangentlab",
                            "repeats": repeats, "threads": threads, "slow_s": 60, "device": "cpu"})
    return out


def run_row(tree: str, spec: dict[str, Any], timeout: float) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as out:
        proc = subprocess.run([sys.executable, "-m", "benchmarks.worker", json.dumps(spec), out], cwd=tree,
                              env={**os.environ, "PYTHONPATH": tree}, capture_output=True, text=True,
                              timeout=timeout)
        path = Path(out) / "row.json"
        if not path.exists():
            return {"error": (proc.stdout + proc.stderr)[-2000:]}
        return json.loads(path.read_text())


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__.split("\n\n")[0])
    ap.add_argument("tree_a", help="source tree A (the reference)")
    ap.add_argument("tree_b", help="source tree B (the candidate)")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3, help="timed calls per run (median)")
    ap.add_argument("--only", default="W1,W2,W3,W4,W5,W6", help="comma-separated workloads")
    ap.add_argument("--quick", action="store_true", help="the reduced sizes")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--timeout", type=float, default=1800)
    ap.add_argument("--out", default="ab.json")
    args = ap.parse_args(argv)
    specs = rows(args.only, args.quick, args.repeats, args.threads)
    trees = {"A": str(Path(args.tree_a).resolve()), "B": str(Path(args.tree_b).resolve())}
    runs: dict[tuple[str, int], list[dict[str, Any]]] = {(t, i): [] for t in trees for i in range(len(specs))}
    for r in range(args.rounds):
        for i, spec in enumerate(specs):
            for tag in ("A", "B") if (r + i) % 2 == 0 else ("B", "A"):
                row = run_row(trees[tag], spec, args.timeout)
                runs[(tag, i)].append(row)
                msg = f"{row['median_s']:.4f} s" if "median_s" in row else "error: " + row["error"][-300:]
                print(f"round {r} {tag} {spec['workload']} {spec['case']} {spec['quantity']}: {msg}", flush=True)

    def med(tag: str, i: int, key: str) -> float:
        vals = [row[key] for row in runs[(tag, i)] if key in row]
        return statistics.median(vals) if vals else float("nan")

    print("\n| workload | case | quantity | A (s) | B (s) | B/A | peak RSS A / B (GB) |")
    print("|---|---|---|---:|---:|---:|---:|")
    for i, spec in enumerate(specs):
        a, b = med("A", i, "median_s"), med("B", i, "median_s")
        pa, pb = med("A", i, "peak_rss_bytes") / 1e9, med("B", i, "peak_rss_bytes") / 1e9
        print(f"| {spec['workload']} | {spec['case']} | {spec['quantity']} | {a:.4f} | {b:.4f} | {b / a:.2f} "
              f"| {pa:.2f} / {pb:.2f} |")
    Path(args.out).write_text(json.dumps({"trees": trees, "specs": specs,
                                          "runs": {f"{t}{i}": v for (t, i), v in runs.items()}}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
