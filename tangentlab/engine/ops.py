"""Quantities computed from captures: per-example gradients, diagonals, sums,
squared norms, NTK blocks and Jacobian-vector products.

All results are *sums* over the examples of the capture (callers normalize).
Layers use their rule's fast paths when the whole layer is selected; when only
some of a layer's parameters are selected, the per-example gradients of the
selected ones are materialized instead.
"""

from __future__ import annotations

from typing import cast

import torch

from ..layers.base import sym_gram_into
from ..space import Layer, ParamSpace
from .engine import Capture, LayerCapture


def _full(lc: LayerCapture) -> bool:
    return {p.local for p in lc.layer.params} == set(lc.rule.params(lc.module))


def _hooked(cap: Capture) -> dict[str, LayerCapture]:
    return {lc.layer.module: lc for lc in cap.layers}


def layer_per_example(cap: Capture, layer: Layer, c: slice = slice(None)) -> torch.Tensor:
    """Per-example gradients of one layer's selected parameters: ``(C_s, N, P_layer)``."""
    lc = _hooked(cap).get(layer.module)
    if lc is not None:
        g = lc.g[c]
        pe = lc.rule.per_example(lc.module, lc.feat, g)
        return torch.cat([pe[p.local].reshape(g.shape[0], g.shape[1], -1) for p in layer.params], 2)
    parts = [cap.generic[p.name][c] for p in layer.params]
    return torch.cat([t.reshape(t.shape[0], t.shape[1], -1) for t in parts], 2)


def per_example(cap: Capture, space: ParamSpace, c: slice = slice(None),
                out: torch.Tensor | None = None) -> torch.Tensor:
    """Flat per-example gradients ``Φ``: ``(C_s, N, P)`` in the space's order, written into
    ``out`` if given (any view with a contiguous last dimension)."""
    hooked = _hooked(cap)
    cs = len(range(cap.n_outputs)[c])
    if out is None:
        out = cap.outputs.new_empty(cs, cap.n, space.numel)
    for lay in space.layers:
        lc = hooked.get(lay.module)
        if lc is not None:
            outs = {p.local: out[:, :, p.slice].unflatten(2, p.shape) if p.shape else out[:, :, p.slice]
                    for p in lay.params}
            lc.rule.per_example_into(lc.module, lc.feat, lc.g[c], outs)
        else:
            for p in lay.params:
                out[:, :, p.slice] = cap.generic[p.name][c].reshape(cs, cap.n, -1)
    return out


def diag(cap: Capture, space: ParamSpace) -> torch.Tensor:
    """``Σ_{c,n} φ_{c,n}²``: ``(P,)``."""
    hooked = _hooked(cap)
    parts: list[torch.Tensor] = []
    for lay in space.layers:
        lc = hooked.get(lay.module)
        if lc is not None:
            d = lc.rule.diag(lc.module, lc.feat, lc.g)
            parts.extend(d[p.local].reshape(-1) for p in lay.params)
        else:
            parts.extend(cap.generic[p.name].pow(2).sum((0, 1)).reshape(-1) for p in lay.params)
    return torch.cat(parts)


def grad_sum(cap: Capture, space: ParamSpace) -> torch.Tensor:
    """``Σ_n φ_{c,n}``: ``(C, P)``."""
    hooked = _hooked(cap)
    parts: list[torch.Tensor] = []
    for lay in space.layers:
        lc = hooked.get(lay.module)
        if lc is not None:
            d = lc.rule.grad_sum(lc.module, lc.feat, lc.g)
            parts.extend(d[p.local].reshape(cap.n_outputs, -1) for p in lay.params)
        else:
            parts.extend(cap.generic[p.name].sum(1).reshape(cap.n_outputs, -1) for p in lay.params)
    return torch.cat(parts, 1)


def sq_norms(cap: Capture, space: ParamSpace) -> torch.Tensor:
    """``‖φ_{c,n}‖²``: ``(C, N)``."""
    hooked = _hooked(cap)
    out = cap.outputs.new_zeros(cap.n_outputs, cap.n)
    for lay in space.layers:
        lc = hooked.get(lay.module)
        if lc is not None and _full(lc):
            out += lc.rule.sq_norms(lc.module, lc.feat, lc.g)
        else:
            out += layer_per_example(cap, lay).pow(2).sum(-1)
    return out


def gram(cap1: Capture, cap2: Capture, space: ParamSpace, per_layer: bool = False,
         out: torch.Tensor | None = None) -> torch.Tensor | dict[str, torch.Tensor]:
    """NTK block ``K[n, m, c, d] = ⟨φ¹_{c,n}, φ²_{d,m}⟩``: ``(N1, N2, C, D)``.

    With ``per_layer=True``, a dict ``{module path: block}`` (summing to the total).
    Otherwise the layers' contributions are accumulated in place into ``out`` when given
    (any ``(N1, N2, C, D)`` view, e.g. a tile of the full kernel; it is *added to*), or into
    a new zero tensor, which is returned.
    """
    h1, h2 = _hooked(cap1), _hooked(cap2)
    same = cap1 is cap2
    blocks: dict[str, torch.Tensor] = {}

    def zeros() -> torch.Tensor:  # captures hold outputs, features and g in one dtype
        return cap1.outputs.new_zeros(cap1.n, cap2.n, cap1.n_outputs, cap2.n_outputs)

    if not per_layer and out is None:
        out = zeros()
    for lay in space.layers:
        l1, l2 = h1.get(lay.module), h2.get(lay.module)
        target = blocks.setdefault(lay.module, zeros()) if per_layer else cast(torch.Tensor, out)
        if l1 is not None and l2 is not None and _full(l1):
            l1.rule.gram_into(l1.module, l1.feat, l1.g, l1.feat if same else l2.feat, l1.g if same else l2.g, target)
        elif same:  # generic route or partial selection: materialized rows n·C + c
            p1 = layer_per_example(cap1, lay)
            sym_gram_into(None, p1.transpose(0, 1).reshape(cap1.n * cap1.n_outputs, -1), cap1.n_outputs, target)
        else:
            target += torch.einsum("cnp,dmp->nmcd", layer_per_example(cap1, lay), layer_per_example(cap2, lay))
    if per_layer:
        return blocks
    return cast(torch.Tensor, out)


def dot(cap: Capture, space: ParamSpace, v: dict[str, torch.Tensor]) -> torch.Tensor:
    """``⟨φ_{c,n}, v⟩`` (the Jacobian-vector product ``J v``): ``(C, N)``."""
    hooked = _hooked(cap)
    out = cap.outputs.new_zeros(cap.n_outputs, cap.n)
    for lay in space.layers:
        lc = hooked.get(lay.module)
        if lc is not None:
            vv = {}
            for name in lc.rule.params(lc.module):
                full = f"{lay.module}.{name}" if lay.module else name
                vv[name] = v[full] if full in v else torch.zeros_like(getattr(lc.module, name))
            out += lc.rule.dot(lc.module, lc.feat, lc.g, vv)
        else:
            for p in lay.params:
                out += torch.einsum("cn...,...->cn", cap.generic[p.name], v[p.name])
    return out
