"""Output functions: *which* matrix is computed.

Every Fisher, Gauss–Newton matrix, empirical Fisher, Jacobian and NTK in
tangentlab is built from *pseudo-outputs* ``s(x) ∈ R^{C'}`` whose tangent
features ``φ_c(x) = ∂s_c(x)/∂θ`` give

    F = (1/N) Σ_n Σ_c φ_c(x_n) φ_c(x_n)ᵀ      (mean over examples, sum over outputs)
    K[n, m, c, d] = ⟨φ_c(x_n), φ_d(x'_m)⟩     (the NTK Gram tensor)

An :class:`OutputFunction` maps model outputs ``z`` on a batch to ``s`` in two
steps: :meth:`~OutputFunction.prepare` computes detached per-example
quantities once per batch (probabilities, sampled labels), and
:meth:`~OutputFunction.head` computes ``s`` from ``z``, differentiably, vectorized
over examples. The split lets the hook engine, the generic ``torch.func`` route
and the matrix-free products all see exactly the same matrix.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from numbers import Integral
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .errors import InvalidInputError

Aux = dict[str, torch.Tensor] | None


class OutputFunction:
    """Base class; the default is the raw model output (Jacobian / NTK / Gauss–Newton)."""

    name = "raw"
    needs_targets = False
    #: True when ``prepare`` draws random numbers (MC Fisher).
    random = False

    def forward(self, model: nn.Module, batch: tuple) -> torch.Tensor:
        """Model outputs ``z`` on a batch (default ``model(batch[0])``).

        Parameters
        ----------
        model : nn.Module
            The network.
        batch : tuple
            ``(x, y, ...)`` on the model's device.

        Returns
        -------
        torch.Tensor
            ``z``, ``(N, ...)``.
        """
        return model(batch[0])

    def select(self, batch: tuple, index: int) -> tuple:
        """Batch ``index`` as this output reads it, before it moves to the model's device:
        targets checked and normalized, and only the examples that count in ``N`` (default:
        the batch unchanged).

        Parameters
        ----------
        batch : tuple
            ``(x, y, ...)`` as the data yields it.
        index : int
            The batch's index, for the error messages.

        Returns
        -------
        tuple
            The batch to compute on.

        Raises
        ------
        InvalidInputError
            For targets this output cannot use.
        """
        return batch

    def prepare(self, z: torch.Tensor, batch: tuple, generator: torch.Generator | None) -> Aux:
        """The detached per-example quantities of a batch, computed once per batch.

        Probabilities, sampled labels...; default none.

        Parameters
        ----------
        z : torch.Tensor
            The detached model outputs ``(N, ...)``.
        batch : tuple
            ``(x, y, ...)``.
        generator : torch.Generator or None
            The batch's random generator (seeded per batch, so every pass draws the same).

        Returns
        -------
        dict of str to torch.Tensor or None
            What :meth:`head` reads as ``aux``.
        """
        return None

    def head(self, z: torch.Tensor, aux: Aux, batch: tuple) -> torch.Tensor:
        """The pseudo-outputs ``s`` from the model outputs, differentiably and per example
        (default ``z`` flattened).

        Parameters
        ----------
        z : torch.Tensor
            The model outputs ``(N, ...)``.
        aux : dict of str to torch.Tensor or None
            What :meth:`prepare` returned.
        batch : tuple
            ``(x, y, ...)``.

        Returns
        -------
        torch.Tensor
            ``s``, ``(N, C')``: the matrices are built from ``φ_c = ∂s_c/∂θ``.
        """
        return z.reshape(z.shape[0], -1)

    def describe(self) -> str:
        """A short description for messages (default the name)."""
        return self.name

    def _targets(self, batch: tuple) -> torch.Tensor:
        if len(batch) < 2:
            raise InvalidInputError(
                f"the {self.name} output needs targets: pass batches (x, y), not inputs alone"
            )
        return batch[1]


class RawOutputs(OutputFunction):
    """``s = f(x)`` flattened: Jacobian, NTK, and the Gauss–Newton matrix ``JᵀJ/N``."""

    name = "raw"


class Regression(OutputFunction):
    """Fisher of a Gaussian ``N(f(x), σ² I)``: ``s = f(x)/σ``, so ``F = JᵀJ/(N σ²)``
    (the Gauss–Newton matrix of ½‖f − y‖²/σ²).

    Parameters
    ----------
    variance : float
        ``σ² > 0``.

    Raises
    ------
    InvalidInputError
        For a variance that is not a positive finite number.
    """

    name = "regression"

    def __init__(self, variance: float = 1.0):
        try:
            ok = 0 < float(variance) < math.inf
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise InvalidInputError(f"variance must be a positive finite number, got {variance!r}")
        self.variance = float(variance)

    def head(self, z: torch.Tensor, aux: Aux, batch: tuple) -> torch.Tensor:
        return z.reshape(z.shape[0], -1) / math.sqrt(self.variance)


def _logits(z: torch.Tensor, what: str) -> torch.Tensor:
    if z.dim() != 2:
        raise InvalidInputError(
            f"the {what} expects logits of shape (N, C), got {tuple(z.shape)}; for other "
            "layouts pass `output=` a callable returning (N, C) logits"
        )
    return z


def _softmax_logits(z: torch.Tensor, what: str) -> torch.Tensor:
    """Logits ``(N, C)`` of a softmax over ``C >= 2`` classes."""
    z = _logits(z, what)
    if z.shape[1] == 1:
        raise InvalidInputError(
            f"the {what} needs at least two logits per example, but the model returns one: a "
            "softmax over one logit is constant (p = 1), so its Fisher is zero. For a sigmoid "
            "classifier with one logit use kind='binary' (the Fisher of a Bernoulli p = sigmoid(z))"
        )
    return z


def sqrt_categorical_covariance(p: torch.Tensor) -> torch.Tensor:
    """Closed-form ``L`` (shape ``(N, C, C-1)``) with ``L Lᵀ = diag(p) − p pᵀ``.

    Column ``k`` (0-based) has ``L[k, k] = sqrt(p_k q_{k+1} / q_k)`` and
    ``L[j, k] = −p_j sqrt(p_k / (q_k q_{k+1}))`` for ``j > k``, where
    ``q_k = Σ_{j≥k} p_j`` is computed by reverse cumulative sums (accurate for
    over-confident predictions, unlike ``1 − Σ_{j<k} p_j``).

    Parameters
    ----------
    p : torch.Tensor
        ``(N, C)`` class probabilities.

    Returns
    -------
    torch.Tensor
        ``L``, ``(N, C, C-1)``.
    """
    c = p.shape[-1]
    q = torch.flip(torch.cumsum(torch.flip(p, [-1]), -1), [-1])
    qk, qk1, pk = q[..., :-1], q[..., 1:], p[..., :-1]
    ok = (qk1 > 0) & (qk > 0)
    safe_qk = torch.where(ok, qk, torch.ones_like(qk))
    safe_qk1 = torch.where(ok, qk1, torch.ones_like(qk1))
    # Factored so that no product of two small q's is formed (it underflows in float32 for
    # confident predictions, turning the coefficient into inf and the entries into NaN):
    # L[k, k] = sqrt(p_k/q_k)·sqrt(q_{k+1}),  L[j, k] = −(p_j/sqrt(q_{k+1}))·sqrt(p_k/q_k).
    r = torch.where(ok, torch.sqrt(pk / safe_qk), torch.zeros_like(pk))
    diag = r * torch.sqrt(torch.where(ok, safe_qk1, torch.zeros_like(qk1)))
    inv = torch.where(ok, torch.rsqrt(safe_qk1), torch.zeros_like(qk1))
    j = torch.arange(c, device=p.device)[:, None]
    k = torch.arange(c - 1, device=p.device)[None, :]
    low = -(p[..., :, None] * inv[..., None, :]) * r[..., None, :]
    L = torch.where(j > k, low, torch.zeros((), dtype=p.dtype, device=p.device))
    return torch.where(j == k, diag[..., None, :].expand_as(L), L)


class ClassificationFisher(OutputFunction):
    """Exact Fisher of a softmax classifier: ``E_{y~p}[∇log p_y ∇log p_yᵀ] = J_zᵀ(diag p − ppᵀ)J_z``.

    Pseudo-outputs ``s = Lᵀ z`` with ``L`` the closed-form square root of
    ``diag p − ppᵀ`` (``C−1`` columns, ``p`` detached): ``C−1`` backward passes.
    """

    name = "exact classification Fisher"

    def prepare(self, z: torch.Tensor, batch: tuple, generator: torch.Generator | None) -> Aux:
        z = _softmax_logits(z, self.name)
        return {"L": sqrt_categorical_covariance(torch.softmax(z, dim=-1))}

    def head(self, z: torch.Tensor, aux: Any, batch: tuple) -> torch.Tensor:
        return torch.einsum("nc,nck->nk", _logits(z, self.name), aux["L"])


class BinaryFisher(OutputFunction):
    """Exact Fisher of a sigmoid (binary-logit) classifier: ``s = z · sqrt(p(1−p))``."""

    name = "binary-logit Fisher"

    def prepare(self, z: torch.Tensor, batch: tuple, generator: torch.Generator | None) -> Aux:
        zz = z.reshape(z.shape[0], -1)
        if zz.shape[1] != 1:
            raise InvalidInputError(
                f"the binary-logit Fisher expects one logit per example, got {zz.shape[1]}"
            )
        p = torch.sigmoid(zz)
        return {"scale": torch.sqrt(p * (1 - p))}

    def head(self, z: torch.Tensor, aux: Any, batch: tuple) -> torch.Tensor:
        return z.reshape(z.shape[0], -1) * aux["scale"]


class MonteCarloFisher(OutputFunction):
    """Monte-Carlo Fisher of a softmax classifier with ``k`` sampled labels per example:
    ``F̂ = (1/N) Σ_n (1/k) Σ_t ∇log p(y_{n,t}|x_n) ∇log p(y_{n,t}|x_n)ᵀ``, ``y ~ p(·|x_n)``.

    Pseudo-outputs ``s_t = log p(y_t | x) / sqrt(k)``. Labels are drawn from a
    generator seeded per batch, so repeated passes see the same samples.

    Parameters
    ----------
    n_samples : int
        ``k ≥ 1``, the sampled labels per example.

    Raises
    ------
    InvalidInputError
        For ``n_samples`` that is not an integer ``≥ 1``.
    """

    name = "Monte-Carlo Fisher"
    random = True

    def __init__(self, n_samples: int = 1):
        if isinstance(n_samples, bool) or not isinstance(n_samples, Integral) or n_samples < 1:
            raise InvalidInputError(f"n_samples must be an integer >= 1, got {n_samples!r}")
        self.n_samples: int = int(n_samples)

    def prepare(self, z: torch.Tensor, batch: tuple, generator: torch.Generator | None) -> Aux:
        p = torch.softmax(_softmax_logits(z, self.name), dim=-1)
        # rows with NaN/Inf logits: sample from a placeholder so the non-finite pseudo-outputs
        # reach the engine, which reports them with the batch index (NonFiniteError)
        p = torch.where(torch.isfinite(p).all(-1, keepdim=True), p, torch.ones_like(p))
        y = torch.multinomial(p, self.n_samples, replacement=True, generator=generator)
        return {"y": y}

    def head(self, z: torch.Tensor, aux: Any, batch: tuple) -> torch.Tensor:
        logp = torch.log_softmax(_logits(z, self.name), dim=-1)
        return logp.gather(1, aux["y"]) / math.sqrt(self.n_samples)


def _cross_entropy(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(z, y, reduction="none")


def _rows(batch: tuple, keep: torch.Tensor) -> tuple:
    """The examples of ``batch`` where ``keep`` (a boolean mask) is true."""
    n = keep.shape[0]
    return tuple(t[keep] if isinstance(t, torch.Tensor) and t.dim() and t.shape[0] == n else t for t in batch)


class EmpiricalFisher(OutputFunction):
    """"Empirical Fisher" (empirical L² metric of the loss): ``(1/N) Σ_n ∇ℓ_n ∇ℓ_nᵀ``.

    ``s = ℓ(z, y)`` per example; ``loss`` maps ``(z, y)`` to per-example losses
    ``(N,)`` (default: cross-entropy with ``reduction='none'``).

    With a loss over class labels (the default, or an ``nn.CrossEntropyLoss`` /
    ``nn.NLLLoss`` module with ``reduction='none'``) the targets are checked before the
    pass: labels of another integer dtype (``int32``, ``uint8``...) are converted to
    ``int64`` and labels of shape ``(N, 1)`` are flattened (both unambiguous); float labels
    of shape ``(N,)`` are refused (float targets of shape ``(N, C)`` are class
    probabilities and pass); a label outside ``0 .. C−1`` is refused. An example whose
    label is the loss's ``ignore_index`` (``-100`` by default) has no loss: it is dropped
    before the pass, so it neither contributes nor counts in ``N`` (the Fisher is the one
    of the labelled examples); a batch with every label ignored is refused.

    Parameters
    ----------
    loss : callable, optional
        ``loss(z, y) -> (N,)`` per-example losses (default cross-entropy with ``reduction='none'``).
    """

    name = "empirical Fisher"
    needs_targets = True

    def __init__(self, loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None):
        self.loss = loss or _cross_entropy
        #: whether the targets are class labels (checked, converted, ``ignore_index`` followed)
        self.class_labels = loss is None or isinstance(loss, (nn.CrossEntropyLoss, nn.NLLLoss))
        #: the label of the examples without a loss (``None``: none)
        self.ignore_index: int | None = -100 if loss is None else getattr(loss, "ignore_index", None)

    def select(self, batch: tuple, index: int) -> tuple:
        if not self.class_labels or len(batch) < 2 or not isinstance(batch[1], torch.Tensor):
            return batch
        y = batch[1]
        if y.is_floating_point() or y.is_complex():
            if y.dim() == 1 or (y.dim() == 2 and y.shape[1] == 1):
                raise InvalidInputError(
                    f"batch {index}: the class labels (element 1) have dtype {y.dtype}; class labels "
                    "are integers: pass `y.long()` (float targets of shape (N, C) are read as class "
                    "probabilities)"
                )
            return batch  # class probabilities
        if y.dim() == 2 and y.shape[1] == 1:
            y = y.reshape(-1)
        elif y.dim() != 1:
            raise InvalidInputError(
                f"batch {index}: the class labels (element 1) have shape {tuple(y.shape)}; the "
                "empirical Fisher takes one class label per example, shape (N,). For one loss over "
                "several labels per example pass `loss=` a function returning one loss per example"
            )
        if y.dtype != torch.long:
            y = y.long()
        batch = (batch[0], y, *batch[2:])
        if self.ignore_index is not None:
            keep = y != self.ignore_index
            if not bool(keep.all()):
                if not bool(keep.any()):
                    raise InvalidInputError(
                        f"batch {index}: every label equals the loss's ignore_index "
                        f"({self.ignore_index}), so no example of this batch has a loss; remove the "
                        "batch from the data"
                    )
                batch = _rows(batch, keep)
        return batch

    def prepare(self, z: torch.Tensor, batch: tuple, generator: torch.Generator | None) -> Aux:
        y = batch[1] if len(batch) > 1 else None
        if self.class_labels and z.dim() == 2 and isinstance(y, torch.Tensor) and not y.is_floating_point():
            c = z.shape[1]
            bad = (y < 0) | (y >= c)
            if self.ignore_index is not None:
                bad &= y != self.ignore_index
            if bool(bad.any()):
                vals = sorted(set(y[bad].tolist()))
                ign = "" if self.ignore_index is None else (
                    f"; the label {self.ignore_index} (the loss's ignore_index) marks an example "
                    "without a loss")
                raise InvalidInputError(
                    f"class labels {vals[:10]} are out of range: the model has {c} logits, so labels "
                    f"run from 0 to {c - 1}{ign}. Check the labels (e.g. 1-based classes: `y - 1`) or "
                    "the model's number of outputs"
                )
        return None

    def head(self, z: torch.Tensor, aux: Aux, batch: tuple) -> torch.Tensor:
        y = self._targets(batch)
        ell = self.loss(z, y)
        if not isinstance(ell, torch.Tensor) or ell.dim() == 0 or ell.shape[0] != z.shape[0]:
            raise InvalidInputError(
                "the empirical-Fisher loss must return one loss per example (use "
                f"reduction='none'); got shape {tuple(getattr(ell, 'shape', ()))}"
            )
        if ell.numel() != z.shape[0]:
            raise InvalidInputError(
                f"the empirical-Fisher loss returned shape {tuple(ell.shape)}, not one loss per "
                "example; reduce the extra dimensions yourself, e.g. "
                "`loss=lambda z, y: F.mse_loss(z, y, reduction='none').sum(-1)`"
            )
        return ell.reshape(z.shape[0], -1)


class CallableOutput(OutputFunction):
    """Any user function ``fn(model, batch) -> (N, ...)`` tensor; its flattened values are the outputs.

    Parameters
    ----------
    fn : callable
        ``fn(model, batch) -> (N, ...)`` tensor.
    """

    name = "custom output"

    def __init__(self, fn: Callable[[nn.Module, tuple], torch.Tensor]):
        self.fn = fn

    def forward(self, model: nn.Module, batch: tuple) -> torch.Tensor:
        out = self.fn(model, batch)
        if not isinstance(out, torch.Tensor):
            raise InvalidInputError(
                f"the output function returned {type(out).__name__}; it must return a tensor (N, ...)"
            )
        return out


KINDS: dict[str, Callable[..., OutputFunction]] = {
    "raw": RawOutputs,
    "jacobian": RawOutputs,
    "regression": Regression,
    "gauss-newton": Regression,
    "exact": ClassificationFisher,
    "classification": ClassificationFisher,
    "binary": BinaryFisher,
    "mc": MonteCarloFisher,
    "monte-carlo": MonteCarloFisher,
    "empirical": EmpiricalFisher,
}


def make_output(kind: Any = "raw", **options: Any) -> OutputFunction:
    """Resolve ``kind`` into an :class:`OutputFunction`.

    Parameters
    ----------
    kind : str or OutputFunction or callable
        A name from :data:`KINDS`, an :class:`OutputFunction` (returned as it is), or a
        callable ``(model, batch) -> outputs``.
    **options
        Keyword arguments of the named kind's constructor (e.g. ``n_samples``).

    Returns
    -------
    OutputFunction
        The output function.

    Raises
    ------
    InvalidInputError
        For an unknown name, or options that do not fit the kind.
    """
    if isinstance(kind, OutputFunction):
        if options:
            raise InvalidInputError(f"options {sorted(options)} given with an OutputFunction instance")
        return kind
    if isinstance(kind, str):
        key = kind.lower()
        if key not in KINDS:
            raise InvalidInputError(f"unknown kind {kind!r}; choose one of {sorted(KINDS)} or pass a callable")
        factory = KINDS[key]
        try:
            return factory(**options)
        except TypeError as e:
            raise InvalidInputError(f"bad options for kind {kind!r}: {e}") from None
    if callable(kind):
        return CallableOutput(kind)
    raise InvalidInputError(f"cannot use {kind!r} as an output kind")
