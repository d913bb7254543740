"""Datasets and label manipulations for the alignment studies (paper 000 / thesis ch. 6).

Synthetic tasks (no files, seeded, deterministic):

* :func:`disk_task` — the 2-D disk task of the paper's Fig. 1: ``x ~ Unif[-1, 1]^2`` and
  ``y = 1`` inside the centred disk of radius ``sqrt(2/π)`` (area 2 = half of the square,
  so the classes are balanced in expectation), ``y = 0`` outside.
* :func:`grid_2d` — the ``R×R`` evaluation grid on ``[-lim, lim]^2`` (row-major in ``x2``,
  then ``x1``; ``reshape(R, R)`` gives an image with ``x2`` down the rows).
* :func:`mnist1d` — the MNIST-1D dataset of Greydanus & Kobak (2020/2024), generated from its
  published procedure: ten 12-point digit templates, random right padding, dilation, scaling,
  circular translation, correlated noise in the padding, i.i.d. noise, shear, and linear
  downsampling to 40 points; the whole set is then centred and scaled to unit std.

Label/example manipulations (the "difficult examples" of §6.3.4, Fig. 4):

* :func:`randomize_labels` — exactly ``round(fraction·n)`` examples get a label drawn
  uniformly from the ``num_classes`` classes (it may equal the true one, as in the paper's code).
* :func:`mix_other_dataset` — replaces exactly ``round(fraction·n)`` examples by examples of a
  different, harder but learnable 10-class task (``make_classification`` with 20 informative
  features, 2 clusters per class, ``class_sep=1``, standardized), with that task's labels
  (the CPU-scale analogue of the paper's mixing of KMNIST into MNIST, §6.3.4).

Readers of files on disk (nothing is downloaded; ``torchvision`` is not needed):

* :func:`read_idx` — the IDX format of MNIST/KMNIST/Fashion-MNIST (plain or ``.gz``).
* :func:`load_mnist_arrays` — ``train-images-idx3-ubyte`` & co from ``data_dir`` (also looked
  up under ``data_dir/MNIST/raw`` / ``data_dir/KMNIST/raw``, torchvision's layout).
* :func:`load_cifar10_arrays` — the CIFAR-10 python pickle batches ``data_batch_1..5`` and
  ``test_batch`` (in ``data_dir`` or ``data_dir/cifar-10-batches-py``), read by a restricted
  unpickler (:func:`read_cifar_batch`) that builds only what the format holds, so a file from
  elsewhere cannot run code.

A missing file is a :class:`~tangentlab.studies.framework.config.ConfigError` on field ``data_dir`` that
names the file that was looked for.
"""

from __future__ import annotations

import gzip
import math
import pickle
from pathlib import Path

import numpy as np
import torch

from .config import ConfigError

#: Radius of the disk task: π r² = 2 = half the area of [-1, 1]².
DISK_RADIUS = math.sqrt(2.0 / math.pi)


def _rng(seed: int | np.random.SeedSequence) -> np.random.Generator:
    return np.random.default_rng(seed)


# ---------------------------------------------------------------------------------------------
# 2-D toys
# ---------------------------------------------------------------------------------------------
def disk_task(n: int, seed: int, radius: float = DISK_RADIUS, lim: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points uniform on ``[-lim, lim]^2`` (float32, shape ``(n, 2)``) and labels
    ``y_i = 1[‖x_i‖₂ < radius]`` (int64, shape ``(n,)``). The default radius ``sqrt(2/π)``
    makes both classes cover half of ``[-1, 1]^2``. For a ±1 target use ``2 y − 1``."""
    if n < 1:
        raise ConfigError("n", f"need at least one point, got {n}", "an integer >= 1")
    x = _rng(seed).uniform(-lim, lim, size=(n, 2))
    y = (np.sqrt((x ** 2).sum(1)) < radius).astype(np.int64)
    return torch.as_tensor(x, dtype=torch.float32), torch.as_tensor(y)


def grid_2d(resolution: int, lim: float = 1.0) -> torch.Tensor:
    """The ``resolution²`` points of a regular grid on ``[-lim, lim]^2`` as a float32
    ``(R·R, 2)`` tensor; point ``i·R + j`` is ``(t_j, t_i)`` with ``t = linspace(-lim, lim, R)``,
    so ``values.reshape(R, R)`` is an image whose rows follow ``x2`` and columns ``x1``."""
    if resolution < 2:
        raise ConfigError("resolution", f"grid resolution {resolution} is too small", "an integer >= 2")
    t = torch.linspace(-lim, lim, resolution, dtype=torch.float32)
    x2, x1 = torch.meshgrid(t, t, indexing="ij")
    return torch.stack([x1.reshape(-1), x2.reshape(-1)], dim=1)


# ---------------------------------------------------------------------------------------------
# label noise and dataset mixing
# ---------------------------------------------------------------------------------------------
def _choose(n: int, fraction: float, field: str, rng: np.random.Generator) -> np.ndarray:
    if not 0.0 <= fraction <= 1.0:
        raise ConfigError(field, f"fraction {fraction} is outside [0, 1]", "a number in [0, 1]")
    k = int(round(fraction * n))
    mask = np.zeros(n, dtype=bool)
    mask[rng.choice(n, size=k, replace=False)] = True
    return mask


def randomize_labels(y: torch.Tensor, fraction: float, num_classes: int, seed: int
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """Replace the labels of exactly ``round(fraction·n)`` examples, chosen uniformly without
    replacement, by labels drawn uniformly from ``{0, …, num_classes−1}`` (a drawn label may
    equal the true one). Returns the new int64 labels and the bool mask of the chosen examples."""
    if num_classes < 2:
        raise ConfigError("num_classes", f"need at least 2 classes, got {num_classes}", "an integer >= 2")
    rng = _rng(seed)
    y_np = y.detach().cpu().numpy().astype(np.int64).copy()
    mask = _choose(len(y_np), fraction, "fraction", rng)
    y_np[mask] = rng.integers(0, num_classes, size=int(mask.sum()))
    return torch.as_tensor(y_np), torch.as_tensor(mask)


def other_task(n: int, n_features: int, seed: int, num_classes: int = 10) -> tuple[np.ndarray, np.ndarray]:
    """``n`` examples of the "other dataset" of :func:`mix_other_dataset`: scikit-learn
    ``make_classification(n_features, n_informative=min(20, n_features−2), n_classes,
    n_clusters_per_class=2, class_sep=1.0)``, each feature standardized to mean 0, std 1."""
    from sklearn.datasets import make_classification

    n_inf = min(20, n_features - 2)
    if n_inf < 1 or num_classes * 2 > 2 ** n_inf:
        raise ConfigError("x", f"{n_features} input features are too few for a {num_classes}-class other task",
                          "inputs with >= 8 features")
    x, y = make_classification(n_samples=n, n_features=n_features, n_informative=n_inf, n_classes=num_classes,
                               n_clusters_per_class=2, class_sep=1.0, random_state=seed)
    x = (x - x.mean(0)) / np.where(x.std(0) > 0, x.std(0), 1.0)
    return x, y.astype(np.int64)


def mix_other_dataset(x: torch.Tensor, y: torch.Tensor, fraction: float, seed: int, num_classes: int = 10
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Replace exactly ``round(fraction·n)`` examples (chosen uniformly, seeded) by examples of
    :func:`other_task` with ``n_features = prod(x.shape[1:])`` (reshaped to ``x``'s example
    shape) and their own labels. Returns ``(x_new, y_new, is_other)``; ``x`` and ``y`` are
    not modified."""
    rng = _rng(seed)
    mask = _choose(len(y), fraction, "fraction", rng)
    k = int(mask.sum())
    x_new, y_new = x.clone(), y.clone().to(torch.int64)
    if k:
        d = int(np.prod(x.shape[1:]))
        xo, yo = other_task(k, d, int(rng.integers(2 ** 31 - 1)), num_classes)
        idx = torch.as_tensor(np.flatnonzero(mask))
        x_new[idx] = torch.as_tensor(xo, dtype=x.dtype).reshape(k, *x.shape[1:])
        y_new[idx] = torch.as_tensor(yo)
    return x_new, y_new, torch.as_tensor(mask)


# ---------------------------------------------------------------------------------------------
# MNIST-1D (Greydanus & Kobak), generated procedurally
# ---------------------------------------------------------------------------------------------
_MNIST1D_TEMPLATES = np.asarray([
    [5, 6, 6.5, 6.75, 7, 7, 7, 7, 6.75, 6.5, 6, 5],
    [5, 3, 3, 3.4, 3.8, 4.2, 4.6, 5, 5.4, 5.8, 5, 5],
    [5, 6, 6.5, 6.5, 6, 5.25, 4.75, 4, 3.5, 3.5, 4, 5],
    [5, 6, 6.5, 6.5, 6, 5, 5, 6, 6.5, 6.5, 6, 5],
    [5, 4.4, 3.8, 3.2, 2.6, 2.6, 5, 5, 5, 5, 5, 5],
    [5, 3, 3, 3, 3, 5, 6, 6.5, 6.5, 6, 4.5, 5],
    [5, 4, 3.5, 3.25, 3, 3, 3, 3, 3.25, 3.5, 4, 5],
    [5, 7, 7, 6.6, 6.2, 5.8, 5.4, 5, 4.6, 4.2, 5, 5],
    [5, 4, 3.5, 3.5, 4, 5, 5, 4, 3.5, 3.5, 4, 5],
    [5, 4, 3.5, 3.5, 4, 5, 5, 5, 5, 4.7, 4.3, 5],
])


def mnist1d_templates() -> np.ndarray:
    """The ten 12-point digit templates, each standardized (mean 0, std 1), shifted so that it
    starts at 0, and divided by 6."""
    t = _MNIST1D_TEMPLATES - _MNIST1D_TEMPLATES.mean(1, keepdims=True)
    t = t / t.std(1, keepdims=True)
    return (t - t[:, :1]) / 6.0


def _resample(v: np.ndarray, n: int) -> np.ndarray:
    """Linear interpolation of ``v`` (on ``linspace(0, 1, len(v))``) at ``n`` equispaced points."""
    return np.interp(np.linspace(0.0, 1.0, n), np.linspace(0.0, 1.0, len(v)), v)


def mnist1d_example(template: np.ndarray, rng: np.random.Generator, padding: tuple[int, int] = (36, 60),
                    scale_coeff: float = 0.4, max_translation: int = 48, corr_noise_scale: float = 0.25,
                    iid_noise_scale: float = 2e-2, shear_scale: float = 0.75, final_seq_length: int = 40,
                    eps: float = 1e-8) -> np.ndarray:
    """One MNIST-1D sequence from ``template`` (length L), in the published order:

    1. append ``p ~ U{padding}`` zeros to ``template + eps`` and dilate to length ``L + padding[1]``;
    2. scale by ``1 + scale_coeff (u − ½)``; circularly shift right by ``k ~ U{0, …, max_translation−1}``;
    3. replace the exact zeros (the padding) by correlated noise ``gaussian_filter(scale·N(0, 1), σ=2)``,
       then add i.i.d. noise ``iid_noise_scale·N(0, 1)`` everywhere;
    4. shear: subtract ``shear_scale (u − ½) · linspace(−½, ½)``; downsample to ``final_seq_length``.
    """
    from scipy.ndimage import gaussian_filter

    length = len(template) + padding[1]
    p = padding[0] + int(rng.random() * (padding[1] - padding[0] + 1))
    x = _resample(np.concatenate([template + eps, np.zeros(p)]), length)
    x = x * (1 + scale_coeff * (rng.random() - 0.5))
    k = int(rng.integers(max_translation)) if max_translation > 0 else 0
    x = np.roll(x, k)
    mask = x != 0
    corr = gaussian_filter(corr_noise_scale * rng.standard_normal(length), 2)
    x = np.where(mask, x, corr) + iid_noise_scale * rng.standard_normal(length)
    x = x - shear_scale * (rng.random() - 0.5) * np.linspace(-0.5, 0.5, length)
    return _resample(x, final_seq_length)


def mnist1d(num_samples: int = 5000, seed: int = 42, train_split: float = 0.8, **kwargs: float
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The MNIST-1D dataset: ``num_samples // 10`` sequences per digit (see
    :func:`mnist1d_example`, whose keyword arguments ``kwargs`` override), shuffled, then the
    whole array centred and divided by its global std; the first ``train_split`` fraction is the
    training set. Returns ``(x_train, y_train, x_test, y_test)`` with x float32 ``(N, 40)``.
    Deterministic for a given ``seed`` (numpy ``default_rng``; the values differ from the
    published pickle, which used numpy's legacy global generator)."""
    if num_samples < 20:
        raise ConfigError("num_samples", f"{num_samples} is too small", "an integer >= 20")
    if not 0.0 < train_split < 1.0:
        raise ConfigError("train_split", f"{train_split} is outside (0, 1)", "a number in (0, 1)")
    rng = _rng(seed)
    templates = mnist1d_templates()
    per_class = num_samples // len(templates)
    xs = np.stack([mnist1d_example(templates[c], rng, **kwargs) for c in range(len(templates))
                   for _ in range(per_class)])
    ys = np.repeat(np.arange(len(templates), dtype=np.int64), per_class)
    perm = rng.permutation(len(ys))
    xs, ys = xs[perm], ys[perm]
    xs = (xs - xs.mean()) / xs.std()
    cut = int(len(ys) * train_split)
    xt = torch.as_tensor(xs, dtype=torch.float32)
    yt = torch.as_tensor(ys)
    return xt[:cut], yt[:cut], xt[cut:], yt[cut:]


# ---------------------------------------------------------------------------------------------
# files on disk: IDX (MNIST, KMNIST) and CIFAR-10 pickles
# ---------------------------------------------------------------------------------------------
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: np.dtype(">i2"), 0x0C: np.dtype(">i4"),
               0x0D: np.dtype(">f4"), 0x0E: np.dtype(">f8")}


def read_idx(path: str | Path) -> np.ndarray:
    """Read one IDX file (optionally gzip-compressed, detected by its magic bytes): two zero
    bytes, a type code (0x08 ubyte, 0x09 byte, 0x0B int16, 0x0C int32, 0x0D float32, 0x0E
    float64), the number of dimensions, the big-endian int32 sizes, then the big-endian data."""
    raw = Path(path).read_bytes()
    if raw[:2] == b"\x1f\x8b":
        raw = gzip.decompress(raw)
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise ConfigError("data_dir", f"{str(path)!r} is not an IDX file", "IDX files (MNIST/KMNIST format)")
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    ndim = raw[3]
    shape = tuple(int(s) for s in np.frombuffer(raw, dtype=">i4", count=ndim, offset=4))
    start = 4 + 4 * ndim
    count = int(np.prod(shape)) if shape else 1
    if len(raw) - start < count * dtype.itemsize:
        raise ConfigError("data_dir", f"{str(path)!r} is truncated", "complete IDX files")
    return np.frombuffer(raw, dtype=dtype, count=count, offset=start).reshape(shape).astype(dtype.newbyteorder("="))


MNIST_FILES = {"train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
               "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")}


def find_file(data_dir: str | Path, names: tuple[str, ...], subdirs: tuple[str, ...], what: str) -> Path:
    """The first of ``names`` found in ``data_dir`` or one of its ``subdirs``; otherwise a one-line
    :class:`ConfigError` on ``data_dir`` naming the file(s) looked for."""
    root = Path(data_dir)
    for sub in ("", *subdirs):
        for name in names:
            p = root / sub / name if sub else root / name
            if p.is_file():
                return p
    raise ConfigError("data_dir", f"{what}: no {' or '.join(names)} in {str(root)!r}"
                      + (f" or its {', '.join(subdirs)} subfolders" if subdirs else ""),
                      f"a folder with the {what} files (nothing is downloaded)")


def mnist_subdirs(name: str) -> tuple[str, ...]:
    """Subfolders of ``data_dir`` searched for the IDX files of ``name`` (torchvision's layout first)."""
    return (f"{name.upper()}/raw", f"{name}/raw", name.upper(), name)


def load_mnist_arrays(data_dir: str | Path, split: str = "train", name: str = "mnist"
                      ) -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, 28, 28), labels int64 (N,))`` of an MNIST-format dataset (MNIST,
    KMNIST) from its IDX files ``train-images-idx3-ubyte[.gz]`` etc. in ``data_dir`` (or in
    ``data_dir/MNIST/raw``, ``data_dir/KMNIST/raw``)."""
    if split not in MNIST_FILES:
        raise ConfigError("split", f"unknown split {split!r}", "train, test")
    paths = [find_file(data_dir, (f, f + ".gz"), mnist_subdirs(name), name) for f in MNIST_FILES[split]]
    x, y = read_idx(paths[0]), read_idx(paths[1]).astype(np.int64)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise ConfigError("data_dir", f"{name} {split} files have shapes {x.shape} and {y.shape}",
                          "images (N, H, W) and labels (N,)")
    return x, y


class _CifarUnpickler(pickle.Unpickler):
    """An unpickler that resolves only numpy's array reconstruction: dicts, lists, strings,
    bytes and numbers need no global; any other global (a function to call, a class to build)
    is refused before anything runs."""

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle's hook
        if name == "_reconstruct" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _reconstruct
        if name == "scalar" and module in ("numpy.core.multiarray", "numpy._core.multiarray"):
            return _scalar  # numpy scalars (e.g. labels written as a list of np.int64)
        if name == "_frombuffer" and module in ("numpy.core.numeric", "numpy._core.numeric"):
            return _NP_FROMBUFFER  # (bytes, dtype, shape, order) -> array: builds nothing else
        if module == "_codecs" and name == "encode":
            return _latin1  # how protocol 2 writes bytes from Python 3
        if module == "numpy" and name == "ndarray":
            return np.ndarray
        if module == "numpy" and name == "dtype":
            return np.dtype
        raise pickle.UnpicklingError(f"it refers to {module}.{name}, which a CIFAR-10 batch never holds")


_NP_RECONSTRUCT = np.zeros(1).__reduce__()[0]  # numpy's own ``_reconstruct``, wherever it lives
_NP_FROMBUFFER = np.zeros(1).__reduce_ex__(5)[0]  # numpy's own ``_frombuffer`` (pickle protocol 5)


def _latin1(text: str, encoding: str = "utf-8") -> bytes:
    if not isinstance(text, str) or encoding not in ("latin1", "latin-1"):
        raise pickle.UnpicklingError("it calls _codecs.encode other than to write bytes")
    return text.encode("latin1")


_NP_SCALAR = np.int64(0).__reduce__()[0]  # numpy's own ``scalar(dtype, bytes)``


def _scalar(dtype, data=None):  # noqa: ANN001, ANN202 - pickle's call
    if not isinstance(dtype, np.dtype) or dtype.hasobject or dtype.kind not in "biuf":
        raise pickle.UnpicklingError(f"it builds a numpy scalar of dtype {dtype!r}, not a number")
    return _NP_SCALAR(dtype, data)


def _reconstruct(subtype, shape, dtype):  # noqa: ANN001, ANN202 - pickle's call
    if subtype is not np.ndarray:
        raise pickle.UnpicklingError(f"it builds an array of type {subtype!r}, not numpy.ndarray")
    return _NP_RECONSTRUCT(subtype, shape, dtype)


def _check_cifar_value(value, path: Path) -> None:  # noqa: ANN001
    """Refuse arrays of a non-numeric dtype anywhere in a loaded batch."""
    if isinstance(value, dict):
        for v in value.values():
            _check_cifar_value(v, path)
    elif isinstance(value, list):
        for v in value:
            _check_cifar_value(v, path)
    elif isinstance(value, np.ndarray) and (value.dtype.hasobject or value.dtype.kind not in "biuf"):
        raise ConfigError("data_dir", f"{str(path)!r} holds an array of dtype {value.dtype}, not numeric",
                          "CIFAR-10 python batches")


def read_cifar_batch(path: str | Path) -> dict:
    """One CIFAR-10 python batch (a dict with ``b'data'``, ``b'labels'``...), unpickled with
    :class:`_CifarUnpickler`: only dicts, lists, strings, bytes, numbers and numeric numpy
    arrays are built, anything else is a :class:`ConfigError` naming the file."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            d = _CifarUnpickler(fh, encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError, AttributeError, ImportError, IndexError,
            KeyError) as e:
        raise ConfigError("data_dir", f"{str(path)!r} is not a readable pickle of a CIFAR-10 batch ({e}); "
                          "nothing in it was run",
                          "CIFAR-10 python batches") from None
    if not isinstance(d, dict):
        raise ConfigError("data_dir", f"{str(path)!r} has no data/labels entries (it holds a {type(d).__name__}, "
                          "not a dict)",
                          "CIFAR-10 python batches")
    _check_cifar_value(d, path)
    return d


CIFAR10_FILES = {"train": tuple(f"data_batch_{i}" for i in range(1, 6)), "test": ("test_batch",)}


def load_cifar10_arrays(data_dir: str | Path, split: str = "train") -> tuple[np.ndarray, np.ndarray]:
    """``(images uint8 (N, 3, 32, 32), labels int64 (N,))`` from the CIFAR-10 python pickle
    batches (dicts with ``b'data'`` (n, 3072) row-major RGB planes and ``b'labels'``) in
    ``data_dir`` or ``data_dir/cifar-10-batches-py``."""
    if split not in CIFAR10_FILES:
        raise ConfigError("split", f"unknown split {split!r}", "train, test")
    xs, ys = [], []
    for f in CIFAR10_FILES[split]:
        path = find_file(data_dir, (f,), ("cifar-10-batches-py",), "cifar10")
        d = read_cifar_batch(path)
        data = d.get(b"data", d.get("data"))
        labels = d.get(b"labels", d.get("labels"))
        if data is None or labels is None:
            raise ConfigError("data_dir", f"{str(path)!r} has no data/labels entries", "CIFAR-10 python batches")
        xs.append(np.asarray(data, dtype=np.uint8).reshape(-1, 3, 32, 32))
        ys.append(np.asarray(labels, dtype=np.int64))
    return np.concatenate(xs), np.concatenate(ys)


def first_per_class(y: np.ndarray, max_per_class: int | None) -> np.ndarray:
    """Indices of the first ``max_per_class`` examples of every class, in file order (all if None)."""
    if max_per_class is None:
        return np.arange(len(y))
    keep = np.zeros(len(y), dtype=bool)
    for c in np.unique(y):
        keep[np.flatnonzero(y == c)[:max_per_class]] = True
    return np.flatnonzero(keep)
