"""Kronecker-factored natural-gradient optimizers: KFAC, EKFAC and EKFAC-ra (thesis ch. 4, Algorithm 1).

Every covered layer (``nn.Linear``, ``nn.Conv1d``/``nn.Conv2d``) arranges its parameters as
``G`` matrices ``V_γ`` of shape ``(O, I)`` — the layer rule's
:class:`~tangentlab.layers.base.KronLayout` (bias as a trailing input column, the
homogeneous form ``s = W ã``). With ``ã_{n,t}`` the homogeneous inputs and
``g_{n,t}`` the gradients of the per-example statistic with respect to the layer's
output (``T`` positions: 1 for a plain Linear):

* factors on the current minibatch of ``N`` examples (Algorithm 1's COMPUTEEIGENBASIS):
  ``A = (1/N) Σ_n Σ_t ã ãᵀ`` and ``B = (1/N) Σ_n (1/T) Σ_t g gᵀ`` (KFC for convolutions;
  exactly :meth:`LayerRule.kfac_factors`), eigenbases ``A = U_A S_A U_Aᵀ``,
  ``B = U_B S_B U_Bᵀ``, recomputed every ``period`` steps (``period=1``: the "recompute
  every step" KFAC baseline);
* scalings in the Kronecker-factored eigenbasis (KFE), for ``G̃ = U_Bᵀ G U_A``:

  - KFAC: ``s = s_B ⊗ s_A`` (fixed between recomputations),
  - EKFAC: ``s* = (1/N) Σ_n G̃_n²`` re-estimated on every minibatch from the per-example
    gradients in the KFE (:mod:`tangentlab.optim._fast`: for a Linear layer
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

import math
import weakref
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..distributed import Reducer
from ..errors import InvalidInputError
from ..layers.base import LayerRule
from ..layers.patch import PatchRule
from ..layers.registry import LayerRegistry
from ._fast import kfe_second_moment, sua_second_moments

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


@dataclass
class _Block:
    """One Kronecker-factored block: ``G`` matrices ``(O, I)`` gathered from the module's
    parameters with ``index[local]`` (``(G, O, I)`` offsets inside that parameter, ``-1``
    elsewhere). ``part``: ``"patch"`` (Linear / KFC conv), ``"sua_w"`` or ``"sua_b"``."""

    name: str
    module: nn.Module
    rule: LayerRule
    part: str
    index: dict[str, torch.Tensor]
    params: dict[str, nn.Parameter]
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
        # the built-in layouts are reshapes (and a concatenation): gather/scatter without an
        # index copy when the layout is one of them (checked on the index tensors themselves)
        self.structured = False
        probe = {}
        start = 0
        for k, n in zip(self.index, self.sizes):
            probe[k] = torch.arange(start, start + n).reshape(self.params[k].shape)
            start += n
        try:
            self.structured = torch.equal(self._gather_structured(probe), self.perm.reshape(self.shape))
        except RuntimeError:  # a layout of another shape
            self.structured = False

    @property
    def key(self) -> nn.Parameter:
        """The parameter whose optimizer state holds this block's state."""
        return self.params["bias"] if self.part == "sua_b" else self.params["weight"]

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


class KronOptimizer(torch.optim.Optimizer):
    """Shared machinery of :class:`KFAC` and :class:`EKFAC` (see the module docstring).

    Parameters
    ----------
    model: the network; its Linear/Conv layers whose parameters all require gradients are
        preconditioned (``layers``: restrict to these module paths).
    lr: learning rate ``η``. damping: ``ε > 0``. period: eigenbasis / factor recomputation
        period ``n`` (Algorithm 1). damping_scheme: ``"plain"`` or ``"factored"``.
    fisher, likelihood, n_samples, seed: statistics (``"empirical"`` or ``"true"``).
    loss_reduction: ``"mean"`` or ``"sum"``: how the user's loss reduces over the batch
        (empirical Fisher only: per-example gradients are rebuilt from the backward pass).
    conv: ``"kfc"`` or ``"sua"``. momentum, weight_decay: of the update.
    fallback: ``callable(list of parameters) -> torch.optim.Optimizer`` for the parameters of
        other modules (default SGD with ``lr`` and ``momentum``).
    distributed: ``True`` (default process group) or a group: data-parallel training (wrap the
        model in ``DistributedDataParallel`` so gradients are averaged). The factors and ``s*``
        are averaged over the ranks weighted by their batch sizes, and the eigendecompositions
        are dealt round-robin to the ranks (block ``k`` on rank ``k mod world``) and broadcast,
        so every rank applies the same preconditioner.
    """

    scaling: str = "kfac"

    def __init__(self, model: nn.Module, lr: float = 1e-2, damping: float = 1e-3, *, period: int = 100,
                 damping_scheme: str = "factored", fisher: str = "empirical", likelihood: str = "softmax",
                 n_samples: int = 1, loss_reduction: str = "mean", conv: str = "kfc", momentum: float = 0.0,
                 weight_decay: float = 0.0, fallback: Callable[[list[nn.Parameter]], torch.optim.Optimizer] | None
                 = None, layers: Iterable[str] | None = None, seed: int = 0,
                 registry: LayerRegistry | None = None, distributed: Any = None):
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
        self.model = model
        self.reducer = Reducer.resolve(distributed)
        if self.reducer.active and loss_reduction != "mean":
            raise InvalidInputError("distributed=... needs loss_reduction='mean' (DistributedDataParallel averages "
                                    "the gradients over the ranks)")
        self.period = period
        self.damping_scheme = damping_scheme
        self.fisher, self.likelihood, self.n_samples = fisher, likelihood, int(n_samples)
        self.loss_reduction, self.conv, self.seed = loss_reduction, conv, int(seed)
        self.registry = registry or LayerRegistry.default()
        wanted = None if layers is None else set(layers)
        self.blocks: list[_Block] = []
        covered: set[int] = set()
        for name, mod in model.named_modules():
            if wanted is not None and name not in wanted:
                continue
            blocks = self._blocks_of(name, mod)
            if blocks:
                self.blocks += blocks
                covered |= {id(p) for b in blocks for p in b.params.values()}
        if wanted is not None:
            missing = wanted - {b.name for b in self.blocks}
            if missing:
                raise InvalidInputError(f"layers {sorted(missing)} are not Linear/Conv layers with trainable "
                                        "parameters of this model")
        if not self.blocks:
            raise InvalidInputError("the model has no Linear/Conv layer whose parameters all require grad")
        params = []
        seen: set[int] = set()
        for b in self.blocks:
            for p in b.params.values():
                if id(p) not in seen:
                    seen.add(id(p))
                    params.append(p)
        super().__init__(params, {"lr": float(lr), "damping": float(damping), "momentum": float(momentum),
                                  "weight_decay": float(weight_decay)})
        others = [p for p in model.parameters() if p.requires_grad and id(p) not in covered]
        if others:
            make = fallback or (lambda ps: torch.optim.SGD(ps, lr=lr, momentum=momentum))
            self.fallback: torch.optim.Optimizer | None = make(others)
        else:
            self.fallback = None
        self.n_steps = 0
        self._index = {id(b): i for i, b in enumerate(self.blocks)}
        self._names = list(dict.fromkeys(b.name for b in self.blocks))
        self._den_cache: dict[int, tuple[float, torch.Tensor]] = {}
        self._records: dict[str, dict[str, Any]] = {}
        self._recording = True
        self._handles = []
        for name in dict.fromkeys(b.name for b in self.blocks):
            mod = next(b.module for b in self.blocks if b.name == name)
            self._handles.append(mod.register_forward_hook(self._hook(name, mod), with_kwargs=True))
        self._handles.append(model.register_forward_pre_hook(self._root_hook(), with_kwargs=True))
        self._engine = None

    # ---- which layers ------------------------------------------------------------------
    def _blocks_of(self, name: str, mod: nn.Module) -> list[_Block]:
        if not isinstance(mod, (nn.Linear, nn.Conv1d, nn.Conv2d)):
            return []
        rule = self.registry.lookup(mod)
        if not isinstance(rule, PatchRule) or rule.check(mod) is not None:
            return []
        params = {k: getattr(mod, k) for k in rule.params(mod)}
        if not params or not all(p.requires_grad for p in params.values()):
            return []
        if self.conv == "sua" and isinstance(mod, nn.Conv2d):
            if mod.groups != 1:
                raise InvalidInputError(f"layer {name!r}: conv='sua' needs groups=1 (got {mod.groups}); "
                                        "use conv='kfc'")
            o, cin, kh, kw = mod.weight.shape
            w = torch.arange(o * cin * kh * kw).reshape(o, cin, kh * kw).permute(2, 0, 1)  # (K, O, Cin)
            out = [_Block(name, mod, rule, "sua_w", {"weight": w.contiguous()}, {"weight": mod.weight})]
            if mod.bias is not None:
                out.append(_Block(name, mod, rule, "sua_b", {"bias": torch.arange(o).reshape(1, o, 1)},
                                  {"bias": mod.bias}))
            return out
        layout = rule.kron_layout(mod)
        return [_Block(name, mod, rule, "patch", dict(layout.index), params)]

    # ---- hooks -------------------------------------------------------------------------
    def _hook(self, name: str, owner: nn.Module):
        # closures holding a weak reference: a deep copy of the model shares these functions,
        # so they check that the module is the optimizer's own (copies are ignored)
        ref = weakref.ref(self)

        def hook(mod, args, kwargs, out):
            opt = ref()
            if (opt is None or mod is not owner or not opt._recording or not torch.is_grad_enabled()
                    or not isinstance(out, torch.Tensor) or not out.requires_grad):
                return
            rec = {"args": tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args),
                   "kwargs": kwargs, "gout": None, "calls": opt._records.get(name, {}).get("calls", 0) + 1}
            opt._records[name] = rec

            def grad_hook(g):
                try:
                    rec["gout"] = g.detach()
                except RuntimeError:  # a vectorized backward (e.g. the engine's): not ours to record
                    pass

            out.register_hook(grad_hook)

        return hook

    def _root_hook(self):
        ref = weakref.ref(self)
        owner = self.model

        def hook(mod, args, kwargs):
            opt = ref()
            if opt is None or mod is not owner or not opt._recording or not torch.is_grad_enabled():
                return
            opt._inputs = (tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args), kwargs)
            for rec in opt._records.values():
                rec["calls"] = 0

        return hook

    def remove_hooks(self) -> None:
        """Detach the optimizer from the model (it can no longer collect statistics)."""
        for h in self._handles:
            h.remove()
        self._handles = []

    # ---- statistics --------------------------------------------------------------------
    def _check_records(self) -> None:
        """Empirical Fisher: every covered layer saw exactly one forward call and a backward
        pass since the last step."""
        for name in self._names:
            rec = self._records.get(name)
            if rec is None or rec["gout"] is None:
                raise InvalidInputError(f"no backward pass went through layer {name!r} since the last step: "
                                        "call loss.backward() (on a loss of this model's outputs) before step()")
            if rec["calls"] > 1:
                raise InvalidInputError(f"layer {name!r} was called {rec['calls']} times in one forward pass; "
                                        "KFAC/EKFAC need one call per layer (pass layers= to exclude it)")

    def _batch_size(self) -> int:
        """``N``, the number of examples of the current minibatch on this rank."""
        if self.fisher == "true":
            return int(self._inputs[0][0].shape[0])
        return int(self._records[self._names[0]]["gout"].shape[0])

    def _statistics(self) -> dict[str, tuple[Any, torch.Tensor, int]]:
        """Per module: (rule features, ``g`` of shape ``(C, N, *out)``, ``N``)."""
        if self.fisher == "true":
            return self._true_statistics()
        self._check_records()
        out: dict[str, tuple[Any, torch.Tensor, int]] = {}
        for b in self.blocks:
            if b.name in out:
                continue
            rec = self._records[b.name]
            g = rec["gout"].unsqueeze(0)
            n = g.shape[1]
            if self.loss_reduction == "mean":
                g = g * n
            feat = b.rule.features(b.module, rec["args"], rec["kwargs"])
            out[b.name] = (feat, g, n)
        return out

    def _true_statistics(self) -> dict[str, tuple[Any, torch.Tensor, int]]:
        from ..engine import Engine
        from ..space import ParamSpace

        inputs = getattr(self, "_inputs", None)
        if inputs is None:
            raise InvalidInputError("fisher='true' needs a forward pass of the model before step()")
        args, kwargs = inputs
        if kwargs or len(args) != 1 or not isinstance(args[0], torch.Tensor):
            raise InvalidInputError("fisher='true' needs a model called as model(x) with one tensor input")
        if self._engine is None:
            kind, opts = {"softmax": ("mc", {"n_samples": self.n_samples}), "gaussian": ("regression", {}),
                          "bernoulli": ("binary", {})}[self.likelihood]
            from ..outputs import make_output

            names = [n for n, p in self.model.named_parameters() if any(p is q for b in self.blocks
                                                                         for q in b.params.values())]
            space = ParamSpace.from_model(self.model, names)
            self._engine = Engine(self.model, make_output(kind, **opts), space, registry=self.registry,
                                  seed=self.seed)
        self._recording = False
        try:
            cap = self._engine.capture((args[0],), index=self.n_steps)
        finally:
            self._recording = True
        by_module = {lc.layer.module: lc for lc in cap.layers}
        out = {}
        for b in self.blocks:
            lc = by_module.get(b.name)
            if lc is None:
                raise InvalidInputError(f"layer {b.name!r} is not on the engine's hook route")
            out[b.name] = (lc.feat, lc.g, cap.n)
        return out

    def _mean_over_ranks(self, tensors: list[torch.Tensor], n: int) -> list[torch.Tensor]:
        """Means over this rank's ``n`` examples → means over all ranks' examples."""
        red = self.reducer
        if not red.active:
            return tensors
        total = red.total(n, "examples in this step's batch", tensors[0].device)
        sums = [t * n for t in tensors]
        red.sum_(*sums)
        return [t / total for t in sums]

    def _factors(self, b: _Block, stats) -> tuple[torch.Tensor, torch.Tensor]:
        """``A`` (G, I, I) and ``B`` (G, O, O) of block ``b`` on the current minibatch (means;
        over all ranks when distributed)."""
        a, bb = self._local_factors(b, stats)
        a, bb = self._mean_over_ranks([a.contiguous(), bb.contiguous()], stats[b.name][2])
        return a, bb

    def _local_factors(self, b: _Block, stats) -> tuple[torch.Tensor, torch.Tensor]:
        feat, g, n = stats[b.name]
        if b.part == "patch":
            cols = torch.arange(b.shape[2], device=g.device)
            a, bb = b.rule.kfac_factors(b.module, feat, g, cols)
            if a.dim() == 2:  # diagonal input factor
                a = torch.diag_embed(a)
            return a / n, bb / n
        # SUA: B from the rule, A over input channels
        _, bb = b.rule.kfac_factors(b.module, feat, g, torch.zeros(1, dtype=torch.long, device=g.device),
                                    input_factor=False)
        t_out = feat.t
        if b.part == "sua_b":
            a = torch.full((1, 1, 1), float(t_out), dtype=bb.dtype, device=bb.device)
            return a, bb / n
        x = self._records_input(b)
        x = x.reshape(x.shape[0], x.shape[1], -1)
        a = torch.einsum("ncp,ndp->cd", x, x) * (t_out / x.shape[2])
        return (a / n)[None], bb / n  # the same for all K kernel positions (expanded after eigh)

    def _records_input(self, b: _Block) -> torch.Tensor:
        if self.fisher == "true":  # the engine keeps patches, not raw inputs (see _sua_inputs)
            return self._true_inputs[b.name]
        return self._records[b.name]["args"][0]

    def _kfe_second_moments(self, blocks: list[_Block], stats) -> dict[int, torch.Tensor]:
        """EKFAC's ``s* = (1/N) Σ_{n,c} (U_Bᵀ G_{c,n} U_A)²`` for each block (keyed by position in
        ``self.blocks``; means over all ranks when distributed). Batched kernels of
        :mod:`tangentlab.optim._fast`: one matmul per Linear layer, chunked batched matmuls per
        convolution, the two SUA blocks of a convolution from one pass."""
        out: dict[int, torch.Tensor] = {}
        sua: dict[str, dict[str, int]] = {}
        for b in blocks:
            idx = self._index[id(b)]
            feat, g, n = stats[b.name]
            if b.part == "patch":
                a = feat.a if feat.a.shape[-1] == b.shape[2] else feat.a[..., :b.shape[2]]
                st = self._state(b)
                out[idx] = kfe_second_moment(a, b.rule.shape_g(b.module, feat, g), st["ua"], st["ub"]) / n
            else:
                sua.setdefault(b.name, {})[b.part] = idx
        for name, parts in sua.items():
            feat, g, n = stats[name]
            some = self.blocks[next(iter(parts.values()))]
            wi, bi = parts.get("sua_w"), parts.get("sua_b")
            basis = {i: (self._state(self.blocks[i])["ua"], self._state(self.blocks[i])["ub"])
                     for i in (wi, bi) if i is not None}
            sw, sb = sua_second_moments(feat.a, some.rule.shape_g(some.module, feat, g), self._kernel_size(some),
                                        feat.has_bias, basis.get(wi), basis.get(bi))
            if wi is not None:
                out[wi] = sw / n
            if bi is not None:
                out[bi] = sb / n
        if self.reducer.active:
            n = stats[blocks[0].name][2]
            keys = list(out)
            for k, v in zip(keys, self._mean_over_ranks([out[k].contiguous() for k in keys], n)):
                out[k] = v
        return out

    @staticmethod
    def _kernel_size(b: _Block) -> int:
        k = 1
        for d in b.module.kernel_size:
            k *= d
        return k

    # ---- the step ----------------------------------------------------------------------
    def _state(self, b: _Block) -> dict[str, Any]:
        return self.state[b.key]

    def _recompute(self, b: _Block, stats) -> None:
        st = self._state(b)
        a, bb = self._factors(b, stats)
        red = self.reducer
        owner = self._index[id(b)] % red.world_size
        if red.rank == owner:  # distributed: one rank per block decomposes, then broadcasts
            ea, ua = torch.linalg.eigh((a + a.transpose(1, 2)) / 2)
            eb, ub = torch.linalg.eigh((bb + bb.transpose(1, 2)) / 2)
        else:
            ea, ua = a.new_empty(a.shape[:2]), torch.empty_like(a)
            eb, ub = bb.new_empty(bb.shape[:2]), torch.empty_like(bb)
        red.broadcast_(ea, ua, eb, ub, src=owner)
        ea, eb = ea.clamp_min(0), eb.clamp_min(0)
        if b.part == "sua_w":  # one decomposition shared by the K kernel positions
            k = b.shape[0]
            ea, ua, eb, ub = (t.expand(k, *t.shape[1:]).contiguous() for t in (ea, ua, eb, ub))
        st.update(ua=ua, ea=ea, ub=ub, eb=eb)
        self._den_cache.pop(self._index[id(b)], None)
        if self.scaling == "running":
            st["s"] = eb[:, :, None] * ea[:, None, :]

    def _denominator(self, b: _Block, s: torch.Tensor | None, eps: float) -> torch.Tensor:
        """The damped diagonal ``D`` in the KFE (see the module docstring). The parts fixed
        between recomputations (KFAC's whole ``D``; the A.4 term ``ε + √ε (λ_B ⊗ 1 + 1 ⊗ λ_A)``)
        are cached per block and ``ε``."""
        if self.damping_scheme == "plain" and self.scaling != "kfac":
            return s + eps
        idx = self._index[id(b)]
        hit = self._den_cache.get(idx)
        if hit is None or hit[0] != eps:
            st = self._state(b)
            ea, eb = st["ea"], st["eb"]
            r = math.sqrt(eps)
            if self.damping_scheme == "plain":  # KFAC, (A ⊗ B + ε I)⁻¹
                fixed = eb[:, :, None] * ea[:, None, :] + eps
            elif self.scaling == "kfac":  # Martens & Grosse's π-factored Tikhonov damping
                tiny = torch.finfo(ea.dtype).tiny
                pi = torch.sqrt(ea.mean(-1) / eb.mean(-1).clamp_min(tiny)).clamp_min(tiny)
                fixed = (eb + (r / pi)[:, None])[:, :, None] * (ea + (pi * r)[:, None])[:, None, :]
            else:  # appendix A.4: s + ε + √ε (λ_B ⊗ 1 + 1 ⊗ λ_A)
                fixed = r * (eb[:, :, None] + ea[:, None, :]) + eps
            hit = (eps, fixed)
            self._den_cache[idx] = hit
        return hit[1] if self.scaling == "kfac" else s + hit[1]

    def _block_grad(self, b: _Block, group: dict[str, Any]) -> torch.Tensor | None:
        grads = {}
        for k, p in b.params.items():
            if p.grad is None:
                return None
            g = p.grad.detach()
            if group["weight_decay"]:
                g = g + group["weight_decay"] * p.detach()
            grads[k] = g
        return b.gather(grads)

    def _preconditioned(self) -> dict[nn.Parameter, torch.Tensor]:
        """``{parameter: preconditioned gradient}`` for the covered parameters (advances the
        statistics: one call per optimization step).

        Work per step: the statistics (layer features, output gradients; for ``fisher="true"``
        the extra engine pass) are only formed when something consumes them — EKFAC's ``s*``
        on every step, the factors on recomputation steps; KFAC and EKFAC-ra between
        recomputations only rotate the gradient."""
        group = self.param_groups[0]
        eps = group["damping"]
        grads = {id(b.key): self._block_grad(b, group) for b in self.blocks}
        todo = [b for b in self.blocks if grads[id(b.key)] is not None]
        out: dict[nn.Parameter, torch.Tensor] = {}
        if todo:
            recompute = self.n_steps % self.period == 0
            stale = [b for b in todo if recompute or "ua" not in self._state(b)]
            stats: dict[str, tuple[Any, torch.Tensor, int]] = {}
            if stale or self.scaling == "batch":
                if self.fisher == "true" and self.conv == "sua":
                    self._true_inputs = self._sua_inputs()
                stats = self._statistics()
            elif self.fisher == "empirical":
                self._check_records()
            for b in stale:
                self._recompute(b, stats)
            s_batch = self._kfe_second_moments(todo, stats) if self.scaling == "batch" else {}
            n = n_all = 0
            if self.scaling == "running":
                n = n_all = self._batch_size()
                if self.reducer.active:  # DDP averages the gradient over all ranks' examples
                    n_all = self.reducer.total(n, "examples in this step's batch", todo[0].key.device)
            for b in todo:
                st = self._state(b)
                ua, ub = st["ua"], st["ub"]
                grad = grads[id(b.key)]
                rot = torch.matmul(torch.matmul(ub.transpose(1, 2), grad), ua)  # G̃ = U_Bᵀ G U_A
                s = None
                if self.scaling == "batch":
                    s = st["s"] = s_batch[self._index[id(b)]]
                elif self.scaling == "running":
                    mean_rot = rot / n if self.loss_reduction == "sum" else rot
                    s = st["s"] = self.decay * st["s"] + (1 - self.decay) * n_all * mean_rot.square()
                delta = torch.matmul(torch.matmul(ub, rot / self._denominator(b, s, eps)), ua.transpose(1, 2))
                for k, v in b.scatter(delta).items():
                    p = b.params[k]
                    out[p] = out[p] + v if p in out else v
        for rec in self._records.values():
            rec["gout"] = None
        self.n_steps += 1
        if todo:
            step = torch.tensor(float(self.n_steps))
            for b in todo:
                self._state(b)["step"] = step
        return out

    def _sua_inputs(self) -> dict[str, torch.Tensor]:
        """Raw inputs of the SUA convolutions on the recorded batch (true-Fisher mode)."""
        got: dict[str, torch.Tensor] = {}
        names = {b.name for b in self.blocks if b.part == "sua_w"}
        handles = [b.module.register_forward_hook(
            lambda m, a, o, name=b.name: got.__setitem__(name, a[0].detach())) for b in self.blocks
            if b.name in names and b.part == "sua_w"]
        self._recording = False
        try:
            with torch.no_grad():
                args, kwargs = self._inputs
                self.model(*args, **kwargs)
        finally:
            self._recording = True
            for h in handles:
                h.remove()
        return got

    @torch.no_grad()
    def precondition(self) -> None:
        """Replace ``.grad`` of the covered parameters by the preconditioned gradient
        ``Δ = F̂_damped⁻¹ ∇`` (the statistics advance as in :meth:`step`); other parameters are
        untouched. Use it in front of any optimizer: ``opt.precondition(); adam.step()``."""
        for p, d in self._preconditioned().items():
            p.grad.copy_(d)

    @torch.no_grad()
    def step(self, closure: Callable[[], torch.Tensor] | None = None) -> torch.Tensor | None:
        """One step ``θ ← θ − η Δ`` (with momentum ``μ`` when set: ``m ← μ m + Δ``,
        ``θ ← θ − η m``) on the covered parameters, and one step of the fallback optimizer on
        the others. ``closure`` re-evaluates the loss (forward and backward) first."""
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
        super().zero_grad(set_to_none)
        if self.fallback is not None:
            self.fallback.zero_grad(set_to_none)

    # ---- persistence -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        sd = super().state_dict()
        sd["n_steps"] = self.n_steps
        sd["fallback"] = self.fallback.state_dict() if self.fallback is not None else None
        return sd

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        sd = dict(state_dict)
        n_steps = sd.pop("n_steps", None)
        fb = sd.pop("fallback", None)
        if n_steps is None:
            raise InvalidInputError("not a KFAC/EKFAC state dict (no 'n_steps')")
        if (fb is None) != (self.fallback is None):
            raise InvalidInputError("the state dict and this optimizer disagree on having a fallback optimizer")
        super().load_state_dict(sd)
        self._den_cache.clear()
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
    ``damping_scheme``: ``"plain"`` (``s + ε``, default) or ``"factored"`` (appendix A.4)."""

    def __init__(self, model: nn.Module, lr: float = 1e-2, damping: float = 1e-3, *, running: bool = False,
                 decay: float = 0.75, damping_scheme: str = "plain", **kwargs: Any):
        if not 0 <= decay < 1:
            raise InvalidInputError(f"decay must be in [0, 1); got {decay!r}")
        self.scaling = "running" if running else "batch"
        self.decay = float(decay)
        super().__init__(model, lr, damping, damping_scheme=damping_scheme, **kwargs)


def EKFACRA(model: nn.Module, lr: float = 1e-2, damping: float = 1e-3, **kwargs: Any) -> EKFAC:  # noqa: N802
    """EKFAC-ra: :class:`EKFAC` with ``running=True``."""
    return EKFAC(model, lr, damping, running=True, **kwargs)


__all__ = ["KronOptimizer", "KFAC", "EKFAC", "EKFACRA"]
