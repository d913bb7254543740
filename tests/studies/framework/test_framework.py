"""The study machinery: typed configs, the run store (tidy tables, checkpoints, resume),
reports and the ``tangentlab run`` / ``tangentlab report`` commands.

A tiny *toy* study (registered only inside these tests) exercises the machinery in a
second or two; ``tests/studies/fim_quality/`` runs the real study."""

from __future__ import annotations

import csv
import io
import json
import math
import os
from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from tangentlab.cli import main
from tangentlab.studies import registry
from tangentlab.studies.fim_quality.config import FimQualityConfig
from tangentlab.studies.fim_quality.run import checkpoint_steps
from tangentlab.studies.framework.config import ConfigError, Preset, StudyConfig, build_config, option, parse_value
from tangentlab.studies.framework.data import load_digits_split
from tangentlab.studies.framework.models import make_cnn, make_mlp, make_resnet, weight_layers
from tangentlab.studies.framework.report import Claim, FigureSpec, ReportContent, TableSpec, claims_text
from tangentlab.studies.framework.runner import Study
from tangentlab.studies.framework.store import RunStore, Table, atomic_write_text, read_table
from tangentlab.training import BatchStream, rng_state, set_rng_state, train_step


def _one_error_line(capsys) -> str:
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert len(err) == 1, err
    return err[0]


# ---------------------------------------------------------------------------------------------
# configs
# ---------------------------------------------------------------------------------------------
@dataclass
class ToyConfig(StudyConfig):
    PRESETS: ClassVar[dict[str, Preset]] = {"short": Preset("a few steps", {"steps": 6, "every": 2})}

    steps: int = option(12, "training steps", min=1)
    every: int = option(4, "checkpoint every", min=1)
    lr: float = option(0.1, "learning rate", min=0.0, max=10.0)
    kinds: tuple[str, ...] = option(("a", "b"), "some names", choices=("a", "b", "c"))
    widths: tuple[int, ...] = option((4,), "hidden widths", min=1)
    flag: bool = option(False, "a switch")
    note: str | None = option(None, "optional text")

    def validate(self) -> None:
        if self.every > self.steps:
            raise self.error("every", f"{self.every} exceeds steps ({self.steps})", f"1..{self.steps}")


def test_config_layers_and_coercion(tmp_path):
    cfg = build_config(ToyConfig)
    assert (cfg.steps, cfg.kinds, cfg.flag, cfg.note) == (12, ("a", "b"), False, None)
    assert cfg.source("steps") == "default"

    cfg = build_config(ToyConfig, preset="short")
    assert (cfg.steps, cfg.every) == (6, 2) and cfg.source("steps") == "preset 'short'"

    toml = tmp_path / "c.toml"
    toml.write_text('preset = "short"\nlr = 0.5\nkinds = ["c"]\nwidths = [8, 8]\n')
    cfg = build_config(ToyConfig, toml=toml, sets=["lr=2e-1", "flag=yes", "note=hello", "kinds=a,c", "steps=1e1"])
    assert cfg.steps == 10 and cfg.every == 2  # preset from the file, steps from --set (1e1 -> 10)
    assert cfg.lr == pytest.approx(0.2) and cfg.source("lr") == "--set"
    assert cfg.widths == (8, 8) and cfg.source("widths") == f"file {toml}"
    assert cfg.kinds == ("a", "c") and cfg.flag is True and cfg.note == "hello"
    assert build_config(ToyConfig, sets=["note=none", "widths=3"]).note is None
    assert build_config(ToyConfig, sets=["widths=3"]).widths == (3,)
    assert build_config(ToyConfig, sets=[("lr", 1)]).lr == 1.0
    assert parse_value("[1, 2]") == [1, 2] and parse_value("abc") == "abc" and parse_value("true") is True
    # dashes in keys
    assert build_config(ToyConfig, sets=["steps=3", "every=1"]).steps == 3
    d = build_config(ToyConfig).to_dict()
    assert d["kinds"] == ["a", "b"] and json.loads(json.dumps(d)) == d


@pytest.mark.parametrize("kwargs, field, accepted", [
    ({"sets": ["kinds=a,z"]}, "kinds", "a, b, c"),
    ({"sets": ["lr=-1"]}, "lr", "between 0.0 and 10.0"),
    ({"sets": ["lr=abc"]}, "lr", None),
    ({"sets": ["steps=2.5"]}, "steps", None),
    ({"sets": ["flag=maybe"]}, "flag", None),
    ({"sets": ["stesp=3"]}, "stesp", "steps"),
    ({"sets": ["every=50"]}, "every", "1..12"),
    ({"sets": ["kinds=a,a"]}, "kinds", None),
    ({"sets": ["widths=0"]}, "widths", ">= 1"),
    ({"sets": ["device=tpu"]}, "device", "cpu, cuda, auto"),
    ({"sets": ["steps"]}, "steps", None),
    ({"preset": "huge"}, "preset", "short"),
])
def test_config_errors_are_one_line_naming_the_field(kwargs, field, accepted):
    with pytest.raises(ConfigError) as info:
        build_config(ToyConfig, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and f"config field {field!r}" in msg and info.value.field == field
    if accepted:
        assert "accepted:" in msg and accepted in msg


def test_config_toml_errors(tmp_path):
    with pytest.raises(ConfigError, match="no such file"):
        build_config(ToyConfig, toml=tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("steps = = 3\n")
    with pytest.raises(ConfigError, match="not valid TOML") as info:
        build_config(ToyConfig, toml=bad)
    assert "\n" not in str(info.value)
    other = tmp_path / "other.toml"
    other.write_text('study = "something-else"\n')
    with pytest.raises(ConfigError, match="is for study"):
        build_config(ToyConfig, toml=other, study="toy-test")
    table = tmp_path / "table.toml"
    table.write_text("[section]\nsteps = 3\n")
    with pytest.raises(ConfigError, match="tables are not config fields"):
        build_config(ToyConfig, toml=table)


def test_config_yaml_file(tmp_path):
    y = tmp_path / "c.yaml"
    y.write_text('preset: short\nlr: 0.5\nkinds: [c]\nwidths: [8, 8]\n')
    cfg = build_config(ToyConfig, toml=y, sets=["lr=2e-1"])
    assert (cfg.steps, cfg.every) == (6, 2) and cfg.lr == pytest.approx(0.2)
    assert cfg.kinds == ("c",) and cfg.widths == (8, 8) and cfg.source("widths") == f"file {y}"
    bad = tmp_path / "bad.yml"
    bad.write_text("steps: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML") as info:
        build_config(ToyConfig, toml=bad)
    assert "\n" not in str(info.value)
    seq = tmp_path / "seq.yaml"
    seq.write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="not a YAML mapping"):
        build_config(ToyConfig, toml=seq)


@pytest.mark.parametrize("sets, field, accepted", [
    (["dataset=mnist"], "dataset", "digits, tinyimagenet"),
    (["model=vgg"], "model", "mlp, cnn"),
    (["model=mlp"], "model", "mlp"),  # an MLP needs flat inputs: fine on digits, so this one passes
    (["n_probe=5000"], "n_probe", "1..1347"),
    (["checkpoints=9", "train_steps=5"], "checkpoints", "1..6"),
    (["dataset=tinyimagenet", "model=resnet18", "data_dir=/nonexistent/tiny-imagenet-200"], "data_dir",
     "tiny-imagenet-200 folder"),
    (["fisher_kinds=mc,empirical"], "fisher_kinds", "mc, exact"),
    (["representations=diag,kfcc"], "representations", "blockdiag"),
    (["spectrum_layer=7"], "spectrum_layer", "0, 2"),
    (["recompute_every=500"], "recompute_every", "1..200"),
    (["model=resnet50", "width=64", "reference=dense"], "reference", "implicit"),
])
def test_fim_quality_config_errors(sets, field, accepted):
    if sets == ["model=mlp"]:
        assert build_config(FimQualityConfig, sets=sets).model == "mlp"
        return
    with pytest.raises(ConfigError) as info:
        build_config(FimQualityConfig, sets=sets)
    msg = str(info.value)
    assert "\n" not in msg and f"config field {field!r}" in msg, msg
    assert accepted in msg, msg


def test_gpu_preset_on_a_cpu_machine(capsys):
    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    assert main(["run", "fim-quality", "--preset", "paper", "--out", "/nonexistent/never-created"]) == 2
    line = _one_error_line(capsys)
    assert "config field 'device' (from preset 'paper')" in line and "no CUDA device" in line
    assert "accepted: cpu, auto" in line
    assert not os.path.exists("/nonexistent/never-created")


def test_cli_config_errors_before_any_work(tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["run", "fim-quality", "--set", "dataset=mnist", "--out", str(out)]) == 2
    line = _one_error_line(capsys)
    assert line.startswith("tangentlab run: error: config field 'dataset' (from --set): unknown value 'mnist'")
    assert not out.exists()  # nothing was created
    assert main(["run", "fim-quality", "--set", "width=0", "--out", str(out)]) == 2
    assert "config field 'width'" in _one_error_line(capsys)
    assert main(["run", "fim-quality", "--preset", "nope", "--out", str(out)]) == 2
    assert "accepted: tiny, paper" in _one_error_line(capsys)
    assert main(["run", "fim-quality", "--preset", "tiny", "--show-config"]) == 0
    shown = capsys.readouterr().out
    assert "train_steps = 30  (preset 'tiny')" in shown and "presets:" in shown


# ---------------------------------------------------------------------------------------------
# store
# ---------------------------------------------------------------------------------------------
def test_table_appends_incrementally_and_skips_known_keys(tmp_path):
    path = tmp_path / "t.csv"
    t = Table(path, ["step", "metric", "value"], ["step", "metric"])
    assert read_table(path) == []
    assert t.append([{"step": 0, "metric": "loss", "value": 1.5}, {"step": 0, "metric": "acc", "value": 0.25}]) == 2
    assert len(read_table(path)) == 2  # on disk after each append
    # the same keys again (a resumed run recomputing a step) are skipped, new ones written
    assert t.append([{"step": 0, "metric": "loss", "value": 9.0}, {"step": 1, "metric": "loss", "value": 1.0}]) == 1
    assert t.append([{"step": 2, "metric": "loss", "value": 0.5}, {"step": 2, "metric": "loss", "value": 0.7}]) == 1
    rows = read_table(path)
    assert [(r["step"], r["metric"], r["value"]) for r in rows] == [
        ("0", "loss", "1.5"), ("0", "acc", "0.25"), ("1", "loss", "1.0"), ("2", "loss", "0.5")]
    # reopening loads the keys
    t2 = Table(path, ["step", "metric", "value"], ["step", "metric"])
    assert len(t2) == 4 and t2.append([{"step": 1, "metric": "loss", "value": 3.0}]) == 0
    # floats round-trip exactly; None is an empty cell; nan/inf survive
    t2.append([{"step": 3, "metric": "x", "value": 0.1 + 0.2}, {"step": 4, "metric": "x", "value": None},
               {"step": 5, "metric": "x", "value": math.inf}])
    vals = {r["step"]: r["value"] for r in read_table(path)}
    assert float(vals["3"]) == 0.1 + 0.2 and vals["4"] == "" and vals["5"] == "inf"
    with pytest.raises(Exception, match="unknown columns"):
        t2.append([{"step": 9, "metric": "x", "value": 1, "extra": 2}])
    with pytest.raises(Exception, match="has columns"):
        Table(path, ["step", "metric", "val"], ["step", "metric"])
    assert sorted(p.name for p in tmp_path.iterdir()) == [".t.csv.lock", "t.csv"]  # no temporary files left


def test_table_repairs_a_torn_last_line(tmp_path):
    path = tmp_path / "t.csv"
    t = Table(path, ["step", "value"], ["step"])
    t.append([{"step": i, "value": float(i)} for i in range(3)])
    with open(path, "a") as fh:  # a run killed in the middle of a write
        fh.write("3,3.0000")
    assert [r["step"] for r in read_table(path)] == ["0", "1", "2"]  # readers skip it
    t = Table(path, ["step", "value"], ["step"])
    assert len(t) == 3 and path.read_text().endswith("2,2.0\n")
    assert t.append([{"step": 3, "value": 3.0}]) == 1
    assert [r["value"] for r in read_table(path)][-1] == "3.0"


def test_run_store_checkpoints_and_layout(tmp_path):
    run = tmp_path / "run"
    store = RunStore.create(run, {"study": "x", "config": {}})
    assert {p.name for p in run.iterdir()} == {"config.json", "state.json", "tables", "checkpoints", "figures"}
    assert store.state["status"] == "running"
    assert store.load_checkpoint("train") is None
    model = torch.nn.Linear(3, 2)
    for step in (0, 5, 10):
        store.save_checkpoint("train", step, {"model": model.state_dict(), "rng": rng_state()}, keep=2)
    assert [s for s, _ in store.checkpoints("train")] == [5, 10]
    ck = store.load_checkpoint("train")
    assert ck["step"] == 10 and torch.equal(ck["model"]["weight"], model.weight.detach())
    set_rng_state(ck["rng"])
    with pytest.raises(Exception, match="already holds a run"):
        RunStore.create(run, {"study": "x"})
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "f").write_text("x")
    with pytest.raises(Exception, match="not empty"):
        RunStore.create(tmp_path / "busy", {})
    with pytest.raises(Exception, match="not a run directory"):
        RunStore.open(tmp_path / "busy")
    st = store.end_session("finished")
    assert st["status"] == "finished" and st["elapsed_s"] >= 0 and 0 <= st["cpu_s"]
    atomic_write_text(run / "x.txt", "hello")
    assert (run / "x.txt").read_text() == "hello"
    assert not [p for p in run.iterdir() if p.name.endswith(".tmp")]


def test_batch_stream_matches_the_classic_loop_and_resumes():
    n, b = 10, 4
    gen = torch.Generator().manual_seed(3)
    classic = []
    for _ in range(3):
        perm = torch.randperm(n, generator=gen)
        classic += [perm[i:i + b] for i in range(0, n, b)]
    s = BatchStream(n, b, 3)
    got = [s.next() for _ in range(4)]
    state = s.state_dict()
    got += [s.next() for _ in range(5)]
    assert all(torch.equal(a, c) for a, c in zip(got, classic))
    s2 = BatchStream(n, b, 0)
    s2.load_state_dict(state)
    assert all(torch.equal(s2.next(), c) for c in classic[4:9])


def test_models_and_data():
    split = load_digits_split(0, "image")
    assert split.x_train.shape == (1347, 1, 8, 8) and split.input_shape == (1, 8, 8) and split.n_classes == 10
    cnn = make_cnn(width=8)
    assert sum(p.numel() for p in cnn.parameters()) == 1954 and weight_layers(cnn) == ["0", "2", "6"]
    assert cnn(split.x_train[:3]).shape == (3, 10)
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in cnn.modules())
    mlp = make_mlp(64, (16, 16), 10, "sigmoid")
    assert isinstance(mlp[1], torch.nn.Sigmoid) and weight_layers(mlp) == ["0", "2", "4"]
    with torch.device("meta"):
        r50 = make_resnet(50, 3, 200, 64)
    assert 23e6 < sum(p.numel() for p in r50.parameters()) < 25e6  # the thesis' "24M parameters"
    r18 = make_resnet(18, 1, 10, 4)
    assert r18(split.x_train[:2]).shape == (2, 10)
    assert checkpoint_steps(600, 4) == [0, 24, 120, 600]
    assert checkpoint_steps(30, 2) == [0, 30] and checkpoint_steps(5, 6) == [0, 1, 2, 3, 4, 5]
    assert checkpoint_steps(0, 1) == [0] and checkpoint_steps(100, 1) == [0]


def test_tinyimagenet_folder_loader(tmp_path):
    from PIL import Image

    from tangentlab.studies.framework.data import load_tinyimagenet_split

    root = tmp_path / "tiny-imagenet-200"
    wnids = ["n01", "n02"]
    (root / "val" / "images").mkdir(parents=True)
    (root / "wnids.txt").write_text("\n".join(wnids) + "\n")
    ann = []
    for k, w in enumerate(wnids):
        d = root / "train" / w / "images"
        d.mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", (64, 64), (40 * k + i, 10, 200)).save(d / f"{w}_{i}.JPEG")
        Image.new("L", (64, 64), 90 + k).save(root / "val" / "images" / f"val_{k}.JPEG")  # greyscale -> RGB
        ann.append(f"val_{k}.JPEG\t{w}\t0\t0\t63\t63")
    (root / "val" / "val_annotations.txt").write_text("\n".join(ann) + "\n")
    split = load_tinyimagenet_split(str(root), max_per_class=2)
    assert split.x_train.shape == (4, 3, 64, 64) and split.x_test.shape == (2, 3, 64, 64)
    assert split.y_train.tolist() == [0, 0, 1, 1] and split.y_test.tolist() == [0, 1]
    cfg = build_config(FimQualityConfig, sets=["dataset=tinyimagenet", f"data_dir={root}", "model=resnet18",
                                                "reference=implicit", "n_probe=4", "batch_size=2", "width=4"])
    assert cfg.dataset == "tinyimagenet"


# ---------------------------------------------------------------------------------------------
# a toy study: resume after a simulated kill, reports
# ---------------------------------------------------------------------------------------------
FAIL = {"at": None}


class Toy(Study):
    name = "toy-test"
    title = "Toy study (tests)"
    config_class = ToyConfig

    def run(self) -> None:
        cfg, store = self.config, self.store
        split = load_digits_split(0, "flat")
        torch.manual_seed(cfg.seed)
        model = make_mlp(64, cfg.widths, 10, "tanh", torch.float64)
        opt = torch.optim.SGD(model.parameters(), lr=cfg.lr, momentum=0.9)
        stream = BatchStream(split.x_train.shape[0], 32, cfg.seed)
        table = store.table("steps", ["step", "metric", "value"], ["step", "metric"])
        start = 0
        ck = store.load_checkpoint("toy")
        if ck is not None:
            model.load_state_dict(ck["model"])
            opt.load_state_dict(ck["optimizer"])
            stream.load_state_dict(ck["stream"])
            set_rng_state(ck["rng"])
            start = ck["step"]
        x, y = split.x_train.double(), split.y_train
        for step in range(start, cfg.steps):
            if step % cfg.every == 0 and step > start:
                store.save_checkpoint("toy", step, {"model": model.state_dict(), "optimizer": opt.state_dict(),
                                                    "stream": stream.state_dict(), "rng": rng_state()})
            if FAIL["at"] == step:
                FAIL["at"] = None
                raise RuntimeError("simulated kill")
            idx = stream.next()
            loss = train_step(model, opt, x[idx], y[idx])
            noise = float(torch.rand(()))  # the global RNG is restored on resume too
            table.append([{"step": step, "metric": "loss", "value": loss},
                          {"step": step, "metric": "noise", "value": noise}])

    def report(self) -> ReportContent:
        rows = self.store.read("steps")
        losses = [(int(r["step"]), float(r["value"])) for r in rows if r["metric"] == "loss"]

        def draw(fig):
            ax = fig.subplots()
            ax.plot(*zip(*losses))

        return ReportContent(
            title="Toy study", summary=["A toy."],
            claims=[Claim("loss", "training lowers the loss", f"{losses[0][1]:.3f} -> {losses[-1][1]:.3f}",
                          losses[-1][1] < losses[0][1])],
            figures=[FigureSpec("loss", "Loss", "minibatch loss", draw)],
            tables=[TableSpec("steps", ["step", "metric", "value"], rows, max_rows=5)])


@pytest.fixture
def toy(monkeypatch):
    monkeypatch.setitem(registry.STUDIES, Toy.name, Toy)
    FAIL["at"] = None
    yield Toy
    FAIL["at"] = None


def _rows(run_dir, name="steps"):
    return [tuple(r.values()) for r in read_table(os.path.join(run_dir, "tables", f"{name}.csv"))]


def test_resume_after_a_kill_neither_loses_nor_duplicates_rows(toy, tmp_path, capsys):
    full = tmp_path / "full"
    assert main(["run", "toy-test", "--out", str(full), "--set", "steps=14", "--set", "every=4"]) == 0
    reference = _rows(full)
    assert len(reference) == 2 * 14

    run = tmp_path / "killed"
    FAIL["at"] = 10  # after the checkpoint of step 8: steps 8 and 9 will be recomputed
    with pytest.raises(RuntimeError, match="simulated kill"):
        main(["run", "toy-test", "--out", str(run), "--set", "steps=14", "--set", "every=4"])
    partial = _rows(run)
    assert partial == reference[: 2 * 10]  # rows were written incrementally, up to the kill
    assert json.loads((run / "state.json").read_text())["status"] == "failed"
    assert not (run / "report.html").exists()
    capsys.readouterr()

    # a resumed run may not change the configuration (except progress / threads)
    assert main(["run", "toy-test", "--out", str(run), "--resume", "--set", "steps=20"]) == 2
    line = _one_error_line(capsys)
    assert "config field 'steps' (from --set)" in line and "differs from the stored run" in line
    assert main(["run", "toy-test", "--out", str(run), "--resume", "--set", "progress=off"]) == 0
    assert _rows(run) == reference  # same rows, same values, no duplicates
    state = json.loads((run / "state.json").read_text())
    assert state["status"] == "finished" and [s["status"] for s in state["sessions"]] == ["failed", "finished"]
    assert (run / "report.html").exists()
    # without --resume the directory is refused
    assert main(["run", "toy-test", "--out", str(run)]) == 2
    assert "pass --resume" in _one_error_line(capsys)
    # resuming a finished run only regenerates the report
    assert main(["run", "toy-test", "--out", str(run), "--resume"]) == 0
    assert "had finished" in capsys.readouterr().out and _rows(run) == reference


def test_resume_reuses_the_stored_config_with_preset_and_set_overrides(toy, tmp_path, capsys):
    """``--preset P --set k=v`` then ``--resume --set progress=off``: the stored config (with
    its own --set overrides) is reused, not rebuilt from the preset (was: spurious "differs")."""
    full = tmp_path / "full"
    assert main(["run", "toy-test", "--preset", "short", "--set", "steps=10", "--out", str(full)]) == 0
    reference = _rows(full)
    assert len(reference) == 2 * 10

    run = tmp_path / "killed"
    FAIL["at"] = 5
    with pytest.raises(RuntimeError, match="simulated kill"):
        main(["run", "toy-test", "--preset", "short", "--set", "steps=10", "--out", str(run)])
    capsys.readouterr()
    # the stored preset sets steps=6 but the run's --set said 10: no complaint about 'steps'
    assert main(["run", "toy-test", "--resume", "--out", str(run), "--set", "progress=off",
                 "--set", "threads=1"]) == 0
    assert _rows(run) == reference
    stored = json.loads((run / "config.json").read_text())
    assert stored["preset"] == "short" and stored["config"]["steps"] == 10
    capsys.readouterr()
    # the same preset and an unchanged value are accepted; another preset or a changed value is not
    assert main(["run", "toy-test", "--resume", "--out", str(run), "--preset", "short", "--set", "steps=10"]) == 0
    capsys.readouterr()
    assert main(["run", "toy-test", "--resume", "--out", str(run), "--preset", "nope"]) == 2
    line = _one_error_line(capsys)
    assert "config field 'preset'" in line and "'short'" in line
    assert main(["run", "toy-test", "--resume", "--out", str(run), "--set", "every=3"]) == 2
    line = _one_error_line(capsys)
    assert "config field 'every' (from --set)" in line and "differs from the stored run" in line


def test_report_command_regenerates_from_tables(toy, tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["run", "toy-test", "--preset", "short", "--out", str(run)]) == 0
    out = capsys.readouterr().out
    assert "paper says" in out and "findings 1/1 held; identities 0/0 held" in out
    assert out.rstrip().splitlines()[-1].endswith("findings 1/1 held; identities 0/0 held")
    claims_rows = list(csv.DictReader(open(run / "tables" / "claims.csv", newline="")))
    assert [(r["study"], r["kind"], r["verdict"]) for r in claims_rows] == [("toy-test", "finding", "yes")]
    html_file = run / "report.html"
    html_file.unlink()
    (run / "figures" / "loss.png").unlink()
    assert main(["report", str(run)]) == 0
    out = capsys.readouterr().out
    assert "training lowers the loss" in out and "report:" in out
    page = html_file.read_text()
    for needle in ("Toy study", "the paper says", "measured here", "data:image/png;base64,", "figures/loss.png",
                   "tables/steps.csv", "First 5 of 12 rows", "&quot;steps&quot;: 6"):
        assert needle in page, needle
    assert (run / "figures" / "loss.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert json.loads((run / "config.json").read_text())["preset"] == "short"
    # not a run directory: one line, exit 2
    assert main(["report", str(tmp_path)]) == 2
    assert "not a run directory" in _one_error_line(capsys)


def test_claims_text_and_csv_helpers():
    text = claims_text([Claim("a", "x" * 80, "y", True), Claim("b", "p", "m", False), Claim("c", "p", "m", None)])
    assert "findings 1/3 held, 1 did not, 1 n/a; identities 0/0 held" in text and "[NO] b" in text
    buf = io.StringIO("a,b\n1,2\n")
    assert list(csv.DictReader(buf)) == [{"a": "1", "b": "2"}]
