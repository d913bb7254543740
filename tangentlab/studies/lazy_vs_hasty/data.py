"""Data of the ``lazy-vs-hasty`` study (thesis ch. 5): yin-yang toy, C-scores, label noise, spurious digits.

* :func:`yin_yang` — ``x ~ Unif[−1, 1]²``, label ``1[x₂ ≤ 0]`` flipped inside the two disks of
  radius 0.3 centred at ``(0.5, −0.5)`` and ``(−0.5, 0.5)`` (the authors' code);
  :func:`yin_yang_regions` marks the "difficult" disks and the "easy" half-planes away from
  the disks and the boundary.
* :func:`estimate_cscores` — consistency scores by their definition (Jiang et al. 2021, thesis
  5.3.2): ``Ĉ(x, y) = mean_{ratios} mean_{D' ∌ (x,y)} 1[f(x; D') = y]`` over ``n_subsets`` random
  subsets ``D'`` of each size ``ratio·N`` that exclude the example (the model is trained on ``D'``
  only); ties are broken by the same average of the held-out probability ``p(y | x; D')``.
* :func:`flip_labels` — exactly ``round(fraction·N)`` labels replaced by a *different* random
  class (thesis ch. 5), with the mask of noisy examples.
* :func:`spurious_digits` — binary digits (``digit ≥ 5``) with a synthetic spurious feature: a
  bright ``patch×patch`` square in the top-left corner whose presence equals the label on a
  fraction ``agree`` of the training set (the majority, "with spurious") and contradicts it on
  the rest (minority, "w/o spurious"); balanced (50 % agreement) evaluation sets.
* :func:`spurious_images` — Waterbirds (Sagawa et al. 2020, ``metadata.csv``) or CelebA
  (``list_attr_celeba.txt``, ``list_eval_partition.txt``, ``img_align_celeba/``) read from
  ``data_dir`` (nothing is downloaded, torchvision is not needed: Pillow decodes the images),
  in the same :class:`SpuriousDigits` layout: the training split (optionally capped per
  ``(label, spurious attribute)`` group), a per-group balanced training subset and a
  per-group balanced test set. "With spurious" (``agree``): the bird type matches the
  background (Waterbirds); the person is a woman (CelebA, the authors' ``subsets=('man', 'woman')``).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ...progress import progress as bar
from ..framework.config import ConfigError
from ..framework.datasets import find_file, first_per_class

DISKS = ((0.5, -0.5), (-0.5, 0.5))
DISK_RADIUS = 0.3


def yin_yang(n: int, seed: int, dtype: torch.dtype = torch.float64) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` yin-yang points (``(n, 2)``) and ``{0, 1}`` labels (int64)."""
    x = np.random.default_rng(seed).uniform(-1.0, 1.0, size=(n, 2))
    return torch.as_tensor(x, dtype=dtype), torch.as_tensor(yin_yang_label(x))


def yin_yang_label(x: np.ndarray) -> np.ndarray:
    y = (x[:, 1] <= 0).astype(np.int64)
    for cx, cy in DISKS:
        inside = (x[:, 0] - cx) ** 2 + (x[:, 1] - cy) ** 2 < DISK_RADIUS ** 2
        y = np.where(inside, 1 - y, y)
    return y


def yin_yang_regions(x: np.ndarray, margin: float = 0.2) -> dict[str, np.ndarray]:
    """``disks``: inside the two flipped disks; ``easy``: farther than ``DISK_RADIUS + margin`` from
    both disk centres and than ``margin`` from the horizontal boundary ``x₂ = 0``."""
    dist = np.min([np.hypot(x[:, 0] - cx, x[:, 1] - cy) for cx, cy in DISKS], axis=0)
    return {"disks": dist < DISK_RADIUS, "easy": (dist > DISK_RADIUS + margin) & (np.abs(x[:, 1]) > margin)}


def flip_labels(y: torch.Tensor, fraction: float, num_classes: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Labels with exactly ``round(fraction·N)`` entries moved to a different uniformly drawn class,
    and the boolean mask of those entries."""
    if not 0 <= fraction <= 1:
        raise ConfigError("noise_fraction", f"{fraction} is not a fraction", "a number in [0, 1]")
    rng = np.random.default_rng(seed)
    n = y.shape[0]
    idx = rng.choice(n, int(round(fraction * n)), replace=False)
    yn = y.clone()
    shift = torch.as_tensor(rng.integers(1, num_classes, size=idx.size))
    yn[idx] = (y[idx] + shift) % num_classes
    mask = torch.zeros(n, dtype=torch.bool)
    mask[idx] = True
    return yn, mask


def estimate_cscores(x: np.ndarray, y: np.ndarray, ratios: Sequence[float], n_subsets: int, seed: int,
                     C: float = 0.05, show: bool | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(score, soft)`` per example (see the module docstring); models: multinomial logistic
    regression (``C`` = inverse ℓ2 strength). An example never held out at some ratio is
    averaged over the other ratios (never held out at all: the mean score)."""
    from sklearn.linear_model import LogisticRegression

    n = x.shape[0]
    rng = np.random.default_rng(seed)
    hard = np.zeros((len(ratios), n))
    soft = np.zeros((len(ratios), n))
    count = np.zeros((len(ratios), n))
    jobs = [(i, r) for i, r in enumerate(ratios) for _ in range(n_subsets)]
    for i, r in bar(jobs, "lazy-vs-hasty: C-scores", enabled=show):
        m = int(round(r * n))
        sub = rng.choice(n, m, replace=False)
        held = np.setdiff1d(np.arange(n), sub)
        clf = LogisticRegression(C=C, max_iter=500).fit(x[sub], y[sub])
        proba = clf.predict_proba(x[held])
        col = np.searchsorted(clf.classes_, y[held])
        known = clf.classes_[np.minimum(col, len(clf.classes_) - 1)] == y[held]
        p = np.where(known, proba[np.arange(held.size), np.minimum(col, len(clf.classes_) - 1)], 0.0)
        hard[i, held] += (clf.classes_[proba.argmax(1)] == y[held])
        soft[i, held] += p
        count[i, held] += 1
    seen = count > 0
    k = np.maximum(seen.sum(0), 1)
    h = np.where(seen, hard / np.maximum(count, 1), 0.0).sum(0) / k
    s = np.where(seen, soft / np.maximum(count, 1), 0.0).sum(0) / k
    never = ~seen.any(0)  # possible only with very few subsets: the average score
    if never.any() and (~never).any():
        h[never], s[never] = h[~never].mean(), s[~never].mean()
    return h, s


def quantile_bins(score: np.ndarray, tie_break: np.ndarray, n_bins: int) -> np.ndarray:
    """Bin ``0`` (lowest score) … ``n_bins − 1`` of equal size (±1), ordering by ``(score, tie_break)``."""
    order = np.lexsort((tie_break, score))
    bins = np.empty(score.size, dtype=np.int64)
    bins[order] = np.arange(score.size) * n_bins // score.size
    return bins


@dataclass
class SpuriousDigits:
    """Standardized inputs, ``{0, 1}`` labels and ``agree`` masks (spurious feature agrees with the label)."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    agree_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    agree_test: torch.Tensor
    balanced_train: torch.Tensor  # indices: all minority examples and as many majority ones


def spurious_digits(seed: int, agree: float = 0.9, patch: int = 2, strength: float = 2.0,
                    test_fraction: float = 0.25, dtype: torch.dtype = torch.float64) -> SpuriousDigits:
    """The binary spurious-feature digits task (see the module docstring).

    The patch pixels are set to 16 (present) or 0 (absent) in the raw 0–16 images, the inputs
    standardized per pixel with the training statistics, and the patch pixels then multiplied by
    ``strength`` (a large, linearly separable, easy feature)."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    if not 0.5 < agree < 1:
        raise ConfigError("spurious_agree", f"{agree} must lie strictly between 0.5 and 1", "(0.5, 1)")
    x, digit = load_digits(return_X_y=True)
    x_tr, x_te, d_tr, d_te = train_test_split(x, digit, test_size=test_fraction, random_state=seed, stratify=digit)
    y_tr, y_te = (d_tr >= 5).astype(np.int64), (d_te >= 5).astype(np.int64)
    rng = np.random.default_rng(seed + 1)
    ag_tr = np.zeros(y_tr.size, dtype=bool)
    ag_tr[rng.choice(y_tr.size, int(round(agree * y_tr.size)), replace=False)] = True
    ag_te = np.zeros(y_te.size, dtype=bool)
    ag_te[rng.choice(y_te.size, y_te.size // 2, replace=False)] = True
    pix = np.array([r * 8 + c for r in range(patch) for c in range(patch)])

    def inject(xs: np.ndarray, y: np.ndarray, ag: np.ndarray) -> np.ndarray:
        xs = xs.copy()
        present = np.where(ag, y == 1, y == 0)
        xs[:, pix] = np.where(present[:, None], 16.0, 0.0)
        return xs

    x_tr, x_te = inject(x_tr, y_tr, ag_tr), inject(x_te, y_te, ag_te)
    mean, std = x_tr.mean(0), x_tr.std(0)
    std = np.where(std > 0, std, 1.0)
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std
    x_tr[:, pix] *= strength
    x_te[:, pix] *= strength
    minority = np.nonzero(~ag_tr)[0]
    majority = rng.choice(np.nonzero(ag_tr)[0], minority.size, replace=False)
    t = lambda a: torch.as_tensor(a, dtype=dtype)  # noqa: E731
    return SpuriousDigits(t(x_tr), torch.as_tensor(y_tr), torch.as_tensor(ag_tr), t(x_te), torch.as_tensor(y_te),
                          torch.as_tensor(ag_te), torch.as_tensor(np.sort(np.concatenate([minority, majority]))))


def loss_thresholds(start: float, stop: float, ratio: float = 0.96) -> list[float]:
    """``start·ratio^k`` for ``k = 1, 2, …`` down to ``stop`` (the probe triggers of the authors' code)."""
    k = int(math.floor(math.log(stop / start) / math.log(ratio))) if stop < start else 0
    return [start * ratio ** i for i in range(1, k + 1)]


# ---------------------------------------------------------------------------------------------
# Waterbirds / CelebA from files on disk
# ---------------------------------------------------------------------------------------------
WATERBIRDS_DIRS = ("waterbird_complete95_forest2water2", "waterbirds")
CELEBA_DIRS = ("celeba", "CelebA", "Anno", "Eval")
SPURIOUS_NAMES = ("waterbirds", "celeba")


@dataclass
class ImageTable:
    """Metadata of an image dataset: image paths, binary target ``y``, binary spurious attribute
    ``spurious`` and split (0 train, 1 val, 2 test), all in file order."""

    files: list[Path]
    y: np.ndarray
    spurious: np.ndarray
    split: np.ndarray

    @property
    def group(self) -> np.ndarray:
        """Group index ``2·y + spurious`` (the four ``(y, spurious)`` cells)."""
        return 2 * self.y + self.spurious


def _bad(path: Path, problem: str, accepted: str) -> ConfigError:
    return ConfigError("data_dir", f"{str(path)!r}: {problem}", accepted)


def read_waterbirds(data_dir: str | Path) -> ImageTable:
    """Waterbirds metadata: ``metadata.csv`` (in ``data_dir`` or its
    ``waterbird_complete95_forest2water2`` folder) with columns ``img_filename`` (relative to
    the csv's folder), ``y`` (0 land bird, 1 water bird), ``split`` and ``place`` (background:
    0 land, 1 water = the spurious attribute)."""
    path = find_file(data_dir, ("metadata.csv",), WATERBIRDS_DIRS, "waterbirds")
    try:
        with open(path, newline="") as fh:
            rows = list(csv.DictReader(fh))
        files = [path.parent / r["img_filename"] for r in rows]
        cols = [np.array([int(float(r[c])) for r in rows], dtype=np.int64) for c in ("y", "place", "split")]
    except (KeyError, ValueError, TypeError) as e:
        raise _bad(path, f"unreadable metadata ({type(e).__name__}: {e})",
                   "a csv with columns img_id, img_filename, y, split, place") from None
    y, place, split = cols
    if not rows or not (np.isin(y, (0, 1)).all() and np.isin(place, (0, 1)).all() and np.isin(split, (0, 1, 2)).all()):
        raise _bad(path, "no rows, or y/place outside {0, 1} or split outside {0, 1, 2}", "the Waterbirds metadata.csv")
    return ImageTable(files, y, place, split)


def read_celeba(data_dir: str | Path, target: str = "Blond_Hair", attribute: str = "Male") -> ImageTable:
    """CelebA metadata: ``list_attr_celeba.txt`` (a count line, the attribute-names line, then
    ``filename ±1 …``) and ``list_eval_partition.txt`` (``filename 0|1|2``), in ``data_dir`` or a
    ``celeba``/``Anno``/``Eval`` folder; images in an ``img_align_celeba`` folder next to them.
    ``y = 1[target = +1]``, ``spurious = 1[attribute = +1]``."""
    attr = find_file(data_dir, ("list_attr_celeba.txt",), CELEBA_DIRS, "celeba")
    part = find_file(data_dir, ("list_eval_partition.txt",), CELEBA_DIRS, "celeba")
    try:
        lines = [ln.split() for ln in attr.read_text().splitlines() if ln.strip()]
        names = lines[1]
        ti, ai = names.index(target) + 1, names.index(attribute) + 1
        body = lines[2:]
        fnames = [r[0] for r in body]
        y = np.array([int(r[ti]) == 1 for r in body], dtype=np.int64)
        s = np.array([int(r[ai]) == 1 for r in body], dtype=np.int64)
        if int(lines[0][0]) != len(body) or any(len(r) != len(names) + 1 for r in body):
            raise ValueError(f"{len(body)} rows for a count of {lines[0][0]}, or rows of the wrong length")
    except (IndexError, ValueError) as e:
        raise _bad(attr, f"unreadable attributes ({type(e).__name__}: {e})",
                   f"the CelebA list_attr_celeba.txt with {target} and {attribute}") from None
    try:
        parts = {r[0]: int(r[1]) for r in (ln.split() for ln in part.read_text().splitlines() if ln.strip())}
        split = np.array([parts[f] for f in fnames], dtype=np.int64)
    except (IndexError, ValueError, KeyError) as e:
        raise _bad(part, f"unreadable partition or image missing from it ({type(e).__name__}: {e})",
                   "the CelebA list_eval_partition.txt") from None
    img_dir = next((d / "img_align_celeba" for d in (attr.parent, part.parent, Path(data_dir),
                                                     *(Path(data_dir) / c for c in CELEBA_DIRS))
                    if (d / "img_align_celeba").is_dir()), None)
    if img_dir is None:
        raise ConfigError("data_dir", f"celeba: no img_align_celeba folder in {str(data_dir)!r} or next to {attr.name}",
                          "a folder with the celeba files (nothing is downloaded)")
    return ImageTable([img_dir / f for f in fnames], y, s, split)


def load_images(files: Sequence[Path], size: int, show: bool | None = None) -> np.ndarray:
    """Images as float32 ``(N, 3, size, size)`` in ``[0, 1]``: RGB, centre-cropped to a square
    (side = the shorter one), resized (bilinear, Pillow) to ``size × size``."""
    from PIL import Image, UnidentifiedImageError

    out = np.empty((len(files), 3, size, size), dtype=np.float32)
    for i, f in enumerate(bar(files, "lazy-vs-hasty: images", enabled=show)):
        try:
            with Image.open(f) as im:
                im = im.convert("RGB")
                w, h = im.size
                m = min(w, h)
                left, top = (w - m) // 2, (h - m) // 2
                im = im.crop((left, top, left + m, top + m)).resize((size, size), Image.BILINEAR)
                out[i] = np.asarray(im, dtype=np.float32).transpose(2, 0, 1) / 255.0
        except (OSError, UnidentifiedImageError) as e:
            problem = "no such image file" if isinstance(e, FileNotFoundError) else f"unreadable ({type(e).__name__})"
            raise _bad(Path(f), problem, "the dataset's image files") from None
    return out


def balanced_indices(group: np.ndarray, per_group: int, seed: int) -> np.ndarray:
    """Sorted indices of ``min(per_group, size)`` examples drawn (seeded, without replacement) from
    every group present."""
    rng = np.random.default_rng(seed)
    keep = [rng.choice(np.flatnonzero(group == g), min(per_group, int((group == g).sum())), replace=False)
            for g in np.unique(group)]
    return np.sort(np.concatenate(keep)) if keep else np.zeros(0, dtype=np.int64)


def spurious_images(name: str, data_dir: str | Path, seed: int, image_size: int = 32, max_per_group: int = 0,
                    balanced_per_group: int = 180, dtype: torch.dtype = torch.float64,
                    show: bool | None = None, max_train: int = 0
                    ) -> tuple[SpuriousDigits, ImageTable, np.ndarray, np.ndarray]:
    """Waterbirds/CelebA (``name``) as :class:`SpuriousDigits` with image inputs ``(N, 3, S, S)``.

    Training set: the first ``max_train`` examples of split 0 in file order (0: all), then the
    first ``max_per_group`` of each ``(y, spurious)`` group (0: all; a binding cap changes the
    group proportions, i.e. weakens the spurious correlation). ``balanced_train``:
    ``balanced_per_group`` per group drawn from it (seeded; fewer where a group is smaller).
    Test set: ``balanced_per_group`` per group of split 2, in a seeded random order (its first
    examples serve the linearity metrics). Pixels are standardized per channel with the
    training set's mean and std. Also returns the metadata
    and the training/test indices into it."""
    if name not in SPURIOUS_NAMES:
        raise ConfigError("spurious_dataset", f"{name!r} is not an image dataset", ", ".join(SPURIOUS_NAMES))
    table = read_waterbirds(data_dir) if name == "waterbirds" else read_celeba(data_dir)
    group = table.group
    tr = np.flatnonzero(table.split == 0)
    te = np.flatnonzero(table.split == 2)
    if tr.size == 0 or te.size == 0:
        raise ConfigError("data_dir", f"{name}: the metadata has {tr.size} training (split 0) and {te.size} test "
                          "(split 2) examples", "a dataset with both splits")
    if max_train:
        tr = tr[:max_train]
    tr = tr[first_per_class(group[tr], max_per_group or None)]
    te = te[balanced_indices(group[te], balanced_per_group, seed + 7)]
    te = te[np.random.default_rng(seed + 8).permutation(te.size)]
    x_tr = load_images([table.files[i] for i in tr], image_size, show)
    x_te = load_images([table.files[i] for i in te], image_size, show)
    mean = x_tr.mean((0, 2, 3), keepdims=True)
    std = np.maximum(x_tr.std((0, 2, 3), keepdims=True), 1e-6)
    x_tr, x_te = (x_tr - mean) / std, (x_te - mean) / std

    def agree(idx: np.ndarray) -> torch.Tensor:
        a = table.y[idx] == table.spurious[idx] if name == "waterbirds" else table.spurious[idx] == 0
        return torch.as_tensor(a)

    bal = balanced_indices(group[tr], balanced_per_group, seed + 9)
    data = SpuriousDigits(torch.as_tensor(x_tr, dtype=dtype), torch.as_tensor(table.y[tr]), agree(tr),
                          torch.as_tensor(x_te, dtype=dtype), torch.as_tensor(table.y[te]), agree(te),
                          torch.as_tensor(bal))
    return data, table, tr, te
