"""Feature-regime training of the ``compression`` study: full-batch gradient descent on the
α-normalized hinge loss of the network of Eq. (1) (Paccolat et al., "Geometric compression of
invariant manifolds in neural nets"), in the paper's time ``t`` (Eq. 2: ``dW/dt = −∇L``, the
learning rate is ``dt``).

``dt`` is adapted by the paper's integrator rule: a step is accepted when the relative
gradient change ``‖g − g'‖²/(‖g‖‖g'‖) < max_dgrad`` and no training output moves by more than
``max_dout·max(1, |F_μ|)``; ``dt ×1.1`` when both are below half, ``÷10`` and retry otherwise.
Two deviations from the released code, both needed on CPU: the gradient is discontinuous
(ReLU kinks, the hinge), so below ``dt_min·h`` the ``dgrad`` rule is waived (``dout`` still
applies; without it ``dt`` collapses to zero after t*), and the ``dout`` bound is relative for
outputs beyond the margin scale 1. ``t*`` is the first time more than 10 % of the training
points have ``y F ≥ 1``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import torch

from ...analysis.compression import SQRT2, NetParams, amplification, hinge_velocity, preactivations


@dataclass
class FeatureRun:
    """State and results of one feature-regime training run.

    :meth:`state_dict` / :meth:`load_state_dict` make it the "model" of a
    :class:`~tangentlab.studies.framework.training.TrainingCheckpoint`."""

    params: NetParams
    t: float = 0.0
    dt: float = 1.0
    step: int = 0
    t_star: float = math.nan
    lambda_star: float = math.nan
    lambda_max: float = 0.0
    fitted: float = 0.0
    stop: str = ""
    trajectory: list[dict[str, float]] = field(default_factory=list)

    def state_dict(self) -> dict[str, Any]:
        """Parameters, clock, step, Λ statistics and the trajectory logged so far."""
        return {"params": self.params.state(), "t": self.t, "dt": self.dt, "step": self.step, "t_star": self.t_star,
                "lambda_star": self.lambda_star, "lambda_max": self.lambda_max, "fitted": self.fitted,
                "trajectory": self.trajectory}

    def load_state_dict(self, s: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (parameters moved to the device of the current ones)."""
        p, dev = s["params"], self.params.w.device
        self.params = NetParams(p["w"].to(dev), p["b"].to(dev), p["beta"].to(dev))
        self.t, self.dt, self.step = s["t"], s["dt"], s["step"]
        self.t_star, self.lambda_star, self.lambda_max, self.fitted = (s["t_star"], s["lambda_star"],
                                                                       s["lambda_max"], s["fitted"])
        self.stop, self.trajectory = "", list(s["trajectory"])


def _flat(v: NetParams) -> torch.Tensor:
    return torch.cat([v.w.flatten(), v.b, v.beta])


def train_feature(run: FeatureRun, x: torch.Tensor, y: torch.Tensor, f0: torch.Tensor, alpha: float, d_par: int, *,
                  max_dgrad: float, max_dout: float, dt_min: float, stop_fraction: float, max_steps: int,
                  on_checkpoint: Any = None, checkpoint_every: int = 500, bar: Any = None) -> FeatureRun:
    """Gradient descent on the α-normalized hinge loss from ``run`` (see the module docstring),
    until a fraction ``stop_fraction`` of the margins ``y F ≥ 1`` is met or ``max_steps``;
    ``on_checkpoint(run)`` every ``checkpoint_every`` steps.

    ``dt_min`` is in units of h. Λ(t) is logged at steps ≥ 1.1× the previous logged one,
    at t* and at the end."""
    h = run.params.h
    p = x.shape[0]
    floor = dt_min * h
    work = torch.empty(3, p, h, dtype=x.dtype, device=x.device)  # u, relu(u), Θ(u): reused by every evaluation

    def evaluate(P: NetParams) -> tuple[torch.Tensor, NetParams, torch.Tensor]:
        u = preactivations(P, x, out=work[0])
        r = torch.clamp_min(u, 0.0, out=work[1])
        F = alpha * ((SQRT2 / h) * (r @ P.beta) - f0)
        v, active = hinge_velocity(P, x, y, F, u, r, buf=work[2])
        return F, v, active

    def log(P: NetParams) -> None:
        run.trajectory.append({"step": run.step, "t": run.t, "lambda": amplification(P.w, d_par),
                               "fitted": run.fitted})

    P = run.params
    F, v, active = evaluate(P)
    run.fitted = 1.0 - float(active.sum()) / p
    if run.step == 0 and not run.trajectory:
        run.lambda_max = amplification(P.w, d_par)
        log(P)
    next_log = max(1, int(run.trajectory[-1]["step"] * 1.1) if run.trajectory else 1)
    while True:
        if run.fitted >= stop_fraction - 1e-12:
            run.stop = "all margins met" if run.fitted >= 1.0 else f"{stop_fraction:.0%} of margins met"
            break
        if run.step >= max_steps:
            run.stop = "max_steps"
            break
        g = _flat(v)
        if float(g.norm()) == 0.0:  # pragma: no cover - every active point has zero gradient
            run.stop = "zero gradient"
            break
        while True:
            Q = NetParams(P.w + run.dt * v.w, P.b + run.dt * v.b, P.beta + run.dt * v.beta)
            F2, v2, active2 = evaluate(Q)
            g2 = _flat(v2)
            den = float(g.norm() * g2.norm())
            dgrad = float((g - g2).pow(2).sum()) / den if den > 0 else math.inf
            dout = float(((F2 - F).abs() / F.abs().clamp_min(1.0)).max())
            if dout < max_dout and (dgrad < max_dgrad or run.dt <= floor):
                break
            run.dt = run.dt / 10 if (run.dt <= floor or dout >= max_dout) else max(run.dt / 10, floor)
        grow = (dgrad < max_dgrad / 2 or run.dt < floor) and dout < max_dout / 2
        P, F, v, active = Q, F2, v2, active2
        run.params = P
        run.t += run.dt
        run.step += 1
        if grow:
            run.dt *= 1.1
        run.fitted = 1.0 - float(active.sum()) / p
        lam = amplification(P.w, d_par)
        run.lambda_max = max(run.lambda_max, lam)
        star = math.isnan(run.t_star) and run.fitted > 0.1
        if star:
            run.t_star, run.lambda_star = run.t, lam
        if star or run.step >= next_log:
            log(P)
            next_log = max(run.step + 1, int(run.step * 1.1))
        if bar is not None:
            bar.update(1)
        if on_checkpoint is not None and run.step % checkpoint_every == 0:
            on_checkpoint(run)
    if run.trajectory[-1]["step"] != run.step:
        log(P)
    return run

