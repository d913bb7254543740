"""The engine's pass layer: one options object for every entry point, the output-block
policy, the pass driver's once-per-batch rule, the one capture cache shared by the dense
and the tiled NTK, and the matrix-free operator base (shuffle refusal, precision, seed)."""

from __future__ import annotations

import inspect
import warnings

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import tangentlab as tl
from tangentlab.engine import Engine, EngineOptions, OutputBlocks, make_engine
from tangentlab.engine import engine as engine_mod
from tangentlab.engine.operator import MatrixFreeOperator
from tangentlab.engine.passes import CaptureCache, one_pass
from tangentlab.errors import InvalidInputError
from tangentlab.maps import PullBackImplicit, PushForwardImplicit
from tangentlab.ntk_large import NTKOperator, ntk_tiled
from tangentlab.pmat import PMatImplicit

from . import oracle


def problem(n: int = 11, dtype=torch.float64):
    g = torch.Generator().manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3)).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float64))
    x = torch.randn(n, 5, generator=g, dtype=torch.float64).to(dtype)
    y = torch.randint(0, 3, (n,), generator=g)
    return model, x, y


ENGINE_KEYS = ("route", "registry", "seed", "memory_budget", "progress", "distributed", "precision", "options")


def _entry_points(model, x):
    return {
        "fim": lambda **kw: tl.fim(model, x, "raw", "diag", **kw),
        "ntk": lambda **kw: tl.ntk(model, x, **kw),
        "jacobian": lambda **kw: tl.jacobian(model, x, **kw),
        "ntk_tiled": lambda **kw: ntk_tiled(model, x, block=4, **kw),
        "NTKOperator": lambda **kw: NTKOperator(model, x, **kw),
    }


def test_entry_points_take_the_same_engine_keywords_and_defaults():
    defaults = EngineOptions()
    for fn in (tl.fim, tl.ntk, tl.jacobian, ntk_tiled, NTKOperator):
        params = inspect.signature(fn).parameters
        for key in ENGINE_KEYS:
            assert key in params, (fn.__name__, key)
            assert params[key].kind is inspect.Parameter.KEYWORD_ONLY
            want = None if key == "options" else getattr(defaults, key)
            assert params[key].default == want, (fn.__name__, key)


@pytest.mark.parametrize("kw", [dict(route="fast"), dict(seed=1.5), dict(seed=True), dict(progress="yes"),
                                dict(distributed="yes"), dict(precision="bf17"), dict(precision="model/fp16"),
                                dict(memory_budget="lots"), dict(registry={}), dict(distributed=True),
                                dict(options="fast"), dict(options=EngineOptions(seed=2), seed=3)])
def test_bad_engine_options_are_refused_identically_everywhere(kw):
    model, x, _ = problem()
    messages = set()
    for fn in _entry_points(model, x).values():
        with pytest.raises(InvalidInputError) as info:
            fn(**kw)
        messages.add(str(info.value))
    assert len(messages) == 1, messages


def test_options_object_equals_keywords():
    model, x, y = problem()
    opts = EngineOptions(route="generic", precision="model/fp64")
    a = tl.fim(model, (x, y), "exact", "dense", options=opts).to_dense()
    b = tl.fim(model, (x, y), "exact", "dense", route="generic", precision="model/fp64").to_dense()
    assert torch.equal(a, b)
    assert torch.equal(tl.ntk(model, x, options=opts).data, tl.ntk(model, x, route="generic").data)
    eng = make_engine(model, opts, "exact")
    assert isinstance(eng, Engine) and eng.route == "generic"
    assert eng.options.route == "generic" and eng.with_space(eng.space).options == eng.options
    assert opts.replace(seed=4).seed == 4 and opts.seed == 0


def test_output_block_policy():
    assert OutputBlocks.all().width(10, 100, 1) == 10
    assert OutputBlocks.auto().width(10, 100, 300) == 3
    assert OutputBlocks.auto().width(10, 100, 1) == 1
    assert OutputBlocks.auto().width(10, 1, 10**9) == 10
    assert OutputBlocks.of(4).width(10, 100, 1) == 4 and OutputBlocks.of(40).width(10, 1, 1) == 10
    assert OutputBlocks.resolve(True) == OutputBlocks.auto() and OutputBlocks.resolve(False) == OutputBlocks.all()
    for bad in (0, -1, 2.0, True):
        with pytest.raises(InvalidInputError, match="positive integer"):
            OutputBlocks.of(bad)
    for bad in (None, 0, "auto"):
        with pytest.raises(InvalidInputError, match="OutputBlocks"):
            OutputBlocks.resolve(bad)


@pytest.mark.parametrize("blocks", [OutputBlocks.all(), OutputBlocks.auto(), OutputBlocks.of(1), OutputBlocks.of(2)])
def test_pass_counts_each_batch_once_whatever_the_blocks(blocks):
    model, x, y = problem()
    eng = Engine(model, "exact")
    seen, per_block = [], []
    n, mean = one_pass(eng, tl.data.Batches((x, y), 4), "t", lambda cap: per_block.append(cap.out_slice),
                       centering=True, output_blocks=blocks, per_batch=lambda cap: seen.append(cap.index))
    assert n == 11 and seen == [0, 1, 2]
    width = {"all": 2, "auto": 2, "fixed": blocks.size}[blocks.mode]
    assert len(per_block) == 3 * -(-2 // width)
    ref = one_pass(eng, tl.data.Batches((x, y), 4), "t", lambda cap: None, centering=True)[1]
    assert oracle.rel_err(mean, ref) < 1e-14


def _count_captures(monkeypatch):
    calls = []
    orig = Engine.capture_blocks
    monkeypatch.setattr(Engine, "capture_blocks", lambda self, *a, **k: calls.append(a[1]) or orig(self, *a, **k))
    return calls


@pytest.mark.parametrize("cross", [False, True])
def test_dense_and_tiled_ntk_capture_each_batch_once(monkeypatch, cross):
    model, x, _ = problem(23)
    x2 = x[:9] if cross else None
    ref = tl.ntk(model, x, x2, batch_size=4).data
    calls = _count_captures(monkeypatch)
    K = tl.ntk(model, x, x2, batch_size=4).data
    assert torch.equal(K, ref)
    assert len(calls) == 6 + (3 if cross else 0)  # one capture per batch, kept by the cache
    calls.clear()
    T = ntk_tiled(model, x, x2, block=4).data
    assert len(calls) == 6 + (3 if cross else 0)
    assert oracle.rel_err(T, ref) < 1e-13


def test_ntk_recomputes_captures_past_the_cache_limit(monkeypatch):
    model, x, _ = problem(23)
    ref = tl.ntk(model, x, batch_size=4).data
    calls = _count_captures(monkeypatch)
    monkeypatch.setattr(CaptureCache, "of", classmethod(lambda cls, eng, data, desc="": cls(1, eng, data, desc)))
    assert torch.equal(tl.ntk(model, x, batch_size=4).data, ref)
    assert len(calls) > 6
    assert oracle.rel_err(ntk_tiled(model, x, block=4).data, ref) < 1e-13


def test_capture_cache_replays_and_skips():
    model, x, _ = problem(23)
    eng = Engine(model, "raw")
    cache = CaptureCache.of(eng, tl.data.Batches(x, 4))
    assert cache.sizes() == [4, 4, 4, 4, 4, 3]
    first = [i for i, _ in cache.captures(need=lambda i: i % 2 == 0)]
    assert first == [0, 2, 4] and len(cache.caps) == 1  # a skipped batch stops the cache growing
    assert [i for i, _ in cache.captures()] == list(range(6)) and cache.complete
    again = [c for _, c in cache.captures()]
    assert all(a is b for a, b in zip(again, cache.caps))


def test_ntk_tiled_and_operator_take_precision_and_seed():
    model, x, y = problem(13, torch.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        K = tl.ntk(model, x, batch_size=4, precision="model/fp64")
        T = ntk_tiled(model, x, block=4, precision="model/fp64")
        op = NTKOperator(model, x, batch_size=4, precision="model/fp64")
    assert K.data.dtype == T.data.dtype == op.diag().dtype == torch.float64
    assert torch.equal(T.data, K.data)
    assert oracle.rel_err(op.diag(), K.diag()) < 1e-12
    u = torch.randn(13, 3, dtype=torch.float64)
    assert oracle.rel_err(op.mv(u).reshape(-1), K.as_matrix() @ u.reshape(-1)) < 1e-6
    # random outputs (Monte-Carlo Fisher): the seed picks the sampled labels
    xd, yd = x.double(), y
    model = model.double()
    diags = {}
    for seed in (0, 1):
        Kmc = tl.ntk(model, (xd, yd), output="mc", seed=seed, batch_size=4)
        Tmc = ntk_tiled(model, (xd, yd), block=4, output="mc", seed=seed)
        Omc = NTKOperator(model, (xd, yd), output="mc", seed=seed, batch_size=4)
        assert torch.equal(Tmc.data, Kmc.data)
        assert oracle.rel_err(Omc.diag(), Kmc.diag()) < 1e-12
        diags[seed] = Omc.diag()
    assert not torch.equal(diags[0], diags[1])


def _shuffling(x, y):
    return DataLoader(TensorDataset(x, y), batch_size=3, shuffle=True)


def test_every_operator_kind_refuses_shuffling_with_one_message():
    model, x, y = problem()
    loader = _shuffling(x, y)
    messages = set()
    makers = [
        lambda: PMatImplicit(Engine(model, "mc"), loader),  # Monte-Carlo samples are tied to batch positions
        lambda: tl.fim(model, loader, "mc", "implicit"),
        lambda: PushForwardImplicit(Engine(model, "raw"), loader),
        lambda: PullBackImplicit(Engine(model, "raw"), loader),
        lambda: tl.jacobian(model, loader, implicit=True),
        lambda: NTKOperator(model, loader),
    ]
    for make in makers:
        with pytest.raises(InvalidInputError) as info:
            make()
        msg = str(info.value)
        assert "shuffles" in msg and "shuffle=False" in msg
        messages.add(msg.split("(")[0])
    assert len(messages) == 1
    # a deterministic Fisher is a sum over examples: any order gives the same matrix
    F = tl.fim(model, loader, "exact", "implicit")
    assert isinstance(F, MatrixFreeOperator)


def test_ntk_and_jacobian_distributed_need_a_process_group():
    model, x, _ = problem()
    for fn in (lambda: tl.ntk(model, x, distributed=True), lambda: tl.jacobian(model, x, distributed=True)):
        with pytest.raises(InvalidInputError, match="init_process_group"):
            fn()


def test_output_block_target_still_patchable(monkeypatch):
    model, x, y = problem()
    eng = Engine(model, "exact")
    monkeypatch.setattr(engine_mod, "OUTPUT_BLOCK_ELEMENTS", 1)
    assert [c.n_outputs for c in eng.capture_blocks((x, y), 0)] == [1, 1]
