"""The shared state of a ``linearized-generalization`` run: data, ``θ₀``, the Gram support and ``K₀``'s spectrum.

``K₀ = J Jᵀ`` is the float64 NTK Gram matrix of the network at initialization on the support
(all train + test inputs, or a seeded random subset of ``gram_points`` of them); its eigenvectors
``u_j`` (0-based, decreasing eigenvalue, canonical signs) define the eigenfunction targets
``sign(φ_j)`` of the paper's Figs. 2, 3, 13 and 14. :func:`build_setup` computes them once and
keeps them in the run's ``setup`` checkpoint, so a resumed run reloads them.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn

from ...analysis.anisotropy import canonical_signs, eigenfunction_targets
from ...analysis.kernels import eigh_desc
from ...api import ntk
from ..framework.data import load_dataset
from ..framework.threads import torch_threads
from .config import LinGenConfig
from .tasks import build_scalar_model


@dataclass
class Setup:
    """The shared state of a run: data, θ₀, the support and K₀'s spectrum."""

    x_train: torch.Tensor
    x_test: torch.Tensor
    y_train_cls: torch.Tensor
    y_test_cls: torch.Tensor
    n_classes: int
    input_shape: tuple[int, ...]
    model0: nn.Module
    support_train: torch.Tensor  # indices into x_train
    support_test: torch.Tensor  # indices into x_test
    evals: torch.Tensor  # all eigenvalues of K₀ on the support, decreasing
    evecs: torch.Tensor  # (m, r) leading eigenvectors, canonical signs; rows: train support then test support

    @property
    def n_support_train(self) -> int:
        return int(self.support_train.numel())

    def support_x(self) -> torch.Tensor:
        """The support's inputs: its training points, then its test points."""
        return torch.cat([self.x_train[self.support_train], self.x_test[self.support_test]])

    def eigen_task(self, j: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(x_train, y_train, x_test, y_test)`` of the ``sign(φ_j)`` task on the support."""
        y = eigenfunction_targets(self.evecs, [j])[0].to(torch.float32).to(self.x_train.device)
        m1 = self.n_support_train
        return self.x_train[self.support_train], y[:m1], self.x_test[self.support_test], y[m1:]


def top_eigh(K: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-``k`` eigenpairs of a symmetric float64 matrix (decreasing), by :func:`eigh_desc` (torch's
    LAPACK, which follows torch's thread setting; scipy's OpenBLAS threads thrash on a loaded machine)."""
    w, v = eigh_desc(K)
    return w[:k], v[:, :k]


def ntk_gram(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The float64 NTK Gram matrix ``J Jᵀ`` of a scalar model (eval mode) on ``x``."""
    m64 = copy.deepcopy(model).to(torch.float64).eval()
    return ntk(m64, x.to(torch.float64), progress=False).as_matrix()


def replicate_seed(cfg: LinGenConfig, rep: int) -> int:
    """The base seed of replicate ``rep`` (one of ``cfg.seeds``): its ``θ₀``, support, minibatch orders
    and sampled tasks are drawn from it (replicate 0: ``cfg.seed`` itself)."""
    return cfg.seed + 10007 * rep


def build_setup(cfg: LinGenConfig, store, dev: torch.device, rep: int = 0) -> Setup:
    """Load the data, build replicate ``rep``'s ``θ₀`` and compute (or reload from its ``setup``
    checkpoint) the support and ``K₀``'s spectrum, keeping the eigenvectors up to the largest index any
    part needs. The data split is the same for every replicate."""
    layout = "flat" if cfg.model == "mlp" else "image"
    split = load_dataset(cfg.dataset, cfg.seed, layout, cfg.data_dir, cfg.max_per_class or None)
    n_tr, n_te = split.x_train.shape[0], split.x_test.shape[0]
    for s in cfg.sizes:
        if s > n_tr:
            raise cfg.error("sizes", f"{s} exceeds the {n_tr} training examples", f"2..{n_tr}")
    base = replicate_seed(cfg, rep)
    tag = "setup" if rep == 0 else f"setup_s{rep}"
    ck = store.load_checkpoint(tag)
    model0 = build_scalar_model(cfg.model, split.input_shape, hidden=cfg.hidden, activation=cfg.activation,
                                width=cfg.width, seed=base).to(dev)
    if ck is not None:
        model0.load_state_dict(ck["theta0"])
        st, se, evals, evecs = ck["support_train"], ck["support_test"], ck["evals"], ck["evecs"]
    else:
        m = n_tr + n_te
        if cfg.gram_points and cfg.gram_points < m:
            perm = torch.randperm(m, generator=torch.Generator().manual_seed(base + 17))[:cfg.gram_points]
            perm = perm.sort().values
        else:
            perm = torch.arange(m)
        st, se = perm[perm < n_tr], perm[perm >= n_tr] - n_tr
        need = max(max(cfg.eigen_indices), cfg.rotation_target, cfg.rotation_max_index - 1) + 1
        if need > perm.numel():
            raise cfg.error("eigen_indices", f"index {need - 1} does not exist on {perm.numel()} support points",
                            f"0..{perm.numel() - 1}")
        xs = torch.cat([split.x_train[st], split.x_test[se]]).to(dev)
        with torch_threads(0):
            K0 = ntk_gram(model0, xs)
            evals_all, U = eigh_desc(K0)
        evals, evecs = evals_all.cpu(), canonical_signs(U[:, :need]).cpu().contiguous()
        del K0, U
        store.save_checkpoint(tag, 0, {"theta0": model0.state_dict(), "support_train": st,
                                           "support_test": se, "evals": evals, "evecs": evecs})
    return Setup(split.x_train.to(dev), split.x_test.to(dev), split.y_train.to(dev), split.y_test.to(dev),
                 split.n_classes, tuple(split.input_shape), model0.eval(), st.to(dev), se.to(dev), evals, evecs)
