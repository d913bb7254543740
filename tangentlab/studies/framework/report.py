"""HTML reports of studies.

A study's :meth:`~tangentlab.studies.framework.runner.Study.report` returns a
:class:`ReportContent` built from its stored tables only: the claims (the paper's
statement, the criterion tested, the measured value and interval, the verdict; see
:mod:`.claims`), also written to ``tables/claims.csv``, figures (functions drawing on a matplotlib ``Figure``),
tables and notes. :func:`write_report` saves the figures as PNG files under
``RUN_DIR/figures/`` (and embeds them in the page, so ``report.html`` is
self-contained), writes ``RUN_DIR/report.html`` atomically and prints the claims.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
import math
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from .claims import CLAIM_COLUMNS, Claim, claims_summary
from .store import RunStore, atomic_write_bytes, atomic_write_text, cell

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from .runner import Study


@dataclass
class FigureSpec:
    """A figure: ``draw(fig)`` fills a matplotlib ``Figure`` of ``size`` inches; saved as
    ``figures/NAME.png``."""

    name: str
    title: str
    caption: str
    draw: Callable[[Figure], None]
    size: tuple[float, float] = (9.0, 4.0)


@dataclass
class TableSpec:
    """A table shown in the report (at most ``max_rows`` rows, with a link to ``link``)."""

    title: str
    columns: list[str]
    rows: list[dict[str, Any]]
    max_rows: int | None = 200
    link: str | None = None
    caption: str = ""


@dataclass
class ReportContent:
    title: str
    summary: list[str] = field(default_factory=list)
    claims: list[Claim] = field(default_factory=list)
    figures: list[FigureSpec] = field(default_factory=list)
    tables: list[TableSpec] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


# ---------------------------------------------------------------------------------------------
# text output
# ---------------------------------------------------------------------------------------------
def _wrap(text: str, width: int) -> list[str]:
    import textwrap

    return textwrap.wrap(text, width) or [""]


def claims_text(claims: Sequence[Claim], width: int = 120) -> str:
    """The claims as plain text (what ``tangentlab run`` / ``report`` print): per claim its
    verdict, topic and kind, then the paper's statement, the criterion tested and the measured
    value with its interval; last, the counts of findings and identities apart."""
    if not claims:
        return "(no claims)"
    out = []
    for c in claims:
        out.append(f"[{c.verdict}] {c.topic}  ({c.kind}{', ' + c.part if c.part else ''})")
        rows = [("paper says", c.paper), ("criterion", c.criterion),
                ("measured", c.measured + (f"  interval {c.interval}" if c.interval else ""))]
        for label, text in rows:
            if not text:
                continue
            lines = _wrap(text, width - 16)
            out += [f"    {label if i == 0 else '':<11} {line}" for i, line in enumerate(lines)]
    out.append(claims_summary(claims))
    return "\n".join(out)


def write_claims_table(store: RunStore, claims: Sequence[Claim]) -> Path:
    """Write ``tables/claims.csv`` (columns :data:`~.claims.CLAIM_COLUMNS`) atomically, replacing
    the previous one: the claims are recomputed from the stored tables at every report."""
    study = str(store.meta.get("study", ""))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(CLAIM_COLUMNS)
    for c in claims:
        r = c.row(study)
        w.writerow([cell(r[k]) for k in CLAIM_COLUMNS])
    path = store.tables_dir / "claims.csv"
    atomic_write_text(path, buf.getvalue())
    return path


# ---------------------------------------------------------------------------------------------
# figures
# ---------------------------------------------------------------------------------------------
def render_figure(spec: FigureSpec) -> bytes:
    """PNG bytes of ``spec`` (matplotlib's object API: no pyplot, no global state)."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=spec.size, dpi=100, layout="constrained")
    spec.draw(fig)
    if spec.title:
        fig.suptitle(spec.title, fontsize=11)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    return buf.getvalue()


# ---------------------------------------------------------------------------------------------
# HTML
# ---------------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;max-width:1150px;margin:2em auto;
padding:0 1em;color:#222;line-height:1.45}
h1{font-size:1.6em}h2{font-size:1.25em;margin-top:2em;border-bottom:1px solid #ddd}
table{border-collapse:collapse;margin:.6em 0;font-size:.86em}
th,td{border:1px solid #ccc;padding:3px 7px;text-align:left;vertical-align:top}
th{background:#f3f3f3}td.num{text-align:right;font-family:ui-monospace,monospace}
.yes{background:#e3f6e3}.no{background:#fbe1e1}.inc{background:#fdf3d0}.na{background:#f1f1f1}
figure{margin:1.2em 0}figcaption{font-size:.9em;color:#444}img{max-width:100%}
code,pre{font-family:ui-monospace,monospace;font-size:.85em}pre{background:#f7f7f7;padding:.6em;overflow:auto}
"""


def _fmt(v: Any) -> str:
    if isinstance(v, float):
        if math.isnan(v):
            return ""
        return f"{v:.4g}"
    return str(v)


def _is_num(v: Any) -> bool:
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return True
    try:
        float(v)
        return v not in ("", "nan")
    except (TypeError, ValueError):
        return False


def _table_html(t: TableSpec) -> str:
    rows = t.rows if t.max_rows is None else t.rows[: t.max_rows]
    head = "".join(f"<th>{html.escape(c)}</th>" for c in t.columns)
    body = []
    for r in rows:
        cells = []
        for c in t.columns:
            v = r.get(c, "")
            cls = ' class="num"' if _is_num(v) else ""
            cells.append(f"<td{cls}>{html.escape(_fmt(v))}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    more = ""
    if t.max_rows is not None and len(t.rows) > t.max_rows:
        more = f"<p>First {t.max_rows} of {len(t.rows)} rows.</p>"
    link = f' (<a href="{html.escape(t.link)}">{html.escape(t.link)}</a>)' if t.link else ""
    cap = f"<p>{html.escape(t.caption)}</p>" if t.caption else ""
    return (f"<h3>{html.escape(t.title)}{link}</h3>{cap}<table><tr>{head}</tr>{''.join(body)}</table>{more}")


def render_html(store: RunStore, content: ReportContent, figures: dict[str, bytes]) -> str:
    meta = store.meta
    state = store.state
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(content.title)}</title>"
             f"<style>{_CSS}</style></head><body>", f"<h1>{html.escape(content.title)}</h1>"]
    sessions = state.get("sessions", [])
    parts.append(
        f"<p>Study <code>{html.escape(str(meta.get('study')))}</code>"
        f"{', preset <code>' + html.escape(str(meta['preset'])) + '</code>' if meta.get('preset') else ''}; "
        f"status <b>{html.escape(str(state.get('status', '?')))}</b>; "
        f"{len(sessions)} session(s), {float(state.get('elapsed_s', 0.0)):.1f} s of wall-clock in all; "
        f"tangentlab {html.escape(str(meta.get('tangentlab_version')))}, torch "
        f"{html.escape(str(meta.get('environment', {}).get('torch')))}. Report written "
        f"{time.strftime('%Y-%m-%d %H:%M:%S')}.</p>")
    parts += [f"<p>{html.escape(p)}</p>" for p in content.summary]
    if content.claims:
        parts.append("<h2>The paper's claims and what was measured</h2>"
                     f"<p><b>{html.escape(claims_summary(content.claims))}</b>. <i>finding</i>: an empirical "
                     "statement; <i>identity</i>: a theorem, closed form or solver property that must hold to "
                     "the stated tolerance. <i>inconclusive</i>: the interval over seeds straddles the "
                     "criterion's threshold.</p><table><tr><th>topic</th><th>the paper says</th>"
                     "<th>criterion tested</th><th>measured here</th><th>interval</th><th>kind</th>"
                     "<th>verdict</th></tr>")
        for c in content.claims:
            cls = {"yes": "yes", "NO": "no", "inconclusive": "inc"}.get(c.verdict, "na")
            parts.append(f"<tr class='{cls}'><td>{html.escape(c.topic)}</td><td>{html.escape(c.paper)}</td>"
                         f"<td>{html.escape(c.criterion)}</td><td>{html.escape(c.measured)}</td>"
                         f"<td>{html.escape(c.interval)}</td><td>{html.escape(c.kind)}</td>"
                         f"<td><b>{c.verdict}</b></td></tr>")
        parts.append("</table>")
    if content.figures:
        parts.append("<h2>Figures</h2>")
        for f in content.figures:
            png = figures.get(f.name)
            if png is None:
                continue
            b64 = base64.b64encode(png).decode("ascii")
            parts.append(f"<figure id='{html.escape(f.name)}'><h3>{html.escape(f.title)}</h3>"
                         f"<a href='figures/{html.escape(f.name)}.png'><img alt='{html.escape(f.title)}' "
                         f"src='data:image/png;base64,{b64}'></a><figcaption>{html.escape(f.caption)}"
                         "</figcaption></figure>")
    if content.tables:
        parts.append("<h2>Tables</h2>")
        parts += [_table_html(t) for t in content.tables]
    if content.notes:
        parts.append("<h2>Notes</h2><ul>" + "".join(f"<li>{html.escape(n)}</li>" for n in content.notes) + "</ul>")
    parts.append("<h2>Configuration</h2><pre>" + html.escape(json.dumps(meta.get("config", {}), indent=2))
                 + "</pre>")
    raw = store.table_names()
    if raw:
        parts.append("<h2>Raw tidy tables</h2><ul>" + "".join(
            f"<li><a href='tables/{html.escape(n)}.csv'>tables/{html.escape(n)}.csv</a> "
            f"({len(store.read(n))} rows)</li>" for n in raw) + "</ul>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_report(store: RunStore, study: Study, stream: TextIO | None = None) -> Path:
    """Render ``study.report()``: figures to ``figures/*.png``, ``report.html``; print the claims."""
    content = study.report()
    write_claims_table(store, content.claims)
    figures: dict[str, bytes] = {}
    for f in content.figures:
        png = render_figure(f)
        atomic_write_bytes(store.fig_dir / f"{f.name}.png", png)
        figures[f.name] = png
    path = store.dir / "report.html"
    atomic_write_text(path, render_html(store, content, figures))
    out = stream if stream is not None else sys.stdout
    print(f"\n{content.title}\n\n{claims_text(content.claims)}\n\nreport: {path}\n"
          f"{content.title}: {claims_summary(content.claims)}", file=out, flush=True)
    return path
