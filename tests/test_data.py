"""Data handling: what counts as data, what is refused (with a clear error), and that
normalizations use exactly the examples visited (drop_last, batch samplers)."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch.utils.data import (
    BatchSampler,
    DataLoader,
    RandomSampler,
    Sampler,
    SequentialSampler,
    SubsetRandomSampler,
    TensorDataset,
    WeightedRandomSampler,
)

import tangentlab as tl
from tangentlab.data import Batches
from tangentlab.errors import InvalidInputError

from . import oracle
from .models import mlp, tokens

TOL = 1e-10


def pvec(model):
    return tl.PVector.from_model(model).detach()


# --------------------------------------------------------------------------------------
# entry points that read data, each forced to touch it (implicit objects are lazy)
def _use(F_):
    return F_.mv(tl.PVector.from_flat(F_.space, torch.ones(F_.space.numel)))


ENTRIES = {
    "fim_dense": lambda m, d: tl.fim(m, d, "regression"),
    "fim_diag": lambda m, d: tl.fim(m, d, "regression", "diag"),
    "fim_implicit": lambda m, d: tl.fim(m, d, "regression", "implicit"),
    "fim_implicit_mv": lambda m, d: _use(tl.fim(m, d, "regression", "implicit")),
    "ntk": lambda m, d: tl.ntk(m, d),
    "ntk_second_set": lambda m, d: tl.ntk(m, torch.randn(3, 6), d),
    "jacobian": lambda m, d: tl.jacobian(m, d),
    "jacobian_implicit": lambda m, d: tl.jacobian(m, d, implicit=True),
}


# --------------------------------------------------------------------------------------
# 5. empty data
def _empty(kind: str):
    e = torch.randn(0, 6)
    if kind == "tensor":
        return e
    if kind == "tuple_of_tensors":
        return (e, torch.zeros(0, dtype=torch.long))
    if kind == "empty_loader":
        return DataLoader(TensorDataset(e), batch_size=4)
    if kind == "drop_last_loader":  # 3 examples, batches of 4, incomplete batch dropped
        return DataLoader(TensorDataset(torch.randn(3, 6)), batch_size=4, drop_last=True)
    if kind == "empty_list":
        return []
    if kind == "empty_tuple":
        return ()
    if kind == "list_of_empty_batches":
        return [(e,), (e,)]
    raise AssertionError(kind)


EMPTY = ["tensor", "tuple_of_tensors", "empty_loader", "drop_last_loader", "empty_list", "empty_tuple",
         "list_of_empty_batches"]


@pytest.mark.parametrize("entry", ["fim_dense", "fim_implicit", "ntk_second_set", "jacobian",
                                   "jacobian_implicit"])
@pytest.mark.parametrize("kind", EMPTY)
def test_empty_data(kind, entry):
    model, _, _ = mlp()
    with pytest.raises(InvalidInputError) as info:
        ENTRIES[entry](model, _empty(kind))
    msg = str(info.value)
    assert "empty" in msg
    if kind == "drop_last_loader":
        assert "drop_last" in msg


def test_empty_batches_are_skipped_not_counted():
    model, x, y = mlp(7)
    e = x[:0]
    data = [(e, y[:0]), (x[:3], y[:3]), (e, y[:0]), (x[3:], y[3:])]
    F_ = tl.fim(model, data, "exact")
    assert oracle.rel_err(F_.to_dense(), oracle.fisher_exact(model, x)) < TOL


# --------------------------------------------------------------------------------------
# 5. ragged batches
def _ragged(kind: str):
    x, y = torch.randn(10, 6), torch.randint(0, 4, (10,))
    if kind == "tuple_of_tensors":
        return (x, y[:7]), "ragged batch 0: element 0 has 10 examples but element 1 has 7"
    if kind == "list_second_batch":
        return ([(x[:3], y[:3]), (x[3:], y[3:5])],
                "ragged batch 1: element 0 has 7 examples but element 1 has 2")
    if kind == "loader_third_batch":  # batches of 4, 4, 2: the last one loses a target
        loader = DataLoader(TensorDataset(x, y), batch_size=4, collate_fn=lambda it: _cut(it, 2))
        return loader, "ragged batch 2: element 0 has 2 examples but element 1 has 1"
    if kind == "third_element":
        return (x, y, torch.randn(9)), "ragged batch 0: element 0 has 10 examples but element 2 has 9"
    raise AssertionError(kind)


def _cut(items, bad):
    xs = torch.stack([a for a, _ in items])
    ys = torch.stack([b for _, b in items])
    if xs.shape[0] == bad:
        ys = ys[:1]
    return xs, ys


@pytest.mark.parametrize("entry", ["fim_dense", "fim_implicit_mv", "ntk", "jacobian"])
@pytest.mark.parametrize("kind", ["tuple_of_tensors", "list_second_batch", "loader_third_batch",
                                  "third_element"])
def test_ragged_batches(kind, entry):
    model, _, _ = mlp()
    data, expected = _ragged(kind)
    with pytest.raises(InvalidInputError) as info:
        ENTRIES[entry](model, data)
    msg = str(info.value)
    assert expected in msg and "leading dimensions must match" in msg


@pytest.mark.parametrize("entry", ["fim_implicit", "jacobian_implicit"])
def test_ragged_list_refused_when_the_lazy_object_is_built(entry):
    model, _, _ = mlp()
    data, expected = _ragged("list_second_batch")
    with pytest.raises(InvalidInputError, match=expected):
        ENTRIES[entry](model, data)


# --------------------------------------------------------------------------------------
# 5. one-shot iterators
def _one_shot(kind: str):
    x = torch.randn(6, 6)
    if kind == "generator":
        return (b for b in [x[:3], x[3:]])
    if kind == "iter_of_list":
        return iter([x[:3], x[3:]])
    if kind == "map":
        return map(lambda t: (t,), [x[:3], x[3:]])
    if kind == "loader_iterator":
        return iter(DataLoader(TensorDataset(x), batch_size=3))
    raise AssertionError(kind)


@pytest.mark.parametrize("entry", ["fim_dense", "fim_implicit", "ntk_second_set", "jacobian_implicit"])
@pytest.mark.parametrize("kind", ["generator", "iter_of_list", "map", "loader_iterator"])
def test_one_shot_iterators(kind, entry):
    model, _, _ = mlp()
    with pytest.raises(InvalidInputError) as info:
        ENTRIES[entry](model, _one_shot(kind))
    msg = str(info.value)
    assert "one-shot iterator" in msg and "DataLoader" in msg and "several passes" in msg


def test_reiterable_custom_object_is_accepted():
    model, x, y = mlp(7)

    class Source:
        def __iter__(self):
            yield x[:4], y[:4]
            yield [x[4:], y[4:]]  # lists work as batches too

    F_ = tl.fim(model, Source(), "exact")
    assert oracle.rel_err(F_.to_dense(), oracle.fisher_exact(model, x)) < TOL
    v = pvec(model)
    assert torch.allclose(tl.fim(model, Source(), "exact", "implicit").mv(v).flat(), F_.mv(v).flat())


# --------------------------------------------------------------------------------------
# 5. dict batches and other unusable objects
class DictDataset(torch.utils.data.Dataset):
    def __init__(self, n=6):
        self.x, self.y = torch.randn(n, 6), torch.randint(0, 4, (n,))

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return {"x": self.x[i], "y": self.y[i]}


# (the implicit objects are lazy: a loader is read when a product is asked for: fim_implicit_mv)
@pytest.mark.parametrize("entry", sorted(set(ENTRIES) - {"fim_implicit", "jacobian_implicit"}))
def test_dict_batches_get_advice(entry):
    model, _, _ = mlp()
    loader = DataLoader(DictDataset(), batch_size=4)
    with pytest.raises(InvalidInputError) as info:
        ENTRIES[entry](model, loader)
    msg = str(info.value)
    assert "batch 0 is a dict" in msg and "['x', 'y']" in msg
    assert "collate_fn" in msg and "tuples" in msg


def test_dict_batches_workaround_from_the_advice_works():
    model, _, _ = mlp()
    ds = DictDataset()
    loader = DataLoader(ds, batch_size=4)
    F_ = tl.fim(model, [(b["x"], b["y"]) for b in loader], "exact")
    assert oracle.rel_err(F_.to_dense(), oracle.fisher_exact(model, ds.x)) < TOL
    loader = DataLoader(ds, batch_size=4, collate_fn=lambda it: (torch.stack([d["x"] for d in it]),
                                                                 torch.stack([d["y"] for d in it])))
    assert oracle.rel_err(tl.fim(model, loader, "exact").to_dense(), oracle.fisher_exact(model, ds.x)) < TOL


@pytest.mark.parametrize("entry", ["fim_dense", "fim_implicit", "ntk", "jacobian_implicit"])
def test_dict_as_data(entry):
    model, x, y = mlp()
    with pytest.raises(InvalidInputError) as info:
        ENTRIES[entry](model, {"x": x, "y": y})
    msg = str(info.value)
    assert "data is a dict" in msg and "['x', 'y']" in msg and "(d['x'], d['y'])" in msg


@pytest.mark.parametrize("data,words", [
    (5, ["type int", "DataLoader"]),
    (None, ["type NoneType"]),
    (torch.tensor(1.0), ["0-d tensor", "example dimension"]),
    ([torch.tensor(1.0)], ["batch 0", "0-d tensor"]),
    ([(torch.randn(2, 6),), ("x", torch.randn(2))], ["batch 1", "element 0", "str"]),
    ([torch.randn(3, 6), 7], ["batch 1 has type int"]),
    ([()], ["batch 0 is an empty tuple"]),
], ids=["int", "none", "scalar_tensor", "list_of_scalar", "string_input", "int_batch", "empty_batch"])
def test_unusable_objects(data, words):
    model, _, _ = mlp()
    with pytest.raises(InvalidInputError) as info:
        tl.fim(model, data, "regression")
    for w in words:
        assert w in str(info.value), (w, str(info.value))


# --------------------------------------------------------------------------------------
# 6. drop_last and batch samplers: normalize by the examples actually seen
class Uneven(Sampler):
    """Uneven batches, skipping examples 7, 8 and 10."""

    batches = [[0], [1, 2, 3, 4], [9, 5], [6]]

    def __iter__(self):
        return iter([list(b) for b in self.batches])

    def __len__(self):
        return len(self.batches)


def _loader(kind: str, ds):
    """A loader over 11 examples and the indices it visits (None: order is random)."""
    if kind == "drop_last":
        return DataLoader(ds, batch_size=4, drop_last=True), list(range(8))
    if kind == "batch_sampler_sequential":
        bs = BatchSampler(SequentialSampler(range(11)), batch_size=3, drop_last=True)
        return DataLoader(ds, batch_sampler=bs), list(range(9))
    if kind == "batch_sampler_subset_random":
        idx = [3, 7, 1, 10, 5]
        gen = torch.Generator().manual_seed(0)
        bs = BatchSampler(SubsetRandomSampler(idx, generator=gen), batch_size=2, drop_last=False)
        return DataLoader(ds, batch_sampler=bs), sorted(idx)
    if kind == "custom_uneven":
        return DataLoader(ds, batch_sampler=Uneven()), [i for b in Uneven.batches for i in b]
    if kind == "shuffle_drop_last":  # which 8 examples are seen varies: keep all of one epoch size
        return DataLoader(ds, batch_size=11, shuffle=True, drop_last=True), list(range(11))
    raise AssertionError(kind)


LOADERS = ["drop_last", "batch_sampler_sequential", "batch_sampler_subset_random", "custom_uneven",
           "shuffle_drop_last"]


def _as_dense(F_):
    if isinstance(F_, tl.PMatImplicit):
        v = torch.randn(F_.space.numel)
        return F_.mv(tl.PVector.from_flat(F_.space, v)).flat(), v
    return F_.to_dense(), None


@pytest.mark.parametrize("kind,representation",
                         [(k, r) for k in LOADERS for r in ("dense", "implicit")]
                         + [(k, r) for k in ("drop_last", "custom_uneven")
                            for r in ("diag", "blockdiag", "lowrank")])
def test_fisher_normalized_by_examples_seen(kind, representation):
    model, x, y = mlp(11)
    loader, seen = _loader(kind, TensorDataset(x, y))
    F_ = tl.fim(model, loader, "exact", representation)
    ref = oracle.fisher_exact(model, x[seen])
    if representation == "diag":
        ref = torch.diag(torch.diagonal(ref))
    if representation == "blockdiag":
        ref = torch.block_diag(*[ref[lay.slice, lay.slice] for lay in F_.space.layers])
    got, v = _as_dense(F_)
    if v is not None:
        ref = ref @ v
    assert oracle.rel_err(got, ref) < TOL
    assert oracle.rel_err(F_.trace(), torch.trace(oracle.fisher_exact(model, x[seen])) if
                          representation != "blockdiag" else ref.trace()) < TOL


@pytest.mark.parametrize("kind", ["drop_last", "batch_sampler_sequential", "custom_uneven"])
def test_empirical_fisher_and_centering_with_samplers(kind):
    model, x, y = mlp(11)
    loader, seen = _loader(kind, TensorDataset(x, y))
    F_ = tl.fim(model, loader, "empirical")
    assert oracle.rel_err(F_.to_dense(), oracle.empirical_fisher(model, x[seen], y[seen])) < TOL
    G = tl.fim(model, loader, "empirical", centering=True)
    g = oracle.loss_grads(model, x[seen], y[seen])
    g = g - g.mean(0)
    assert oracle.rel_err(G.to_dense(), g.T @ g / len(seen)) < TOL


@pytest.mark.parametrize("kind", ["drop_last", "batch_sampler_sequential", "custom_uneven"])
def test_ntk_and_jacobian_rows_follow_the_visiting_order(kind):
    model, x, y = mlp(11)
    loader, seen = _loader(kind, TensorDataset(x, y))
    assert oracle.rel_err(tl.ntk(model, loader).to_dense(), oracle.ntk(model, x[seen])) < TOL
    assert oracle.rel_err(tl.ntk(model, loader, x[:2]).to_dense(), oracle.ntk(model, x[seen], x[:2])) < TOL
    jref = oracle.jacobian(model, x[seen])
    assert oracle.rel_err(tl.jacobian(model, loader).data, jref) < TOL
    Ji = tl.jacobian(model, loader, implicit=True)
    v = torch.randn(jref.shape[2])
    assert oracle.rel_err(Ji.mv(tl.PVector.from_flat(Ji.space, v)).tensor, jref @ v) < TOL
    u = torch.randn(len(seen), 4)
    assert oracle.rel_err(Ji.T.mv(tl.FVector(u)).flat(), torch.einsum("ncp,nc->p", jref, u)) < TOL
    assert Batches(loader).count() == len(seen)


@pytest.mark.parametrize("sampler", ["shuffle", "subset_random", "weighted_random",
                                     "batch_sampler_random"])
def test_implicit_jacobian_refuses_random_order(sampler):
    model, x, y = mlp(8)
    ds = TensorDataset(x, y)
    if sampler == "shuffle":
        loader = DataLoader(ds, batch_size=3, shuffle=True)
    elif sampler == "subset_random":
        loader = DataLoader(ds, batch_size=3, sampler=SubsetRandomSampler(range(8)))
    elif sampler == "weighted_random":
        sam = WeightedRandomSampler(torch.ones(8), 8, replacement=False)
        loader = DataLoader(ds, batch_size=3, sampler=sam)
    else:
        loader = DataLoader(ds, batch_sampler=BatchSampler(RandomSampler(ds), 3, False))
    with pytest.raises(InvalidInputError) as info:
        tl.jacobian(model, loader, implicit=True)
    assert "shuffles" in str(info.value) and "shuffle=False" in str(info.value)
    # order-free quantities are fine with a random order
    F_ = tl.fim(model, loader, "exact")
    assert oracle.rel_err(F_.to_dense(), oracle.fisher_exact(model, x)) < TOL


def test_batch_size_splits_tensors_without_changing_the_result():
    model, x, y = mlp(11)
    ref = oracle.fisher_exact(model, x)
    for bs in (1, 4, 11, 1000):
        assert oracle.rel_err(tl.fim(model, (x, y), "exact", batch_size=bs).to_dense(), ref) < TOL
    b = Batches((x, y), 4)
    assert [t[0].shape[0] for t in b] == [4, 4, 3] and b.count() == 11 and len(b) == 3


# --------------------------------------------------------------------------------------
# 7. integer inputs for embeddings
TOKEN_ENTRIES = ["fim_exact_dense", "fim_exact_diag", "fim_empirical", "fim_mc_vs_generic", "ntk",
                 "ntk_two_sets", "jacobian", "jacobian_implicit"]


@pytest.mark.parametrize("entry,dtype", [(e, torch.long) for e in TOKEN_ENTRIES]
                         + [(e, torch.int32) for e in ("fim_exact_dense", "jacobian", "ntk_two_sets")],
                         ids=lambda v: str(v).replace("torch.", "") if isinstance(v, torch.dtype) else v)
def test_integer_token_inputs(entry, dtype):
    model, x, y = tokens(7)
    xi = x.to(dtype)
    before = xi.clone()
    kw = dict(batch_size=4)
    with warnings.catch_warnings():
        warnings.simplefilter("error", tl.GenericRouteWarning)  # all layers on the hook route
        if entry == "fim_exact_dense":
            got, ref = tl.fim(model, (xi, y), "exact", **kw).to_dense(), oracle.fisher_exact(model, x)
        elif entry == "fim_exact_diag":
            got = tl.fim(model, (xi, y), "exact", "diag", **kw).diag().flat()
            ref = torch.diagonal(oracle.fisher_exact(model, x))
        elif entry == "fim_empirical":
            got = tl.fim(model, (xi, y), "empirical", **kw).to_dense()
            ref = oracle.empirical_fisher(model, x, y)
        elif entry == "fim_mc_vs_generic":  # same samples on both routes
            got = tl.fim(model, (xi, y), "mc", n_samples=3, **kw).to_dense()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                ref = tl.fim(model, (xi, y), "mc", n_samples=3, route="generic", **kw).to_dense()
        elif entry == "ntk":
            got, ref = tl.ntk(model, xi, **kw).to_dense(), oracle.ntk(model, x)
        elif entry == "ntk_two_sets":
            got, ref = tl.ntk(model, xi, xi[:3], **kw).to_dense(), oracle.ntk(model, x, x[:3])
        elif entry == "jacobian":
            got, ref = tl.jacobian(model, xi, **kw).data, oracle.jacobian(model, x)
        else:
            J = tl.jacobian(model, xi, implicit=True, **kw)
            v = torch.randn(J.space.numel)
            got = J.mv(tl.PVector.from_flat(J.space, v)).tensor
            ref = oracle.jacobian(model, x) @ v
    assert oracle.rel_err(got, ref) < TOL
    assert torch.equal(xi, before) and xi.dtype == dtype


def test_integer_tokens_from_a_loader():
    model, x, y = tokens(10)
    loader = DataLoader(TensorDataset(x, y), batch_size=3)
    F_ = tl.fim(model, loader, "exact", "lowrank")
    assert oracle.rel_err(F_.to_dense(), oracle.fisher_exact(model, x)) < TOL


def test_floating_token_ids_are_not_silently_cast():
    """Float tokens of another dtype are refused by the dtype check, naming the batch."""
    model, x, _ = tokens(4)
    with pytest.raises(tl.MixedDeviceDtypeError, match="batch 0, element 0 has dtype torch.float32"):
        tl.ntk(model, x.float())
