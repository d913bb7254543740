"""The benchmark models, in plain PyTorch (float32, eval mode).

Every builder is deterministic given the global seed set by the caller, so a
model built in one subprocess is bit-identical to the one built in another.
"""

from __future__ import annotations

import torch
from torch import nn


def mlp(d_in: int = 64, width: int = 256, d_out: int = 10, depth: int = 2) -> nn.Module:
    """``d_in - width x depth - d_out`` with Tanh (W1: 64-256-256-10, P = 85,002)."""
    layers: list[nn.Module] = []
    d = d_in
    for _ in range(depth):
        layers += [nn.Linear(d, width), nn.Tanh()]
        d = width
    layers.append(nn.Linear(d, d_out))
    return nn.Sequential(*layers).eval()


def small_cnn(n_classes: int = 10) -> nn.Module:
    """W2/W5: conv(1->16)-ReLU-conv(16->32)-ReLU-AdaptiveAvgPool(4)-Flatten-Linear(512->10), P = 9,930."""
    return nn.Sequential(
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(),
        nn.AdaptiveAvgPool2d(4), nn.Flatten(),
        nn.Linear(32 * 4 * 4, n_classes),
    ).eval()


class BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False),
                                          nn.BatchNorm2d(c_out))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(h)) + self.shortcut(x))


class ResNet18(nn.Module):
    """CIFAR-style ResNet-18 (3x3 stem, no max-pool), BatchNorm in eval mode: 11,173,962 parameters."""

    def __init__(self, n_classes: int = 10, width: int = 64):
        super().__init__()
        w = width
        self.conv1 = nn.Conv2d(3, w, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(w)
        blocks = []
        c_in = w
        for c_out, stride in ((w, 1), (2 * w, 2), (4 * w, 2), (8 * w, 2)):
            blocks += [BasicBlock(c_in, c_out, stride), BasicBlock(c_out, c_out, 1)]
            c_in = c_out
        self.layers = nn.Sequential(*blocks)
        self.fc = nn.Linear(c_in, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(self.bn1(self.conv1(x)))
        h = self.layers(h)
        return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(h, 1), 1))


def resnet18(n_classes: int = 10, width: int = 64) -> nn.Module:
    """ResNet-18 with non-trivial (random) BatchNorm statistics and affine parameters, in eval mode."""
    model = ResNet18(n_classes, width)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
    return model.eval()


def n_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class SelfAttention(nn.Module):
    """Multi-head self-attention written the GPT/ViT way: ``nn.Linear`` query, key, value and
    output projections around ``F.scaled_dot_product_attention`` (no mask, no dropout).

    ``x: (N, T, d)`` → ``out(softmax(Q Kᵀ/√d_h) V)`` per head, ``d_h = d / heads``; the same
    parameters and function as ``nn.MultiheadAttention(d, heads)`` with separate projections."""

    def __init__(self, d: int, heads: int):
        super().__init__()
        self.heads = heads
        self.q, self.k, self.v, self.out = (nn.Linear(d, d) for _ in range(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, t, d = x.shape

        def split(z: torch.Tensor) -> torch.Tensor:  # (N, T, d) -> (N, heads, T, d_h)
            return z.reshape(n, t, self.heads, d // self.heads).transpose(1, 2)

        h = nn.functional.scaled_dot_product_attention(split(self.q(x)), split(self.k(x)), split(self.v(x)))
        return self.out(h.transpose(1, 2).reshape(n, t, d))


class GPTBlock(nn.Module):
    """Post-norm encoder block of the same shape as ``nn.TransformerEncoderLayer(d, heads, ff,
    dropout=0, batch_first=True)``: ``x ← LN₁(x + attn(x))``, ``x ← LN₂(x + W₂ relu(W₁ x))``."""

    def __init__(self, d: int, heads: int, ff: int):
        super().__init__()
        self.attn = SelfAttention(d, heads)
        self.norm1, self.norm2 = nn.LayerNorm(d), nn.LayerNorm(d)
        self.linear1, self.linear2 = nn.Linear(d, ff), nn.Linear(ff, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm1(x + self.attn(x))
        return self.norm2(x + self.linear2(torch.relu(self.linear1(x))))


class TokenTransformer(nn.Module):
    """W7: ``Embedding(vocab, d)`` → ``layers`` encoder blocks → mean over the tokens →
    ``Linear(d, n_classes)``, on token ids ``(N, T)``. ``style='encoder'``: ``nn.TransformerEncoder``
    of ``nn.TransformerEncoderLayer(d, heads, ff, dropout=0, batch_first=True)`` (packed
    ``in_proj_weight`` in ``nn.MultiheadAttention``); ``style='gpt'``: :class:`GPTBlock`.
    With the defaults both have P = 70,794."""

    def __init__(self, style: str = "encoder", vocab: int = 50, d: int = 64, heads: int = 4, ff: int = 128,
                 layers: int = 2, n_classes: int = 10):
        super().__init__()
        self.emb = nn.Embedding(vocab, d)
        if style == "encoder":
            layer = nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0, batch_first=True)
            self.encoder: nn.Module = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        elif style == "gpt":
            self.encoder = nn.Sequential(*(GPTBlock(d, heads, ff) for _ in range(layers)))
        else:
            raise ValueError(f"style must be 'encoder' or 'gpt', got {style!r}")
        self.head = nn.Linear(d, n_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(self.emb(x)).mean(1))


def transformer(style: str = "encoder") -> nn.Module:
    """The W7 model (see :class:`TokenTransformer`), in eval mode."""
    return TokenTransformer(style).eval()
