"""Context managers around ``torch.func`` calls on a user's model: the module's own
``Parameter`` objects kept through ``functional_call``, and the composite attention path.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn


def shared_modules(module: nn.Module) -> list[nn.Module]:
    """The submodules reachable under several paths (one instance used at several places)."""
    seen: set[int] = set()
    shared: dict[int, nn.Module] = {}
    for _, m in module.named_modules(remove_duplicate=False):
        if id(m) in seen:
            shared[id(m)] = m
        seen.add(id(m))
    return list(shared.values())


@contextlib.contextmanager
def keep_tensors(modules: list[nn.Module]):
    """Puts the parameters and buffers of ``modules`` back after a ``functional_call``.

    ``torch.func.functional_call`` swaps the tensors of every path of a module in turn and
    swaps them back in the same order, so a module used at several places would keep the
    replacement tensors: the user's ``Parameter`` objects would be gone from the model.
    """
    saved = [(m, dict(m._parameters), dict(m._buffers)) for m in modules]
    try:
        yield
    finally:
        for m, params, buffers in saved:
            m._parameters.update(params)
            m._buffers.update(buffers)


@contextlib.contextmanager
def math_attention():
    """Use the composite (math) attention path: it has forward-mode and vmap rules.

    Selects the math SDPA kernel and, for the duration of the block, turns off the fused
    ``nn.MultiheadAttention`` fast path (which has no forward-mode rule); the previous
    setting is restored on exit.
    """
    try:
        from torch.nn.attention import SDPBackend, sdpa_kernel
    except ImportError:  # pragma: no cover
        yield
        return
    mha = getattr(torch.backends, "mha", None)
    before = mha.get_fastpath_enabled() if mha is not None else None
    try:
        if mha is not None:
            mha.set_fastpath_enabled(False)
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        if mha is not None:
            mha.set_fastpath_enabled(before)


__all__ = ["keep_tensors", "math_attention", "shared_modules"]
