"""The documentation site (``mkdocs.yml``, ``docs/``), without building it.

The strict build itself (``mkdocs build --strict``) runs in ``.ci/run``. Here, cheaply:

* the navigation and the pages agree, every API page documents an importable module, and
  the configuration stays offline with NumPy docstrings;
* the Python code blocks of the guides run as written (tiny sizes), and the side-by-side
  snippets of "Coming from another library" compute the same numbers as tangentlab's (the
  peers' blocks where those libraries are installed, ``torch.func`` always);
* the generated parts of ``docs/hooks.py`` match the registries they are generated from:
  the representation and verb tables, each study's claims, presets and fields, the
  examples listing (empty folder included) and the benchmark includes.
"""

from __future__ import annotations

import functools
import importlib
import importlib.util
import re
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _hooks():
    spec = importlib.util.spec_from_file_location("tangentlab_docs_hooks", DOCS / "hooks.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


hooks = _hooks()


def _config() -> dict:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))


def _nav_pages(nav) -> list[str]:
    out = []
    for item in nav:
        if isinstance(item, str):
            out.append(item)
        elif isinstance(item, dict):
            for value in item.values():
                out += _nav_pages(value) if isinstance(value, list) else [value]
    return out


@pytest.fixture
def user_dtype():
    """The pages are written for PyTorch's default float32 (the test suite's default is float64)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_default_dtype(old)


def _python_blocks(page: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", (DOCS / page).read_text(encoding="utf-8"), re.S | re.M)


def test_nav_lists_exactly_the_pages():
    pages = _nav_pages(_config()["nav"])
    assert len(pages) == len(set(pages))
    for page in pages:
        assert (DOCS / page).is_file(), f"mkdocs.yml nav names a missing page: {page}"
    on_disk = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert on_disk == set(pages), f"pages outside the nav: {sorted(on_disk - set(pages))}"


def test_config_is_offline_with_numpy_docstrings():
    cfg = _config()
    assert cfg["strict"] is True and cfg["theme"]["font"] is False
    plugins = {next(iter(p)) if isinstance(p, dict) else p for p in cfg["plugins"]}
    assert plugins == {"search", "mkdocstrings"}, "no plugin that fetches (social, privacy, ...)"
    python = next(p for p in cfg["plugins"] if isinstance(p, dict))["mkdocstrings"]["handlers"]["python"]
    assert python["options"]["docstring_style"] == "numpy"
    assert "inventories" not in python, "inventories are fetched at build time"
    assert "site/" in (ROOT / ".gitignore").read_text().splitlines()


def test_ci_builds_the_docs_strictly_after_the_tests():
    script = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert "mkdocs build --strict" in script
    assert script.index("pytest") < script.index("mkdocs build --strict")
    assert '-e ".[docs]"' in script and "-c constraints.txt" in script


def test_api_pages_name_importable_modules():
    identifiers = []
    for page in sorted((DOCS / "api").glob("*.md")):
        identifiers += re.findall(r"^::: ([\w.]+)$", page.read_text(encoding="utf-8"), re.M)
    assert {"tangentlab", "tangentlab.api", "tangentlab.pmat", "tangentlab.vectors", "tangentlab.maps",
            "tangentlab.ntk_large", "tangentlab.linearize", "tangentlab.optim", "tangentlab.analysis",
            "tangentlab.engine.options", "tangentlab.errors", "tangentlab.training", "tangentlab.data",
            "tangentlab.distributed"} <= set(identifiers)
    for name in identifiers:
        importlib.import_module(name)
    # the members listed explicitly exist in their package
    for page, package in (("pmat.md", "tangentlab.pmat"), ("optim.md", "tangentlab.optim"),
                          ("analysis.md", "tangentlab.analysis")):
        text = (DOCS / "api" / page).read_text(encoding="utf-8")
        members = re.findall(r"^        - (\w+)$", text, re.M)
        assert members, page
        mod = importlib.import_module(package)
        for member in members:
            assert hasattr(mod, member), f"{page}: {package}.{member} does not exist"


@pytest.mark.parametrize("page", ["getting-started.md", "concepts.md", "ntk.md", "optimizers.md", "precision.md",
                                  "representations.md", "index.md"])
def test_guide_code_blocks_run(page, tmp_path, monkeypatch, user_dtype):
    """Every Python block of the page runs, in order, in one namespace (files land in a
    temporary folder); the representation registered by the "Adding a representation"
    example is removed afterwards."""
    from tangentlab.pmat import unregister

    blocks = _python_blocks(page)
    assert blocks, f"{page} has no Python block"
    monkeypatch.chdir(tmp_path)
    ns: dict = {}
    try:
        for block in blocks:
            exec(compile(block, f"{page}", "exec"), ns)
    finally:
        unregister("scaled")
    if page == "getting-started.md":
        assert len([ln for ln in blocks[0].splitlines() if ln.strip()]) <= 10, "the ten-line example"
        assert ns["K"].data.shape == (10, 10, 3, 3)
    if page == "representations.md":
        x = torch.randn(6, 4)
        model = torch.nn.Linear(4, 3)
        import tangentlab as tl

        ns_rep = {}
        exec(compile(blocks[0], page, "exec"), ns_rep)
        try:
            F = tl.fim(model, x, kind="raw", representation="scaled")
            dense = tl.fim(model, x, kind="raw", representation="dense")
            torch.testing.assert_close(F.trace(), dense.trace())
        finally:
            unregister("scaled")


def test_coming_from_snippets_agree(user_dtype):
    """The snippets of each library compute what the tangentlab snippet next to them does
    (float32, so to 1e-4 relative); a peer's blocks run only where it is installed, and
    neural-tangents (JAX) is not run."""
    peers = {"nngeometry": "nngeometry", "curvlinops": "curvlinops", "backpack": "backpack"}
    have = {}
    for key, module in peers.items():
        try:
            importlib.import_module(module)
            have[key] = True
        except Exception:  # noqa: BLE001 - a peer that fails to import is a missing peer
            have[key] = False
    ns: dict = {}
    ran = set()
    for block in _python_blocks("coming-from.md"):
        if "neural_tangents" in block:
            continue
        needs = [k for k in peers if re.search(rf"^(from|import) {k}\b", block, re.M)]
        if needs and not all(have[k] for k in needs):
            continue
        exec(compile(block, "coming-from.md", "exec"), ns)
        ran.update(needs)
    close = functools.partial(torch.testing.assert_close, rtol=1e-4, atol=1e-5)
    close(ns["K_func"], ns["K"])
    close(ns["grads_func"], ns["grads"])
    if "nngeometry" in ran:
        close(ns["K_nng"].permute(1, 3, 0, 2), ns["K"])
        close(ns["Fv_nng"], ns["Fv"])
    if "curvlinops" in ran:
        close(ns["Gv_cl"], ns["Gv"])
        close(ns["KFv_cl"], ns["KFv"])
    if "backpack" in ran:
        close(ns["diag_bp"], ns["diag"])
        close(ns["grads_bp"], ns["grads"])
    # the NT snippet's traced kernel is the output-mean of tangentlab's
    K = ns["K"]
    close(K.diagonal(dim1=2, dim2=3).mean(-1), torch.einsum("nmcc->nm", K) / K.shape[2])


def test_representation_table_matches_the_registry():
    from tangentlab.pmat import representations

    names = [rep.name for rep in representations()]
    rows = hooks.representation_rows()
    assert [r["name"] for r in rows] == [f"`{n}`" for n in names]
    table = hooks.representations_section()
    for rep in representations():
        assert f"`{rep.cls.__name__}`" in table
    # the footprint columns are the registry's estimators on the example MLPs
    space = hooks._mlp_space((64, 32, 10))
    assert space.numel == 64 * 32 + 32 + 32 * 10 + 10
    dense = next(r for r in rows if r["name"] == "`dense`")
    from tangentlab.errors import format_bytes

    assert dense[f"MLP 64-32-10 (P = {space.numel:,})"] == format_bytes(4 * space.numel ** 2)
    # the hand-written decision table names every registered representation, and only those
    text = (DOCS / "representations.md").read_text(encoding="utf-8")
    decision = text.split("## Decision table", 1)[1].split("\n## ", 1)[0]
    named = set(re.findall(r"^\| [^|]+\| `(\w+)` \|", decision, re.M))
    assert named == set(names)


def test_verb_table_matches_the_representations():
    rows = hooks.verb_rows()
    from tangentlab.pmat import representations

    assert [r["name"] for r in rows] == [f"`{rep.name}`" for rep in representations()]
    by = {r["name"]: r for r in rows}
    assert all(v == "yes" for k, v in by["`dense`"].items() if k != "name")
    assert by["`implicit`"]["`to_dense`"] == "no" and by["`implicit`"]["`mv`"] == "yes"


def test_study_sections_come_from_the_study_code():
    from tangentlab.studies.registry import BUILTIN, get_study

    assert {p.stem for p in (DOCS / "studies").glob("*.md")} == set(BUILTIN) | {"index"}
    for name in BUILTIN:
        page = (DOCS / "studies" / f"{name}.md").read_text(encoding="utf-8")
        assert f"<!-- tangentlab:study {name} -->" in page
        text = hooks.study_section(name)
        cfg = get_study(name).config_class
        for preset in cfg.PRESETS:
            assert f"`{preset}`" in text
        package = get_study(name).__module__.split(".")[2]
        claims = hooks.claim_rows(package)
        assert claims, f"no Claim(...) found for {name}"
        assert claims[0]["claim"] in text
        assert f"tangentlab run {name}" in text and ":mod:`" not in text


def test_examples_section(tmp_path):
    assert "No example scripts" in hooks.examples_section(tmp_path)
    (tmp_path / "examples").mkdir()
    assert "No example scripts" in hooks.examples_section(tmp_path)
    (tmp_path / "examples" / "b_second.py").write_text('"""Second: a kernel."""\nprint(2)\n')
    (tmp_path / "examples" / "a_first.py").write_text('"""First: a Fisher."""\nprint(1)\n')
    text = hooks.examples_section(tmp_path)
    assert text.index("a_first.py") < text.index("b_second.py")
    assert "First: a Fisher." in text and "    print(2)" in text


def test_includes_and_directives():
    text = hooks.include_section("benchmarks/RESULTS.md")
    assert text.startswith("## ") and "\n# " not in text
    with pytest.raises(ValueError):
        hooks.include_section("../outside.md")
    with pytest.raises(ValueError):
        hooks.expand("<!-- tangentlab:nonsense -->")
    assert hooks.expand("a\n<!-- tangentlab:examples -->\nb", ROOT / "no-such-root").count("\n") == 2
    # every directive used by a page is one the hook knows
    for page in DOCS.rglob("*.md"):
        for kind, arg in re.findall(r"^<!-- tangentlab:(\w+)(?: +(\S+))? -->$", page.read_text(), re.M):
            assert kind in {"representations", "verbs", "toplevel", "study", "examples", "include"}, page
            if kind == "include":
                assert (ROOT / arg).is_file(), f"{page}: {arg} does not exist"


def test_sphinx_roles_become_code_spans():
    text = "See :func:`tangentlab.fim`, :class:`~tangentlab.pmat.PMatDiag` and :mod:`.config`; ``x``."
    assert hooks.plain_docstring(text) == "See `tangentlab.fim`, `PMatDiag` and `config`; ``x``."
    python = next(p for p in _config()["plugins"] if isinstance(p, dict))["mkdocstrings"]["handlers"]["python"]
    assert python["options"]["extensions"] == ["docs/griffe_roles.py"] and (DOCS / "griffe_roles.py").is_file()


def test_toplevel_section_covers_all():
    import tangentlab

    text = hooks.toplevel_section()
    for name in tangentlab.__all__:
        assert f"`tl.{name}`" in text
