"""``tangentlab demo``: the library's end-to-end "main job" on scikit-learn's digits.

What it does (seeded, deterministic, CPU):

1. Loads the 8×8 digits shipped with scikit-learn (1797 examples, 64 features,
   10 classes; no download), splits them 75/25 (stratified), standardizes
   with the training mean and standard deviation.
2. Trains an MLP ``64 → 32 → 32 → 10`` with ``tanh`` (``P = 3466`` parameters) in
   float32 with Adam on the cross-entropy, keeping a copy of the model at
   initialization.
3. Converts both models to float64 and, on a probe set of ``N`` training
   examples, computes the exact classification Fisher

       F = (1/N) Σ_n Σ_{k<C} φ_k(x_n) φ_k(x_n)ᵀ,   φ_k = ∂s_k/∂θ,   s = Lᵀz,
       L Lᵀ = diag(p) − p pᵀ  (so  F = (1/N) Σ_n J_nᵀ (diag p_n − p_n p_nᵀ) J_n),

   i.e. a *mean* over examples and a *sum* over the ``C − 1 = 9`` pseudo-outputs,
   in the representations dense, diag, blockdiag, lowrank and implicit, and for
   each reports build time, trace, Frobenius norm, ``uᵀFu`` on a fixed random unit
   vector ``u``, ``‖F̂u − F_dense u‖/‖F_dense u‖`` and the bytes of the tensors the
   representation stores (the implicit one stores none: it references the model
   and the data).
4. Consistency checks (PASS/FAIL): the verbs that must agree across representations
   do (trace, diagonal, the exact products), and the FIM/NTK duality: with
   ``Φ`` the ``(N·(C−1)) × P`` matrix of tangent features, ``F = ΦᵀΦ/N`` and the
   Fisher-output NTK ``K = ΦΦᵀ`` (``tangentlab.ntk(model, x, output="exact")``,
   unnormalized) have the same non-zero spectrum up to the factor ``N``:
   ``eig(F) = eig(K)/N`` for the top ``min(P, N(C−1))`` eigenvalues, the others zero.
5. The raw-output NTK ``K[n, m, c, d] = ⟨∂f_c(x_n)/∂θ, ∂f_d(x_m)/∂θ⟩`` of the
   probe set, at initialization and after training: top eigenvalues, effective
   rank ``exp(H(λ/Σλ))`` and two centered kernel alignments with the labels (see
   :func:`centered_alignment`): *flat*, the ``(N·C) × (N·C)`` kernel against
   ``y yᵀ`` with ``y = vec(onehot)``, and *traced*, the ``N × N`` kernel
   ``Σ_c K[:, :, c, c]`` against ``Y Yᵀ``. Training raises the traced alignment
   (≈ 0.54 → 0.69 with the defaults); the flat
   one stays near 0.04 and moves either way. Training grows the cross-output blocks
   ``c ≠ d`` of the kernel (from ≈ 16% to ≈ 38% of ``‖K‖_F²`` here), which spreads
   the kernel's mass away from the one direction ``y``.
6. Test accuracy before and after training.

A summary table goes to stdout; ``summary.json`` and ``representations.csv``
(tidy: one row per representation × metric) are written atomically to the output
directory. All numbers except wall-clock timings are reproducible for a given seed.
"""

from __future__ import annotations

import argparse
import copy
import csv
import io
import json
import math
import numbers
import os
import platform
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import nn

from . import __version__
from .analysis.kernels import cka as _cka
from .analysis.kernels import effective_rank as _effective_rank
from .api import fim, ntk
from .errors import InvalidInputError
from .memory import tensor_nbytes
from .pmat import PMat
from .studies.framework.data import Split, load_split  # noqa: F401 - Split is part of the demo's API
from .studies.framework.models import make_mlp as _make_mlp
from .studies.framework.store import atomic_write_text
from .studies.framework.threads import torch_threads
from .training import accuracy, train_epochs
from .vectors import PVector

#: Representations compared, in display order (the first is the reference).
REPRESENTATIONS: tuple[str, ...] = ("dense", "diag", "blockdiag", "lowrank", "implicit")
#: Tidy metric names, in the order of ``representations.csv``.
METRICS: tuple[str, ...] = ("build_s", "verbs_s", "trace", "fro_norm", "vTMv", "mv_rel_err",
                            "memory_bytes")
HIDDEN: tuple[int, ...] = (32, 32)
DEFAULT_EPOCHS = 12
DEFAULT_N_PROBE = 128
QUICK_EPOCHS = 4
QUICK_N_PROBE = 32
BATCH_SIZE = 32
LEARNING_RATE = 3e-3

#: Relative tolerance of the float64 identities (they hold to ~1e-14 in practice).
RTOL = 1e-9
N_TOP = 5
#: torch intra-op threads while the demo runs (see :func:`run_demo`).
DEFAULT_THREADS = 1


# ---------------------------------------------------------------------------------------------
# data and model
# ---------------------------------------------------------------------------------------------
def make_mlp(n_in: int = 64, hidden: tuple[int, ...] = HIDDEN, n_out: int = 10) -> nn.Sequential:
    """``Linear → tanh → … → Linear`` in float32 (PyTorch's default initialization)."""
    return _make_mlp(n_in, hidden, n_out, "tanh", torch.float32)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int, seed: int,
          progress: bool | None = None) -> list[float]:
    """Adam on the mean cross-entropy, minibatches of ``BATCH_SIZE`` reshuffled each epoch
    by a generator seeded with ``seed``. Returns the mean training loss of each epoch."""
    opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    return train_epochs(model, x, y, opt, epochs=epochs, batch_size=BATCH_SIZE, seed=seed, progress=progress)


# ---------------------------------------------------------------------------------------------
# spectra and alignment
# ---------------------------------------------------------------------------------------------
def effective_rank(eigenvalues: torch.Tensor) -> float:
    """``exp(H(p))`` with ``p = λ⁺/Σλ⁺`` (negative round-off clipped to 0) and
    ``H(p) = −Σ p log p`` (``0 log 0 = 0``): between 1 and the number of eigenvalues."""
    return _effective_rank(eigenvalues)


def centered_alignment(k: torch.Tensor, l: torch.Tensor) -> float:
    """Centered kernel alignment ``⟨HKH, HLH⟩_F / (‖HKH‖_F ‖HLH‖_F)`` of two ``M × M``
    kernels with the single centering ``H = I − 11ᵀ/M`` (the mean over all ``M`` rows is
    removed). In ``[−1, 1]``; 1 when ``HKH ∝ HLH``. Computed by
    :func:`tangentlab.analysis.kernels.cka` with ``centering="full"``.

    The demo applies it twice to the NTK ``K[n, m, c, d]`` of ``N`` probe examples with
    one-hot labels ``Y`` (``N × C``):

    * *flat*: the ``(N·C) × (N·C)`` matrix (rows ``n·C + c``) against ``L = y yᵀ`` with
      ``y = vec(Y)``, ``y[n·C + c] = 1[c = label_n]``, and the global ``H = I − 11ᵀ/(N·C)``:
      every (example, output) pair is one sample, centered together (not per output,
      not per example);
    * *traced*: the ``N × N`` kernel ``K̄[n, m] = Σ_c K[n, m, c, c] = ⟨J_n, J_m⟩_F`` (the sum
      of the per-output kernels) against ``L = Y Yᵀ`` (``1[label_n = label_m]``), with
      ``H = I − 11ᵀ/N``.
    """
    return _cka(k, l.to(k.dtype), centering="full", n_outputs=1)


def ntk_stats(model: nn.Module, x: torch.Tensor, y: torch.Tensor, n_classes: int,
              progress: bool | None) -> dict[str, Any]:
    """Raw-output NTK ``K = ΦΦᵀ`` (unnormalized) of ``x``: trace, top eigenvalues and
    effective rank of the ``(N·C) × (N·C)`` matrix, and its label alignments
    ``cka_flat`` and ``cka_traced`` (see :func:`centered_alignment`)."""
    k = ntk(model, x, progress=progress)
    km = k.as_matrix()
    lam = torch.linalg.eigvalsh(km).flip(0)
    onehot = torch.nn.functional.one_hot(y, n_classes).to(km.dtype)  # (N, C)
    yv = onehot.reshape(-1)  # row n·C + c, as in as_matrix()
    return {
        "shape": list(k.shape),
        "trace": float(k.trace()),
        "top_eigenvalues": [float(v) for v in lam[:N_TOP]],
        "effective_rank": effective_rank(lam),
        "cka_flat": centered_alignment(km, torch.outer(yv, yv)),
        "cka_traced": centered_alignment(torch.einsum("nmcc->nm", k.data), onehot @ onehot.T),
    }


# ---------------------------------------------------------------------------------------------
# Fisher representations and checks
# ---------------------------------------------------------------------------------------------
@dataclass
class Check:
    """One consistency check: ``value ≤ tol`` passes."""

    name: str
    passed: bool
    value: float
    tol: float
    detail: str = ""

    def line(self) -> str:
        mark = "PASS" if self.passed else "FAIL"
        tail = f"  {self.detail}" if self.detail else ""
        return f"{mark}  {self.name:<56} {self.value:9.2e} (tol {self.tol:.0e}){tail}"


def _check(name: str, value: float, tol: float = RTOL, detail: str = "") -> Check:
    return Check(name, bool(math.isfinite(value) and value <= tol), float(value), tol, detail)


def stored_bytes(matrix: PMat) -> int:
    """Bytes of the tensors a representation owns (its attributes, tensors inside dicts
    and tuples included), not counting the model and data an implicit matrix references."""
    return sum(tensor_nbytes(v) for k, v in vars(matrix).items() if k not in ("engine", "examples"))


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    """``‖a − b‖ / ‖b‖`` (absolute when ``b = 0``)."""
    den = float(torch.linalg.vector_norm(b))
    num = float(torch.linalg.vector_norm(a - b))
    return num / den if den > 0 else num


def _timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    t0 = time.perf_counter()
    out = fn()
    return out, time.perf_counter() - t0


def fisher_study(model: nn.Module, x: torch.Tensor, seed: int,
                 progress: bool | None) -> tuple[dict[str, dict[str, float]], list[Check], dict[str, Any]]:
    """Exact Fisher of ``model`` (float64) on ``x`` in every representation.

    Returns per-representation metrics, the consistency checks and spectral facts.
    """
    n = x.shape[0]
    mats: dict[str, PMat] = {}
    rows: dict[str, dict[str, float]] = {}
    for rep in REPRESENTATIONS:
        def build(rep: str = rep) -> PMat:
            return fim(model, x, kind="exact", representation=rep, progress=progress)

        mats[rep], dt = _timed(build)
        rows[rep] = {"build_s": dt, "memory_bytes": float(stored_bytes(mats[rep]))}
    dense = mats["dense"]
    space = dense.space
    gen = torch.Generator().manual_seed(seed + 1)
    u0 = torch.randn(space.numel, generator=gen, dtype=torch.float64)
    u = PVector.from_flat(space, u0 / u0.norm())

    results: dict[str, dict[str, torch.Tensor]] = {}
    for rep, m in mats.items():
        def verbs(m: PMat = m) -> dict[str, torch.Tensor]:
            return {"trace": m.trace().detach(), "fro": m.norm("fro").detach(),
                    "vTMv": m.vTMv(u).detach(), "mv": m.mv(u).flat().detach(),
                    "diag": m.diag().flat().detach()}

        results[rep], dt = _timed(verbs)
        rows[rep].update(verbs_s=dt, trace=float(results[rep]["trace"]), fro_norm=float(results[rep]["fro"]),
                         vTMv=float(results[rep]["vTMv"]),
                         mv_rel_err=_rel(results[rep]["mv"], results["dense"]["mv"]))
    ref = results["dense"]
    others = [r for r in REPRESENTATIONS if r != "dense"]
    exact = ("lowrank", "implicit")  # the representations that hold the whole matrix

    def worst(name: str, key: str, reps: tuple[str, ...] | list[str]) -> Check:
        errs = {r: _rel(results[r][key], ref[key]) for r in reps}
        r = max(errs, key=lambda k: errs[k])
        return _check(name, errs[r], detail=f"(worst: {r})")

    checks = [
        worst("trace equal: dense/diag/blockdiag/lowrank/implicit", "trace", others),
        worst("diagonal equal: dense/diag/blockdiag/lowrank/implicit", "diag", others),
        _check("implicit mv == dense mv", _rel(results["implicit"]["mv"], ref["mv"])),
        _check("lowrank mv == dense mv", _rel(results["lowrank"]["mv"], ref["mv"])),
        worst("vTMv equal: dense/lowrank/implicit", "vTMv", exact),
        worst("Frobenius norm equal: dense/lowrank/implicit", "fro", exact),
    ]
    # blockdiag is exactly the layer-diagonal blocks of the dense matrix, and zero elsewhere
    fd = dense.to_dense()
    bd = mats["blockdiag"].to_dense().clone()
    sq_err = torch.zeros((), dtype=fd.dtype)
    sq_ref = torch.zeros((), dtype=fd.dtype)
    for lay in space.layers:
        f = fd[lay.slice, lay.slice]
        sq_err += (bd[lay.slice, lay.slice] - f).pow(2).sum()
        sq_ref += f.pow(2).sum()
        bd[lay.slice, lay.slice] = 0
    sq_err += bd.pow(2).sum()  # whatever blockdiag holds outside the layer blocks
    del bd
    checks.append(_check("blockdiag == layer blocks of dense", float((sq_err / sq_ref).sqrt())))

    # spectra: dense F vs lowrank eigh vs Fisher-output NTK / N
    lam_f = torch.linalg.eigvalsh(fd).flip(0)
    k_exact = ntk(model, x, output="exact", progress=progress)
    lam_k = torch.linalg.eigvalsh(k_exact.as_matrix()).flip(0) / n
    r = min(space.numel, lam_k.numel())
    scale = float(lam_f[0])
    dual_err = max(float((lam_f[:r] - lam_k[:r]).abs().max()),
                   float(lam_f[r:].abs().max()) if r < lam_f.numel() else 0.0) / scale
    checks.append(_check("FIM/NTK duality: eig(F) == eig(K_fisher)/N", dual_err,
                         detail=f"(top {r} of {space.numel}; the rest 0)"))
    lam_lr = mats["lowrank"].eigh()[0]
    checks.append(_check("lowrank eigh == dense eigenvalues",
                         float((lam_lr[:r] - lam_f[:r]).abs().max()) / scale))
    checks.append(_check("trace duality: tr F == tr K_fisher / N",
                         abs(float(k_exact.trace()) / n - float(ref["trace"])) / float(ref["trace"])))
    tol_rank = RTOL * scale
    spectrum = {
        "n_parameters": space.numel,
        "n_pseudo_outputs": int(k_exact.shape[2]),
        "fisher_top_eigenvalues": [float(v) for v in lam_f[:N_TOP]],
        "fisher_numerical_rank": int((lam_f > tol_rank).sum()),
        "fisher_max_rank": r,
    }
    return rows, checks, spectrum


# ---------------------------------------------------------------------------------------------
# output files
# ---------------------------------------------------------------------------------------------
def _finite(obj: Any) -> Any:
    """JSON-safe copy: non-finite floats become ``None``."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def representations_csv(rows: dict[str, dict[str, float]]) -> str:
    """Tidy CSV ``representation,metric,value`` (one row per representation × metric)."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["representation", "metric", "value"])
    for rep in REPRESENTATIONS:
        for metric in METRICS:
            v = rows[rep][metric]
            w.writerow([rep, metric, int(v) if metric == "memory_bytes" else repr(float(v))])
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# summary table
# ---------------------------------------------------------------------------------------------
def _size(n: float) -> str:
    from .errors import format_bytes

    return format_bytes(n) if n else "0 (matrix-free)"


def format_summary(s: dict[str, Any]) -> str:
    """The human-readable report printed by ``tangentlab demo``."""
    cfg, acc, sp = s["config"], s["accuracy"], s["fisher_spectrum"]
    out = [
        f"tangentlab demo — digits, MLP 64-{'-'.join(map(str, HIDDEN))}-10 (tanh), "
        f"P = {sp['n_parameters']}, seed {cfg['seed']}",
        f"trained {cfg['epochs']} epochs in {s['timings']['train_s']:.1f}s; final train loss "
        f"{s['train_loss'][-1] if s['train_loss'] else float('nan'):.4f}",
        f"test accuracy: {acc['test_init']:.3f} (init) -> {acc['test_trained']:.3f} (trained)",
        "",
        f"Exact Fisher on {cfg['n_probe']} training examples (float64; mean over examples, sum over "
        f"{sp['n_pseudo_outputs']} pseudo-outputs)",
        f"{'representation':<15}{'build':>8}{'verbs':>8}{'trace':>12}{'‖F‖_F':>12}{'uᵀFu':>12}"
        f"{'mv rel.err':>12}  memory",
    ]
    for rep in REPRESENTATIONS:
        r = s["representations"][rep]
        out.append(f"{rep:<15}{r['build_s']:>7.2f}s{r['verbs_s']:>7.2f}s{r['trace']:>12.5g}"
                   f"{r['fro_norm']:>12.5g}{r['vTMv']:>12.5g}{r['mv_rel_err']:>12.2e}  "
                   f"{_size(r['memory_bytes'])}")
    out.append(f"dense spectrum: top {', '.join(f'{v:.4g}' for v in sp['fisher_top_eigenvalues'])}; "
               f"numerical rank {sp['fisher_numerical_rank']} (at most {sp['fisher_max_rank']})")
    out += ["", "Consistency checks (relative errors, float64)"]
    out += [c["line"] for c in s["checks"]]
    ni, nt = s["ntk"]["init"], s["ntk"]["trained"]
    out += [
        "",
        f"Raw-output NTK K[n,m,c,d] = <df_c(x_n)/dθ, df_d(x_m)/dθ>, {ni['shape'][0]}·{ni['shape'][2]}"
        " rows (unnormalized)",
        f"{'':<10}{'trace':>12}{'eff. rank':>11}{'CKA flat':>10}{'CKA traced':>12}  top eigenvalues",
    ]
    for label, st in (("init", ni), ("trained", nt)):
        out.append(f"{label:<10}{st['trace']:>12.5g}{st['effective_rank']:>11.2f}{st['cka_flat']:>10.4f}"
                   f"{st['cka_traced']:>12.4f}  " + ", ".join(f"{v:.4g}" for v in st["top_eigenvalues"]))
    out += ["  CKA flat:   (N·C)×(N·C) kernel vs y yᵀ, y = vec(onehot), H = I − 11ᵀ/(N·C)",
            "  CKA traced: N×N kernel Σ_c K[:, :, c, c] vs Y Yᵀ, H = I − 11ᵀ/N"]
    for key, label in (("traced", "traced"), ("flat", "flat")):
        trend = "increased" if s["alignment_increased"][key] else "did NOT increase"
        out.append(f"label alignment ({label}) {trend} with training "
                   f"({ni['cka_' + key]:.4f} -> {nt['cka_' + key]:.4f})")
    n_fail = sum(not c["passed"] for c in s["checks"])
    files = s["files"]
    out += ["", f"{len(s['checks']) - n_fail}/{len(s['checks'])} checks passed; total "
            f"{s['timings']['total_s']:.1f}s; wrote {files['summary']} and {files['representations']}"]
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# the demo
# ---------------------------------------------------------------------------------------------
def _int_arg(name: str, value: Any, lo: int, hi: int | None = None) -> int:
    """``value`` as an int in ``[lo, hi]``, else :class:`InvalidInputError`."""
    ok = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not ok or value < lo or (hi is not None and value > hi):
        bounds = f"in [{lo}, {hi}]" if hi is not None else f">= {lo}"
        raise InvalidInputError(f"{name} must be an integer {bounds}, got {value!r}")
    return int(value)


def run_demo(out_dir: str | os.PathLike[str] = "results/demo", epochs: int = DEFAULT_EPOCHS, seed: int = 0,
             n_probe: int = DEFAULT_N_PROBE, progress: bool | None = None, *,
             stream: TextIO | None = None, threads: int | None = DEFAULT_THREADS) -> dict[str, Any]:
    """Run the demo (see the module docstring), print the summary to ``stream`` (default
    stdout; ``None`` at call time) and write ``summary.json`` and ``representations.csv``
    to ``out_dir``. Returns the summary dictionary (what ``summary.json`` holds).

    ``progress``: tqdm bars (on stderr) — ``None`` shows them on a terminal, ``True``
    always, ``False`` never. ``threads``: torch intra-op threads while the demo runs
    (``None``: torch's default). The default is 1: the demo's matrices are small, and on
    a shared machine threads that contend with other processes made the same run up to
    10× slower (training on 32×64 batches most of all). The global torch RNG state and
    thread count are restored on return.

    Raises :class:`~tangentlab.errors.InvalidInputError` for bad arguments.
    """
    t_start = time.perf_counter()
    epochs = _int_arg("epochs", epochs, 0)
    seed = _int_arg("seed", seed, 0, 2**32 - 1)
    if threads is not None:
        threads = _int_arg("threads", threads, 1)
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise InvalidInputError(f"output path {str(out)!r} exists and is not a directory")
    split = load_split(seed)
    n_train = split.x_train.shape[0]
    n_probe = _int_arg("n_probe", n_probe, 2, n_train)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise InvalidInputError(f"cannot create output directory {str(out)!r}: {e.strerror}") from None
    n_classes = int(split.y_train.max()) + 1

    with torch.random.fork_rng(devices=[]), torch_threads(threads):
        torch.manual_seed(seed)
        model = make_mlp(split.x_train.shape[1], HIDDEN, n_classes)
        model_init = copy.deepcopy(model).eval()
        acc_init = accuracy(model_init, split.x_test, split.y_test)
        history, t_train = _timed(lambda: train(model, split.x_train, split.y_train, epochs, seed, progress))
        acc_trained = accuracy(model, split.x_test, split.y_test)

        probe = torch.randperm(n_train, generator=torch.Generator().manual_seed(seed + 2))[:n_probe]
        x_probe = split.x_train[probe].double()
        y_probe = split.y_train[probe]
        model.double()
        model_init.double()

        (rows, checks, spectrum), t_fisher = _timed(lambda: fisher_study(model, x_probe, seed, progress))
        (ntk_init, ntk_trained), t_ntk = _timed(lambda: (
            ntk_stats(model_init, x_probe, y_probe, n_classes, progress),
            ntk_stats(model, x_probe, y_probe, n_classes, progress)))

    files = {"summary": str(out / "summary.json"), "representations": str(out / "representations.csv")}
    summary: dict[str, Any] = {
        "tangentlab_version": __version__,
        "config": {"dataset": "sklearn digits", "architecture": [split.x_train.shape[1], *HIDDEN, n_classes],
                   "activation": "tanh", "optimizer": "Adam", "learning_rate": LEARNING_RATE,
                   "batch_size": BATCH_SIZE, "epochs": epochs, "seed": seed, "n_probe": n_probe,
                   "n_train": n_train, "n_test": int(split.x_test.shape[0]), "fisher_kind": "exact",
                   "analysis_dtype": "float64", "rtol": RTOL,
                   "normalization": "F = (1/N) sum_n sum_k phi_k(x_n) phi_k(x_n)^T; K = Phi Phi^T",
                   "cka_flat": "(N*C)x(N*C) kernel (rows n*C+c) vs y y^T, y = vec(onehot), "
                               "centered with H = I - 11^T/(N*C)",
                   "cka_traced": "NxN kernel sum_c K[n,m,c,c] vs Y Y^T (Y one-hot NxC), "
                                 "centered with H = I - 11^T/N"},
        "environment": {"python": platform.python_version(), "torch": torch.__version__,
                        "threads": threads if threads is not None else torch.get_num_threads()},
        "accuracy": {"test_init": acc_init, "test_trained": acc_trained},
        "train_loss": history,
        "representations": rows,
        "fisher_spectrum": spectrum,
        "checks": [{**asdict(c), "line": c.line()} for c in checks],
        "all_checks_passed": all(c.passed for c in checks),
        "ntk": {"init": ntk_init, "trained": ntk_trained},
        "alignment_increased": {key: ntk_trained[f"cka_{key}"] > ntk_init[f"cka_{key}"]
                                for key in ("traced", "flat")},
        "timings": {"train_s": t_train, "fisher_s": t_fisher, "ntk_s": t_ntk,
                    "total_s": time.perf_counter() - t_start},
        "files": files,
    }
    atomic_write_text(out / "representations.csv", representations_csv(rows))
    summary["timings"]["total_s"] = time.perf_counter() - t_start
    atomic_write_text(out / "summary.json", json.dumps(_finite(summary), indent=2) + "\n")
    print(format_summary(summary), file=stream if stream is not None else sys.stdout, flush=True)
    return summary


# ---------------------------------------------------------------------------------------------
# command line
# ---------------------------------------------------------------------------------------------
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``tangentlab demo``."""
    parser.add_argument("--out", default="results/demo", metavar="DIR",
                        help="output directory for summary.json and representations.csv "
                             "(default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=None,
                        help=f"training epochs (default {DEFAULT_EPOCHS}; {QUICK_EPOCHS} with --quick)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--n-probe", type=int, default=None, metavar="N",
                        help=f"probe examples for the Fisher and NTK (default {DEFAULT_N_PROBE}; "
                             f"{QUICK_N_PROBE} with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="small run for tests and smoke checks (a few seconds)")
    parser.add_argument("--threads", type=int, default=DEFAULT_THREADS, metavar="N",
                        help="torch threads while the demo runs; 0 keeps torch's default "
                             "(default: %(default)s)")
    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                        help="show progress bars (default: only on a terminal)")


def command(args: argparse.Namespace) -> int:
    """Run ``tangentlab demo``; exit status 0 when every consistency check passed, else 1."""
    epochs = args.epochs if args.epochs is not None else (QUICK_EPOCHS if args.quick else DEFAULT_EPOCHS)
    n_probe = args.n_probe if args.n_probe is not None else (QUICK_N_PROBE if args.quick else DEFAULT_N_PROBE)
    summary = run_demo(args.out, epochs=epochs, seed=args.seed, n_probe=n_probe, progress=args.progress,
                       threads=None if args.threads == 0 else args.threads)
    return 0 if summary["all_checks_passed"] else 1
