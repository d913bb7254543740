"""Recurrent layers (``nn.RNN``, ``nn.LSTM``, ``nn.GRU`` and their ``*Cell``) on the
generic route.

The generic route differentiates one example at a time, ``vmap(jacrev(f))`` over the
examples. The fused recurrent kernels (``aten::lstm``, ``aten::gru``, ``aten::rnn_tanh``,
``aten::rnn_relu``) have no batching rule, and the cell kernels (``aten::lstm_cell``, ...)
fail under ``vmap`` of their backward, so ``vmap`` cannot run them. Inside
:func:`unfused_recurrent` each such call is replaced by PyTorch's own decomposition of the
kernel into its cell operations (``torch._decomp``: per time step ``F.linear``, the gate
non-linearities and the state update; the same equations as the fused kernel, e.g. for the
LSTM ``i, f, g, o = σ, σ, tanh, σ (W_ih x_t + b_ih + W_hh h_{t−1} + b_hh)``,
``c_t = f ⊙ c_{t−1} + i ⊙ g``, ``h_t = W_hr (o ⊙ tanh c_t)``), which ``vmap``, ``jacrev``
and forward-mode AD all handle. A cell call is replaced by its equations written with
``F.linear`` (:func:`_lstm_cell`, :func:`_gru_cell`, :func:`_rnn_cell`). Results equal the
fused kernels' to rounding.

Only the generic route's vectorized pass runs under it; every other pass (hooks, forward-
mode products, plain forward) keeps the fused kernel.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn
from torch.nn import functional as F
from torch.overrides import TorchFunctionMode

from ..errors import UnsupportedLayerError

try:  # PyTorch's decompositions of the fused kernels (the ``.input`` overloads)
    from torch._decomp import decompositions as _decomp

    def _lstm(input, hx, params, has_biases, num_layers, dropout, train, bidirectional, batch_first):
        """``_decomp.lstm_impl`` with its step-by-step layer always: its alternative, one
        oneDNN kernel per layer (chosen for float32 CPU inputs without gradients, as under
        ``vmap(jacrev)``), has no batching rule for its backward."""
        params = _decomp.gather_params(params, has_biases, hx[0].size(2) != hx[1].size(2))
        out, final = _decomp._rnn_helper(input, list(zip(hx[0], hx[1])), params, has_biases, num_layers,
                                         dropout, train, bidirectional, batch_first, _decomp.one_layer_lstm)
        h, c = zip(*final)
        return out, torch.stack(h, 0), torch.stack(c, 0)

    _UNFUSED = {
        "lstm": _lstm,
        "gru": _decomp.gru_impl,
        "rnn_tanh": _decomp.rnn_tanh_input,
        "rnn_relu": _decomp.rnn_relu_input,
    }
except (ImportError, AttributeError):  # pragma: no cover - depends on the PyTorch build
    _UNFUSED = {}


def _rnn_cell(act):
    """``h' = act(W_ih x + b_ih + W_hh h + b_hh)`` (``nn.RNNCell``)."""
    def cell(x, h, w_ih, w_hh, b_ih=None, b_hh=None):
        return act(F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh))
    return cell


def _lstm_cell(x, hc, w_ih, w_hh, b_ih=None, b_hh=None):
    """``i, f, g, o = σ, σ, tanh, σ (W_ih x + b_ih + W_hh h + b_hh)`` (in that order along the
    gate dimension), ``c' = f ⊙ c + i ⊙ g``, ``h' = o ⊙ tanh c'`` (``nn.LSTMCell``): ``(h', c')``."""
    h, c = hc
    i, f, g, o = (F.linear(x, w_ih, b_ih) + F.linear(h, w_hh, b_hh)).chunk(4, -1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def _gru_cell(x, h, w_ih, w_hh, b_ih=None, b_hh=None):
    """``r, z = σ(x_r + h_r), σ(x_z + h_z)``, ``n = tanh(x_n + r ⊙ h_n)``, ``h' = n + z ⊙ (h − n)``
    with ``x_• = W_i• x + b_i•``, ``h_• = W_h• h + b_h•`` (``nn.GRUCell``)."""
    xr, xz, xn = F.linear(x, w_ih, b_ih).chunk(3, -1)
    hr, hz, hn = F.linear(h, w_hh, b_hh).chunk(3, -1)
    r, z = torch.sigmoid(xr + hr), torch.sigmoid(xz + hz)
    n = torch.tanh(xn + r * hn)
    return n + z * (h - n)


_CELLS = {"rnn_tanh_cell": _rnn_cell(torch.tanh), "rnn_relu_cell": _rnn_cell(torch.relu),
          "lstm_cell": _lstm_cell, "gru_cell": _gru_cell}

#: the recurrent modules whose kernels this module unfuses
RECURRENT = (nn.RNN, nn.LSTM, nn.GRU, nn.RNNCell, nn.LSTMCell, nn.GRUCell)


class _Unfuse(TorchFunctionMode):
    """Replaces calls of the fused recurrent kernels on padded (not packed) sequences,
    ``_VF.lstm(input, hx, params, has_biases, num_layers, dropout, train, bidirectional,
    batch_first)`` and its ``gru``/``rnn_tanh``/``rnn_relu`` siblings, by their
    decompositions."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        impl = _UNFUSED.get(name)
        # the ``.input`` overload: 9 positional arguments, the weights third (``.data``, for
        # packed sequences, has the batch sizes second and the weights fourth)
        if impl is not None and not kwargs and len(args) == 9 and isinstance(args[2], (list, tuple)):
            return impl(*args)
        if name in _CELLS and func is getattr(torch._VF, name, None):
            return _CELLS[name](*args, **kwargs)
        return func(*args, **kwargs)


@contextlib.contextmanager
def unfused_recurrent(enabled: bool = True):
    """Run the fused recurrent kernels as their per-step decompositions (module docstring);
    a no-op when ``enabled`` is false (no function mode, no per-op overhead)."""
    if not enabled:
        yield
        return
    with _Unfuse():
        yield


def recurrent_reason(mod: nn.Module, path: str) -> str | None:
    """Why the recurrent module ``mod`` (at ``path``) takes the generic route, naming how it is
    differentiated there; ``None`` when ``mod`` is not a fused recurrent layer or cell.

    Raises :class:`~tangentlab.errors.UnsupportedLayerError`, naming the route that works,
    where the unfused generic route would not compute the model's function: dropout between
    layers in training mode (the decomposition has no dropout), or a PyTorch without the
    decompositions.
    """
    if not isinstance(mod, RECURRENT):
        return None
    name = type(mod).__name__
    where = f"{name} at {path or '<root>'!r}"
    if isinstance(mod, nn.RNNBase) and not _UNFUSED:
        raise UnsupportedLayerError(
            f"{where}: this PyTorch has no decomposition of the fused recurrent kernel, which "
            "torch.func cannot vectorize over examples; pass route='joint' (Jacobian of the "
            "whole batch function, correct for independent examples)"
        )
    if mod.training and float(getattr(mod, "dropout", 0.0)) > 0 and int(getattr(mod, "num_layers", 1)) > 1:
        raise UnsupportedLayerError(
            f"{where} is in training mode with dropout={mod.dropout} between its layers: "
            "outputs are random and the per-example route cannot reproduce its dropout. Call "
            "`model.eval()` for deterministic results, or pass route='joint' (one dropout "
            "sample for the whole batch)"
        )
    if isinstance(mod, nn.RNNCellBase):
        return f"recurrent cell {name}, its kernel written out as the cell equations"
    return f"recurrent layer {name}, its fused kernel unrolled into per-step cell operations"


def packed_input(path: str):
    """A forward hook ``(module, args, kwargs, out)`` refusing a ``PackedSequence`` input of
    the recurrent layer at ``path``: the generic route runs each example alone under ``vmap``,
    where ``pack_padded_sequence`` (lengths read as Python integers, examples sorted by
    length) cannot run."""

    def hook(mod, args, kwargs, out):
        if args and isinstance(args[0], nn.utils.rnn.PackedSequence):
            raise UnsupportedLayerError(
                f"{type(mod).__name__} at {path or '<root>'!r} receives a PackedSequence, which the "
                "per-example (vmap) route cannot run; pass the padded sequences instead and read each "
                "example's last valid step (`out[torch.arange(N), lengths - 1]`, exact for a "
                "unidirectional layer) or mask the padded steps"
            )

    return hook
