"""Linearized networks and α-scaled (lazy) training.

Two ways of looking at a network ``f_θ`` through its tangent at a point ``θ₀``
(the initialization or any checkpoint ``θ_t``):

* :class:`Linearized` — the first-order Taylor model
  ``f̄_θ(x) = f_{θ₀}(x) + J_{θ₀}(x) (θ − θ₀)``, evaluated with one forward-mode
  product (``torch.func.jvp``) per call: the Jacobian is never materialized. Its
  trainable parameters are ``θ`` (initialized at ``θ₀``), so any ``torch.optim``
  optimizer trains it; this is the exact "lazy" limit (thesis eq. 5.2.3).
* :class:`AlphaScaled` — Chizat et al.'s ``f^α_θ(x) = f_{θ₀}(x) + α (f_θ(x) − f_{θ₀}(x))``
  (eq. 5.2.4), trained with learning rate ``η/α²`` (:meth:`AlphaScaled.scaled_lr`):
  function-space steps stay ``O(1)`` while parameter steps scale as ``1/α``. ``α = 1`` is
  standard training, ``α → ∞`` tends to the linearized dynamics, ``α < 1`` makes the
  features more adaptive. ``subtract_initial_output=True`` drops ``f_{θ₀}`` (zero function
  at init, as in the authors' code).
* :func:`train_linearized` trains a :class:`Linearized` model for a number of epochs with a
  ``torch.optim`` optimizer; its closed form from the frozen NTK is
  :class:`tangentlab.kernel_predictor.KernelPredictor`.

BatchNorm: the linearization of a batch-coupled function is ill-defined, and α-scaling
amplifies batch statistics. Both wrappers therefore use BatchNorm layers in eval mode with
frozen running statistics (their affine parameters stay trainable); a model handed over
with a BatchNorm layer in train mode is refused with :class:`~tangentlab.errors.InvalidInputError`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping
from typing import Any

import torch
from torch import nn
from torch.func import functional_call, jvp
from torch.utils._pytree import tree_map

from .errors import InvalidInputError
from .progress import progress as bar
from .space import ParamSpace, Selector
from .training import BatchStream, train_step
from .vectors import PVector

__all__ = [
    "Linearized", "AlphaScaled", "train_linearized", "model_at", "half_mse",
    "check_batchnorm_eval", "targets_matrix",
]

_BN = nn.modules.batchnorm._BatchNorm


def check_batchnorm_eval(model: nn.Module, what: str = "model") -> None:
    """Raise InvalidInputError if a BatchNorm layer of ``model`` is in train mode (batch statistics).

    Parameters
    ----------
    model : nn.Module
    what : str
        Who asks, for the error message.
    """
    for name, mod in model.named_modules():
        if isinstance(mod, _BN) and mod.training:
            raise InvalidInputError(
                f"{what}: BatchNorm layer {name or '<root>'!r} is in train mode; linearization and "
                "alpha-scaling need frozen running statistics: call .eval() on the BatchNorm layers "
                "(or on the model) first"
            )


def _batchnorm_eval(model: nn.Module) -> None:
    for mod in model.modules():
        if isinstance(mod, _BN):
            mod.eval()


def model_at(model: nn.Module, at: Any = None) -> nn.Module:
    """A deep copy of ``model`` whose parameters (and buffers, when given) are those of ``at``.

    ``at`` may be ``None`` (the current values), another module with the same parameter
    names, a :class:`~tangentlab.PVector`, or a mapping ``name -> tensor`` such as a
    ``state_dict()`` checkpoint (parameters and optionally buffers; other names refused).

    Parameters
    ----------
    model : nn.Module
        The network (not modified).
    at : None, nn.Module, PVector or mapping
    """
    m = copy.deepcopy(model)
    if at is None:
        return m
    if isinstance(at, nn.Module):
        values: Mapping[str, torch.Tensor] = at.state_dict()
    elif isinstance(at, PVector):
        values = at.to_dict()
    elif isinstance(at, Mapping):
        values = at
    else:
        raise InvalidInputError(
            f"at: expected None, an nn.Module, a PVector or a state_dict mapping, got {type(at).__name__}")
    own: dict[str, torch.Tensor] = dict(m.named_parameters())
    own.update(dict(m.named_buffers()))
    for name, value in values.items():
        if name not in own:
            raise InvalidInputError(f"at: {name!r} is not a parameter or buffer of the model "
                                    f"(accepted: {', '.join(list(own)[:8])}{', ...' if len(own) > 8 else ''})")
        t = own[name]
        if tuple(value.shape) != tuple(t.shape):
            raise InvalidInputError(f"at: {name!r} has shape {tuple(value.shape)}, the model's is {tuple(t.shape)}")
        with torch.no_grad():
            t.copy_(value.detach().to(dtype=t.dtype, device=t.device))
    return m


def _frozen_copy(model: nn.Module, at: Any = None) -> nn.Module:
    base = model_at(model, at)
    base.eval()
    base.requires_grad_(False)
    return base


class Linearized(nn.Module):
    """``f̄_θ(x) = f_{θ₀}(x) + J_{θ₀}(x)(θ − θ₀)`` with trainable ``θ``, by forward-mode products.

    Parameters
    ----------
    model : nn.Module
        The network ``f``. It is copied; the original is left untouched.
    params : selector or ParamSpace, optional
        Which parameters to linearize (a :data:`~tangentlab.space.Selector`: names, modules,
        a predicate; ``None`` = all parameters with ``requires_grad``). The others are held
        fixed at their value at ``θ₀``.
    at : None, nn.Module, PVector or mapping
        The linearization point ``θ₀`` (``None``: the model's current parameters; or a
        checkpoint: module, :class:`~tangentlab.PVector`, or ``state_dict`` — buffers such as
        BatchNorm running statistics are taken from it too).

    Notes
    -----
    Each call computes ``(f_{θ₀}(x), J_{θ₀}(x) δ)`` with ``δ = θ − θ₀`` by one
    ``torch.func.jvp`` through ``functional_call``; gradients with respect to ``θ`` are
    ``J_{θ₀}(x)ᵀ g`` (reverse mode through the tangent), so the model is exactly linear in
    ``θ``. The wrapped network is always evaluated in eval mode (dropout off, BatchNorm
    with frozen running statistics); a BatchNorm layer in train mode is refused.
    ``parameters()`` yields exactly the trainable ``θ`` tensors (:meth:`theta` maps the
    original names to them); ``θ₀`` and the other tensors are buffers, so ``state_dict()``
    is a self-contained checkpoint.
    """

    def __init__(self, model: nn.Module, params: Selector | ParamSpace = None, at: Any = None):
        super().__init__()
        check_batchnorm_eval(model, "Linearized")
        base = _frozen_copy(model, at)
        if params is None:
            trainable = [n for n, p in model.named_parameters() if p.requires_grad]
            if not trainable:
                raise InvalidInputError("params: the model has no parameter with requires_grad=True")
            space = ParamSpace.from_model(base, trainable)
        elif isinstance(params, ParamSpace):
            space = params
        else:
            # resolve modules/parameters of the *original* model to names, then to the copy
            space = ParamSpace.from_model(model, params)
        self.space: ParamSpace = space
        self._names: list[str] = list(space.names)
        self._base = [base]  # not registered: its tensors live in the buffers below
        all_params = dict(base.named_parameters())
        self._fixed_names = [n for n in all_params if n not in set(self._names)]
        self._buffer_names = [n for n, _ in base.named_buffers()]
        self._key: dict[str, str] = {}
        for i, n in enumerate(self._names):
            self.register_buffer(f"theta0_{i}", all_params[n].detach().clone())
        for i, n in enumerate(self._fixed_names):
            self.register_buffer(f"fixed_{i}", all_params[n].detach().clone())
        for i, n in enumerate(self._buffer_names):
            self.register_buffer(f"buffer_{i}", dict(base.named_buffers())[n].detach().clone())
        self.theta_params = nn.ParameterList(
            [nn.Parameter(all_params[n].detach().clone()) for n in self._names])

    # --- tensors ---------------------------------------------------------------
    def theta(self) -> dict[str, nn.Parameter]:
        """The trainable parameters ``θ`` under the model's parameter names."""
        return dict(zip(self._names, self.theta_params))

    def theta0(self) -> dict[str, torch.Tensor]:
        """The linearization point ``θ₀`` (linearized parameters only)."""
        return {n: getattr(self, f"theta0_{i}") for i, n in enumerate(self._names)}

    def _constants(self) -> dict[str, torch.Tensor]:
        out = {n: getattr(self, f"fixed_{i}") for i, n in enumerate(self._fixed_names)}
        out.update({n: getattr(self, f"buffer_{i}") for i, n in enumerate(self._buffer_names)})
        return out

    def delta(self) -> PVector:
        """``θ − θ₀`` as a :class:`~tangentlab.PVector` (autograd-connected to ``θ``)."""
        t0 = self.theta0()
        return PVector(self.space, {n: p - t0[n] for n, p in self.theta().items()})

    def distance(self) -> float:
        """``‖θ − θ₀‖₂``."""
        with torch.no_grad():
            return float(self.delta().norm())

    # --- evaluation --------------------------------------------------------------
    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """``f̄_θ(x) = f_{θ₀}(x) + J_{θ₀}(x)(θ − θ₀)`` on the wrapped model's inputs."""
        t0 = self.theta0()
        return self.expansion({n: p - t0[n] for n, p in self.theta().items()}, *args, **kwargs)

    def expansion(self, delta: Mapping[str, torch.Tensor], *args: Any, **kwargs: Any) -> Any:
        """``f_{θ₀}(x) + J_{θ₀}(x) δ`` for a given ``δ`` (``{name: tensor}`` over the linearized
        parameters), by one ``torch.func.jvp``; differentiable in ``δ``. The forward pass is
        this at ``δ = θ − θ₀``; other models of the same form (e.g. a factorized ``δ``)
        reuse it.

        Parameters
        ----------
        delta : mapping of str to torch.Tensor
        *args, **kwargs
            The wrapped model's inputs.
        """
        base = self._base[0]
        consts = self._constants()
        t0 = self.theta0()
        delta = {n: delta[n] for n in self._names}

        def f(p: dict[str, torch.Tensor]) -> Any:
            return functional_call(base, {**consts, **p}, args, kwargs)

        out, jv = jvp(f, (t0,), (delta,))  # type: ignore[misc]  # torch's stub types jvp as has_aux
        return tree_map(lambda a, b: a + b, out, jv) if not isinstance(out, torch.Tensor) else out + jv

    @torch.no_grad()
    def initial_output(self, *args: Any, **kwargs: Any) -> Any:
        """``f_{θ₀}(x)``."""
        return functional_call(self._base[0], {**self._constants(), **self.theta0()}, args, kwargs)

    def base_model(self) -> nn.Module:
        """A copy of the network at ``θ₀`` (eval mode): its NTK (``tl.ntk``) is this model's, for all ``θ``."""
        return self._model_with(self.theta0())

    def nonlinear_model(self) -> nn.Module:
        """A copy of the *non-linear* network at the current ``θ`` (eval mode)."""
        return self._model_with({n: p.detach() for n, p in self.theta().items()})

    def _model_with(self, values: dict[str, torch.Tensor]) -> nn.Module:
        m = copy.deepcopy(self._base[0])
        state = {**self._constants(), **values}
        own: dict[str, torch.Tensor] = dict(m.named_parameters())
        own.update(dict(m.named_buffers()))
        with torch.no_grad():
            for n, t in state.items():
                own[n].copy_(t)
        m.requires_grad_(True)
        return m.eval()

    def _apply(self, fn: Callable, recurse: bool = True) -> Linearized:  # keep the hidden copy in step
        super()._apply(fn, recurse)
        self._base[0]._apply(fn)
        return self

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.theta_params)
        return f"linearized parameters: {len(self._names)} tensors, {n} scalars"


class AlphaScaled(nn.Module):
    """``f^α_θ(x) = f_{θ₀}(x) + α (f_θ(x) − f_{θ₀}(x))`` (thesis eq. 5.2.4; Chizat et al. 2019).

    ``θ₀`` is the model's parameters when wrapped (or ``at``); a frozen eval-mode copy gives
    ``f_{θ₀}(x)`` without gradient. The trainable parameters are the wrapped model's own.
    Train with learning rate :meth:`scaled_lr` ``= η/α²``: then the function moves by
    ``O(η)`` per step for every ``α``, the parameters by ``O(η/α)``. ``α = 1`` reproduces
    the model (up to rounding), large ``α`` tracks :class:`Linearized`, ``α < 1`` is more
    adaptive than standard training. ``subtract_initial_output=True`` returns
    ``α (f_θ − f_{θ₀})`` (zero function at init, as in the authors' code).

    BatchNorm layers must be in eval mode when wrapped and are kept in eval mode by
    :meth:`train` (frozen running statistics, trainable affine parameters).

    Parameters
    ----------
    model : nn.Module
        The network, trained in place.
    alpha : float
        ``α > 0``.
    subtract_initial_output : bool
    at : None, nn.Module, PVector or mapping
        ``θ₀``, as in :func:`model_at`.
    """

    def __init__(self, model: nn.Module, alpha: float, *, subtract_initial_output: bool = False, at: Any = None):
        super().__init__()
        alpha = float(alpha)
        if not (alpha > 0 and math.isfinite(alpha)):
            raise InvalidInputError(f"alpha: must be a finite positive number, got {alpha}")
        check_batchnorm_eval(model, "AlphaScaled")
        self.alpha = alpha
        self.subtract_initial_output = bool(subtract_initial_output)
        self.model = model
        self._model0 = [_frozen_copy(model, at)]

    def scaled_lr(self, lr: float) -> float:
        """The learning rate ``η/α²`` matching a base learning rate ``η = lr``.

        Parameters
        ----------
        lr : float
        """
        return float(lr) / self.alpha ** 2

    def train(self, mode: bool = True) -> AlphaScaled:
        """:meth:`nn.Module.train`, BatchNorm layers kept in eval mode.

        Parameters
        ----------
        mode : bool
        """
        super().train(mode)
        _batchnorm_eval(self.model)
        return self

    def forward(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``f^α_θ(x)`` (or ``α (f_θ(x) − f_{θ₀}(x))``) on the wrapped model's inputs."""
        check_batchnorm_eval(self.model, "AlphaScaled")
        out = self.model(*args, **kwargs)
        with torch.no_grad():
            f0 = self._model0[0](*args, **kwargs)
        scaled = self.alpha * (out - f0)
        return scaled if self.subtract_initial_output else f0 + scaled

    @torch.no_grad()
    def initial_output(self, *args: Any, **kwargs: Any) -> torch.Tensor:
        """``f_{θ₀}(x)``, without gradient."""
        return self._model0[0](*args, **kwargs)

    def _apply(self, fn: Callable, recurse: bool = True) -> AlphaScaled:
        super()._apply(fn, recurse)
        self._model0[0]._apply(fn)
        return self

    def extra_repr(self) -> str:
        return f"alpha={self.alpha:g}, subtract_initial_output={self.subtract_initial_output}"


def targets_matrix(y: torch.Tensor, n_outputs: int, dtype: torch.dtype) -> torch.Tensor:
    """Regression targets ``(N, C)``: one-hot rows for integer class labels, else ``y`` reshaped.

    Parameters
    ----------
    y : torch.Tensor
        ``(N,)`` integer labels (a single output takes them as values), or float targets.
    n_outputs : int
    dtype : torch.dtype
    """
    if not torch.is_floating_point(y):
        if y.dim() != 1:
            raise InvalidInputError(f"y: integer labels must be 1-d, got shape {tuple(y.shape)}")
        if n_outputs == 1:
            return y.to(dtype).reshape(-1, 1)
        return nn.functional.one_hot(y.long(), n_outputs).to(dtype)
    return y.to(dtype).reshape(y.shape[0], -1)


def half_mse(out: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """``(1/2N) Σ_n ‖out_n − target_n‖²`` (mean over examples, sum over outputs).

    Parameters
    ----------
    out : torch.Tensor
        ``(N, ...)``.
    target : torch.Tensor
        As many entries as ``out``.
    """
    return 0.5 * (out - target.reshape(out.shape)).pow(2).reshape(out.shape[0], -1).sum(1).mean()


def train_linearized(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int, lr: float,
                     batch_size: int | None = None, momentum: float = 0.0, weight_decay: float = 0.0,
                     loss: str = "auto", at: Any = None, params: Selector = None, seed: int = 0,
                     progress: bool | None = None) -> tuple[Linearized, list[float]]:
    """Train :class:`Linearized` ``(model, params, at)`` for ``epochs`` passes of SGD.

    ``loss``: ``"cross_entropy"`` (integer labels), ``"mse"`` (:func:`half_mse` against
    :func:`targets_matrix` targets, the loss of :class:`KernelPredictor`) or ``"auto"``
    (cross-entropy for integer labels with more than one output, else mse). Minibatches
    come from :class:`~tangentlab.training.BatchStream` (``batch_size=None``: full
    batch). Returns the trained model and the mean training loss of each epoch.

    Parameters
    ----------
    model : nn.Module
        The network (not modified).
    x : torch.Tensor
        ``(N, ...)``.
    y : torch.Tensor
        ``(N,)`` labels or ``(N, C)`` targets.
    epochs : int
    lr, momentum, weight_decay : float
        SGD's (the weight decay pulls ``θ`` towards 0, not ``θ₀``).
    batch_size : int, optional
    loss : {"auto", "cross_entropy", "mse"}
    at : None, nn.Module, PVector or mapping
    params : selector, optional
        As in :class:`Linearized`.
    seed : int
        The seed of the minibatch order.
    progress : bool, optional
    """
    if epochs < 0:
        raise InvalidInputError(f"epochs: must be >= 0, got {epochs}")
    lin = Linearized(model, params=params, at=at)
    with torch.no_grad():
        c = lin.initial_output(x[:1]).reshape(1, -1).shape[1]
    if loss == "auto":
        loss = "cross_entropy" if (not torch.is_floating_point(y) and c > 1) else "mse"
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    if loss == "cross_entropy":
        loss_fn, target = nn.functional.cross_entropy, y
    elif loss == "mse":
        loss_fn, target = half_mse, targets_matrix(y, c, lin.theta0()[lin._names[0]].dtype)
    else:
        raise InvalidInputError(f"loss: unknown {loss!r}; accepted: 'auto', 'cross_entropy', 'mse'")
    opt = torch.optim.SGD(lin.parameters(), lr=lr, momentum=momentum, weight_decay=weight_decay)
    bs = x.shape[0] if batch_size is None else int(batch_size)
    stream = BatchStream(x.shape[0], bs, seed)
    history: list[float] = []
    for _ in bar(range(epochs), "linearized training", enabled=progress):
        total = 0.0
        for _ in range(stream.steps_per_epoch):
            idx = stream.next()
            total += train_step(lin, opt, x[idx], target[idx], loss_fn) * idx.numel()
        history.append(total / x.shape[0])
    lin.eval()
    return lin, history
