"""The study registry and the runner behind ``tangentlab run`` / ``tangentlab report``.

A study is a subclass of :class:`Study` with a ``name``, a ``config_class`` (a
:class:`~tangentlab.studies.framework.config.StudyConfig`), :meth:`Study.run` (does the work,
appending rows to tidy tables and saving checkpoints through ``self.store``; it must
resume from the store's last checkpoint when there is one) and :meth:`Study.report`
(builds the report content from the stored tables only). Register it with
:func:`register`; :func:`run_study` and :func:`report_run` do the rest.

Several processes (``torchrun --nproc-per-node=N -m tangentlab run STUDY``): a study whose
``parallel`` is true splits its independent units of work across the ranks with
``self.ctx.claim(unit)`` / ``self.ctx.mine(units)`` and does shared set-up with
``self.ctx.once`` (see :mod:`tangentlab.studies.framework.parallel`); rank 0 alone writes the run's
state and report. A study that is not ``parallel`` runs on rank 0 while the others wait.
"""

from __future__ import annotations

import contextlib
import json
import platform
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, ClassVar, TextIO

import torch

from ... import __version__
from ...errors import InvalidInputError
from ..registry import get_study
from .config import ConfigError, StudyConfig, build_config, config_from_dict, read_toml
from .parallel import RankContext
from .store import RunStore, json_safe
from .threads import torch_threads

#: Fields a resumed run may change (they do not change results).
RESUMABLE_FIELDS = ("progress", "threads")


class Study:
    """Base class of the studies (see the module docstring)."""

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""
    description: ClassVar[str] = ""
    config_class: ClassVar[type[StudyConfig]] = StudyConfig
    #: whether :meth:`run` splits its units across ranks (``self.ctx.claim``); see the module docstring
    parallel: ClassVar[bool] = False

    def __init__(self, config: StudyConfig, store: RunStore, stream: TextIO | None = None,
                 ctx: RankContext | None = None):
        self.config = config
        self.store = store
        self.stream = stream
        self.ctx = ctx if ctx is not None else RankContext()

    @property
    def device(self) -> torch.device:
        """The torch device of the run (``config.device``, ``auto`` resolved; ``cuda:LOCAL_RANK``
        on each rank of a multi-process CUDA run)."""
        return self.ctx.device(self.config.resolved_device())

    def log(self, msg: str) -> None:
        if self.ctx.active:
            msg = f"[rank {self.ctx.rank}/{self.ctx.world}] {msg}"
        print(msg, file=self.stream if self.stream is not None else sys.stdout, flush=True)

    def progress_bar(self, total: int, desc: str, unit: str = "step") -> Any:
        """A tqdm bar of ``total`` units for a part of the run, shown as ``config.progress``
        says (``auto``: on a terminal); the caller updates and closes it."""
        from tqdm.auto import tqdm

        flag = self.config.progress_flag
        return tqdm(total=total, desc=desc, unit=unit, leave=False, disable=None if flag is None else not flag)

    def run(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def report(self):  # -> report.ReportContent
        raise NotImplementedError  # pragma: no cover


@contextlib.contextmanager
def _environment(cfg: StudyConfig) -> Iterator[None]:
    """Torch threads and a forked global RNG for the duration of a run (restored after)."""
    with torch_threads(cfg.threads), torch.random.fork_rng(devices=[]):
        yield


def _resume_config(cls: type[Study], store: RunStore, preset: str | None, toml: str | None,
                   sets: Sequence[str]) -> StudyConfig:
    """The stored configuration of a resumed run. Only :data:`RESUMABLE_FIELDS` may be changed
    (by ``--config`` / ``--set``); any other field given again must equal the stored value, and
    a ``--preset`` (or a file's ``preset =``) must name the stored preset. The stored config is
    reused as is: the stored preset is *not* reapplied (the run's own ``--set`` overrides are
    already in the stored values)."""
    meta = store.meta
    stored = config_from_dict(cls.config_class, meta["config"])
    if preset is None and toml is None and not sets:
        return stored
    stored_preset = meta.get("preset")
    asked_preset = preset
    if asked_preset is None and toml is not None:
        file_preset = read_toml(toml).get("preset")
        asked_preset = None if file_preset is None else str(file_preset)
    if asked_preset is not None and asked_preset != stored_preset:
        raise ConfigError("preset", f"{asked_preset!r} differs from the stored run's {stored_preset!r} "
                          "(a resumed run keeps its configuration)",
                          f"{stored_preset!r}, or start a new run with another --out")
    # only what the file / --set give explicitly; the preset layer is the stored run's own
    asked = build_config(cls.config_class, preset=None, toml=toml, sets=sets, study=cls.name, check=False)
    for key, source in asked._sources.items():
        if source.startswith("preset"):
            continue
        if key in RESUMABLE_FIELDS:
            setattr(stored, key, getattr(asked, key))
            stored._sources[key] = source
        elif getattr(asked, key) != getattr(stored, key):
            raise ConfigError(key, f"{getattr(asked, key)!r} differs from the stored run's "
                              f"{getattr(stored, key)!r} (a resumed run keeps its configuration)",
                              f"{getattr(stored, key)!r}, or start a new run with another --out", source)
    return stored


def default_out(study: str, preset: str | None) -> str:
    return str(Path("results") / (f"{study}-{preset}" if preset else study))


def run_study(name: str, *, preset: str | None = None, toml: str | None = None, sets: Sequence[str] = (),
              out: str | None = None, resume: bool = False, stream: TextIO | None = None,
              report: bool = True) -> RunStore:
    """Validate the configuration, create (or reopen with ``resume``) the run directory, run the
    study, then write its report and print its claims. Returns the run's store.

    Launched by ``torchrun`` (``WORLD_SIZE > 1``), every rank calls this with the same
    arguments: rank 0 creates / reopens the run directory and writes its state and report;
    the study's units are split across the ranks (see the module docstring)."""
    cls = get_study(name)
    out = out or default_out(name, preset)
    if resume:
        store = RunStore.open(out)
        store.check_format()
        meta = store.meta
        if meta.get("study") != name:
            raise ConfigError("study", f"{out!r} holds a run of study {meta.get('study')!r}, not {name!r}",
                              str(meta.get("study")))
        cfg = _resume_config(cls, store, preset, toml, sets)
        cfg.check()
    else:
        cfg = build_config(cls.config_class, preset=preset, toml=toml, sets=sets, study=name)
    ctx = RankContext.from_env(cfg.resolved_device())
    try:
        return _run(cls, name, cfg, preset, out, resume, stream, report, ctx)
    finally:
        ctx.close()


def _open_store(cls: type[Study], name: str, cfg: StudyConfig, preset: str | None, out: str, resume: bool,
                stream: TextIO | None) -> tuple[RunStore, bool, int]:
    """Rank 0's part: the run directory (created, or reopened for a new session), whether the
    run had finished, and the session's index."""
    if resume:
        store = RunStore.open(out)
        finished = store.state.get("status") == "finished"
        if finished:
            print(f"{out}: the run had finished; regenerating its report", file=stream or sys.stdout)
        _clear_claims(store, stream)
        store.begin_session()
    else:
        meta = {"study": name, "title": cls.title, "preset": preset, "config": cfg.to_dict(),
                "tangentlab_version": __version__, "commit": source_commit(), "created": time.time(),
                "environment": {"python": platform.python_version(), "torch": torch.__version__,
                                "platform": platform.platform()}}
        store = RunStore.create(out, meta)
        finished = False
    return store, finished, len(store.state.get("sessions", [])) - 1


def source_commit() -> str:
    """The git commit of the tangentlab sources that run (``+dirty`` with uncommitted changes to
    tracked files), or ``""`` outside a git checkout."""
    import subprocess

    here = Path(__file__).resolve().parent
    try:
        head = subprocess.run(["git", "-C", str(here), "rev-parse", "--short=12", "HEAD"], capture_output=True,
                              text=True, timeout=10)
        if head.returncode != 0:
            return ""
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10)
        return head.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")
    except (OSError, subprocess.SubprocessError):
        return ""


def _clear_claims(store: RunStore, stream: TextIO | None) -> None:
    """Remove the claims of earlier sessions (a killed multi-rank run leaves them). Safe: no rank
    of the new session claims a unit before rank 0 has opened the store, and a unit whose
    claim is removed resumes from its own checkpoint and table rows whichever rank takes it."""
    claims = store.dir / "claims"
    if not claims.is_dir():
        return
    stale = sorted(p.name for p in claims.iterdir())
    if stale:
        shutil.rmtree(claims)
        print(f"{str(claims)!r}: removed the claims of earlier sessions ({', '.join(stale)}): this "
              "session claims its units afresh, each resuming from its checkpoint and table rows",
              file=stream or sys.stdout)


def _run(cls: type[Study], name: str, cfg: StudyConfig, preset: str | None, out: str, resume: bool,
         stream: TextIO | None, report: bool, ctx: RankContext) -> RunStore:
    opened = ctx.on_main(lambda: _open_store(cls, name, cfg, preset, out, resume, stream))
    if ctx.is_main:
        store, finished, session = opened
    else:
        store = RunStore.open(out)
        finished, session = False, 0
    finished, session = ctx.broadcast((finished, session))
    if ctx.active:
        if store.meta.get("config") != json.loads(json.dumps(json_safe(cfg.to_dict()))):
            raise InvalidInputError(f"rank {ctx.rank}: the run directory {out!r} holds another configuration "
                                    "than this rank's (every rank must get the same arguments)")
        ctx.set_session(store.dir, session)
        ctx.barrier()
    study = cls(cfg, store, stream, ctx)
    status = "failed"
    err: str | None = None
    try:
        with _environment(cfg):
            if not finished and (cls.parallel or ctx.is_main):
                study.run()
            elif not finished:
                study.log(f"{name}: this study runs on one process; rank {ctx.rank} waits for rank 0")
        ctx.barrier()
        status = "finished"
    except KeyboardInterrupt:
        status = "interrupted"
        raise
    except BaseException as e:
        err = " ".join(f"{type(e).__name__}: {e}".split())
        if ctx.active:
            err = f"rank {ctx.rank}: {err}"
        raise
    finally:
        if ctx.is_main or status != "finished":
            store.end_session(status, err)
    if ctx.is_main:
        store.export_parquet()
        if report:
            from .report import write_report

            write_report(store, study, stream=stream)
    return store


def report_run(run_dir: str, stream: TextIO | None = None) -> Path:
    """Regenerate ``RUN_DIR/report.html`` from the stored tables and print the claims."""
    from .report import write_report

    store = RunStore.open(run_dir)
    meta = store.meta
    cls = get_study(str(meta.get("study")))
    cfg = config_from_dict(cls.config_class, meta["config"])
    if not store.table_names():
        raise InvalidInputError(f"{run_dir!r} has no result tables yet")
    return write_report(store, cls(cfg, store, stream), stream=stream)
