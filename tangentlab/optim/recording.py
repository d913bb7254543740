"""What the empirical-Fisher optimizers read from the user's own forward and backward passes.

Forward hooks keep each covered layer's inputs, tensor hooks on its output the gradient of
the loss with respect to that output; a forward pre-hook on the model keeps the model's
inputs (for the true Fisher's extra pass) and counts the layer calls of each forward pass.
The hooks hold weak references: a deep copy of the model shares the hook functions, so they
check that the module is the recorder's own (copies are ignored).
"""

from __future__ import annotations

import weakref
from typing import Any

import torch
from torch import nn

from ..errors import InvalidInputError


class Recorder:
    """Per covered module path: ``{"args", "kwargs", "gout", "calls"}`` of its last call; and
    ``inputs``: ``(args, kwargs)`` of the model's last forward pass."""

    def __init__(self, model: nn.Module, modules: dict[str, nn.Module]):
        self.names = list(modules)
        self.records: dict[str, dict[str, Any]] = {}
        self.inputs: tuple[tuple, dict] | None = None
        self.recording = True
        self._handles = [mod.register_forward_hook(self._hook(name, mod), with_kwargs=True)
                         for name, mod in modules.items()]
        self._handles.append(model.register_forward_pre_hook(self._root_hook(model), with_kwargs=True))

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
        for h in self._handles:
            h.remove()
        self._handles = []


__all__ = ["Recorder"]
