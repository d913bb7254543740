"""Rules for ``nn.Linear`` (2-D and sequence inputs) and ``nn.Conv1d``/``nn.Conv2d``."""

from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from .patch import Patches, PatchRule, homogeneous


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
        cols = F.unfold(x, kernel, dilation=dil, stride=stride)  # (N, Cin*K, T)
        n, _, t = cols.shape
        grp = module.groups
        a = cols.transpose(1, 2).reshape(n, t, grp, -1)
        return Patches(homogeneous(a, module.bias is not None), tuple(module.weight.shape),
                       module.bias is not None)

    def geometry(self, module):
        grp = module.groups
        k = 1
        for d in module.kernel_size:
            k *= d
        return grp, module.out_channels // grp, module.in_channels // grp * k, module.bias is not None

    def shape_g(self, module, feat: Patches, g):
        c, n, cout = g.shape[0], g.shape[1], g.shape[2]
        return g.reshape(c, n, cout, -1).transpose(2, 3).reshape(c, n, -1, feat.groups, cout // feat.groups)


