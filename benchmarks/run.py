"""Run the benchmark suite: ``python -m benchmarks.run [--quick] [--only W1,W2] [--repeats 3]``.

For every workload, case, quantity and adapter, one row runs in its own
subprocess (:mod:`benchmarks.worker`): a warm-up call, then the median wall time
of ``--repeats`` calls, the peak resident memory, and the result, which is
compared with the first available reference (adapter order of
:data:`benchmarks.adapters.ADAPTERS`). Writes ``RESULTS.md`` and
``results.json`` to ``--out`` (default: this directory).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from tangentlab.studies.framework.store import atomic_write_text

from .adapters import ADAPTERS
from .report import write_markdown
from .worker import sync
from .workloads import WORKLOADS, case_label

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.run", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="small sizes (whole suite in well under a minute)")
    ap.add_argument("--only", default="", help="comma-separated workload ids, e.g. W1,W2")
    ap.add_argument("--repeats", type=int, default=3, help="timed calls after the warm-up (median reported)")
    ap.add_argument("--threads", type=int, default=2, help="torch.set_num_threads in every row")
    ap.add_argument("--out", default=str(HERE), help="directory for RESULTS.md and results.json")
    ap.add_argument("--slow", type=float, default=60.0,
                    help="rows whose warm-up takes longer than this many seconds are timed once")
    ap.add_argument("--timeout", type=float, default=1800.0, help="seconds before a row is killed")
    ap.add_argument("--in-process", action="store_true",
                    help="run rows in this process (no memory numbers; for debugging)")
    ap.add_argument("--fresh", action="store_true",
                    help="start a new interpreter per row instead of forking from a pre-imported launcher")
    ap.add_argument("--render", action="store_true",
                    help="only rewrite RESULTS.md from the results.json in --out")
    ap.add_argument("--optim", action="store_true",
                    help="also time KFAC/EKFAC steps against SGD (benchmarks.optim_overhead: OPTIM_RESULTS.md)")
    ap.add_argument("--matmul-size", type=int, default=None,
                    help="n of the n×n×n matmul (default 4096; quick 1024)")
    ap.add_argument("--device", default="cpu",
                    help="where every row runs: cpu (default) or cuda / cuda:K (rows then start fresh "
                         "interpreters; times end with a synchronize; peak device memory is reported)")
    args = ap.parse_args(argv)
    try:
        dev = torch.device(args.device)
    except RuntimeError:
        ap.error(f"--device {args.device!r} is not a torch device (cpu, cuda, cuda:0, ...)")
    if dev.type not in ("cpu", "cuda"):
        ap.error(f"--device {args.device!r}: the suite runs on cpu or cuda")
    if dev.type == "cuda":
        if not torch.cuda.is_available():
            ap.error(f"--device {args.device}: no CUDA device here (torch.cuda.is_available() is False; "
                     "this torch is " + torch.__version__ + ")")
        if dev.index is not None and dev.index >= torch.cuda.device_count():
            ap.error(f"--device {args.device}: only {torch.cuda.device_count()} CUDA device(s)")
        args.fresh = True  # a forked launcher and CUDA do not mix
    args.only = [w.strip().upper() for w in args.only.split(",") if w.strip()]
    unknown = [w for w in args.only if w not in WORKLOADS]
    if unknown:
        ap.error(f"unknown workloads {unknown}; choose from {sorted(WORKLOADS)}")
    if args.repeats < 1:
        ap.error("--repeats must be >= 1")
    return args


# ---- machine ------------------------------------------------------------------------------------
def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:  # pragma: no cover
        pass
    return platform.processor() or "unknown"


def git_commit() -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True,
                             text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "tangentlab"], cwd=ROOT,
                               capture_output=True, text=True, timeout=10).stdout.strip()
        return sha + (" (tangentlab/ modified)" if dirty else "") if sha else "unknown"
    except (OSError, subprocess.SubprocessError):  # pragma: no cover
        return "unknown"


def matmul_gflops(n: int, threads: int, repeats: int = 5, device: str = "cpu") -> float:
    """Best float32 ``n×n @ n×n`` throughput in GFLOP/s on ``device``."""
    old = torch.get_num_threads()
    torch.set_num_threads(threads)
    dev = torch.device(device)
    try:
        a = torch.randn(n, n, dtype=torch.float32, device=dev)
        b = torch.randn(n, n, dtype=torch.float32, device=dev)
        a @ b
        sync(dev)
        best = float("inf")
        for _ in range(repeats):
            t = time.perf_counter()
            a @ b
            sync(dev)
            best = min(best, time.perf_counter() - t)
        return 2.0 * n**3 / best / 1e9
    finally:
        torch.set_num_threads(old)


def machine_info(args: argparse.Namespace, gflops: float, mm: int) -> dict[str, Any]:
    try:
        import tangentlab

        tl_version = tangentlab.__version__
    except ImportError:  # pragma: no cover
        tl_version = "not importable"
    dev = torch.device(args.device)
    device = "cpu" if dev.type == "cpu" else f"{args.device}: {torch.cuda.get_device_name(dev)}"
    return {
        "cpu": cpu_model(), "device": device, "logical_cpus": os.cpu_count(), "torch": torch.__version__,
        "threads": args.threads, "python": platform.python_version(), "platform": platform.platform(),
        "tangentlab": tl_version, "commit": git_commit(),
        "matmul_gflops": gflops, "matmul_size": mm, "loadavg_start": list(os.getloadavg()),
        "date": datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC"),
        "command": "python -m benchmarks.run " + " ".join(sys.argv[1:]),
    }


# ---- rows ---------------------------------------------------------------------------------------
def _child_env(threads: int) -> dict[str, str]:
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(threads))
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


class Launcher:
    """Runs rows in fresh processes: forked from a zygote (default) or new interpreters (``fresh``)."""

    def __init__(self, threads: int, fresh: bool = False):
        self.threads, self.fresh = threads, fresh
        self.zygote: subprocess.Popen | None = None

    def _start_zygote(self) -> subprocess.Popen:
        if self.zygote is None or self.zygote.poll() is not None:
            self.zygote = subprocess.Popen(
                [sys.executable, "-m", "benchmarks.zygote"], cwd=ROOT, env=_child_env(self.threads),
                stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, bufsize=1)
        return self.zygote

    def close(self) -> None:
        if self.zygote is not None and self.zygote.poll() is None:
            self.zygote.stdin.close()  # type: ignore[union-attr]
            try:
                self.zygote.wait(timeout=10)
            except subprocess.TimeoutExpired:  # pragma: no cover
                self.zygote.kill()
        self.zygote = None

    def run(self, spec: dict[str, Any], timeout: float) -> tuple[dict[str, Any], Path | None]:
        tmp = Path(tempfile.mkdtemp(prefix="tlbench-"))
        code = self._run_fresh(spec, tmp, timeout) if self.fresh else self._run_forked(spec, tmp, timeout)
        meta = tmp / "row.json"
        if isinstance(code, str):
            row = {"error": code}
        elif meta.exists():
            row = json.loads(meta.read_text())
        elif code < 0:
            row = {"error": f"killed by signal {-code} (out of memory?)"}
        else:
            log = tmp / "log.txt"
            tail = log.read_text().strip().splitlines()[-1:] if log.exists() else []
            row = {"error": (tail or [f"exit code {code}"])[0][:200]}
        if "error" in row or "cannot" in row:
            shutil.rmtree(tmp, ignore_errors=True)
            return row, None
        return row, tmp / "result.pt"

    def _run_fresh(self, spec: dict[str, Any], tmp: Path, timeout: float) -> int | str:
        cmd = [sys.executable, "-m", "benchmarks.worker", json.dumps(spec), str(tmp)]
        try:
            with open(tmp / "log.txt", "w") as log:
                proc = subprocess.run(cmd, cwd=ROOT, env=_child_env(self.threads), stdout=log,
                                      stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired:
            return f"timed out after {timeout:.0f} s"
        return proc.returncode

    def _run_forked(self, spec: dict[str, Any], tmp: Path, timeout: float) -> int | str:
        z = self._start_zygote()
        z.stdin.write(json.dumps({"spec": spec, "out": str(tmp)}) + "\n")  # type: ignore[union-attr]
        z.stdin.flush()  # type: ignore[union-attr]
        started = json.loads(z.stdout.readline())  # type: ignore[union-attr]
        deadline = time.monotonic() + timeout
        while True:
            ready, _, _ = select.select([z.stdout], [], [], max(0.0, deadline - time.monotonic()))
            if ready:
                line = z.stdout.readline()  # type: ignore[union-attr]
                if not line:
                    self.zygote = None
                    return "the launcher died"
                return int(json.loads(line)["exit"])
            os.kill(started["pid"], signal.SIGKILL)
            z.stdout.readline()  # type: ignore[union-attr]  # the zygote reports the kill
            return f"timed out after {timeout:.0f} s"


def run_inprocess(spec: dict[str, Any]) -> tuple[dict[str, Any], Path | None]:
    from .adapters.base import CannotComputeError
    from .worker import run_row

    old = torch.get_num_threads()
    try:
        row, res = run_row(spec)
    except CannotComputeError as e:
        return {"cannot": str(e)[:300]}, None
    except Exception as e:  # noqa: BLE001
        return {"error": f"{type(e).__name__}: {e}"[:200]}, None
    finally:
        torch.set_num_threads(old)
    row["peak_rss_bytes"] = row["delta_rss_bytes"] = None  # meaningless without isolation
    path = Path(tempfile.mkdtemp(prefix="tlbench-")) / "result.pt"
    torch.save(res, path)
    return row, path


def rel_err(a: Any, ref: Any) -> float:
    """``‖a − ref‖ / ‖ref‖`` (max over the entries of dict results)."""
    if isinstance(ref, dict):
        if not isinstance(a, dict) or set(ref) - set(a):
            return float("nan")
        return max(rel_err(a[k], ref[k]) for k in ref)
    if not isinstance(a, torch.Tensor) or a.shape != ref.shape:
        return float("nan")
    num = torch.linalg.vector_norm((a - ref).reshape(-1), dtype=torch.float64)
    den = torch.linalg.vector_norm(ref.reshape(-1), dtype=torch.float64)
    return float(num / den) if den > 0 else float(num)


def compare(rows: list[dict[str, Any]], paths: dict[int, Path]) -> None:
    """Fill ``rel_err`` and ``reference`` of the rows of one (case, quantity) group."""
    ok = [i for i, r in enumerate(rows) if r["status"] == "ok" and i in paths]
    if not ok:
        return
    ref_i = ok[0]
    ref = torch.load(paths[ref_i], weights_only=True)
    rows[ref_i]["reference"] = True
    rows[ref_i]["rel_err"] = 0.0
    for i in ok[1:]:
        rows[i]["rel_err"] = rel_err(torch.load(paths[i], weights_only=True), ref)
        rows[i]["reference_library"] = rows[ref_i]["library"]
    best = min(rows[i]["median_s"] for i in ok)
    for i in ok:
        rows[i]["x_fastest"] = rows[i]["median_s"] / best


def run_suite(args: argparse.Namespace) -> dict[str, Any]:
    mm = args.matmul_size or (1024 if args.quick else 4096)
    gflops = matmul_gflops(mm, args.threads, device=args.device)
    machine = machine_info(args, gflops, mm)
    adapters = [cls() for cls in ADAPTERS]
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"machine": machine, "settings": {
        "quick": args.quick, "repeats": args.repeats, "threads": args.threads, "slow_s": args.slow,
        "isolation": "in-process" if args.in_process else
        "one fresh process per row" + ("" if args.fresh else " (forked from a pre-imported launcher)"),
        "dtype": "float32", "device": args.device},
        "libraries": {a.name: {"available": a.available(), "version": a.version() if a.available() else None,
                               "description": a.description} for a in adapters},
        "workloads": []}
    print(f"float32 matmul {mm}³ on {args.device}: {gflops:.1f} GFLOP/s ({args.threads} threads)", file=sys.stderr)
    selected = [w for w in WORKLOADS.values() if not args.only or w.id in args.only]
    launcher = Launcher(args.threads, fresh=args.fresh)
    try:
        _run_workloads(args, selected, adapters, launcher, report, gflops, out)
    finally:
        launcher.close()
    report["machine"]["loadavg_end"] = list(os.getloadavg())
    _write(report, out)
    return report


def _run_workloads(args, selected, adapters, launcher, report, gflops, out) -> None:
    for wl in selected:
        for params in wl.case_list(args.quick):
            case = wl.build(params)
            for q in wl.quantities:
                work = wl.work(case, q)
                group: dict[str, Any] = {
                    "id": wl.id, "title": wl.title, "case": params, "case_label": case_label(params),
                    "quantity": q, "n_params": case.n_params, "lower_bound_flops": work,
                    "lower_bound_s": work / (gflops * 1e9), "lower_bound_note": wl.work_note,
                    "other_flops": wl.extra_work(case), "rows": []}
                paths: dict[int, Path] = {}
                for a in adapters:
                    st = a.status(*wl.row_task(q))
                    if st is None:
                        continue
                    row: dict[str, Any] = {"library": a.name, "status": st}
                    if st == "run":
                        spec = {"workload": wl.id, "case": params, "quantity": q, "adapter": a.name,
                                "repeats": args.repeats, "threads": args.threads, "slow_s": args.slow,
                                "device": args.device}
                        if args.in_process:
                            res, path = run_inprocess(spec)
                        else:
                            res, path = launcher.run(spec, args.timeout)
                        if "error" in res:
                            row.update(status="error", error=res["error"])
                        elif "cannot" in res:
                            row.update(status="cannot compute", reason=res["cannot"])
                        else:
                            row.update(res, status="ok")
                            paths[len(group["rows"])] = path
                        label = f"{wl.id} [{case_label(params)}]{' ' + q if q else ''} {a.name}"
                        msg = (f"{row['median_s']:.3f} s" if row["status"] == "ok" else
                               row.get("error") or "cannot compute: " + row["reason"])
                        print(f"  {label}: {msg}", file=sys.stderr, flush=True)
                    group["rows"].append(row)
                compare(group["rows"], paths)
                for p in paths.values():
                    _cleanup(p)
                for r in group["rows"]:
                    if r["status"] == "ok":
                        r["x_lower_bound"] = r["median_s"] / group["lower_bound_s"]
                report["workloads"].append(group)
            del case
        _write(report, out)


def _cleanup(path: Path) -> None:
    shutil.rmtree(path.parent, ignore_errors=True)


def _write(report: dict[str, Any], out: Path) -> None:
    # atomic (temporary file + os.replace): a run killed mid-write keeps the previous files whole
    atomic_write_text(out / "results.json", json.dumps(report, indent=1, default=float) + "\n")
    write_markdown(report, out / "RESULTS.md")


def _terminate(signum, frame):  # SIGTERM: unwind so that subprocess.run kills the running row
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        out = Path(args.out)
        write_markdown(json.loads((out / "results.json").read_text()), out / "RESULTS.md")
        return 0
    signal.signal(signal.SIGTERM, _terminate)
    t = time.perf_counter()
    report = run_suite(args)
    errors = [(g["id"], r["library"], r.get("error")) for g in report["workloads"] for r in g["rows"]
              if r["status"] == "error"]
    print(f"done in {time.perf_counter() - t:.1f} s; wrote {Path(args.out) / 'RESULTS.md'}", file=sys.stderr)
    for e in errors:
        print(f"  error: {e}", file=sys.stderr)
    if args.optim:
        from . import optim_overhead

        optim_overhead.main([*(["--quick"] if args.quick else []), "--threads", str(args.threads), "--out", args.out])
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
