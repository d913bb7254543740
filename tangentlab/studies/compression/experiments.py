"""The fixed-point and α-scan parts of the ``compression`` run (one resumable unit per seed).

* :func:`run_fixed_points` (§3.2.1, Fig. 3c): the single-stripe network in ``d = fp_d``
  trained up to t* (10 % of the margins met) at ``α = alpha``; per neuron, the neuron vector
  ``z = −√d b ω/‖ω‖²`` (its component ``z₁`` and ``‖z_⊥‖``), the amplification
  ``λ_n = ω₁/‖ω_⊥‖`` and the parameter norm, for comparison with the predicted attractors
  (:mod:`.theory`). Table ``fixed_points``.
* :func:`run_alpha_scan` (App. B, Fig. 11): the single stripe in ``d = alpha_d`` with
  ``p = alpha_p``, the same data and initialization for every ``α`` of ``alpha_values``
  (given the seed), trained to ``stop_fraction`` of the margins: t* (in units of h), Λ*,
  Λ_max and the test error; and kernel learning with the frozen initial NTK (α → ∞).
  Table ``alpha_scan``.
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch

from ...analysis.compression import (
    MeanFieldNet,
    NetParams,
    hinge_kernel_gd,
    init_params,
    kernel_svc,
    kernel_test_error,
    net_output,
    neuron_amplification,
)
from ...api import ntk
from .config import ALPHA_COLUMNS, ALPHA_KEY, FP_COLUMNS, FP_KEY, CompressionConfig
from .data import gaussian_task
from .training import FeatureRun, train_feature


def fit_kernel(cfg: CompressionConfig, K: torch.Tensor, y: torch.Tensor) -> Any:
    """Kernel learning with the configured solver (SVC or hinge kernel GD)."""
    if cfg.kernel_solver == "svc":
        return kernel_svc(K, y, cfg.svc_C)
    return hinge_kernel_gd(K, y, max_dout=0.1, max_steps=cfg.kernel_max_steps)


def _init(d: int, h: int, seed: int, offset: int, dev: torch.device) -> NetParams:
    P = init_params(d, h, torch.Generator().manual_seed(104_729 * seed + offset))
    return NetParams(P.w.to(dev), P.b.to(dev), P.beta.to(dev))


def _train(cfg: CompressionConfig, P0: NetParams, x: torch.Tensor, y: torch.Tensor, alpha: float,
           stop_fraction: float) -> tuple[FeatureRun, torch.Tensor]:
    f0 = net_output(P0, x)
    run = train_feature(FeatureRun(P0.clone()), x, y, f0, alpha, 1, max_dgrad=cfg.max_dgrad, max_dout=cfg.max_dout,
                        dt_min=cfg.dt_min, stop_fraction=stop_fraction, max_steps=cfg.max_steps)
    return run, f0


def neuron_rows(P: NetParams) -> list[dict[str, Any]]:
    """Per neuron: ``z₁``, ``‖z_⊥‖`` of ``z = −√d b ω/‖ω‖²``, ``λ_n = ω₁/‖ω_⊥‖`` and ``‖(ω, b, β)‖``."""
    d = P.w.shape[1]
    z = -math.sqrt(d) * P.b[:, None] * P.w / P.w.pow(2).sum(1, keepdim=True)
    lam = neuron_amplification(P.w, 1)
    norm = (P.w.pow(2).sum(1) + P.b.pow(2) + P.beta.pow(2)).sqrt()
    return [{"neuron": n, "z1": float(z[n, 0]), "z_perp": float(z[n, 1:].norm()), "lam": float(lam[n]),
             "norm": float(norm[n])} for n in range(P.w.shape[0])]


def run_fixed_points(study: Any) -> None:
    """The fixed-point part (see the module docstring): one unit per seed, done when its rows exist."""
    cfg, store = study.config, study.store
    table = store.table("fixed_points", FP_COLUMNS, FP_KEY)
    done = {int(float(r["seed"])) for r in store.read("fixed_points")}
    for seed in range(cfg.fp_seeds):
        if seed in done or not study.ctx.claim(f"fixed points s{seed}"):
            continue
        t0 = time.perf_counter()
        data = gaussian_task("stripe", cfg.fp_d, cfg.fp_p, 0, 0, seed).to(study.device)
        P0 = _init(cfg.fp_d, cfg.fp_width, seed, 3, study.device)
        run, _ = _train(cfg, P0, data.x_train, data.y_train, cfg.alpha, 0.1 + 1e-9)
        rows = [{"seed": seed, **r, "lambda_star": run.lambda_star, "t_star": run.t_star / cfg.fp_width}
                for r in neuron_rows(run.params)]
        table.append(rows)
        amp = sum(abs(r["lam"]) > cfg.fp_lambda_min for r in rows)
        study.log(f"compression: fixed points seed={seed}: Λ*={run.lambda_star:.3g}, {amp} of {cfg.fp_width} "
                  f"neurons with |λ| > {cfg.fp_lambda_min:g} ({time.perf_counter() - t0:.1f}s)")


def run_alpha_scan(study: Any) -> None:
    """The α-scan (see the module docstring): one unit per seed, done when its rows exist."""
    cfg, store = study.config, study.store
    table = store.table("alpha_scan", ALPHA_COLUMNS, ALPHA_KEY)
    done = {int(float(r["seed"])) for r in store.read("alpha_scan")}
    dev = study.device
    for seed in range(cfg.alpha_seeds):
        if seed in done or not study.ctx.claim(f"alpha scan s{seed}"):
            continue
        data = gaussian_task("stripe", cfg.alpha_d, cfg.alpha_p, cfg.n_test, 0, seed).to(dev)
        P0 = _init(cfg.alpha_d, cfg.alpha_width, seed, 5, dev)
        net0 = MeanFieldNet(P0).to(dev)
        K = ntk(net0, data.x_train, progress=False).as_matrix()
        fit = fit_kernel(cfg, K, data.y_train)
        lazy = kernel_test_error(ntk(net0, data.x_test, data.x_train, progress=False).as_matrix(), fit,
                                 data.y_test)
        f0_test = net_output(P0, data.x_test)
        rows = []
        for alpha in cfg.alpha_values:
            t0 = time.perf_counter()
            run, _ = _train(cfg, P0, data.x_train, data.y_train, alpha, cfg.stop_fraction)
            F = alpha * (net_output(run.params, data.x_test) - f0_test)
            err = float((data.y_test * F <= 0).double().mean())
            rows.append({"alpha": alpha, "seed": seed, "t_star": run.t_star / cfg.alpha_width,
                         "lambda_star": run.lambda_star, "lambda_max": run.lambda_max, "test_error": err,
                         "lazy_error": lazy, "steps": run.step, "stop": run.stop,
                         "wall_s": time.perf_counter() - t0})
        table.append(rows)
        study.log(f"compression: α-scan seed={seed}: " + ", ".join(
            f"α={r['alpha']:g} err={r['test_error']:.3f} Λ*={r['lambda_star']:.3g}" for r in rows)
            + f"; frozen initial NTK {lazy:.3f}")
