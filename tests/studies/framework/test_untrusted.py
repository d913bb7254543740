"""Files from elsewhere never run code: a run directory's checkpoints load with
``weights_only=True`` and CIFAR-10 batches through a restricted unpickler. A pickle whose
``__reduce__`` would create a marker file is planted in a checkpoint and in a CIFAR batch:
loading it is refused with an error naming the file, and the marker file never appears.
A checkpoint that cannot be read is reported, and an older one is used."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch

from tangentlab.cli import EXIT_ERROR, main
from tangentlab.errors import TangentlabError
from tangentlab.studies.framework import datasets as D
from tangentlab.studies.framework.config import ConfigError
from tangentlab.studies.framework.store import RunDirectoryError, RunDirectoryWarning, RunStore
from tangentlab.training import BatchStream, TrainingCheckpoint

from .test_damaged_runs import ARGS, killed  # noqa: F401 - killed is a fixture
from .test_framework import _one_error_line, _rows, toy  # noqa: F401 - toy is a fixture


class Evil:
    """Unpickling it calls ``open(marker, "w")``: the file appears if the pickle is run."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_the_planted_pickle_would_run(tmp_path):
    """The plant is real: plain ``pickle.load`` creates the marker."""
    marker = tmp_path / "ran"
    obj = pickle.loads(pickle.dumps({"model": Evil(marker)}))
    obj["model"].close()
    assert marker.exists()


def test_a_malicious_checkpoint_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    store = RunStore.create(tmp_path / "run", {"study": "x", "config": {}})
    torch.save({"step": 3, "model": Evil(marker)}, store.ckpt_dir / "train-00000003.pt")
    with pytest.raises(RunDirectoryError, match=r"train-00000003\.pt' cannot be read safely "
                       r"\(it refers to (builtins|io)\.open.*No checkpoint of 'train' can be read: remove") as e:
        store.load_checkpoint("train")
    assert isinstance(e.value, TangentlabError)
    assert not marker.exists()


def test_a_checkpoint_that_cannot_be_read_is_reported_and_an_older_one_used(tmp_path):
    marker = tmp_path / "ran"
    store = RunStore.create(tmp_path / "run", {"study": "x", "config": {}})
    model = torch.nn.Linear(3, 2)
    store.save_checkpoint("train", 5, {"model": model.state_dict()}, keep=5)
    torch.save({"step": 8, "model": Evil(marker)}, store.ckpt_dir / "train-00000008.pt")
    (store.ckpt_dir / "train-00000009.pt").write_bytes(b"PK\x03\x04 torn")  # not a checkpoint at all
    with pytest.warns(RunDirectoryWarning, match=r"train-00000009\.pt' cannot be read safely.*train-00000008\.pt' "
                      r"cannot be read safely \(it refers to (builtins|io)\.open.*using the older checkpoint .*"
                      r"train-00000005\.pt"):
        ck = store.load_checkpoint("train")
    assert ck["step"] == 5 and torch.equal(ck["model"]["weight"], model.weight.detach())
    assert not marker.exists()


def test_training_checkpoints_hold_only_safe_types(tmp_path):
    """What :class:`TrainingCheckpoint` saves (model, optimizer, stream, RNG states) loads with
    ``weights_only=True`` and restores the same RNG streams."""
    import random

    store = RunStore.create(tmp_path / "run", {"study": "x", "config": {}})
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.Adam(model.parameters())
    model(torch.randn(4, 3)).sum().backward()
    opt.step()
    stream = BatchStream(10, 3, 0)
    stream.next()
    np.random.seed(1)
    np.random.randn()  # a cached Gaussian in numpy's state
    ck = TrainingCheckpoint(store, "t", model, opt, stream)
    ck.save(1, rows=[{"a": 1.0}], name="x")
    after = (np.random.randn(3), random.random(), torch.rand(2))
    torch.load(store.checkpoints("t")[-1][1], weights_only=True)
    assert ck.restore()["rows"] == [{"a": 1.0}]
    again = (np.random.randn(3), random.random(), torch.rand(2))
    assert np.array_equal(after[0], again[0]) and after[1] == again[1] and torch.equal(after[2], again[2])


def test_resume_uses_an_older_checkpoint_when_the_newest_is_planted(killed, tmp_path):  # noqa: F811
    reference, run = killed
    marker = tmp_path / "ran"
    torch.save({"step": 9, "model": Evil(marker)}, run / "checkpoints" / "toy-00000009.pt")
    with pytest.warns(RunDirectoryWarning, match=r"toy-00000009\.pt' cannot be read safely.*using the older"):
        assert main(["run", "toy-test", "--out", str(run), "--resume"]) == 0
    assert _rows(run) == reference and not marker.exists()


def test_resume_refuses_when_no_checkpoint_can_be_read(killed, tmp_path, capsys):  # noqa: F811
    _, run = killed
    marker = tmp_path / "ran"
    for p in (run / "checkpoints").glob("toy-*.pt"):
        torch.save({"step": 8, "model": Evil(marker)}, p)
    assert main(["run", "toy-test", "--out", str(run), "--resume"]) == EXIT_ERROR
    line = _one_error_line(capsys)
    assert "toy-00000008.pt" in line and "cannot be read safely" in line and "remove" in line
    assert not marker.exists()


def _cifar_dir(tmp_path, batch: object):
    d = tmp_path / "cifar-10-batches-py"
    d.mkdir()
    good = {b"batch_label": b"x", b"data": np.zeros((2, 3072), np.uint8), b"labels": [0, 1]}
    for f in D.CIFAR10_FILES["train"]:
        with open(d / f, "wb") as fh:
            pickle.dump(batch if f == "data_batch_3" else good, fh, protocol=2)
    return d


@pytest.mark.parametrize("protocol", [2, 5])
def test_cifar_batches_of_every_pickle_protocol_load(tmp_path, protocol):
    d = tmp_path / "c"
    d.mkdir()
    x = np.arange(2 * 3072).astype(np.uint8).reshape(2, 3072)
    with open(d / "b", "wb") as fh:
        pickle.dump({b"batch_label": b"x", b"data": x, b"labels": [3, 4], b"filenames": [b"a", b"b"]}, fh,
                    protocol=protocol)
    got = D.read_cifar_batch(d / "b")
    assert np.array_equal(got[b"data"], x) and got[b"labels"] == [3, 4]


def test_a_malicious_cifar_batch_is_refused_and_nothing_runs(tmp_path):
    marker = tmp_path / "ran"
    _cifar_dir(tmp_path, {b"data": np.zeros((1, 3072), np.uint8), b"labels": [Evil(marker)]})
    with pytest.raises(ConfigError, match=r"data_batch_3' is not a readable pickle of a CIFAR-10 batch \(it "
                       r"refers to (builtins|io)\.open, which a CIFAR-10 batch never holds\); nothing in it was run"):
        D.load_cifar10_arrays(tmp_path, "train")
    assert not marker.exists()


def test_a_cifar_batch_with_an_object_array_is_refused(tmp_path):
    _cifar_dir(tmp_path, {b"data": np.array([1, "a"], dtype=object), b"labels": [0]})
    with pytest.raises(ConfigError, match=r"data_batch_3' holds an array of dtype object, not numeric"):
        D.load_cifar10_arrays(tmp_path, "train")


def test_cifar_labels_written_as_numpy_scalars_load(tmp_path):
    # e.g. ``list(np.arange(n) % 10)``: numpy int64 scalars, rebuilt by numpy's scalar(dtype, bytes)
    d = tmp_path / "c"
    d.mkdir()
    with open(d / "b", "wb") as fh:
        pickle.dump({b"data": np.zeros((2, 3072), np.uint8), b"labels": list(np.arange(2, dtype=np.int64) + 3)}, fh)
    got = D.read_cifar_batch(d / "b")
    assert got[b"labels"] == [3, 4] and all(isinstance(v, np.int64) for v in got[b"labels"])


def test_a_cifar_batch_with_a_non_numeric_numpy_scalar_is_refused(tmp_path):
    _cifar_dir(tmp_path, {b"data": np.zeros((1, 3072), np.uint8), b"labels": [np.str_("x")]})
    with pytest.raises(ConfigError, match=r"data_batch_3' is not a readable pickle of a CIFAR-10 batch \(it "
                       r"builds a numpy scalar of dtype"):
        D.load_cifar10_arrays(tmp_path, "train")
