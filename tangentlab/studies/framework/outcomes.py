"""Outcomes of study runs, aggregated from their ``tables/claims.csv``.

:func:`read_outcome` reads one run directory (its claims, the study and preset, the wall
and CPU time of its sessions, the commit it ran at); :func:`outcomes_markdown` renders several runs
as the ``STUDIES.md`` page (one row per run: findings held / total and inconclusive,
identities held / total, wall time, commit; then each run's claims that did not hold or
could not be decided); :func:`write_claims_csv` concatenates the runs' claims into one tidy
table. ``tangentlab claims RUN_DIR ... [--markdown F] [--csv F]`` is the command line.
"""

from __future__ import annotations

import csv
import io
import os
from dataclasses import dataclass, field
from pathlib import Path

from ...errors import InvalidInputError
from .claims import CLAIM_COLUMNS, Claim, claim_counts, counts_summary
from .store import RunStore, atomic_write_text, read_table


@dataclass
class RunOutcome:
    """One run's claims and facts (see :func:`read_outcome`)."""

    run_dir: str
    study: str
    preset: str
    wall_s: float
    cpu_s: float
    commit: str
    status: str
    claims: list[Claim] = field(default_factory=list)

    @property
    def summary(self) -> str:
        """``findings a/b held, ...; identities c/d held``."""
        return counts_summary(claim_counts(self.claims))


def read_outcome(run_dir: str | os.PathLike[str]) -> RunOutcome:
    """The outcome of the run in ``run_dir``; its ``tables/claims.csv`` is written by every
    report (``tangentlab report RUN_DIR`` rewrites it for older runs)."""
    store = RunStore.open(run_dir)
    path = store.tables_dir / "claims.csv"
    if not path.is_file():
        raise InvalidInputError(f"{str(run_dir)!r} has no tables/claims.csv: run `tangentlab report "
                                f"{run_dir}` to write it from the stored tables")
    claims = []
    for r in read_table(path):
        claims.append(Claim(r["topic"], r["paper"], r["measured"], kind=r["kind"], criterion=r["criterion"],
                            value=_float(r["value"]), low=_float(r["low"]), high=_float(r["high"]),
                            part=r["part"], verdict=r["verdict"]))
    meta, state = store.meta, store.state
    return RunOutcome(str(run_dir), str(meta.get("study", "")), str(meta.get("preset") or "default"),
                      float(state.get("elapsed_s", 0.0)), float(state.get("cpu_s", float("nan"))),
                      str(meta.get("commit", "") or "?"),
                      str(state.get("status", "?")), claims)


def _float(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return float("nan")


def _wall(seconds: float) -> str:
    if seconds != seconds:  # nan: not recorded (runs before CPU time was recorded)
        return "?"
    m, s = divmod(int(round(seconds)), 60)
    return f"{m}m{s:02d}s"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def outcomes_markdown(outcomes: list[RunOutcome], title: str = "Study outcomes", intro: str = "") -> str:
    """The runs' outcomes as a Markdown page (the ``STUDIES.md`` layout)."""
    lines = [f"# {title}", ""]
    if intro:
        lines += [intro, ""]
    lines += ["| study | preset | findings held | inconclusive | did not hold | identities held | wall time | "
              "CPU time | commit |", "|---|---|---|---|---|---|---|---|---|"]
    for o in outcomes:
        c = claim_counts(o.claims)
        f, i = c["finding"], c["identity"]
        lines.append(f"| {o.study} | {o.preset} | {f['yes']}/{f['total']} | {f['inconclusive']} | {f['NO']} | "
                     f"{i['yes']}/{i['total']} | {_wall(o.wall_s)} | {_wall(o.cpu_s)} | `{o.commit}` |")
    for o in outcomes:
        lines += ["", f"## {o.study} ({o.preset})", "", f"{o.summary}; wall time {_wall(o.wall_s)}, CPU time "
                  f"{_wall(o.cpu_s)}, commit `{o.commit}`, status {o.status}.", ""]
        lines += ["| verdict | kind | topic | criterion | measured | interval |", "|---|---|---|---|---|---|"]
        for cl in o.claims:
            lines.append(f"| {cl.verdict} | {cl.kind} | {_md(cl.topic)} | {_md(cl.criterion)} | "
                         f"{_md(cl.measured)} | {cl.interval} |")
    return "\n".join(lines) + "\n"


def write_claims_csv(outcomes: list[RunOutcome], path: str | os.PathLike[str]) -> Path:
    """All runs' claims in one tidy table (:data:`~.claims.CLAIM_COLUMNS` plus ``run_dir``,
    ``preset`` and ``commit``), written atomically."""
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    cols = ("run_dir", "preset", "commit", *CLAIM_COLUMNS)
    w.writerow(cols)
    for o in outcomes:
        for cl in o.claims:
            r = {"run_dir": o.run_dir, "preset": o.preset, "commit": o.commit, **cl.row(o.study)}
            w.writerow([r[k] for k in cols])
    atomic_write_text(path, buf.getvalue())
    return Path(path)
