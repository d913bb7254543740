"""Rules for ``nn.Linear`` (2-D and sequence inputs) and ``nn.Conv1d``/``nn.Conv2d``."""

from __future__ import annotations

from dataclasses import replace
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from .base import CHUNK_ELEMENTS
from .patch import ConvSource, Patches, PatchRule, homogeneous
from .unfold import conv_weight_rows


class LinearRule(PatchRule):
    """``y = x Wᵀ + b`` on inputs of shape ``(N, *, d_in)``; the ``*`` positions are summed."""

    def features(self, module: nn.Linear, args, kwargs) -> Patches:
        x = args[0] if args else kwargs["input"]
        n = x.shape[0]
        a = x.reshape(n, -1, 1, x.shape[-1])
        return Patches(homogeneous(a, module.bias is not None), tuple(module.weight.shape),
                       module.bias is not None)

    def shape_g(self, module, feat: Patches, g):
        c, n = g.shape[0], g.shape[1]
        return g.reshape(c, n, feat.t, 1, g.shape[-1])

    def geometry(self, module: nn.Linear):
        return 1, module.out_features, module.in_features, module.bias is not None


def _pads(module: nn.modules.conv._ConvNd, dims: int) -> list[tuple[int, int]]:
    """(left, right) padding per spatial dim, as the module's forward applies it."""
    k = module.kernel_size
    d = module.dilation
    if isinstance(module.padding, str):
        if module.padding == "valid":
            return [(0, 0)] * dims
        out = []
        for i in range(dims):  # 'same': extra padding goes on the right, as in ATen
            total = d[i] * (k[i] - 1)
            out.append((total // 2, total - total // 2))
        return out
    return [(p, p) for p in module.padding]


#: the grouped-convolution route needs ``GROUPED_MIN_POSITIONS · T ≥ I`` (see ``_grouped_route``)
GROUPED_MIN_POSITIONS = 8


class ConvRule(PatchRule):
    """``nn.Conv1d`` / ``nn.Conv2d`` with any stride, padding (incl. 'same' and
    non-zero padding modes), dilation and groups, via unfolded patches."""

    def check(self, module):
        if isinstance(module, nn.modules.conv._ConvTransposeNd):
            return "transposed convolution has no patch rule"
        if len(module.kernel_size) not in (1, 2):
            return f"{len(module.kernel_size)}-d convolution has no patch rule"
        return None

    def features(self, module, args, kwargs) -> Patches:
        x = args[0] if args else kwargs["input"]
        dims = len(module.kernel_size)
        unbatched = x.dim() == dims + 1
        if unbatched:  # pragma: no cover - engine always passes batches
            x = x.unsqueeze(0)
        pads = _pads(module, dims)
        flat_pad = [p for lr in reversed(pads) for p in lr]
        if any(flat_pad):
            mode = "constant" if module.padding_mode == "zeros" else module.padding_mode
            x = F.pad(x, flat_pad, mode=mode)
        if dims == 1:
            x = x.unsqueeze(2)
            kernel, dil, stride = (1, module.kernel_size[0]), (1, module.dilation[0]), (1, module.stride[0])
        else:
            kernel, dil, stride = module.kernel_size, module.dilation, module.stride
        src = ConvSource(x.contiguous(), tuple(kernel), tuple(dil), tuple(stride), module.groups)
        return Patches(None, tuple(module.weight.shape), module.bias is not None, src)

    def geometry(self, module):
        grp = module.groups
        k = 1
        for d in module.kernel_size:
            k *= d
        return grp, module.out_channels // grp, module.in_channels // grp * k, module.bias is not None

    def shape_g(self, module, feat: Patches, g):
        c, n, cout = g.shape[0], g.shape[1], g.shape[2]
        return g.reshape(c, n, cout, -1).transpose(2, 3).reshape(c, n, -1, feat.groups, cout // feat.groups)

    @staticmethod
    def _grouped_route(feat: Patches, g) -> bool:
        """Per-example gradients by a grouped convolution backward: group-free layers with one
        output coordinate (per-example loss gradients, output blocks of one) and many positions
        per weight input (``GROUPED_MIN_POSITIONS · T ≥ Cin·kh·kw``). With several output
        coordinates, and with few positions for many input channels (the deep layers of a
        ResNet), im2col + one batched matmul of (C·O, T) @ (T, I) per example is the faster
        route; the threshold separates the two regimes."""
        if feat.groups != 1 or feat.conv is None or g.shape[0] != 1:
            return False
        x = feat.conv.x
        ho, wo = feat.conv.out_hw
        return GROUPED_MIN_POSITIONS * ho * wo >= x.shape[1] * feat.conv.kernel[0] * feat.conv.kernel[1]

    def per_example_into(self, module, feat: Patches, g, outs):
        if not self._grouped_route(feat, g):
            return super().per_example_into(module, feat, g, outs)
        c, n, o = g.shape[0], g.shape[1], g.shape[2]
        conv = cast(ConvSource, feat.conv)  # the grouped route is taken for convolutions only
        g4 = g.reshape(c, n, o, *conv.out_hw)
        if "weight" in outs:
            w = conv_weight_rows(conv, g4).view(n, c, -1)
            outs["weight"].view(c, n, -1).copy_(w.transpose(0, 1))
        if "bias" in outs:
            outs["bias"].view(c, n, o).copy_(g4.sum((3, 4)))

    def _sq_norms_materialized(self, module, feat: Patches, g, gg, i: int):
        if not self._grouped_route(feat, g) or feat.a_ is not None:
            return super()._sq_norms_materialized(module, feat, g, gg, i)
        # one output coordinate: per-example weight gradients of a chunk of examples by one
        # grouped convolution backward, straight from the input (the patches are never unfolded)
        n, o = g.shape[1], g.shape[2]
        conv = cast(ConvSource, feat.conv)
        g4 = g.reshape(1, n, o, *conv.out_hw)
        out = torch.empty(1, n, dtype=g.dtype, device=g.device)
        per = max(1, CHUNK_ELEMENTS // max(1, o * i))
        for st in range(0, n, per):
            sl = slice(st, st + per)
            w = conv_weight_rows(replace(conv, x=conv.x[sl]), g4[:, sl])
            out[0, sl] = w.pow(2).sum((1, 2))
            if feat.has_bias:
                out[0, sl] += g4[0, sl].sum((2, 3)).pow(2).sum(-1)
        return out

    def per_example_rows(self, module, feat: Patches, g):
        if not self._grouped_route(feat, g):
            return super().per_example_rows(module, feat, g)
        c, n, o = g.shape[0], g.shape[1], g.shape[2]
        conv = cast(ConvSource, feat.conv)
        g4 = g.reshape(c, n, o, *conv.out_hw)
        w = conv_weight_rows(conv, g4).view(n * c, -1)
        if not feat.has_bias:
            return w
        return torch.cat([w, g4.sum((3, 4)).transpose(0, 1).reshape(n * c, o)], 1)

    def g_rows(self, module, feat: Patches, g):
        c, n, cout = g.shape[0], g.shape[1], g.shape[2]  # native (C, N, O, *spatial): one fast copy
        return g.reshape(c, n, cout, -1).transpose(0, 1).reshape(n, c * cout, -1)


