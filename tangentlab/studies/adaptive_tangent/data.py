"""Data of the ``adaptive-tangent`` study: digits 2 vs 3 and their targets (Figs. 1, 3) and the
10-class images of the Fig. 4 sweep."""

from __future__ import annotations

import numpy as np
import torch

from .config import SWEEP_IMAGES, AdaptiveTangentConfig
from .models import he_mlp


def normalize(x: torch.Tensor, how: str) -> torch.Tensor:
    """Per-row normalization: zero mean, then unit Euclidean norm (``l2``) or unit variance."""
    x = x - x.mean(1, keepdim=True)
    if how == "l2":
        return x / x.norm(dim=1, keepdim=True).clamp_min(1e-12)
    return x / x.std(1, keepdim=True).clamp_min(1e-12)


def pair_data(cfg: AdaptiveTangentConfig) -> tuple[torch.Tensor, torch.Tensor]:
    """Images of digits 2 and 3 (flattened, normalized per image) and labels −1 (2) / +1 (3)."""
    if cfg.dataset == "digits":
        from sklearn.datasets import load_digits

        X, Y = load_digits(return_X_y=True)
    else:
        from ..framework.datasets import load_mnist_arrays

        X, Y = load_mnist_arrays(cfg.data_dir, "train")
        X = X.reshape(len(X), -1) / 255.0
    keep = np.flatnonzero((Y == 2) | (Y == 3))
    if cfg.n_points:
        keep = keep[:cfg.n_points]
    x = torch.as_tensor(np.asarray(X[keep], dtype=np.float64))
    lab = torch.as_tensor(np.where(Y[keep] == 3, 1.0, -1.0))
    return normalize(x, cfg.normalization), lab



def make_targets(x: torch.Tensor, lab: torch.Tensor, family: str, seed: int, width: int) -> tuple[torch.Tensor, float]:
    """``y = Z b`` with ``Z`` the penultimate features of a frozen He-initialized network
    (seed ``100 + seed``): ``paper``: ``b`` = least-squares fit of the ±1 labels;
    ``hard``: ``b`` Gaussian, ``y`` standardized. Returns ``(y, accuracy of sign(y))``."""
    net = he_mlp(x.shape[1], (width, width), 1, 100 + seed)
    with torch.no_grad():
        Z = net[:-1](x)
    if family == "paper":
        b = np.linalg.lstsq(Z.numpy(), lab.numpy(), rcond=None)[0]
        y = torch.as_tensor(Z.numpy() @ b)
    else:
        gen = torch.Generator().manual_seed(1000 + seed)
        y = Z @ torch.randn(Z.shape[1], generator=gen, dtype=torch.float64)
        y = (y - y.mean()) / y.std()
    return y, float(((y > 0) == (lab > 0)).double().mean())



def sweep_data(cfg: AdaptiveTangentConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Pool of training images and the fixed test set, 10 classes, as ``(N, C, H, W)`` float32
    images: digits /16 (stratified held-out split of ``sweep_test``), MNIST and CIFAR-10 /255
    (the first ``sweep_test`` test images), no other normalization (as the repo)."""
    if cfg.sweep_dataset == "digits":
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split

        X, Y = load_digits(return_X_y=True)
        xtr, xte, ytr, yte = train_test_split(X / 16.0, Y, test_size=cfg.sweep_test, random_state=0, stratify=Y)
    else:
        if cfg.sweep_dataset == "mnist":
            from ..framework.datasets import load_mnist_arrays as load
        else:
            from ..framework.datasets import load_cifar10_arrays as load
        xtr, ytr = load(cfg.data_dir, "train")
        xte, yte = load(cfg.data_dir, "test")
        xtr, xte = xtr / 255.0, xte[:cfg.sweep_test] / 255.0
        yte = yte[:cfg.sweep_test]
    c, size = SWEEP_IMAGES[cfg.sweep_dataset]
    f = torch.float32
    return (torch.as_tensor(xtr, dtype=f).reshape(-1, c, size, size), torch.as_tensor(ytr, dtype=torch.int64),
            torch.as_tensor(xte, dtype=f).reshape(-1, c, size, size), torch.as_tensor(yte, dtype=torch.int64))

