"""``tangentlab run lazy-vs-hasty`` end to end: the tiny preset's tables and report, resume after a
kill at a work unit, the CIFAR-10 path and the Waterbirds / CelebA spurious part on fake files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tangentlab.cli import main
from tangentlab.studies.framework.config import ConfigError, build_config
from tangentlab.studies.framework.store import read_table
from tangentlab.studies.lazy_vs_hasty import LazyVsHastyConfig
from tangentlab.studies.lazy_vs_hasty.run import LazyVsHasty

from .fakes import fake_celeba, fake_waterbirds

TINY = ["--set", "progress=off", "--set", "toy_seeds=1", "--set", "quad_seeds=1"]


def _run(out, *extra: str) -> int:
    return main(["run", "lazy-vs-hasty", "--preset", "tiny", "--out", str(out), *TINY, *extra])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("lvh") / "tiny"
    assert _run(out) == 0
    return out


@pytest.mark.slow
def test_tiny_run_tables_and_report(tiny_run):
    for name in ("curves", "toy_maps", "milestones", "cscores", "quadratic", "quadratic_checks", "lr_curves", "units",
                 "claims"):
        assert (tiny_run / "tables" / f"{name}.csv").exists(), name
    assert (tiny_run / "figures" / "lr_vs_alpha.png").exists()
    curves = read_table(tiny_run / "tables" / "curves.csv")
    parts = {(r["part"], r["alpha"]) for r in curves}
    assert {("cscores", "1.0"), ("cscores", "100.0"), ("noise", "1.0"), ("spurious", "0.5")} <= parts
    assert any(r["group"] == "linearity" and r["metric"] == "ntk_alignment" for r in curves)
    html = (tiny_run / "report.html").read_text()
    assert "closed forms (5.4.5)/(5.4.6)" in html
    checks = read_table(tiny_run / "tables" / "quadratic_checks.csv")
    errs = [float(r["value"]) for r in checks if r["metric"].startswith("ode_rel_err")]
    assert errs and max(errs) < 1e-8
    first = {r["metric"]: float(r["value"]) for r in curves
             if r["part"] == "noise" and r["alpha"] == "100.0" and r["probe"] == "0" and r["group"] == "linearity"}
    assert first["ntk_alignment"] == pytest.approx(1.0) and first["sign_similarity"] == 1.0


@pytest.mark.slow
def test_tiny_run_claims_carry_criterion_kind_and_intervals(tiny_run):
    claims = read_table(tiny_run / "tables" / "claims.csv")
    assert all(c["paper"] and c["criterion"] and c["kind"] in ("identity", "finding") for c in claims)
    lr = [c for c in claims if c["part"].startswith("lr")]
    assert len(lr) == 7 and [c["kind"] for c in lr].count("identity") == 1
    # two lr seeds in the tiny preset: every finding of part lr has an interval over them
    assert all(np.isfinite(float(c["low"])) and np.isfinite(float(c["high"])) for c in lr if c["kind"] == "finding")
    ident = next(c for c in lr if c["kind"] == "identity")
    assert ident["verdict"] == "yes" and float(ident["value"]) < 1e-10
    kinds = {c["topic"]: c["kind"] for c in claims}
    assert kinds["quadratic: closed forms (5.4.5)/(5.4.6) = gradient flow"] == "identity"
    assert kinds["quadratic model: example 1 learning order"] == "identity"
    assert kinds["quadratic model: example 2 (label noise)"] == "finding"
    lr_rows = read_table(tiny_run / "tables" / "lr_curves.csv")
    runs = {(r["seed"], r["alpha"], r["lr_factor"]) for r in lr_rows if r["group"] != "check"}
    assert runs == {(s, a, f) for s in ("0", "1") for a, f in (("1.0", "1.0"), ("1.0", "0.25"), ("2.0", "1.0"),
                                                                ("100.0", "1.0"))}


@pytest.mark.slow
def test_resume_after_a_kill_matches_an_uninterrupted_run(tiny_run, tmp_path, monkeypatch):
    original = LazyVsHasty.train_regime
    calls = {"n": 0}

    def failing(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, *a, **k)

    out = tmp_path / "killed"
    monkeypatch.setattr(LazyVsHasty, "train_regime", failing)
    parts = ("--set", "parts=cscores,noise")
    assert _run(out, *parts) == 130  # killed while training the 3rd regime (noise, α = 1)
    assert json.loads((out / "state.json").read_text())["status"] == "interrupted"
    assert _run(out, *parts, "--resume") == 0
    assert [r["unit"] for r in read_table(out / "tables" / "units.csv")] == [
        "cscores/1.0", "cscores/100.0", "noise/1.0", "noise/100.0"]
    for name, keep in (("curves", lambda r: r["part"] in ("cscores", "noise")), ("cscores", lambda r: True)):
        a = sorted(tuple(r.items()) for r in read_table(out / "tables" / f"{name}.csv") if keep(r))
        b = sorted(tuple(r.items()) for r in read_table(tiny_run / "tables" / f"{name}.csv") if keep(r))
        assert a and a == b, name
    sessions = json.loads((out / "state.json").read_text())["sessions"]
    assert [s["status"] for s in sessions] == ["interrupted", "finished"]


@pytest.mark.slow
def test_cifar10_path_on_fake_files(tmp_path):
    """The paper-scale data path (CIFAR-10 batches + precomputed C-scores, BN-free ResNet-18) on a tiny fake copy."""
    import pickle

    rng = np.random.default_rng(0)
    labels_all: list[int] = []
    for i in range(1, 6):
        labels = rng.integers(0, 10, 10).tolist()
        labels_all += labels
        with open(tmp_path / f"data_batch_{i}", "wb") as fh:
            pickle.dump({b"data": rng.integers(0, 256, (10, 3072), dtype=np.uint8), b"labels": labels}, fh)
    np.savez(tmp_path / "cifar10-cscores-orig-order.npz", scores=rng.uniform(size=50), labels=np.array(labels_all))
    sets = ["dataset=cifar10", f"data_dir={tmp_path}", "model=resnet18", "resnet_width=2", "parts=cscores,noise",
            "steps_alpha1=3", "steps_alpha100=3", "batch_size=8", "n_linearity=3", "eval_per_group=2",
            "dtype=float32", "n_bins=4", "progress=off"]
    out = tmp_path / "run"
    assert main(["run", "lazy-vs-hasty", "--out", str(out), *[a for s in sets for a in ("--set", s)]]) == 0
    cs = read_table(out / "tables" / "cscores.csv")
    assert len(cs) == 40 and {r["decile"] for r in cs} == {"0", "1", "2", "3"}
    # the npz scores (original order, first 80 %) define the bins
    scores = np.load(tmp_path / "cifar10-cscores-orig-order.npz")["scores"][:40]
    lowest = {int(r["index"]) for r in cs if r["decile"] == "0"}
    assert lowest == set(np.argsort(scores)[:10].tolist())
    assert {r["part"] for r in read_table(out / "tables" / "curves.csv")} == {"cscores", "noise"}
    with pytest.raises(ConfigError, match="'model'.*resnet18"):
        build_config(LazyVsHastyConfig, sets=[s for s in sets if not s.startswith("model")])


# ---- Waterbirds / CelebA on tiny fake copies in the original on-disk formats ----------------------------

@pytest.mark.parametrize("name, model", [("waterbirds", "mlp"), ("celeba", "resnet18")])
def test_spurious_part_end_to_end_on_fake_files(tmp_path, name, model):
    (fake_waterbirds if name == "waterbirds" else fake_celeba)(tmp_path)
    sets = [f"spurious_dataset={name}", f"data_dir={tmp_path}", f"model={model}", "parts=spurious", "image_size=8",
            "hidden=8", "resnet_width=2", "balanced_per_group=2", "steps_alpha05=4", "steps_alpha1=4",
            "steps_alpha100=4", "batch_size=8", "n_linearity=4", "linearity_every=2", "progress=off",
            "dtype=" + ("float64" if model == "mlp" else "float32")]
    out = tmp_path / "run"
    assert main(["run", "lazy-vs-hasty", "--out", str(out), *[a for s in sets for a in ("--set", s)]]) == 0
    curves = read_table(out / "tables" / "curves.csv")
    assert {(r["part"], r["alpha"]) for r in curves} == {("spurious", "0.5"), ("spurious", "1.0"),
                                                         ("spurious", "100.0")}
    assert {"with", "without", "balanced", "test_with", "test_without", "linearity"} <= {r["group"] for r in curves}
    first = {(r["group"], r["metric"]): float(r["value"]) for r in curves if r["alpha"] == "1.0" and r["probe"] == "0"}
    assert 0 <= first[("without", "accuracy")] <= 1 and first[("linearity", "ntk_alignment")] == pytest.approx(1.0)
    assert (out / "report.html").exists()
