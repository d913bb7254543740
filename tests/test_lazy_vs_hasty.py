"""``lazy-vs-hasty``: quadratic-model closed forms vs numerical gradient flow, the data helpers,
configuration errors, and a tiny end-to-end run with resume after a kill."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from tangentlab.cli import main
from tangentlab.studies.framework.config import ConfigError, build_config
from tangentlab.studies.framework.store import read_table
from tangentlab.studies.lazy_vs_hasty import study as lazy_vs_hasty
from tangentlab.studies.lazy_vs_hasty.data import (
    estimate_cscores,
    flip_labels,
    quantile_bins,
    read_celeba,
    read_waterbirds,
    spurious_digits,
    spurious_images,
    yin_yang,
    yin_yang_regions,
)
from tangentlab.studies.lazy_vs_hasty.quadratic import (
    QuadraticModel,
    example1,
    example2,
    example3,
    first_time_below,
    half_error_times,
    two_layer_dynamics,
    two_layer_torch_step,
)
from tangentlab.studies.lazy_vs_hasty.study import LazyVsHastyConfig, gap_comparison


@pytest.mark.parametrize("make", [lambda: example1(), lambda: example2(d=30, seed=1),
                                  lambda: example3(d=30, seed=2)])
def test_quadratic_closed_forms_match_numerical_gradient_flow(make):
    ex = make()
    m = ex.model
    scale = np.abs(m.theta_star).max()
    for regime, T in (("nonlinear", ex.t_nonlinear), ("linear", ex.t_linear)):
        t = np.linspace(0, T, 40)
        closed = m.theta(t, regime)
        assert np.abs(closed - m.simulate(t, regime)).max() / scale < 1e-8
        # sanity: the thesis' printed linear rate (μθ⁰ instead of 2μθ⁰) is far off
        if regime == "linear":
            wrong = m.theta_star + np.exp(-m.mu * m.theta0 * t[:, None]) * (m.theta0 - m.theta_star)
            assert np.abs(wrong - closed).max() / scale > 1e-2
    # plain gradient descent on w converges to the flow as the step shrinks (error O(lr))
    T = 0.5 * ex.t_nonlinear
    errs = [np.abs(m.gradient_descent(k, T / k, "nonlinear")[-1] - m.theta([T], "nonlinear")[0]).max()
            for k in (200, 2000)]
    assert errs[1] < errs[0] / 5


def test_quadratic_closed_form_special_cases():
    X = np.array([[2.0, 0.0], [0.0, 1.0]])
    m = QuadraticModel(X, np.array([0.0, 1.0]), sigma=0.1)  # mode with y_λ = 0: θ⁰/(1 + 2μθ⁰t)
    t = np.array([0.0, 1.0, 3.0])
    i = int(np.argmax(m.mu))  # the μ = 4 mode carries no label
    np.testing.assert_allclose(m.theta_nonlinear(t)[:, i], 0.05 / (1 + 2 * 4 * 0.05 * t), rtol=1e-14)
    np.testing.assert_allclose(m.theta_nonlinear(t)[:, i], m.simulate(t, "nonlinear")[:, i], rtol=1e-9, atol=1e-12)
    # labels fitted at t → ∞, both regimes; flipped signs make y_λ ≥ 0
    assert (m.y_lam >= 0).all()
    np.testing.assert_allclose(m.outputs(m.theta_nonlinear([1e4]))[0], [0.0, 1.0], atol=1e-3)
    np.testing.assert_allclose(m.outputs(m.theta_linear([1e5]))[0], [0.0, 1.0], atol=1e-6)


def test_quadratic_examples_predicted_orderings():
    ex = example1()
    for regime, order in (("nonlinear", [4, 3, 2, 1, 0]), ("linear", [0, 1, 2, 3, 4])):
        t = np.linspace(0, 20 * (ex.t_nonlinear if regime == "nonlinear" else ex.t_linear), 4000)
        assert list(np.argsort(half_error_times(t, ex.model.sq_errors(t, regime)))) == order
    for make, easy, hard in ((example2, "clean", "noisy"), (example3, "majority", "minority")):
        gaps = []
        for seed in range(3):
            e = make(d=30, seed=seed)
            vals = []
            for regime, T in (("nonlinear", 20.0), ("linear", 2000.0)):
                t = np.concatenate([[0], np.geomspace(T * 1e-6, T, 3000)])
                se = e.model.sq_errors(t, regime)
                i = first_time_below(t, se[:, e.groups[easy]].mean(1), 0.3)
                vals.append(se[i, e.groups[hard]].mean())
            gaps.append(vals[0] - vals[1])
        assert np.mean(gaps) > 0.1, (make.__name__, gaps)


def test_two_layer_numpy_gradients_match_alpha_scaled_autograd():
    ex = example3(d=25, seed=0)
    for alpha in (0.1, 10.0):
        np.testing.assert_allclose(two_layer_dynamics(ex.model.X, ex.model.y, alpha, 1, 1e-3, seed=3)[1],
                                   two_layer_torch_step(ex.model.X, ex.model.y, alpha, 1e-3, seed=3), rtol=1e-10)


def test_data_helpers():
    y = torch.arange(50) % 10
    yn, mask = flip_labels(y, 0.2, 10, seed=0)
    assert int(mask.sum()) == 10 and bool((yn[mask] != y[mask]).all()) and bool((yn[~mask] == y[~mask]).all())
    x, lab = yin_yang(500, seed=0)
    xn = x.numpy()
    expected = np.where(xn[:, 1] <= 0, 1, 0)
    inside = np.hypot(xn[:, 0] - 0.5, xn[:, 1] + 0.5) < 0.3
    expected[inside] = 1 - expected[inside]
    inside2 = np.hypot(xn[:, 0] + 0.5, xn[:, 1] - 0.5) < 0.3
    expected[inside2] = 1 - expected[inside2]
    assert (lab.numpy() == expected).all()
    reg = yin_yang_regions(xn)
    assert not (reg["easy"] & reg["disks"]).any() and reg["disks"].sum() > 0
    bins = quantile_bins(np.array([0.5, 0.1, 0.1, 0.9, 0.3, 0.7]), np.array([0, 0.2, 0.1, 0, 0, 0]), 3)
    assert bins.tolist() == [1, 0, 0, 2, 1, 2]
    d = spurious_digits(0, agree=0.9)
    assert abs(float(d.agree_train.double().mean()) - 0.9) < 1e-2
    assert abs(float(d.agree_test.double().mean()) - 0.5) < 1e-2
    bal = d.agree_train[d.balanced_train]
    assert int(bal.sum()) == int((~bal).sum())
    patch = d.x_train[:, 0]  # the top-left pixel is the patch: present iff (label == 1) == agree
    present = patch > patch.mean()
    assert bool((present == ((d.y_train == 1) == d.agree_train)).all())


def test_cscores_by_definition_flag_the_mislabeled_point():
    rng = np.random.default_rng(0)
    x = np.concatenate([rng.normal(-3, 0.5, (30, 2)), rng.normal(3, 0.5, (30, 2))])
    y = np.array([0] * 30 + [1] * 30)
    y[0] = 1  # a point of cluster 0 labelled 1: models trained without it predict 0
    score, soft = estimate_cscores(x, y, (0.5, 0.7), 6, seed=0, C=1.0, show=False)
    assert score[0] == 0.0 and soft[0] < 0.2
    assert score[1:].min() == 1.0


def test_config_errors_name_the_field(monkeypatch):
    with pytest.raises(ConfigError, match="'parts'.*accepted: toy, cscores"):
        build_config(LazyVsHastyConfig, sets=["parts=toy,nope"])
    with pytest.raises(ConfigError, match="'mlp_alphas'"):
        build_config(LazyVsHastyConfig, sets=["mlp_alphas=10,0.1"])
    with pytest.raises(ConfigError, match="'data_dir'.*cifar10"):
        build_config(LazyVsHastyConfig, sets=["dataset=cifar10", "device=cpu"])
    with pytest.raises(ConfigError, match="'data_dir'.*metadata.csv"):
        build_config(LazyVsHastyConfig, sets=["spurious_dataset=waterbirds", "data_dir=/nonexistent"])
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # checked on GPU machines too
    with pytest.raises(ConfigError, match="'device'.*needs a GPU"):
        build_config(LazyVsHastyConfig, preset="paper")


def test_gap_comparison_at_equal_progress():
    nl = [{"train/loss": 1.0, "e": 1.0, "h": 1.0}, {"train/loss": 0.5, "e": 0.2, "h": 1.2},
          {"train/loss": 0.2, "e": 0.05, "h": 0.6}]
    lin = [{"train/loss": 1.0, "e": 1.0, "h": 1.0}, {"train/loss": 0.45, "e": 0.4, "h": 0.5},
           {"train/loss": 0.25, "e": 0.2, "h": 0.3}]
    rows = gap_comparison(nl, lin, "train/loss", "e", "h", n=3)
    assert rows[0]["threshold"] > rows[-1]["threshold"]
    assert all(r["gap_nl"] > r["gap_lin"] for r in rows)
    assert rows[-1]["gap_nl"] == pytest.approx(0.55) and rows[-1]["gap_lin"] == pytest.approx(0.1)


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
    for name in ("curves", "toy_maps", "milestones", "cscores", "quadratic", "quadratic_checks", "units"):
        assert (tiny_run / "tables" / f"{name}.csv").exists(), name
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
def test_resume_after_a_kill_matches_an_uninterrupted_run(tiny_run, tmp_path, monkeypatch):
    original = lazy_vs_hasty.LazyVsHasty._train_regime
    calls = {"n": 0}

    def failing(self, *a, **k):
        calls["n"] += 1
        if calls["n"] == 3:
            raise KeyboardInterrupt
        return original(self, *a, **k)

    out = tmp_path / "killed"
    monkeypatch.setattr(lazy_vs_hasty.LazyVsHasty, "_train_regime", failing)
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
WB_SIZES = {0: (10, 2, 2, 10), 1: (1, 1, 1, 1), 2: (3, 3, 3, 3)}  # split -> groups (y, place) = 00, 01, 10, 11


def _color(i: int) -> tuple[int, int, int]:
    return (20 + 7 * i % 200, 200 - 5 * i % 180, 60 + 11 * i % 190)


def _fake_waterbirds(root):
    """``waterbird_complete95_forest2water2/metadata.csv`` + uniform-colour JPEGs of varied sizes."""
    from PIL import Image

    d = root / "waterbird_complete95_forest2water2"
    rows, i = [], 0
    for split, sizes in WB_SIZES.items():
        for g, n in enumerate(sizes):
            for _ in range(n):
                rel = f"{1 + g // 2:03d}.Bird_{g // 2}/img_{i}.jpg"
                (d / rel).parent.mkdir(parents=True, exist_ok=True)
                Image.new("RGB", (12 + i % 5, 10 + i % 3), _color(i)).save(d / rel, quality=95)
                rows.append(f"{i + 1},{rel},{g // 2},{split},{g % 2}")
                i += 1
    (d / "metadata.csv").write_text("img_id,img_filename,y,split,place\n" + "\n".join(rows) + "\n")
    return rows


def _fake_celeba(root, n=40):
    """``celeba/list_attr_celeba.txt``, ``list_eval_partition.txt`` and ``img_align_celeba/*.jpg``
    (12x16 portrait images whose top/bottom 2 rows are red, cut off by the centre crop)."""
    from PIL import Image

    d = root / "celeba"
    (d / "img_align_celeba").mkdir(parents=True)
    rng = np.random.default_rng(0)
    blond, male = rng.integers(0, 2, n), rng.integers(0, 2, n)
    split = np.array([0, 0, 0, 1, 2])[np.arange(n) % 5]
    names = ["5_o_Clock_Shadow", "Blond_Hair", "Male", "Young"]
    lines = [str(n), " ".join(names)]
    for i in range(n):
        f = f"{i + 1:06d}.jpg"
        im = Image.new("RGB", (12, 16), _color(i))
        im.paste((255, 0, 0), (0, 0, 12, 2))
        im.paste((255, 0, 0), (0, 14, 12, 16))
        im.save(d / "img_align_celeba" / f, quality=95)
        vals = [1, 2 * blond[i] - 1, 2 * male[i] - 1, -1]
        lines.append(f + "  " + " ".join(f"{v:2d}" for v in vals))
    (d / "list_attr_celeba.txt").write_text("\n".join(lines) + "\n")
    (d / "list_eval_partition.txt").write_text("".join(f"{i + 1:06d}.jpg {split[i]}\n" for i in range(n)))
    return blond, male, split


def test_waterbirds_loader_on_fake_files(tmp_path):
    _fake_waterbirds(tmp_path)
    table = read_waterbirds(tmp_path)
    assert len(table.files) == 40 and table.files[0].is_file()
    for split, sizes in WB_SIZES.items():
        assert np.bincount(table.group[table.split == split], minlength=4).tolist() == list(sizes)
    data, _, tr, te = spurious_images("waterbirds", tmp_path, seed=0, image_size=8, balanced_per_group=2)
    assert data.x_train.shape == (24, 3, 8, 8) and data.x_test.shape == (8, 3, 8, 8)
    assert data.x_train.dtype == torch.float64
    assert (table.split[tr] == 0).all() and (table.split[te] == 2).all()
    assert (data.y_train.numpy() == table.y[tr]).all() and (data.y_test.numpy() == table.y[te]).all()
    # with spurious = bird type matches the background
    assert (data.agree_train.numpy() == (table.y[tr] == table.spurious[tr])).all()
    assert np.bincount(table.group[te], minlength=4).tolist() == [2, 2, 2, 2]
    assert np.bincount(table.group[tr][data.balanced_train.numpy()], minlength=4).tolist() == [2, 2, 2, 2]
    # per-channel standardization with the training statistics
    xtr = data.x_train.numpy()
    np.testing.assert_allclose(xtr.mean((0, 2, 3)), 0, atol=1e-6)
    np.testing.assert_allclose(xtr.std((0, 2, 3)), 1, atol=1e-6)
    # pixels: the uniform colour of each image (up to JPEG rounding), standardized over the training images
    raw = np.stack([[_color(int(i))[c] / 255 for c in range(3)] for i in tr])
    np.testing.assert_allclose(xtr, ((raw - raw.mean(0)) / raw.std(0))[:, :, None, None] + 0 * xtr, atol=0.1)
    capped, _, tr2, _ = spurious_images("waterbirds", tmp_path, seed=0, image_size=8, max_per_group=3)
    assert np.bincount(table.group[tr2], minlength=4).tolist() == [3, 2, 2, 3]
    assert list(tr2) == sorted(tr2) and capped.x_train.shape[0] == 10


def test_celeba_loader_on_fake_files(tmp_path):
    blond, male, split = _fake_celeba(tmp_path)
    table = read_celeba(tmp_path)
    assert (table.y == blond).all() and (table.spurious == male).all() and (table.split == split).all()
    data, _, tr, te = spurious_images("celeba", tmp_path, seed=1, image_size=4, balanced_per_group=100,
                                      dtype=torch.float32)
    assert data.x_train.shape == (int((split == 0).sum()), 3, 4, 4) and data.x_train.dtype == torch.float32
    assert sorted(te.tolist()) == np.flatnonzero(split == 2).tolist()  # fewer than 100 per group: all of them
    assert (data.agree_train.numpy() == (male[tr] == 0)).all()  # with spurious = women
    assert (data.y_test.numpy() == blond[te]).all()
    # the red top/bottom rows are cut by the centre crop: every image is uniform after resizing
    x = data.x_train.numpy()
    assert np.abs(x - x[:, :, :1, :1]).max() < 0.2 * np.abs(x).max()
    first, _, tr3, _ = spurious_images("celeba", tmp_path, seed=1, image_size=4, max_train=5)
    assert tr3.tolist() == np.flatnonzero(split == 0)[:5].tolist() and first.x_train.shape[0] == 5


def test_spurious_files_missing_or_invalid(tmp_path):
    with pytest.raises(ConfigError, match="'data_dir'.*metadata.csv"):
        read_waterbirds(tmp_path)
    rows = _fake_waterbirds(tmp_path)
    img = tmp_path / "waterbird_complete95_forest2water2" / rows[5].split(",")[1]
    img.unlink()
    with pytest.raises(ConfigError, match=f"'data_dir'.*{img.name}.*no such image"):
        spurious_images("waterbirds", tmp_path, seed=0, image_size=8)
    (tmp_path / "waterbird_complete95_forest2water2" / "metadata.csv").write_text("img_id,y\n1,0\n")
    with pytest.raises(ConfigError, match="'data_dir'.*img_filename"):
        build_config(LazyVsHastyConfig, sets=["spurious_dataset=waterbirds", f"data_dir={tmp_path}"])
    cel = tmp_path / "c"
    _fake_celeba(cel)
    (cel / "celeba" / "list_eval_partition.txt").unlink()
    with pytest.raises(ConfigError, match="'data_dir'.*list_eval_partition.txt"):
        build_config(LazyVsHastyConfig, sets=["spurious_dataset=celeba", f"data_dir={cel}"])
    with pytest.raises(ConfigError, match="'model'"):
        build_config(LazyVsHastyConfig, sets=["model=resnet18", "parts=spurious"])


@pytest.mark.parametrize("name, model", [("waterbirds", "mlp"), ("celeba", "resnet18")])
def test_spurious_part_end_to_end_on_fake_files(tmp_path, name, model):
    (_fake_waterbirds if name == "waterbirds" else _fake_celeba)(tmp_path)
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
