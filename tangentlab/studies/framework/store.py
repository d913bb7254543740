"""Run directories: tidy results tables, checkpoints and resume.

Layout of a run directory::

    RUN_DIR/
      config.json          study name, preset, resolved configuration, versions (written once)
      state.json           status (running / finished / failed), sessions, elapsed time
      tables/NAME.csv      tidy tables, one row per step × probe × metric (append-only)
      tables/NAME.parquet  copies of the tables when pyarrow is installed (written at the end)
      checkpoints/TAG-00000123.pt   model / optimizer / RNG / study state at a step
      figures/*.png        the report's figures
      report.html          the report (``tangentlab report RUN_DIR`` writes it again)

Tables are append-only CSV files. Each :meth:`Table.append` writes whole lines in one
``write`` and ``fsync``s; on opening, a torn last line (a run killed mid-write) is cut
off. Every table has *key columns*; the keys already in the file are loaded when it is
opened and a row whose key is present is skipped, so a resumed run that recomputes
the steps after its last checkpoint neither loses nor duplicates rows. Several processes
(the ranks of ``torchrun -m tangentlab run``) may append to one table: opening and
appending hold an exclusive lock on ``tables/.NAME.lock``, and an append first reads the
rows other processes added since (so a key written by any rank is never written twice).

Other files (``config.json``, ``state.json``, checkpoints, figures, the report) are
written to a temporary file in the same directory and moved into place with
``os.replace``: readers see the old file or the new one, never a partial one.

A run directory may come from elsewhere or have been damaged; reading it never runs code
and never silently loses or duplicates a row:

* checkpoints load with ``torch.load(weights_only=True)`` (tensors, numbers, strings and
  containers only: they cannot carry code); one that cannot be read is reported with a
  :class:`RunDirectoryWarning` naming it and the older checkpoint used instead, and when
  none of a tag's checkpoints can be read, :class:`RunDirectoryError` names them and the fix;
* a torn last table line is cut off and reported (its row is computed again); a malformed
  line before it is refused (:class:`RunDirectoryError`, naming the file and the line);
* an unreadable ``state.json`` (it holds the status and the session history, nothing a
  result depends on) is rebuilt and reported; an unreadable ``config.json`` is refused;
* ``config.json`` records :data:`FORMAT_VERSION`; a run directory of another major version
  (or of none: written before it was recorded) is refused by :meth:`RunStore.check_format`;
* a missing checkpoint is a unit that starts again from its beginning: its rows already in
  the tables are recomputed bit for bit and skipped by key (reported when the tag had
  saved one: ``checkpoints/.TAG.saved`` marks a tag with checkpoints).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import os
import re
import tempfile
import time
import warnings
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from ...errors import InvalidInputError

try:  # POSIX advisory locks serialize appends of several processes (torchrun ranks)
    import fcntl
except ImportError:  # pragma: no cover - Windows: one process per run directory
    fcntl = None  # type: ignore[assignment]

CONFIG_FILE = "config.json"
STATE_FILE = "state.json"

#: Layout version of a run directory, ``MAJOR.MINOR``, stored in ``config.json`` as
#: ``format_version``. A run is resumed only by a tangentlab of the same major version.
FORMAT_VERSION = "1.0"

#: How to get out of a run directory that cannot be continued.
NEW_RUN = "start a new run with another --out"


class RunDirectoryError(InvalidInputError):
    """A run directory is damaged or of another version in a way that cannot be repaired safely;
    the message names the file and what to do."""


class RunDirectoryWarning(UserWarning):
    """Something in a run directory was repaired (or an unreadable checkpoint skipped); the
    message names the file and what was done."""


def notice(message: str) -> None:
    """Report a repair of a run directory (a :class:`RunDirectoryWarning`)."""
    warnings.warn(message, RunDirectoryWarning, stacklevel=3)


# ---------------------------------------------------------------------------------------------
# atomic files
# ---------------------------------------------------------------------------------------------
def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> None:
    """Write ``data`` to a temporary file in ``path``'s directory, fsync it, then ``os.replace``
    it (readers see the old file or the new one, never a partial one). The file gets the usual
    ``0o666 & ~umask`` permissions rather than ``mkstemp``'s ``0o600``."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_dir(path.parent)


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """:func:`atomic_write_bytes` of UTF-8 text (newlines written as given)."""
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(path: str | os.PathLike[str], obj: Any) -> None:
    """``torch.save`` into a temporary file, then ``os.replace``."""
    import torch

    buf = io.BytesIO()
    torch.save(obj, buf)
    atomic_write_bytes(path, buf.getvalue())


def json_safe(obj: Any) -> Any:
    """A JSON-safe copy: non-finite floats become ``None``, tuples lists."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


# ---------------------------------------------------------------------------------------------
# tidy tables
# ---------------------------------------------------------------------------------------------
def cell(value: Any) -> str:
    """How a value is written in a table: floats with ``repr`` (round-trips exactly; ``nan``,
    ``inf``), ints and strings as is, ``None`` as an empty cell, booleans as true/false."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, int):
        return str(value)
    if hasattr(value, "item"):  # 0-d tensors and numpy scalars
        return cell(value.item())
    return str(value)


def to_number(text: str) -> float:
    """A table cell as a float (empty → NaN)."""
    return float(text) if text != "" else math.nan


class Table:
    """An append-only tidy CSV table with key columns (see the module docstring)."""

    def __init__(self, path: str | os.PathLike[str], columns: Sequence[str], key: Sequence[str]):
        self.path = Path(path)
        self.columns = list(columns)
        self.key = list(key)
        missing = [k for k in self.key if k not in self.columns]
        if missing or not self.key:
            raise InvalidInputError(f"table {self.path.name}: key columns {missing or '(none)'} not in its columns")
        if len(set(self.columns)) != len(self.columns):
            raise InvalidInputError(f"table {self.path.name}: duplicate column names {self.columns}")
        self._kidx = [self.columns.index(k) for k in self.key]
        self.keys: set[tuple[str, ...]] = set()
        self._open()

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        """An exclusive lock on ``.NAME.lock`` next to the table (a separate file: the table
        itself may be replaced atomically when it is created)."""
        if fcntl is None:  # pragma: no cover
            yield
            return
        with open(self.path.parent / f".{self.path.name}.lock", "a") as fh:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh.fileno(), fcntl.LOCK_UN)

    def _open(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self._locked():
            self._open_locked()

    def _open_locked(self) -> None:
        header = ",".join(self.columns) + "\n"
        self._offset = len(header.encode("utf-8"))
        if not self.path.exists() or self.path.stat().st_size == 0:
            atomic_write_text(self.path, header)
            return
        data = self.path.read_bytes()
        if not data.endswith(b"\n"):  # a torn last line: cut it off
            cut = data.rfind(b"\n") + 1
            notice(f"{str(self.path)!r}: cut off a torn last line of {len(data) - cut} bytes (a run killed while "
                   "writing it); its row is computed again")
            if cut == 0:
                atomic_write_text(self.path, header)
                return
            with open(self.path, "r+b") as fh:
                fh.truncate(cut)
                fh.flush()
                os.fsync(fh.fileno())
            data = data[:cut]
        reader = csv.reader(io.StringIO(data.decode("utf-8"), newline=""))
        found = next(reader, None)
        if found != self.columns:
            raise RunDirectoryError(
                f"table {str(self.path)!r} has columns {found}, expected {self.columns} "
                f"(a run directory of another version of the study?); {NEW_RUN}")
        self._add_keys(reader, check=True)
        self._offset = len(data)

    def _add_keys(self, rows: Iterable[list[str]], check: bool = False) -> None:
        for line, row in enumerate(rows, start=2):
            if len(row) == len(self.columns):
                self.keys.add(tuple(row[i] for i in self._kidx))
            elif check:
                raise RunDirectoryError(
                    f"table {str(self.path)!r}, line {line}: {len(row)} cells, expected {len(self.columns)} "
                    f"(the file was edited or damaged); restore the file, or {NEW_RUN}")

    def _catch_up(self) -> None:
        """Read the complete rows other processes appended since this object last looked."""
        size = self.path.stat().st_size
        if size <= self._offset:
            return
        with open(self.path, "rb") as fh:
            fh.seek(self._offset)
            data = fh.read(size - self._offset)
        data = data[: data.rfind(b"\n") + 1]
        self._add_keys(csv.reader(io.StringIO(data.decode("utf-8"), newline="")))
        self._offset += len(data)

    def refresh(self) -> Table:
        """Update :attr:`keys` with the rows other processes appended (returns ``self``)."""
        with self._locked():
            self._catch_up()
        return self

    def __contains__(self, key: object) -> bool:
        """Whether a row with this key (a tuple of key cells, as written) is in the file,
        counting rows appended by other processes."""
        if key in self.keys:
            return True
        self.refresh()
        return key in self.keys

    def __len__(self) -> int:
        return len(self.keys)

    def append(self, rows: Iterable[Mapping[str, Any]]) -> int:
        """Append the rows whose key is new (extra keys in a row are an error, missing columns
        are written empty); one write + fsync. Returns the number of rows written."""
        buf = io.StringIO()
        w = csv.writer(buf, lineterminator="\n")
        new: dict[tuple[str, ...], str] = {}  # key -> its CSV line(s)
        for row in rows:
            extra = set(row) - set(self.columns)
            if extra:
                raise InvalidInputError(f"table {self.path.name}: unknown columns {sorted(extra)}")
            cells = [cell(row.get(c)) for c in self.columns]
            k = tuple(cells[i] for i in self._kidx)
            if k in self.keys or k in new:
                continue
            buf.seek(0)
            buf.truncate()
            w.writerow(cells)
            new[k] = buf.getvalue()
        if not new:
            return 0
        with self._locked():
            self._catch_up()
            keep = [k for k in new if k not in self.keys]
            if keep:
                data = "".join(new[k] for k in keep).encode("utf-8")
                with open(self.path, "ab") as fh:
                    fh.write(data)
                    fh.flush()
                    os.fsync(fh.fileno())
                self._offset += len(data)
                self.keys.update(keep)
        return len(keep)

    def read(self) -> list[dict[str, str]]:
        return read_table(self.path)


def read_table(path: str | os.PathLike[str]) -> list[dict[str, str]]:
    """All complete rows of a table file as dicts of strings (a torn last line is skipped)."""
    with open(path, newline="", encoding="utf-8") as fh:
        text = fh.read()
    if not text.endswith("\n"):
        text = text[: text.rfind("\n") + 1]
    reader = csv.DictReader(io.StringIO(text, newline=""))
    n = len(reader.fieldnames or [])
    return [r for r in reader if len(r) == n and None not in r.values()]


# ---------------------------------------------------------------------------------------------
# run directory
# ---------------------------------------------------------------------------------------------
_CKPT = re.compile(r"^(?P<tag>[A-Za-z0-9_.-]+)-(?P<step>\d{8,})\.pt$")


class RunStore:
    """One run directory (see the module docstring). Create it with :meth:`create`, open an
    existing one with :meth:`open`."""

    def __init__(self, run_dir: str | os.PathLike[str]):
        self.dir = Path(run_dir)
        self.tables_dir = self.dir / "tables"
        self.ckpt_dir = self.dir / "checkpoints"
        self.fig_dir = self.dir / "figures"
        self._tables: dict[str, Table] = {}
        self._t0, self._c0 = time.perf_counter(), time.process_time()

    # ---- creating / opening --------------------------------------------------------------
    @classmethod
    def create(cls, run_dir: str | os.PathLike[str], meta: Mapping[str, Any]) -> RunStore:
        """A new run directory holding ``config.json = meta``. Refuses a directory that
        already holds a run (resume it with ``--resume`` or choose another ``--out``)."""
        d = Path(run_dir)
        if d.exists() and not d.is_dir():
            raise InvalidInputError(f"output path {str(d)!r} exists and is not a directory")
        if (d / CONFIG_FILE).exists():
            raise InvalidInputError(f"{str(d)!r} already holds a run; pass --resume to continue it or choose "
                                    "another --out")
        if d.exists() and any(d.iterdir()):
            raise InvalidInputError(f"output directory {str(d)!r} is not empty; choose another --out")
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise InvalidInputError(f"cannot create output directory {str(d)!r}: {e.strerror}") from None
        store = cls(d)
        for sub in (store.tables_dir, store.ckpt_dir, store.fig_dir):
            sub.mkdir(exist_ok=True)
        meta = {**meta, "format_version": FORMAT_VERSION}
        atomic_write_text(d / CONFIG_FILE, json.dumps(json_safe(meta), indent=2) + "\n")
        store.write_state(status="running", sessions=[{"started": time.time()}], elapsed_s=0.0)
        return store

    @classmethod
    def open(cls, run_dir: str | os.PathLike[str]) -> RunStore:
        d = Path(run_dir)
        if not (d / CONFIG_FILE).is_file():
            raise InvalidInputError(f"{str(d)!r} is not a run directory (no {CONFIG_FILE})")
        store = cls(d)
        for sub in (store.tables_dir, store.ckpt_dir, store.fig_dir):
            sub.mkdir(exist_ok=True)
        store.meta  # noqa: B018 - refuse an unreadable config.json now
        store._repair_state()
        return store

    @property
    def meta(self) -> dict[str, Any]:
        p = self.dir / CONFIG_FILE
        try:
            meta = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise RunDirectoryError(f"{str(p)!r} cannot be read ({e}); it holds the run's configuration and "
                                    f"cannot be rebuilt: restore it, or {NEW_RUN}") from None
        if not isinstance(meta, dict):
            raise RunDirectoryError(f"{str(p)!r} is not a run's configuration (a JSON object); {NEW_RUN}")
        return meta

    def check_format(self) -> None:
        """Refuse to continue a run directory of another major :data:`FORMAT_VERSION` (or of none)."""
        found = self.meta.get("format_version")
        if str(found).split(".")[0] != FORMAT_VERSION.split(".")[0]:
            written = "records no format version" if found is None else f"has format version {found!r}"
            raise RunDirectoryError(
                f"{str(self.dir / CONFIG_FILE)!r} {written}: the run directory was written by another version of "
                f"tangentlab, whose tables and checkpoints this version ({FORMAT_VERSION}) cannot continue; "
                f"{NEW_RUN} (or continue it with the tangentlab that wrote it)")

    # ---- state -------------------------------------------------------------------------
    def _read_state(self) -> dict[str, Any] | None:
        """``state.json`` (``{}`` when absent, ``None`` when unreadable)."""
        p = self.dir / STATE_FILE
        try:
            st = json.loads(p.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return None
        return st if isinstance(st, dict) else None

    def _repair_state(self) -> None:
        """Rebuild an unreadable ``state.json``: status and session history only, no result
        depends on it."""
        if self._read_state() is None:
            p = self.dir / STATE_FILE
            notice(f"{str(p)!r} could not be read (half-written or edited): rebuilt it as an interrupted run; "
                   "its session history and elapsed time are lost, the results are not affected")
            atomic_write_text(p, json.dumps({"status": "interrupted", "sessions": [], "elapsed_s": 0.0,
                                             "repaired": time.time()}, indent=2) + "\n")

    @property
    def state(self) -> dict[str, Any]:
        st = self._read_state()
        if st is None:
            raise RunDirectoryError(f"{str(self.dir / STATE_FILE)!r} cannot be read; reopen the run directory "
                                    "(RunStore.open rebuilds it)")
        return st

    def write_state(self, **updates: Any) -> dict[str, Any]:
        st = {**self.state, **updates, "updated": time.time()}
        atomic_write_text(self.dir / STATE_FILE, json.dumps(json_safe(st), indent=2) + "\n")
        return st

    def begin_session(self) -> None:
        """Mark a resumed session (status running, a new entry in ``sessions``)."""
        st = self.state
        self._t0, self._c0 = time.perf_counter(), time.process_time()
        self.write_state(status="running", sessions=[*st.get("sessions", []), {"started": time.time()}])

    def end_session(self, status: str, error: str | None = None) -> dict[str, Any]:
        """Record the session's end (``finished`` / ``failed`` / ``interrupted``) and add its
        wall-clock time to ``elapsed_s`` and this process's CPU time (all its threads; rank 0's
        only under torchrun) to ``cpu_s``: on a shared machine the CPU time is what the run
        cost, the wall-clock time also measures the other jobs."""
        st = self.state
        dt = time.perf_counter() - self._t0
        dc = time.process_time() - self._c0
        sessions = st.get("sessions", [{}])
        sessions[-1] = {**sessions[-1], "ended": time.time(), "seconds": dt, "cpu_seconds": dc, "status": status,
                        **({"error": error} if error else {})}
        return self.write_state(status=status, sessions=sessions, elapsed_s=float(st.get("elapsed_s", 0.0)) + dt,
                                cpu_s=float(st.get("cpu_s", 0.0)) + dc)

    # ---- tables ------------------------------------------------------------------------
    def table(self, name: str, columns: Sequence[str], key: Sequence[str]) -> Table:
        """The append-only table ``tables/NAME.csv`` (created, or reopened with its keys)."""
        t = self._tables.get(name)
        if t is None:
            t = self._tables[name] = Table(self.tables_dir / f"{name}.csv", columns, key)
        return t

    def table_names(self) -> list[str]:
        return sorted(p.stem for p in self.tables_dir.glob("*.csv"))

    def read(self, name: str) -> list[dict[str, str]]:
        p = self.tables_dir / f"{name}.csv"
        return read_table(p) if p.exists() else []

    def export_parquet(self) -> list[Path]:
        """Write ``tables/NAME.parquet`` next to each CSV when pyarrow is installed (else nothing)."""
        try:
            import pyarrow.csv as pacsv
            import pyarrow.parquet as pq
        except ImportError:
            return []
        out = []
        for name in self.table_names():
            table = pacsv.read_csv(self.tables_dir / f"{name}.csv")
            buf = io.BytesIO()
            pq.write_table(table, buf)
            path = self.tables_dir / f"{name}.parquet"
            atomic_write_bytes(path, buf.getvalue())
            out.append(path)
        return out

    # ---- checkpoints -------------------------------------------------------------------
    def checkpoints(self, tag: str) -> list[tuple[int, Path]]:
        """``(step, path)`` of the checkpoints of ``tag``, oldest first."""
        out = []
        for p in self.ckpt_dir.glob(f"{tag}-*.pt"):
            m = _CKPT.match(p.name)
            if m and m.group("tag") == tag:
                out.append((int(m.group("step")), p))
        return sorted(out)

    def save_checkpoint(self, tag: str, step: int, payload: Mapping[str, Any], keep: int = 2) -> Path:
        """Save ``payload`` (state dicts, RNG states, study state...) as the checkpoint of
        ``tag`` at ``step`` (atomically), keeping the ``keep`` newest of that tag."""
        if not re.fullmatch(r"[A-Za-z0-9_.]+", tag):
            raise InvalidInputError(f"checkpoint tag {tag!r} must be letters, digits, '_' or '.'")
        path = self.ckpt_dir / f"{tag}-{int(step):08d}.pt"
        atomic_torch_save(path, {"tag": tag, "step": int(step), "saved": time.time(), **payload})
        marker = self._saved_marker(tag)
        if not marker.exists():
            marker.touch()
        for _, old in self.checkpoints(tag)[:-keep] if keep > 0 else []:
            try:
                old.unlink()
            except OSError:  # pragma: no cover
                pass
        return path

    def drop_checkpoints(self, tag: str) -> int:
        """Delete every checkpoint of ``tag`` (a finished unit's); returns how many."""
        k = 0
        for _, path in self.checkpoints(tag):
            try:
                path.unlink()
                k += 1
            except OSError:  # pragma: no cover - removed by another process
                pass
        self._saved_marker(tag).unlink(missing_ok=True)
        return k

    def _saved_marker(self, tag: str) -> Path:
        """An empty file that says ``tag`` has checkpoints (until :meth:`drop_checkpoints`)."""
        return self.ckpt_dir / f".{tag}.saved"

    def load_checkpoint(self, tag: str) -> dict[str, Any] | None:
        """The newest readable checkpoint of ``tag`` (``None`` if there is none), loaded with
        ``weights_only=True``: tensors, numbers, strings and containers only, so a checkpoint
        from elsewhere cannot run code. One that cannot be read is reported (a
        :class:`RunDirectoryWarning` naming it) and an older one is used; when none can be read,
        :class:`RunDirectoryError` names them and the fix."""
        found = list(reversed(self.checkpoints(tag)))
        failed: list[str] = []
        for _, path in found:
            try:
                ck = load_safe(path)
            except RunDirectoryError as e:
                failed.append(str(e))
                continue
            if failed:
                notice(f"{'; '.join(failed)}; using the older checkpoint {str(path)!r}")
            return ck
        if failed:
            names = ", ".join(repr(str(p)) for _, p in found)
            raise RunDirectoryError(f"{'; '.join(failed)}. No checkpoint of {tag!r} can be read: remove {names} to "
                                    f"compute that part again from its start (rows already written are kept), "
                                    f"or {NEW_RUN}")
        if self._saved_marker(tag).exists():
            notice(f"the checkpoints of {tag!r} are missing from {str(self.ckpt_dir)!r}: that part is computed again "
                   "from its start (the rows already in the tables are recomputed identically and not written twice)")
        return None


def load_safe(path: str | os.PathLike[str]) -> Any:
    """``torch.load(path, weights_only=True)`` on the CPU; a file that cannot be read that way
    (damaged, or holding anything but tensors, numbers, strings and containers: pickled code
    is never run) is a :class:`RunDirectoryError` naming it."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - every failure becomes one message naming the file
        text = str(e).strip()
        found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
        if found:
            why = f"it refers to {found.group(1)}, which a checkpoint never holds"
        elif isinstance(e, EOFError):
            why = "empty or truncated file"
        else:
            why = (text.splitlines() or [type(e).__name__])[0].split(". ")[0]
        raise RunDirectoryError(f"checkpoint {str(path)!r} cannot be read safely ({why})") from None
