"""Models and optimizers of ``ekfac``: the sigmoid auto-encoder (thesis §4.4.1), the BN-free
VGG11 of the CIFAR-10 preset, and the optimizer of each compared method."""

from __future__ import annotations

import torch
from torch import nn

from ...optim import EKFAC, KFAC
from ..framework.models import make_vgg
from .config import EkfacConfig


def make_autoencoder(n_in: int, hidden: tuple[int, ...], dtype: torch.dtype) -> nn.Sequential:
    """``n_in-h₁-…-h_k-n_in``: sigmoid after every hidden layer, logits out (untied weights)."""
    layers: list[nn.Module] = []
    width = n_in
    for h in hidden:
        layers += [nn.Linear(width, h, dtype=dtype), nn.Sigmoid()]
        width = h
    layers.append(nn.Linear(width, n_in, dtype=dtype))
    return nn.Sequential(*layers)


def make_vgg11(n_classes: int = 10, dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """BN-free VGG11 for 32×32 inputs with the thesis' appendix A.3 initialization."""
    return make_vgg("vgg11", 3, n_classes, dtype=dtype, init="thesis")


def make_optimizer(method: str, model: nn.Module, lr: float, damping: float, period: int, cfg: EkfacConfig,
                   conv: str = "kfc") -> torch.optim.Optimizer:
    """The optimizer of ``method`` (KFAC family on the empirical Fisher; fallback SGD for any
    other parameter)."""
    kw = {"damping_scheme": cfg.kron_damping, "conv": conv}
    if method == "ekfac":
        return EKFAC(model, lr, damping, period=period, **kw)
    if method == "ekfac_ra":
        return EKFAC(model, lr, damping, period=period, running=True, decay=cfg.ra_decay, **kw)
    if method == "kfac":
        return KFAC(model, lr, damping, period=period, **kw)
    if method == "kfac_every":
        return KFAC(model, lr, damping, period=1, **kw)
    if method == "sgd":
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=cfg.momentum)
    if method == "adam":
        return torch.optim.Adam(model.parameters(), lr=lr)
    raise ValueError(method)  # pragma: no cover - validated
