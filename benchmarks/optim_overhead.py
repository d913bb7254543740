"""Optimizer overhead: step time of KFAC / EKFAC / EKFAC-ra against SGD on the ``ekfac`` study's models.

``python -m benchmarks.optim_overhead [--quick] [--steps 300] [--period 100] [--out DIR]`` (also run by
``python -m benchmarks.run --optim``). For each model (the study's digits auto-encoder
64-32-16-8-16-32-64 and its small CNN without BatchNorm, float32, batch 100) and each
optimizer, a full training step — forward, backward, ``opt.step()`` — is timed over
``steps`` steps after a warm-up of ``period`` steps (so eigendecompositions are amortized
at the steady rate of one per ``period``: recompute period 100 by default). Reported: the
median and mean seconds per step and the ratio of the mean to SGD's (target: EKFAC
≤ 3× SGD). Writes ``OPTIM_RESULTS.md`` and ``optim_results.json`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

HERE = Path(__file__).resolve().parent
TARGET = 3.0


def _models() -> dict[str, tuple[Any, Any, Any]]:
    from tangentlab.studies.ekfac_study import make_autoencoder
    from tangentlab.studies.models import make_cnn

    g = torch.Generator().manual_seed(0)
    x_ae = torch.rand(1000, 64, generator=g)
    x_img = torch.randn(1000, 1, 8, 8, generator=g)
    y = torch.randint(0, 10, (1000,), generator=g)

    def ae_loss(z, idx):
        return F.binary_cross_entropy_with_logits(z, x_ae[idx], reduction="none").sum(1).mean()

    def cnn_loss(z, idx):
        return F.cross_entropy(z, y[idx])

    return {
        "autoencoder 64-32-16-8-16-32-64": (lambda: make_autoencoder(64, (32, 16, 8, 16, 32), torch.float32),
                                            x_ae, ae_loss),
        "CNN conv(1→8)-conv(8→8)-linear": (lambda: make_cnn(1, 8, 10, 8, torch.float32), x_img, cnn_loss),
    }


def _optimizers(period: int) -> dict[str, Any]:
    from tangentlab.optim import EKFAC, KFAC

    return {
        "SGD": lambda m: torch.optim.SGD(m.parameters(), lr=1e-3, momentum=0.9),
        "KFAC": lambda m: KFAC(m, 1e-3, 0.1, period=period),
        "EKFAC": lambda m: EKFAC(m, 1e-3, 0.1, period=period),
        "EKFAC-ra": lambda m: EKFAC(m, 1e-3, 0.1, period=period, running=True),
        "EKFAC (SUA convs)": lambda m: EKFAC(m, 1e-3, 0.1, period=period, conv="sua"),
    }


def measure(steps: int, period: int, batch: int = 100) -> list[dict[str, Any]]:
    rows = []
    for mname, (build, x, loss_fn) in _models().items():
        base = None
        for oname, make in _optimizers(period).items():
            if "SUA" in oname and "CNN" not in mname:
                continue
            torch.manual_seed(0)
            model = build()
            opt = make(model)
            gen = torch.Generator().manual_seed(1)
            times = []
            for i in range(period + steps):
                idx = torch.randint(0, x.shape[0], (batch,), generator=gen)
                t = time.perf_counter()
                opt.zero_grad(set_to_none=True)
                loss_fn(model(x[idx]), idx).backward()
                opt.step()
                dt = time.perf_counter() - t
                if i >= period:
                    times.append(dt)
            mean = statistics.fmean(times)
            if oname == "SGD":
                base = mean
            rows.append({"model": mname, "optimizer": oname, "median_s": statistics.median(times), "mean_s": mean,
                         "ratio_to_sgd": mean / base if base else float("nan")})
    return rows


def write(rows: list[dict[str, Any]], out: Path, steps: int, period: int) -> None:
    info = {"threads": torch.get_num_threads(), "loadavg": list(os.getloadavg()), "steps": steps, "period": period,
            "torch": torch.__version__}
    (out / "optim_results.json").write_text(json.dumps({"machine": info, "rows": rows}, indent=1) + "\n")
    lines = ["# Optimizer overhead (KFAC / EKFAC vs SGD)", "",
             f"Full training step (forward + backward + step), float32, batch 100, recompute period {period}, "
             f"{steps} timed steps after a warm-up of {period}; {info['threads']} thread(s), load average "
             f"{info['loadavg'][0]:.1f} at the end (timings on a shared machine are inflated).", "",
             "| model | optimizer | median s/step | mean s/step | mean / SGD |", "|---|---|---:|---:|---:|"]
    for r in rows:
        flag = " (over target)" if r["optimizer"].startswith("EKFAC") and r["ratio_to_sgd"] > TARGET else ""
        lines.append(f"| {r['model']} | {r['optimizer']} | {r['median_s']:.2e} | {r['mean_s']:.2e} | "
                     f"{r['ratio_to_sgd']:.2f}{flag} |")
    lines += ["", f"Target: an EKFAC step ≤ {TARGET:g}× an SGD step at recompute period 100."]
    (out / "OPTIM_RESULTS.md").write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.optim_overhead", description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="30 timed steps, period 10")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--period", type=int, default=100)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1: fastest for these small models)")
    ap.add_argument("--out", default=str(HERE))
    args = ap.parse_args(argv)
    steps, period = (30, 10) if args.quick else (args.steps, args.period)
    torch.set_num_threads(args.threads)
    rows = measure(steps, period)
    write(rows, Path(args.out), steps, period)
    for r in rows:
        print(f"{r['model']:<34} {r['optimizer']:<18} {r['mean_s'] * 1e3:8.2f} ms  x{r['ratio_to_sgd']:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
