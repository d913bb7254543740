"""nn.MultiheadAttention and GPT-style attention on the hook route (taps), against the float64
torch.func oracle: every verb and representation, masks, layouts, projections, KFAC factors,
bad input."""

from __future__ import annotations

import warnings

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import tangentlab as tl
from tangentlab.engine import Engine
from tangentlab.engine.plan import GenericRouteWarning, TrainingModeWarning
from tangentlab.errors import InvalidInputError
from tangentlab.layers.attention import MultiheadAttentionRule
from tangentlab.layers.linear import LinearRule

from . import oracle
from .cases import REPRESENTATIONS, restrict

TOL = 1e-10
VOCAB = 11


class AttentionNet(nn.Module):
    """Embedding → MultiheadAttention (self or cross) → tanh → mean over positions → Linear."""

    def __init__(self, heads: int = 2, batch_first: bool = True, cross: bool = False, kpm: str | None = None,
                 mask: str | None = None, need_weights: bool = False, use_weights: bool = False, **kw):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 8)
        self.att = nn.MultiheadAttention(8, heads, batch_first=batch_first, **kw)
        if cross:  # keys and values from other tokens (and other widths with kdim/vdim)
            self.kp = nn.Linear(8, kw.get("kdim") or 8)
            self.vp = nn.Linear(8, kw.get("vdim") or 8)
        self.out = nn.Linear(8, 3)
        self.bf, self.cross, self.kpm, self.mask = batch_first, cross, kpm, mask
        self.need_weights, self.use_weights = need_weights, use_weights

    def forward(self, x):
        h = self.emb(x)
        k = self.kp(h[:, 1:]) if self.cross else h
        v = self.vp(h[:, 1:]) if self.cross else h
        pad = (x[:, 1:] if self.cross else x) == 0  # token 0 is padding
        kpm = None if self.kpm is None else (pad if self.kpm == "bool" else pad.to(h.dtype) * -3.0)
        length, src = x.shape[1], k.shape[1]
        attn_mask, causal = None, False
        if self.mask == "causal":
            attn_mask, causal = torch.triu(torch.ones(length, src, dtype=torch.bool), 1), True
        elif self.mask == "float3d":  # per example and head: (N·H, L, S)
            rel = (x[:, :, None] - (x[:, 1:] if self.cross else x)[:, None, :]).to(h.dtype).abs() * -0.1
            attn_mask = rel.repeat_interleave(self.att.num_heads, 0) * torch.arange(1.0, 1.0 + self.att.num_heads
                                                                                     ).repeat(x.shape[0])[:, None, None]
        if not self.bf:
            h, k, v = h.transpose(0, 1), k.transpose(0, 1), v.transpose(0, 1)
        y, w = self.att(h, k, v, key_padding_mask=kpm, attn_mask=attn_mask, is_causal=causal,
                        need_weights=self.need_weights, average_attn_weights=not self.use_weights)
        if not self.bf:
            y = y.transpose(0, 1)
        z = torch.tanh(y).mean(1)
        if self.use_weights:  # per-head weights (N, H, L, S) feed the output too
            z = z + w.sum((1, 2))[:, :1]
        return self.out(z)


CONFIGS = {
    "packed": {},
    "seq_first": {"batch_first": False},
    "bias_kv": {"add_bias_kv": True},
    "zero_attn": {"add_zero_attn": True, "kpm": "bool"},
    "no_bias": {"bias": False},
    "separate_kdim_vdim": {"cross": True, "kdim": 5, "vdim": 6},
    "cross_packed_kpm_bool": {"cross": True, "kpm": "bool"},
    "kpm_float": {"kpm": "float", "heads": 4},
    "causal": {"mask": "causal"},
    "causal_weights": {"mask": "causal", "need_weights": True},
    "mask3d_weights_used": {"mask": "float3d", "need_weights": True, "use_weights": True},
}


def _tokens(n: int = 5, length: int = 4) -> torch.Tensor:
    x = torch.randint(1, VOCAB, (n, length))
    x[1, -1] = 0  # some padding (never a whole row)
    x[3, 0] = 0
    return x


def _model(name: str):
    torch.manual_seed(sum(map(ord, name)))
    kw = dict(CONFIGS[name])
    return AttentionNet(**kw).double().eval(), _tokens()


def _quiet(fn, *args, **kw):
    """Run ``fn`` failing on a generic-route warning (the attention must take the fast path)."""
    with warnings.catch_warnings():
        warnings.simplefilter("error", GenericRouteWarning)
        return fn(*args, **kw)


@pytest.fixture(params=sorted(CONFIGS))
def config(request):
    return request.param


def test_forward_matches_torch(config):
    """The rule's functional forward computes what the module computes."""
    model, x = _model(config)
    want = model(x)
    eng = Engine(model, "raw")
    cap = _quiet(eng.capture, (x,), 0)
    assert torch.allclose(cap.outputs, want, atol=1e-12, rtol=1e-12)
    assert {lc.layer.module for lc in cap.layers} >= {"att", "att.out_proj"}
    assert not cap.generic
    assert "forward" not in model.att.__dict__  # the module's own forward is back


def test_ntk_and_jacobian(config):
    model, x = _model(config)
    K = _quiet(tl.ntk, model, x)
    assert oracle.rel_err(K.to_dense(), oracle.ntk(model, x)) < TOL
    x2 = _tokens(4)
    K12 = _quiet(tl.ntk, model, x, x2)
    assert oracle.rel_err(K12.to_dense(), oracle.ntk(model, x, x2)) < TOL
    J = _quiet(tl.jacobian, model, x)
    assert oracle.rel_err(J.to_dense(), oracle.jacobian(model, x)) < TOL


def test_per_layer_ntk(config):
    model, x = _model(config)
    K = _quiet(tl.ntk, model, x, per_layer=True)
    names = [n for n, _ in model.att.named_parameters(recurse=False)]
    want = oracle.ntk(model, x, names=[f"att.{n}" for n in names])
    assert oracle.rel_err(K.layer("att").to_dense(), want) < TOL


@pytest.mark.parametrize("rep", REPRESENTATIONS)
def test_fisher_representations(config, rep):
    model, x = _model(config)
    F_o = oracle.fisher_exact(model, x)
    M = _quiet(tl.fim, model, (x,), "exact", rep, batch_size=3)
    R = restrict(rep, M.space, F_o)
    if rep != "implicit":
        assert oracle.rel_err(M.to_dense(), R) < TOL
    v = tl.PVector.from_flat(M.space, torch.randn(M.space.numel))
    assert oracle.rel_err(M.mv(v).flat(), R @ v.flat()) < TOL
    assert abs(float(M.vTMv(v)) - float(v.flat() @ R @ v.flat())) < TOL * float(v.flat() @ R @ v.flat())
    assert abs(float(M.trace()) - float(torch.trace(R))) < TOL * float(torch.trace(R))
    assert oracle.rel_err(M.diag().flat(), torch.diagonal(R)) < TOL


def test_per_example_gradients(config):
    """Per-example loss gradients (the empirical Fisher's tangent features)."""
    model, x = _model(config)
    y = torch.randint(0, 3, (x.shape[0],))
    E = _quiet(tl.fim, model, (x, y), "empirical", "dense")
    assert oracle.rel_err(E.to_dense(), oracle.empirical_fisher(model, x, y)) < TOL


def test_partial_selection():
    """Only some of the attention's parameters selected: materialized per-example gradients."""
    model, x = _model("bias_kv")
    names = ["att.in_proj_bias", "att.bias_v", "out.weight"]
    K = _quiet(tl.ntk, model, x, params=names)
    assert oracle.rel_err(K.to_dense(), oracle.ntk(model, x, names=names)) < TOL
    D = _quiet(tl.fim, model, (x,), "exact", "diag", params=names)
    assert oracle.rel_err(D.diag().flat(), torch.diagonal(oracle.fisher_exact(model, x, names=names))) < TOL


# ---- transformer blocks ------------------------------------------------------------------
class Encoder(nn.Module):
    """The issue's transformer, small: Embedding → 2-layer TransformerEncoder → mean → Linear."""

    def __init__(self, batch_first: bool = True, causal: bool = False, pad: bool = False):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, 8)
        layer = nn.TransformerEncoderLayer(8, 2, 12, dropout=0.0, batch_first=batch_first)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.head = nn.Linear(8, 3)
        self.bf, self.causal, self.pad = batch_first, causal, pad

    def forward(self, x):
        h = self.emb(x)
        n = x.shape[1]
        mask = nn.Transformer.generate_square_subsequent_mask(n, dtype=h.dtype) if self.causal else None
        kpm = (x == 0) if self.pad else None
        if not self.bf:
            h = h.transpose(0, 1)
        h = self.enc(h, mask=mask, is_causal=self.causal, src_key_padding_mask=kpm)
        if not self.bf:
            h = h.transpose(0, 1)
        return self.head(h.mean(1))


class GPTBlock(nn.Module):
    """A GPT/ViT-style block: nn.Linear q/k/v/out projections around scaled_dot_product_attention."""

    def __init__(self, d: int = 8, heads: int = 2):
        super().__init__()
        self.emb = nn.Embedding(VOCAB, d)
        self.q, self.k, self.v, self.o = (nn.Linear(d, d) for _ in range(4))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, 3)
        self.heads = heads

    def forward(self, x):
        h = self.emb(x)
        n, t, d = h.shape

        def split(z):
            return z.view(n, t, self.heads, d // self.heads).transpose(1, 2)

        a = F.scaled_dot_product_attention(split(self.q(h)), split(self.k(h)), split(self.v(h)), is_causal=True)
        h = self.ln(h + self.o(a.transpose(1, 2).reshape(n, t, d)))
        return self.head(h.mean(1))


@pytest.mark.parametrize("name", ["encoder", "encoder_causal_pad", "gpt"])
def test_transformer_blocks(name):
    torch.manual_seed(3)
    if name == "gpt":
        model = GPTBlock().double().eval()
    else:
        model = Encoder(causal=name != "encoder", pad=name != "encoder").double().eval()
    x = _tokens(4, 5)
    x[:, 0] = 1  # no query whose every key is masked (causal mask and padding at the start)
    eng = Engine(model, "raw")
    cap = _quiet(eng.capture, (x,), 0)
    assert not cap.generic, "every parameter on the hook route"
    K = _quiet(tl.ntk, model, x)
    assert oracle.rel_err(K.to_dense(), oracle.ntk(model, x)) < TOL
    Fd = _quiet(tl.fim, model, (x,), "exact", "diag")
    assert oracle.rel_err(Fd.diag().flat(), torch.diagonal(oracle.fisher_exact(model, x))) < TOL
    Fi = _quiet(tl.fim, model, (x,), "exact", "implicit")
    F_o = oracle.fisher_exact(model, x)
    v = tl.PVector.from_flat(Fi.space, torch.randn(Fi.space.numel))
    assert oracle.rel_err(Fi.mv(v).flat(), F_o @ v.flat()) < 1e-8
    assert abs(float(Fi.trace()) - float(torch.trace(F_o))) < TOL * float(torch.trace(F_o))


def test_out_proj_is_a_linear():
    """NonDynamicallyQuantizableLinear (MultiheadAttention.out_proj) takes the Linear rule."""
    mha = nn.MultiheadAttention(8, 2)
    reg = tl.LayerRegistry.default()
    assert isinstance(reg.lookup(mha.out_proj), LinearRule)
    assert isinstance(reg.lookup(mha), MultiheadAttentionRule)


def test_attention_called_twice_goes_generic_with_its_out_proj():
    """A module used twice takes the generic route; its out_proj (called only by the rule's
    forward) follows it, and the results stay exact."""

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(VOCAB, 8)
            self.att = nn.MultiheadAttention(8, 2, batch_first=True)
            self.out = nn.Linear(8, 3)

        def forward(self, x):
            h = self.emb(x)
            h = self.att(h, h, h, need_weights=False)[0]
            return self.out(self.att(h, h, h, need_weights=False)[0].mean(1))

    torch.manual_seed(0)
    model, x = Twice().double().eval(), _tokens()
    with pytest.warns(GenericRouteWarning, match=r"att \(is called 2 times.*att\.out_proj"):
        K = tl.ntk(model, x)
    assert oracle.rel_err(K.to_dense(), oracle.ntk(model, x)) < TOL


# ---- Kronecker factors ---------------------------------------------------------------------
def _attention_capture(model, x, output="raw"):
    eng = Engine(model, output)
    cap = _quiet(eng.capture, (x,), 0)
    lc = next(lc for lc in cap.layers if lc.layer.module == "att")
    return eng, lc


def _group_blocks(model, x, approx):
    """Per group q, k, v: (KFAC block ``B ⊗ A`` in the layout's (o, i) order, the exact block)."""
    eng, lc = _attention_capture(model, x)
    layout = lc.rule.kron_layout(lc.module)
    cols = torch.arange(layout.inputs)
    a, b = lc.rule.kfac_factors(lc.module, lc.feat, lc.g, cols, approx=approx)
    J = oracle.jacobian(model, x)  # (N, 1, P)
    Fx = J[:, 0].T @ J[:, 0]
    off = eng.space.layers[[lay.module for lay in eng.space.layers].index("att")].offset
    w_idx = layout.index["in_proj_weight"]
    b_idx = layout.index["in_proj_bias"]
    nw = lc.module.in_proj_weight.numel()
    kf, ex = [], []
    for gi in range(3):
        flat = torch.where(w_idx[gi] >= 0, w_idx[gi], b_idx[gi] + nw).reshape(-1) + off
        kf.append(torch.kron(b[gi], a[gi]))
        ex.append(Fx[flat][:, flat])
    return torch.block_diag(*kf), torch.block_diag(*ex)  # (q and k blocks may vanish: one key)


class ScalarAttention(AttentionNet):
    def forward(self, x):
        return super().forward(x)[:, :1]


def test_kfac_expand_exact_for_one_position():
    """One example, one output, one position: each group's gradient is g ãᵀ, so A ⊗ B is exact."""
    torch.manual_seed(1)
    model = ScalarAttention().double().eval()
    x = torch.tensor([[3]])
    kfac, exact = _group_blocks(model, x, "expand")
    assert oracle.rel_err(kfac, exact) < TOL


def test_kfac_reduce_exact_for_shared_inputs():
    """One example, one output, the same token at every position: the gradient is (Σ_t g_t) ãᵀ,
    which the reduce setting factors exactly (and the expand setting does not)."""
    torch.manual_seed(2)
    model = ScalarAttention().double().eval()
    x = torch.full((1, 4), 5)
    kfac, exact = _group_blocks(model, x, "reduce")
    assert oracle.rel_err(kfac, exact) < TOL
    assert oracle.rel_err(*_group_blocks(model, x, "expand")) > 1e-3


def test_kfac_factors_of_expand_and_reduce():
    """The factors against their definitions from the captured inputs and tapped gradients."""
    torch.manual_seed(4)
    model, x = AttentionNet(cross=True).double().eval(), _tokens()
    _, lc = _attention_capture(model, x)
    cols = torch.arange(9)
    h = model.emb(x).detach()
    inputs = [h, model.kp(h[:, 1:]).detach(), model.vp(h[:, 1:]).detach()]
    gs = [lc.g[:, :, :32].reshape(3, 5, 4, 8), lc.g[:, :, 32:56].reshape(3, 5, 3, 8),
          lc.g[:, :, 56:].reshape(3, 5, 3, 8)]  # taps q (L = 4), k and v (S = 3)
    for approx in ("expand", "reduce"):
        a, b = lc.rule.kfac_factors(lc.module, lc.feat, lc.g, cols, approx=approx)
        for gi, (xi, gi_) in enumerate(zip(inputs, gs)):
            ah = torch.cat([xi, torch.ones(*xi.shape[:2], 1)], -1)
            t = xi.shape[1]
            if approx == "expand":
                wa = torch.einsum("nti,ntj->ij", ah, ah)
                wb = torch.einsum("cnto,cntp->op", gi_, gi_) / t
            else:
                wa = ah.mean(1).T @ ah.mean(1)
                s = gi_.sum(2).reshape(-1, 8)
                wb = s.T @ s
            assert oracle.rel_err(a[gi], wa) < TOL and oracle.rel_err(b[gi], wb) < TOL
    with pytest.raises(InvalidInputError, match="approx"):
        lc.rule.kfac_factors(lc.module, lc.feat, lc.g, cols, approx="mean")


@pytest.mark.parametrize("config", ["packed", "cross_packed_kpm_bool", "seq_first"])
def test_kfac_and_ekfac_representations(config):
    """KFAC/EKFAC cover the attention (with the embedding and Linear layers): EKFAC's trace is
    the exact trace, its diagonal in the Kronecker eigenbasis exact; KFAC's verbs agree."""
    model, x = _model(config)
    F_o = oracle.fisher_exact(model, x)
    K = _quiet(tl.fim, model, (x,), "exact", "kfac", batch_size=3)
    E = _quiet(tl.fim, model, (x,), "exact", "ekfac", batch_size=3)
    t = float(torch.trace(F_o))
    assert abs(float(E.trace()) - t) < TOL * t
    v = tl.PVector.from_flat(K.space, torch.randn(K.space.numel))
    Kd = K.to_dense()
    assert oracle.rel_err(K.mv(v).flat(), Kd @ v.flat()) < TOL
    assert oracle.rel_err(E.mv(v).flat(), E.to_dense() @ v.flat()) < TOL
    # the attention's three diagonal blocks: A_γ ⊗ B_γ, symmetric positive semi-definite
    lay = next(lay for lay in K.space.layers if lay.module == "att")
    blk = Kd[lay.slice, lay.slice]
    assert torch.allclose(blk, blk.T, atol=1e-12) and torch.linalg.eigvalsh(blk).min() > -1e-10


def test_kron_layout_refused_for_separate_projections():
    model, x = _model("separate_kdim_vdim")
    assert MultiheadAttentionRule().kron_layout(model.att) is None
    with pytest.raises(tl.errors.UnsupportedLayerError, match="att"):
        _quiet(tl.fim, model, (x,), "exact", "kfac")
    M = _quiet(tl.fim, model, (x,), "exact", "mixed")  # block-diagonal for the attention
    lay = next(lay for lay in M.space.layers if lay.module == "att")
    F_o = oracle.fisher_exact(model, x)
    assert oracle.rel_err(M.to_dense()[lay.slice, lay.slice], F_o[lay.slice, lay.slice]) < TOL


# ---- bad input -----------------------------------------------------------------------------
def test_key_padding_mask_of_wrong_shape():
    class Bad(AttentionNet):
        def forward(self, x):
            h = self.emb(x)
            return self.out(self.att(h, h, h, key_padding_mask=(x[:, :-1] == 0))[0].mean(1))

    model, x = Bad().double().eval(), _tokens()
    with pytest.raises(InvalidInputError, match=r"MultiheadAttention at 'att'.*key_padding_mask has shape "
                                                r"\(5, 3\), expected \(N, S\) = \(5, 4\)"):
        tl.ntk(model, x)


def test_attn_mask_of_wrong_shape():
    class Bad(AttentionNet):
        def forward(self, x):
            h = self.emb(x)
            return self.out(self.att(h, h, h, attn_mask=torch.zeros(3, 3))[0].mean(1))

    with pytest.raises(InvalidInputError, match=r"attn_mask has shape \(3, 3\), expected \(L, S\) = \(4, 4\)"):
        tl.ntk(Bad().double().eval(), _tokens())


def test_dropout_in_training_mode_warns():
    model = AttentionNet(dropout=0.1).double().train()
    with pytest.warns(TrainingModeWarning, match="MultiheadAttention at 'att' is in training mode"):
        tl.fim(model, (_tokens(),), "exact", "diag")


def test_unbatched_sequences_refused():
    """A flat sequence (e.g. a list of sequences of different lengths read as one tensor each)
    reaches the attention unbatched: refused with the fix, not silently mixed across examples."""
    class Flat(AttentionNet):
        def forward(self, x):
            h = self.emb(x)
            return self.out(self.att(h, h, h)[0])

    with pytest.raises(InvalidInputError, match="unbatched inputs.*key_padding_mask"):
        tl.ntk(Flat().double().eval(), torch.randint(1, VOCAB, (6,)))


def test_padding_is_masked_not_attended():
    """Padded positions masked with key_padding_mask do not change the kernel: a batch padded to
    a longer length gives the NTK of the unpadded batch."""
    torch.manual_seed(5)
    model = AttentionNet(kpm="bool").double().eval()

    class Pooled(nn.Module):  # pool over the first 3 positions only (the real tokens)
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, x):
            m = self.inner
            h = m.emb(x)
            y = m.att(h, h, h, key_padding_mask=(x == 0), need_weights=False)[0]
            return m.out(torch.tanh(y[:, :3]).mean(1))

    x = torch.randint(1, VOCAB, (4, 3))
    xp = torch.cat([x, torch.zeros(4, 2, dtype=x.dtype)], 1)
    wrapped = Pooled(model)
    K, Kp = _quiet(tl.ntk, wrapped, x), _quiet(tl.ntk, wrapped, xp)
    assert oracle.rel_err(Kp.to_dense(), K.to_dense()) < TOL


@pytest.mark.parametrize("length", [4, 5])
def test_sequence_first_layers_take_the_generic_route(length):
    """nn.TransformerEncoderLayer's default layout (batch_first=False): its Linear and LayerNorm
    layers see (L, N, E) tensors, whose first dimension is not the examples' (with L = N too: no
    silently wrong kernel). They take the generic route with a warning that says why; the
    attention itself takes its rule either way."""

    class SeqFirst(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(VOCAB, 8)
            self.enc = nn.TransformerEncoderLayer(8, 2, 12, dropout=0.0)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            return self.head(self.enc(self.emb(x).transpose(0, 1)).transpose(0, 1).mean(1))

    torch.manual_seed(6)
    model, x = SeqFirst().double().eval(), _tokens(4, length)
    with pytest.warns(GenericRouteWarning, match=r"enc\.linear1 \(its output's first dimension"):
        cap = Engine(model, "raw").capture((x,), 0)
    assert {lc.layer.module for lc in cap.layers} == {"emb", "enc.self_attn", "enc.self_attn.out_proj", "head"}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", GenericRouteWarning)
        K = tl.ntk(model, x)
    assert oracle.rel_err(K.to_dense(), oracle.ntk(model, x)) < TOL


def test_examples_merged_with_positions_take_the_generic_route():
    """A Linear applied to (N·T, E) rows (examples merged with positions) is not per-example."""

    class Merged(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(VOCAB, 8)
            self.mix = nn.Linear(8, 8)
            self.head = nn.Linear(8, 3)

        def forward(self, x):
            h = self.emb(x)
            h = torch.tanh(self.mix(h.reshape(-1, 8))).reshape(h.shape)
            return self.head(h.mean(1))

    torch.manual_seed(7)
    model, x = Merged().double().eval(), _tokens()
    with pytest.warns(GenericRouteWarning, match=r"mix \(its output's first dimension \(8\)"):
        K = tl.ntk(model, x)
    assert oracle.rel_err(K.to_dense(), oracle.ntk(model, x)) < TOL


def test_mixed_precision_features():
    """A float32 attention model with float64 sums (precision='model/fp64'): the tapped features and
    gradients are cast like any layer's, and the kernel matches the float64 oracle to float32 precision."""
    model, x = _model("bias_kv")
    K = _quiet(tl.ntk, model.float(), x, precision="model/fp64")
    assert K.to_dense().dtype == torch.float64
    assert oracle.rel_err(K.to_dense(), oracle.ntk(model.double(), x)) < 1e-5
