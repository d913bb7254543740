"""Matrix-free Jacobian products through ``torch.func`` (no per-example work at all).

``jvp`` gives ``J v`` with forward-mode AD in one forward pass; ``vjp`` gives
``Jᵀ u`` with one backward pass. When a module has no forward-mode rule (e.g.
the fused attention kernels), ``J v`` falls back to the double-VJP identity
``J v = ∂/∂u ⟨Jᵀ u, v⟩`` (warned once per engine).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn
from torch.func import jvp as func_jvp

from ..data import Batch
from ..errors import InvalidInputError
from .contexts import math_attention
from .engine import Engine


class ForwardADWarning(UserWarning):
    """Forward-mode AD is unavailable for some op; J·v uses the double-VJP identity."""


def _split(engine: Engine):
    names = list(engine.space.names)
    fixed = {n: p.detach() for n, p in engine.model.named_parameters() if n not in engine.space}
    return names, fixed


def _padding_rows(engine: Engine) -> tuple[dict[str, int], bool]:
    """Embedding rows at ``padding_idx`` (param name -> row) and whether any such weight is shared.

    PyTorch's backward treats the padding row as constant (zero gradient) while
    forward-mode AD propagates its tangent; tangentlab follows the backward
    convention, so those tangent rows are zeroed (or, for a weight also used
    elsewhere, ``J v`` goes through the double-VJP identity).
    """
    rows: dict[str, int] = {}
    shared = False
    uses: dict[int, int] = {}
    for _, p in engine.model.named_parameters(remove_duplicate=False):
        uses[id(p)] = uses.get(id(p), 0) + 1
    by_id = {id(p): n for n, p in engine.params.items()}
    for mod in engine.model.modules():
        if isinstance(mod, nn.Embedding) and mod.padding_idx is not None and id(mod.weight) in by_id:
            rows[by_id[id(mod.weight)]] = mod.padding_idx
            shared = shared or uses[id(mod.weight)] > 1
    return rows, shared


def jvp(engine: Engine, batch: Batch, index: int,
        tangents: dict[str, torch.Tensor]) -> torch.Tensor:
    """``(J v)[n, c] = ⟨φ_c(x_n), v⟩`` for one batch: ``(N, C)``."""
    engine.validate(batch, index)
    names, fixed = _split(engine)
    n_ex = batch[0].shape[0]

    def f(p):  # auxiliary data (probabilities, samples) from this forward's detached outputs
        return engine.functional_outputs({**fixed, **p}, batch, index)

    primals = {n: engine.params[n].detach() for n in names}
    tang = {n: tangents[n].detach().to(engine.model_dtype) for n in names}
    with engine.precision.context(engine.device), engine.explain_inputs(batch, index):
        jv = _jvp(engine, batch, index, f, names, primals, tang, n_ex)
    return engine.precision.cast(jv, engine.dtype)


def _jvp(engine: Engine, batch: Batch, index: int, f: Any, names: list[str], primals: dict[str, torch.Tensor],
         tang: dict[str, torch.Tensor], n_ex: int) -> torch.Tensor:
    pad_rows, pad_shared = _padding_rows(engine)
    with math_attention():
        # joint mode mutates buffers (BatchNorm in train mode): plain autograd only
        if not getattr(engine, "_no_forward_ad", False) and not pad_shared and engine.route != "joint":
            fwd_tang = dict(tang)
            for n, row in pad_rows.items():
                fwd_tang[n] = fwd_tang[n].clone()
                fwd_tang[n][row] = 0

            try:
                s, jv = func_jvp(f, (primals,), (fwd_tang,))  # type: ignore[misc]  # torch's stub types jvp as has_aux
                engine.check_outputs(s, n_ex, index)
                return jv
            except (NotImplementedError, RuntimeError) as e:
                if "forward" not in str(e).lower() and "jvp" not in str(e).lower():
                    raise
                engine._no_forward_ad = True  # type: ignore[attr-defined]
                warnings.warn(
                    f"forward-mode AD is not available ({str(e).splitlines()[0][:120]}); J·v uses "
                    "the double-VJP identity instead (correct, about 2x slower)",
                    ForwardADWarning, stacklevel=3,
                )
        with torch.enable_grad():
            p = {n: t.clone().requires_grad_(True) for n, t in primals.items()}
            s = f(p)
            engine.check_outputs(s.detach(), n_ex, index)
            u = torch.zeros_like(s, requires_grad=True)
            grads = torch.autograd.grad(s, list(p.values()), u, create_graph=True, allow_unused=True)
            used = [(g, tang[n]) for g, n in zip(grads, names) if g is not None and g.requires_grad]
            if not used:
                return torch.zeros_like(s)
            (jv,) = torch.autograd.grad([g for g, _ in used], u, [t for _, t in used])
        return jv.detach()


def vjp(engine: Engine, batch: Batch, index: int, cotangent: torch.Tensor) -> dict[str, torch.Tensor]:
    """``Jᵀ u = Σ_{n,c} u[n, c] φ_c(x_n)`` for one batch: ``{name: tensor}``."""
    engine.validate(batch, index)
    names, fixed = _split(engine)
    with math_attention(), torch.enable_grad(), engine.precision.context(engine.device), \
            engine.explain_inputs(batch, index):
        p = {n: engine.params[n].detach().requires_grad_(True) for n in names}
        s = engine.functional_outputs({**fixed, **p}, batch, index)
        engine.check_outputs(s.detach(), batch[0].shape[0], index)
        if cotangent.shape != s.shape:
            raise InvalidInputError(
                f"batch {index}: the function-space vector has shape {tuple(cotangent.shape)} for "
                f"these examples, the outputs have shape {tuple(s.shape)}"
            )
        grads = torch.autograd.grad(s, list(p.values()), cotangent.to(s.dtype), allow_unused=True)
    return {n: engine.precision.cast((g if g is not None else torch.zeros_like(p[n])).detach(), engine.dtype)
            for n, g in zip(names, grads)}
