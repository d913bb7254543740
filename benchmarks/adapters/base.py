"""The adapter protocol: one class per library (or per recipe family).

An adapter has a ``name`` (the row label), the importable ``module`` it needs
(``available()`` is False when it cannot be imported: the row then reads "not
installed"), and one method per workload task. A method takes the
:class:`~benchmarks.workloads.Case` and the quantity, does its untimed set-up,
and returns a zero-argument callable that does the timed work and returns the
result (tensors on the CPU, in the layouts below):

==================  ==========  ======================================================
task                workloads   result
==================  ==========  ======================================================
full_ntk            W1, W2      ``(N, N, C, C)`` tensor, ``K[n, m, c, d] = <φ_c(x_n), φ_d(x_m)>``
fisher              W3          ``{"diag": (P,), "mv": (P,)}``: the representation's diagonal
                                and its product with ``case.v``; quantity = representation
implicit_fisher     W4          quantity ``mv``: ``(P,)``; ``vTMv``, ``trace``: scalars
per_example_grads   W5          ``(N, P)`` gradients of the per-example cross-entropy
blockwise_ntk       W6          ``(N, N)`` kernel of a scalar-output model
==================  ==========  ======================================================

Flat parameter vectors follow ``model.named_parameters()`` order. Fishers are
*means* over examples (``F = (1/N) Σ_n J_nᵀ H_n J_n``, ``H = diag p − p pᵀ``).

``covers`` maps each task the adapter appears in to the quantities it reports
(``("",)`` for single-quantity workloads); ``todo`` lists (task, quantity)
pairs shown as "not implemented yet" without running anything. A library that cannot
compute a row (a layer it has no rule for, a refused representation) raises
:class:`CannotComputeError` with its reason, in the set-up or in the call: the row then
reads "cannot compute: <reason>" and is not an error of the suite.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.metadata
import importlib.util
from collections.abc import Callable
from typing import Any

import torch

from ..workloads import Case

ALL = ("",)


class CannotComputeError(Exception):
    """The library cannot compute this row; the message says why (shown in the table)."""


def refusing(run: Callable[[], Any], errors: tuple[type[BaseException], ...], library: str,
             detail: str = "") -> Callable[[], Any]:
    """``run`` with the exceptions ``errors`` (the library's refusals of a model or layer it
    does not support) reported as :class:`CannotComputeError`: their message, then ``detail``."""
    def wrapped():
        try:
            return run()
        except errors as e:
            msg = str(e).splitlines()[0] if str(e) else ""
            raise CannotComputeError(f"{library}: {type(e).__name__}: {msg}{' ' + detail if detail else ''}") from e
    return wrapped


@contextlib.contextmanager
def math_attention():
    """PyTorch's composite attention (math SDPA kernel, no fused ``nn.MultiheadAttention`` /
    ``nn.TransformerEncoderLayer`` fast path): the fused kernels have no forward-mode AD, so
    ``jvp``-based recipes need it, as a user of those recipes would set it."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    before = torch.backends.mha.get_fastpath_enabled()
    try:
        torch.backends.mha.set_fastpath_enabled(False)
        with sdpa_kernel(SDPBackend.MATH):
            yield
    finally:
        torch.backends.mha.set_fastpath_enabled(before)


class Adapter:
    name: str = "?"
    module: str | None = None  # importable module needed; None: always available
    distribution: str | None = None  # PyPI name, for the version (default: module)
    covers: dict[str, tuple[str, ...]] = {}
    todo: frozenset[tuple[str, str]] = frozenset()
    description: str = ""

    def available(self) -> bool:
        return self.module is None or importlib.util.find_spec(self.module) is not None

    def version(self) -> str:
        if self.module is None:
            import torch

            return f"torch {torch.__version__}"
        try:
            return importlib.metadata.version(self.distribution or self.module)
        except importlib.metadata.PackageNotFoundError:
            mod = importlib.import_module(self.module)
            return str(getattr(mod, "__version__", "?"))

    def status(self, task: str, quantity: str) -> str | None:
        """None when the adapter does not appear in this (task, quantity); else ``run``,
        ``not implemented yet`` or ``not installed``."""
        if quantity not in self.covers.get(task, ()):
            return None
        if (task, quantity) in self.todo:
            return "not implemented yet"
        if not self.available():
            return "not installed"
        return "run"

    # ---- one method per task (override the ones in ``covers``) ---------------------------
    def full_ntk(self, case: Case, quantity: str) -> Callable[[], Any]:
        raise NotImplementedError

    def fisher(self, case: Case, quantity: str) -> Callable[[], Any]:
        raise NotImplementedError

    def implicit_fisher(self, case: Case, quantity: str) -> Callable[[], Any]:
        raise NotImplementedError

    def per_example_grads(self, case: Case, quantity: str) -> Callable[[], Any]:
        raise NotImplementedError

    def blockwise_ntk(self, case: Case, quantity: str) -> Callable[[], Any]:
        raise NotImplementedError
