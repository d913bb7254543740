"""Item 9 of the alignment study: spectral bias of the tangent kernel at initialization
(paper 000 App. B, thesis §B.1.5, Fig. B.2; spec E6.2 / S6.2).

A random ReLU MLP ``1 → bias_width × (bias_depth − 1) → 1`` (``bias_depth`` Linear layers,
PyTorch's default initialization, float64) on ``bias_points`` equally spaced points of ``[0, 1]``.
Its (uncentered) NTK ``K = J Jᵀ`` (``N × N``, :func:`tangentlab.ntk`) is eigendecomposed,
eigenvalues in nonincreasing order, ``j = 0, 1, ...`` as in the figure. For each eigenvector
``u_j``: the magnitudes ``|DFT(u_j)|`` at the frequencies ``0 … ⌊N/2⌋`` (rfft) and its dominant
frequency (argmax). Per seed: Spearman ``ρ(j, dominant frequency)`` over the first half of the
spectrum (``j < N/2``), ``λ_10/λ_1`` (1-based: the 10th largest over the largest) of the
uncentered kernel and, for reference, of the kernel with centered tangent features.

Tables: ``bias_modes`` (seed × index: eigenvalue, dominant frequency), ``bias_fourier`` (seed ×
index × frequency: magnitude), ``bias_vectors`` (seed × index ∈ {0, 5, 20} × point: value),
``bias_summary`` (seed: ρ, λ10/λ1 uncentered and centered). Config fields: ``appendix_seeds``,
``bias_width``, ``bias_depth``, ``bias_points``, ``seed``.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import numpy as np
import torch

from ...api import ntk
from ..framework.models import make_mlp
from ..framework.report import Claim, FigureSpec, TableSpec
from ..framework.store import RunStore
from .appendix_common import done_seeds, missing, numeric_rows, seed_claim, spearman

PART = "B.2 spectral bias"
MODES, FOURIER, VECTORS, SUMMARY = "bias_modes", "bias_fourier", "bias_vectors", "bias_summary"
SHOWN = (0, 5, 20)


def bias_kernel(width: int, depth: int, points: int, seed: int, centering: bool = False) -> np.ndarray:
    """The ``points × points`` NTK of the random MLP of seed ``seed`` on ``linspace(0, 1, points)``."""
    torch.manual_seed(seed)
    model = make_mlp(1, (width,) * (depth - 1), 1, "relu", dtype=torch.float64)
    x = torch.linspace(0, 1, points, dtype=torch.float64)[:, None]
    return ntk(model, x, centering=centering, progress=False).as_matrix().numpy()


def eig_desc(K: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Eigenvalues (nonincreasing) and eigenvectors (columns) of a symmetric ``K``."""
    lam, U = np.linalg.eigh((K + K.T) / 2)
    return lam[::-1], U[:, ::-1]


def fourier_magnitudes(U: np.ndarray) -> np.ndarray:
    """``|rfft|`` of each column of ``U``: shape ``(⌊N/2⌋ + 1, columns)``."""
    return np.abs(np.fft.rfft(U, axis=0))


def frequency_trend(U: np.ndarray) -> tuple[np.ndarray, float]:
    """The dominant frequency of every eigenvector and Spearman ρ(j, frequency) over ``j < N/2``."""
    freq = fourier_magnitudes(U).argmax(0)
    half = U.shape[0] // 2
    return freq, spearman(np.arange(half), freq[:half])


def ratio10(lam: np.ndarray) -> float:
    """``λ_10 / λ_1`` (1-based)."""
    return float(lam[9] / lam[0]) if lam.size >= 10 and lam[0] > 0 else math.nan


def run_spectral_bias(store: RunStore, cfg: Any, log: Callable[[str], None]) -> None:
    """Every seed of ``appendix_seeds`` not yet in ``bias_summary``."""
    modes = store.table(MODES, ["seed", "index", "eigenvalue", "frequency"], ["seed", "index"])
    fourier = store.table(FOURIER, ["seed", "index", "frequency", "magnitude"], ["seed", "index", "frequency"])
    vectors = store.table(VECTORS, ["seed", "index", "point", "value"], ["seed", "index", "point"])
    summary = store.table(SUMMARY, ["seed", "rho", "ratio10", "ratio10_centered"], ["seed"])
    done = done_seeds(store, SUMMARY)
    for s in range(int(cfg.appendix_seeds)):
        if s in done:
            continue
        seed = int(cfg.seed) * 1000 + 900 + s
        args = (int(cfg.bias_width), int(cfg.bias_depth), int(cfg.bias_points), seed)
        lam, U = eig_desc(bias_kernel(*args))
        lam_c, _ = eig_desc(bias_kernel(*args, centering=True))
        U = U * np.where(U[np.abs(U).argmax(0), np.arange(U.shape[1])] < 0, -1.0, 1.0)
        freq, rho = frequency_trend(U)
        mag = fourier_magnitudes(U)
        modes.append({"seed": s, "index": j, "eigenvalue": float(lam[j]), "frequency": int(freq[j])}
                     for j in range(lam.size))
        fourier.append({"seed": s, "index": j, "frequency": k, "magnitude": float(mag[k, j])}
                       for j in range(lam.size) for k in range(mag.shape[0]))
        vectors.append({"seed": s, "index": j, "point": i, "value": float(U[i, j])}
                       for j in SHOWN if j < U.shape[1] for i in range(U.shape[0]))
        summary.append([{"seed": s, "rho": rho, "ratio10": ratio10(lam), "ratio10_centered": ratio10(lam_c)}])
        log(f"alignment B.2: seed {s}: Spearman rho(j, frequency) {rho:.3f}, lambda10/lambda1 {ratio10(lam):.2e}")


def bias_claims(store: RunStore, cfg: Any) -> list[Claim]:
    rows = numeric_rows(store, SUMMARY)
    paper_f = ("\"eigenvectors with increasing index j (hence decreasing eigenvalues) correspond to modes with "
               "increasing Fourier frequency\" (random 6-layer 256-wide MLP, 50 points of [0, 1]; thesis Fig. B.2)")
    paper_d = "\"We note the fast decay (e.g λ10/λ1 ≈ 4%)\" (thesis Fig. B.2, right)"
    if not rows:
        return [missing("B.2: frequency increases with j", paper_f, PART),
                missing("B.2: fast eigenvalue decay", paper_d, PART)]
    n, half = int(cfg.bias_points), int(cfg.bias_points) // 2
    net = f"MLP 1-{cfg.bias_width}x{int(cfg.bias_depth) - 1}-1 at initialization on {n} points"
    out = [seed_claim("B.2: frequency increases with j", paper_f,
                      f"Spearman ρ between j and the dominant DFT frequency of eigenvector u_j over the first half of "
                      f"the spectrum (j < {half}) > 0.8 (the spec's S6.2 criterion for 'increasing'), on the mean "
                      f"over seeds (whole t-interval); {net}", "ρ(j, frequency)",
                      [r["rho"] for r in rows], ">", 0.8, PART)]
    out.append(seed_claim("B.2: fast eigenvalue decay", paper_d,
                          "λ10/λ1 (1-based) of the uncentered NTK ≤ 0.08, i.e. a decay at least as fast as the "
                          "paper's example 4% up to a factor 2 (the paper's number is an example of 'fast', not a "
                          f"target); {net}", "λ10/λ1", [r["ratio10"] for r in rows], "<=", 0.08, PART, "{:.2e}"))
    cen = ", ".join(f"{r['ratio10_centered']:.2e}" for r in rows)
    out[-1].measured += f"; centered tangent features: {cen}"
    return out


def bias_tables(store: RunStore, cfg: Any) -> list[TableSpec]:
    rows = numeric_rows(store, SUMMARY)
    if not rows:
        return []
    return [TableSpec("B.2 spectral bias: per seed", ["seed", "rho", "ratio10", "ratio10_centered"], rows,
                      link=f"tables/{SUMMARY}.csv",
                      caption="rho: Spearman ρ(j, dominant DFT frequency of u_j) over j < N/2; ratio10: λ10/λ1 of the "
                              "uncentered NTK; ratio10_centered: with centered tangent features. Modes in "
                              f"tables/{MODES}.csv, DFT magnitudes in tables/{FOURIER}.csv.")]


def bias_figures(store: RunStore, cfg: Any) -> list[FigureSpec]:
    mag = [r for r in numeric_rows(store, FOURIER) if r["seed"] == 0]
    if not mag:
        return []
    vec = [r for r in numeric_rows(store, VECTORS) if r["seed"] == 0]
    modes = [r for r in numeric_rows(store, MODES) if r["seed"] == 0]

    def draw(fig: Any) -> None:
        axes = fig.subplots(1, 3)
        nj, nk = int(max(r["index"] for r in mag)) + 1, int(max(r["frequency"] for r in mag)) + 1
        M = np.zeros((nk, nj))
        for r in mag:
            M[int(r["frequency"]), int(r["index"])] = r["magnitude"]
        axes[0].imshow(M, origin="lower", aspect="auto", cmap="viridis")
        axes[0].plot([int(r["index"]) for r in modes], [int(r["frequency"]) for r in modes], "r.", ms=3)
        axes[0].set_xlabel("eigenvector index j")
        axes[0].set_ylabel("frequency")
        axes[0].set_title("|DFT(u_j)| (red: argmax)")
        for j in SHOWN:
            pts = sorted((int(r["point"]), r["value"]) for r in vec if int(r["index"]) == j)
            if pts:
                axes[1].plot(np.linspace(0, 1, len(pts)), [v for _, v in pts], label=f"j = {j}")
        axes[1].set_xlabel("x")
        axes[1].legend(fontsize=7)
        axes[1].set_title("eigenvectors")
        lam = np.array([r["eigenvalue"] for r in sorted(modes, key=lambda r: r["index"])])
        axes[2].semilogy(np.arange(lam.size), np.clip(lam / lam[0], 1e-18, None), "o-", ms=2)
        axes[2].set_xlabel("j")
        axes[2].set_title("λ_j / λ_1")

    return [FigureSpec("appB2_spectral_bias", "Fig. B.2: NTK eigenvectors of a random MLP vs Fourier modes",
                       f"Random ReLU MLP 1-{cfg.bias_width}x{int(cfg.bias_depth) - 1}-1 on {cfg.bias_points} equally "
                       "spaced points of [0, 1], seed 0: DFT magnitude of each eigenvector (eigenvalues "
                       "nonincreasing), eigenvectors j ∈ {0, 5, 20}, and the normalized spectrum.", draw, (12.0, 3.8))]
