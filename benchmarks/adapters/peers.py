"""Peer libraries. None is installed yet: each adapter declares the workloads it will
cover, so the tables show a "not installed" row; the methods are written when the
peer is added (see benchmarks/README.md, "Adding a peer")."""

from __future__ import annotations

from .base import ALL, Adapter


class _Pending(Adapter):
    def _pending(self, *_):
        raise NotImplementedError(f"the {self.name} adapter's methods are not written yet")

    full_ntk = fisher = implicit_fisher = per_example_grads = blockwise_ntk = _pending  # type: ignore


class NNGeometry(_Pending):
    name = "nngeometry"
    module = "nngeometry"
    description = "GramMatrix (NTK), FIM with PMatDiag / PMatKFAC / PMatEKFAC / PMatImplicit"
    covers = {"full_ntk": ALL, "fisher": ("diag", "kfac", "ekfac"),
              "implicit_fisher": ("mv", "vTMv", "trace"),
              "blockwise_ntk": ALL}


class Curvlinops(_Pending):
    name = "curvlinops"
    module = "curvlinops"
    distribution = "curvlinops-for-pytorch"
    description = "GGNLinearOperator (exact Fisher of the cross-entropy), KFACLinearOperator, EKFAC"
    covers = {"fisher": ("kfac", "ekfac"), "implicit_fisher": ("mv", "vTMv")}


class BackPACK(_Pending):
    name = "BackPACK"
    module = "backpack"
    distribution = "backpack-for-pytorch"
    description = "BatchGrad (per-example gradients), DiagGGNExact (exact Fisher diagonal)"
    covers = {"fisher": ("diag",), "per_example_grads": ALL}
