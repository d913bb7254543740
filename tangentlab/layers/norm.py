"""Rules for normalization layers with an elementwise affine transform
``y = x̂ ⊙ w + b``: BatchNorm1d/2d (eval mode), LayerNorm, GroupNorm, RMSNorm.

The per-example weight gradient is ``Σ g ⊙ x̂`` and the bias gradient ``Σ g``,
summed over the output dimensions the parameters are broadcast along.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UnsupportedLayerError
from .base import LayerRule


@dataclass
class Normalized:
    xhat: torch.Tensor  # (N, *out) normalized input, before the affine map
    param_dims: tuple[int, ...]  # dims of (N, *out) spanned by the parameters


def batchnorm_coupling(module: nn.Module) -> str | None:
    """Why a BatchNorm couples the examples of a batch (None if it does not)."""
    if not isinstance(module, nn.modules.batchnorm._NormBase) or isinstance(
        module, nn.modules.instancenorm._InstanceNorm
    ):
        return None
    if module.training:
        return "is in training mode (batch statistics couple the examples)"
    if not module.track_running_stats or module.running_mean is None:
        return "has track_running_stats=False, so it always uses batch statistics"
    return None


class _AffineNormRule(LayerRule):
    def _reduce(self, feat: Normalized, x: torch.Tensor) -> torch.Tensor:
        """Sum a ``(C, N, *out)`` tensor over the non-parameter output dims."""
        keep = {0, 1} | {d + 1 for d in feat.param_dims}
        dims = tuple(d for d in range(x.dim()) if d not in keep)
        return x.sum(dims) if dims else x

    def per_example(self, module, feat: Normalized, g):
        out = {}
        if getattr(module, "weight", None) is not None:
            w = self._reduce(feat, g * feat.xhat[None])
            out["weight"] = w.reshape(g.shape[0], g.shape[1], *module.weight.shape)
        if getattr(module, "bias", None) is not None:
            b = self._reduce(feat, g)
            out["bias"] = b.reshape(g.shape[0], g.shape[1], *module.bias.shape)
        return out


class BatchNormRule(_AffineNormRule):
    """BatchNorm1d/2d/3d in eval mode (running statistics)."""

    def check(self, module):
        why = batchnorm_coupling(module)
        if why:
            raise UnsupportedLayerError(
                f"{type(module).__name__} {why}; per-example Jacobians are then undefined. "
                "Call `model.eval()` first, or pass `route='joint'` for the Jacobian of the "
                "whole batch (examples coupled)."
            )
        return None

    def features(self, module, args, kwargs):
        x = args[0] if args else kwargs["input"]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xhat = (x - module.running_mean.reshape(shape)) * torch.rsqrt(
            module.running_var.reshape(shape) + module.eps
        )
        return Normalized(xhat, (1,))


class LayerNormRule(_AffineNormRule):
    def features(self, module: nn.LayerNorm, args, kwargs):
        x = args[0] if args else kwargs["input"]
        xhat = F.layer_norm(x, module.normalized_shape, None, None, module.eps)
        k = len(module.normalized_shape)
        return Normalized(xhat, tuple(range(x.dim() - k, x.dim())))


class GroupNormRule(_AffineNormRule):
    def features(self, module: nn.GroupNorm, args, kwargs):
        x = args[0] if args else kwargs["input"]
        return Normalized(F.group_norm(x, module.num_groups, None, None, module.eps), (1,))


class RMSNormRule(_AffineNormRule):
    def features(self, module, args, kwargs):
        x = args[0] if args else kwargs["input"]
        xhat = F.rms_norm(x, module.normalized_shape, None, module.eps)
        k = len(module.normalized_shape)
        return Normalized(xhat, tuple(range(x.dim() - k, x.dim())))
