"""Datasets of the alignment studies: synthetic tasks, label manipulations, file readers."""

from __future__ import annotations

import gzip
import math
import pickle
import struct

import numpy as np
import pytest
import torch

from tangentlab.studies.framework import datasets as D
from tangentlab.studies.framework.config import ConfigError
from tangentlab.studies.framework.data import ALL_DATASETS, DATASETS, check_dataset, load_dataset


# --------------------------------------------------------------------------- synthetic tasks
def test_disk_task_labels_follow_the_radius() -> None:
    x, y = D.disk_task(4000, seed=3)
    assert x.shape == (4000, 2) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert float(x.abs().max()) <= 1.0
    r = x.double().norm(dim=1)
    assert torch.equal(y, (r < math.sqrt(2 / math.pi)).long())
    # classes are balanced in area: inside fraction ~ 1/2 (4000 draws: std 0.008)
    assert abs(float(y.float().mean()) - 0.5) < 0.04
    x2, y2 = D.disk_task(4000, seed=3)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    assert not torch.equal(x, D.disk_task(4000, seed=4)[0])


def test_grid_2d_layout() -> None:
    g = D.grid_2d(4, lim=2.0)
    assert g.shape == (16, 2)
    t = torch.linspace(-2, 2, 4, dtype=torch.float32)
    for i in range(4):
        for j in range(4):
            assert torch.equal(g[i * 4 + j], torch.stack([t[j], t[i]]))
    with pytest.raises(ConfigError, match="resolution"):
        D.grid_2d(1)


def test_randomize_labels_exact_fraction_and_seeded() -> None:
    y = torch.arange(200) % 10
    y_new, mask = D.randomize_labels(y, 0.3, 10, seed=1)
    assert mask.dtype == torch.bool and int(mask.sum()) == 60
    assert torch.equal(y_new[~mask], y[~mask])
    assert int(y_new.min()) >= 0 and int(y_new.max()) <= 9
    assert (y_new[mask] != y[mask]).float().mean() > 0.6  # uniform labels: ~90% differ
    y2, m2 = D.randomize_labels(y, 0.3, 10, seed=1)
    assert torch.equal(y_new, y2) and torch.equal(mask, m2)
    assert torch.equal(y, torch.arange(200) % 10)  # input untouched
    assert int(D.randomize_labels(y, 0.0, 10, 0)[1].sum()) == 0
    assert int(D.randomize_labels(y, 1.0, 10, 0)[1].sum()) == 200
    with pytest.raises(ConfigError, match="'fraction'"):
        D.randomize_labels(y, 1.5, 10, 0)


def test_randomize_labels_are_uniform() -> None:
    y = torch.zeros(20000, dtype=torch.int64)
    y_new, mask = D.randomize_labels(y, 1.0, 4, seed=0)
    freq = torch.bincount(y_new, minlength=4).double() / 20000
    assert torch.allclose(freq, torch.full((4,), 0.25, dtype=torch.float64), atol=0.015)
    assert bool(mask.all()) and mask.dtype == torch.bool
    y_part, mask_part = D.randomize_labels(y, 0.3, 4, seed=1)
    assert int(mask_part.sum()) == 6000 and bool((y_part[~mask_part] == 0).all())
    assert torch.equal(y, torch.zeros(20000, dtype=torch.int64))  # the input is not modified


def test_mix_other_dataset() -> None:
    split = load_dataset("digits", 0, "flat")
    x, y = split.x_train, split.y_train
    x0, y0 = x.clone(), y.clone()
    xm, ym, other = D.mix_other_dataset(x, y, 0.1, seed=2)
    k = int(round(0.1 * len(y)))
    assert int(other.sum()) == k
    assert torch.equal(x, x0) and torch.equal(y, y0)
    assert torch.equal(xm[~other], x[~other]) and torch.equal(ym[~other], y[~other])
    assert not torch.equal(xm[other], x[other])
    xo = xm[other].double()
    # standardized other task with its own 10 labels
    assert torch.allclose(xo.mean(0), torch.zeros(64, dtype=torch.float64), atol=1e-5)
    assert torch.allclose(xo.std(0, unbiased=False), torch.ones(64, dtype=torch.float64), atol=1e-4)
    assert set(ym[other].tolist()) <= set(range(10)) and len(set(ym[other].tolist())) == 10
    xm2, ym2, o2 = D.mix_other_dataset(x, y, 0.1, seed=2)
    assert torch.equal(xm, xm2) and torch.equal(ym, ym2) and torch.equal(other, o2)
    # image-shaped inputs keep their shape
    xi, _, oi = D.mix_other_dataset(x.reshape(-1, 1, 8, 8), y, 0.05, seed=0)
    assert xi.shape == (len(y), 1, 8, 8) and int(oi.sum()) == int(round(0.05 * len(y)))


def test_other_task_is_learnable_but_harder_than_digits() -> None:
    from sklearn.linear_model import LogisticRegression
    from sklearn.neighbors import KNeighborsClassifier

    xo, yo = D.other_task(1200, 64, seed=0)
    knn = KNeighborsClassifier(5).fit(xo[:900], yo[:900]).score(xo[900:], yo[900:])
    lr = LogisticRegression(max_iter=500).fit(xo[:900], yo[:900]).score(xo[900:], yo[900:])
    assert 0.2 < max(knn, lr) < 0.9  # well above chance (0.1), well below digits (~0.97)


def test_mnist1d_generator() -> None:
    tpl = D.mnist1d_templates()
    assert tpl.shape == (10, 12)
    assert np.allclose(tpl[:, 0], 0.0)
    assert np.allclose(tpl.std(1), 1 / 6)
    xt, yt, xe, ye = D.mnist1d(200, seed=5)
    assert xt.shape == (160, 40) and xe.shape == (40, 40) and xt.dtype == torch.float32
    y_all = torch.cat([yt, ye])
    assert torch.equal(torch.bincount(y_all), torch.full((10,), 20))
    x_all = torch.cat([xt, xe]).double()
    assert abs(float(x_all.mean())) < 1e-6 and abs(float(x_all.std(unbiased=False)) - 1) < 1e-5
    again = D.mnist1d(200, seed=5)
    assert all(torch.equal(a, b) for a, b in zip((xt, yt, xe, ye), again))
    assert not torch.equal(xt, D.mnist1d(200, seed=6)[0])


def test_mnist1d_example_without_noise_is_the_transformed_template() -> None:
    """With all randomness switched off except the padding, the example is the template
    dilated and downsampled: its first sample is the template's first value (0 + eps)."""
    tpl = D.mnist1d_templates()[3]
    rng = np.random.default_rng(0)
    x = D.mnist1d_example(tpl, rng, padding=(0, 0), scale_coeff=0.0, max_translation=0, corr_noise_scale=0.0,
                          iid_noise_scale=0.0, shear_scale=0.0, final_seq_length=12)
    assert np.allclose(x, tpl + 1e-8, atol=1e-12)


def test_mnist1d_classes_are_separable() -> None:
    from sklearn.neighbors import KNeighborsClassifier

    xt, yt, xe, ye = D.mnist1d(1000, seed=0)
    acc = KNeighborsClassifier(1).fit(xt.numpy(), yt.numpy()).score(xe.numpy(), ye.numpy())
    assert acc > 0.25  # chance is 0.1 (published kNN accuracy is ~ 0.3-0.4 with 4000 examples)


# --------------------------------------------------------------------------- files on disk
def _write_idx(path, arr: np.ndarray, code: int, compress: bool) -> None:
    dt = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}[code]
    head = bytes([0, 0, code, arr.ndim]) + b"".join(struct.pack(">i", s) for s in arr.shape)
    raw = head + arr.astype(dt).tobytes()
    if compress:
        path.write_bytes(gzip.compress(raw))
    else:
        path.write_bytes(raw)


@pytest.mark.parametrize("code", [0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E])
@pytest.mark.parametrize("compress", [False, True])
def test_read_idx_round_trip(tmp_path, code: int, compress: bool) -> None:
    rng = np.random.default_rng(code)
    arr = rng.integers(0, 100, size=(3, 4, 5)).astype(np.float64)
    if code in (0x0D, 0x0E):
        arr = arr / 7
    p = tmp_path / "a.idx"
    _write_idx(p, arr, code, compress)
    out = D.read_idx(p)
    assert out.shape == (3, 4, 5)
    tol = 1e-6 if code == 0x0D else 0.0
    assert np.allclose(out.astype(np.float64), arr, atol=tol, rtol=tol)


def test_read_idx_rejects_garbage(tmp_path) -> None:
    p = tmp_path / "bad"
    p.write_bytes(b"hello world")
    with pytest.raises(ConfigError, match="not an IDX file"):
        D.read_idx(p)
    q = tmp_path / "short"
    q.write_bytes(bytes([0, 0, 8, 1]) + struct.pack(">i", 10) + b"abc")
    with pytest.raises(ConfigError, match="truncated"):
        D.read_idx(q)


def _write_mnist(root, n_train: int, n_test: int, seed: int, compress: bool, sub: str = "") -> dict:
    rng = np.random.default_rng(seed)
    d = root / sub if sub else root
    d.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, size=(n, 28, 28)).astype(np.uint8)
        y = np.arange(n) % 10
        img, lab = D.MNIST_FILES[split]
        ext = ".gz" if compress else ""
        _write_idx(d / (img + ext), x, 0x08, compress)
        _write_idx(d / (lab + ext), y, 0x08, compress)
        out[split] = (x, y)
    return out


@pytest.mark.parametrize("compress", [False, True])
def test_mnist_files_load(tmp_path, compress: bool) -> None:
    ref = _write_mnist(tmp_path, 30, 20, 0, compress)
    x, y = D.load_mnist_arrays(tmp_path, "train")
    assert np.array_equal(x, ref["train"][0]) and np.array_equal(y, ref["train"][1]) and y.dtype == np.int64
    split = load_dataset("mnist", 0, "image", str(tmp_path))
    assert split.x_train.shape == (30, 1, 28, 28) and split.x_test.shape == (20, 1, 28, 28)
    xt = torch.as_tensor(ref["train"][0], dtype=torch.float64) / 255
    expect = (xt - xt.mean()) / xt.std()
    assert torch.allclose(split.x_train.double().reshape(30, 28, 28), expect, atol=1e-5)
    assert torch.equal(split.y_test, torch.as_tensor(ref["test"][1]))
    flat = load_dataset("mnist", 0, "flat", str(tmp_path), max_per_class=2)
    assert flat.x_train.shape == (20, 784) and torch.equal(torch.bincount(flat.y_train), torch.full((10,), 2))
    # max_per_class caps the training set only; the statistics are those of the kept examples
    one = load_dataset("mnist", 0, "flat", str(tmp_path), max_per_class=1)
    assert one.x_train.shape == (10, 784) and one.x_test.shape == (20, 784)
    kept = xt[:10]
    assert torch.allclose(one.x_test.double(), ((torch.as_tensor(ref["test"][0], dtype=torch.float64) / 255
                                                 - kept.mean()) / kept.std()).reshape(20, 784), atol=1e-5)


def test_kmnist_in_torchvision_layout(tmp_path) -> None:
    ref = _write_mnist(tmp_path, 10, 10, 1, True, sub="KMNIST/raw")
    split = load_dataset("kmnist", 0, "flat", str(tmp_path))
    assert split.x_train.shape == (10, 784)
    assert torch.equal(split.y_train, torch.as_tensor(ref["train"][1]))


def test_missing_files_name_the_file(tmp_path) -> None:
    with pytest.raises(ConfigError) as e:
        load_dataset("mnist", 0, "flat", str(tmp_path))
    msg = str(e.value)
    assert "'data_dir'" in msg and "train-images-idx3-ubyte" in msg and "\n" not in msg
    _write_mnist(tmp_path, 10, 10, 0, False)
    (tmp_path / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(ConfigError, match="t10k-labels-idx1-ubyte"):
        check_dataset("mnist", "flat", str(tmp_path))
    with pytest.raises(ConfigError, match="data_batch_1"):
        check_dataset("cifar10", "image", str(tmp_path))
    with pytest.raises(ConfigError, match="needs data_dir"):
        check_dataset("kmnist", "flat", "")


def _write_cifar(root, per_batch: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    d = root / "cifar-10-batches-py"
    d.mkdir(parents=True)
    xs, ys = [], []
    for f in D.CIFAR10_FILES["train"] + D.CIFAR10_FILES["test"]:
        x = rng.integers(0, 256, size=(per_batch, 3072)).astype(np.uint8)
        y = list(rng.integers(0, 10, size=per_batch).tolist())
        with open(d / f, "wb") as fh:
            pickle.dump({b"batch_label": f.encode(), b"data": x, b"labels": y}, fh)
        xs.append(x)
        ys.append(np.asarray(y))
    return (np.concatenate(xs[:5]), np.concatenate(ys[:5]), xs[5], ys[5])


def test_cifar10_pickles_load(tmp_path) -> None:
    xt, yt, xe, ye = _write_cifar(tmp_path, 6, 0)
    x, y = D.load_cifar10_arrays(tmp_path, "train")
    assert x.shape == (30, 3, 32, 32) and np.array_equal(x.reshape(30, -1), xt) and np.array_equal(y, yt)
    split = load_dataset("cifar10", 0, "image", str(tmp_path))
    assert split.x_test.shape == (6, 3, 32, 32)
    # channel 0 of example 0 is the first 1024 bytes (row-major RGB planes)
    raw = torch.as_tensor(xt, dtype=torch.float64).reshape(30, 3, 32, 32) / 255
    mean = raw.mean(dim=(0, 2, 3), keepdim=True)
    std = raw.std(dim=(0, 2, 3), keepdim=True)
    assert torch.allclose(split.x_train.double(), (raw - mean) / std, atol=1e-5)
    assert torch.equal(split.y_test, torch.as_tensor(ye))
    assert load_dataset("cifar10", 0, "flat", str(tmp_path)).x_train.shape == (30, 3072)
    bad = tmp_path / "cifar-10-batches-py" / "test_batch"
    bad.write_bytes(b"not a pickle")
    with pytest.raises(ConfigError, match="test_batch.*not a readable pickle"):
        D.load_cifar10_arrays(tmp_path, "test")
    with bad.open("wb") as fh:
        pickle.dump([1, 2, 3], fh)
    with pytest.raises(ConfigError, match="test_batch.*no data/labels entries"):
        D.load_cifar10_arrays(tmp_path, "test")


def test_registry() -> None:
    assert set(ALL_DATASETS) >= {"digits", "tinyimagenet", "mnist", "kmnist", "cifar10", "mnist1d", "disk"}
    assert set(DATASETS) == {"digits", "tinyimagenet"}  # the FIM-quality study's choices are unchanged
    with pytest.raises(ConfigError, match="unknown dataset 'svhn'.*mnist1d"):
        check_dataset("svhn", "flat")
    with pytest.raises(ConfigError, match="no 'image' layout"):
        check_dataset("disk", "image")
    disk = load_dataset("disk", 0, "flat")
    assert disk.x_train.shape == (500, 2) and disk.x_test.shape == (2000, 2) and disk.n_classes == 2
    assert not torch.equal(disk.x_train, disk.x_test[:500])
