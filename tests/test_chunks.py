"""Merged chunks for passes that sum over examples (tangentlab/engine/chunks.py): the same
matrices as batch by batch (float64), batches concatenated only where allowed."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import tangentlab as tl
from tangentlab.engine import chunks
from tangentlab.engine.engine import make_engine


def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 7), nn.Tanh(), nn.Linear(7, 3)).double()


def _loader(n=40, bs=6):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 5, generator=g, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=bs)


@pytest.mark.parametrize("rep", ["dense", "diag", "blockdiag", "kfac", "ekfac", "quasidiag"])
@pytest.mark.parametrize("kind", ["exact", "empirical"])
def test_merged_chunks_give_the_same_matrix(rep, kind, monkeypatch):
    model, data = _mlp(), _loader()
    merged = tl.fim(model, data, kind=kind, representation=rep, progress=False)
    monkeypatch.setattr(chunks, "MERGE_MAX_EXAMPLES", 1)  # limit = the batch itself: no merging
    plain = tl.fim(model, data, kind=kind, representation=rep, progress=False)
    torch.testing.assert_close(merged.to_dense(), plain.to_dense(), rtol=1e-12, atol=1e-14)


def test_implicit_trace_and_diag_merged_equal_dense():
    model, data = _mlp(), _loader()
    dense = tl.fim(model, data, kind="exact", representation="dense", progress=False).to_dense()
    imp = tl.fim(model, data, kind="exact", representation="implicit", progress=False)
    torch.testing.assert_close(imp.trace(), torch.diagonal(dense).sum(), rtol=1e-12, atol=0)
    torch.testing.assert_close(imp.diag().flat(), torch.diagonal(dense), rtol=1e-12, atol=1e-14)


def _chunk_sizes(batches, limit, random=False):
    eng = make_engine(_mlp(), output="mc" if random else "raw")
    eng.merge_limit = limit
    return [b[0].shape[0] for _, b, _ in chunks.merge_batches(iter(enumerate(batches)), eng)]


def test_chunks_keep_order_respect_the_limit_and_never_split():
    xs = [torch.randn(n, 5) for n in (6, 6, 6, 6, 3)]
    assert _chunk_sizes([(x,) for x in xs], 12) == [12, 12, 3]
    assert _chunk_sizes([(x,) for x in xs], 4) == [6, 6, 6, 6, 3]  # a batch larger than the limit passes whole
    assert _chunk_sizes([(x,) for x in xs], None) == [27]  # unknown: the route plan's probe sets it
    eng = make_engine(_mlp())
    eng.merge_limit = 100
    out = torch.cat([b[0] for _, b, _ in chunks.merge_batches(iter(enumerate([(x,) for x in xs])), eng)])
    assert torch.equal(out, torch.cat(xs))


def test_batches_of_different_shapes_stay_apart():
    seqs = [(torch.randn(4, 7, 5),), (torch.randn(4, 7, 5),), (torch.randn(4, 7, 5),), (torch.randn(4, 9, 5),),
            (torch.randn(4, 9, 5),)]
    assert _chunk_sizes(seqs, 100) == [12, 8]


def test_the_limit_counts_output_gradients_per_example():
    model, data = _mlp(), _loader()
    eng = make_engine(model, output="exact")
    cap = next(eng.captures(data))
    per_example = (7 + 3) * cap.total_outputs
    big = 1 << 40
    assert chunks.merge_limit(cap, big) == min(chunks.MERGE_MAX_EXAMPLES, chunks.MERGE_ELEMENTS // per_example)
    assert chunks.merge_limit(cap, 16 * 20 * per_example) == 20  # a sixteenth of a small budget
    assert chunks.merge_limit(cap, 0) == cap.n  # never less than the batch


def test_random_outputs_are_not_merged():
    model, data = _mlp(), _loader()
    eng = make_engine(model, output="mc")
    sizes = [cap.n for cap in eng.captures(data, merge=True)]
    assert sizes == [6] * 6 + [4]


def test_sums_are_captured_in_merged_chunks_from_the_first_batch():
    model, data = _mlp(), _loader()
    eng = make_engine(model, output="exact")
    assert [cap.n for cap in eng.captures(data, merge=True)] == [40]  # the plan's probe set the limit
    assert [cap.n for cap in eng.captures(data, merge=True)] == [40]  # every pass cuts the same chunks
    assert [cap.n for cap in eng.captures(data)] == [6] * 6 + [4]  # no merge asked


def test_a_failing_chunk_names_the_users_batch_and_row():
    model, data = _mlp(), _loader()
    x, y = data.dataset.tensors
    x = x.clone()
    x[27, 2] = float("nan")  # batch 4 (examples 24..29), row 3
    loader = DataLoader(TensorDataset(x, y), batch_size=6)
    with pytest.raises(tl.errors.NonFiniteError, match=r"batch 4, element 0: .*examples \[3\]"):
        tl.fim(model, loader, kind="exact", representation="diag", progress=False)


def test_the_plan_probe_sets_the_limit_from_the_outputs_and_layer_outputs():
    model, data = _mlp(), _loader()
    eng = make_engine(model, output="exact")
    eng.plan(next(iter(data)))
    assert eng.merge_limit == chunks.limit_for(3 * (7 + 3), eng.budget.max_elements(eng.dtype))
