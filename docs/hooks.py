"""MkDocs hook: the parts of the documentation generated from the code at build time.

A page asks for generated content with an HTML comment on a line of its own, which
:func:`expand` replaces before the Markdown is rendered:

* ``<!-- tangentlab:representations -->``: the table of the registered representations
  (:func:`tangentlab.pmat.representations`), with the bytes each stores for two example
  models, computed by the registry's ``footprint`` estimators;
* ``<!-- tangentlab:verbs -->``: which verbs each registered representation performs,
  found by calling each verb on the Fisher of a tiny float64 MLP (a verb that raises
  :class:`~tangentlab.errors.UnsupportedOperationError` is "no");
* ``<!-- tangentlab:toplevel -->``: the names of ``import tangentlab as tl`` with links to
  the API page that documents each;
* ``<!-- tangentlab:study NAME -->``: a study's package docstring (what it reproduces), the
  claims its report checks (read from the ``Claim(topic, paper, ...)`` calls of its
  ``claims.py``), its presets and its configuration fields (read from its configuration
  class);
* ``<!-- tangentlab:examples -->``: every ``examples/*.py`` script of the repository, its
  docstring and its code (a sentence when there is none);
* ``<!-- tangentlab:include PATH -->``: a Markdown file of the repository (e.g.
  ``benchmarks/RESULTS.md``), its headings moved one level down and its relative links
  rewritten to plain text, so that the included file stays the single copy.

The functions take the repository root explicitly so that ``tests/test_docs.py`` can call
them without MkDocs.
"""

from __future__ import annotations

import ast
import importlib
import re
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
_DIRECTIVE = re.compile(r"^<!-- tangentlab:(\w+)(?: +(\S+))? -->[ \t]*$", re.MULTILINE)

#: Example models for the footprint columns: (label, layer sizes of a Linear/Tanh MLP).
EXAMPLE_MLPS = (("MLP 64-32-10", (64, 32, 10)), ("MLP 784-1000-500-10", (784, 1000, 500, 10)))

#: Where each top-level name is documented: module page -> names.
TOPLEVEL_PAGES = {
    "api.md": ("tangentlab.api", ["fim", "ntk", "jacobian"]),
    "vectors.md": ("tangentlab.vectors", ["PVector", "FVector"]),
    "pmat.md": ("tangentlab.pmat", ["PMat", "PMatDense", "PMatDiag", "PMatBlockDiag", "PMatQuasiDiag",
                                    "PMatLowRank", "PMatImplicit", "PMatKFAC", "PMatEKFAC", "PMatMixed"]),
    "maps.md": ("tangentlab.maps", ["PushForwardDense", "PushForwardImplicit", "PullBackDense",
                                    "PullBackImplicit"]),
    "optim.md": ("tangentlab.optim", ["optim"]),
    "limits.md": ("tangentlab.limits", ["limits"]),
    "engine-options.md": ("tangentlab.engine.options", ["EngineOptions"]),
    "errors.md": ("tangentlab.errors", ["TangentlabError", "UnsupportedOperationError", "MemoryBudgetError",
                                        "InvalidInputError", "NonFiniteError", "UnsupportedLayerError",
                                        "MixedDeviceDtypeError"]),
}


def _mlp_space(sizes: tuple[int, ...]) -> Any:
    """The parameter space of a Linear/Tanh MLP with these layer sizes, on the meta device
    (shapes only, nothing allocated)."""
    import torch

    from tangentlab.space import ParamSpace

    layers: list[torch.nn.Module] = []
    for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        layers += [torch.nn.Linear(a, b, device="meta")] + ([torch.nn.Tanh()] if i < len(sizes) - 2 else [])
    return ParamSpace.from_model(torch.nn.Sequential(*layers))


def representation_rows() -> list[dict[str, str]]:
    """One row per registered representation, in registration order: its name, class,
    what it stores, its memory formula, the part of ``F`` it keeps exactly, and the
    float32 bytes it stores for each of
    :data:`EXAMPLE_MLPS` (``N·C·P``-type footprints depend on the data: "data")."""
    from tangentlab.errors import format_bytes
    from tangentlab.pmat import representations

    spaces = [(label, _mlp_space(sizes)) for label, sizes in EXAMPLE_MLPS]
    rows = []
    for rep in representations():
        row = {"name": f"`{rep.name}`", "class": f"`{rep.cls.__name__}`", "stores": rep.stores,
               "memory": rep.memory, "exact part": rep.keeps or "approximation"}
        for label, space in spaces:
            row[f"{label} (P = {space.numel:,})"] = (
                "depends on N·C" if rep.footprint is None else format_bytes(4 * rep.footprint(space)))
        rows.append(row)
    return rows


def markdown_table(rows: list[dict[str, str]]) -> str:
    """A Markdown table with the keys of the first row as header."""
    if not rows:
        return ""
    keys = list(rows[0])
    out = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    out += ["| " + " | ".join(str(r[k]).replace("|", "\\|") for k in keys) + " |" for r in rows]
    return "\n".join(out)


def representations_section() -> str:
    """The registry table (see :func:`representation_rows`)."""
    return markdown_table(representation_rows())


#: The verbs of :func:`verb_rows`: name -> call on a matrix ``F`` and a vector ``v``.
VERBS = {
    "mv": lambda F, v: F.mv(v), "vTMv": lambda F, v: F.vTMv(v), "trace": lambda F, v: F.trace(),
    "diag": lambda F, v: F.diag(), "to_dense": lambda F, v: F.to_dense(),
    "solve": lambda F, v: F.solve(v, damping=1e-3), "inverse": lambda F, v: F.inverse(damping=1e-3),
    "eigh(k)": lambda F, v: F.eigh(k=2), "norm": lambda F, v: F.norm("fro"),
}


def verb_rows() -> list[dict[str, str]]:
    """For every registered representation, whether each of :data:`VERBS` runs on the exact
    Fisher of a float64 MLP 4-5-3 on 6 examples ("yes") or raises
    :class:`~tangentlab.errors.UnsupportedOperationError` ("no"). Any other error propagates."""
    import torch

    import tangentlab as tl
    from tangentlab.errors import UnsupportedOperationError
    from tangentlab.pmat import representations

    gen = torch.Generator().manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 5), torch.nn.Tanh(), torch.nn.Linear(5, 3)).double()
    x = torch.randn(6, 4, dtype=torch.float64, generator=gen)
    y = torch.randint(0, 3, (6,), generator=gen)
    v = tl.PVector.from_model(model).detach().clone()
    rows = []
    for rep in representations():
        F = tl.fim(model, (x, y), representation=rep.name, progress=False)
        row = {"name": f"`{rep.name}`"}
        for verb, call in VERBS.items():
            try:
                call(F, v)
                row[f"`{verb}`"] = "yes"
            except UnsupportedOperationError:
                row[f"`{verb}`"] = "no"
        rows.append(row)
    return rows


def toplevel_section() -> str:
    """The names of ``tangentlab.__all__``, grouped by the API page that documents them."""
    import tangentlab

    rows = []
    listed = set()
    for page, (module, names) in TOPLEVEL_PAGES.items():
        for name in names:
            listed.add(name)
            rows.append({"name": f"`tl.{name}`", "documented in": f"[{module}]({page})"})
    rest = [n for n in tangentlab.__all__ if n not in listed]
    for name in rest:
        obj = getattr(tangentlab, name)
        rows.append({"name": f"`tl.{name}`", "documented in": f"`{obj.__module__}` (its docstring)"})
    return markdown_table(rows)


_ROLE = re.compile(r":(?:mod|func|class|meth|data|attr|obj|exc):`(~?)\.?([^`]+)`")


def plain_docstring(doc: str) -> str:
    """A reST-flavoured docstring as Markdown: a Sphinx cross-reference ``:role:`a.b``` becomes
    the code span ```a.b``` (```b``` for ``:role:`~a.b```, as Sphinx shows it)."""
    return _ROLE.sub(lambda m: f"`{m.group(2).rsplit('.', 1)[-1] if m.group(1) else m.group(2)}`", doc)


def _literal(node: ast.AST) -> str | None:
    """A string argument as written: f-string holes shown as ``…``; ``None`` otherwise."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    if isinstance(node, ast.JoinedStr):
        return "".join(v.value if isinstance(v, ast.Constant) else "…" for v in node.values)
    return None


def _claim_call(node: ast.AST) -> str | None:
    """``"Claim"``, ``"compare"`` or ``"identity"`` for a call building a claim, else ``None``."""
    if not isinstance(node, ast.Call):
        return None
    f = node.func
    if isinstance(f, ast.Name) and f.id == "Claim":
        return "Claim"
    if (isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id == "Claim"
            and f.attr in ("compare", "identity")):
        return f.attr
    return None


def claim_rows(package: str, root: Path = ROOT) -> list[dict[str, str]]:
    """The claims a study's report checks: one row per distinct ``Claim(topic, paper, ...)``,
    ``Claim.compare(topic, paper, criterion, ...)`` or ``Claim.identity(topic, paper, ...)``
    call in the modules of ``root/tangentlab/studies/<package>/`` (``claims.py`` first, then
    the others by name; source order within a module). ``…`` marks the parts filled in from
    the run (a noise level, a data model, a threshold)."""
    folder = root / "tangentlab" / "studies" / package
    files = sorted(folder.glob("*.py"), key=lambda p: (p.name != "claims.py", p.name))
    rows: list[dict[str, str]] = []
    for path in files:
        tree = ast.parse(path.read_text(encoding="utf-8"))
        calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and _claim_call(n) and len(n.args) >= 2]
        for node in sorted(calls, key=lambda n: (n.lineno, n.col_offset)):
            how = _claim_call(node)
            kw = {k.arg: k.value for k in node.keywords if k.arg}
            kind = "identity" if how == "identity" else None
            given = kw.get("kind") or (node.args[4] if how == "Claim" and len(node.args) >= 5 else None)
            if given is not None:
                kind = _literal(given) or "(computed)"
            kind = kind or "finding"
            kind = {"deterministic": "identity", "statistical": "finding"}.get(kind, kind)
            crit = kw.get("criterion") or (node.args[2] if how == "compare" and len(node.args) > 2 else None)
            row = {"claim": _literal(node.args[0]) or "(computed)",
                   "the paper's statement": _literal(node.args[1]) or "(computed from the run)",
                   "criterion tested": (_literal(crit) if crit is not None else None) or "(see the report)",
                   "kind": kind or "(computed)"}
            if row not in rows:
                rows.append(row)
    return rows


def study_section(name: str, root: Path = ROOT) -> str:
    """A study's page body: its package docstring, the claims its report checks, its
    presets and fields (the ``--show-config`` of ``tangentlab run NAME``)."""
    from tangentlab.studies.framework.config import describe
    from tangentlab.studies.registry import get_study

    study = get_study(name)
    package = study.__module__.split(".")[2]
    doc = importlib.import_module(f"tangentlab.studies.{package}").__doc__ or ""
    cfg = study.config_class
    presets = [{"preset": f"`{p}`", "what": preset.description, "GPU": "needed" if preset.needs_gpu else "no",
                "sets": ", ".join(f"`{k}`" for k in preset.values) or "(nothing)"}
               for p, preset in cfg.PRESETS.items()]
    fields_text = describe(cfg).split("\npresets:")[0]
    out = ["## What it reproduces", "", plain_docstring(doc).strip(), "",
           "## The claims it checks", "",
           "The report's claims table puts each of these statements of the paper next to the "
           "criterion the run tests, what it measured (with an interval over seeds where there are "
           "several) and a verdict: yes, NO, inconclusive (the interval straddles the threshold) or "
           "n/a. *Findings* (empirical statements) and *identities* (theorems, closed forms, solver "
           "properties, held to a tolerance) are counted apart; every run writes them to "
           "`RUN_DIR/tables/claims.csv`. The rows below are read from the study's code; `…` is "
           "filled in from the run.", "",
           markdown_table(claim_rows(package, root)), "",
           "To get the table with the measured values, run the study and read `RUN_DIR/report.html`, "
           "or print it again from the stored tables:", "",
           "```bash", f"tangentlab run {name} --out runs/{name}            # or --preset NAME, see below",
           f"tangentlab report runs/{name}                    # re-renders report.html, prints the claims", "```",
           "", "## How to run and scale it", ""]
    if presets:
        out += ["Presets (`--preset NAME`):", "", markdown_table(presets), ""]
    out += ["Fields (`--set key=value`, or a `--config file.toml`), as `tangentlab run "
            f"{name} --show-config` prints them:", "", "```text", fields_text.rstrip(), "```", "",
            f"On several processes: `torchrun --nproc-per-node=N -m tangentlab run {name} [options]` "
            "(see [Studies](index.md#several-processes))."]
    return "\n".join(out)


def examples_section(root: Path = ROOT) -> str:
    """Every ``root/examples/*.py``, sorted by name: a heading, the module docstring and
    the script. A sentence when the folder is missing or empty."""
    scripts = sorted((root / "examples").glob("*.py")) if (root / "examples").is_dir() else []
    scripts = [p for p in scripts if not p.name.startswith("_")]
    if not scripts:
        return "*No example scripts in `examples/` in this checkout.*"
    out = []
    for path in scripts:
        src = path.read_text(encoding="utf-8")
        try:
            doc = ast.get_docstring(ast.parse(src)) or ""
        except SyntaxError:
            doc = ""
        out += [f"## `{path.name}`", "", doc, "", f"Run: `python examples/{path.name}`", "",
                '??? example "The script"', "", "    ```python"]
        out += [("    " + line).rstrip() for line in src.rstrip().splitlines()]
        out += ["    ```", ""]
    return "\n".join(out)


def include_section(rel: str, root: Path = ROOT) -> str:
    """The Markdown file ``root/rel``, headings one level down, relative links as text."""
    path = (root / rel).resolve()
    if root.resolve() not in path.parents:
        raise ValueError(f"include outside the repository: {rel}")
    text = path.read_text(encoding="utf-8")
    text = re.sub(r"^(#{1,5}) ", r"#\1 ", text, flags=re.MULTILINE)
    return re.sub(r"\[([^\]]+)\]\((?!https?://|#)[^)]*\)", r"\1", text)


def expand(markdown: str, root: Path = ROOT) -> str:
    """Replace every ``<!-- tangentlab:... -->`` line of ``markdown`` by its content."""

    def one(m: re.Match) -> str:
        kind, arg = m.group(1), m.group(2)
        if kind == "representations":
            return representations_section()
        if kind == "verbs":
            return markdown_table(verb_rows())
        if kind == "toplevel":
            return toplevel_section()
        if kind == "study" and arg:
            return study_section(arg)
        if kind == "examples":
            return examples_section(root)
        if kind == "include" and arg:
            return include_section(arg, root)
        raise ValueError(f"unknown documentation directive {m.group(0)!r}")

    return _DIRECTIVE.sub(one, markdown)


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs event: expand the directives of every page."""
    return expand(markdown)


def on_config(config: Any) -> Any:
    """MkDocs event: watch the folders the generated parts read (``mkdocs serve``)."""
    for extra in ("examples", "benchmarks/RESULTS.md", "tangentlab"):
        if (ROOT / extra).exists() and str(ROOT / extra) not in config.watch:
            config.watch.append(str(ROOT / extra))
    return config

