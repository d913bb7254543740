"""Small models of the studies (and of ``tangentlab demo``), plus a BN-free ResNet for the
paper-scale presets.

* :func:`make_mlp`: ``Linear → act → … → Linear`` (tanh, sigmoid or relu).
* :func:`make_cnn`: ``conv(c→w, 3) → ReLU → conv(w→w, 3) → ReLU → maxpool 2 → Linear``,
  "same" padding, no BatchNorm (so every layer is a Conv2d/Linear that KFAC/EKFAC cover).
  On 8×8 digits with ``w = 8``: 1954 parameters.
* :func:`make_vgg`: BN-free VGG11/VGG19 for 32×32 images.
* :func:`make_resnet`: ResNet-18/34/50 without BatchNorm (biases instead), initialized as
  in the thesis' Appendix A.3 (He init after ReLU, ``N(0, 1/n)`` on skip convolutions,
  ``N(0, 0.2/n)`` on the last convolution of each block) so that it trains without BN.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from .config import ConfigError

ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"tanh": nn.Tanh, "sigmoid": nn.Sigmoid, "relu": nn.ReLU}


def make_mlp(n_in: int = 64, hidden: tuple[int, ...] = (32, 32), n_out: int = 10, activation: str = "tanh",
             dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """``Linear → act → … → Linear`` (PyTorch's default initialization)."""
    if activation not in ACTIVATIONS:
        raise ConfigError("activation", f"unknown activation {activation!r}", ", ".join(ACTIVATIONS))
    layers: list[nn.Module] = []
    width = n_in
    for h in hidden:
        layers += [nn.Linear(width, h, dtype=dtype), ACTIVATIONS[activation]()]
        width = h
    layers.append(nn.Linear(width, n_out, dtype=dtype))
    return nn.Sequential(*layers)


def make_cnn(in_channels: int = 1, image_size: int = 8, n_classes: int = 10, width: int = 8,
             dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """Two 3×3 convolutions ("same" padding) with ReLU, a 2×2 max-pool and a linear head."""
    side = image_size // 2
    return nn.Sequential(
        nn.Conv2d(in_channels, width, 3, padding=1, dtype=dtype), nn.ReLU(),
        nn.Conv2d(width, width, 3, padding=1, dtype=dtype), nn.ReLU(),
        nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(width * side * side, n_classes, dtype=dtype),
    )


# ---------------------------------------------------------------------------------------------
# BN-free ResNet (thesis A.3 initialization)
# ---------------------------------------------------------------------------------------------
def _init(conv: nn.Module, variance_times_fan_in: float) -> None:
    fan_in = conv.weight[0].numel()
    nn.init.normal_(conv.weight, 0.0, (variance_times_fan_in / fan_in) ** 0.5)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)


class _Block(nn.Module):
    def __init__(self, c_in: int, c_mid: int, stride: int, bottleneck: bool, dtype: torch.dtype):
        super().__init__()
        expansion = 4 if bottleneck else 1
        c_out = c_mid * expansion
        if bottleneck:
            convs = [nn.Conv2d(c_in, c_mid, 1, dtype=dtype), nn.Conv2d(c_mid, c_mid, 3, stride, 1, dtype=dtype),
                     nn.Conv2d(c_mid, c_out, 1, dtype=dtype)]
        else:
            convs = [nn.Conv2d(c_in, c_mid, 3, stride, 1, dtype=dtype), nn.Conv2d(c_mid, c_out, 3, 1, 1, dtype=dtype)]
        self.convs = nn.ModuleList(convs)
        # the first conv follows the block input's ReLU, the others follow an inner ReLU (He init);
        # the last one is scaled down (variance 0.2/n)
        for conv in convs[:-1]:
            _init(conv, 2.0)
        _init(convs[-1], 0.2)
        self.skip: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.skip = nn.Conv2d(c_in, c_out, 1, stride, dtype=dtype)
            _init(self.skip, 1.0)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x
        for i, conv in enumerate(self.convs):
            h = conv(h)
            if i < len(self.convs) - 1:
                h = torch.relu(h)
        return torch.relu(h + self.skip(x))


RESNET_STAGES = {18: ((2, 2, 2, 2), False), 34: ((3, 4, 6, 3), False), 50: ((3, 4, 6, 3), True)}


def make_resnet(depth: int = 18, in_channels: int = 3, n_classes: int = 200, width: int = 64,
                dtype: torch.dtype = torch.float32) -> nn.Sequential:
    """BN-free ResNet-``depth`` for small images: a 3×3 stem, four stages (strides 1, 2, 2, 2),
    global average pooling and a linear head. ResNet-50 with ``width=64``: ≈ 23.6M parameters."""
    if depth not in RESNET_STAGES:
        raise ConfigError("model", f"no ResNet-{depth}", ", ".join(f"resnet{d}" for d in RESNET_STAGES))
    counts, bottleneck = RESNET_STAGES[depth]
    stem = nn.Conv2d(in_channels, width, 3, padding=1, dtype=dtype)
    _init(stem, 1.0)
    layers: list[nn.Module] = [stem, nn.ReLU()]
    c_in = width
    for stage, n in enumerate(counts):
        c_mid = width * 2**stage
        for b in range(n):
            blk = _Block(c_in, c_mid, 2 if (b == 0 and stage > 0) else 1, bottleneck, dtype)
            layers.append(blk)
            c_in = c_mid * (4 if bottleneck else 1)
    head = nn.Linear(c_in, n_classes, dtype=dtype)
    _init(head, 1.0)
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), head]
    return nn.Sequential(*layers)


# ---------------------------------------------------------------------------------------------
# BN-free VGG (Simonyan & Zisserman, 2015) for 32×32 images
# ---------------------------------------------------------------------------------------------
#: VGG layer plans (channels at base width 64; "M" = 2×2 max-pool).
VGG_CONFIGS: dict[str, tuple[int | str, ...]] = {
    "vgg11": (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"),
    "vgg19": (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M", 512, 512, 512, 512, "M", 512, 512, 512, 512, "M"),
}

#: Initializations of :func:`make_vgg`.
VGG_INITS = ("fan-out", "thesis")


def make_vgg(name: str, in_channels: int = 3, n_classes: int = 10, width: int = 64,
             dtype: torch.dtype = torch.float32, init: str = "fan-out") -> nn.Sequential:
    """BN-free VGG for 32×32 images: 3×3 convolutions (padding 1) + ReLU, five 2×2 max-pools and
    a linear head; channels scaled by ``width/64``; biases zero.

    ``init="fan-out"``: Kaiming-normal weights with the fan-out (``N(0, 2/(O·k²))``), PyTorch's
    default head weights (as in the alignment paper's code). ``init="thesis"``: the thesis'
    appendix A.3 scheme, ``N(0, 1/n)`` on the first convolution and He ``N(0, 2/n)`` (fan-in
    ``n``) on every layer after a ReLU, head included."""
    if init not in VGG_INITS:
        raise ConfigError("init", f"unknown VGG initialization {init!r}", ", ".join(VGG_INITS))
    layers: list[nn.Module] = []
    c = in_channels
    for v in VGG_CONFIGS[name]:
        if v == "M":
            layers.append(nn.MaxPool2d(2))
            continue
        out = max(1, int(v) * width // 64)
        conv = nn.Conv2d(c, out, 3, padding=1, dtype=dtype)
        if init == "fan-out":
            nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
            nn.init.zeros_(conv.bias)
        else:
            _init(conv, 2.0 if layers else 1.0)
        layers += [conv, nn.ReLU()]
        c = out
    head = nn.Linear(c, n_classes, dtype=dtype)
    if init == "fan-out":
        nn.init.zeros_(head.bias)
    else:
        _init(head, 2.0)
    return nn.Sequential(*layers, nn.Flatten(), head)


# ---------------------------------------------------------------------------------------------
# registry
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class ModelSpec:
    """``build(input_shape, n_classes, width, hidden, activation, dtype)``; ``layout`` is the
    input layout it needs (``"flat"`` or ``"image"``)."""

    name: str
    layout: str
    build: Callable[..., nn.Module]
    description: str


def _mlp(shape, n_classes, width, hidden, activation, dtype):
    n_in = 1
    for s in shape:
        n_in *= s
    return make_mlp(n_in, tuple(hidden), n_classes, activation, dtype)


def _cnn(shape, n_classes, width, hidden, activation, dtype):
    return make_cnn(shape[0], shape[-1], n_classes, width, dtype)


def _resnet(depth: int):
    return lambda shape, n_classes, width, hidden, activation, dtype: make_resnet(depth, shape[0], n_classes,
                                                                                 width, dtype)


MODELS: dict[str, ModelSpec] = {
    "mlp": ModelSpec("mlp", "flat", _mlp, "fully connected (hidden widths from `hidden`)"),
    "cnn": ModelSpec("cnn", "image", _cnn, "2 conv + linear head, no BatchNorm"),
    **{f"resnet{d}": ModelSpec(f"resnet{d}", "image", _resnet(d), f"BN-free ResNet-{d} (A.3 init)")
       for d in RESNET_STAGES},
}


def model_spec(name: str, field: str = "model") -> ModelSpec:
    if name not in MODELS:
        raise ConfigError(field, f"unknown model {name!r}", ", ".join(MODELS))
    return MODELS[name]


def build_model(name: str, input_shape: tuple[int, ...], n_classes: int, *, width: int = 8,
                hidden: tuple[int, ...] = (32, 32), activation: str = "relu",
                dtype: torch.dtype = torch.float32) -> nn.Module:
    return model_spec(name).build(tuple(input_shape), n_classes, width, hidden, activation, dtype)


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def weight_layers(model: nn.Module) -> list[str]:
    """Module paths of the Linear / Conv2d layers, in order (the layers KFAC/EKFAC cover)."""
    return [name for name, m in model.named_modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
