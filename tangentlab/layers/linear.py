"""Rules for ``nn.Linear`` (2-D and sequence inputs) and ``nn.Conv1d``/``nn.Conv2d``."""

from __future__ import annotations

import torch
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


def _patches(x: torch.Tensor, kernel: tuple[int, int], dil: tuple[int, int], stride: tuple[int, int],
             groups: int, bias: bool) -> torch.Tensor:
    """Homogeneous patches ``(N, T, G, Cin/G·kh·kw [+1])`` of an already padded ``(N, Cin, H, W)``
    input, built by one strided copy into a ``(N, G, I[+1], T)`` buffer (im2col's memory
    order: the innermost copy runs along the output width) whose bias row is ones; returned
    as a permuted view. Column order matches the flattened ``(Cin/G, kh, kw)`` weight."""
    n, cin, h, w = x.shape
    kh, kw = kernel
    ho = (h - dil[0] * (kh - 1) - 1) // stride[0] + 1
    wo = (w - dil[1] * (kw - 1) - 1) // stride[1] + 1
    cg = cin // groups
    sn, sc, sh, sw = x.stride()
    view = x.as_strided((n, groups, cg, kh, kw, ho, wo),
                        (sn, cg * sc, sc, dil[0] * sh, dil[1] * sw, stride[0] * sh, stride[1] * sw))
    inner = cg * kh * kw
    buf = torch.empty(n, groups, inner + int(bias), ho * wo, dtype=x.dtype, device=x.device)
    buf[:, :, :inner].unflatten(3, (ho, wo)).unflatten(2, (cg, kh, kw)).copy_(view)
    if bias:
        buf[:, :, inner] = 1
    return buf.permute(0, 3, 1, 2)


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
        return Patches(_patches(x.contiguous(), kernel, dil, stride, module.groups, module.bias is not None),
                       tuple(module.weight.shape), module.bias is not None)

    def geometry(self, module):
        grp = module.groups
        k = 1
        for d in module.kernel_size:
            k *= d
        return grp, module.out_channels // grp, module.in_channels // grp * k, module.bias is not None

    def shape_g(self, module, feat: Patches, g):
        c, n, cout = g.shape[0], g.shape[1], g.shape[2]
        return g.reshape(c, n, cout, -1).transpose(2, 3).reshape(c, n, -1, feat.groups, cout // feat.groups)

    def g_rows(self, module, feat: Patches, g):
        c, n, cout = g.shape[0], g.shape[1], g.shape[2]  # native (C, N, O, *spatial): one fast copy
        return g.reshape(c, n, cout, -1).transpose(0, 1).reshape(n, c * cout, -1)


