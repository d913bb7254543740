"""Datasets of the studies (and of ``tangentlab demo``).

* ``digits``: scikit-learn's 8×8 handwritten digits (1797 examples, 10 classes,
  shipped with scikit-learn: no download), as 64-vectors for MLPs
  (``layout="flat"``) or ``1×8×8`` images for CNNs (``layout="image"``).
* ``tinyimagenet``: the TinyImageNet-200 folder layout (``wnids.txt``,
  ``train/<wnid>/images/*.JPEG``, ``val/images`` + ``val/val_annotations.txt``),
  read from ``data_dir`` with Pillow; ``3×64×64`` images. Nothing is downloaded:
  a missing folder is a configuration error.

Splits are stratified (``random_state=seed``) and standardized with the training
statistics (per feature for ``flat``, per pixel for digit images, per channel for
TinyImageNet).

The alignment studies add (see :mod:`tangentlab.studies.framework.datasets`, registry
:data:`ALL_DATASETS`, which :func:`check_dataset` / :func:`load_dataset` read):

* ``mnist`` / ``kmnist``: IDX files in ``data_dir`` (official train/test split), ``x/255``
  standardized by the global training mean and std; ``flat`` (784) or ``image`` (1×28×28).
* ``cifar10``: the python pickle batches in ``data_dir``, standardized per channel;
  ``image`` (3×32×32) or ``flat`` (3072).
* ``mnist1d``: MNIST-1D generated with ``seed`` (4000 train / 1000 test sequences of length 40).
* ``disk``: the 2-D disk task, 500 training and 2000 test points (``flat``, 2 classes).

``max_per_class`` keeps the first that many examples of each class of the *training* set of the
file-based datasets (0/None: all); the official test set is always kept whole (the papers
evaluate on it). MNIST/KMNIST use one scalar mean and std (the alignment paper's code
normalizes MNIST with the dataset's scalar mean/std), not a per-pixel standardization: the
digits' per-pixel scaling would blow up MNIST's nearly constant border pixels.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from .config import ConfigError

#: Fraction of the digits held out for testing.
TEST_FRACTION = 0.25


@dataclass
class Split:
    """Standardized inputs (float32) and int64 labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    @property
    def n_classes(self) -> int:
        return int(max(int(self.y_train.max()), int(self.y_test.max()))) + 1

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Shape of one example, e.g. ``(64,)`` or ``(1, 8, 8)``."""
        return tuple(self.x_train.shape[1:])


def _tensor(a: np.ndarray) -> torch.Tensor:
    return torch.as_tensor(np.ascontiguousarray(a), dtype=torch.float32)


def load_digits_split(seed: int = 0, layout: str = "flat", test_fraction: float = TEST_FRACTION) -> Split:
    """scikit-learn digits split ``1 − test_fraction`` / ``test_fraction`` (stratified,
    ``random_state=seed``), standardized with the training mean and standard deviation
    per pixel (constant pixels keep scale 1). ``layout="image"`` reshapes to ``(N, 1, 8, 8)``."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split
    from sklearn.preprocessing import StandardScaler

    if layout not in ("flat", "image"):
        raise ConfigError("layout", f"unknown layout {layout!r}", "flat, image")
    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x, y, test_size=test_fraction, random_state=seed, stratify=y)
    scaler = StandardScaler().fit(x_tr)
    xt, xv = _tensor(scaler.transform(x_tr)), _tensor(scaler.transform(x_te))
    if layout == "image":
        xt, xv = xt.reshape(-1, 1, 8, 8), xv.reshape(-1, 1, 8, 8)
    return Split(xt, torch.as_tensor(y_tr, dtype=torch.int64), xv, torch.as_tensor(y_te, dtype=torch.int64))


def load_split(seed: int) -> Split:
    """The demo's split: flat digits, 75/25."""
    return load_digits_split(seed, "flat")


# ---------------------------------------------------------------------------------------------
# TinyImageNet (folder layout, read locally)
# ---------------------------------------------------------------------------------------------
TINYIMAGENET_LAYOUT = "a tiny-imagenet-200 folder (wnids.txt, train/<wnid>/images/, val/val_annotations.txt)"


def check_tinyimagenet(data_dir: str) -> None:
    """Raise :class:`ConfigError` (field ``data_dir``) unless ``data_dir`` has the TinyImageNet layout."""
    if not data_dir:
        raise ConfigError("data_dir", "dataset 'tinyimagenet' needs data_dir (nothing is downloaded)",
                          TINYIMAGENET_LAYOUT)
    root = Path(data_dir)
    if not root.is_dir():
        raise ConfigError("data_dir", f"{data_dir!r} is not a directory", TINYIMAGENET_LAYOUT)
    for need in ("wnids.txt", "train", "val/val_annotations.txt"):
        if not (root / need).exists():
            raise ConfigError("data_dir", f"{data_dir!r} has no {need}", TINYIMAGENET_LAYOUT)


def load_tinyimagenet_split(data_dir: str, max_per_class: int | None = None) -> Split:
    """TinyImageNet train (optionally the first ``max_per_class`` images of each class, in
    sorted file order) and val sets as ``(N, 3, 64, 64)`` float32, standardized per channel."""
    from PIL import Image

    check_tinyimagenet(data_dir)
    root = Path(data_dir)
    wnids = [w.strip() for w in (root / "wnids.txt").read_text().split() if w.strip()]
    index = {w: i for i, w in enumerate(wnids)}

    def read(path: Path) -> np.ndarray:
        with Image.open(path) as im:
            return np.asarray(im.convert("RGB"), dtype=np.uint8)

    xs, ys = [], []
    for w in wnids:
        files = sorted((root / "train" / w / "images").glob("*.JPEG"))[:max_per_class]
        xs += [read(f) for f in files]
        ys += [index[w]] * len(files)
    xv, yv = [], []
    for line in (root / "val" / "val_annotations.txt").read_text().splitlines():
        parts = line.split("\t")
        if len(parts) >= 2 and parts[1] in index:
            xv.append(read(root / "val" / "images" / parts[0]))
            yv.append(index[parts[1]])
    if not xs or not xv:
        raise ConfigError("data_dir", f"{data_dir!r} holds no readable train or val images", TINYIMAGENET_LAYOUT)
    xt = torch.as_tensor(np.stack(xs)).permute(0, 3, 1, 2).float() / 255
    xe = torch.as_tensor(np.stack(xv)).permute(0, 3, 1, 2).float() / 255
    mean = xt.mean(dim=(0, 2, 3), keepdim=True)
    std = xt.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    return Split((xt - mean) / std, torch.as_tensor(ys), (xe - mean) / std, torch.as_tensor(yv))


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class DatasetSpec:
    """How to check and load one dataset: ``check(data_dir)`` raises :class:`ConfigError`
    before any work; ``load(seed, layout, data_dir, max_per_class)`` returns a :class:`Split`."""

    name: str
    layouts: tuple[str, ...]
    check: Callable[[str], None]
    load: Callable[[int, str, str, int | None], Split]
    description: str


DATASETS: dict[str, DatasetSpec] = {
    "digits": DatasetSpec("digits", ("flat", "image"), lambda data_dir: None,
                          lambda seed, layout, data_dir, m: load_digits_split(seed, layout),
                          "scikit-learn 8x8 digits (shipped, no download)"),
    "tinyimagenet": DatasetSpec("tinyimagenet", ("image",), check_tinyimagenet,
                                lambda seed, layout, data_dir, m: load_tinyimagenet_split(data_dir, m),
                                "TinyImageNet-200 read from data_dir"),
}


# ---------------------------------------------------------------------------------------------
# alignment-study datasets (MNIST/KMNIST/CIFAR-10 from files, MNIST-1D and the disk task generated)
# ---------------------------------------------------------------------------------------------
def _layout(x: torch.Tensor, layout: str, image_shape: tuple[int, ...]) -> torch.Tensor:
    return x.reshape(len(x), -1) if layout == "flat" else x.reshape(len(x), *image_shape)


def _check_files(name: str) -> Callable[[str], None]:
    from . import datasets

    def check(data_dir: str) -> None:
        if not data_dir:
            raise ConfigError("data_dir", f"dataset {name!r} needs data_dir (nothing is downloaded)",
                              f"a folder with the {name} files")
        if not Path(data_dir).is_dir():
            raise ConfigError("data_dir", f"{data_dir!r} is not a directory", f"a folder with the {name} files")
        if name == "cifar10":
            for split in datasets.CIFAR10_FILES.values():
                for f in split:
                    datasets.find_file(data_dir, (f,), ("cifar-10-batches-py",), name)
        else:
            for split in datasets.MNIST_FILES.values():
                for f in split:
                    datasets.find_file(data_dir, (f, f + ".gz"), datasets.mnist_subdirs(name), name)
    return check


def load_idx_split(name: str, data_dir: str, layout: str = "flat", max_per_class: int | None = None) -> Split:
    """MNIST/KMNIST from IDX files: ``x/255`` standardized with the global (scalar) training
    mean and std; the first ``max_per_class`` training examples of each class, the whole test set."""
    from .datasets import load_mnist_arrays

    _check_files(name)(data_dir)
    (xt, yt), (xe, ye) = (load_mnist_arrays(data_dir, s, name) for s in ("train", "test"))
    return _scaled_split(xt, yt, xe, ye, max_per_class, layout, (1, *xt.shape[1:]), per_channel=False)


def load_cifar10_split(data_dir: str, layout: str = "image", max_per_class: int | None = None) -> Split:
    """CIFAR-10 from the python pickle batches, ``x/255`` standardized per channel with the
    training statistics; the first ``max_per_class`` training examples of each class, the whole
    test set."""
    from .datasets import load_cifar10_arrays

    _check_files("cifar10")(data_dir)
    (xt, yt), (xe, ye) = (load_cifar10_arrays(data_dir, s) for s in ("train", "test"))
    return _scaled_split(xt, yt, xe, ye, max_per_class, layout, (3, 32, 32), per_channel=True)


def _scaled_split(xt: np.ndarray, yt: np.ndarray, xe: np.ndarray, ye: np.ndarray, max_per_class: int | None,
                  layout: str, image_shape: tuple[int, ...], per_channel: bool) -> Split:
    """8-bit images as a :class:`Split`: the first ``max_per_class`` training examples of each
    class and the whole test set, ``x/255`` standardized with the training mean and std (one
    scalar, or per channel of ``(N, C, H, W)`` images), in ``layout``."""
    from .datasets import first_per_class

    it = first_per_class(yt, max_per_class)
    xt = torch.as_tensor(xt[it], dtype=torch.float32) / 255
    xe = torch.as_tensor(xe, dtype=torch.float32) / 255
    if per_channel:
        mean = xt.mean(dim=(0, 2, 3), keepdim=True)
        std = xt.std(dim=(0, 2, 3), keepdim=True).clamp_min(1e-6)
    else:
        mean, std = xt.mean(), xt.std().clamp_min(1e-6)
    return Split(_layout((xt - mean) / std, layout, image_shape), torch.as_tensor(yt[it]),
                 _layout((xe - mean) / std, layout, image_shape), torch.as_tensor(ye))


def load_mnist1d_split(seed: int) -> Split:
    """MNIST-1D (5000 sequences, 80/20 split) generated with ``seed``."""
    from .datasets import mnist1d

    return Split(*mnist1d(5000, seed))


def load_disk_split(seed: int, n_train: int = 500, n_test: int = 2000) -> Split:
    """The disk task: ``n_train`` training and ``n_test`` test points from independent seeds."""
    from .datasets import disk_task

    s_train, s_test = np.random.SeedSequence(seed).spawn(2)
    x, y = disk_task(n_train, int(s_train.generate_state(1)[0]))
    xe, ye = disk_task(n_test, int(s_test.generate_state(1)[0]))
    return Split(x, y, xe, ye)


#: Every dataset; :data:`DATASETS` (the FIM-quality study's choices) is a subset.
ALL_DATASETS: dict[str, DatasetSpec] = {
    **DATASETS,
    "mnist": DatasetSpec("mnist", ("flat", "image"), _check_files("mnist"),
                         lambda seed, layout, data_dir, m: load_idx_split("mnist", data_dir, layout, m),
                         "MNIST read from IDX files in data_dir"),
    "kmnist": DatasetSpec("kmnist", ("flat", "image"), _check_files("kmnist"),
                          lambda seed, layout, data_dir, m: load_idx_split("kmnist", data_dir, layout, m),
                          "Kuzushiji-MNIST read from IDX files in data_dir"),
    "cifar10": DatasetSpec("cifar10", ("image", "flat"), _check_files("cifar10"),
                           lambda seed, layout, data_dir, m: load_cifar10_split(data_dir, layout, m),
                           "CIFAR-10 read from the python pickle batches in data_dir"),
    "mnist1d": DatasetSpec("mnist1d", ("flat",), lambda data_dir: None,
                           lambda seed, layout, data_dir, m: load_mnist1d_split(seed),
                           "MNIST-1D generated procedurally (no download)"),
    "disk": DatasetSpec("disk", ("flat",), lambda data_dir: None,
                        lambda seed, layout, data_dir, m: load_disk_split(seed),
                        "2-D disk task of the alignment paper's Fig. 1 (generated)"),
}


def check_dataset(name: str, layout: str, data_dir: str = "", field: str = "dataset") -> DatasetSpec:
    """The spec of ``name`` (any of :data:`ALL_DATASETS`) after checking it exists, supports
    ``layout`` and has its files."""
    spec = ALL_DATASETS.get(name)
    if spec is None:
        raise ConfigError(field, f"unknown dataset {name!r}", ", ".join(ALL_DATASETS))
    if layout not in spec.layouts:
        raise ConfigError(field, f"dataset {name!r} has no {layout!r} layout (the model needs it)",
                          ", ".join(n for n, s in ALL_DATASETS.items() if layout in s.layouts))
    spec.check(data_dir)
    return spec


def load_dataset(name: str, seed: int, layout: str, data_dir: str = "", max_per_class: int | None = None) -> Split:
    return check_dataset(name, layout, data_dir).load(seed, layout, data_dir, max_per_class)
