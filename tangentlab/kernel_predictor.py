"""Closed-form predictions of a linearized network trained on the squared loss, from a kernel.

:class:`KernelPredictor` gives the predictions of the linearized model
(:class:`tangentlab.linearize.Linearized`) trained on the squared loss
``L(θ) = (1/2N) Σ_n ‖f_θ(x_n) − y_n‖²`` (mean over examples, sum over outputs) by gradient
flow for a time ``t``, by ``k`` steps of gradient descent, or to convergence / with a ridge
penalty, from the empirical NTK ``K = J Jᵀ`` (``tl.ntk``) at ``θ₀``, or
(:meth:`KernelPredictor.from_kernel`) from any other kernel such as the infinite-width NTK of
:mod:`tangentlab.limits`.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .api import ntk
from .errors import InvalidInputError
from .linearize import check_batchnorm_eval, model_at, targets_matrix
from .space import ParamSpace, Selector


def _as_matrix(K: Any) -> torch.Tensor:
    """An ``(N1, N2, C, D)`` kernel (``FMatDense`` or tensor) as the ``(N1·C, N2·D)`` matrix."""
    if hasattr(K, "as_matrix"):
        return K.as_matrix()
    n1, n2, c, d = K.shape
    return K.permute(0, 2, 1, 3).reshape(n1 * c, n2 * d)


class KernelPredictor:
    """Closed-form training of the linearized model on the squared loss, from the NTK at ``θ₀``.

    With ``K = J Jᵀ`` the ``(NC × NC)`` NTK on the training inputs (``tl.ntk``, rows
    ``n·C + c``), ``r₀ = f_{θ₀}(X) − Y`` and the loss ``L(θ) = (1/2N) Σ_n ‖f̄_θ(x_n) − y_n‖²
    + (ρ/2) ‖θ − θ₀‖²`` (``ρ`` = ``ridge``), the linearized model after

    * gradient flow ``θ̇ = −∇L`` for a time ``t``, or
    * ``k`` steps of gradient descent ``θ ← θ − η ∇L`` (``steps=k, lr=η``),

    predicts ``f_t(x) = f_{θ₀}(x) − K(x, X) V diag(g(λ)) Vᵀ r₀`` with ``K = V diag(λ) Vᵀ`` and

    * flow: ``g(λ) = (1 − exp(−(λ/N + ρ) t)) / (λ + Nρ)`` (``t/N`` when ``λ + Nρ = 0``);
    * GD: ``g(λ) = (1 − (1 − η(λ/N + ρ))^k) / (λ + Nρ)`` (``ηk/N`` when ``λ + Nρ = 0``);
    * ``t = ∞``: ``g(λ) = 1/(λ + Nρ)`` — kernel ridge regression; with ``ρ = 0`` the
      minimum-norm interpolant (eigenvalues below ``rcond·λ_max`` dropped).

    On the training inputs ``K(X, X) = K``, so ``f_t(X) = Y + V diag(1 − λ g(λ)) Vᵀ r₀ `` (for ``ρ = 0``).
    ``at`` selects the checkpoint whose NTK is used; ``offset=False`` drops ``f_{θ₀}``
    (kernel regression from a zero function). Integer labels become one-hot targets.
    :meth:`from_kernel` runs the same closed forms with any other kernel, such as the
    infinite-width NTK of :mod:`tangentlab.limits` (the infinite-width model's mean prediction).

    Parameters
    ----------
    model : nn.Module
    x_train : torch.Tensor
        ``(N, ...)``.
    y_train : torch.Tensor
        ``(N,)`` labels or ``(N, C)`` targets.
    at : None, nn.Module, PVector or mapping
    params : selector, optional
        The parameters of the NTK.
    offset : bool
    batch_size : int, optional
    progress : bool, optional
    """

    def __init__(self, model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor, *, at: Any = None,
                 params: Selector = None, offset: bool = True, batch_size: int | None = None,
                 progress: bool | None = None):
        check_batchnorm_eval(model, "KernelPredictor")
        self.model: nn.Module | None = model_at(model, at).eval()
        # modules/parameters of the original model are resolved to names (the copy has its own objects)
        self.params = None if params is None else list(ParamSpace.from_model(model, params).names)
        self.batch_size = batch_size
        self.progress = progress
        self.offset = bool(offset)
        self.x_train = x_train
        dtype = next(self.model.parameters()).dtype
        with torch.no_grad():
            f0 = self._f0(x_train)
        self.n, self.c = f0.shape
        self.dtype = dtype
        self.y = targets_matrix(y_train, self.c, dtype)
        if self.y.shape != f0.shape:
            raise InvalidInputError(f"y_train: targets have shape {tuple(self.y.shape)}, outputs {tuple(f0.shape)}")
        self._fit(f0, self._ntk(x_train, None).as_matrix())

    @classmethod
    def from_kernel(cls, kernel: Callable[[torch.Tensor, torch.Tensor | None], Any], x_train: torch.Tensor,
                    y_train: torch.Tensor, *, n_outputs: int | None = None,
                    f0: Callable[[torch.Tensor], torch.Tensor] | None = None) -> KernelPredictor:
        """The same closed forms with any kernel in place of the network's NTK.

        ``kernel(x1, x2)`` returns an ``(N1, N2, C, C)`` kernel (an
        :class:`~tangentlab.FMatDense` or a tensor; ``x2=None``: ``x1`` with itself), e.g. an
        infinite-width NTK ``lambda a, b: tangentlab.limits.ntk(model, a, b)``; ``f0(x)`` the
        outputs ``(N, C)`` at ``t = 0`` (``None``: the zero function, the mean prediction of
        the infinite-width network, whose outputs at initialization are a zero-mean process).
        Both are called again by :meth:`predict`: pass a frozen copy (:func:`model_at`) of a
        network that is trained meanwhile.

        Parameters
        ----------
        kernel : callable
            ``kernel(x1, x2 or None) -> (N1, N2, C, C)`` kernel.
        x_train : torch.Tensor
            ``(N, ...)``.
        y_train : torch.Tensor
            ``(N,)`` labels or ``(N, C)`` targets.
        n_outputs : int, optional
            ``C``, checked against the kernel's.
        f0 : callable, optional
            ``f0(x) -> (N, C)`` outputs at ``t = 0``; None: zero.

        Returns
        -------
        KernelPredictor
        """
        self = cls.__new__(cls)
        self.model, self.params, self.batch_size, self.progress = None, None, None, None
        self.offset, self.x_train = f0 is not None, x_train
        self._kernel, self._f0_fn = kernel, f0
        K = self._ntk(x_train, None)
        shape = K.shape
        self.n, self.c = int(shape[0]), int(shape[2])
        if n_outputs is not None and int(n_outputs) != self.c:
            raise InvalidInputError(f"n_outputs={n_outputs}, but the kernel has {self.c} outputs")
        Km = _as_matrix(K)
        self.dtype = Km.dtype
        with torch.no_grad():
            f = self._f0(x_train)
        self.y = targets_matrix(y_train, self.c, self.dtype)
        if self.y.shape != f.shape:
            raise InvalidInputError(f"y_train: targets have shape {tuple(self.y.shape)}, outputs {tuple(f.shape)}")
        self._fit(f, Km)
        return self

    def _fit(self, f0: torch.Tensor, K: torch.Tensor) -> None:
        """Eigendecompose the training kernel ``K`` ``(NC, NC)`` and project ``r₀ = f0 − Y``."""
        self.f0_train = f0
        lam, V = torch.linalg.eigh(K)
        self.eigenvalues = lam.clamp_min(0).flip(0)
        self.eigenvectors = V.flip(1)
        self.residual0 = (f0 - self.y).reshape(-1)
        self._proj = self.eigenvectors.T @ self.residual0  # Vᵀ r₀

    _kernel: Callable[[torch.Tensor, torch.Tensor | None], Any] | None = None
    _f0_fn: Callable[[torch.Tensor], torch.Tensor] | None = None

    def _f0(self, x: torch.Tensor) -> torch.Tensor:
        if self.model is None:  # from_kernel
            if self._f0_fn is None:
                return torch.zeros(x.shape[0], self.c, dtype=self.dtype, device=x.device)
            return self._f0_fn(x).reshape(x.shape[0], self.c).to(self.dtype)
        out = self.model(x).reshape(x.shape[0], -1)
        return out if self.offset else torch.zeros_like(out)

    def _ntk(self, x1: torch.Tensor, x2: torch.Tensor | None):
        if self._kernel is not None:
            return self._kernel(x1, x2)
        assert self.model is not None  # set unless from_kernel, which has a kernel
        return ntk(self.model, x1, x2, params=self.params, batch_size=self.batch_size, progress=self.progress)

    def gains(self, t: float = math.inf, *, steps: int | None = None, lr: float | None = None,
              ridge: float = 0.0, rcond: float = 1e-10) -> torch.Tensor:
        """``g(λ)`` for each eigenvalue (see the class docstring), ``(N·C,)``, descending ``λ``.

        Parameters
        ----------
        t : float
            The gradient-flow time (``math.inf``: the limit).
        steps, lr : int and float, optional
            ``k`` gradient-descent steps of rate ``η`` instead of the flow.
        ridge : float
            ``ρ ≥ 0``.
        rcond : float
            Relative cutoff under which ``λ + Nρ`` counts as 0.
        """
        if ridge < 0:
            raise InvalidInputError(f"ridge: must be >= 0, got {ridge}")
        lam, n = self.eigenvalues, self.n
        s = lam + n * ridge  # λ + Nρ
        tiny = s <= rcond * max(float(lam[0]), 1e-300)
        safe = torch.where(tiny, torch.ones_like(s), s)
        if steps is not None:
            if lr is None or lr <= 0 or steps < 0:
                raise InvalidInputError("steps/lr: gradient descent needs steps >= 0 and lr > 0")
            factor = 1 - lr * safe / n
            g = -torch.expm1(steps * torch.log1p(-lr * safe / n)) / safe if bool((factor > 0).all()) \
                else (1 - factor ** steps) / safe
            return torch.where(tiny, torch.full_like(s, lr * steps / n), g)
        if t is None or t < 0:
            raise InvalidInputError(f"t: must be a time >= 0 or math.inf, got {t}")
        if math.isinf(t):
            return torch.where(tiny, torch.zeros_like(s), 1 / safe)
        g = -torch.expm1(-safe * t / n) / safe
        return torch.where(tiny, torch.full_like(s, t / n), g)

    def coefficients(self, **kw: Any) -> torch.Tensor:
        """``a = −V diag(g) Vᵀ r₀`` (length ``NC``): ``θ − θ₀ = Jᵀ a`` and ``f(x) = f_{θ₀}(x) + K(x, X) a``.

        Parameters
        ----------
        **kw
            The arguments of :meth:`gains`.
        """
        return -(self.eigenvectors @ (self.gains(**kw) * self._proj))

    def predict(self, x: torch.Tensor | None = None, t: float = math.inf, *, steps: int | None = None,
                lr: float | None = None, ridge: float = 0.0, rcond: float = 1e-10) -> torch.Tensor:
        """Outputs ``(M, C)`` of the trained linearized model on ``x`` (``None``: the training inputs).

        Parameters
        ----------
        x : torch.Tensor, optional
            ``(M, ...)``.
        t, steps, lr, ridge, rcond
            As in :meth:`gains`.
        """
        a = self.coefficients(t=t, steps=steps, lr=lr, ridge=ridge, rcond=rcond)
        if x is None:
            lam = self.eigenvalues
            Ka = self.eigenvectors @ (lam * (self.eigenvectors.T @ a))
            return self.f0_train + Ka.reshape(self.n, self.c)
        with torch.no_grad():
            f0 = self._f0(x)
        Kx = _as_matrix(self._ntk(x, self.x_train))
        return f0 + (Kx @ a).reshape(x.shape[0], self.c)


__all__ = ["KernelPredictor"]
