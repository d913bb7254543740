"""Which parameters the Kronecker-factored optimizers precondition, arranged as matrices.

Every module whose layer rule defines a Kronecker layout
(:meth:`~tangentlab.layers.base.LayerRule.kron_layout`: Linear, Conv, Embedding, normalization
layers, and any registered rule that supports ``representation="kfac"`` in
:func:`tangentlab.fim`) and whose parameters all require gradients becomes one :class:`ParamBlock` of ``G`` matrices
``(O, I)``; an SUA convolution (``conv="sua"``) becomes two: its weight as ``K`` matrices
``(O, C_in)`` and its bias.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from ..errors import InvalidInputError, UnsupportedLayerError
from ..layers.base import LayerRule
from ..layers.registry import LayerRegistry


@dataclass
class ParamBlock:
    """One Kronecker-factored block: ``G`` matrices ``(O, I)`` gathered from the module's
    parameters with ``index[local]`` (``(G, O, I)`` offsets inside that parameter, ``-1``
    elsewhere). ``part``: ``"kron"`` (the rule's layout), ``"sua_w"`` or ``"sua_b"``;
    ``diagonal_a``: the input factor is diagonal (one-hot inputs)."""

    name: str
    module: nn.Module
    rule: LayerRule
    part: str
    index: dict[str, torch.Tensor]
    params: dict[str, torch.Tensor]
    diagonal_a: bool = False
    shape: tuple[int, int, int] = (0, 0, 0)

    def __post_init__(self) -> None:
        first = next(iter(self.index.values()))
        self.shape = tuple(first.shape)  # type: ignore[assignment]
        # one permutation of the concatenated flat parameters: mat.flatten() = cat[perm]
        perm = torch.full(first.shape, -1, dtype=torch.long)
        offset = 0
        self.sizes = []
        for k, idx in self.index.items():
            perm = torch.where(idx >= 0, idx + offset, perm)
            n = self.params[k].numel()
            self.sizes.append(n)
            offset += n
        if (perm < 0).any() or perm.numel() != offset:
            raise InvalidInputError(f"layer {self.name!r}: the Kronecker layout does not cover its parameters")
        self.perm = perm.reshape(-1)
        self.inverse = torch.argsort(self.perm)
        # the built-in patch layouts are reshapes (and a concatenation): gather/scatter without
        # an index copy when the layout is one of them (checked on the index tensors themselves)
        self.structured = False
        probe = {}
        start = 0
        for k, n in zip(self.index, self.sizes):
            probe[k] = torch.arange(start, start + n).reshape(self.params[k].shape)
            start += n
        try:
            self.structured = torch.equal(self._gather_structured(probe), self.perm.reshape(self.shape))
        except (RuntimeError, KeyError):  # a layout of another shape or parameters
            self.structured = False

    @property
    def key(self) -> torch.Tensor:
        """The parameter whose optimizer state holds this block's state."""
        if self.part == "sua_b":
            return self.params["bias"]
        return self.params["weight"] if "weight" in self.params else next(iter(self.params.values()))

    def _gather_structured(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        grp, o, i = self.shape
        if self.part == "sua_w":  # (O, C_in, kh, kw) → (K, O, C_in)
            return tensors["weight"].reshape(o, i, grp).permute(2, 0, 1)
        if self.part == "sua_b":
            return tensors["bias"].reshape(1, o, 1)
        if "bias" in tensors:  # homogeneous [W, b]
            return torch.cat([tensors["weight"].reshape(grp, o, i - 1), tensors["bias"].reshape(grp, o, 1)], 2)
        return tensors["weight"].reshape(grp, o, i)

    def gather(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(G, O, I)`` matrices of ``tensors`` (one per local parameter name)."""
        if self.structured:
            return self._gather_structured(tensors)
        flat = torch.cat([tensors[k].reshape(-1) for k in self.index])
        return flat[self.perm.to(flat.device)].reshape(self.shape)

    def scatter(self, mat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Inverse of :meth:`gather`: ``{local: tensor shaped like the parameter}``."""
        if self.structured:
            if self.part == "sua_w":
                return {"weight": mat.permute(1, 2, 0).reshape(self.params["weight"].shape)}
            if self.part == "sua_b":
                return {"bias": mat.reshape(self.params["bias"].shape)}
            if "bias" in self.params:
                return {"weight": mat[..., :-1].reshape(self.params["weight"].shape),
                        "bias": mat[..., -1].reshape(self.params["bias"].shape)}
            return {"weight": mat.reshape(self.params["weight"].shape)}
        flat = mat.reshape(-1)[self.inverse.to(mat.device)]
        parts = torch.split(flat, self.sizes)
        return {k: part.reshape(self.params[k].shape) for k, part in zip(self.index, parts)}

    @property
    def kernel_size(self) -> int:
        k = 1
        for d in cast(tuple[int, ...], self.module.kernel_size):
            k *= d
        return k


def blocks_of(name: str, mod: nn.Module, registry: LayerRegistry, conv: str) -> list[ParamBlock]:
    """The blocks of one module (none when its rule has no Kronecker layout, refuses the
    module, or some of its parameters are frozen)."""
    rule = registry.lookup(mod)
    try:
        if rule is None or rule.check(mod) is not None:
            return []
    except UnsupportedLayerError:  # no exact statistics for this module: the fallback optimizer's
        return []
    layout = rule.kron_layout(mod)
    if layout is None:
        return []
    params = {k: getattr(mod, k) for k in rule.params(mod)}
    if not params or not all(p.requires_grad for p in params.values()):
        return []
    if conv == "sua" and isinstance(mod, nn.Conv2d):
        if mod.groups != 1:
            raise InvalidInputError(f"layer {name!r}: conv='sua' needs groups=1 (got {mod.groups}); "
                                    "use conv='kfc'")
        o, cin, kh, kw = mod.weight.shape
        w = torch.arange(o * cin * kh * kw).reshape(o, cin, kh * kw).permute(2, 0, 1)  # (K, O, Cin)
        out = [ParamBlock(name, mod, rule, "sua_w", {"weight": w.contiguous()}, {"weight": mod.weight})]
        if mod.bias is not None:
            out.append(ParamBlock(name, mod, rule, "sua_b", {"bias": torch.arange(o).reshape(1, o, 1)},
                                  {"bias": mod.bias}))
        return out
    return [ParamBlock(name, mod, rule, "kron", dict(layout.index), params, layout.diagonal_a)]


def find_blocks(model: nn.Module, registry: LayerRegistry, conv: str,
                layers: Iterable[str] | None = None) -> list[ParamBlock]:
    """All blocks of ``model`` (``layers``: only these module paths, each of which must have some)."""
    wanted = None if layers is None else set(layers)
    blocks: list[ParamBlock] = []
    for name, mod in model.named_modules():
        if wanted is None or name in wanted:
            blocks += blocks_of(name, mod, registry, conv)
    if wanted is not None:
        missing = wanted - {b.name for b in blocks}
        if missing:
            raise InvalidInputError(f"layers {sorted(missing)} are not Kronecker-factorable layers (Linear, Conv, "
                                    "Embedding, ...) with trainable parameters of this model")
    if not blocks:
        raise InvalidInputError("the model has no Kronecker-factorable layer (Linear, Conv, Embedding, ...) "
                                "whose parameters all require grad")
    return blocks


def tapped_modules(model: nn.Module, registry: LayerRegistry,
                   blocks: list[ParamBlock]) -> dict[str, tuple[nn.Module, LayerRule]]:
    """The modules to record through their rule's tapped forward (see
    :mod:`~tangentlab.optim.recording`): those with a tapped rule that have a block themselves
    or contain one (``MultiheadAttention.out_proj`` is only called as a module by the tapped
    forward; the native forward uses its weight directly)."""
    names = [b.name for b in blocks]
    out: dict[str, tuple[nn.Module, LayerRule]] = {}
    for name, mod in model.named_modules():
        rule = registry.lookup(mod)
        if rule is None or not rule.tapped(mod):
            continue
        if any(n == name or n.startswith(name + ".") or not name for n in names):
            out[name] = (mod, rule)
    return out


__all__ = ["ParamBlock", "blocks_of", "find_blocks", "tapped_modules"]
