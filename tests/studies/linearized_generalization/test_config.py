"""Configuration errors of ``linearized-generalization``: one line, naming the field and what is accepted."""

from __future__ import annotations

import pytest
import torch

from tangentlab.studies.framework.config import ConfigError, build_config
from tangentlab.studies.linearized_generalization import LinGenConfig


@pytest.mark.parametrize("sets, field", [
    (["dataset=imagenet"], "dataset"),
    (["model=vgg"], "model"),
    (["sizes=[32, 5000]"], "sizes"),
    (["eigen_indices=[1, 1800]"], "eigen_indices"),
    (["rotation_target=3"], "rotation_target"),
    (["binary_lin_epochs=[4]"], "binary_lin_epochs"),
    (["checkpoint_epochs=[1, 60]"], "checkpoint_epochs"),
    (["nad_indices=[0, 64]"], "nad_indices"),
    (["energy_ks=[2000]"], "energy_ks"),
    (["dataset=cifar10", "model=lenet"], "data_dir"),
    (["parts=eigen,oops"], "parts"),
])
def test_bad_configurations_are_one_line_errors(sets, field):
    with pytest.raises(ConfigError) as e:
        build_config(LinGenConfig, sets=sets)
    assert e.value.field == field
    assert "\n" not in str(e.value) and "accepted" in str(e.value)


def test_paper_preset_is_refused_without_a_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # runs on GPU machines too
    with pytest.raises(ConfigError) as e:
        build_config(LinGenConfig, preset="paper")
    assert e.value.field in ("device", "data_dir")


