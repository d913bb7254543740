"""Data of ``lazy-vs-hasty``: label flips, yin-yang, C-score bins, spurious digits, C-scores by
definition, and the Waterbirds / CelebA readers on tiny fake copies."""

from __future__ import annotations

import numpy as np
import torch

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

from .fakes import WB_SIZES, color, fake_celeba, fake_waterbirds


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


def test_waterbirds_loader_on_fake_files(tmp_path):
    fake_waterbirds(tmp_path)
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
    raw = np.stack([[color(int(i))[c] / 255 for c in range(3)] for i in tr])
    np.testing.assert_allclose(xtr, ((raw - raw.mean(0)) / raw.std(0))[:, :, None, None] + 0 * xtr, atol=0.1)
    capped, _, tr2, _ = spurious_images("waterbirds", tmp_path, seed=0, image_size=8, max_per_group=3)
    assert np.bincount(table.group[tr2], minlength=4).tolist() == [3, 2, 2, 3]
    assert list(tr2) == sorted(tr2) and capped.x_train.shape[0] == 10


def test_celeba_loader_on_fake_files(tmp_path):
    blond, male, split = fake_celeba(tmp_path)
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


