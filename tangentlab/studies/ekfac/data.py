"""Data of ``ekfac``: the optimization problems (:class:`Task`) and their datasets.

* digits pixels scaled to ``[0, 1]`` (the auto-encoder's logistic targets), flat or
  ``1×8×8``, with the stratified split of
  :func:`tangentlab.studies.framework.data.load_digits_split`;
* MNIST from ``data_dir/mnist.npz`` (the ``keras.datasets`` arrays), pixels in ``[0, 1]``;
* CIFAR-10 through :func:`tangentlab.studies.framework.data.load_cifar10_split`
  (standardized per channel).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..framework.data import TEST_FRACTION, load_cifar10_split


@dataclass
class Task:
    """One optimization problem: data, a model factory and the per-example loss."""

    name: str
    x_train: torch.Tensor
    y_train: torch.Tensor
    x_val: torch.Tensor
    y_val: torch.Tensor
    build: Callable[[], nn.Module]
    loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (z, y) -> per-example losses
    batch_size: int
    classify: bool


def load_unit_digits(seed: int, image: bool) -> tuple[torch.Tensor, ...]:
    """``(x_train, y_train, x_test, y_test)``: digits pixels in [0, 1] (flat or 1×8×8), the
    stratified 75/25 split of :func:`tangentlab.studies.framework.data.load_digits_split`."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x_tr, x_te, y_tr, y_te = train_test_split(x / 16.0, y, test_size=TEST_FRACTION, random_state=seed, stratify=y)
    out = [torch.as_tensor(a, dtype=torch.float32) for a in (x_tr, x_te)]
    if image:
        out = [a.reshape(-1, 1, 8, 8) for a in out]
    return out[0], torch.as_tensor(y_tr), out[1], torch.as_tensor(y_te)


def load_mnist_npz(data_dir: str) -> tuple[torch.Tensor, ...]:
    """``(x_train, y_train, x_test, y_test)`` from ``data_dir/mnist.npz``: flat pixels in [0, 1]."""
    d = np.load(Path(data_dir) / "mnist.npz")
    xs = [torch.as_tensor(d[k].reshape(d[k].shape[0], -1) / 255.0, dtype=torch.float32) for k in ("x_train", "x_test")]
    return xs[0], torch.as_tensor(d["y_train"]).long(), xs[1], torch.as_tensor(d["y_test"]).long()


def load_cifar10(data_dir: str) -> tuple[torch.Tensor, ...]:
    """``(x_train, y_train, x_test, y_test)``: CIFAR-10 images standardized per channel."""
    split = load_cifar10_split(data_dir)
    return split.x_train, split.y_train, split.x_test, split.y_test


def bce_loss(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """Per-example reconstruction cross-entropy of logits ``z`` (summed over pixels)."""
    return F.binary_cross_entropy_with_logits(z, x, reduction="none").sum(1)


def ce_loss(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy of logits ``z``."""
    return F.cross_entropy(z, y, reduction="none")
