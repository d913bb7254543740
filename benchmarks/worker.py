"""Runs one benchmark row (adapter × workload × case × quantity), normally in its own process.

``python -m benchmarks.worker SPEC_JSON OUT_DIR`` builds the case, does the
adapter's untimed set-up, one warm-up call, then ``repeats`` timed calls (only
one when the warm-up took longer than ``slow_s``), and writes ``OUT_DIR/row.json``
(times, memory) and ``OUT_DIR/result.pt`` (the last result).

``spec["device"]`` (default ``cpu``): the case is built on the CPU and moved there;
on CUDA each call's time ends with a synchronize and the peak device memory
(``torch.cuda.max_memory_allocated``, reset after the set-up) is recorded too.

Memory: after the set-up (imports, model, data, the adapter's untimed work), the
kernel's resident-set high-water mark is reset (``/proc/self/clear_refs``) and
the current RSS taken as the baseline; ``peak_rss`` is the high-water mark at
the end (``VmHWM``) and ``delta_rss`` its growth over the baseline, i.e. the
extra memory the computation needed at its peak. Only one result is alive at a
time. Where the mark cannot be reset, ``ru_maxrss`` is used (``hwm_reset`` false;
the delta may then be hidden by a larger transient of the set-up).
"""

from __future__ import annotations

import gc
import json
import resource
import statistics
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import torch


def max_rss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # KiB on Linux


def _status_kib(key: str) -> int | None:
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def reset_peak() -> tuple[int, bool]:
    """Reset the RSS high-water mark; return the baseline RSS in bytes and whether it worked."""
    gc.collect()
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        rss = _status_kib("VmRSS")
        if rss is not None:
            return rss * 1024, True
    except OSError:
        pass
    return max_rss_bytes(), False


def peak_bytes(reset: bool) -> int:
    hwm = _status_kib("VmHWM") if reset else None
    return hwm * 1024 if hwm is not None else max_rss_bytes()


def sync(device: torch.device) -> None:
    """Wait for ``device``'s queued kernels (CUDA runs them asynchronously): times end there."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _to_cpu(res: Any) -> Any:
    if isinstance(res, torch.Tensor):
        return res.detach().cpu()
    if isinstance(res, dict):
        return {k: _to_cpu(v) for k, v in res.items()}
    raise TypeError(f"results must be tensors or dicts of tensors, got {type(res).__name__}")


def run_row(spec: dict[str, Any]) -> tuple[dict[str, Any], Any]:
    from .adapters import by_name
    from .workloads import WORKLOADS

    torch.set_num_threads(spec["threads"])
    torch.set_default_dtype(torch.float32)
    wl = WORKLOADS[spec["workload"]]
    device = torch.device(spec.get("device", "cpu"))
    case = wl.build(spec["case"]).to(device)  # built on the CPU from the seed: same values everywhere
    adapter = by_name(spec["adapter"])
    task, quantity = wl.row_task(spec["quantity"])
    fn = getattr(adapter, task)(case, quantity)
    cuda = device.type == "cuda"
    sync(device)
    rss0, reset = reset_peak()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
        dev0 = torch.cuda.memory_allocated(device)
    t = time.perf_counter()
    res = fn()
    sync(device)
    warm = time.perf_counter() - t
    repeats = spec["repeats"] if warm <= spec["slow_s"] else 1
    times = []
    for _ in range(repeats):
        del res
        t = time.perf_counter()
        res = fn()
        sync(device)
        times.append(time.perf_counter() - t)
    peak = peak_bytes(reset)
    row = {"hwm_reset": reset, "warmup_s": warm, "times_s": times, "median_s": statistics.median(times),
           "min_s": min(times),
           "peak_rss_bytes": peak, "delta_rss_bytes": peak - rss0, "version": adapter.version()}
    if cuda:
        row["peak_device_bytes"] = torch.cuda.max_memory_allocated(device)
        row["delta_device_bytes"] = row["peak_device_bytes"] - dev0
    return row, _to_cpu(res)


def main(argv: list[str]) -> int:
    spec = json.loads(argv[0])
    out = Path(argv[1])
    out.mkdir(parents=True, exist_ok=True)
    from .adapters.base import CannotComputeError

    try:
        row, res = run_row(spec)
    except CannotComputeError as e:  # the library's refusal, with its reason
        (out / "row.json").write_text(json.dumps({"cannot": str(e)[:300]}))
        return 0
    except Exception as e:  # reported in the table, not fatal to the suite
        (out / "row.json").write_text(json.dumps({
            "error": f"{type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}",
            "traceback": traceback.format_exc()}))
        return 1
    torch.save(res, out / "result.pt")
    (out / "row.json").write_text(json.dumps(row))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
