"""Example 5: a Laplace approximation through laplace-torch with tangentlab's backend.

An MLP trained on scikit-learn's digits gets a post-hoc Laplace approximation
(MacKay, 1992; Daxberger et al., 2021): ``laplace.Laplace(..., hessian_structure="kron",
backend=TangentlabGGN)`` (the softmax GGN's Kronecker factors computed by
:func:`tangentlab.fim`), the prior precision tuned by the marginal likelihood, and the GLM
predictive with the probit approximation. Printed: test accuracy and negative
log-likelihood of the MAP network and of the Laplace predictive, the prior precision and
the log marginal likelihood. Check: the log marginal likelihood and the predictive equal
those of laplace-torch's curvlinops backend.

Needs the ``[laplace]`` extra (README, "laplace-torch"); without it the script says so and
exits. ``python examples/laplace_digits.py`` (300 training steps) or ``--smoke`` (100).
"""

import argparse
import os
import sys

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tangentlab.studies.framework.data import load_digits_split

ap = argparse.ArgumentParser(description="Laplace approximation with the tangentlab backend")
ap.add_argument("--smoke", action="store_true", default=os.environ.get("TANGENTLAB_SMOKE") == "1")
ap.add_argument("--steps", type=int, default=None, help="full-batch Adam steps (default 300, smoke 100)")
args = ap.parse_args()
steps = args.steps or (100 if args.smoke else 300)

try:
    from laplace import Laplace
    from laplace.curvature import CurvlinopsGGN

    from tangentlab.integrations.laplace import TangentlabGGN
except Exception as exc:  # ImportError, or torchvision's "operator torchvision::nms does not exist"
    print(f"skipped: laplace-torch is not importable ({type(exc).__name__}: {exc}); "
          "install the [laplace] extra as the README's laplace-torch section says")
    sys.exit(0)

torch.set_default_dtype(torch.float64)
torch.manual_seed(0)
split = load_digits_split(seed=0)
split.x_train, split.x_test = split.x_train.double(), split.x_test.double()
x, y = split.x_train, split.y_train
model = nn.Sequential(nn.Linear(64, 32), nn.Tanh(), nn.Linear(32, 10))
opt = torch.optim.Adam(model.parameters(), lr=1e-2, weight_decay=1e-4)
for _ in range(steps):
    opt.zero_grad()
    F.cross_entropy(model(x), y).backward()
    opt.step()
loader = DataLoader(TensorDataset(x, y), batch_size=256)


def report(label: str, probs: torch.Tensor) -> None:
    acc = (probs.argmax(-1) == split.y_test).double().mean().item()
    nll = F.nll_loss(probs.clamp_min(1e-12).log(), split.y_test).item()
    print(f"{label:<22} test acc {acc:.3f}, test NLL {nll:.4f}")


with torch.no_grad():
    report("MAP", model(split.x_test).softmax(-1))
fitted = {}
for name, backend in (("tangentlab", TangentlabGGN), ("curvlinops", CurvlinopsGGN)):
    la = Laplace(model, "classification", subset_of_weights="all", hessian_structure="kron", backend=backend)
    la.fit(loader)
    la.optimize_prior_precision(method="marglik", n_steps=50)
    probs = la(split.x_test, pred_type="glm", link_approx="probit")
    fitted[name] = (la.log_marginal_likelihood().item(), la.prior_precision.item(), probs)
lml, prior, probs = fitted["tangentlab"]
report("Laplace (KFAC, probit)", probs)
print(f"prior precision {prior:.4g}, log marginal likelihood {lml:.4f}")
err_lml = abs(lml - fitted["curvlinops"][0]) / abs(fitted["curvlinops"][0])
err_pred = ((probs - fitted["curvlinops"][2]).norm() / fitted["curvlinops"][2].norm()).item()
print(f"check: against laplace-torch's curvlinops backend, log marginal likelihood rel. err {err_lml:.1e}, "
      f"predictive rel. err {err_pred:.1e}")
assert err_lml < 1e-8 and err_pred < 1e-8, "the tangentlab backend differs from curvlinops"
print("OK")
