"""Infinite-width NTK of a 3-layer CNN on 256 digits images, next to the empirical NTK at width 512.

``python -m benchmarks.limits [--n 256] [--width 512] [--threads 2] [--out benchmarks]`` times
(wall clock, one call each after the set-up) and measures the peak resident memory growth of

* ``limits.ntk`` of the CNN with a global-average-pooling head (full spatial covariance,
  ``(8·8)²`` entries per pair of images), standard parameterization;
* the same with a Flatten head (diagonal form, ``8·8`` entries per pair);
* ``tl.ntk`` of the width-``W`` network (GAP head) — of its first output only with
  ``--emp-outputs 1`` (the default: the empirical kernel of all 10 outputs costs about
  ``N²P²·C²·W`` flops per convolution, hours here), whose distance to the limit
  (:func:`tangentlab.analysis.limits.distance_to_limit`, the limit's ``[:, :, :1, :1]``
  block) is reported too;

all in float32 on scikit-learn's 8×8 digits scaled to [0, 1], and writes ``OUT/LIMITS.md``
(rewritten after each row).
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch
from torch import nn

import tangentlab as tl
from benchmarks.worker import peak_bytes, reset_peak
from tangentlab import limits
from tangentlab.analysis.limits import distance_to_limit


def cnn(width: int, head: str) -> nn.Module:
    """Three 3×3 convolutions (padding 1) with ReLU, then GAP or Flatten, then Linear(·, 10)."""
    layers: list[nn.Module] = []
    c = 1
    for _ in range(3):
        layers += [nn.Conv2d(c, width, 3, padding=1), nn.ReLU()]
        c = width
    if head == "gap":
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(width, 10)]
    else:
        layers += [nn.Flatten(), nn.Linear(width * 64, 10)]
    return nn.Sequential(*layers)


def measure(fn) -> tuple[object, float, int]:
    """``(result, seconds, peak RSS growth in bytes)`` of one call."""
    base, ok = reset_peak()
    t = time.perf_counter()
    out = fn()
    dt = time.perf_counter() - t
    return out, dt, max(peak_bytes(ok) - base, 0)


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--n", type=int, default=256)
    ap.add_argument("--width", type=int, default=512)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--emp-outputs", type=int, default=1, choices=(1, 10))
    ap.add_argument("--out", default=str(Path(__file__).resolve().parent))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    from sklearn.datasets import load_digits

    x = torch.as_tensor(load_digits().data[: args.n], dtype=torch.float32).reshape(-1, 1, 8, 8) / 16
    torch.manual_seed(0)
    gap, flat = cnn(args.width, "gap"), cnn(args.width, "flat")
    rows: list[tuple[str, float, int, tuple[int, ...]]] = []
    head = [
        "# Infinite-width NTK vs empirical NTK",
        "",
        f"`python -m benchmarks.limits` — {args.n} digits images (8×8, scaled to [0, 1]), 3 conv layers "
        f"(3×3, padding 1, ReLU), 10 outputs, float32, {args.threads} threads, {platform.machine()}, "
        f"torch {torch.__version__}. One call each after the set-up; memory is the peak resident-set growth "
        "over the set-up; load average at the start "
        f"{os.getloadavg()[0]:.1f} (timings on a shared machine are only indicative).",
        "",
        "| kernel | time (s) | peak memory (MiB) | shape |",
        "|---|---:|---:|---|",
    ]
    out = Path(args.out) / "LIMITS.md"

    def write(tail: list[str]) -> None:
        lines = head + [f"| {name} | {t:.2f} | {m / 2**20:.0f} | {shape} |" for name, t, m, shape in rows] + tail
        out.write_text("\n".join(lines) + "\n")
        print(lines[-1] if tail else lines[-1], flush=True)

    lim, t, m = measure(lambda: limits.ntk(gap, x, parameterization="standard"))
    rows.append(("limit NTK, GAP head (full spatial covariance)", t, m, tuple(lim.shape)))
    write([])
    lim_flat, t, m = measure(lambda: limits.ntk(flat, x, parameterization="standard"))
    rows.append(("limit NTK, Flatten head (diagonal form)", t, m, tuple(lim_flat.shape)))
    write([])
    c = args.emp_outputs
    output = "raw" if c == 10 else (lambda model, batch: model(batch[0])[:, :1])
    emp, t, m = measure(lambda: tl.ntk(gap, x, output=output))
    rows.append((f"empirical NTK (`tl.ntk`), width {args.width}, GAP head, {c} output(s)", t, m, tuple(emp.shape)))
    dist = distance_to_limit(emp, lim.data[:, :, :c, :c])
    write(["", f"Distance of the width-{args.width} empirical NTK to the limit (standard parameterization, "
           f"{c} output(s)): relative Frobenius {dist['rel_frobenius']:.3f}, CKA {dist['cka']:.4f}."])
    print(out.read_text())


if __name__ == "__main__":
    main()
