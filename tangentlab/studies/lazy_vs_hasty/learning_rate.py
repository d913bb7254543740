"""Part ``lr`` of ``lazy-vs-hasty``: the learning rate is not α (thesis App. C.5, Fig. C.1).

The label-noise setting of Fig. 5.2 (``noise_fraction`` of the training labels moved to another
class) trained from one initialization and one minibatch order per seed in two families of runs:

* α = 1 with the learning rate ``lr × f`` for each ``f`` of ``lr_factors`` (the thesis: 0.01, 0.003,
  1e-4, 1e-6, four orders of magnitude);
* ``AlphaScaled`` runs with α in ``lr_alphas`` and lr/α² (SGD's step size), one of which has the
  same step size ``lr/α² = lr × min(lr_factors)`` as the smallest-lr α = 1 run (the thesis: α = 100
  and lr = 1e-6).

Every run is evaluated on the whole training set (clean examples, noisy examples with their noisy
labels) and the held-out set every ``lr_eval_every / f`` steps (the same progress per evaluation
whatever the learning rate), and stops when the clean training loss reaches the smallest of
``lr_milestones``; the linearity metrics are measured at the first evaluation at or below each
milestone, so every comparison is at equal progress (clean loss). The step budget is
``lr_max_steps · √α / f``.

Before training, the first SGD step of α = 1 (lr), of the matched α (lr/α²) and of α = 1 at
lr/α² is taken from ``θ₀`` on the first minibatch: the parameter steps must be in the exact ratios
``1 : 1/α : 1/α²`` (§5.2: "gradient descent steps in parameter space are rescaled by 1/α while
steps in function space (up to first order) are in O(1) in α"); the function steps' ratios are
recorded too. The claims are in :mod:`.learning_rate_report`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ...analysis.linearity import LinearityProbe
from ...linearize import AlphaScaled
from ...training import BatchStream
from .config import LazyVsHastyConfig

#: The checks of the first step (``group = "check"`` rows of ``lr_curves``).
CHECKS = ("param_step_alpha", "param_step_lr", "function_step_alpha", "function_step_lr")


def lr_regimes(cfg: LazyVsHastyConfig) -> list[tuple[float, float]]:
    """``(alpha, lr_factor)`` of every run of part lr: α = 1 at each factor (largest first), then each α at lr."""
    return [(1.0, f) for f in sorted(set(cfg.lr_factors), reverse=True)] + [(a, 1.0) for a in sorted(cfg.lr_alphas)
                                                                            if a != 1.0]


def matched_alpha(cfg: LazyVsHastyConfig) -> float:
    """The α of ``lr_alphas`` whose rescaled step size lr/α² is the smallest factor's lr (validated by the config)."""
    target = 1.0 / math.sqrt(min(cfg.lr_factors))
    return min(cfg.lr_alphas, key=lambda a: abs(a - target))


def step_budget(cfg: LazyVsHastyConfig, alpha: float, factor: float) -> int:
    """``lr_max_steps · √α / factor`` steps."""
    return int(math.ceil(cfg.lr_max_steps * math.sqrt(alpha) / factor))


def eval_period(cfg: LazyVsHastyConfig, factor: float) -> int:
    """``lr_eval_every / factor`` steps (at least 1)."""
    return max(1, int(round(cfg.lr_eval_every / factor)))


def _flat_params(model: nn.Module) -> torch.Tensor:
    return torch.cat([p.detach().reshape(-1) for p in model.parameters()])


def first_step_checks(net0: nn.Module, alpha: float, lr: float, momentum: float, x: torch.Tensor, y: torch.Tensor,
                      x_probe: torch.Tensor, loss_fn: Callable, subtract_initial_output: bool) -> dict[str, float]:
    """One SGD step from ``θ₀`` on ``(x, y)`` of α = 1 at ``lr``, of α at ``lr/α²`` and of α = 1 at ``lr/α²``:

    * ``param_step_alpha = ‖α·Δθ_α − Δθ_1‖ / ‖Δθ_1‖`` (exactly 0: parameter steps scale as 1/α),
    * ``param_step_lr = ‖α²·Δθ_{lr/α²} − Δθ_1‖ / ‖Δθ_1‖`` (exactly 0),
    * ``function_step_alpha = ‖Δf_α‖ / ‖Δf_1‖`` on ``x_probe`` (→ 1 to first order: O(1) in α),
    * ``function_step_lr = α²·‖Δf_{lr/α²}‖ / ‖Δf_1‖`` (→ 1 to first order: the small lr only slows it down)."""
    steps, fsteps = {}, {}
    for name, a, step_lr in (("1", 1.0, lr), ("alpha", alpha, lr), ("lr", 1.0, lr / alpha ** 2)):
        model = AlphaScaled(copy.deepcopy(net0), a, subtract_initial_output=subtract_initial_output)
        opt = torch.optim.SGD(model.parameters(), lr=model.scaled_lr(step_lr), momentum=momentum)
        with torch.no_grad():
            f0 = model(x_probe)
        p0 = _flat_params(model)
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x), y).backward()
        opt.step()
        steps[name] = _flat_params(model) - p0
        with torch.no_grad():
            fsteps[name] = float((model(x_probe) - f0).norm())
    ref = float(steps["1"].norm())
    return {"param_step_alpha": float((alpha * steps["alpha"] - steps["1"]).norm()) / ref,
            "param_step_lr": float((alpha ** 2 * steps["lr"] - steps["1"]).norm()) / ref,
            "function_step_alpha": fsteps["alpha"] / fsteps["1"],
            "function_step_lr": alpha ** 2 * fsteps["lr"] / fsteps["1"]}


def train_to_milestones(cfg: LazyVsHastyConfig, net0: nn.Module, alpha: float, factor: float, x: torch.Tensor,
                        y: torch.Tensor, evaluate: Callable[[nn.Module], dict[str, float]], loss_fn: Callable,
                        lin_probe: LinearityProbe | None, stream_seed: int) -> list[dict[str, Any]]:
    """Train ``AlphaScaled(θ₀, α)`` by SGD (step size ``lr·factor/α²``, momentum) on the seeded
    minibatch stream; every :func:`eval_period` steps ``evaluate`` (``{"metric/group": value}``) and,
    at the first evaluation at or below each of ``lr_milestones`` (clean loss), the linearity
    metrics. Stops at the smallest milestone or after :func:`step_budget` steps. Rows: ``probe,
    step, group, metric, value``."""
    model = AlphaScaled(copy.deepcopy(net0), alpha, subtract_initial_output=cfg.subtract_initial_output)
    opt = torch.optim.SGD(model.parameters(), lr=model.scaled_lr(cfg.lr * factor), momentum=cfg.momentum)
    stream = BatchStream(x.shape[0], min(cfg.batch_size, x.shape[0]), stream_seed)
    todo = sorted(cfg.lr_milestones, reverse=True)
    period, budget = eval_period(cfg, factor), step_budget(cfg, alpha, factor)
    rows: list[dict[str, Any]] = []
    n_probe = 0
    for step in range(budget + 1):
        if step % period == 0 or step == budget:
            model.eval()
            with torch.no_grad():
                vals = evaluate(model)
            crossed = False
            while todo and vals["loss/clean"] <= todo[0]:
                todo.pop(0)
                crossed = True
            if lin_probe is not None and (crossed or step == 0):
                vals.update({f"{k}/linearity": v for k, v in lin_probe.measure(model).items()})
            for key, v in vals.items():
                metric, group = key.split("/", 1)
                rows.append({"probe": n_probe, "step": step, "group": group, "metric": metric, "value": v})
            n_probe += 1
            if not todo or not math.isfinite(vals["loss/clean"]):
                break
            model.train()
        if step == budget:
            break
        idx = stream.next().to(x.device)
        opt.zero_grad(set_to_none=True)
        loss_fn(model(x[idx]), y[idx]).backward()
        opt.step()
    return rows
