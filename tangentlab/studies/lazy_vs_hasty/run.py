"""The run of ``lazy-vs-hasty``: :class:`LazyVsHasty` trains the α-scaled regimes part by part.

Every comparison trains the *same* initialization ``θ₀`` with
:class:`~tangentlab.linearize.AlphaScaled` ``f^α = f_{θ₀} + α(f_θ − f_{θ₀})`` and learning rate
``η/α²`` on the same minibatch sequence (:meth:`LazyVsHasty.train_regime`); probes fire when the
minibatch loss crosses ``L₀·0.96^k`` (the authors' code). Parts (one method each, called by
:meth:`LazyVsHasty.run`): the yin-yang toy (Fig. 5.1), C-score deciles (Fig. 5.2 top), label noise
(Fig. 5.2 bottom), spurious features (Fig. 5.3) and the quadratic model (§5.4, Fig. 5.4, Fig. C.9).
Every part is split into resumable work units (a toy seed, one regime of a digits part, one
quadratic example) recorded in ``tables/units.csv``.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ...analysis.linearity import LinearityProbe, group_metrics, per_example_loss
from ...linearize import AlphaScaled
from ...progress import progress
from ...training import BatchStream
from ..framework.config import ConfigError
from ..framework.data import load_digits_split
from ..framework.datasets import load_cifar10_arrays
from ..framework.models import make_mlp, make_resnet
from ..framework.report import ReportContent
from ..framework.runner import Study
from .config import (
    CHECK_COLUMNS,
    CHECK_KEY,
    CSCORE_COLUMNS,
    CURVE_COLUMNS,
    CURVE_KEY,
    LR_COLUMNS,
    LR_KEY,
    MAP_COLUMNS,
    MAP_KEY,
    MILESTONE_COLUMNS,
    MILESTONE_KEY,
    PARTS,
    QUAD_COLUMNS,
    QUAD_KEY,
    TITLE,
    UNIT_COLUMNS,
    LazyVsHastyConfig,
    torch_dtype,
)
from .data import (
    estimate_cscores,
    flip_labels,
    loss_thresholds,
    quantile_bins,
    spurious_digits,
    spurious_images,
    yin_yang,
    yin_yang_label,
)
from .figures import build_report
from .learning_rate import first_step_checks, lr_regimes, matched_alpha, train_to_milestones
from .quadratic import (
    QuadraticModel,
    example1,
    example2,
    example3,
    first_time_below,
    half_error_times,
    two_layer_dynamics,
)


def bce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Mean binary cross-entropy with logits of a single-output model (labels ``{0, 1}``)."""
    return nn.functional.binary_cross_entropy_with_logits(out.reshape(-1), y.to(out.dtype).reshape(-1))


def ce(out: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return nn.functional.cross_entropy(out, y)


class LazyVsHasty(Study):
    """Linearized vs non-linear training at equal progress (see :mod:`tangentlab.studies.lazy_vs_hasty`)."""

    name = "lazy-vs-hasty"
    parallel = True
    title = TITLE
    description = "α-scaled training at equal progress: toy, C-scores, label noise, spurious features, quadratic model"
    config_class = LazyVsHastyConfig
    config: LazyVsHastyConfig

    # ---- bookkeeping -------------------------------------------------------------------------
    def _units(self):
        return self.store.table("units", UNIT_COLUMNS, ["unit"])

    def _done(self, unit: str) -> bool:
        return (unit,) in self._units()

    def _take(self, unit: str) -> bool:
        """Whether this process does ``unit`` now: not finished (by any rank, in any session) and
        claimed by this rank (always, with one process)."""
        return not self._done(unit) and self.ctx.claim(unit)

    def _finish(self, unit: str, t0: float) -> None:
        self._units().append([{"unit": unit, "seconds": time.perf_counter() - t0}])

    @property
    def _show(self) -> bool | None:
        return self.config.progress_flag

    def run(self) -> None:
        """The configured parts, in the order of :data:`~.config.PARTS`."""
        runners: dict[str, Callable[[], None]] = {"toy": self.run_toy, "cscores": self.run_cscores,
                                                  "noise": self.run_noise, "lr": self.run_lr,
                                                  "spurious": self.run_spurious,
                                                  "quadratic": self.run_quadratic}
        for part in PARTS:
            if part in self.config.parts:
                t0 = time.perf_counter()
                runners[part]()
                self.log(f"lazy-vs-hasty: part {part} took {time.perf_counter() - t0:.1f}s")

    # ---- generic α-scaled training with probes at loss thresholds -------------------------------
    def train_regimes(self, curves, part: str, schedule: Sequence[tuple[float, int]], net0: nn.Module,
                       x: torch.Tensor, y: torch.Tensor, loss_fn: Callable,
                       evaluate: Callable[[nn.Module], dict[str, float]], probe: LinearityProbe | None,
                       stream_seed: int) -> None:
        """One resumable unit ``part/α`` per ``(α, steps)`` of ``schedule``: :meth:`train_regime` rows
        appended to ``curves``; finished units are skipped."""
        for alpha, steps in schedule:
            unit = f"{part}/{alpha}"
            if not self._take(unit):
                continue
            t0 = time.perf_counter()
            curves.append(self.train_regime(part, 0, alpha, net0, x, y, loss_fn, steps, evaluate, probe,
                                             stream_seed))
            self._finish(unit, t0)

    def train_regime(self, part: str, seed: int, alpha: float, net0: nn.Module, x: torch.Tensor, y: torch.Tensor,
                      loss_fn: Callable, steps: int, evaluate: Callable[[nn.Module], dict[str, float]],
                      lin_probe: LinearityProbe | None, stream_seed: int) -> list[dict[str, Any]]:
        """Train ``AlphaScaled(copy of net0, α)`` by SGD(``lr/α²``, momentum) on seeded minibatches;
        probe (``evaluate``: ``{"group/metric": value}``) at step 0, whenever the minibatch loss
        crosses the next ``L₀·ratio^k`` and at the end; linearity metrics every k-th probe."""
        cfg = self.config
        model = AlphaScaled(copy.deepcopy(net0), alpha, subtract_initial_output=cfg.subtract_initial_output)
        opt = torch.optim.SGD(model.parameters(), lr=model.scaled_lr(cfg.lr), momentum=cfg.momentum)
        stream = BatchStream(x.shape[0], min(cfg.batch_size, x.shape[0]), stream_seed)
        rows: list[dict[str, Any]] = []
        n_probe = 0

        def probe(step: int) -> None:
            nonlocal n_probe
            model.eval()
            with torch.no_grad():
                vals = evaluate(model)
            if lin_probe is not None and (n_probe % cfg.linearity_every == 0 or step == steps):
                vals.update({f"{k}/linearity": v for k, v in lin_probe.measure(model).items()})
            for key, v in vals.items():
                metric, group = key.split("/", 1)  # group_metrics keys: "<metric>/<group>"
                rows.append({"part": part, "seed": seed, "alpha": alpha, "probe": n_probe, "step": step,
                             "group": group, "metric": metric, "value": v})
            n_probe += 1
            model.train()

        probe(0)
        thresholds: list[float] = []
        it = 0
        model.train()

        for step in progress(range(1, steps + 1), f"lazy-vs-hasty: {part} α={alpha:g}", enabled=self._show):
            idx = stream.next().to(x.device)
            opt.zero_grad(set_to_none=True)
            loss = loss_fn(model(x[idx]), y[idx])
            loss.backward()
            opt.step()
            lv = float(loss.detach())
            if step == 1:
                thresholds = loss_thresholds(lv, 1e-4, cfg.probe_ratio)
            if not math.isfinite(lv):
                self.log(f"lazy-vs-hasty: {part} seed {seed} alpha {alpha}: loss diverged at step {step}")
                break
            crossed = False
            while it < len(thresholds) and lv <= thresholds[it]:
                it += 1
                crossed = True
            if crossed and step != steps:
                probe(step)
        probe(step)
        return rows

    def _init_net(self, seed: int, n_in: int, n_out: int, hidden: Sequence[int], dtype: torch.dtype) -> nn.Module:
        """θ₀ seeded with ``seed``: the ReLU MLP ``n_in``-``hidden``-``n_out``, or the BN-free ResNet-18 (``model``)."""
        torch.manual_seed(seed)
        if self.config.model == "resnet18":
            return make_resnet(18, 3, n_out, width=self.config.resnet_width, dtype=dtype).to(self.device)
        return make_mlp(n_in, tuple(hidden), n_out, "relu", dtype).to(self.device)

    def _data(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """Training and held-out inputs/labels of parts cscores/noise: the digits split, or CIFAR-10's
        training batches 0–39,999 / 40,000–49,999 (the C-scores exist for the training set only;
        standardized per channel with the first 40,000 images' statistics)."""
        cfg = self.config
        dt = torch_dtype(cfg.dtype)
        if cfg.dataset == "cifar10":
            xa, ya = load_cifar10_arrays(cfg.data_dir, "train")
            n_tr = (4 * xa.shape[0]) // 5  # 40,000 of the 50,000 training images
            xa = xa.astype(np.float32) / 255.0
            mean = xa[:n_tr].mean((0, 2, 3), keepdims=True)
            std = xa[:n_tr].std((0, 2, 3), keepdims=True)
            xa = (xa - mean) / std
            x, y = torch.as_tensor(xa[:n_tr]), torch.as_tensor(ya[:n_tr])
            xt, yt = torch.as_tensor(xa[n_tr:]), torch.as_tensor(ya[n_tr:])
            return x.to(self.device, dt), y.to(self.device), xt.to(self.device, dt), yt.to(self.device)
        split = load_digits_split(cfg.seed, "flat")
        return (split.x_train.to(self.device, dt), split.y_train.to(self.device), split.x_test.to(self.device, dt),
                split.y_test.to(self.device))

    def _eval_subset(self, n: int, groups: dict[str, torch.Tensor]) -> torch.Tensor:
        """Indices evaluated at each probe: all ``n`` examples, or (``eval_per_group > 0``) at most that many
        per group (seeded, as the authors' 1000 per decile)."""
        k = self.config.eval_per_group
        if k <= 0:
            return torch.arange(n, device=self.device)
        rng = np.random.default_rng(1337)
        keep = set()
        for mask in groups.values():
            idx = np.nonzero(mask.cpu().numpy())[0]
            keep.update(rng.choice(idx, min(k, idx.size), replace=False).tolist())
        return torch.as_tensor(sorted(keep), device=self.device)

    def _outputs(self, model: nn.Module, x: torch.Tensor, chunk: int = 2048) -> torch.Tensor:
        """``model(x)`` in chunks of ``chunk`` examples."""
        return torch.cat([model(x[i:i + chunk]) for i in range(0, x.shape[0], chunk)])

    def _lin_probe(self, net0: nn.Module, x_test: torch.Tensor) -> LinearityProbe:
        """The linearity metrics against ``net0`` on the first ``n_linearity`` held-out examples."""
        return LinearityProbe(net0, x_test[:self.config.n_linearity])

    # ---- part 1: toy ------------------------------------------------------------------------------
    def run_toy(self) -> None:
        """Fig. 5.1: per yin-yang seed, full-batch GD with α = 1 and 100 from one θ₀; the grid loss at each
        training-loss milestone (``Δloss`` map), the steps to reach it, and the training curve."""
        cfg, store = self.config, self.store
        curves = store.table("curves", CURVE_COLUMNS, CURVE_KEY)
        maps = store.table("toy_maps", MAP_COLUMNS, MAP_KEY)
        miles = store.table("milestones", MILESTONE_COLUMNS, MILESTONE_KEY)
        g = cfg.toy_grid
        lin = torch.linspace(-1, 1, g, dtype=torch.float64)
        gx1, gx2 = torch.meshgrid(lin, lin, indexing="xy")  # rows: x2, columns: x1
        grid = torch.stack([gx1.reshape(-1), gx2.reshape(-1)], 1).to(self.device)
        y_grid = torch.as_tensor(yin_yang_label(grid.cpu().numpy())).to(self.device)

        for seed in progress(range(cfg.toy_seeds), "lazy-vs-hasty: yin-yang seeds", enabled=self._show):
            unit = f"toy/{seed}"
            if not self._take(unit):
                continue
            t0 = time.perf_counter()
            x, y = yin_yang(cfg.toy_n, cfg.seed * 1000 + seed)
            x, y = x.to(self.device), y.to(self.device)
            net0 = self._init_net(cfg.seed * 1000 + seed, 2, 1, cfg.toy_hidden, torch.float64)
            rows, mrows, losses = [], [], {}
            for alpha in (1.0, 100.0):
                grid_loss, steps_at, train_rows = self._toy_regime(net0, alpha, x, y, grid, y_grid)
                losses[alpha] = grid_loss
                for k, s in steps_at.items():
                    mrows.append({"seed": seed, "alpha": alpha, "milestone": k, "step": s})
                rows += [{"part": "toy", "seed": seed, "alpha": alpha, "probe": i, "step": s, "group": "train",
                          "metric": "loss", "value": v} for i, (s, v) in enumerate(train_rows)]
            map_rows = []
            for m in cfg.toy_milestones:
                if m in losses[1.0] and m in losses[100.0]:
                    d = (losses[1.0][m] - losses[100.0][m]).cpu().numpy()
                    for j in range(g * g):
                        map_rows.append({"seed": seed, "milestone": m, "ix": j % g, "iy": j // g,
                                         "x1": float(grid[j, 0]), "x2": float(grid[j, 1]), "delta_loss": float(d[j])})
            maps.append(map_rows)
            miles.append(mrows)
            curves.append(rows)
            self._finish(unit, t0)

    def _toy_regime(self, net0: nn.Module, alpha: float, x: torch.Tensor, y: torch.Tensor, grid: torch.Tensor,
                    y_grid: torch.Tensor):
        """Full-batch GD of ``AlphaScaled(θ₀, α)`` until every milestone is reached (or ``toy_max_steps``):
        the grid losses at each milestone, the step of each milestone, and ``(step, loss)`` at log-spaced steps."""
        cfg = self.config
        model = AlphaScaled(copy.deepcopy(net0), alpha, subtract_initial_output=cfg.subtract_initial_output)
        opt = torch.optim.SGD(model.parameters(), lr=model.scaled_lr(cfg.toy_lr))
        todo = sorted(cfg.toy_milestones, reverse=True)
        grid_loss: dict[float, torch.Tensor] = {}
        steps_at: dict[float, int] = {m: -1 for m in todo}
        log_steps = set(np.unique(np.round(np.geomspace(1, cfg.toy_max_steps, 60))).astype(int).tolist())
        train_rows: list[tuple[int, float]] = []
        for step in range(cfg.toy_max_steps + 1):
            opt.zero_grad(set_to_none=True)
            loss = bce(model(x), y)
            lv = float(loss.detach())
            if step == 0 or step in log_steps:
                train_rows.append((step, lv))
            while todo and lv <= todo[0]:
                with torch.no_grad():
                    grid_loss[todo[0]] = per_example_loss(model(grid), y_grid)[0]
                steps_at[todo[0]] = step
                train_rows.append((step, lv))
                todo.pop(0)
            if not todo or step == cfg.toy_max_steps:
                if step not in log_steps:
                    train_rows.append((step, lv))
                break
            loss.backward()
            opt.step()
        # deduplicate (a step may be logged twice), keep order
        seen, uniq = set(), []
        for s, v in train_rows:
            if s not in seen:
                seen.add(s)
                uniq.append((s, v))
        return grid_loss, steps_at, uniq

    # ---- part 2: C-scores ------------------------------------------------------------------------
    def _cscores(self, x: torch.Tensor, y: torch.Tensor) -> np.ndarray:
        """Decile (bin) of every training example, computed once and cached in ``tables/cscores.csv``:
        estimated by definition on digits, read from ``cifar10-cscores-orig-order.npz`` on CIFAR-10."""
        cfg = self.config
        table = self.store.table("cscores", CSCORE_COLUMNS, ["index"])
        rows = table.read()
        if len(rows) == x.shape[0]:
            return np.array([int(r["decile"]) for r in sorted(rows, key=lambda r: int(r["index"]))])
        if cfg.dataset == "cifar10":
            path = next(Path(cfg.data_dir).rglob("cifar10-cscores-orig-order.npz"))
            npz = np.load(path)
            score = np.asarray(npz["scores"], dtype=np.float64)[:x.shape[0]]
            if "labels" in npz and not np.array_equal(np.asarray(npz["labels"])[:x.shape[0]], y.cpu().numpy()):
                raise ConfigError("data_dir", f"{str(path)!r}: its labels do not match the CIFAR-10 training batches "
                                  "(expected the original order)", "the npz of pluskid/structural-regularity")
            soft = score.copy()
        else:
            score, soft = estimate_cscores(x.double().cpu().numpy(), y.cpu().numpy(), cfg.cscore_ratios,
                                           cfg.cscore_subsets, cfg.seed + 17, cfg.cscore_c, show=self._show)
        bins = quantile_bins(score, soft, cfg.n_bins)
        table.append([{"index": i, "label": int(y[i]), "score": float(score[i]), "soft": float(soft[i]),
                       "decile": int(bins[i])} for i in range(x.shape[0])])
        return bins

    def run_cscores(self) -> None:
        """Fig. 5.2 top: loss and accuracy per C-score decile, α = 1 vs 100 (C-scores cached in ``cscores``)."""
        cfg = self.config
        curves = self.store.table("curves", CURVE_COLUMNS, CURVE_KEY)
        x, y, xt, yt = self._data()
        bins = torch.as_tensor(self.ctx.once(lambda: self._cscores(x, y))).to(self.device)  # rank 0 estimates
        groups = {f"decile{b}": bins == b for b in range(cfg.n_bins)}
        sub = self._eval_subset(x.shape[0], groups)
        xe, ye, ge = x[sub], y[sub], {k: v[sub] for k, v in groups.items()}
        net0 = self._init_net(cfg.seed + 1, x.shape[1], 10, cfg.hidden, x.dtype)
        probe = self._lin_probe(net0, xt)

        def evaluate(model: nn.Module) -> dict[str, float]:
            vals = group_metrics(self._outputs(model, xe), ye, {"train": torch.ones_like(ye, dtype=torch.bool), **ge})
            vals.update(group_metrics(self._outputs(model, xt), yt, {"test": torch.ones_like(yt, dtype=torch.bool)}))
            return vals

        self.train_regimes(curves, "cscores", ((1.0, cfg.steps_alpha1), (100.0, cfg.steps_alpha100)),
                            net0, x, y, ce, evaluate, probe, cfg.seed + 2)

    # ---- part 3: label noise ------------------------------------------------------------------------
    def run_noise(self) -> None:
        """Fig. 5.2 bottom: clean, noisy (with their noisy labels) and test loss with ``noise_fraction`` of the
        labels moved to another class, α = 1 (twice the steps) vs 100 (4/3 of the steps)."""
        cfg = self.config
        curves = self.store.table("curves", CURVE_COLUMNS, CURVE_KEY)
        x, y, xt, yt = self._data()
        yn, noisy = flip_labels(y.cpu(), cfg.noise_fraction, 10, cfg.seed + 23)
        yn, noisy = yn.to(self.device), noisy.to(self.device)
        sub = self._eval_subset(x.shape[0], {"clean": ~noisy, "noisy": noisy})
        xe, ye, ne = x[sub], yn[sub], noisy[sub]
        net0 = self._init_net(cfg.seed + 3, x.shape[1], 10, cfg.hidden, x.dtype)
        probe = self._lin_probe(net0, xt)

        def evaluate(model: nn.Module) -> dict[str, float]:
            vals = group_metrics(self._outputs(model, xe), ye, {"train": torch.ones_like(ne), "clean": ~ne,
                                                                "noisy": ne})
            vals.update(group_metrics(self._outputs(model, xt), yt, {"test": torch.ones_like(yt, dtype=torch.bool)}))
            return vals

        self.train_regimes(curves, "noise", ((1.0, 2 * cfg.steps_alpha1), (100.0, (4 * cfg.steps_alpha100) // 3)),
                            net0, x, yn, ce, evaluate, probe, cfg.seed + 4)

    # ---- part lr: the learning rate is not α ---------------------------------------------------------
    def run_lr(self) -> None:
        """App. C.5 (Fig. C.1): per seed, the label-noise setting with α = 1 at ``lr × lr_factors`` and the
        α-scaled runs at lr/α², to the clean-loss milestones (:mod:`.learning_rate`), and the first-step checks."""
        cfg = self.config
        table = self.store.table("lr_curves", LR_COLUMNS, LR_KEY)
        x, y, xt, yt = self._data()
        for seed in range(cfg.lr_seeds):
            unit = f"lr/{seed}"
            if not self._take(unit):
                continue
            t0 = time.perf_counter()
            yn, noisy = flip_labels(y.cpu(), cfg.noise_fraction, 10, cfg.seed * 1000 + 29 + seed)
            yn, noisy = yn.to(self.device), noisy.to(self.device)
            net0 = self._init_net(cfg.seed * 1000 + 31 + seed, x.shape[1], 10, cfg.hidden, x.dtype)
            probe = self._lin_probe(net0, xt)

            def evaluate(model: nn.Module) -> dict[str, float]:
                vals = group_metrics(self._outputs(model, x), yn, {"clean": ~noisy, "noisy": noisy})
                everyone = torch.ones_like(yt, dtype=torch.bool)
                vals.update(group_metrics(self._outputs(model, xt), yt, {"test": everyone}))
                return vals

            first = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:cfg.batch_size]
            checks = first_step_checks(net0, matched_alpha(cfg), cfg.lr, cfg.momentum, x[first.to(x.device)],
                                       yn[first.to(x.device)], xt[:cfg.n_linearity], ce, cfg.subtract_initial_output)
            rows = [{"seed": seed, "alpha": matched_alpha(cfg), "lr_factor": min(cfg.lr_factors), "probe": -1,
                     "step": 0, "group": "check", "metric": k, "value": v} for k, v in checks.items()]
            for alpha, factor in progress(lr_regimes(cfg), f"lazy-vs-hasty: lr seed {seed}", enabled=self._show):
                rows += [{"seed": seed, "alpha": alpha, "lr_factor": factor, **r} for r in train_to_milestones(
                    cfg, net0, alpha, factor, x, yn, evaluate, ce, probe, cfg.seed * 1000 + 37 + seed)]
            table.append(rows)
            self._finish(unit, t0)

    # ---- part 4: spurious correlations ---------------------------------------------------------------
    def run_spurious(self) -> None:
        """Fig. 5.3: with / without the spurious feature on a balanced training subset and a balanced test
        set, α ∈ {0.5, 1, 100}."""
        cfg = self.config
        curves = self.store.table("curves", CURVE_COLUMNS, CURVE_KEY)
        if cfg.spurious_dataset == "digits":
            data = spurious_digits(cfg.seed, cfg.spurious_agree, strength=cfg.spurious_strength,
                                   dtype=torch_dtype(cfg.dtype))
        else:
            data = spurious_images(cfg.spurious_dataset, cfg.data_dir, cfg.seed, cfg.image_size, cfg.max_per_group,
                                   cfg.balanced_per_group, torch_dtype(cfg.dtype), show=self._show,
                                   max_train=cfg.max_train)[0]
            if cfg.model == "mlp":  # flattened pixels
                data.x_train, data.x_test = data.x_train.flatten(1), data.x_test.flatten(1)
        x, y = data.x_train.to(self.device), data.y_train.to(self.device)
        xt, yt = data.x_test.to(self.device), data.y_test.to(self.device)
        ag, agt = data.agree_train.to(self.device), data.agree_test.to(self.device)
        bal = torch.zeros_like(ag)
        bal[data.balanced_train.to(self.device)] = True
        net0 = self._init_net(cfg.seed + 5, x.shape[1], 1, cfg.hidden, x.dtype)
        probe = self._lin_probe(net0, xt)

        def evaluate(model: nn.Module) -> dict[str, float]:
            vals = group_metrics(self._outputs(model, x), y, {"train": torch.ones_like(ag), "with": ag & bal,
                                                              "without": ~ag & bal, "balanced": bal})
            vt = group_metrics(self._outputs(model, xt), yt, {"test": torch.ones_like(agt), "test_with": agt,
                                                              "test_without": ~agt})
            vals.update(vt)
            return vals

        self.train_regimes(curves, "spurious",
                            ((0.5, cfg.steps_alpha05), (1.0, cfg.steps_alpha1), (100.0, cfg.steps_alpha100)),
                            net0, x, y, bce, evaluate, probe, cfg.seed + 6)

    # ---- part 5: quadratic model ------------------------------------------------------------------------
    def _examples(self) -> list[tuple[str, int, Any]]:
        """The quadratic-model units ``(example, seed, make)``; ``make(d)`` builds the example in dimension ``d``."""
        cfg = self.config
        out: list[tuple[str, int, Any]] = [("ex1", 0, lambda d=None: example1(sigma=cfg.quad_sigma))]
        for s in range(cfg.quad_seeds):
            out.append(("ex2", s, lambda d=None, s=s: example2(d=d or cfg.quad_d, eta=cfg.quad_eta,
                                                               sigma=cfg.quad_sigma, seed=cfg.seed * 1000 + s)))
            out.append(("ex3", s, lambda d=None, s=s: example3(d=d or cfg.quad_d, eta=cfg.quad_eta,
                                                               lam=cfg.quad_lambda, sigma=cfg.quad_sigma,
                                                               seed=cfg.seed * 1000 + s)))
        return out

    def run_quadratic(self) -> None:
        """§5.4 (Fig. 5.4, Fig. C.9): per example and seed, the closed forms against gradient flow and the
        2-layer linear network (its first ``mlp_seeds`` seeds)."""
        cfg = self.config
        quad = self.store.table("quadratic", QUAD_COLUMNS, QUAD_KEY)
        checks = self.store.table("quadratic_checks", CHECK_COLUMNS, CHECK_KEY)

        for name, seed, make in progress(self._examples(), "lazy-vs-hasty: quadratic model", enabled=self._show):
            unit = f"quadratic/{name}/{seed}"
            if not self._take(unit):
                continue
            t0 = time.perf_counter()
            ex = make()
            rows, crows = self._quadratic_rows(name, seed, ex)
            if seed < cfg.mlp_seeds:
                ex_mlp = ex if name == "ex1" else make(cfg.mlp_d)
                r2, c2 = self._mlp_rows(name, seed, ex_mlp)
                rows += r2
                crows += c2
            quad.append(rows)
            checks.append(crows)
            self._finish(unit, t0)

    def _quadratic_rows(self, name: str, seed: int, ex: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """Closed-form curves per group and regime, their error against gradient flow, and the ordering checks."""
        cfg = self.config
        m: QuadraticModel = ex.model
        rows, crows = [], []
        scale = float(np.abs(m.theta_star).max())
        for regime, T in (("nonlinear", ex.t_nonlinear), ("linear", ex.t_linear)):
            t = np.linspace(0.0, T, cfg.quad_points)
            th = m.theta(t, regime)
            err = float(np.abs(th - m.simulate(t, regime)).max()) / scale
            crows.append({"example": name, "seed": seed, "source": "closed_form", "metric": f"ode_rel_err_{regime}",
                          "threshold": "", "value": err})
            se = (m.outputs(th) - m.y) ** 2
            for gname, mask in ex.groups.items():
                curve = se[:, mask].mean(1)
                rows += [{"example": name, "seed": seed, "source": "closed_form", "regime": regime, "t": float(tt),
                          "group": gname, "value": float(v)} for tt, v in zip(t, curve)]
        crows += self._ordering_checks(name, seed, ex, "closed_form",
                                       {r: self._fine_curves(m, ex, r) for r in ("nonlinear", "linear")})
        return rows, crows

    @staticmethod
    def _fine_curves(m: QuadraticModel, ex: Any, regime: str) -> tuple[np.ndarray, np.ndarray]:
        """Squared errors of the closed form on a fine log-spaced time grid up to 20 × the example's horizon."""
        T = 20 * (ex.t_nonlinear if regime == "nonlinear" else ex.t_linear)
        t = np.concatenate([[0.0], np.geomspace(T * 1e-6, T, 6000)])
        return t, m.sq_errors(t, regime)

    def _ordering_checks(self, name: str, seed: int, ex: Any, source: str,
                         curves: dict[str, tuple[np.ndarray, np.ndarray]]) -> list[dict[str, Any]]:
        """Ex 1: half-error learning order per regime; Ex 2/3: hard-group MSE at equal easy-group MSE."""
        rows = []
        if name == "ex1":
            for regime, (t, se) in curves.items():
                order = np.argsort(half_error_times(t, se), kind="stable")
                rows.append({"example": name, "seed": seed, "source": source, "metric": f"order_{regime}",
                             "threshold": "", "value": float("".join(str(int(i)) for i in order))})
            return rows
        easy, hard = ("clean", "noisy") if name == "ex2" else ("majority", "minority")
        for th in (0.5, 0.3, 0.2):
            vals = {}
            for regime, (t, se) in curves.items():
                a = se[:, ex.groups[easy]].mean(1)
                i = first_time_below(t, a, th)
                vals[regime] = float(se[i][ex.groups[hard]].mean()) if i is not None else math.nan
            rows.append({"example": name, "seed": seed, "source": source, "metric": f"{hard}_gap", "threshold": th,
                         "value": vals[list(vals)[0]] - vals[list(vals)[1]]})
        return rows

    def _mlp_rows(self, name: str, seed: int, ex: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
        """The 2-layer linear network at the non-linear and the linear ``mlp_alphas``: curves and ordering checks."""
        cfg = self.config
        m = ex.model
        rows, curves = [], {}
        for regime, alpha, steps in zip(("nonlinear", "linear"), cfg.mlp_alphas, cfg.mlp_steps):
            se = two_layer_dynamics(m.X, m.y, alpha, steps, cfg.mlp_lr, seed=cfg.seed * 1000 + seed)
            t = np.arange(steps + 1, dtype=np.float64)
            curves[regime] = (t, se)
            keep = np.unique(np.linspace(0, steps, min(cfg.quad_points, steps + 1)).round().astype(int))
            for gname, mask in ex.groups.items():
                curve = se[:, mask].mean(1)
                rows += [{"example": name, "seed": seed, "source": "two_layer", "regime": regime, "t": float(k),
                          "group": gname, "value": float(curve[k])} for k in keep]
        return rows, self._ordering_checks(name, seed, ex, "two_layer", curves)

    # ---- report -----------------------------------------------------------------------------------------
    def report(self) -> ReportContent:
        return build_report(self.config, self.store)

