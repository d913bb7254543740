"""Running a study on several processes: ``torchrun --nproc-per-node=N -m tangentlab run STUDY``.

A study's work is a list of independent *units* (a training run, a seed, a grid cell, a
part of the study). Under ``torchrun`` every rank runs the same study code; each unit is
done by exactly one rank, which *claims* it first:

* a claim is a file ``RUN_DIR/claims/session-S/UNIT`` created with ``O_CREAT | O_EXCL``
  (atomic on a local or NFS-like shared file system), so ranks pick up work dynamically
  (a rank that finishes early takes the next free unit: no static schedule to balance);
* claims belong to one session ``S`` (the count of sessions in ``state.json``): a run
  killed and restarted with ``--resume`` (with any number of ranks) starts from an empty
  claim set (rank 0 removes the claims of earlier sessions before any rank claims), and
  each unit resumes from its own checkpoint/table rows as in a single-process run,
  whichever rank takes it;
* results go to the run's shared tables, whose appends are serialized across processes
  by a lock (:class:`~tangentlab.studies.framework.store.Table`); checkpoint tags are per unit.

Work that every unit needs (loading data, a shared initial kernel) is done once by rank 0
(:meth:`RankContext.once`) while the other ranks wait, then re-loaded from the store by
the others. Rank 0 alone writes ``state.json``, the Parquet copies and the report, after
a final barrier. Collectives go through :mod:`torch.distributed` (gloo on CPU, NCCL when
the run's device is CUDA: rank ``LOCAL_RANK`` uses ``cuda:LOCAL_RANK``).

The run directory must be on a file system every rank sees (one machine, or a shared
file system across nodes). With one process (no ``torchrun``, or ``WORLD_SIZE=1``)
nothing here changes what a study does: every claim succeeds and no files are written.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any, TypeVar

import torch

from ...errors import InvalidInputError

T = TypeVar("T")

_UNIT = re.compile(r"[^A-Za-z0-9_.=-]")


def launched_world_size() -> int:
    """``WORLD_SIZE`` of a ``torchrun`` / ``torch.distributed`` launch (1 when not launched)."""
    try:
        return max(1, int(os.environ.get("WORLD_SIZE", "1")))
    except ValueError:
        raise InvalidInputError(f"WORLD_SIZE={os.environ.get('WORLD_SIZE')!r} is not an integer") from None


def collective_timeout() -> timedelta:
    """How long a rank waits in a collective (``TANGENTLAB_DIST_TIMEOUT_S`` seconds, default one
    day): ranks wait at the final barrier and in :meth:`RankContext.once` while others finish
    long units, so torch's 30-minute default is too short. A rank that crashes still stops
    the others at once: ``torchrun`` terminates the whole group when one worker fails."""
    raw = os.environ.get("TANGENTLAB_DIST_TIMEOUT_S", "86400")
    try:
        seconds = float(raw)
    except ValueError:
        raise InvalidInputError(f"TANGENTLAB_DIST_TIMEOUT_S={raw!r} is not a number of seconds") from None
    if seconds <= 0:
        raise InvalidInputError(f"TANGENTLAB_DIST_TIMEOUT_S={raw!r} must be positive")
    return timedelta(seconds=seconds)


@dataclass
class RankContext:
    """Which process this is among the ranks running one study.

    ``rank`` / ``world`` as in :mod:`torch.distributed`; ``local_rank`` picks the CUDA
    device. ``group`` is the process group (``None``: the default one, or no collectives
    when ``world == 1``)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    group: Any = None
    owns_group: bool = False
    claim_dir: Path | None = None
    _claimed: list[str] = field(default_factory=list)

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    # ---- set-up / tear-down --------------------------------------------------------------
    @classmethod
    def from_env(cls, device: str) -> RankContext:
        """The context of this process: joins (or reuses) the default process group when
        ``WORLD_SIZE > 1`` (backend ``nccl`` when ``device`` is CUDA, else ``gloo``)."""
        import torch.distributed as dist

        world = launched_world_size()
        if world == 1 and not (dist.is_available() and dist.is_initialized()):
            return cls()
        if not dist.is_available():
            raise InvalidInputError("WORLD_SIZE > 1 but this torch build has no torch.distributed")
        owns = False
        local = int(os.environ.get("LOCAL_RANK", "0"))
        if not dist.is_initialized():
            cuda = device.startswith("cuda")
            if cuda:
                torch.cuda.set_device(local)
            dist.init_process_group(backend="nccl" if cuda else "gloo", timeout=collective_timeout())
            owns = True
        return cls(rank=dist.get_rank(), world=dist.get_world_size(), local_rank=local, owns_group=owns)

    def close(self) -> None:
        """Destroy the process group if :meth:`from_env` created it."""
        if self.owns_group:
            import torch.distributed as dist

            if dist.is_initialized():
                dist.destroy_process_group()
            self.owns_group = False

    def device(self, resolved: str) -> torch.device:
        """The torch device of this rank for a run on ``resolved`` (``cuda`` → ``cuda:LOCAL_RANK``
        when several ranks run)."""
        if self.active and resolved == "cuda":
            return torch.device("cuda", self.local_rank)
        return torch.device(resolved)

    # ---- collectives ---------------------------------------------------------------------
    def barrier(self) -> None:
        if self.active:
            import torch.distributed as dist

            if dist.get_backend(self.group) == "nccl":
                dist.barrier(self.group, device_ids=[torch.cuda.current_device()])
            else:
                dist.barrier(self.group)

    def broadcast(self, obj: T) -> T:
        """Rank 0's ``obj`` on every rank (picklable objects)."""
        if not self.active:
            return obj
        import torch.distributed as dist

        box = [obj if self.is_main else None]
        dist.broadcast_object_list(box, src=0, group=self.group)
        return box[0]  # type: ignore[return-value]

    def gather(self, obj: T) -> list[T]:
        """Every rank's ``obj``, in rank order, on every rank."""
        if not self.active:
            return [obj]
        import torch.distributed as dist

        out: list[Any] = [None] * self.world
        dist.all_gather_object(out, obj, group=self.group)
        return out

    def on_main(self, fn: Callable[[], T]) -> T:
        """Run ``fn`` on rank 0 only and return its result on every rank. An exception on rank 0
        is raised on every rank (as :class:`InvalidInputError` with rank 0's message on the
        others), so no rank waits forever for a rank that failed."""
        result: Any = None
        err: BaseException | None = None
        if self.is_main:
            try:
                result = fn()
            except BaseException as e:  # noqa: BLE001 - re-raised below after telling the others
                err = e
        msg = self.broadcast(None if err is None else " ".join(f"{type(err).__name__}: {err}".split()))
        if err is not None:
            raise err
        if msg is not None:
            raise InvalidInputError(f"rank 0 failed: {msg}")
        return result

    def once(self, fn: Callable[[], T]) -> T:
        """Shared set-up: rank 0 runs ``fn`` first (saving what it computes in the store), then
        the other ranks run it (it must then load rather than recompute). Returns ``fn()``."""
        if not self.active:
            return fn()
        result = self.on_main(fn) if self.is_main else None
        if not self.is_main:
            self.on_main(lambda: None)  # wait for rank 0 (and fail if it failed)
            result = fn()
        return result  # type: ignore[return-value]

    # ---- units of work -------------------------------------------------------------------
    def claim(self, unit: str) -> bool:
        """True when this rank should do ``unit`` (always with one rank). With several ranks,
        the first rank to create the unit's claim file in this session wins."""
        if not self.active:
            return True
        if self.claim_dir is None:
            raise RuntimeError("RankContext.claim before the run directory was set")
        name = _UNIT.sub("_", unit)
        try:
            fd = os.open(self.claim_dir / name, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(f"{self.rank}\n")
        self._claimed.append(unit)
        return True

    def mine(self, units: Iterable[T], key: Callable[[T], str] = str) -> Iterator[T]:
        """The items of ``units`` this rank claims, in order (all of them with one rank)."""
        for u in units:
            if self.claim(key(u)):
                yield u

    @property
    def claimed(self) -> list[str]:
        """The units this rank claimed in this session."""
        return list(self._claimed)

    def set_session(self, run_dir: Path, session: int) -> None:
        """Claims of this run go to ``RUN_DIR/claims/session-SESSION`` (created by rank 0)."""
        self.claim_dir = Path(run_dir) / "claims" / f"session-{session:04d}"
        if self.is_main:
            self.claim_dir.mkdir(parents=True, exist_ok=True)
