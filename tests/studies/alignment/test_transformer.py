"""The ``transformer`` preset of the alignment study: the ViT against independent float64 oracles
(patches from ``F.unfold``, the NTK from ``torch.func``, block kernels from ``tl.ntk`` over the
block's parameters, the GPT-style block against ``nn.TransformerEncoderLayer`` with the same
weights), then ``--preset transformer-tiny`` end to end (per-layer and per-block rows, claims
judged by the MLP's claim code, report) and kill + resume."""

from __future__ import annotations

import math
import os
import warnings

import pytest
import torch
import torch.nn.functional as F
from torch.func import functional_call, jacrev, vmap

import tangentlab as tl
from tangentlab.analysis.kernels import center, cka_with_labels
from tangentlab.cli import EXIT_INTERRUPTED, main
from tangentlab.studies.alignment.claims import Results, alignment_claims
from tangentlab.studies.alignment.config import AlignmentConfig
from tangentlab.studies.alignment.models import make_model
from tangentlab.studies.alignment.vit import GroupedProbe, layer_groups
from tangentlab.studies.framework.config import ConfigError, build_config
from tangentlab.studies.framework.probes import ProbeSet, log_schedule
from tangentlab.studies.framework.store import RunStore, Table, read_table

from ..harness import all_rows, duplicated_rows

SETS = ["--set", "progress=off", "--set", "threads=1"]


def _vit(block: str = "gpt", patch: int = 2, seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return make_model("vit", (1, 8, 8), 10, 8, 0, patch=patch, blocks=2, heads=2, hidden=12, block=block).eval()


def _oracle_ntk(model: torch.nn.Module, x: torch.Tensor, names: list[str] | None = None) -> torch.Tensor:
    """``K[n, m, c, d]`` by ``vmap(jacrev)`` over the parameters ``names`` (all by default)."""
    params = {k: v.detach() for k, v in model.named_parameters()}
    wrt = {k: params[k] for k in (names or params)}

    def f(p, xi):
        return functional_call(model, {**params, **p}, (xi[None],))[0]

    J = vmap(jacrev(f), (None, 0))(wrt, x)
    Jf = torch.cat([j.reshape(x.shape[0], 10, -1) for j in J.values()], dim=-1)
    return torch.einsum("ncp,mdp->nmcd", Jf, Jf)


def test_patch_embedding_tokens_are_the_unfolded_patches():
    m = _vit(patch=2)
    x = torch.randn(3, 1, 8, 8)
    tokens = F.unfold(x, kernel_size=2, stride=2).transpose(1, 2)  # (N, T, C·p²), row-major patches
    pos = m.embed.pos.weight
    expected = tokens @ m.embed.proj.weight.T + m.embed.proj.bias + pos
    torch.testing.assert_close(m.embed(x), expected)


def test_gpt_block_is_the_torch_encoder_layer():
    """The same weights in the GPT-style block and in ``nn.TransformerEncoderLayer``
    (pre-norm, GELU, no dropout) give the same function."""
    gpt, ref = _vit("gpt"), _vit("torch", seed=1)
    for b_gpt, b_ref in zip(gpt.blocks, ref.blocks):
        pairs = [(b_ref.self_attn.in_proj_weight, b_gpt.attn.qkv.weight),
                 (b_ref.self_attn.in_proj_bias, b_gpt.attn.qkv.bias),
                 (b_ref.self_attn.out_proj.weight, b_gpt.attn.out.weight),
                 (b_ref.self_attn.out_proj.bias, b_gpt.attn.out.bias),
                 (b_ref.linear1.weight, b_gpt.ff[0].weight), (b_ref.linear1.bias, b_gpt.ff[0].bias),
                 (b_ref.linear2.weight, b_gpt.ff[2].weight), (b_ref.linear2.bias, b_gpt.ff[2].bias),
                 (b_ref.norm1.weight, b_gpt.norm1.weight), (b_ref.norm1.bias, b_gpt.norm1.bias),
                 (b_ref.norm2.weight, b_gpt.norm2.weight), (b_ref.norm2.bias, b_gpt.norm2.bias)]
        with torch.no_grad():
            for dst, src in pairs:
                dst.copy_(src)
    ref.embed.load_state_dict(gpt.embed.state_dict())
    ref.norm.load_state_dict(gpt.norm.state_dict())
    ref.head.load_state_dict(gpt.head.state_dict())
    x = torch.randn(5, 1, 8, 8)
    torch.testing.assert_close(gpt(x), ref(x))


@pytest.mark.parametrize("patch", [2, 4])
def test_ntk_per_layer_and_per_block_against_torch_func(patch):
    """Fast path (no generic-route warning) for the GPT-style ViT; the whole kernel, each block
    part's kernel and their CKA with the labels against float64 oracles."""
    m = _vit(patch=patch)
    x, y = torch.randn(6, 1, 8, 8), torch.arange(6) % 10
    groups = layer_groups(m)
    assert list(groups) == ["blocks.0:attention", "blocks.0:feed-forward", "blocks.1:attention",
                            "blocks.1:feed-forward"]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        K = tl.ntk(m, x, per_layer=True)
    torch.testing.assert_close(K.data, _oracle_ntk(m, x))
    probe = GroupedProbe([ProbeSet("train", x, y)], groups=groups, metrics=("cka", "layers"))
    rows = {r["layer"]: r["value"] for r in probe.evaluate(m, 0).rows}
    for name, layers in groups.items():
        params = [n for n, _ in m.named_parameters() if any(n.rsplit(".", 1)[0] == la for la in layers)]
        assert len(params) == 4  # two Linear layers, weight and bias each
        Kb = _oracle_ntk(m, x, params)
        torch.testing.assert_close(tl.ntk(m, x, params=params).data, Kb)
        Kc = center(tl.ntk(m, x, params=params), "examples", 10)
        assert rows[name] == pytest.approx(float(cka_with_labels(Kc, y, "examples", 10)), rel=1e-10)
    assert set(rows) == {"", *(la for la in K.layers), *groups}


def test_torch_block_groups_cover_attention_and_feed_forward():
    m = _vit("torch")
    groups = layer_groups(m)
    assert groups["blocks.1:attention"] == ["blocks.1.self_attn", "blocks.1.self_attn.out_proj"]
    assert groups["blocks.1:feed-forward"] == ["blocks.1.linear1", "blocks.1.linear2"]
    layers = {name for name, _ in m.named_modules()}
    assert all(la in layers for v in groups.values() for la in v)
    assert layer_groups(make_model("mlp", (64,), 10, 8, 3)) == {}


@pytest.mark.parametrize("sets, field", [
    (["vit_patch=3"], "vit_patch"),
    (["vit_heads=3"], "vit_heads"),
    (["items=2,5"], "items"),
    (["vit_block=flash"], "vit_block"),
])
def test_config_errors(sets, field):
    with pytest.raises(ConfigError) as err:
        build_config(AlignmentConfig, preset="transformer", sets=sets)
    assert err.value.field == field


@pytest.fixture
def float32():
    """The command line runs in float32 (the suite's default dtype is float64)."""
    torch.set_default_dtype(torch.float32)


def test_transformer_tiny_run_tables_claims_and_resume(tmp_path, float32, monkeypatch, capsys):
    cfg = build_config(AlignmentConfig, preset="transformer-tiny")
    full = tmp_path / "full"
    assert main(["run", "alignment", "--preset", "transformer-tiny", *SETS, "--out", str(full)]) == 0
    out = capsys.readouterr().out
    assert "identities " in out and "ViT" in out
    probes = read_table(os.path.join(full, "tables", "probes.csv"))
    sched = log_schedule(cfg.schedule, cfg.train_steps, cfg.schedule_base)
    want = {"embed.proj", "embed.pos", "blocks.0.attn.qkv", "blocks.0.attn.out", "blocks.0.ff.0", "blocks.0.ff.2",
            "head", "blocks.0:attention", "blocks.0:feed-forward"}
    for run in ("noise_0", "noise_50"):
        for pr in ("train", "test"):
            for step in sched:
                layers = {r["layer"] for r in probes if r["run"] == run and r["probe"] == pr and r["metric"] == "cka"
                          and int(r["step"]) == step}
                assert want <= layers, (run, pr, step)
    for r in probes:
        assert math.isfinite(float(r["value"]))
        if r["metric"] == "cka":
            assert -1e-6 <= float(r["value"]) <= 1 + 1e-6

    # the claims are those of the MLP, judged by the same code, on the transformer's tables
    R = Results(RunStore.open(full))
    assert R.layers("noise_0", "train")[0] == "embed.proj" and R.layers("noise_0", "train")[-1] == "head"
    assert R.blocks("noise_0", "train") == ["blocks.0:attention", "blocks.0:feed-forward"]
    claims = alignment_claims(cfg, R)
    topics = {c.topic for c in claims}
    for topic in ("Fig. 2: early erank drop (0% random labels)", "Fig. 2: train vs test spectra (50% random labels)",
                  "Fig. 3: CKA with labels (0% random labels)", "Fig. 3: test vs train CKA (50% random labels)",
                  "Fig. 3: intermediate layers align most (0% random labels)"):
        assert topic in topics, topic
    assert all(c.verdict != "inconclusive" and c.criterion for c in claims)  # one seed: no intervals
    page = (full / "report.html").read_text()
    assert "Per-layer and per-block CKA" in page and "blocks.0:feed-forward" in page
    # no limit rule for attention: the distance to the infinite-width NTK is skipped, as the report says
    assert "Distance to the infinite-width limit: skipped" in page
    assert not {"rel_frobenius_limit", "cka_limit"} & {r["metric"] for r in probes}

    # killed half-way through its table appends, then resumed: the same rows, none twice
    reference = all_rows(full)
    appends = {"n": 0}
    real_append = Table.append

    def dying(self, rows):
        appends["n"] += 1
        if appends["n"] == 12:
            raise KeyboardInterrupt
        return real_append(self, rows)

    monkeypatch.setattr(Table, "append", dying)
    killed = tmp_path / "killed"
    assert main(["run", "alignment", "--preset", "transformer-tiny", *SETS, "--out", str(killed)]) == EXIT_INTERRUPTED
    monkeypatch.setattr(Table, "append", real_append)
    partial = read_table(os.path.join(killed, "tables", "probes.csv"))
    assert 0 < len(partial) < len(probes)
    assert main(["run", "alignment", "--resume", "--out", str(killed)]) == 0
    assert not any(duplicated_rows(killed).values())
    assert all_rows(killed) == reference
