"""Example 3: elastic weight consolidation (EWC) on split digits.

Task A is digits 0–4 of scikit-learn's digits, task B digits 5–9 (one 10-way head). An MLP
is trained on A, then on B either plainly or with the EWC penalty of Kirkpatrick et al.
(2017), ``(λ/2) (θ − θ_A)ᵀ F_A (θ − θ_A)``, where ``F_A`` is the Fisher of task A
(:func:`tangentlab.fim`, mean over A's examples) and the penalty is
:class:`tangentlab.optim.FisherPenalty` (differentiable in the model). ``F_A`` is taken
diagonal (the original EWC) and as KFAC (Ritter et al., 2018).

Printed: test accuracy on A and B after each run. Checks: the penalty equals
``(λ/2) Σ_p F_pp Δθ_p²`` computed by hand; EWC keeps more of task A than plain training.

``python examples/ewc_split_digits.py`` (400 steps per task) or ``--smoke`` (150).
"""

import argparse
import copy
import os

import torch
import torch.nn.functional as F
from torch import nn

import tangentlab as tl
from tangentlab.optim import FisherPenalty
from tangentlab.studies.framework.data import load_digits_split

ap = argparse.ArgumentParser(description="EWC on split digits")
ap.add_argument("--smoke", action="store_true", default=os.environ.get("TANGENTLAB_SMOKE") == "1")
ap.add_argument("--steps", type=int, default=None, help="full-batch Adam steps per task (default 400, smoke 150)")
ap.add_argument("--strength", type=float, default=5000.0, help="EWC λ")
args = ap.parse_args()
steps = args.steps or (150 if args.smoke else 400)

torch.manual_seed(0)
split = load_digits_split(seed=0)
task = {
    "A": (split.y_train < 5, split.y_test < 5),
    "B": (split.y_train >= 5, split.y_test >= 5),
}
data = {k: (split.x_train[tr], split.y_train[tr], split.x_test[te], split.y_test[te]) for k, (tr, te) in task.items()}


def accuracy(model: nn.Module, name: str) -> float:
    _, _, xt, yt = data[name]
    with torch.no_grad():
        return (model(xt).argmax(-1) == yt).double().mean().item()


def train(model: nn.Module, name: str, penalty=None) -> None:
    x, y, _, _ = data[name]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        loss = F.cross_entropy(model(x), y)
        if penalty is not None:
            loss = loss + penalty(model)
        loss.backward()
        opt.step()


model = nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 10))
train(model, "A")
print(f"after task A: acc A {accuracy(model, 'A'):.3f}")
x_a = data["A"][0]
fishers = {rep: tl.fim(model, x_a, representation=rep) for rep in ("diag", "kfac")}

results = {}
for label, rep in (("plain", None), ("EWC diag", "diag"), ("EWC KFAC", "kfac")):
    m = copy.deepcopy(model)
    penalty = None if rep is None else FisherPenalty(fishers[rep], m, strength=args.strength)
    train(m, "B", penalty)
    results[label] = (accuracy(m, "A"), accuracy(m, "B"))
    extra = "" if penalty is None else f", penalty {penalty(m).item():.4f}"
    print(f"after task B, {label:<9}: acc A {results[label][0]:.3f}, acc B {results[label][1]:.3f}{extra}")
    if rep == "diag":  # the penalty against the hand-written EWC formula
        delta = torch.cat([(p - q).flatten() for p, q in zip(m.parameters(), model.parameters())])
        by_hand = 0.5 * args.strength * (fishers["diag"].diag().flat() * delta.detach() ** 2).sum()
        err = abs(penalty(m).item() - by_hand.item()) / by_hand.item()
        assert err < 1e-5, f"penalty differs from (λ/2) Σ F_pp Δθ² ({err:.1e})"

kept = {k: v[0] for k, v in results.items()}
print(f"check: the diagonal penalty equals (λ/2) Σ F_pp Δθ² by hand; task-A accuracy kept "
      f"{kept['EWC diag']:.3f} (diag) / {kept['EWC KFAC']:.3f} (KFAC) > {kept['plain']:.3f} (plain)")
assert kept["EWC diag"] > kept["plain"] and kept["EWC KFAC"] > kept["plain"], "EWC should keep more of task A"
print("OK")
