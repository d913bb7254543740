"""Part 3 of ``fim-quality``: the NTK of a class-difference function and its kernel PCA
(thesis §3.4.2, Fig. 3.7), at the checkpoints of part 1.

For a pair of classes ``(c1, c2)`` and ``n`` held-out examples of each, the scalar function
``f_{c1,c2}(x, w) = f(x, w)_{c2} − f(x, w)_{c1}`` has the ``2n × 2n`` NTK Gram matrix
``G_ij = ⟨∇_w f(x_i), ∇_w f(x_j)⟩`` (:func:`tangentlab.ntk` with a callable output). Measured:

* ``gap``: mean intra-class minus mean inter-class entry of the cosine-normalized Gram
  ``G_ij / √(G_ii G_jj)`` (the thesis' top row: "it highlights intra-class examples"),
  the diagonal excluded;
* ``pca_accuracy``: the training accuracy of a logistic regression on the projections onto
  the first 2 kernel principal components (centered ``HGH``, projections ``√λ_k u_k``): 1 when
  the two classes are linearly separable in that plane (the thesis' bottom row).
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import nn

#: Columns of ``tables/ntk.csv`` (one value per step × pair × metric).
NTK_COLUMNS = ["step", "pair", "c1", "c2", "metric", "value"]
NTK_KEY = ["step", "pair", "metric"]
#: Columns of ``tables/ntk_points.csv`` (kernel-PCA projections of every example).
POINT_COLUMNS = ["step", "pair", "index", "label", "pc1", "pc2"]
POINT_KEY = ["step", "pair", "index"]
#: Columns of ``tables/ntk_gram.csv`` (the normalized Gram of the first pair, for the figure).
GRAM_COLUMNS = ["step", "i", "j", "value"]
GRAM_KEY = ["step", "i", "j"]


def class_pairs(n_classes: int, n_pairs: int, seed: int) -> list[tuple[int, int]]:
    """``n_pairs`` distinct unordered class pairs ``(c1, c2)``, ``c1 < c2``, drawn with ``seed``."""
    all_pairs = [(a, b) for a in range(n_classes) for b in range(a + 1, n_classes)]
    order = torch.randperm(len(all_pairs), generator=torch.Generator().manual_seed(seed))
    return [all_pairs[int(i)] for i in order[:n_pairs]]


def pair_examples(x: torch.Tensor, y: torch.Tensor, c1: int, c2: int, per_class: int) -> tuple[torch.Tensor,
                                                                                                   torch.Tensor]:
    """The first ``per_class`` examples of ``c1`` then of ``c2`` (labels 0 / 1)."""
    i1 = torch.nonzero(y == c1).flatten()[:per_class]
    i2 = torch.nonzero(y == c2).flatten()[:per_class]
    if i1.numel() < per_class or i2.numel() < per_class:
        raise ValueError(f"classes {c1}/{c2} have {i1.numel()}/{i2.numel()} examples, {per_class} needed")
    idx = torch.cat([i1, i2])
    return x[idx], torch.cat([torch.zeros(per_class, dtype=torch.long), torch.ones(per_class, dtype=torch.long)])


def difference_gram(model: nn.Module, x: torch.Tensor, c1: int, c2: int) -> torch.Tensor:
    """The NTK Gram matrix of ``f_{c2} − f_{c1}`` on ``x`` (``(N, N)``, not normalized)."""
    from ...api import ntk

    def diff(m: nn.Module, batch) -> torch.Tensor:
        out = m(batch[0])
        return (out[:, c2] - out[:, c1])[:, None]

    return ntk(model, (x,), output=diff, progress=False).data[:, :, 0, 0]


def normalized(g: torch.Tensor) -> torch.Tensor:
    """``G_ij / √(G_ii G_jj)`` (the thesis' normalization of each row and column)."""
    d = torch.diagonal(g).clamp_min(torch.finfo(g.dtype).tiny).sqrt()
    return g / d[:, None] / d[None, :]


def intra_inter_gap(c: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean intra-class off-diagonal entry minus mean inter-class entry of ``c``."""
    same = labels[:, None] == labels[None, :]
    off = ~torch.eye(len(labels), dtype=torch.bool)
    return float(c[same & off].mean() - c[~same].mean())


def kernel_pca(g: torch.Tensor, k: int = 2) -> np.ndarray:
    """Projections ``(N, k)`` on the first ``k`` principal components of the centered Gram
    ``HGH`` (``H = I − 11ᵀ/N``): ``√λ_j u_j``, each component's sign fixed so that its
    largest-magnitude entry is positive."""
    n = g.shape[0]
    h = torch.eye(n, dtype=g.dtype) - 1.0 / n
    evals, evecs = torch.linalg.eigh(h @ g @ h)
    evals, evecs = evals.flip(0)[:k], evecs.flip(1)[:, :k]
    proj = evecs * evals.clamp_min(0).sqrt()[None, :]
    sign = torch.sign(proj.gather(0, proj.abs().argmax(0, keepdim=True)))
    return (proj * torch.where(sign == 0, torch.ones_like(sign), sign)).numpy()


def linear_separability(points: np.ndarray, labels: np.ndarray) -> float:
    """Training accuracy of an (almost unregularized, C = 1e4) logistic regression on the
    standardized ``points``: 1 when the classes are linearly separable (to the solver's
    precision)."""
    from sklearn.linear_model import LogisticRegression

    std = points.std(0)
    z = (points - points.mean(0)) / np.where(std > 0, std, 1.0)
    clf = LogisticRegression(C=1e4, max_iter=5000).fit(z, labels)
    return float(clf.score(z, labels))


def pair_rows(model: nn.Module, x: torch.Tensor, labels: torch.Tensor, step: int, pair: int, c1: int, c2: int,
              keep_gram: bool) -> tuple[list[dict], list[dict], list[dict]]:
    """The rows of ``ntk``, ``ntk_points`` and (``keep_gram``) ``ntk_gram`` of one pair at one step."""
    g = difference_gram(model, x, c1, c2).double().cpu()
    c = normalized(g)
    proj = kernel_pca(g)
    lab = labels.numpy()
    rows = [{"step": step, "pair": pair, "c1": c1, "c2": c2, "metric": m, "value": v} for m, v in (
        ("gap", intra_inter_gap(c, labels)), ("pca_accuracy", linear_separability(proj, lab)),
        ("trace", float(torch.trace(g))))]
    points = [{"step": step, "pair": pair, "index": i, "label": int(lab[i]), "pc1": float(proj[i, 0]),
               "pc2": float(proj[i, 1]) if proj.shape[1] > 1 else math.nan} for i in range(len(lab))]
    gram = ([{"step": step, "i": i, "j": j, "value": float(c[i, j])} for i in range(len(lab))
             for j in range(len(lab))] if keep_gram else [])
    return rows, points, gram
