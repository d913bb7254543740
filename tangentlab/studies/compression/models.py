"""The MnasNet-like CNN of the ``compression`` study's §5.2 part (NTK parameterization, no
batch norm, normalized swish, mean-field output)."""

from __future__ import annotations

import math

import torch

from ...analysis.compression import Scale


class Swish(torch.nn.Module):
    """``x·sigmoid(x)·1.6768`` (unit second moment under a standard normal input)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 1.6768 * x * torch.sigmoid(x)


class _ScaledConv(torch.nn.Sequential):
    """``conv(x / sqrt(fan_in))`` with N(0, 1) weights and no bias (NTK parameterization);
    ``fan_in = in_channels/groups · k²``."""

    def __init__(self, cin: int, cout: int, k: int, stride: int = 1, groups: int = 1):
        conv = torch.nn.Conv2d(cin, cout, k, stride=stride, padding=k // 2, groups=groups, bias=False)
        torch.nn.init.normal_(conv.weight)
        super().__init__(Scale(1.0 / math.sqrt(cin // groups * k * k)), conv)


class _InvertedResidual(torch.nn.Module):
    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int = 3):
        super().__init__()
        mid = cin * expand
        self.body = torch.nn.Sequential(_ScaledConv(cin, mid, 1), Swish(), _ScaledConv(mid, mid, k, stride, mid),
                                        Swish(), _ScaledConv(mid, cout, 1))
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.body(x)
        return (x + out) / math.sqrt(2) if self.residual else out


class MnasNetLike(torch.nn.Module):
    """The paper's 16-convolution MnasNet-like CNN (§5.2), width ``h``: stem
    (4h, stride 2 for 28×28 inputs, 1 for smaller), depthwise-separable (→ 2h), inverted
    residuals ir0 (→ h, stride 2), ir0_0 (residual), ir1 (→ 3h, stride 2), ir1_0
    (residual), 1×1 head (20h), global average pooling and a mean-field linear output
    (weights N(0, 1)/fan_in, bias 0). Kernel 5×5 for 28×28 inputs, 3×3 otherwise."""

    def __init__(self, h: int, image_size: int = 28, in_channels: int = 1):
        super().__init__()
        k = 5 if image_size >= 28 else 3
        s0 = 2 if image_size >= 28 else 1
        self.features = torch.nn.Sequential(
            _ScaledConv(in_channels, 4 * h, k, s0), Swish(),
            _ScaledConv(4 * h, 4 * h, k, 1, 4 * h), Swish(), _ScaledConv(4 * h, 2 * h, 1), Swish(),
            _InvertedResidual(2 * h, h, k, 2), _InvertedResidual(h, h, k, 1),
            _InvertedResidual(h, 3 * h, k, 2), _InvertedResidual(3 * h, 3 * h, k, 1),
            _ScaledConv(3 * h, 20 * h, 1), Swish(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(),
            Scale(1.0 / (20 * h)))
        self.classifier = torch.nn.Linear(20 * h, 1)
        torch.nn.init.normal_(self.classifier.weight)
        torch.nn.init.zeros_(self.classifier.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))

