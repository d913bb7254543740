"""``tangentlab run alignment --preset tiny`` end to end: tables, internal consistency of the
stored metrics, the report, resume after a kill without lost or duplicated rows, config errors."""

from __future__ import annotations

import csv
import math
import os
import shutil
from collections import defaultdict

import numpy as np
import pytest
import torch

from tangentlab.cli import main
from tangentlab.studies.alignment import run as al
from tangentlab.studies.alignment.config import (
    EIGEN_COLUMNS,
    PCA_COLUMNS,
    PROBE_COLUMNS,
    SPECTRA_COLUMNS,
    TRAINING_COLUMNS,
    AlignmentConfig,
)
from tangentlab.studies.alignment.criteria import half_rise_step
from tangentlab.studies.alignment.run import plan_runs
from tangentlab.studies.framework.config import ConfigError, build_config
from tangentlab.studies.framework.models import make_vgg
from tangentlab.studies.framework.probes import log_schedule
from tangentlab.studies.framework.runner import run_study
from tangentlab.studies.framework.store import read_table

FAST = ["progress=off", "threads=1"]


def _sets(*extra):
    out = []
    for s in (*FAST, *extra):
        out += ["--set", s]
    return out


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("al") / "tiny"
    assert main(["run", "alignment", "--preset", "tiny", "--out", str(out), *_sets()]) == 0
    return out


def _table(run, name):
    return read_table(os.path.join(run, "tables", f"{name}.csv"))


def test_tables_and_consistency(tiny_run):
    cfg = build_config(AlignmentConfig, preset="tiny")
    for name, cols in (("probes", PROBE_COLUMNS), ("training", TRAINING_COLUMNS), ("spectra", SPECTRA_COLUMNS),
                       ("eigenfunctions", EIGEN_COLUMNS), ("pca", PCA_COLUMNS)):
        with open(tiny_run / "tables" / f"{name}.csv") as fh:
            assert fh.readline().strip().split(",") == cols
    p = _table(tiny_run, "probes")
    keys = [(r["run"], r["step"], r["probe"], r["metric"], r["layer"]) for r in p]
    assert len(keys) == len(set(keys))
    runs = {r["run"] for r in p}
    trained = [f"{b}{s}" for s in ("", "_s1") for b in ("noise_0", "noise_50", "hier_random", "hier_other")]
    assert cfg.noise_seeds == cfg.hier_seeds == cfg.disk_seeds == 2
    assert runs == {"disk", "disk_s1", *trained}
    sched = log_schedule(cfg.schedule, cfg.train_steps, cfg.schedule_base)
    for run in trained:
        assert sorted({int(r["step"]) for r in p if r["run"] == run}) == sched
    for run in ("disk", "disk_s1"):
        assert sorted({int(r["step"]) for r in p if r["run"] == run}) == log_schedule(
            cfg.schedule, cfg.disk_steps, cfg.schedule_base)
    # the seeds are different draws (data, initialization, minibatches)
    for a in ("disk", "noise_0", "hier_other"):
        first = [float(r["value"]) for r in p if r["run"] == a and r["metric"] == "cka" and not r["layer"]]
        other = [float(r["value"]) for r in p if r["run"] == f"{a}_s1" and r["metric"] == "cka" and not r["layer"]]
        assert len(first) == len(other) and first[1:] != other[1:]
    # per-layer CKA for every Linear layer of the MLP, train and test
    layers = {r["layer"] for r in p if r["run"] == "noise_0" and r["metric"] == "cka" and r["layer"]}
    assert layers == {str(2 * i) for i in range(cfg.depth)}
    for r in p:
        assert math.isfinite(float(r["value"])), r
        if r["metric"] == "cka":
            assert -1e-12 <= float(r["value"]) <= 1 + 1e-12
    # stored spectra agree with the stored statistics (erank, T_k, mean, λ20/λ1)
    spec = defaultdict(list)
    for r in _table(tiny_run, "spectra"):
        spec[(r["run"], r["probe"], int(r["step"]))].append((int(r["index"]), float(r["value"])))
    stat = {(r["run"], r["probe"], int(r["step"]), r["metric"]): float(r["value"]) for r in p if not r["layer"]}
    r_rows = cfg.n_probe * 10
    n_checked = 0
    for (run, probe, step), pts in spec.items():
        lam = np.array([v for _, v in sorted(pts)])
        assert np.all(np.diff(lam) <= 1e-12 * lam[0])
        if run.startswith("disk"):
            assert stat[(run, probe, step, "ratio2")] == pytest.approx(lam[1] / lam[0], rel=1e-12)
            continue
        assert lam.size == r_rows
        mu = lam[lam > 0] / lam.sum()
        assert stat[(run, probe, step, "erank")] == pytest.approx(math.exp(-(mu * np.log(mu)).sum()), rel=1e-9)
        assert stat[(run, probe, step, "mean")] == pytest.approx(lam.mean(), rel=1e-9)
        for k in cfg.ks:
            assert stat[(run, probe, step, f"T{k}")] == pytest.approx(lam[:k].sum() / lam.sum(), rel=1e-9)
        # centering over examples leaves at least C = 10 zero eigenvalues
        assert np.all(lam[-10:] <= 1e-9 * lam[0])
        n_checked += 1
    assert n_checked == 2 * cfg.noise_seeds * 2 * len(sched)
    # disk eigenfunctions: orthonormal columns on the grid
    eig = defaultdict(dict)
    for r in _table(tiny_run, "eigenfunctions"):
        eig[int(r["step"])].setdefault(int(r["component"]), []).append((int(r["point"]), float(r["value"])))
    assert len(eig) == cfg.disk_snapshots and 0 in eig and cfg.disk_steps in eig
    for comps in eig.values():
        U = np.stack([np.array([v for _, v in sorted(c)]) for _, c in sorted(comps.items())], 1)
        assert U.shape == (cfg.disk_grid ** 2, cfg.disk_eigen)
        assert np.allclose(U.T @ U, np.eye(cfg.disk_eigen), atol=1e-9)
    # kernel PCA: pca_snapshots steps, coordinates whose squared norms are the top eigenvalues
    pca = defaultdict(list)
    for r in _table(tiny_run, "pca"):
        pca[(r["run"], r["probe"], int(r["step"]), int(r["component"]))].append(float(r["value"]))
    steps = {k[2] for k in pca if k[0] == "noise_0"}
    assert len(steps) == cfg.pca_snapshots
    for (run, probe, step, comp), v in pca.items():
        lam = sorted(spec[(run, probe, step)])[comp - 1][1]
        assert np.dot(v, v) == pytest.approx(lam, rel=1e-8)
    # training table: a minibatch loss every step, full-set metrics at every probe step
    t = _table(tiny_run, "training")
    losses = [r for r in t if r["run"] == "noise_0" and r["metric"] == "train_loss"]
    assert sorted(int(r["step"]) for r in losses) == list(range(cfg.train_steps))
    assert sorted(int(r["step"]) for r in t if r["run"] == "noise_0" and r["metric"] == "test_accuracy") == sched
    assert {r["metric"] for r in t if r["run"] == "hier_random"} >= {"easy_accuracy", "difficult_accuracy"}


def test_noise_labels_and_difficult_subsets(tiny_run):
    cfg = build_config(AlignmentConfig, preset="tiny")
    p = _table(tiny_run, "probes")
    # the random-label run fits its training probe worse at the end than the clean run
    acc = {r["run"]: float(r["value"]) for r in p if r["probe"] == "train" and r["metric"] == "accuracy"
           and int(r["step"]) == cfg.train_steps}
    assert set(acc) == {"noise_0", "noise_50", "noise_0_s1", "noise_50_s1"}
    assert {r["probe"] for r in p if r["run"].startswith("hier")} == {"easy", "difficult"}


def test_report_and_claims(tiny_run, capsys):
    page = (tiny_run / "report.html").read_text()
    for fig in ("fig1_eigenfunctions", "fig1_disk_metrics", "fig2_spectrum", "fig3_cka", "fig4_hierarchical",
                "kernel_pca", "training"):
        assert (tiny_run / "figures" / f"{fig}.png").is_file(), fig
    for text in ("Fig. 2: early erank drop", "Fig. 3: CKA with labels", "Fig. 4: easy vs difficult", "Fig. 1: λ20/λ1",
                 "Fig. 2: erank rebound", "Fig. 3: intermediate layers align most"):
        assert text in page, text
    assert main(["report", str(tiny_run)]) == 0
    out = capsys.readouterr().out
    assert "identities " in out and "Fig. 2: erank" in out


def test_tiny_claims_carry_criteria_kinds_and_intervals(tiny_run):
    with open(tiny_run / "tables" / "claims.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert rows and all(r["paper"] and r["criterion"] and r["kind"] in ("finding", "identity") for r in rows)
    topics = {r["topic"]: r for r in rows}
    for t in ("Fig. 1: λ20/λ1 drop (disk grid)", "Fig. 2: top-5 trace share (0% random labels)",
              "Fig. 2: train vs test spectra (0% random labels)", "Fig. 2: early erank drop (0% random labels)",
              "Fig. 3: test vs train CKA (50% random labels)", "Fig. 3: layer CKA > 0.5 (0% random labels)",
              "Fig. 4: easy vs difficult (random labels)", "Fig. 5: SuperNat (fixed κ) vs GD",
              "Fig. 5: SuperNat (trace κ) vs GD", "Distance to the limit at initialization"):
        assert t in topics, t
    # the tiny preset runs 2 seeds (3 SuperNat draws): findings measured on several seeds have an interval
    for t in ("Fig. 1: λ20/λ1 drop (disk grid)", "Fig. 2: train vs test spectra (0% random labels)",
              "Fig. 4: easy vs difficult (other dataset)", "Fig. 5: SuperNat (trace κ) vs GD",
              "Distance to the limit at initialization"):
        r = topics[t]
        assert r["kind"] == "finding" and float(r["low"]) <= float(r["value"]) <= float(r["high"]), t
    # the paper's numbers are in the criteria
    assert "≥ 5" in topics["Fig. 1: λ20/λ1 drop (disk grid)"]["criterion"]
    assert "> 0.7" in topics["Fig. 2: top-5 trace share (0% random labels)"]["criterion"]
    assert "40/1000" in topics["Fig. 2: top-5 trace share (0% random labels)"]["criterion"]
    assert topics["SuperNat bound term"]["kind"] == "identity"


def test_resume_after_kill(tmp_path, monkeypatch):
    sets = [*FAST, "items=1,2", "noise=0.5"]
    full = tmp_path / "full"
    run_study("alignment", preset="tiny", sets=sets, out=str(full), report=False)
    killed = tmp_path / "killed"
    calls = {"n": 0}
    real = al.Probe.evaluate

    def dying(self, model, step, vectors=True):
        calls["n"] += 1
        if calls["n"] == 12:  # in the middle of the noise run (the disk run probes twice per step)
            raise KeyboardInterrupt
        return real(self, model, step, vectors)

    monkeypatch.setattr(al.Probe, "evaluate", dying)
    with pytest.raises(KeyboardInterrupt):
        run_study("alignment", preset="tiny", sets=sets, out=str(killed), report=False)
    monkeypatch.setattr(al.Probe, "evaluate", real)
    assert "interrupted" in (killed / "state.json").read_text()
    # a torn last line, as if killed in the middle of a write
    with open(killed / "tables" / "training.csv", "a") as fh:
        fh.write("noise_50,99999,train_lo")
    partial = len(_table(killed, "probes"))
    assert 0 < partial < len(_table(full, "probes"))
    run_study("alignment", out=str(killed), resume=True, report=False)
    for name in ("probes", "training", "spectra", "eigenfunctions", "pca"):
        a, b = _table(full, name), _table(killed, name)
        assert len(a) == len(b), name
        key = [c for c in a[0] if c != "value"]
        va = {tuple(r[c] for c in key): float(r["value"]) for r in a}
        vb = {tuple(r[c] for c in key): float(r["value"]) for r in b}
        assert len(vb) == len(b)  # no duplicated rows
        assert va.keys() == vb.keys(), name
        for k, v in va.items():
            assert vb[k] == pytest.approx(v, rel=1e-9, abs=1e-12), (name, k)
    # a finished run resumed again does nothing more
    run_study("alignment", out=str(killed), resume=True, report=False)
    assert len(_table(killed, "probes")) == len(_table(full, "probes"))
    shutil.rmtree(tmp_path)


@pytest.mark.parametrize("sets, field", [
    (["dataset=imagenet"], "dataset"),
    (["items=2", "dataset=mnist"], "data_dir"),
    (["items=2,3", "dataset=cifar10", "data_dir=/nonexistent"], "data_dir"),
    (["hier_subset=300"], "hier_random_fraction"),
    (["n_probe=500"], "n_probe"),
    (["items=1,12"], "items"),
    (["centering=rows"], "centering"),
    (["model=resnet18"], "model"),
    (["width=0"], "width"),
    (["n_probe=10"], "ks"),
    (["items=7", "dataset=mnist", "data_dir=/tmp"], "dataset"),
    (["complexity_batch_size=2000"], "complexity_batch_size"),
    (["complexity_n_train=50"], "complexity_batch_size"),
    (["complexity_probe=0"], "complexity_probe"),
    (["complexity_momentum=1.5"], "complexity_momentum"),
    (["complexity_trace_every=0"], "complexity_trace_every"),
    (["complexity_noise_width=-1"], "complexity_noise_width"),
    (["supernat_kappas=fixed,huge"], "supernat_kappas"),
    (["supernat_lr=0"], "supernat_lr"),
    (["supernat_seeds=0"], "supernat_seeds"),
    (["supernat_records=1"], "supernat_records"),
])
def test_config_errors(sets, field):
    with pytest.raises(ConfigError) as e:
        build_config(AlignmentConfig, sets=sets)
    assert e.value.field == field
    assert "\n" not in str(e.value) and "accepted" in str(e.value)


def test_item_6_7_options_reach_the_modules():
    """The item-6/7 options are config fields (settable with --set) that the modules read."""
    from tangentlab.studies.alignment import complexity as AC
    from tangentlab.studies.alignment import supernat as SN

    cfg = build_config(AlignmentConfig, sets=["complexity_noise_width=64", "supernat_kappas=max",
                                              "complexity_widths=16,64,256"])
    assert AC.noise_width(cfg) == 64 and SN.methods(cfg) == ["gd", "supernat_max"]
    assert AC.noise_width(build_config(AlignmentConfig, sets=["complexity_widths=16,64"])) == 64
    assert AC.noise_width(build_config(AlignmentConfig)) == 256


def test_threads_setting_holds_in_every_item(tmp_path, monkeypatch):
    """``--set threads=1``: torch and the numpy BLAS pool run single-threaded in items 1-7,
    including item 7's small-model training (threads restored afterwards)."""
    from threadpoolctl import threadpool_info

    from tangentlab.studies.alignment import complexity as AC
    from tangentlab.studies.alignment import supernat as SN

    seen: list[tuple[str, int, list[int]]] = []

    def spy(name, fn):
        def wrapped(*a, **k):
            seen.append((name, torch.get_num_threads(),
                         [i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas"]))
            return fn(*a, **k)
        return wrapped

    monkeypatch.setattr(AC, "train_and_measure", spy("item 7", AC.train_and_measure))
    monkeypatch.setattr(SN, "run_method", spy("item 6", SN.run_method))
    monkeypatch.setattr(al.Probe, "evaluate", spy("probe", al.Probe.evaluate))
    before = torch.get_num_threads()
    sets = ["progress=off", "threads=1", "items=1,6,7", "disk_steps=5", "supernat_seeds=1", "supernat_steps=20",
            "complexity_widths=8", "complexity_noise=0.5", "complexity_max_epochs=1", "complexity_n_train=100",
            "complexity_batch_size=50", "complexity_probe=20"]
    run_study("alignment", preset="tiny", sets=sets, out=str(tmp_path / "run"), report=False)
    assert {n for n, _, _ in seen} == {"item 6", "item 7", "probe"}
    assert all(t == 1 and all(b == 1 for b in blas) for _, t, blas in seen), [s for s in seen if s[1:] != (1, [1])]
    assert torch.get_num_threads() == before


def test_gpu_presets_refused_without_gpu(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # runs on GPU machines too
    with pytest.raises(ConfigError, match="GPU|cuda"):
        build_config(AlignmentConfig, preset="paper-cifar", sets=[f"data_dir={tmp_path}"])


def test_plan_and_half_rise():
    default = build_config(AlignmentConfig)  # `tangentlab run alignment` as shipped
    assert default.items == (1, 2, 3, 4, 6, 7) and default.noise == (0.0, 0.5)
    seeds = [f"_s{s}" if s else "" for s in range(default.noise_seeds)]
    assert [r.name for r in plan_runs(default) if r.item == 2] == [f"noise_{p}{s}" for s in seeds for p in (0, 50)]
    assert [r.name for r in plan_runs(default) if r.item == 4] == [
        f"hier_{k}{s}" for s in [f"_s{s}" if s else "" for s in range(default.hier_seeds)] for k in ("random", "other")]
    assert [r.seed for r in plan_runs(default) if r.item == 2] == [
        default.seed + s for s in range(default.noise_seeds) for _ in (0, 1)]
    cfg = build_config(AlignmentConfig, sets=["items=2,4,5", "ablation_seeds=1", "noise_seeds=1", "hier_seeds=1"])
    names = [r.name for r in plan_runs(cfg)]
    assert names[:4] == ["noise_0", "noise_50", "hier_random", "hier_other"]
    assert {"depth_2_s0", "depth_8_s0", "lr_0.005_noise_0_s0", "lr_0.02_noise_50_s0"} <= set(names)
    s = np.array([0, 5, 10, 20])
    assert half_rise_step(s, np.array([0.1, 0.2, 0.5, 0.4])) == 10
    assert half_rise_step(s, np.array([0.3, 0.2, 0.1, 0.0])) == math.inf


def _fake_cifar(root, n_per_batch=20):
    import pickle

    rng = np.random.default_rng(0)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        d = {b"data": rng.integers(0, 256, size=(n_per_batch, 3072), dtype=np.uint8),
             b"labels": [int(v) for v in np.arange(n_per_batch) % 10]}
        with open(root / name, "wb") as fh:
            pickle.dump(d, fh)


def test_vgg_on_cifar_files(tmp_path):
    model = make_vgg("vgg11", 3, 10, width=4)
    assert model(torch.randn(2, 3, 32, 32, dtype=torch.float32)).shape == (2, 10)
    assert sum(isinstance(m, torch.nn.Conv2d) for m in make_vgg("vgg19", width=4)) == 16
    with pytest.raises(ConfigError) as e:
        build_config(AlignmentConfig, sets=["items=2", "model=vgg11"])
    assert e.value.field == "model"
    data = tmp_path / "cifar"
    data.mkdir()
    _fake_cifar(data)
    out = tmp_path / "run"
    sets = [*FAST, "items=2", "noise=0.5", "dataset=cifar10", f"data_dir={data}", "model=vgg11", "width=4",
            "n_probe=4", "batch_size=10", "train_steps=3", "ks=2,5", "schedule_base=2", "pca_snapshots=1"]
    run_study("alignment", sets=sets, out=str(out), report=False)
    p = _table(out, "probes")
    assert {int(r["step"]) for r in p} == {0, 3}
    layers = {r["layer"] for r in p if r["metric"] == "cka" and r["layer"]}
    assert len(layers) == 9  # 8 convolutions + the head
