"""Probes during training (tangentlab.studies.framework.probes) against brute-force torch.func kernels.

The oracle builds the Jacobian ``J`` (N, C, P) by ``vmap(jacrev)`` (tests/oracle.py), the
kernel ``K = J Jᵀ`` with rows ``n·C + c``, the centering projectors as explicit matrices,
the label kernel ``Y Yᵀ`` explicitly, and every metric from its textbook formula with numpy.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from tangentlab.studies.framework.probes import (
    Probe,
    ProbeCallback,
    ProbeSet,
    bce_loss,
    decade_schedule,
    lightning_available,
    lightning_callback,
    log_schedule,
    rows_by,
    thesis_schedule,
    train_with_probes,
)
from tangentlab.training import BatchStream
from tests import oracle


def _mlp(n_in=5, h=7, c=3, seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(n_in, h), nn.Tanh(), nn.Linear(h, h), nn.ReLU(), nn.Linear(h, c)).double()


def _kernel(model, x, names=None):
    J = oracle.jacobian(model, x, names)  # (N, C, P)
    N, C, P = J.shape
    Jm = J.reshape(N * C, P)
    return (Jm @ Jm.T).numpy(), C


def _H(N, C, mode):
    r = N * C
    if mode is None:
        return np.eye(r)
    if mode == "full":
        return np.eye(r) - np.ones((r, r)) / r
    return np.kron(np.eye(N) - np.ones((N, N)) / N, np.eye(C))


def _cka(A, B):
    return float(np.sum(A * B) / (np.linalg.norm(A) * np.linalg.norm(B)))


@pytest.mark.parametrize("centering", ["examples", "full", None])
def test_probe_metrics_match_bruteforce(centering):
    model = _mlp()
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(9, 5, generator=gen, dtype=torch.float64)
    y = torch.tensor([0, 1, 2, 0, 1, 2, 2, 1, 0])
    probe = Probe([ProbeSet("train", x, y)], ks=(1, 4, 10), ratios=(3,), centering=centering, n_pca=2,
                  keep_spectrum=True)
    res = probe.evaluate(model, 0)
    K, C = _kernel(model, x)
    H = _H(9, C, centering)
    Kc = H @ K @ H
    lam = np.sort(np.clip(np.linalg.eigvalsh(Kc), 0, None))[::-1]
    mu = lam[lam > 0] / lam.sum()
    v = lambda m, layer="": res.value("train", m, layer)  # noqa: E731
    assert v("max") == pytest.approx(lam[0], rel=1e-10)
    assert v("mean") == pytest.approx(lam.mean(), rel=1e-10)
    assert v("median") == pytest.approx(np.median(lam), rel=1e-9, abs=1e-12 * lam[0])
    assert v("trace") == pytest.approx(np.trace(Kc), rel=1e-10)
    assert v("erank") == pytest.approx(math.exp(-(mu * np.log(mu)).sum()), rel=1e-8)
    for k in (1, 4, 10):
        assert v(f"T{k}") == pytest.approx(lam[:k].sum() / lam.sum(), rel=1e-10)
    assert v("ratio3") == pytest.approx(lam[2] / lam[0], rel=1e-8)
    assert torch.allclose(res.spectra["train"], torch.as_tensor(lam.copy()), rtol=1e-9, atol=1e-10 * lam[0])
    # CKA with the one-hot label kernel Y Yᵀ (rows n·C + c), centered by the same projector
    Y = np.eye(C)[y.numpy()].reshape(-1)
    assert v("cka") == pytest.approx(_cka(Kc, H @ np.outer(Y, Y) @ H), rel=1e-10)
    # per-layer CKA: each layer's own Jacobian columns
    for layer in ("0", "2", "4"):
        names = [f"{layer}.weight", f"{layer}.bias"]
        Kl, _ = _kernel(model, x, names)
        assert v("cka", layer) == pytest.approx(_cka(H @ Kl @ H, H @ np.outer(Y, Y) @ H), rel=1e-9)
    # kernel PCA: coordinates √λ_j u_j of the top 2 components
    coords = res.pca["train"].numpy()
    assert coords.shape == (27, 2)
    assert np.allclose(coords.T @ coords, np.diag(lam[:2] ** 2 / lam[:2]), rtol=1e-9)
    assert np.allclose(Kc @ coords, coords * lam[:2], atol=1e-9 * lam[0])
    # loss and accuracy of the float64 model
    with torch.no_grad():
        out = model(x)
    assert v("loss") == pytest.approx(float(nn.functional.cross_entropy(out, y)), rel=1e-12)
    assert v("accuracy") == pytest.approx(float((out.argmax(1) == y).double().mean()))
    # first evaluation is its own reference
    assert v("kernel_distance") == pytest.approx(0.0, abs=1e-12)
    # without eigenvectors (eigvalsh path): same statistics, no PCA
    res2 = probe.evaluate(model, 1, vectors=False)
    assert not res2.pca and not res2.eigvecs
    for k in ("max", "mean", "erank", "T4", "ratio3", "cka"):
        assert res2.value("train", k) == pytest.approx(v(k), rel=1e-9)


def test_kernel_distance_after_change_and_binary_labels():
    model = _mlp(c=1)
    x = torch.randn(8, 5, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    y = torch.tensor([0, 1, 1, 0, 1, 0, 0, 1])
    probe = Probe([ProbeSet("p", x, y)], metrics=("cka", "distance", "loss"))
    probe.set_reference(model)
    K0, _ = _kernel(model, x)
    H = _H(8, 1, "examples")
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    res = probe.evaluate(model, 5)
    K1, _ = _kernel(model, x)
    Kc0, Kc1 = H @ K0 @ H, H @ K1 @ H
    assert res.value("p", "kernel_distance") == pytest.approx(1 - _cka(Kc0, Kc1), rel=1e-9)
    ypm = 2 * y.numpy() - 1.0  # ±1 labels for one output
    assert res.value("p", "cka") == pytest.approx(_cka(Kc1, H @ np.outer(ypm, ypm) @ H), rel=1e-10)
    with torch.no_grad():
        z = model(x)[:, 0]
    ref = float(nn.functional.binary_cross_entropy_with_logits(z, y.double()))
    assert res.value("p", "loss") == pytest.approx(ref, rel=1e-12)
    assert res.value("p", "accuracy") == pytest.approx(float(((z > 0).long() == y).double().mean()))
    assert not any(r["metric"] == "erank" for r in res.rows)  # spectrum not asked


def test_schedules():
    s = thesis_schedule(100)
    assert s[0] == 0 and s[-1] == 100 and s == sorted(set(s))
    expected = sorted({0, 100} | {5 * math.floor(1.15 ** k) for k in range(40) if 5 * math.floor(1.15 ** k) <= 100})
    assert s == expected
    assert 5 in s and 10 in s and 15 in s and 90 in s
    d = decade_schedule(1000, include_last=False)
    assert d[:6] == [0, 1, 2, 3, 4, 5] and d[-1] == 1000 and 100 in d and 126 in d
    assert log_schedule("decade", 50) == decade_schedule(50)
    with pytest.raises(Exception, match="accepted"):
        log_schedule("linear", 10)


def test_callback_in_user_loop_and_plain_loop_resume():
    torch.manual_seed(0)
    x = torch.randn(40, 5)
    y = torch.randint(0, 3, (40,))
    probe_set = ProbeSet("train", x[:10], y[:10])

    def make():
        torch.manual_seed(4)
        m = nn.Sequential(nn.Linear(5, 8), nn.ReLU(), nn.Linear(8, 3))
        return m, torch.optim.SGD(m.parameters(), lr=0.1, momentum=0.9)

    # the user's own loop
    model, opt = make()
    cb = ProbeCallback(Probe([probe_set], metrics=("spectrum", "cka", "loss")), steps=[0, 3, 7])
    stream = BatchStream(40, 8, seed=1)
    for step in range(8):
        cb(step, model)
        cb(step, model)  # a second call at the same step does nothing
        idx = stream.next()
        opt.zero_grad()
        nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
        opt.step()
    assert [r.step for r in cb.results] == [0, 3, 7]
    loss_rows = rows_by(cb.rows, "train", "loss")
    assert [s for s, _ in loss_rows] == [0, 3, 7]

    # the plain loop gives the same trajectory (same BatchStream seed and train_step)
    model2, opt2 = make()
    cb2 = ProbeCallback(Probe([probe_set], metrics=("spectrum", "cka", "loss")), steps=[0, 3, 7])
    train_with_probes(model2, opt2, x, y, steps=8, batch_size=8, seed=1, callbacks=[cb2], progress=False)
    assert [r.step for r in cb2.results] == [0, 3, 7]
    for a, b in zip(cb.rows, cb2.rows, strict=True):
        assert a["metric"] == b["metric"] and a["value"] == pytest.approx(b["value"], rel=1e-6, abs=1e-9)

    # interrupted at step 4 and resumed from a saved state: same final parameters
    model3, opt3 = make()
    saved = {}

    def save(t, st):
        if t == 4:
            saved.update(model=copy_state(model3), opt=copy_state(opt3), stream=st.stream.state_dict(), step=t)
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_with_probes(model3, opt3, x, y, steps=8, batch_size=8, seed=1, after_callbacks=save,
                          progress=False)
    model4, opt4 = make()
    model4.load_state_dict(saved["model"])
    opt4.load_state_dict(saved["opt"])
    from tangentlab.studies.framework.probes import TrainingState

    st = TrainingState(saved["step"], BatchStream(40, 8, seed=1))
    st.stream.load_state_dict(saved["stream"])
    train_with_probes(model4, opt4, x, y, steps=8, batch_size=8, seed=1, state=st, progress=False)
    model2.eval()
    for p, q in zip(model2.parameters(), model4.parameters(), strict=True):
        assert torch.equal(p, q)


def copy_state(obj):
    import copy

    return copy.deepcopy(obj.state_dict())


def test_bce_loss_and_errors():
    out = torch.tensor([[0.3], [-1.2]], dtype=torch.float64)
    y = torch.tensor([1, 0])
    ref = nn.functional.binary_cross_entropy_with_logits(out[:, 0], y.double())
    assert float(bce_loss(out, y)) == pytest.approx(float(ref))
    assert float(bce_loss(out, torch.tensor([1.0, -1.0]))) == pytest.approx(float(ref))
    x = torch.randn(4, 5)
    with pytest.raises(Exception, match="accepted"):
        Probe([ProbeSet("a", x, torch.zeros(4))], centering="rows")
    with pytest.raises(Exception, match="unknown probe metrics"):
        Probe([ProbeSet("a", x, torch.zeros(4))], metrics=("spectrum", "bogus"))
    with pytest.raises(Exception, match="unique"):
        Probe([ProbeSet("a", x, torch.zeros(4)), ProbeSet("a", x, torch.zeros(4))])


def test_lightning_callback_needs_lightning(monkeypatch):
    """Runs whether or not lightning is installed: with both packages hidden, the callback
    factory refuses with a one-line ImportError naming them."""
    import sys

    for mod in ("lightning", "lightning.pytorch", "pytorch_lightning"):
        monkeypatch.setitem(sys.modules, mod, None)  # `import mod` now raises ImportError
    assert not lightning_available()
    cb = ProbeCallback(Probe([ProbeSet("t", torch.randn(4, 5), torch.zeros(4))], metrics=("loss",)), steps=[0])
    with pytest.raises(ImportError, match="needs `lightning` or `pytorch_lightning`"):
        lightning_callback(cb)


def test_lightning_callback():
    pl = pytest.importorskip("lightning.pytorch", reason="lightning is not installed")
    x = torch.randn(16, 5)
    y = torch.randint(0, 3, (16,))

    class Lit(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(5, 6), nn.ReLU(), nn.Linear(6, 3))

        def forward(self, z):
            return self.net(z)

        def training_step(self, batch, i):
            return nn.functional.cross_entropy(self(batch[0]), batch[1])

        def configure_optimizers(self):
            return torch.optim.SGD(self.parameters(), lr=0.1)

    cb = ProbeCallback(Probe([ProbeSet("t", x[:6], y[:6])], metrics=("cka", "loss")), steps=[0, 2])
    loader = torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)
    trainer = pl.Trainer(max_steps=3, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                         callbacks=[lightning_callback(cb)])
    trainer.fit(Lit(), loader)
    assert sorted(r.step for r in cb.results) == [0, 2]
