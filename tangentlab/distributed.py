"""Data-parallel accumulation over ``torch.distributed`` ranks.

Every matrix tangentlab builds is a sum over examples divided by the number of
examples, so data parallelism is a reduction: each rank runs the same engine on
its own shard of the data, and the per-rank sums (and example counts) are
all-reduced before the division. Every rank ends with the same matrix, equal to the
single-process result on the union of the shards (uneven shards are counted
exactly).

Use it by passing ``distributed=True`` (the default process group) or a process
group to :func:`tangentlab.fim` (every representation) or to the
:mod:`tangentlab.optim` optimizers, after
``torch.distributed.init_process_group`` (``gloo`` on CPU, ``nccl`` on GPU;
``torchrun`` sets the environment up). Shard the data without padding:
:func:`shard` gives contiguous, possibly uneven, shards; PyTorch's
``DistributedSampler`` pads the last shard with repeated examples by default
(``drop_last=False``), which would count them twice.

Caveats: every rank must call the same functions in the same order (they are
collective operations); Monte-Carlo Fishers draw their samples from per-batch
generators, so their samples differ from a single-process run (the expectation does
not). Kernels and Jacobians index every example: for them (:func:`tangentlab.ntk`,
:func:`tangentlab.jacobian`, :mod:`tangentlab.ntk_large`) every rank passes the full
data, the ranks split the work (kernel tiles, batches) and the results are all-reduced.
Matrix-free operators run their batch loops and reductions through
:class:`tangentlab.engine.operator.MatrixFreeOperator`.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from .errors import InvalidInputError


class Reducer:
    """Sums over the ranks of a process group; a no-op for a single process.

    ``Reducer.resolve(distributed)`` turns the user's ``distributed=`` argument into a
    reducer: ``None``/``False`` → local, ``True`` → the default process group, a
    ``ProcessGroup`` → that group.

    Parameters
    ----------
    group : ProcessGroup, optional
        The process group (None: the default one).
    active : bool
        Whether there are several ranks to reduce over.
    """

    def __init__(self, group: Any = None, active: bool = False):
        self.group = group
        self.active = active

    @classmethod
    def resolve(cls, distributed: Any) -> Reducer:
        """The reducer of a ``distributed=`` argument.

        Parameters
        ----------
        distributed : None, bool, ProcessGroup or Reducer
            ``None``/``False``: local; ``True``: the default process group; a group; or a reducer
            (returned as it is).

        Returns
        -------
        Reducer
            Active when the group has more than one rank.

        Raises
        ------
        InvalidInputError
            Without an initialized process group, or for another type.
        """
        if isinstance(distributed, Reducer):
            return distributed
        if distributed is None or distributed is False:
            return cls()
        if not dist.is_available() or not dist.is_initialized():
            raise InvalidInputError(
                "distributed=True needs an initialized process group: call "
                "torch.distributed.init_process_group(...) first (torchrun sets up the environment)"
            )
        if distributed is not True and not isinstance(distributed, dist.ProcessGroup):
            raise InvalidInputError(f"distributed must be None, False, True or a torch.distributed "
                                    f"ProcessGroup, got {type(distributed).__name__}")
        group = None if distributed is True else distributed
        return cls(group, active=dist.get_world_size(group) > 1)

    @property
    def world_size(self) -> int:
        """The number of ranks (1 when inactive)."""
        return dist.get_world_size(self.group) if self.active else 1

    @property
    def rank(self) -> int:
        """This process's rank in the group (0 when inactive)."""
        return dist.get_rank(self.group) if self.active else 0

    def sum_(self, *tensors: torch.Tensor | None) -> None:
        """All-reduce (sum) the given tensors in place (``None`` entries are skipped).

        Parameters
        ----------
        *tensors : torch.Tensor or None
            The tensors, summed over the ranks in place.
        """
        if not self.active:
            return
        for t in tensors:
            if t is not None:
                buf = t if t.is_contiguous() else t.contiguous()  # collectives read raw storage
                dist.all_reduce(buf, op=dist.ReduceOp.SUM, group=self.group)
                if buf is not t:
                    t.copy_(buf)

    def broadcast_(self, *tensors: torch.Tensor | None, src: int = 0) -> None:
        """Overwrite the given tensors with rank ``src``'s (e.g. eigenbases, whose signs may
        differ between machines even for equal inputs).

        Parameters
        ----------
        *tensors : torch.Tensor or None
            The tensors, overwritten in place (``None`` entries are skipped).
        src : int
            The source rank, in the group.
        """
        if not self.active:
            return
        root = dist.get_global_rank(self.group, src) if self.group is not None else src
        for t in tensors:
            if t is not None:
                buf = t if t.is_contiguous() else t.contiguous()  # e.g. eigh's column-major vectors
                dist.broadcast(buf, src=root, group=self.group)
                if buf is not t:
                    t.copy_(buf)

    def counts(self, n: int, device: torch.device | str = "cpu") -> list[int]:
        """Every rank's local count (a list indexed by rank).

        Parameters
        ----------
        n : int
            This rank's count.
        device : torch.device or str
            Where the collective runs (the device of the backend).

        Returns
        -------
        list of int
            One count per rank.
        """
        if not self.active:
            return [int(n)]
        t = torch.zeros(self.world_size, dtype=torch.int64, device=device)
        t[self.rank] = int(n)
        dist.all_reduce(t, group=self.group)
        return [int(v) for v in t.tolist()]

    def total(self, n: int, what: str = "examples", device: torch.device | str = "cpu") -> int:
        """Sum of a count over ranks; refuses (on every rank alike) when a rank has none.

        Parameters
        ----------
        n : int
            This rank's count.
        what : str
            What is counted, for the error message.
        device : torch.device or str
            Where the collective runs.

        Returns
        -------
        int
            The total.

        Raises
        ------
        InvalidInputError
            When a rank's count is 0.
        """
        counts = self.counts(n, device)
        empty = [r for r, c in enumerate(counts) if c == 0]
        if self.active and empty:
            raise InvalidInputError(
                f"ranks {empty} have no {what} (counts per rank: {counts}); give every rank a non-empty "
                "shard (tangentlab.distributed.shard splits without padding)"
            )
        return sum(counts)

    def gather_rows(self, t: torch.Tensor) -> torch.Tensor:
        """Concatenate every rank's ``t`` (same trailing shape, any number of rows) in rank order.

        Parameters
        ----------
        t : torch.Tensor
            ``(n_rank, ...)``.

        Returns
        -------
        torch.Tensor
            ``(Σ n_rank, ...)``.
        """
        if not self.active:
            return t
        counts = self.counts(t.shape[0], t.device)
        width = max(counts)
        pad = torch.zeros((width, *t.shape[1:]), dtype=t.dtype, device=t.device)
        pad[: t.shape[0]] = t
        parts = [torch.empty_like(pad) for _ in counts]
        dist.all_gather(parts, pad, group=self.group)
        return torch.cat([p[:c] for p, c in zip(parts, counts)])

    def barrier(self) -> None:
        """Wait for every rank (a no-op when inactive)."""
        if self.active:
            dist.barrier(group=self.group)


def shard(n: int, rank: int | None = None, world_size: int | None = None) -> range:
    """Contiguous indices ``range(start, stop)`` of this rank's share of ``n`` examples.

    The first ``n % world_size`` ranks get one more example; nothing is padded or
    repeated. Defaults: the default process group's rank and size (1 process if
    ``torch.distributed`` is not initialized).

    Parameters
    ----------
    n : int
        The number of examples.
    rank : int, optional
        This rank.
    world_size : int, optional
        The number of ranks.

    Returns
    -------
    range
        This rank's indices.

    Raises
    ------
    InvalidInputError
        When ``rank`` is not in ``0..world_size−1``.
    """
    if rank is None or world_size is None:
        ready = dist.is_available() and dist.is_initialized()
        rank = dist.get_rank() if ready else 0
        world_size = dist.get_world_size() if ready else 1
    if not 0 <= rank < world_size:
        raise InvalidInputError(f"rank {rank} is not in 0..{world_size - 1}")
    q, r = divmod(int(n), world_size)
    start = rank * q + min(rank, r)
    return range(start, start + q + (1 if rank < r else 0))


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    """The module inside ``DistributedDataParallel`` / ``DataParallel`` (the model itself otherwise).

    Parameters
    ----------
    model : nn.Module
        A model, possibly wrapped (several times).

    Returns
    -------
    nn.Module
        The innermost module.
    """
    from torch.nn.parallel import DataParallel, DistributedDataParallel

    while isinstance(model, (DistributedDataParallel, DataParallel)):
        model = model.module
    return model
