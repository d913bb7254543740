"""Convolution inputs as patches (im2col), from a :class:`~.patch.ConvSource`.

A convolution's output at position ``t`` is ``W ã_t`` with ``ã_t`` the (homogeneous)
patch of the padded input under the kernel; :func:`unfold_patches` builds every patch,
:func:`conv_weight_rows` gets per-example weight gradients without them.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.grad  # noqa: F401  (the stubs of torch.nn do not expose the submodule)

if TYPE_CHECKING:  # patch.py builds on this module
    from .patch import ConvSource


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


def unfold_patches(src: ConvSource, bias: bool) -> torch.Tensor:
    """The homogeneous patches ``(N, T, G, I[+1])`` of a :class:`ConvSource`."""
    return _patches(src.x, src.kernel, src.dilation, src.stride, src.groups, bias)


def conv_weight_rows(src: ConvSource, g: torch.Tensor) -> torch.Tensor:
    """Per-example weight gradients of a group-free convolution as ``(N, C·O, Cin·kh·kw)``
    (``g``: (C, N, O, Ho, Wo)), by one convolution backward with the examples as groups:
    the patches are never unfolded and the convolution kernels do their own blocking."""
    c, n, o = g.shape[0], g.shape[1], g.shape[2]
    cin, kh, kw = src.x.shape[1], src.kernel[0], src.kernel[1]
    go = g.transpose(0, 1).reshape(1, n * c * o, g.shape[3], g.shape[4])  # n-major channel blocks
    w = torch.nn.grad.conv2d_weight(src.x.reshape(1, n * cin, src.x.shape[2], src.x.shape[3]),
                                    (n * c * o, cin, kh, kw), go.to(src.x.dtype), stride=src.stride,
                                    dilation=src.dilation, groups=n)
    return w.view(n, c * o, cin * kh * kw)
