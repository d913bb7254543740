"""Configuration errors of ``lazy-vs-hasty``: each names its field and what is accepted."""

from __future__ import annotations

import pytest
import torch

from tangentlab.studies.framework.config import ConfigError, build_config
from tangentlab.studies.lazy_vs_hasty import LazyVsHastyConfig
from tangentlab.studies.lazy_vs_hasty.data import read_waterbirds, spurious_images

from .fakes import fake_celeba, fake_waterbirds


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


def test_spurious_files_missing_or_invalid(tmp_path):
    with pytest.raises(ConfigError, match="'data_dir'.*metadata.csv"):
        read_waterbirds(tmp_path)
    rows = fake_waterbirds(tmp_path)
    img = tmp_path / "waterbird_complete95_forest2water2" / rows[5].split(",")[1]
    img.unlink()
    with pytest.raises(ConfigError, match=f"'data_dir'.*{img.name}.*no such image"):
        spurious_images("waterbirds", tmp_path, seed=0, image_size=8)
    (tmp_path / "waterbird_complete95_forest2water2" / "metadata.csv").write_text("img_id,y\n1,0\n")
    with pytest.raises(ConfigError, match="'data_dir'.*img_filename"):
        build_config(LazyVsHastyConfig, sets=["spurious_dataset=waterbirds", f"data_dir={tmp_path}"])
    cel = tmp_path / "c"
    fake_celeba(cel)
    (cel / "celeba" / "list_eval_partition.txt").unlink()
    with pytest.raises(ConfigError, match="'data_dir'.*list_eval_partition.txt"):
        build_config(LazyVsHastyConfig, sets=["spurious_dataset=celeba", f"data_dir={cel}"])
    with pytest.raises(ConfigError, match="'model'"):
        build_config(LazyVsHastyConfig, sets=["model=resnet18", "parts=spurious"])


