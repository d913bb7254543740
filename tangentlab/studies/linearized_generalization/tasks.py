"""Models, binary tasks and the shared training recipe of ``linearized-generalization``
(Ortiz-Jiménez, Moosavi-Dezfooli & Frossard, NeurIPS 2021).

* Scalar-output models in the standard parameterization with LeCun-normal weights and
  zero biases (:func:`lecun_init_`): the shared MLP
  (:func:`~tangentlab.studies.framework.models.make_mlp`, one output), :func:`make_lenet`
  (the paper's LeNet5 layout, 3×3 convolutions on inputs of side ≤ 16, 5×5 above) and the
  shared BN-free ResNet-18 for the paper preset.
* Binary tasks with labels in ``{±1}``: the "first half of the classes vs the second
  half" task (CIFAR2 / DIGITS2, :func:`half_classes`), the XOR task ``sign(x₁x₂)``
  (:func:`xor_task`), the linearly separable NAD task of eq. 5 (:func:`nad_task`).
* :func:`train_binary`: the recipe shared by networks and linearized models — SGD with
  momentum (or Adam), learning rate decayed linearly to 0 over all steps (or constant),
  minibatches of ``min(B, n)`` drawn from a seeded per-epoch permutation with the last
  partial batch dropped (the same order for every model trained with the same seed),
  logistic loss ``ℓ(z, y) = log(1 + e^{−yz})``; full training loss and accuracies after
  every epoch.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from ..framework.config import ConfigError
from ..framework.models import make_mlp, make_resnet
from ..framework.threads import torch_threads

NAD_ACTIVATIONS: dict[str, Callable[[], nn.Module]] = {"gelu": nn.GELU, "tanh": nn.Tanh, "relu": nn.ReLU}


# ---------------------------------------------------------------------------------------------
# models
# ---------------------------------------------------------------------------------------------
def lecun_init_(model: nn.Module) -> nn.Module:
    """LeCun-normal weights ``N(0, 1/fan_in)`` and zero biases on every Linear / Conv2d."""
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.normal_(m.weight, 0.0, m.weight[0].numel() ** -0.5)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model


def make_lenet(input_shape: Sequence[int], activation: str = "relu", dtype: torch.dtype = torch.float32
               ) -> nn.Sequential:
    """LeNet5 with one output: conv(6, k) → act → avgpool 2 → conv(16, k) → act → avgpool 2 →
    120 → act → 84 → act → 1, "same" padding, ``k = 3`` for inputs of side ≤ 16 (a small LeNet:
    18,989 parameters on 1×8×8) and 5 above (the paper's LeNet5)."""
    if activation not in NAD_ACTIVATIONS:
        raise ConfigError("activation", f"unknown activation {activation!r}", ", ".join(NAD_ACTIVATIONS))
    c, h, w = (int(s) for s in input_shape)
    if h < 4 or w < 4:
        raise ConfigError("model", f"LeNet needs images of side >= 4, got {h}x{w}", "mlp")
    k = 3 if max(h, w) <= 16 else 5
    act = NAD_ACTIVATIONS[activation]
    flat = 16 * (h // 2 // 2) * (w // 2 // 2)
    return nn.Sequential(
        nn.Conv2d(c, 6, k, padding=k // 2, dtype=dtype), act(), nn.AvgPool2d(2),
        nn.Conv2d(6, 16, k, padding=k // 2, dtype=dtype), act(), nn.AvgPool2d(2), nn.Flatten(),
        nn.Linear(flat, 120, dtype=dtype), act(), nn.Linear(120, 84, dtype=dtype), act(),
        nn.Linear(84, 1, dtype=dtype))


SCALAR_MODELS = ("mlp", "lenet", "resnet18")


def build_scalar_model(name: str, input_shape: Sequence[int], *, hidden: Sequence[int] = (100, 100),
                       activation: str = "relu", width: int = 64, seed: int = 0) -> nn.Module:
    """A scalar-output model seeded with ``seed``: ``mlp`` (flat inputs; LeCun init), ``lenet``
    (images; LeCun init) or ``resnet18`` (images; the shared BN-free ResNet-18, its own init)."""
    torch.manual_seed(seed)
    if name == "mlp":
        return lecun_init_(make_mlp(int(np.prod(input_shape)), tuple(hidden), 1, activation))
    if name == "lenet":
        return lecun_init_(make_lenet(input_shape, activation))
    if name == "resnet18":
        return make_resnet(18, int(input_shape[0]), 1, width)
    raise ConfigError("model", f"unknown model {name!r}", ", ".join(SCALAR_MODELS))


def flat_params(model: nn.Module) -> torch.Tensor:
    """All trainable parameters of ``model`` (for a :class:`~tangentlab.linearize.Linearized`:
    ``θ``) as one detached float64 vector, in ``parameters()`` order."""
    return torch.cat([p.detach().reshape(-1).to(torch.float64) for p in model.parameters() if p.requires_grad])


def distances(theta: torch.Tensor, theta0: torch.Tensor) -> dict[str, float]:
    """``l2_distance`` ``‖θ − θ₀‖``, its square, and ``cosine_distance`` ``1 − ⟨θ, θ₀⟩/(‖θ‖‖θ₀‖)``."""
    d = float((theta - theta0).norm())
    den = float(theta.norm() * theta0.norm())
    return {"l2_distance": d, "l2_distance_sq": d * d,
            "cosine_distance": 1.0 - float(theta @ theta0) / den if den > 0 else math.nan}


# ---------------------------------------------------------------------------------------------
# tasks
# ---------------------------------------------------------------------------------------------
def half_classes(y: torch.Tensor, n_classes: int) -> torch.Tensor:
    """CIFAR2/DIGITS2 labels: ``+1`` for the first ``⌈C/2⌉`` classes (0–4 of 10), ``−1`` otherwise."""
    return torch.where(y < (n_classes + 1) // 2, 1.0, -1.0).to(torch.float32)


def stratified_subset(y: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Indices of a class-stratified random subset of size ``n`` (all indices when ``n ≥ len(y)``;
    ``train_test_split(stratify=y, random_state=seed + 999)`` as in the authors' code)."""
    m = y.shape[0]
    if n >= m:
        return torch.arange(m)
    from sklearn.model_selection import train_test_split

    yy = y.cpu().numpy()
    counts = np.bincount(yy.astype(np.int64) if yy.dtype.kind in "iu" else (yy > 0).astype(np.int64))
    strat = yy if n >= len(counts) and counts.min() >= 2 else None
    idx, _ = train_test_split(np.arange(m), train_size=n, random_state=seed + 999, stratify=strat)
    return torch.as_tensor(np.sort(idx))


def xor_task(n: int, dim: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``x ∼ N(0, I_dim)``, ``y = sign(x₁ x₂)`` (float32 inputs, ±1 labels)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, dim, generator=g, dtype=torch.float32)
    return x, torch.where(x[:, 0] * x[:, 1] >= 0, 1.0, -1.0).to(torch.float32)


def nad_task(direction: torch.Tensor, n: int, input_shape: Sequence[int], eps: float, sigma: float, seed: int
             ) -> tuple[torch.Tensor, torch.Tensor]:
    """Eq. 5: ``x = ε y u + σ (I − uuᵀ) z`` with ``y`` uniform in ``{±1}``, ``z ∼ N(0, I)``
    (``u`` normalized; the authors' code uses ``ε/2``: pass ``eps/2`` for it)."""
    g = torch.Generator().manual_seed(seed)
    u = direction.reshape(-1).to(torch.float64)
    u = u / u.norm()
    y = torch.where(torch.rand(n, generator=g, dtype=torch.float64) < 0.5, -1.0, 1.0).to(torch.float64)
    z = torch.randn(n, u.numel(), generator=g, dtype=torch.float64)
    w = sigma * (z - (z @ u).unsqueeze(1) * u)
    x = eps * y.unsqueeze(1) * u + w
    return x.reshape(n, *[int(s) for s in input_shape]).float(), y.float()


# ---------------------------------------------------------------------------------------------
# training recipe
# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Recipe:
    """The optimization recipe shared by networks and their linearizations (see the module doc)."""

    epochs: int
    batch_size: int
    lr: float
    momentum: float = 0.9
    optimizer: str = "sgd"
    schedule: str = "linear"
    threshold: float = 0.01
    threads: int = 1


def logistic_loss(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean ``log(1 + exp(−y z))`` (binary cross-entropy on one logit, ±1 labels)."""
    return nn.functional.softplus(-y * z).mean()


@torch.no_grad()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, offset: torch.Tensor | None = None,
             batch_size: int = 2048) -> tuple[float, float]:
    """``(mean logistic loss, accuracy)`` of the logits ``model(x) − offset`` (``sign(z)`` vs ``y``,
    ``z = 0`` counted as +1)."""
    loss, hits = 0.0, 0
    for s in range(0, x.shape[0], batch_size):
        z = model(x[s:s + batch_size]).reshape(-1).to(y.dtype)
        if offset is not None:
            z = z - offset[s:s + batch_size]
        yb = y[s:s + batch_size]
        loss += float(nn.functional.softplus(-yb * z).sum())
        hits += int(((z >= 0) == (yb > 0)).sum())
    n = max(1, x.shape[0])
    return loss / n, hits / n


def train_binary(model: nn.Module, x: torch.Tensor, y: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                 recipe: Recipe, seed: int, *, offset: torch.Tensor | None = None,
                 offset_test: torch.Tensor | None = None,
                 on_epoch: Callable[[int, nn.Module], None] | None = None,
                 progress: bool | None = None, desc: str = "training") -> dict[str, Any]:
    """Train ``model`` (a network or a :class:`~tangentlab.linearize.Linearized`) in place with
    ``recipe`` on ``(x, y)`` (labels ±1); logits are ``model(x) − offset`` (``offset``: the
    unbiased linearization's ``f_{θ_c}(x)``). ``on_epoch(e, model)`` is called at ``e = 0``
    (before training) and after each epoch. Returns the per-epoch ``history`` (``train_loss``,
    ``train_accuracy``, ``test_loss``, ``test_accuracy``), the final values, ``converged_epoch``
    (first epoch with full training loss ``< threshold``, NaN if never) and
    ``converged_iteration`` (= that epoch × steps per epoch)."""
    from ...progress import progress as bar

    n = x.shape[0]
    bs = min(recipe.batch_size, n)
    steps = n // bs
    total = max(1, steps * recipe.epochs)
    params = [p for p in model.parameters() if p.requires_grad]
    if recipe.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=recipe.lr)
    else:
        opt = torch.optim.SGD(params, lr=recipe.lr, momentum=recipe.momentum)
    decay = recipe.schedule == "linear"
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: max(0.0, 1.0 - s / total) if decay else 1.0)
    gen = torch.Generator().manual_seed(int(seed))
    history: dict[str, list[float]] = {"train_loss": [], "train_accuracy": [], "test_loss": [], "test_accuracy": []}
    converged = math.nan
    with torch_threads(recipe.threads):
        if on_epoch is not None:
            on_epoch(0, model)
        for epoch in bar(range(recipe.epochs), desc, enabled=progress):
            model.train()
            perm = torch.randperm(n, generator=gen).to(x.device)
            for b in range(steps):
                idx = perm[b * bs:(b + 1) * bs]
                z = model(x[idx]).reshape(-1).to(y.dtype)
                if offset is not None:
                    z = z - offset[idx]
                loss = logistic_loss(z, y[idx])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                sched.step()
            model.eval()
            tl_, ta = evaluate(model, x, y, offset)
            vl, va = evaluate(model, x_test, y_test, offset_test)
            for k, v in zip(history, (tl_, ta, vl, va)):
                history[k].append(v)
            if math.isnan(converged) and tl_ < recipe.threshold:
                converged = epoch + 1
            if on_epoch is not None:
                on_epoch(epoch + 1, model)
    model.eval()
    last = {k: (v[-1] if v else math.nan) for k, v in history.items()}
    return {"history": history, **last, "converged_epoch": converged,
            "converged_iteration": converged * steps if not math.isnan(converged) else math.nan,
            "steps_per_epoch": steps}


def spearman(a: Sequence[float], b: Sequence[float]) -> float:
    """Spearman rank correlation (average ranks for ties; ``inf`` ranks last); NaN when undefined."""
    from scipy.stats import spearmanr

    a_, b_ = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    keep = ~(np.isnan(a_) | np.isnan(b_))
    if keep.sum() < 3:
        return math.nan
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # constant input: NaN
        r = spearmanr(a_[keep], b_[keep]).statistic
    return float(r) if np.isfinite(r) else math.nan
