"""Kronecker-factored natural-gradient optimizers: KFAC, EKFAC and EKFAC-ra (thesis ch. 4, Algorithm 1).

Every covered layer — each module whose layer rule defines a Kronecker layout
(``nn.Linear``, ``nn.Conv1d``/``nn.Conv2d``, ``nn.Embedding``, LayerNorm/RMSNorm/GroupNorm and
BatchNorm in eval mode, any registered rule that supports ``representation="kfac"`` in
:func:`tangentlab.fim`) — arranges its parameters as ``G`` matrices ``V_γ`` of shape ``(O, I)``:
the rule's :class:`~tangentlab.layers.base.KronLayout` (for Linear/Conv the bias as a trailing
input column, the homogeneous form ``s = W ã``; for an Embedding the transposed table, with a
diagonal input factor of token counts; for a normalization layer one ``[w_d; b_d]`` column per
feature, whose factors are its exact per-feature block). With
``ã_{n,t}`` the homogeneous inputs and ``g_{n,t}`` the gradients of the per-example statistic
with respect to the layer's output (``T`` positions: 1 for a plain Linear):

* factors on the current minibatch of ``N`` examples (Algorithm 1's COMPUTEEIGENBASIS):
  ``A = (1/N) Σ_n Σ_t ã ãᵀ`` and ``B = (1/N) Σ_n (1/T) Σ_t g gᵀ`` (KFAC-expand, KFC for
  convolutions) or, with ``kfac_approx="reduce"``, ``A = (1/N) Σ_n â âᵀ``, ``â = (1/T) Σ_t ã``,
  and ``B = (1/N) Σ_n ĝ ĝᵀ``, ``ĝ = Σ_t g`` (KFAC-reduce, Eschenhagen et al., 2023; exactly
  :meth:`LayerRule.kfac_factors`), eigenbases ``A = U_A S_A U_Aᵀ``,
  ``B = U_B S_B U_Bᵀ``, recomputed every ``period`` steps (``period=1``: the "recompute
  every step" KFAC baseline);
* scalings in the Kronecker-factored eigenbasis (KFE), for ``G̃ = U_Bᵀ G U_A``:

  - KFAC: ``s = s_B ⊗ s_A`` (fixed between recomputations),
  - EKFAC: ``s* = (1/N) Σ_n G̃_n²`` re-estimated on every minibatch from the per-example
    gradients in the KFE (the rule's :meth:`LayerRule.kfe_diag`: for a Linear layer
    ``s* = (1/N) ((g U_B)²)ᵀ (ã U_A)²``, one matmul and no per-example gradient; for a
    convolution the per-example gradients ``Σ_t g_t ã_tᵀ`` are formed in chunks by a batched
    matmul, each side rotated before or after the sum over positions, whichever is cheaper),
  - EKFAC-ra: ``m ← α m + (1 − α) N Ḡ̃²`` (``Ḡ̃`` the rotated minibatch-mean gradient,
    ``N`` the batch size, so that ``N Ḡ̃²`` estimates the per-example second moment),
    reset to ``s_B ⊗ s_A`` at every recomputation (as in the reference implementation);

* the preconditioned gradient ``Δ = U_B (G̃ ⊘ D) U_Aᵀ`` with the damped denominator ``D``:

  - ``damping_scheme="plain"``: ``D = s + ε`` (``(F̂ + εI)⁻¹``),
  - ``damping_scheme="factored"``: for EKFAC the thesis' appendix A.4 scheme
    ``D = s + ε + √ε (λ_B ⊗ 1 + 1 ⊗ λ_A)``; for KFAC Martens & Grosse's factored
    Tikhonov damping ``(A + π√ε I)⁻¹ ⊗ (B + √ε/π I)⁻¹``,
    ``π = √((tr A / dim A)/(tr B / dim B))``, i.e. ``D = (s_B + √ε/π) ⊗ (s_A + π√ε)``;

* the update ``θ ← θ − η Δ`` (optionally with momentum and an L2 ``weight_decay`` added to
  the gradient before preconditioning).

The pieces: :mod:`.blocks` (which parameters, as matrices), :mod:`.recording` (hooks on the
user's passes), :mod:`.statistics` (per-layer statistics, the true-Fisher engine),
:mod:`.curvature` (factors, eigenbases, scalings, damping — via :mod:`tangentlab.kron`),
:mod:`.ranks` (data-parallel averaging); this module is the ``torch.optim.Optimizer``.

Statistics. ``fisher="empirical"`` (the thesis' choice): ``g`` are the per-example
gradients of the training loss, read from the backward pass the user already ran
(forward hooks keep the layer inputs, tensor hooks the output gradients; for a
``loss_reduction="mean"`` loss these are ``(1/N)`` of the per-example ones and are
rescaled by ``N``). ``fisher="true"``: the statistics come from one extra pass of the
tangent-feature engine on the same inputs with the model's own likelihood —
``likelihood="softmax"``: one sampled label per example (Monte-Carlo Fisher, a fresh
sample every step, reproducible from ``seed``), ``"gaussian"``: the exact Fisher of
``N(f(x), I)``, ``"bernoulli"``: the exact Fisher of independent sigmoid outputs.
No Python loop runs over examples: everything is batched matmuls. Work is skipped where a
step does not need it: KFAC and EKFAC-ra form no layer statistics between recomputations
(they only rotate the gradient), the damped denominators fixed between recomputations are
cached, and the SUA weight block's ``K`` identical factors are decomposed once.

Convolutions: ``conv="kfc"`` (default) uses the unfolded-patch factors (Grosse & Martens'
KFC); ``conv="sua"`` (spatially uncorrelated activations) replaces the input factor by
``A_SUA ⊗ I_K`` over the ``K`` kernel positions, ``A_SUA = (T_out/T_in)(1/N) Σ_n Σ_p x_p x_pᵀ``
over the input channels at the input positions ``p`` (same scale as KFC's diagonal
blocks); the bias gets its own block with input factor ``T_out``. Grouped convolutions
need ``conv="kfc"``.

Parameters of any other module go to a ``fallback`` optimizer (default: SGD with the same
learning rate and momentum). :meth:`precondition` writes the preconditioned gradients into
``.grad`` of the covered parameters without updating them, so the optimizer can sit in
front of any other ``torch.optim`` optimizer.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any, cast

import torch
from torch import nn

from ..distributed import Reducer
from ..engine import Engine, EngineOptions
from ..errors import InvalidInputError
from ..kron import check_approx, rotate, unrotate
from ..layers.registry import LayerRegistry
from .blocks import ParamBlock, find_blocks, tapped_modules
from .curvature import Curvature
from .recording import Recorder
from .statistics import (
    Stats,
    batch_size,
    check_modes,
    empirical_statistics,
    make_engine,
    model_input,
    raw_inputs,
    true_statistics,
)

FISHERS = ("empirical", "true")
LIKELIHOODS = ("softmax", "gaussian", "bernoulli")
DAMPING_SCHEMES = ("plain", "factored")
CONV_MODES = ("kfc", "sua")
REDUCTIONS = ("mean", "sum")
SCALINGS = ("kfac", "batch", "running")


def _choice(name: str, value: Any, accepted: tuple) -> Any:
    if value not in accepted:
        raise InvalidInputError(f"{name} must be one of {', '.join(map(str, accepted))}; got {value!r}")
    return value


class KronOptimizer(torch.optim.Optimizer):
    """Shared machinery of :class:`KFAC` and :class:`EKFAC` (see the module docstring).

    Parameters
    ----------
    model : nn.Module
        The network; its Kronecker-factorable layers (Linear, Conv, Embedding, ...) whose
        parameters all require gradients are preconditioned.
    lr : float
        The learning rate ``η``.
    damping : float
        ``ε > 0``.
    period : int
        The eigenbasis / factor recomputation period ``n`` (Algorithm 1).
    damping_scheme : {"plain", "factored"}
        The damped denominator (see the module docstring).
    fisher : {"empirical", "true"}
        The statistics (see the module docstring).
    likelihood : {"softmax", "gaussian", "bernoulli"}
        The model's likelihood (``fisher="true"``).
    n_samples : int
        Sampled labels per example (``fisher="true"``, ``"softmax"``).
    loss_reduction : {"mean", "sum"}
        How the user's loss reduces over the batch (empirical Fisher only: per-example
        gradients are rebuilt from the backward pass).
    conv : {"kfc", "sua"}
        The factors of convolutions.
    kfac_approx : {"expand", "reduce"}
        The factors of a weight shared over positions, as in :func:`tangentlab.fim`:
        ``"expand"`` (default; KFC's factors, exact when the outputs keep the positions) or
        ``"reduce"`` (cheaper; exact when the positions are pooled before a linear read-out).
    momentum, weight_decay : float
        Of the update.
    fallback : callable, optional
        ``callable(list of parameters) -> torch.optim.Optimizer`` for the parameters of
        other modules (default SGD with ``lr`` and ``momentum``).
    layers : iterable of str, optional
        Restrict the preconditioned layers to these module paths.
    seed : int
        Seed of the sampled labels.
    registry : LayerRegistry, optional
        The layer rules.
    distributed : bool or ProcessGroup, optional
        ``True`` (default process group) or a group: data-parallel training (wrap the
        model in ``DistributedDataParallel`` so gradients are averaged). The factors and ``s*``
        are averaged over the ranks weighted by their batch sizes, and the eigendecompositions
        are dealt round-robin to the ranks (block ``k`` on rank ``k mod world``) and broadcast,
        so every rank applies the same preconditioner.
    options : EngineOptions, optional
        The engine settings of the true-Fisher statistics, as in :func:`tangentlab.fim`.

    Raises
    ------
    InvalidInputError
        For a value outside those listed, or a model without a covered layer.
    """

    scaling: str = "kfac"
    decay: float  # the running average's α, set by EKFACRA (scaling "running")

    def __init__(self, model: nn.Module, lr: float = 1e-2, damping: float = 1e-3, *, period: int = 100,
                 damping_scheme: str = "factored", fisher: str = "empirical", likelihood: str = "softmax",
                 n_samples: int = 1, loss_reduction: str = "mean", conv: str = "kfc", momentum: float = 0.0,
                 weight_decay: float = 0.0, fallback: Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None
                 = None, layers: Iterable[str] | None = None, seed: int = 0,
                 registry: LayerRegistry | None = None, distributed: Any = None,
                 options: EngineOptions | None = None, kfac_approx: str = "expand"):
        opts = EngineOptions.merge(options, seed=seed, registry=registry, distributed=distributed)
        if not isinstance(model, nn.Module):
            raise InvalidInputError(f"model must be an nn.Module, got {type(model).__name__}")
        if not (isinstance(lr, (int, float)) and lr >= 0):
            raise InvalidInputError(f"lr must be a number >= 0; got {lr!r}")
        if not (isinstance(damping, (int, float)) and damping > 0):
            raise InvalidInputError(f"damping must be a number > 0; got {damping!r}")
        if isinstance(period, bool) or not isinstance(period, int) or period < 1:
            raise InvalidInputError(f"period must be an integer >= 1; got {period!r}")
        if not 0 <= momentum < 1:
            raise InvalidInputError(f"momentum must be in [0, 1); got {momentum!r}")
        _choice("damping_scheme", damping_scheme, DAMPING_SCHEMES)
        _choice("fisher", fisher, FISHERS)
        _choice("likelihood", likelihood, LIKELIHOODS)
        _choice("loss_reduction", loss_reduction, REDUCTIONS)
        _choice("conv", conv, CONV_MODES)
        check_approx(kfac_approx)
        if conv == "sua" and kfac_approx == "reduce":
            raise InvalidInputError("conv='sua' has its own input factor; it combines with kfac_approx='expand' only")
        self.model = model
        self.reducer = Reducer.resolve(opts.distributed)
        if self.reducer.active and loss_reduction != "mean":
            raise InvalidInputError("distributed=... needs loss_reduction='mean' (DistributedDataParallel averages "
                                    "the gradients over the ranks)")
        self.period = period
        self.damping_scheme = damping_scheme
        self.fisher, self.likelihood, self.n_samples = fisher, likelihood, int(n_samples)
        self.loss_reduction, self.conv = loss_reduction, conv
        self.registry = opts.registry or LayerRegistry.default()
        # the true-Fisher statistics engine: every engine setting but the reduction, which the
        # optimizer does itself over its factors
        self.options = opts.replace(registry=self.registry, distributed=None)
        self.seed = opts.seed
        self.blocks: list[ParamBlock] = find_blocks(model, self.registry, conv, layers)
        params = list({id(p): p for b in self.blocks for p in b.params.values()}.values())
        super().__init__(params, {"lr": float(lr), "damping": float(damping), "momentum": float(momentum),
                                  "weight_decay": float(weight_decay)})
        covered = {id(p) for p in params}
        others = [p for p in model.parameters() if p.requires_grad and id(p) not in covered]
        if others:
            make = fallback or (lambda ps: torch.optim.SGD(ps, lr=lr, momentum=momentum))
            self.fallback: torch.optim.Optimizer | None = make(others)
        else:
            self.fallback = None
        self.n_steps = 0
        self.kfac_approx = kfac_approx
        self.curvature = Curvature(self.blocks, self._state, self.reducer, self.scaling, damping_scheme, kfac_approx)
        self.recorder = Recorder(model, {b.name: b.module for b in self.blocks},
                                 tapped=tapped_modules(model, self.registry, self.blocks))
        self._engine: Engine | None = None

    def _state(self, b: ParamBlock) -> dict[str, Any]:
        return self.state[b.key]

    def remove_hooks(self) -> None:
        """Detach the optimizer from the model (it can no longer collect statistics)."""
        self.recorder.remove()

    # ---- statistics --------------------------------------------------------------------
    def _statistics(self) -> Stats:
        """Per module: (rule features, ``g`` of shape ``(C, N, *out)``, ``N``)."""
        check_modes(self.blocks)
        if self.fisher == "empirical":
            return empirical_statistics(self.blocks, self.recorder, self.loss_reduction)
        if self._engine is None:
            model_input(self.recorder)  # refuses before building the engine
            params = [p for b in self.blocks for p in b.params.values()]
            self._engine = make_engine(self.model, params, self.likelihood, self.n_samples, self.options)
        return true_statistics(self._engine, self.blocks, self.recorder, self.n_steps)

    def _raw_input(self, b: ParamBlock) -> torch.Tensor | None:
        """The layer input an SUA weight block's factor needs (``None`` for other blocks)."""
        if b.part != "sua_w":
            return None
        if self.fisher == "true":  # the engine keeps patches, not raw inputs
            return self._true_inputs[b.name]
        return self.recorder.records[b.name]["args"][0]

    def _block_grad(self, b: ParamBlock, group: dict[str, Any]) -> torch.Tensor | None:
        grads = {}
        for k, p in b.params.items():
            if p.grad is None:
                return None
            g = p.grad.detach()
            if group["weight_decay"]:
                g = g + group["weight_decay"] * p.detach()
            grads[k] = g
        return b.gather(grads)

    # ---- the step ----------------------------------------------------------------------
    def _preconditioned(self) -> dict[torch.Tensor, torch.Tensor]:
        """``{parameter: preconditioned gradient}`` for the covered parameters (advances the
        statistics: one call per optimization step).

        Work per step: the statistics (layer features, output gradients; for ``fisher="true"``
        the extra engine pass) are only formed when something consumes them — EKFAC's ``s*``
        on every step, the factors on recomputation steps; KFAC and EKFAC-ra between
        recomputations only rotate the gradient."""
        group = self.param_groups[0]
        eps = group["damping"]
        curv = self.curvature
        grads = {id(b.key): self._block_grad(b, group) for b in self.blocks}
        todo = [b for b in self.blocks if grads[id(b.key)] is not None]
        out: dict[torch.Tensor, torch.Tensor] = {}
        if todo:
            recompute = self.n_steps % self.period == 0
            stale = [b for b in todo if recompute or "ua" not in self._state(b)]
            stats: Stats = {}
            if stale or self.scaling == "batch":
                if self.fisher == "true" and self.conv == "sua":
                    self._true_inputs = raw_inputs(self.model, [b for b in self.blocks if b.part == "sua_w"],
                                                   self.recorder)
                stats = self._statistics()
            elif self.fisher == "empirical":
                self.recorder.check()
            for b in stale:
                curv.recompute(b, stats, self._raw_input(b))
            s_batch = curv.kfe_second_moments(todo, stats) if self.scaling == "batch" else {}
            n = n_all = 0
            if self.scaling == "running":
                n = n_all = batch_size(self.fisher, self.recorder)
                if self.reducer.active:  # DDP averages the gradient over all ranks' examples
                    n_all = self.reducer.total(n, "examples in this step's batch", todo[0].key.device)
            for b in todo:
                st = self._state(b)
                ua, ub = st["ua"], st["ub"]
                grad = cast(torch.Tensor, grads[id(b.key)])  # todo: the blocks with a gradient
                rot = rotate(grad, ua, ub)  # G̃ = U_Bᵀ G U_A
                s: torch.Tensor | None = None
                if self.scaling == "batch":
                    s = st["s"] = s_batch[curv.index[id(b)]]
                elif self.scaling == "running":
                    mean_rot = rot / n if self.loss_reduction == "sum" else rot
                    s = st["s"] = self.decay * st["s"] + (1 - self.decay) * n_all * mean_rot.square()
                delta = unrotate(rot / curv.denominator(b, s, eps), ua, ub)
                for k, v in b.scatter(delta).items():
                    p = b.params[k]
                    out[p] = out[p] + v if p in out else v
        self.recorder.consumed()
        self.n_steps += 1
        if todo:
            step = torch.tensor(float(self.n_steps))
            for b in todo:
                self._state(b)["step"] = step
        return out

    @torch.no_grad()
    def precondition(self) -> None:
        """Replace ``.grad`` of the covered parameters by the preconditioned gradient
        ``Δ = F̂_damped⁻¹ ∇`` (the statistics advance as in :meth:`step`); other parameters are
        untouched. Use it in front of any optimizer: ``opt.precondition(); adam.step()``."""
        for p, d in self._preconditioned().items():
            cast(torch.Tensor, p.grad).copy_(d)  # covered parameters have gradients

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:  # type: ignore[override]  # torch's overloads require a float closure
        """One step ``θ ← θ − η Δ`` on the covered parameters, one fallback step on the others.

        With momentum ``μ``: ``m ← μ m + Δ``, ``θ ← θ − η m``.

        Parameters
        ----------
        closure : callable, optional
            Re-evaluates the loss (forward and backward) first.

        Returns
        -------
        torch.Tensor or None
            The closure's loss.
        """
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        group = self.param_groups[0]
        pre = self._preconditioned()
        params, deltas = list(pre), list(pre.values())
        if params and group["momentum"]:
            bufs, fresh = [], []
            for p, d in zip(params, deltas):
                st = self.state[p]
                if st.get("momentum_buffer") is None:
                    st["momentum_buffer"] = d.clone()
                    fresh.append(p)
                else:
                    bufs.append((st["momentum_buffer"], d))
            if bufs:
                torch._foreach_mul_([m for m, _ in bufs], group["momentum"])
                torch._foreach_add_([m for m, _ in bufs], [d for _, d in bufs])
            deltas = [self.state[p]["momentum_buffer"] for p in params]
        if params:
            torch._foreach_add_(params, deltas, alpha=-group["lr"])
        if self.fallback is not None:
            self.fallback.step()
        return loss

    def zero_grad(self, set_to_none: bool = True) -> None:
        """Reset the gradients of every parameter, the fallback optimizer's included.

        Parameters
        ----------
        set_to_none : bool
            Set ``.grad`` to None instead of zeros.
        """
        super().zero_grad(set_to_none)
        if self.fallback is not None:
            self.fallback.zero_grad(set_to_none)

    # ---- persistence -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The optimizer state (factors, eigenbases, scalings), the step count and the fallback's."""
        sd = super().state_dict()
        sd["n_steps"] = self.n_steps
        sd["fallback"] = self.fallback.state_dict() if self.fallback is not None else None
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`.

        Parameters
        ----------
        state_dict : dict
            What :meth:`state_dict` returned.

        Raises
        ------
        InvalidInputError
            For a dict of another optimizer, or a fallback present on one side only.
        """
        sd = dict(state_dict)
        n_steps = sd.pop("n_steps", None)
        fb = sd.pop("fallback", None)
        if n_steps is None:
            raise InvalidInputError("not a KFAC/EKFAC state dict (no 'n_steps')")
        if (fb is None) != (self.fallback is None):
            raise InvalidInputError("the state dict and this optimizer disagree on having a fallback optimizer")
        super().load_state_dict(sd)
        self.curvature.clear_cache()
        self.n_steps = int(n_steps)
        if fb is not None and self.fallback is not None:
            self.fallback.load_state_dict(fb)


class KFAC(KronOptimizer):
    """KFAC (KFC for convolutions): ``s = s_B ⊗ s_A`` from factors recomputed every ``period``
    steps (``period=1``: the strong "recompute every step" baseline). ``damping_scheme``:
    ``"factored"`` (default, π-factored Tikhonov) or ``"plain"`` (``(A⊗B + εI)⁻¹``)."""

    scaling = "kfac"


class EKFAC(KronOptimizer):
    """EKFAC (Algorithm 1): KFE recomputed every ``period`` steps; ``s*`` re-estimated on every
    minibatch from per-example gradients (``running=False``) or, for EKFAC-ra
    (``running=True``), as a running average of the minibatch gradient's squared KFE
    coordinates with ``decay`` α (default 0.75, the reference implementation's).
    ``damping_scheme``: ``"plain"`` (``s + ε``, default) or ``"factored"`` (appendix A.4).

    Parameters
    ----------
    model, lr, damping
        As in :class:`KronOptimizer`.
    running : bool
        EKFAC-ra's running average instead of the minibatch ``s*``.
    decay : float
        ``α ∈ [0, 1)``, with ``running``.
    damping_scheme : {"plain", "factored"}
        The damped denominator.
    **kwargs
        The other keywords of :class:`KronOptimizer`.
    """

    def __init__(self, model: nn.Module, lr: float = 1e-2, damping: float = 1e-3, *, running: bool = False,
                 decay: float = 0.75, damping_scheme: str = "plain", **kwargs: Any):
        if not 0 <= decay < 1:
            raise InvalidInputError(f"decay must be in [0, 1); got {decay!r}")
        self.scaling = "running" if running else "batch"
        self.decay = float(decay)
        super().__init__(model, lr, damping, damping_scheme=damping_scheme, **kwargs)


def EKFACRA(model: nn.Module, lr: float = 1e-2, damping: float = 1e-3, **kwargs: Any) -> EKFAC:  # noqa: N802
    """EKFAC-ra: :class:`EKFAC` with ``running=True``.

    Parameters
    ----------
    model, lr, damping, **kwargs
        As in :class:`EKFAC`.
    """
    return EKFAC(model, lr, damping, running=True, **kwargs)


__all__ = ["KronOptimizer", "KFAC", "EKFAC", "EKFACRA"]
