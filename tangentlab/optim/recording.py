"""What the empirical-Fisher optimizers read from the user's own forward and backward passes.

Forward hooks keep each covered layer's inputs, tensor hooks on its output the gradient of
the loss with respect to that output; a forward pre-hook on the model keeps the model's
inputs (for the true Fisher's extra pass) and counts the layer calls of each forward pass.
The hooks hold weak references: a deep copy of the model shares the hook functions, so they
check that the module is the recorder's own (copies are ignored).

A layer whose parameters act inside its forward (a *tapped* rule, e.g.
``nn.MultiheadAttention``'s input projections, see :mod:`tangentlab.layers.base`) is recorded
by running the rule's functional forward in place of the module's own while the recorder is
attached: the module's ``forward`` becomes a bound method (so that a deep copy of the model
is rebound to the copy, which runs the class's own forward) that computes the same outputs
through ``rule.tapped_forward``, keeps what the tap saves and, by tensor hooks, the gradients
of the tapped tensors. :meth:`Recorder.remove` restores the module's forward.
"""

from __future__ import annotations

import types
import weakref
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from ..errors import InvalidInputError
from ..layers.base import LayerRule, Tap, join_taps


class RecordingTap(Tap):
    """A :class:`~tangentlab.layers.base.Tap` for the user's own backward pass: tensor hooks
    keep the gradient of every tapped tensor; once all have arrived, ``done`` receives them
    joined as ``(N, F)`` (:func:`~tangentlab.layers.base.join_taps` without the output axis)."""

    def __init__(self, path: str, done: Callable[[torch.Tensor], None]):
        super().__init__(path)
        self._done = done
        self._grads: dict[str, torch.Tensor] = {}

    def grad(self, name: str, y: torch.Tensor) -> torch.Tensor:
        if y.grad_fn is None and not y.requires_grad:
            y = y.detach().requires_grad_(True)
        self.names.append(name)
        self.shapes.append(tuple(y.shape))

        def hook(g: torch.Tensor) -> None:
            self._grads[name] = g.detach()
            if len(self._grads) == len(self.names):
                n = self.shapes[0][0]
                self._done(join_taps([self._grads[k].unsqueeze(0) for k in self.names], n)[0])

        y.register_hook(hook)
        return y


class Recorder:
    """Per covered module path: ``{"args", "kwargs", "gout", "calls"}`` of its last call (and
    ``"tap"``, a :class:`RecordingTap`, for the modules in ``tapped``: path -> (module, rule),
    whose ``gout`` is the joined ``(N, F)`` gradient of the tapped tensors); and ``inputs``:
    ``(args, kwargs)`` of the model's last forward pass."""

    def __init__(self, model: nn.Module, modules: dict[str, nn.Module],
                 tapped: dict[str, tuple[nn.Module, LayerRule]] | None = None):
        self.names = list(modules)
        self.records: dict[str, dict[str, Any]] = {}
        self.inputs: tuple[tuple, dict] | None = None
        self.recording = True
        tapped = tapped or {}
        self._handles = [mod.register_forward_hook(self._hook(name, mod), with_kwargs=True)
                         for name, mod in modules.items() if name not in tapped]
        self._handles.append(model.register_forward_pre_hook(self._root_hook(model), with_kwargs=True))
        self._patched: list[tuple[nn.Module, Any]] = []
        for name, (mod, rule) in tapped.items():
            self._patched.append((mod, mod.__dict__.get("forward")))
            mod.__dict__["forward"] = types.MethodType(self._tapped_forward(name, mod, rule), mod)

    def _tapped_forward(self, name: str, owner: nn.Module, rule: LayerRule):
        ref = weakref.ref(self)

        def forward(mod, *args, **kwargs):
            rec = ref()
            if rec is None or mod is not owner or not rec.recording or not torch.is_grad_enabled():
                return type(mod).forward(mod, *args, **kwargs)
            entry: dict[str, Any] = {"args": (), "kwargs": {}, "gout": None,
                                     "calls": rec.records.get(name, {}).get("calls", 0) + 1}
            entry["tap"] = tap = RecordingTap(name, lambda g: entry.__setitem__("gout", g))
            out = rule.tapped_forward(mod, tap, *args, **kwargs)
            rec.records[name] = entry
            return out

        return forward

    def _hook(self, name: str, owner: nn.Module):
        ref = weakref.ref(self)

        def hook(mod, args, kwargs, out):
            rec = ref()
            if (rec is None or mod is not owner or not rec.recording or not torch.is_grad_enabled()
                    or not isinstance(out, torch.Tensor) or not out.requires_grad):
                return
            entry = {"args": tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args),
                     "kwargs": kwargs, "gout": None, "calls": rec.records.get(name, {}).get("calls", 0) + 1}
            rec.records[name] = entry

            def grad_hook(g):
                try:
                    entry["gout"] = g.detach()
                except RuntimeError:  # a vectorized backward (e.g. the engine's): not ours to record
                    pass

            out.register_hook(grad_hook)

        return hook

    def _root_hook(self, owner: nn.Module):
        ref = weakref.ref(self)

        def hook(mod, args, kwargs):
            rec = ref()
            if rec is None or mod is not owner or not rec.recording or not torch.is_grad_enabled():
                return
            rec.inputs = (tuple(a.detach() if isinstance(a, torch.Tensor) else a for a in args), kwargs)
            for entry in rec.records.values():
                entry["calls"] = 0

        return hook

    def check(self) -> None:
        """Every covered layer saw exactly one forward call and a backward pass since the last step."""
        for name in self.names:
            rec = self.records.get(name)
            if rec is None or rec["gout"] is None:
                raise InvalidInputError(f"no backward pass went through layer {name!r} since the last step: "
                                        "call loss.backward() (on a loss of this model's outputs) before step()")
            if rec["calls"] > 1:
                raise InvalidInputError(f"layer {name!r} was called {rec['calls']} times in one forward pass; "
                                        "KFAC/EKFAC need one call per layer (pass layers= to exclude it)")

    def consumed(self) -> None:
        """Forget the output gradients (a step used them)."""
        for rec in self.records.values():
            rec["gout"] = None

    def remove(self) -> None:
        """Remove the hooks and restore the forward of the tapped modules."""
        for h in self._handles:
            h.remove()
        self._handles = []
        for mod, old in self._patched:
            if old is None:
                mod.__dict__.pop("forward", None)
            else:
                mod.__dict__["forward"] = old
        self._patched = []


__all__ = ["Recorder", "RecordingTap"]
