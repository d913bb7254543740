"""Deciding, once per model and parameter space, which parameters take the hook
route (a registered layer rule) and which the generic ``torch.func`` route."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.overrides import TorchFunctionMode

from ..errors import InvalidInputError, MixedDeviceDtypeError, UnsupportedLayerError
from ..layers.base import LayerRule, Tap
from ..layers.norm import batchnorm_coupling
from ..layers.registry import LayerRegistry
from ..space import Layer, ParamSpace
from .recurrent import packed_input, recurrent_reason


class GenericRouteWarning(UserWarning):
    """Some parameters are differentiated by the generic torch.func route."""


class TrainingModeWarning(UserWarning):
    """The model is in training mode with random layers (e.g. Dropout)."""


@dataclass
class HookedLayer:
    layer: Layer
    module: nn.Module
    rule: LayerRule


@dataclass
class RoutePlan:
    hooked: list[HookedLayer] = field(default_factory=list)
    generic: list[str] = field(default_factory=list)  # parameter names
    reasons: dict[str, str] = field(default_factory=dict)  # module path -> reason
    joint: bool = False
    #: the vectorized generic pass runs fused recurrent kernels unfused (:mod:`.recurrent`)
    unfuse: bool = False
    #: tapped modules (layers/base.py) with no selected parameter: run by their tapped forward
    #: all the same, so that the submodules it calls (an attention's out_proj) are hooked
    passive: list[tuple[str, nn.Module, LayerRule]] = field(default_factory=list)


def check_params(params: Mapping[str, torch.Tensor]) -> tuple[torch.dtype, torch.device]:
    """All selected parameters must share one dtype and one device."""
    items = list(params.items())
    name0, p0 = items[0]
    for name, p in items[1:]:
        if p.dtype != p0.dtype:
            raise MixedDeviceDtypeError(
                f"parameter {name!r} has dtype {p.dtype} but {name0!r} has {p0.dtype}; "
                "convert the model to one dtype (e.g. `model.double()`)"
            )
        if p.device != p0.device:
            raise MixedDeviceDtypeError(
                f"parameter {name!r} is on {p.device} but {name0!r} is on {p0.device}; "
                "move the model to one device"
            )
    if not p0.is_floating_point():
        raise MixedDeviceDtypeError(f"parameter {name0!r} has non-floating dtype {p0.dtype}")
    return p0.dtype, p0.device


def check_coupling(model: nn.Module, joint: bool) -> None:
    """Refuse batch-coupled layers unless the joint route was asked for; warn about dropout."""
    for path, mod in model.named_modules():
        if isinstance(mod, (nn.Embedding, nn.EmbeddingBag)):
            # refused on every route: max_norm renormalizes the user's weight in place
            # (even under torch.func), scale_grad_by_freq changes the backward, not the function
            if mod.max_norm is not None:
                raise UnsupportedLayerError(
                    f"{type(mod).__name__} at {path or '<root>'!r} has max_norm={mod.max_norm}: it "
                    "renormalizes its weight in place during the forward pass, so Jacobians are "
                    "ill-defined and the weight would be modified; remove max_norm (renormalize "
                    "explicitly) before computing Fishers, NTKs or Jacobians"
                )
            if mod.scale_grad_by_freq:
                raise UnsupportedLayerError(
                    f"{type(mod).__name__} at {path or '<root>'!r} has scale_grad_by_freq=True, which "
                    "scales gradients by the token counts of the whole batch (coupling examples); "
                    "set scale_grad_by_freq=False"
                )
        why = batchnorm_coupling(mod)
        if why and not joint:
            fix = ("Call `model.eval()` to use running statistics, or pass" if mod.training else
                   "Use a BatchNorm with running statistics (track_running_stats=True, in eval "
                   "mode), or pass")
            raise UnsupportedLayerError(
                f"{type(mod).__name__} at {path or '<root>'!r} {why}; per-example Jacobians are "
                f"undefined. {fix} `route='joint'` for the Jacobian of the whole batch "
                "(examples coupled)."
            )
        rate = (mod.p if isinstance(mod, nn.modules.dropout._DropoutNd) else
                mod.dropout if isinstance(mod, nn.MultiheadAttention) else 0.0)
        if mod.training and rate > 0:
            warnings.warn(
                f"{type(mod).__name__} at {path!r} is in training mode: outputs are random, so "
                "Fishers and NTKs are too. Call `model.eval()` for deterministic results.",
                TrainingModeWarning, stacklevel=4,
            )


def shared_parameter_modules(model: nn.Module) -> dict[str, str]:
    """Module paths that own a parameter also used by another module (tied weights)."""
    owners: dict[int, list[str]] = {}
    for name, p in model.named_parameters(remove_duplicate=False):
        mod = name.rsplit(".", 1)[0] if "." in name else ""
        owners.setdefault(id(p), []).append(mod)
    out = {}
    for mods in owners.values():
        uniq = list(dict.fromkeys(mods))
        if len(uniq) > 1 or len(mods) > 1:
            for m in uniq:
                out[m] = "shares a parameter with " + ", ".join(x or "<root>" for x in uniq if x != m)
    return out


def _leaves(obj) -> list:
    if isinstance(obj, (list, tuple)):
        return [x for o in obj for x in _leaves(o)]
    if isinstance(obj, dict):
        return [x for o in obj.values() for x in _leaves(o)]
    return [obj]


class _OutsideUse(TorchFunctionMode):
    """Records modules whose parameters feed an op outside the module's own forward
    (e.g. ``x @ layer.weight.T``): hooks on the module's output would miss that path."""

    def __init__(self, owners: dict[int, int]):
        super().__init__()
        self.owners = owners  # id(parameter) -> id(module)
        self.active: dict[int, int] = {}  # id(module) -> forward calls in progress
        self.outside: set[int] = set()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        for a in _leaves((args, kwargs)):
            m = self.owners.get(id(a)) if isinstance(a, torch.Tensor) else None
            if m is not None and not self.active.get(m) and any(
                isinstance(o, torch.Tensor) for o in _leaves(out)
            ):
                self.outside.add(m)
        return out


def make_plan(model: nn.Module, space: ParamSpace, registry: LayerRegistry, route: str,
              probe) -> RoutePlan:
    """Assign each layer of ``space`` to a route.

    ``probe(hooks)`` runs one forward pass with the given forward hooks installed;
    it is used to count how often each candidate module is called and, when it has a
    ``batch_size`` attribute (the examples of the probed batch), to check that each hooked
    layer's output has the examples along its first dimension (the hook route reads
    them there).
    """
    plan = RoutePlan(joint=route == "joint")
    if not isinstance(registry, LayerRegistry):
        raise InvalidInputError(f"registry must be a LayerRegistry, got {type(registry).__name__}")
    if route in ("generic", "joint"):
        plan.generic = list(space.names)
        plan.unfuse = route == "generic" and _unfuse(model, probe)
        return plan
    shared = shared_parameter_modules(model)
    modules = dict(model.named_modules(remove_duplicate=False))
    candidates: list[HookedLayer] = []
    for lay in space.layers:
        mod = modules[lay.module]
        rule, klass = None, None
        for kls in type(mod).__mro__:
            if kls in registry:
                rule, klass = registry.lookup(mod), kls
                break
        reason = None
        if rule is None:
            reason = recurrent_reason(mod, lay.module) or f"no layer rule for {type(mod).__name__}"
        elif lay.module in shared:
            reason = shared[lay.module]
        elif type(mod).forward is not klass.forward:  # type: ignore[union-attr]
            reason = f"{type(mod).__name__} overrides forward() of {klass.__name__}"  # type: ignore[union-attr]
        else:
            own = {n for n, _ in mod.named_parameters(recurse=False)}
            extra = own - set(rule.params(mod))
            if extra:
                reason = f"has parameters {sorted(extra)} that the {type(rule).__name__} does not cover"
            else:
                reason = rule.check(mod)
        if reason:
            plan.reasons[lay.module] = reason
            plan.generic.extend(p.name for p in lay.params)
        else:
            candidates.append(HookedLayer(lay, mod, rule))  # type: ignore[arg-type]
    if candidates:
        counts = {id(h.module): 0 for h in candidates}
        bad: dict[int, str] = {}

        tapped = {id(h.module) for h in candidates if h.rule.tapped(h.module)}

        n_probe = getattr(probe, "batch_size", None)

        def hook(mod, args, kwargs, out):
            counts[id(mod)] += 1
            if id(mod) in tapped:  # features and g come from its tapped forward
                return
            if not args or not isinstance(args[0], torch.Tensor):
                bad[id(mod)] = "is not called with a tensor as first argument"
            if not isinstance(out, torch.Tensor):
                bad[id(mod)] = "does not return a single tensor"
            elif n_probe is not None and (out.dim() == 0 or out.shape[0] != n_probe):
                bad[id(mod)] = (f"its output's first dimension ({out.shape[0] if out.dim() else 'none'}) is not "
                                f"the example dimension ({n_probe} examples probed): e.g. a sequence-first "
                                "layout (batch_first=False) or examples merged with positions")

        uses = _OutsideUse({id(p): id(h.module) for h in candidates
                            for p in h.module.parameters(recurse=False)})

        def enter(mod, args):
            uses.active[id(mod)] = uses.active.get(id(mod), 0) + 1

        def leave(mod, args, out):
            uses.active[id(mod)] -= 1

        handles = [h.module.register_forward_pre_hook(enter, prepend=True) for h in candidates]
        handles += [h.module.register_forward_hook(leave) for h in candidates]
        selected = {lay.module for lay in space.layers}
        for path, mod in model.named_modules():
            rule = registry.lookup(mod)
            klass = next((k for k in type(mod).__mro__ if k in registry), None)
            if (path not in selected and rule is not None and rule.tapped(mod) and path not in shared
                    and type(mod).forward is getattr(klass, "forward", None) and rule.check(mod) is None):
                plan.passive.append((path, mod, rule))
        dry = [(h.module, tap_forward(h.module, h.rule, Tap(h.layer.module, active=False)))
               for h in candidates if id(h.module) in tapped]
        dry += [(mod, tap_forward(mod, rule, Tap(path, active=False))) for path, mod, rule in plan.passive]
        try:
            with uses, patched_forwards(dry):
                probe([(h.module, hook) for h in candidates])
        finally:
            for handle in handles:
                handle.remove()
        for h in candidates:
            k = counts[id(h.module)]
            why = bad.get(id(h.module))
            if why is None and k != 1:
                why = ("is never called by forward() (its parameters are used some other way)"
                       if k == 0 else f"is called {k} times in one forward pass")
            if why is None and id(h.module) in uses.outside:
                why = "has parameters also used outside its forward() (e.g. `x @ layer.weight.T`)"
            if why:
                plan.reasons[h.layer.module] = why
                plan.generic.extend(p.name for p in h.layer.params)
            else:
                plan.hooked.append(h)
        # a tapped module on the generic route runs its own forward, which may not call the
        # submodules its tapped forward called (MultiheadAttention.out_proj): those follow it
        for t in [h for h in candidates if id(h.module) in tapped and h.layer.module in plan.reasons]:
            inside = [h for h in plan.hooked if h.layer.module.startswith(t.layer.module + ".")]
            for h in inside:
                plan.hooked.remove(h)
                plan.reasons[h.layer.module] = f"inside {t.layer.module!r}, which takes the generic route"
                plan.generic.extend(p.name for p in h.layer.params)
    plan.unfuse = bool(plan.generic) and _unfuse(model, probe)  # may refuse: before the warning
    if plan.reasons:
        lines = "; ".join(f"{m or '<root>'} ({r})" for m, r in plan.reasons.items())
        warnings.warn(
            f"these parameters take the generic torch.func route (correct, slower): {lines}",
            GenericRouteWarning, stacklevel=4,
        )
    order = {n: i for i, n in enumerate(space.names)}
    plan.generic.sort(key=order.__getitem__)
    return plan


def _unfuse(model: nn.Module, probe) -> bool:
    """Whether the vectorized generic pass must unfuse recurrent kernels: ``model`` has a
    fused recurrent layer (selected or not, it runs under ``vmap``). Raises where the unfused
    route would not compute the model's function (:func:`.recurrent.recurrent_reason`) and,
    after one probing forward pass, where a recurrent layer is fed packed sequences."""
    paths = {id(m): p for p, m in model.named_modules() if recurrent_reason(m, p) is not None}
    if paths:
        probe([(m, packed_input(paths[id(m)])) for m in model.modules() if id(m) in paths])
    return bool(paths)


def tap_forward(module: nn.Module, rule: LayerRule, tap: Tap):
    """``module``'s forward computed by ``rule.tapped_forward`` reporting to ``tap``."""
    def forward(*args, **kwargs):
        return rule.tapped_forward(module, tap, *args, **kwargs)
    return forward


@contextlib.contextmanager
def patched_forwards(items: list[tuple[nn.Module, Any]]):
    """Replace each module's ``forward`` by the given callable (an instance attribute, so that
    ``module(...)`` still runs its hooks) for the duration of the block; restored on exit."""
    saved = [(m, m.__dict__.get("forward")) for m, _ in items]
    try:
        for m, f in items:
            m.__dict__["forward"] = f
        yield
    finally:
        for m, old in saved:
            if old is None:
                m.__dict__.pop("forward", None)
            else:
                m.__dict__["forward"] = old


class _MismatchError(Exception):
    """Raised by an input check hook to stop the diagnostic forward pass."""


def _expects(mod: nn.Module, x: torch.Tensor) -> str | None:
    """What ``mod`` expects of its first input ``x``, when ``x`` does not provide it."""
    weight = getattr(mod, "weight", None)
    if isinstance(weight, nn.parameter.UninitializedParameter):
        return None  # a lazy module learns its sizes from its first input
    wdtype = weight.dtype if isinstance(weight, torch.Tensor) else None
    if isinstance(mod, (nn.Embedding, nn.EmbeddingBag)):
        if x.is_floating_point() or x.dtype == torch.bool:
            return f"integer indices (torch.long) below {mod.num_embeddings}; pass token ids, e.g. `x.long()`"
        return None
    if isinstance(mod, nn.Linear):
        want = f"shape (..., {mod.in_features})"
        if x.dim() == 0 or x.shape[-1] != mod.in_features:
            return f"{want}; check the number of features of the data or the model's input layer"
    elif isinstance(mod, nn.modules.conv._ConvNd):
        d = len(mod.kernel_size)
        want = f"shape (N, {mod.in_channels}, {', '.join(['L', 'H, W', 'D, H, W'][d - 1:d])})"
        if x.dim() not in (d + 1, d + 2) or x.shape[-(d + 1)] != mod.in_channels:
            return f"{want}; check the channels of the data (channels first) or the model's input layer"
    elif isinstance(mod, (nn.LayerNorm, nn.GroupNorm, nn.modules.batchnorm._NormBase)):
        if isinstance(mod, nn.LayerNorm):
            k = len(mod.normalized_shape)
            if tuple(x.shape[x.dim() - k:]) != tuple(mod.normalized_shape):
                return f"trailing shape {tuple(mod.normalized_shape)}; check the data or the layer's normalized_shape"
    else:
        return None
    if wdtype is not None and x.dtype != wdtype:
        return f"dtype {wdtype} (its parameters' dtype); convert the inputs, e.g. `x.to({wdtype})`"
    return None


def _shape(x: torch.Tensor, n: int) -> str:
    """``x``'s shape with the example dimension written ``N``."""
    dims = [str(d) for d in x.shape]
    if dims and x.shape[0] == n:
        dims[0] = "N"
    return f"({', '.join(dims)}{',' if len(dims) == 1 else ''})"


def input_mismatch(model: nn.Module, forward, batch: tuple) -> str | None:
    """Run ``forward(batch)`` with checks on the inputs of the standard layers (Linear,
    convolutions, Embedding, normalizations) and describe the first layer that receives an
    input of the wrong shape or dtype (``None`` when every checked input fits, or the pass
    fails elsewhere). Used to explain a failed forward pass, never on the happy path."""
    names = {id(m): path for path, m in model.named_modules()}
    n = batch[0].shape[0]

    def check(mod, args):
        x = args[0] if args else None
        if isinstance(x, torch.Tensor):
            want = _expects(mod, x)
            if want is not None:
                where = names.get(id(mod), "?") or "<root>"
                raise _MismatchError(
                    f"layer {where!r} ({type(mod).__name__}) got an input of shape {_shape(x, n)} "
                    f"and dtype {x.dtype}, but expects {want}"
                )

    handles = [m.register_forward_pre_hook(check) for m in model.modules()]
    try:
        with torch.no_grad():
            forward(batch)
    except _MismatchError as e:
        return str(e)
    except Exception:  # noqa: BLE001 - the caller re-raises the original error
        return None
    finally:
        for h in handles:
            h.remove()
    return None

