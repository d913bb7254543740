"""Six small float64 architectures covering every built-in rule and the generic route.

Each factory returns ``(model, x, y)`` with classification logits as outputs
(so every Fisher kind applies); models are in eval mode.
"""

from __future__ import annotations

import torch
from torch import nn


def mlp(n: int = 11):
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 7), nn.ReLU(), nn.Linear(7, 4))
    return model.double().eval(), torch.randn(n, 6), torch.randint(0, 4, (n,))


def cnn(n: int = 9):
    model = nn.Sequential(
        nn.Conv2d(2, 4, 3, stride=2, padding=1),
        nn.ReLU(inplace=True),
        nn.Conv2d(4, 6, 3, dilation=2, padding="same", groups=2, padding_mode="reflect"),
        nn.Tanh(),
        nn.Conv2d(6, 4, (2, 3), padding=(1, 0), bias=False),
        nn.Flatten(),
        nn.Linear(4 * 5 * 2, 4),
    )
    return model.double().eval(), torch.randn(n, 2, 7, 7), torch.randint(0, 4, (n,))


def conv1d(n: int = 9):
    model = nn.Sequential(
        nn.Conv1d(3, 4, 3, padding=2, stride=2),
        nn.Tanh(),
        nn.Conv1d(4, 4, 2, groups=2, dilation=2),
        nn.Flatten(),
        nn.Linear(4 * 4, 3),
    )
    return model.double().eval(), torch.randn(n, 3, 9), torch.randint(0, 3, (n,))


class TokenNet(nn.Module):
    """Embedding (padding_idx) + LayerNorm + Linear on sequences + pooled head."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(12, 6, padding_idx=0)
        self.norm = nn.LayerNorm(6)
        self.proj = nn.Linear(6, 5)
        self.head = nn.Linear(5, 4)

    def forward(self, x):
        h = torch.tanh(self.proj(self.norm(self.emb(x))))
        return self.head(h.mean(1))


def tokens(n: int = 10):
    x = torch.randint(0, 12, (n, 5))
    x[0, :2] = 0  # padding tokens
    return TokenNet().double().eval(), x, torch.randint(0, 4, (n,))


class NormNet(nn.Module):
    """BatchNorm2d/1d (eval, non-trivial running statistics), GroupNorm and RMSNorm."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(2, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.c2 = nn.Conv2d(4, 4, 3, padding=1)
        self.gn = nn.GroupNorm(2, 4)
        self.fc = nn.Linear(16, 8)
        self.bn1 = nn.BatchNorm1d(8)
        self.rms = nn.RMSNorm(8)
        self.out = nn.Linear(8, 4)
        with torch.no_grad():
            for b in (self.bn, self.bn1):
                b.running_mean.uniform_(-0.5, 0.5)
                b.running_var.uniform_(0.5, 2.0)
                b.weight.uniform_(0.5, 1.5)
                b.bias.uniform_(-0.5, 0.5)

    def forward(self, x):
        h = torch.relu(self.bn(self.c1(x)))
        h = torch.tanh(self.gn(self.c2(h)))
        h = nn.functional.adaptive_avg_pool2d(h, 2).flatten(1)
        return self.out(self.rms(torch.tanh(self.bn1(self.fc(h)))))


def norms(n: int = 8):
    return NormNet().double().eval(), torch.randn(n, 2, 6, 6), torch.randint(0, 4, (n,))


class TiedAttention(nn.Module):
    """Tied input/output embeddings and an nn.MultiheadAttention block (generic route)."""

    def __init__(self):
        super().__init__()
        self.emb = nn.Embedding(10, 8)
        self.att = nn.MultiheadAttention(8, 2, batch_first=True)
        self.mix = nn.Linear(8, 8)
        self.out = nn.Linear(8, 10, bias=False)
        self.out.weight = self.emb.weight

    def forward(self, x):
        h = self.emb(x)
        h = h + self.att(h, h, h, need_weights=False)[0]
        return self.out(torch.tanh(self.mix(h)).mean(1))


def tied_attention(n: int = 7):
    return TiedAttention().double().eval(), torch.randint(0, 10, (n, 4)), torch.randint(0, 10, (n,))


ARCHS = {
    "mlp": mlp,
    "cnn": cnn,
    "conv1d": conv1d,
    "tokens": tokens,
    "norms": norms,
    "tied_attention": tied_attention,
}
