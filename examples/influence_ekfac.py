"""Example 6: influence of training examples on a test prediction, with EKFAC.

Influence functions (Koh & Liang, 2017; with a Gauss–Newton/EKFAC curvature as in Grosse
et al., 2023): up-weighting training example ``z_n`` changes the test loss by about
``I_n = −∇ℓ_testᵀ (F + λI)⁻¹ ∇ℓ_n``, with ``F`` the Fisher (= GGN) of the training set, a
mean over its examples. ``(F + λI)⁻¹ ∇ℓ_test`` is one solve, then every ``I_n`` is one dot
product with the per-example gradients (from :func:`tangentlab.jacobian` of the
per-example losses, ``(N, 1, P)``).

The EKFAC influences are compared with the exact ones from the dense Fisher on this small
model: printed are the Pearson and Spearman correlations, the largest error relative to the
largest exact influence and the overlap of the 10 most influential examples. Checks: the
dense solve's residual is round-off; the correlation is high.

``python examples/influence_ekfac.py`` (1000 training digits) or ``--smoke`` (300).
"""

import argparse
import os

import torch
import torch.nn.functional as F
from torch import nn

import tangentlab as tl
from tangentlab.studies.framework.data import load_digits_split

ap = argparse.ArgumentParser(description="training-example influence with EKFAC vs the dense Fisher")
ap.add_argument("--smoke", action="store_true", default=os.environ.get("TANGENTLAB_SMOKE") == "1")
ap.add_argument("--n", type=int, default=None, help="training digits (default 1000, smoke 300)")
ap.add_argument("--damping", type=float, default=1e-2)
args = ap.parse_args()
n = args.n or (300 if args.smoke else 1000)

torch.set_default_dtype(torch.float64)
torch.manual_seed(0)
split = load_digits_split(seed=0)
split.x_train, split.x_test = split.x_train.double(), split.x_test.double()
x, y = split.x_train[:n], split.y_train[:n]
x_test, y_test = split.x_test[:1], split.y_test[:1]
model = nn.Sequential(nn.Linear(64, 24), nn.Tanh(), nn.Linear(24, 10))
opt = torch.optim.Adam(model.parameters(), lr=1e-2)
for _ in range(200):
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()


def per_example_loss(m: nn.Module, batch: tuple) -> torch.Tensor:
    """``(N, 1)`` per-example cross-entropy: its Jacobian rows are the per-example gradients."""
    return F.cross_entropy(m(batch[0]), batch[1], reduction="none")[:, None]


grads = tl.jacobian(model, (x, y), output=per_example_loss).data[:, 0]  # (N, P)
g_test = tl.jacobian(model, (x_test, y_test), output=per_example_loss).data[0, 0]  # (P,)
v_test = tl.PVector.from_flat(tl.PVector.from_model(model).space, g_test)


def influences(fisher) -> torch.Tensor:
    """``I_n = −∇ℓ_nᵀ (F + λI)⁻¹ ∇ℓ_test`` for every training example ``(N,)``."""
    return -grads @ fisher.solve(v_test, args.damping).flat()


F_dense = tl.fim(model, (x, y), representation="dense")
F_ekfac = tl.fim(model, (x, y), representation="ekfac")
exact, approx = influences(F_dense), influences(F_ekfac)

# The dense solve is exact: (F + λI) q = ∇ℓ_test to round-off.
q = F_dense.solve(v_test, args.damping).flat()
resid = ((F_dense.to_dense() @ q + args.damping * q - g_test).norm() / g_test.norm()).item()


def rank(v: torch.Tensor) -> torch.Tensor:
    return torch.argsort(torch.argsort(v)).double()


pearson = torch.corrcoef(torch.stack([exact, approx]))[0, 1].item()
spearman = torch.corrcoef(torch.stack([rank(exact), rank(approx)]))[0, 1].item()
max_err = ((approx - exact).abs().max() / exact.abs().max()).item()
top = lambda v: set(torch.argsort(v.abs(), descending=True)[:10].tolist())  # noqa: E731
overlap = len(top(exact) & top(approx))
print(f"MLP 64-24-10, {n} training digits, test digit labelled {y_test.item()}, damping {args.damping}")
print("most helpful (exact):", torch.argsort(exact)[:5].tolist(), " most harmful:",
      torch.argsort(exact, descending=True)[:5].tolist())
print(f"EKFAC vs exact influence: Pearson {pearson:.4f}, Spearman {spearman:.4f}, "
      f"max error / max |I| {max_err:.3f}, top-10 overlap {overlap}/10")
print(f"check: dense solve residual {resid:.1e}; Pearson correlation {pearson:.3f} > 0.9")
assert resid < 1e-8 and pearson > 0.9, "influence check failed"
print("OK")
