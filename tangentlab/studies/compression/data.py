"""Data of the ``compression`` study (Paccolat et al., "Geometric compression of invariant manifolds in neural nets").

* **Stripe model** (d_∥ = 1): ``x ~ N(0, I_d)``, label a function of ``x₁`` with parallel
  interfaces ``c_1 < … < c_k``: ``y = +1`` for ``x₁ < c_1`` and the sign alternates at each
  interface. The single stripe is ``(c_1, c_2) = (−0.3, 1.18549)``: ``y = −1`` inside,
  ``+1`` outside, classes equiprobable (``Φ(1.18549) − Φ(−0.3) = 1/2``).
* **Cylinder model**: ``y = +1`` if ``‖x_∥‖ > R`` else ``−1``, with ``x_∥`` the first
  ``d_∥`` coordinates and ``R = sqrt(2 ln 2)`` for d_∥ = 2 (``P(‖x_∥‖ > R) = e^{−R²/2} = 1/2``);
  for other d_∥ the default ``R`` is the median of the χ_{d_∥} distribution.
* **Digit parity** (the CNN part): even digits → +1, odd → −1; images pooled, mean image
  subtracted and each image rescaled to Euclidean norm ``sqrt(D)`` (per-pixel RMS 1, the
  paper's ``center_normalize``). scikit-learn's 8×8 digits (shipped) or MNIST read from
  IDX files in ``data_dir`` (nothing is downloaded).

Splits are disjoint and seeded: training (p), kernel set (an independent training set of
size p for the frozen-kernel experiments) and test set.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..framework.config import ConfigError

STRIPE_X_MIN = -0.3
STRIPE_X_MAX = 1.18549
#: Radius of the cylinder with d_∥ = 2 (balanced classes).
CYLINDER_R = math.sqrt(2 * math.log(2))

def stripe_labels(x: torch.Tensor, interfaces: tuple[float, ...] = (STRIPE_X_MIN, STRIPE_X_MAX)) -> torch.Tensor:
    """``y(x₁) = (−1)^{#{c_i < x₁}}`` for sorted interfaces ``c_i`` (float ±1, shape (N,))."""
    c = torch.as_tensor(sorted(interfaces), dtype=x.dtype)
    crossed = (x[:, :1] > c[None, :]).sum(1)
    return 1.0 - 2.0 * (crossed % 2).to(x.dtype)


def cylinder_radius(d_par: int) -> float:
    """Median of ‖x_∥‖ for ``x_∥ ~ N(0, I_{d_∥})`` (balanced classes); ``sqrt(2 ln 2)`` at d_∥ = 2."""
    if d_par == 2:
        return CYLINDER_R
    from scipy import stats

    return float(math.sqrt(stats.chi2.ppf(0.5, d_par)))


def cylinder_labels(x: torch.Tensor, d_par: int = 2, radius: float | None = None) -> torch.Tensor:
    """``y = +1`` if ``‖x_∥‖ > R`` else ``−1`` (float, shape (N,))."""
    r = cylinder_radius(d_par) if radius is None else radius
    return torch.where(x[:, :d_par].norm(dim=1) > r, 1.0, -1.0).to(x.dtype)


@dataclass
class TaskSplit:
    """Disjoint training / kernel / test sets with ±1 float labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_kernel: torch.Tensor
    y_kernel: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor

    def to(self, device: torch.device | str) -> TaskSplit:
        """The six tensors moved to ``device``."""
        return TaskSplit(*(t.to(device) for t in (self.x_train, self.y_train, self.x_kernel, self.y_kernel,
                                                  self.x_test, self.y_test)))


def gaussian_task(model: str, d: int, p: int, n_test: int, n_kernel: int, seed: int, d_par: int = 1,
                  interfaces: tuple[float, ...] = (STRIPE_X_MIN, STRIPE_X_MAX), radius: float | None = None,
                  dtype: torch.dtype = torch.float64) -> TaskSplit:
    """Gaussian inputs ``N(0, I_d)`` labelled by the stripe (``model="stripe"``, d_∥ = 1) or the
    cylinder (``model="cylinder"``) rule. The training set is drawn first from its own
    stream, so for a given seed the first ``p`` training points do not depend on
    ``n_test``/``n_kernel`` and the test set does not depend on ``p``."""
    g_train = torch.Generator().manual_seed(1_000_003 * seed + 1)
    g_test = torch.Generator().manual_seed(1_000_003 * seed + 2)
    g_kernel = torch.Generator().manual_seed(1_000_003 * seed + 3)
    xs = [torch.randn(n, d, generator=g, dtype=dtype) for n, g in ((p, g_train), (n_kernel, g_kernel),
                                                                  (n_test, g_test))]
    if model == "stripe":
        ys = [stripe_labels(x, interfaces) for x in xs]
    elif model == "cylinder":
        ys = [cylinder_labels(x, d_par, radius) for x in xs]
    else:
        raise ConfigError("model", f"unknown data model {model!r}", "stripe, cylinder")
    return TaskSplit(xs[0], ys[0], xs[1], ys[1], xs[2], ys[2])


# ---------------------------------------------------------------------------------------------
# digit parity (CNN part)
# ---------------------------------------------------------------------------------------------
def check_mnist(data_dir: str) -> None:
    """Raise :class:`ConfigError` (field ``data_dir``) unless the MNIST IDX files are there."""
    from ..framework.data import check_dataset

    check_dataset("mnist", "image", data_dir)


def _load_images(dataset: str, data_dir: str) -> tuple[np.ndarray, np.ndarray]:
    if dataset == "digits":
        from sklearn.datasets import load_digits

        ds = load_digits()
        return ds.images.astype(np.float64)[:, None], ds.target.astype(np.int64)
    from ..framework.datasets import load_mnist_arrays

    check_mnist(data_dir)
    (xtr, ytr), (xte, yte) = (load_mnist_arrays(data_dir, split) for split in ("train", "test"))
    return np.concatenate([xtr, xte]).astype(np.float64)[:, None], np.concatenate([ytr, yte]).astype(np.int64)


def parity_task(dataset: str, p: int, n_kernel: int, n_test: int, seed: int, data_dir: str = "",
                dtype: torch.dtype = torch.float64) -> TaskSplit:
    """Digit parity (even → +1): pooled images, ``center_normalize`` (mean image removed,
    each image scaled to norm ``sqrt(D)``), random disjoint test / kernel / training sets
    (seeded permutation). ``n_test = 0`` takes every remaining image."""
    x, digit = _load_images(dataset, data_dir)
    x = x - x.mean(0, keepdims=True)
    flat = x.reshape(x.shape[0], -1)
    norm = np.linalg.norm(flat, axis=1).clip(1e-12)
    x = x * (math.sqrt(flat.shape[1]) / norm)[:, None, None, None]
    y = np.where(digit % 2 == 0, 1.0, -1.0)
    n = x.shape[0]
    if p + n_kernel + max(n_test, 1) > n:
        raise ConfigError("p_values", f"p + n_kernel + n_test = {p + n_kernel + n_test} exceeds the {n} images "
                          f"of {dataset!r}", f"p + n_kernel + n_test ≤ {n}")
    perm = np.random.default_rng(seed).permutation(n)
    te = perm[:n_test] if n_test else perm[p + n_kernel:]
    rest = perm[n_test:] if n_test else perm
    ke, tr = rest[:n_kernel], rest[n_kernel:n_kernel + p]

    def t(a: np.ndarray) -> torch.Tensor:
        return torch.as_tensor(np.ascontiguousarray(a), dtype=dtype)

    return TaskSplit(t(x[tr]), t(y[tr]), t(x[ke]), t(y[ke]), t(x[te]), t(y[te]))


def n_images(dataset: str) -> int:
    """Number of pooled images of ``dataset`` (digits: 1797, mnist: 70 000)."""
    return 1797 if dataset == "digits" else 70_000
