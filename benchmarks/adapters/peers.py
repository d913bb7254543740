"""Peer libraries, installed by ``pip install -c constraints.txt -e ".[peers]"`` at the
versions pinned in ``pyproject.toml`` (nngeometry 0.4, curvlinops-for-pytorch 3.0.1,
backpack-for-pytorch 1.7.1). Each adapter uses the peer's documented public API the
way its README shows, with the options that make it compute the same quantity as the
other rows (stated per method); set-up that a user would do once (extending a model,
building a loader) is untimed.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from ..workloads import Case
from .base import ALL, Adapter, CannotComputeError, math_attention, refusing


def _flat_v(case: Case) -> torch.Tensor:
    """The workload's parameter-space vector, flattened in ``named_parameters()`` order."""
    return torch.cat([case.v[k].reshape(-1) for k, _ in case.model.named_parameters()])


def _owner(model: nn.Module, name: str) -> nn.Module:
    """The module that owns the parameter ``name``."""
    return model.get_submodule(name.rsplit(".", 1)[0] if "." in name else "")


def _owners(model: nn.Module, names: list[str]) -> str:
    """The module types owning the parameters ``names``, e.g. ``'LayerNorm, MultiheadAttention'``."""
    return ", ".join(sorted({type(_owner(model, n)).__name__ for n in names}))


def _labels(case: Case) -> torch.Tensor:
    """Labels for loss-based APIs (the exact Fisher / GGN does not depend on them)."""
    if case.y is not None:
        return case.y
    return torch.zeros(case.n, dtype=torch.long, device=case.x.device)


class NNGeometry(Adapter):
    """nngeometry 0.4: ``GramMatrix`` for NTKs, ``FIM(variant='classif_logits')`` (exact
    softmax Fisher, mean over examples) with PMatDiag / PMatKFAC / PMatEKFAC (+
    ``update_diag``, the corrected diagonal) / PMatImplicit."""

    name = "nngeometry"
    module = "nngeometry"
    description = "GramMatrix (NTK), FIM with PMatDiag / PMatKFAC / PMatEKFAC (+update_diag) / PMatImplicit"
    covers = {"full_ntk": ALL, "fisher": ("diag", "kfac", "ekfac"),
              "implicit_fisher": ("mv", "vTMv", "trace"), "blockwise_ntk": ALL}

    @staticmethod
    def _loader(case: Case, batch_size: int | None) -> DataLoader:
        NNGeometry._check(case.model)
        return DataLoader(TensorDataset(case.x), batch_size=batch_size or case.n, shuffle=False)

    @staticmethod
    def _check(model: nn.Module) -> None:
        """Refuse (untimed) a model whose parameters nngeometry's ``LayerCollection`` does not
        all cover: it raises on a leaf module it has no rule for, and silently leaves out the
        own parameters of a module with children (``nn.MultiheadAttention.in_proj_weight``)."""
        from nngeometry.layercollection import LayerCollection

        try:
            lc = LayerCollection.from_model(model)
        except Exception as e:  # nngeometry raises a bare Exception for unsupported layers
            if "I do not know what to do with layer" not in str(e):
                raise
            raise CannotComputeError(f"nngeometry 0.4 has no layer rule: {e}") from e
        total = sum(p.numel() for p in model.parameters())
        if lc.numel() != total:
            known = {id(p) for m in model.modules() if type(m).__name__ in LayerCollection._known_modules
                     for p in m.parameters(recurse=False)}
            left = [n for n, p in model.named_parameters() if id(p) not in known]
            raise CannotComputeError(f"nngeometry 0.4 covers {lc.numel():,} of the {total:,} parameters (no layer "
                                f"rule for {_owners(model, left)})")

    def full_ntk(self, case: Case, quantity: str):
        from nngeometry.gram import GramMatrix

        loader = self._loader(case, case.batch_size)

        def run():
            k = GramMatrix(case.model, loader, function=lambda x: case.model(x)).data  # (C, N, C, N)
            return k.permute(1, 3, 0, 2)
        return run

    def blockwise_ntk(self, case: Case, quantity: str):
        from nngeometry.gram import GramMatrix

        loader = self._loader(case, case.batch_size)

        def run():
            return GramMatrix(case.model, loader, function=lambda x: case.model(x)).data[0, :, 0, :]
        return run

    def _fim(self, case: Case, representation):
        from nngeometry.metrics import FIM

        loader = self._loader(case, case.batch_size)
        return FIM(case.model, loader, representation, variant="classif_logits",
                   function=lambda x: case.model(x))

    def _pvector(self, fim, flat: torch.Tensor):
        from nngeometry.object.vector import PVector

        return PVector(fim.generator.layer_collection, vector_repr=flat)

    def fisher(self, case: Case, quantity: str):
        from nngeometry.object import PMatDiag, PMatEKFAC, PMatKFAC

        rep = {"diag": PMatDiag, "kfac": PMatKFAC, "ekfac": PMatEKFAC}[quantity]
        flat = _flat_v(case)
        loader = self._loader(case, case.batch_size)

        def run():
            fim = self._fim(case, rep)
            if quantity == "ekfac":
                fim.update_diag(loader)  # the corrected diagonal s*, as the other EKFAC rows
            mv = fim.mv(self._pvector(fim, flat)).to_torch()
            if quantity == "diag":
                return {"diag": fim.get_diag(), "mv": mv}
            return {"mv": mv}
        return run

    def implicit_fisher(self, case: Case, quantity: str):
        from nngeometry.object import PMatImplicit

        if quantity in ("mv", "vTMv") and any(isinstance(m, nn.modules.batchnorm._BatchNorm)
                                              for m in case.model.modules()):
            # nngeometry's implicit Jv pass raises a bare NotImplementedError on BatchNorm layers
            raise CannotComputeError("nngeometry 0.4 PMatImplicit mv/vTMv do not support BatchNorm layers")
        fim = self._fim(case, PMatImplicit)
        v = self._pvector(fim, _flat_v(case))
        if quantity == "mv":
            return lambda: fim.mv(v).to_torch()
        if quantity == "vTMv":
            return lambda: fim.vTMv(v)
        return fim.trace


class Curvlinops(Adapter):
    """curvlinops 3.0.1: ``KFACLinearOperator`` / ``EKFACLinearOperator`` with
    ``fisher_type='type-2'`` (exact loss Hessian: the exact softmax Fisher) and
    ``separate_weight_and_bias=False`` (one Kronecker block per layer, bias through the
    homogeneous input, like the other rows), ``GGNLinearOperator`` for the implicit
    Fisher (for cross-entropy the GGN is the exact Fisher); ``CrossEntropyLoss`` with
    ``reduction='mean'`` so the matrices are means over examples;
    ``check_deterministic=False`` (a start-up check, not part of the computation)."""

    name = "curvlinops"
    module = "curvlinops"
    distribution = "curvlinops-for-pytorch"
    description = "GGNLinearOperator (exact Fisher of the cross-entropy), KFACLinearOperator, EKFACLinearOperator"
    covers = {"fisher": ("kfac", "ekfac"), "implicit_fisher": ("mv", "vTMv")}

    @staticmethod
    def _data(case: Case, batch_size: int | None):
        y, b = _labels(case), batch_size or case.n
        return [(case.x[i:i + b], y[i:i + b]) for i in range(0, case.n, b)]

    def fisher(self, case: Case, quantity: str):
        from curvlinops import EKFACLinearOperator, FisherType, KFACLinearOperator

        cls = {"kfac": KFACLinearOperator, "ekfac": EKFACLinearOperator}[quantity]
        data = self._data(case, case.batch_size)
        params = [p for p in case.model.parameters() if p.requires_grad]
        flat = _flat_v(case)

        def run():
            op = cls(case.model, nn.CrossEntropyLoss(reduction="mean"), params, data,
                     fisher_type=FisherType.TYPE2, separate_weight_and_bias=False,
                     check_deterministic=False)
            return {"mv": op @ flat}
        # KFAC/EKFAC cover the parameters of Linear and Conv2d modules called as modules
        other = [n for n, _ in case.model.named_parameters()
                 if not isinstance(_owner(case.model, n), (nn.Linear, nn.Conv2d))]
        return refusing(run, (NotImplementedError,), "curvlinops 3.0.1",
                        f"(parameters of {_owners(case.model, other)})" if other else "")

    def implicit_fisher(self, case: Case, quantity: str):
        from curvlinops import GGNLinearOperator

        data = self._data(case, case.batch_size)
        params = [p for p in case.model.parameters() if p.requires_grad]
        op = GGNLinearOperator(case.model, nn.CrossEntropyLoss(reduction="mean"), params, data,
                               check_deterministic=False)
        flat = _flat_v(case)

        def mv():
            with math_attention():  # its products use forward-mode AD: no fused attention kernels
                return op @ flat
        if quantity == "mv":
            return mv
        return lambda: flat @ mv()


class BackPACK(Adapter):
    """BackPACK 1.7.1: ``DiagGGNExact`` (exact Fisher diagonal for cross-entropy,
    ``reduction='mean'``: a mean over examples) and ``BatchGrad`` (per-example gradients,
    ``reduction='sum'`` so each row is one example's loss gradient). ``extend`` of the
    model and loss is set-up (untimed)."""

    name = "BackPACK"
    module = "backpack"
    distribution = "backpack-for-pytorch"
    description = "BatchGrad (per-example gradients), DiagGGNExact (exact Fisher diagonal)"
    covers = {"fisher": ("diag",), "per_example_grads": ALL}

    def fisher(self, case: Case, quantity: str):
        from backpack import backpack, extend
        from backpack.extensions import DiagGGNExact

        model = extend(case.model)
        loss_fn = extend(nn.CrossEntropyLoss(reduction="mean"))
        y, b = _labels(case), case.batch_size or case.n
        flat = _flat_v(case)
        params = list(model.parameters())

        def run():
            acc = [torch.zeros_like(p) for p in params]
            for i in range(0, case.n, b):
                model.zero_grad()
                loss = loss_fn(model(case.x[i:i + b]), y[i:i + b])
                with backpack(DiagGGNExact()):
                    loss.backward()
                nb = min(b, case.n - i)
                for a, p in zip(acc, params):
                    a.add_(p.diag_ggn_exact, alpha=nb / case.n)  # batch means -> overall mean
            diag = torch.cat([a.reshape(-1) for a in acc])
            return {"diag": diag, "mv": diag * flat}
        # second-order extensions need an extension for every module on the backward path
        return refusing(run, (NotImplementedError,), "BackPACK 1.7.1")

    def per_example_grads(self, case: Case, quantity: str):
        from backpack import backpack, extend
        from backpack.extensions import BatchGrad

        model = extend(case.model)
        loss_fn = extend(nn.CrossEntropyLoss(reduction="sum"))

        def run():
            model.zero_grad()
            loss = loss_fn(model(case.x), case.y)
            with backpack(BatchGrad()):
                loss.backward()
            missing = [n for n, p in model.named_parameters() if not hasattr(p, "grad_batch")]
            if missing:  # BackPACK skips the modules it has no BatchGrad extension for
                raise CannotComputeError(f"BackPACK 1.7.1 BatchGrad computes no per-example gradients for the "
                                    f"parameters of {_owners(model, missing)} ({len(missing)} tensors)")
            return torch.cat([p.grad_batch.reshape(case.n, -1) for p in model.parameters()], 1)
        return run
