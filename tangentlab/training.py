"""The seeded minibatch training loop and resumable training checkpoints.

The loop is shared by :func:`tangentlab.linearize.train_linearized`, the studies and
``tangentlab demo``.

:class:`BatchStream` draws minibatch indices exactly like the classic loop
``for epoch: perm = randperm(n, generator=gen); for i in range(0, n, B): perm[i:i+B]``
(last partial batch kept), but one step at a time and with a state that can be saved
in a checkpoint and restored, so that a resumed run sees the same batches.
:class:`TrainingCheckpoint` saves and restores a whole training run (model, optimizer,
stream, RNG, the loop's counters) in a run store.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from typing import Any, Protocol, cast

import numpy as np
import torch
from torch import nn


class BatchStream:
    """Minibatch indices of ``n`` examples, reshuffled every epoch by a generator seeded with ``seed``.

    Parameters
    ----------
    n : int
        The number of examples.
    batch_size : int
        The minibatch size (the last batch of an epoch may be smaller).
    seed : int
        The seed of the permutations.
    """

    def __init__(self, n: int, batch_size: int, seed: int):
        self.n = int(n)
        self.batch_size = int(batch_size)
        self.gen = torch.Generator().manual_seed(int(seed))
        self.perm: torch.Tensor | None = None
        self.pos = 0
        self.epoch = 0

    @property
    def steps_per_epoch(self) -> int:
        """The number of minibatches per epoch, ``⌈n / batch_size⌉``."""
        return math.ceil(self.n / self.batch_size)

    def next(self) -> torch.Tensor:
        """Indices of the next minibatch (a new permutation at the start of each epoch)."""
        if self.perm is None or self.pos >= self.n:
            if self.perm is not None:
                self.epoch += 1
            self.perm = torch.randperm(self.n, generator=self.gen)
            self.pos = 0
        idx = self.perm[self.pos:self.pos + self.batch_size]
        self.pos += self.batch_size
        return idx

    def state_dict(self) -> dict[str, Any]:
        """The generator state, permutation and position (for a checkpoint)."""
        return {"gen": self.gen.get_state(), "perm": self.perm, "pos": self.pos, "epoch": self.epoch}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore a :meth:`state_dict`.

        Parameters
        ----------
        state : dict
            What :meth:`state_dict` returned.
        """
        self.gen.set_state(state["gen"])
        self.perm, self.pos, self.epoch = state["perm"], int(state["pos"]), int(state["epoch"])


def train_step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor,
               loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor] | None = None) -> float:
    """One optimizer step on the mean loss of ``(x, y)`` (default cross-entropy); returns the loss.

    Parameters
    ----------
    model : nn.Module
        The network (set to train mode).
    opt : torch.optim.Optimizer
        Its optimizer.
    x : torch.Tensor
        ``(B, ...)`` inputs.
    y : torch.Tensor
        The targets.
    loss_fn : callable, optional
        ``loss_fn(outputs, y)``, a mean over the batch (default cross-entropy).

    Returns
    -------
    float
        The loss before the step.
    """
    model.train()
    opt.zero_grad(set_to_none=True)
    loss = (loss_fn or nn.functional.cross_entropy)(model(x), y)
    loss.backward()
    opt.step()
    return float(loss.item())


def train_epochs(model: nn.Module, x: torch.Tensor, y: torch.Tensor, opt: torch.optim.Optimizer, *,
                 epochs: int, batch_size: int, seed: int, progress: bool | None = None,
                 desc: str = "training") -> list[float]:
    """``epochs`` passes of minibatch training (batches from :class:`BatchStream`); returns the
    mean training loss of each epoch. The model is left in eval mode.

    Parameters
    ----------
    model : nn.Module
        The network (cross-entropy loss).
    x : torch.Tensor
        ``(N, ...)`` inputs.
    y : torch.Tensor
        ``(N,)`` class labels.
    opt : torch.optim.Optimizer
        The optimizer.
    epochs : int
        The number of passes.
    batch_size : int
        The minibatch size.
    seed : int
        The seed of the minibatch order.
    progress : bool, optional
        Show a progress bar (None: on a terminal).
    desc : str
        The progress bar's title.

    Returns
    -------
    list of float
        The mean loss of each epoch.
    """
    from tqdm.auto import tqdm

    stream = BatchStream(x.shape[0], batch_size, seed)
    steps = stream.steps_per_epoch
    history: list[float] = []
    bar = tqdm(total=epochs * steps, desc=desc, unit="step", leave=False,
               disable=None if progress is None else not progress)
    try:
        for epoch in range(epochs):
            total = 0.0
            for _ in range(steps):
                idx = stream.next()
                total += train_step(model, opt, x[idx], y[idx]) * idx.numel()
                bar.update(1)
            history.append(total / x.shape[0])
            bar.set_postfix(epoch=epoch + 1, loss=f"{history[-1]:.4f}")
    finally:
        bar.close()
        model.eval()
    return history


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Fraction of ``argmax f(x) == y`` (model in eval mode).

    Parameters
    ----------
    model : nn.Module
        A classifier with ``(N, C)`` logits.
    x : torch.Tensor
        ``(N, ...)`` inputs (converted to the model's dtype).
    y : torch.Tensor
        ``(N,)`` class labels.
    batch_size : int
        Examples per forward pass.

    Returns
    -------
    float
        The accuracy in ``[0, 1]``.
    """
    was = model.training
    model.eval()
    dtype = next(model.parameters()).dtype
    hits = sum(int((model(x[i:i + batch_size].to(dtype)).argmax(1) == y[i:i + batch_size]).sum())
               for i in range(0, x.shape[0], batch_size))
    model.train(was)
    return hits / max(1, x.shape[0])


@torch.no_grad()
def mean_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 1024) -> float:
    """Mean cross-entropy on ``(x, y)`` (model in eval mode).

    Parameters
    ----------
    model, x, y, batch_size
        As in :func:`accuracy`.

    Returns
    -------
    float
        ``(1/N) Σ_n ℓ(f(x_n), y_n)``.
    """
    was = model.training
    model.eval()
    dtype = next(model.parameters()).dtype
    total = sum(float(nn.functional.cross_entropy(model(x[i:i + batch_size].to(dtype)), y[i:i + batch_size],
                                                  reduction="sum"))
                for i in range(0, x.shape[0], batch_size))
    model.train(was)
    return total / max(1, x.shape[0])


def rng_state() -> dict[str, Any]:
    """The global RNG states (torch CPU, numpy, python) for a checkpoint.

    As tensors, ints, floats and tuples only, so that a checkpoint loads with
    ``torch.load(weights_only=True)`` (numpy's legacy ``MT19937`` state becomes its key as an
    int64 tensor and the scalars).

    Returns
    -------
    dict
        ``{"torch": ..., "numpy": ..., "python": ...}``.
    """
    name, key, pos, has_gauss, gauss = np.random.get_state(legacy=True)
    key = cast(np.ndarray, key)  # the legacy state tuple: (name, key array, pos, has_gauss, gauss)
    numpy_state = {"bit_generator": str(name), "key": torch.from_numpy(key.astype(np.int64)), "pos": int(pos),
                   "has_gauss": int(has_gauss), "cached_gaussian": float(gauss)}
    return {"torch": torch.get_rng_state(), "numpy": numpy_state, "python": random.getstate()}


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore :func:`rng_state` (also the plain ``np.random.get_state()`` tuple).

    Parameters
    ----------
    state : dict
        What :func:`rng_state` returned.
    """
    torch.set_rng_state(state["torch"])
    ns = state["numpy"]
    if isinstance(ns, dict):
        ns = (ns["bit_generator"], ns["key"].numpy().astype(np.uint32), ns["pos"], ns["has_gauss"],
              ns["cached_gaussian"])
    np.random.set_state(ns)
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))


class Stateful(Protocol):
    """What :class:`TrainingCheckpoint` saves as the model: an ``nn.Module`` or any object with
    ``state_dict()`` / ``load_state_dict()`` (e.g. a training run's own state)."""

    def state_dict(self) -> Any:
        """The state to save."""
        ...

    def load_state_dict(self, state: Any) -> Any:
        """Restore a saved state.

        Parameters
        ----------
        state : Any
            What :meth:`state_dict` returned.
        """
        ...


class TrainingCheckpoint:
    """The resumable state of one training run, kept in a run store under one checkpoint tag.

    A checkpoint holds the model, the optimizer, the batch stream (so a resumed run sees the
    same minibatches), the global RNG states and whatever counters the training loop adds
    (``extra``: its step or epoch, rows not yet written, a reference model...). Every study's
    training loop saves and restores through this class, so a killed run resumes where its
    last checkpoint was taken, bit for bit.

    Usage::

        ck = TrainingCheckpoint(store, "run_a", model, opt, stream)
        extra = ck.restore()              # None: nothing saved; else the loop's own counters
        start = 0 if extra is None else extra["step"]
        for step in range(start, total):
            ...
            if step % every == 0:
                ck.save(step)             # the store records the step under "step"

    Parameters
    ----------
    store : RunStore
        The run store (``load_checkpoint``/``save_checkpoint``).
    tag : str
        The checkpoint's name in the store.
    model : Stateful
        The model (or any object with ``state_dict``/``load_state_dict``).
    optimizer : torch.optim.Optimizer or None
        Its optimizer.
    stream : BatchStream, optional
        The minibatch stream.
    keep : int
        How many checkpoints of the tag to keep.
    """

    def __init__(self, store: Any, tag: str, model: Stateful, optimizer: torch.optim.Optimizer | None,
                 stream: BatchStream | None = None, keep: int = 2):
        self.store, self.tag, self.keep = store, tag, keep
        self.model, self.optimizer, self.stream = model, optimizer, stream

    def load(self) -> dict[str, Any] | None:
        """The newest checkpoint's payload, without restoring anything (``None`` if none)."""
        return self.store.load_checkpoint(self.tag)

    def apply(self, ck: dict[str, Any]) -> dict[str, Any]:
        """Restore the model, optimizer, stream and RNG states of ``ck`` (from :meth:`load`).

        Parameters
        ----------
        ck : dict
            A checkpoint payload.

        Returns
        -------
        dict
            ``ck``.
        """
        self.model.load_state_dict(ck["model"])
        if self.optimizer is not None:
            self.optimizer.load_state_dict(ck["optimizer"])
        if self.stream is not None:
            self.stream.load_state_dict(ck["stream"])
        set_rng_state(ck["rng"])
        return ck

    def restore(self) -> dict[str, Any] | None:
        """Restore the newest checkpoint (``None``, touching nothing, if there is none); returns
        its payload, the loop's counters included."""
        ck = self.load()
        return None if ck is None else self.apply(ck)

    def save(self, at: int, **extra: Any) -> None:
        """Checkpoint the run at step (or epoch) ``at`` with the loop's counters ``extra``; the
        payload records ``at`` under ``"step"`` unless ``extra`` names its own. Keeps the newest
        ``keep`` checkpoints of the tag.

        Parameters
        ----------
        at : int
            The step or epoch.
        **extra
            The loop's counters, saved with the checkpoint.
        """
        payload: dict[str, Any] = {"model": self.model.state_dict(), "rng": rng_state(), **extra}
        if self.optimizer is not None:
            payload["optimizer"] = self.optimizer.state_dict()
        if self.stream is not None:
            payload["stream"] = self.stream.state_dict()
        self.store.save_checkpoint(self.tag, at, payload, keep=self.keep)
