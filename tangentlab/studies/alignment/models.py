"""Models of items 2-5 of the alignment study: the framework's MLP / CNN / ResNet
(:func:`tangentlab.studies.framework.models.build_model`), a BN-free VGG for 32×32 CIFAR-10
(:func:`tangentlab.studies.framework.models.make_vgg`, the paper's VGG19 without batch norm), or the
small vision transformer of :mod:`.vit` (the ``transformer`` preset)."""

from __future__ import annotations

from torch import nn

from ..framework.models import VGG_CONFIGS, build_model, make_vgg, model_spec
from .vit import ViT


def model_layout(name: str) -> str:
    """The input layout model ``name`` expects: ``"flat"`` vectors or ``"image"`` tensors."""
    return "image" if name in VGG_CONFIGS or name == "vit" else model_spec(name).layout


def make_model(name: str, input_shape: tuple[int, ...], n_classes: int, width: int, depth: int, *,
               patch: int = 4, blocks: int = 1, heads: int = 2, hidden: int = 0, block: str = "gpt") -> nn.Module:
    """Model ``name`` for inputs of ``input_shape``: a VGG of base width ``width``; a :class:`ViT`
    of width ``width`` with ``blocks`` blocks of ``heads`` heads, ``patch×patch`` patches and
    feed-forward width ``hidden`` (0: ``2·width``); or a framework model (a ReLU MLP has ``depth``
    Linear layers of ``width`` units, i.e. ``depth − 1`` hidden layers)."""
    if name in VGG_CONFIGS:
        return make_vgg(name, input_shape[0], n_classes, width)
    if name == "vit":
        return ViT(input_shape[0], input_shape[-1], n_classes, patch=patch, dim=width, blocks=blocks, heads=heads,
                   hidden=hidden or 2 * width, block=block)
    return build_model(name, input_shape, n_classes, width=width, hidden=(width,) * (depth - 1),
                       activation="relu")
