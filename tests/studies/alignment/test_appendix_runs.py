"""Items 8-11 end to end at the tiny preset: tables, figures and claims (criterion, kind, intervals);
the VGG channel sweep's measures."""

from __future__ import annotations

import csv
import math
import types

import pytest
import torch

from tangentlab.cli import main
from tangentlab.studies.alignment import channel_sweep as CS
from tangentlab.studies.framework.models import make_vgg


@pytest.fixture(scope="module")
def appendix_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("alx") / "tiny"
    assert main(["run", "alignment", "--preset", "tiny", "--out", str(out), "--set", "items=8,9,10,11",
                 "--set", "progress=off", "--set", "threads=1"]) == 0
    return out


def test_tables_figures_claims(appendix_run) -> None:
    for t in ("hierarchy_directions", "hierarchy_summary", "bias_modes", "bias_fourier", "bias_summary", "capacity",
              "capacity_identity", "channel_sweep"):
        assert (appendix_run / "tables" / f"{t}.csv").is_file(), t
    for f in ("appB1_jacobian_hierarchy", "appB2_spectral_bias", "appB3_norm_capacity", "channel_sweep"):
        assert (appendix_run / "figures" / f"{f}.png").is_file(), f
    with open(appendix_run / "tables" / "claims.csv") as fh:
        rows = list(csv.DictReader(fh))
    parts = {r["part"] for r in rows}
    assert {"B.1 Jacobian hierarchy", "B.2 spectral bias", "B.3 norm capacity", "VGG channel sweep"} <= parts
    for r in rows:
        assert r["criterion"] and r["paper"] and r["kind"] in ("finding", "identity"), r["topic"]
        assert r["verdict"] in ("yes", "NO", "inconclusive", "n/a")
    by = {r["topic"]: r for r in rows}
    # seed intervals (2 seeds at the tiny preset) and bootstrap intervals
    for t in ("B.1: top singular directions move f", "B.2: frequency increases with j",
              "B.3: ℓ2 bound misses the error's shape"):
        assert math.isfinite(float(by[t]["low"])) and math.isfinite(float(by[t]["high"])), t
    assert by["B.1: K = J Jᵀ"]["verdict"] == "yes" and by["B.3: Prop. B.2.5 optimum"]["verdict"] == "yes"


def test_channel_sweep_measures() -> None:
    cfg = types.SimpleNamespace(channel_n_train=20, seed=0, channel_lr=0.02, channel_batch_size=10,
                                channel_probe=20, channel_trace_every=1, channel_max_epochs=1,
                                channel_target_loss=0.01)
    data = CS.channel_data(cfg)
    assert data[0].shape == (20, 1, 32, 32) and data[2].shape[1:] == (1, 32, 32)
    row = CS.train_and_measure(cfg, 2, 0, data)
    assert row["steps"] == 2 and row["C"] > 0 and math.isfinite(row["C"])
    model = make_vgg("vgg11", 1, 10, 2)
    assert row["params"] == sum(p.numel() for p in model.parameters())
    ws = CS.weight_matrices(model)
    assert len(ws) == 9 and all(w.dim() == 2 for w in ws)
    conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))
    assert ws[0].shape == (conv.out_channels, conv.in_channels * 9)
