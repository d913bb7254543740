"""Matrix-free Jacobian products through ``torch.func`` (no per-example work at all).

``jvp`` gives ``J v`` with forward-mode AD in one forward pass; ``vjp`` gives
``Jᵀ u`` with one backward pass. When a module has no forward-mode rule (e.g.
the fused attention kernels), ``J v`` falls back to the double-VJP identity
``J v = ∂/∂u ⟨Jᵀ u, v⟩`` (warned once per engine).
"""

from __future__ import annotations

import warnings

import torch
from torch.func import jvp as func_jvp

from ..data import Batch
from .engine import Engine, math_attention


class ForwardADWarning(UserWarning):
    """Forward-mode AD is unavailable for some op; J·v uses the double-VJP identity."""


def _split(engine: Engine):
    names = list(engine.space.names)
    fixed = {n: p.detach() for n, p in engine.model.named_parameters() if n not in engine.space}
    return names, fixed


def jvp(engine: Engine, batch: Batch, index: int,
        tangents: dict[str, torch.Tensor]) -> torch.Tensor:
    """``(J v)[n, c] = ⟨φ_c(x_n), v⟩`` for one batch: ``(N, C)``."""
    names, fixed = _split(engine)
    _, aux = engine.prepare(batch, index)

    def f(p):
        return engine.functional_outputs({**fixed, **p}, batch, aux)

    primals = {n: engine.params[n].detach() for n in names}
    tang = {n: tangents[n].detach().to(engine.dtype) for n in names}
    with math_attention():
        if not getattr(engine, "_no_forward_ad", False):
            try:
                return func_jvp(f, (primals,), (tang,))[1]
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
            u = torch.zeros_like(s, requires_grad=True)
            grads = torch.autograd.grad(s, list(p.values()), u, create_graph=True, allow_unused=True)
            used = [(g, tang[n]) for g, n in zip(grads, names) if g is not None and g.requires_grad]
            if not used:
                return torch.zeros_like(s)
            (jv,) = torch.autograd.grad([g for g, _ in used], u, [t for _, t in used])
        return jv.detach()


def vjp(engine: Engine, batch: Batch, index: int, cotangent: torch.Tensor) -> dict[str, torch.Tensor]:
    """``Jᵀ u = Σ_{n,c} u[n, c] φ_c(x_n)`` for one batch: ``{name: tensor}``."""
    names, fixed = _split(engine)
    _, aux = engine.prepare(batch, index)
    with math_attention(), torch.enable_grad():
        p = {n: engine.params[n].detach().requires_grad_(True) for n in names}
        s = engine.functional_outputs({**fixed, **p}, batch, aux)
        grads = torch.autograd.grad(s, list(p.values()), cotangent.to(s.dtype), allow_unused=True)
    return {n: (g if g is not None else torch.zeros_like(p[n])).detach() for n, g in zip(names, grads)}
