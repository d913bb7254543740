"""Networks of the ``adaptive-tangent`` study: the bias-free He-initialized ReLU MLP of Figs. 1
and 3 (also the frozen target network), and the MLP / CNN of the preprint's Fig. 4 sweep (the
factorized model: :mod:`tangentlab.analysis.adaptive_factorized`)."""

from __future__ import annotations

import math

import torch
from torch import nn

from .config import SWEEP_IMAGES, AdaptiveTangentConfig


def he_mlp(n_in: int, hidden: tuple[int, ...], n_out: int, seed: int, bias: bool = False,
           dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """``Linear → ReLU → … → Linear`` with He-normal weights ``N(0, 2/fan_in)`` drawn from a
    generator seeded with ``seed`` (biases zero)."""
    gen = torch.Generator().manual_seed(int(seed))
    layers: list[nn.Module] = []
    width = n_in
    for h in (*hidden, n_out):
        lin = nn.Linear(width, h, bias=bias, dtype=dtype)
        with torch.no_grad():
            lin.weight.copy_(torch.randn(lin.weight.shape, generator=gen, dtype=dtype) * math.sqrt(2.0 / width))
            if bias:
                lin.bias.zero_()
        layers += [lin, nn.ReLU()]
        width = h
    return nn.Sequential(*layers[:-1])



def he_cnn(in_channels: int, image_size: int, channels: tuple[int, ...], hidden: tuple[int, ...], n_out: int,
           seed: int, bias: bool = False, dtype: torch.dtype = torch.float64) -> nn.Sequential:
    """The Fig. 4 CNN (the authors' CIFAR-10 model, any number of blocks): ``len(channels)``
    blocks ``Conv 3×3 (padding 1) → ReLU → AvgPool 2×2``, then ``Flatten → Linear → ReLU →
    … → Linear(n_out)`` with the ``hidden`` widths. He-normal weights ``N(0, 2/fan_in)``
    (``fan_in = c_in·9`` for a convolution) from a generator seeded with ``seed``; biases 0.
    The repo's CIFAR-10 net is ``channels = (16, 32, 64, 128)``, ``hidden = (128, 128)``."""
    if image_size >> len(channels) < 1:
        raise ValueError(f"{len(channels)} pooling blocks do not fit {image_size}×{image_size} images")
    gen = torch.Generator().manual_seed(int(seed))
    layers: list[nn.Module] = []
    c, size = in_channels, image_size
    for co in channels:
        conv = nn.Conv2d(c, co, 3, padding=1, bias=bias, dtype=dtype)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=gen, dtype=dtype) * math.sqrt(2.0 / (c * 9)))
            if bias:
                conv.bias.zero_()
        layers += [conv, nn.ReLU(), nn.AvgPool2d(2)]
        c, size = co, size // 2
    head = he_mlp(c * size * size, hidden, n_out, seed + 7_777, bias, dtype)
    return nn.Sequential(*layers, nn.Flatten(), *head)



def sweep_network(cfg: AdaptiveTangentConfig, arch: str, seed: int) -> nn.Sequential:
    """The standard network of the sweep (float32): the MLP on flattened images or the CNN."""
    c, size = SWEEP_IMAGES[cfg.sweep_dataset]
    hidden = (cfg.sweep_width,) * (cfg.sweep_depth - 1)
    if arch == "mlp":
        return nn.Sequential(nn.Flatten(), *he_mlp(c * size * size, hidden, 10, seed, cfg.sweep_bias, torch.float32))
    return he_cnn(c, size, tuple(cfg.sweep_channels), hidden, 10, seed, cfg.sweep_bias, torch.float32)

