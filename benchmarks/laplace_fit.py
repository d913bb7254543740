"""``Laplace.fit`` time with tangentlab's backend against laplace-torch's own.

``python -m benchmarks.laplace_fit [--repeats 3] [--n 300] [--out DIR]`` (needs the
``[laplace]`` extra, see the README's laplace-torch section). For each model (an MLP
64-64-10 with tanh and a small CNN on 1×8×8 inputs, float32, ``n`` examples in batches of
100, 10 classes), each ``subset_of_weights`` ("all", "last_layer") and each
``hessian_structure`` ("diag", "kron", "full"), ``laplace.Laplace(...).fit(loader)`` is timed
with ``TangentlabGGN``, ``CurvlinopsGGN`` and ``BackPackGGN`` (GGN of the softmax
likelihood: the same matrix for all three). The backends of one row run interleaved,
``repeats`` times each (after one untimed warm-up fit per backend and model), each fit
on a fresh copy of the model; the median seconds are reported, and
the ratio of each peer's median to tangentlab's. Writes ``LAPLACE.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

HERE = Path(__file__).resolve().parent


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 64), nn.Tanh(), nn.Linear(64, 10))


def _cnn() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 8, 3), nn.ReLU(),
                         nn.Flatten(), nn.Linear(8 * 6 * 6, 10))


MODELS = {"MLP 64-64-64-10": (_mlp, (64,)), "CNN 1x8x8": (_cnn, (1, 8, 8))}


def _fit_seconds(laplace_cls, make, backend, subset: str, structure: str, loader) -> float:
    """One fit on a fresh copy of the model (BackPACK extends the model it is given in place)."""
    model = make()
    t0 = time.perf_counter()
    la = laplace_cls(model, "classification", subset_of_weights=subset, hessian_structure=structure,
                     backend=backend)
    la.fit(loader)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--n", type=int, default=300)
    ap.add_argument("--out", type=Path, default=HERE)
    args = ap.parse_args(argv)

    from laplace import Laplace
    from laplace.curvature import BackPackGGN, CurvlinopsGGN

    from tangentlab.integrations.laplace import TangentlabGGN

    backends = {"tangentlab": TangentlabGGN, "curvlinops": CurvlinopsGGN, "BackPACK": BackPackGGN}
    torch.set_grad_enabled(True)
    rows = []
    for name, (make, shape) in MODELS.items():
        g = torch.Generator().manual_seed(1)
        x = torch.randn(args.n, *shape, generator=g)
        y = torch.randint(0, 10, (args.n,), generator=g)
        loader = DataLoader(TensorDataset(x, y), batch_size=100)
        p = sum(q.numel() for q in make().parameters())
        for cls in backends.values():  # warm-up: one untimed fit per backend and model
            _fit_seconds(Laplace, make, cls, "last_layer", "diag", loader)
        for subset in ("all", "last_layer"):
            for structure in ("diag", "kron", "full"):
                times: dict[str, list[float]] = {b: [] for b in backends}
                for _ in range(args.repeats):
                    for b, cls in backends.items():
                        times[b].append(_fit_seconds(Laplace, make, cls, subset, structure, loader))
                med = {b: statistics.median(t) for b, t in times.items()}
                rows.append((name, p, subset, structure, med))
                print(name, subset, structure, {b: f"{t:.4f}" for b, t in med.items()}, flush=True)

    lines = [
        "# `Laplace.fit` with each curvature backend",
        "",
        f"`python -m benchmarks.laplace_fit --repeats {args.repeats} --n {args.n}`: median seconds of "
        f"`Laplace(model, \"classification\", ...).fit(loader)` over {args.repeats} interleaved runs "
        f"({args.n} examples, batches of 100, float32, {torch.get_num_threads()} threads, "
        f"torch {torch.__version__}, load average {os.getloadavg()[0]:.1f} at the end of the run); in "
        "parentheses each peer's time over tangentlab's. laplace-torch's curvlinops backend has no "
        "diagonal of its own: its `diag` is laplace-torch's generic one from torch.func Jacobians.",
        "",
        "| model (P) | weights | Hessian | tangentlab s | curvlinops s | BackPACK s |",
        "|---|---|---|---:|---:|---:|",
    ]
    for name, p, subset, structure, med in rows:
        t = med["tangentlab"]
        peers = " | ".join(f"{med[b]:.4f} ({med[b] / t:.2f}×)" for b in ("curvlinops", "BackPACK"))
        lines.append(f"| {name} ({p}) | {subset} | {structure} | {t:.4f} | {peers} |")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "LAPLACE.md").write_text("\n".join(lines) + "\n")
    print(f"wrote {args.out / 'LAPLACE.md'}")


if __name__ == "__main__":
    main()
