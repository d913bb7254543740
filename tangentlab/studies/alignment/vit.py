"""A small vision transformer for items 2-5 of the alignment study (the ``transformer`` preset), and the
probe that adds its block-level kernels.

The ViT (Dosovitskiy et al., ICLR 2021, "An Image is Worth 16x16 Words", eqs. 1-4, with mean
pooling instead of the class token): an image ``x ∈ R^{C×H×W}`` is cut into ``T = HW/p²``
non-overlapping ``p×p`` patches ``x_t ∈ R^{Cp²}`` (row-major), embedded as
``z⁰_t = E x_t + e_pos(t)`` (``E``: :class:`~torch.nn.Linear` ``Cp² → d``; ``e_pos``: a learned
:class:`~torch.nn.Embedding` of the ``T`` positions), then ``L`` pre-norm encoder blocks

    z' = z + Attn(LN₁(z)),    z ← z' + FF(LN₂(z')),    FF(u) = W₂ GELU(W₁ u + b₁) + b₂,

and the head ``f(x) = W_h LN((1/T) Σ_t z^L_t) + b_h``. Two blocks are offered:

* ``"gpt"`` (default): :class:`SelfAttention`, the GPT/ViT way — one ``nn.Linear(d, 3d)`` for the
  query/key/value projections, :func:`torch.nn.functional.scaled_dot_product_attention`
  (``softmax(QKᵀ/√(d/h)) V`` per head, no mask, no dropout) and an ``nn.Linear(d, d)`` output
  projection. Every parameter sits in an ``nn.Linear`` / ``nn.LayerNorm`` / ``nn.Embedding``, so the
  NTK takes tangentlab's per-layer fast path (Linear maps over the ``T`` token positions), and the
  per-layer kernels separate the attention projections (``attn.qkv``, ``attn.out``) from the
  feed-forward layers (``ff.0``, ``ff.2``).
* ``"torch"``: :class:`torch.nn.TransformerEncoderLayer` (``batch_first=True``, ``norm_first=True``,
  ``dropout=0``, GELU), the same maths; its :class:`~torch.nn.MultiheadAttention` parameters go
  through the engine's generic ``torch.func`` route (with a warning) until attention has a layer rule.

Block-level kernels (:func:`layer_groups`, :class:`GroupedProbe`): the NTK is a sum over parameters,
so the kernel of a block part is the sum of its layers' kernels, ``K^{attn} = K^{qkv} + K^{out}`` and
``K^{ff} = K^{ff.0} + K^{ff.2}`` (:meth:`~tangentlab.FMatDense.select`). Their rows in the probes
table are named ``"<block path>:attention"`` and ``"<block path>:feed-forward"``; a ``:`` never occurs
in a module path, so it tells a block part from a layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..framework.probes import Probe, ProbeSet

#: Encoder blocks of :class:`ViT`.
VIT_BLOCKS = ("gpt", "torch")


class PatchEmbedding(nn.Module):
    """``(N, C, H, W) → (N, T, d)``: ``z⁰_t = E x_t + e_pos(t)`` over the ``T = HW/p²`` row-major
    ``p×p`` patches ``x_t`` (flattened channel-major, ``C·p²`` values)."""

    def __init__(self, in_channels: int, image_size: int, patch: int, dim: int):
        super().__init__()
        if image_size % patch:
            raise ValueError(f"patch size {patch} does not divide the image size {image_size}")
        self.patch = patch
        self.n_tokens = (image_size // patch) ** 2
        self.proj = nn.Linear(in_channels * patch * patch, dim)
        self.pos = nn.Embedding(self.n_tokens, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        p = self.patch
        tokens = x.reshape(n, c, h // p, p, w // p, p).permute(0, 2, 4, 1, 3, 5).reshape(n, self.n_tokens, c * p * p)
        positions = torch.arange(self.n_tokens, device=x.device).expand(n, self.n_tokens)
        return self.proj(tokens) + self.pos(positions)


class SelfAttention(nn.Module):
    """Multi-head self-attention written the GPT way: ``[Q K V] = z W_qkvᵀ + b_qkv``, heads of
    size ``d/h``, ``A_j = softmax(Q_j K_jᵀ/√(d/h)) V_j`` (:func:`F.scaled_dot_product_attention`),
    output ``[A_1 … A_h] W_oᵀ + b_o``. Shapes ``(N, T, d) → (N, T, d)``."""

    def __init__(self, dim: int, heads: int):
        super().__init__()
        if dim % heads:
            raise ValueError(f"{heads} heads do not divide the width {dim}")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        n, t, d = z.shape
        q, k, v = self.qkv(z).reshape(n, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v)
        return self.out(a.transpose(1, 2).reshape(n, t, d))


class EncoderBlock(nn.Module):
    """Pre-norm encoder block: ``z' = z + Attn(LN₁(z))``, ``z' + FF(LN₂(z'))`` with
    ``FF = Linear(d, f) → GELU → Linear(f, d)`` (the ``"gpt"`` block of :class:`ViT`)."""

    def __init__(self, dim: int, heads: int, hidden: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads)
        self.norm2 = nn.LayerNorm(dim)
        self.ff = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        z = z + self.attn(self.norm1(z))
        return z + self.ff(self.norm2(z))


class ViT(nn.Module):
    """Small vision transformer (module docstring): patch embedding, ``blocks`` encoder blocks of
    width ``dim`` with ``heads`` heads and feed-forward width ``hidden``, mean pooling over the
    tokens, LayerNorm and a linear head. ``(N, C, H, W) → (N, n_classes)`` logits."""

    def __init__(self, in_channels: int, image_size: int, n_classes: int, *, patch: int, dim: int, blocks: int,
                 heads: int, hidden: int, block: str = "gpt"):
        super().__init__()
        if block not in VIT_BLOCKS:
            raise ValueError(f"unknown ViT block {block!r}; accepted: {', '.join(VIT_BLOCKS)}")
        self.embed = PatchEmbedding(in_channels, image_size, patch, dim)

        def make_block() -> nn.Module:
            if block == "gpt":
                return EncoderBlock(dim, heads, hidden)
            return nn.TransformerEncoderLayer(dim, heads, hidden, dropout=0.0, activation="gelu", batch_first=True,
                                              norm_first=True)

        self.blocks = nn.Sequential(*(make_block() for _ in range(blocks)))
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.norm(self.blocks(self.embed(x)).mean(dim=1)))


def layer_groups(model: nn.Module) -> dict[str, list[str]]:
    """``{"<block>:attention": [its attention layers], "<block>:feed-forward": [its feed-forward
    layers]}`` for each encoder block of ``model`` (module paths, as in the per-layer kernels); empty
    for a model without encoder blocks."""
    groups: dict[str, list[str]] = {}
    for path, mod in model.named_modules():
        if isinstance(mod, EncoderBlock):
            parts = {"attention": ("attn.qkv", "attn.out"), "feed-forward": ("ff.0", "ff.2")}
        elif isinstance(mod, nn.TransformerEncoderLayer):
            parts = {"attention": ("self_attn", "self_attn.out_proj"), "feed-forward": ("linear1", "linear2")}
        else:
            continue
        for part, layers in parts.items():
            groups[f"{path}:{part}"] = [f"{path}.{name}" for name in layers]
    return groups


class GroupedProbe(Probe):
    """A :class:`~tangentlab.studies.framework.probes.Probe` whose per-layer kernels also hold the
    sums ``groups`` (``{name: [layer paths]}``, e.g. :func:`layer_groups`), so that every per-layer
    metric (the layer-wise CKA) is also reported for each group, under its name."""

    def __init__(self, probes: list[ProbeSet], *, groups: dict[str, list[str]], **kwargs):
        super().__init__(probes, **kwargs)
        self.groups = dict(groups)

    def kernel(self, model: nn.Module, probe: ProbeSet, per_layer: bool = False):
        """The raw NTK of :meth:`Probe.kernel`, with ``K.layers`` extended by the group sums."""
        K = super().kernel(model, probe, per_layer)
        if per_layer and K.layers and self.groups:
            K.layers = {**K.layers, **{name: K.select(layers) for name, layers in self.groups.items()}}
        return K
