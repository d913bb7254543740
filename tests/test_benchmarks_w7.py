"""W7 (transformers) of the benchmark suite: models, flop counts, and tangentlab's rows
against the torch.func recipes on a small case (float32, in process, no peers needed)."""

from __future__ import annotations

import warnings

import pytest
import torch

from benchmarks import flops, models
from benchmarks.adapters import by_name
from benchmarks.adapters.base import CannotComputeError
from benchmarks.run import rel_err
from benchmarks.workloads import WORKLOADS, Case


@pytest.fixture(autouse=True)
def float32():
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float32)
    yield
    torch.set_default_dtype(old)


@pytest.mark.parametrize("style", ["encoder", "gpt"])
def test_models_have_the_workload_size(style):
    model = models.transformer(style)
    assert models.n_params(model) == 70_794
    assert model(torch.randint(0, 50, (3, 12))).shape == (3, 10)


def test_flop_shapes_by_hand():
    """Per encoder layer: in_proj 64→192 and out_proj on 12 tokens, Q Kᵀ (12·64·12) and
    A V (12·12·64) without parameters; the GPT-style model does the same multiply-adds."""
    x1 = torch.randint(0, 50, (1, 12))
    enc = flops.layer_shapes(models.transformer("encoder"), x1)
    gpt = flops.layer_shapes(models.transformer("gpt"), x1)
    by = {s.name: s for s in enc}
    assert by["emb"] == flops.LayerShape("emb", 12, 1, 64, False)
    assert by["encoder.layers.0.self_attn.in_proj"] == flops.LayerShape(
        "encoder.layers.0.self_attn.in_proj", 12, 64, 192, True)
    assert by["encoder.layers.1.self_attn.scores"].macs == 12 * 64 * 12
    assert by["encoder.layers.1.self_attn.mix"].macs == 12 * 12 * 64
    assert not by["encoder.layers.1.self_attn.mix"].params
    assert len([s for s in enc if not s.params]) == len([s for s in gpt if not s.params]) == 4
    assert flops.forward(enc, 32) == flops.forward(gpt, 32)
    # backward to the outputs: both operands of each attention product, the embedding's input never
    attn = sum(s.macs for s in enc if not s.params)
    assert flops.backward_to_outputs(enc, 1, 1) == 2.0 * (sum(s.macs for s in enc) + attn - by["emb"].macs)


@pytest.mark.parametrize("style", ["encoder", "gpt"])
def test_tangentlab_rows_agree_with_torch_func(style):
    wl = WORKLOADS["W7"]
    refs = {"NTK": "torch.func vmap(jacrev/grad)", "diag": "torch.func vmap(jacrev/grad)",
            "mv": "torch.func jvp/vjp products", "per-example grads": "torch.func vmap(jacrev/grad)"}
    for q, ref in refs.items():
        task, quantity = wl.row_task(q)
        results = []
        for name in (ref, "tangentlab"):
            case = wl.build({"model": style, "n": 3})
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                results.append(getattr(by_name(name), task)(case, quantity)())
        assert rel_err(results[1], results[0]) < 1e-4, (style, q)


class _Recurrent(torch.nn.Module):
    """An LSTM classifier: no Kronecker-factored representation covers the LSTM."""

    def __init__(self):
        super().__init__()
        self.rnn = torch.nn.LSTM(4, 5, batch_first=True)
        self.head = torch.nn.Linear(5, 3)

    def forward(self, x):
        return self.head(self.rnn(x)[0][:, -1])


@pytest.mark.parametrize("q", ["kfac", "ekfac"])
def test_a_refusal_is_reported_as_such(q):
    model = _Recurrent().eval()
    case = Case(model, torch.randn(3, 6, 4), v={k: torch.randn(p.shape) for k, p in model.named_parameters()},
                batch_size=3, n_classes=3)
    run = by_name("tangentlab").fisher(case, q)
    with pytest.raises(CannotComputeError, match=r"tangentlab: UnsupportedLayerError: .*rnn \(LSTM\)"), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        run()
