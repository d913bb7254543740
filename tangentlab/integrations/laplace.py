"""laplace-torch curvature backends computed by tangentlab's engine.

``laplace.Laplace(model, likelihood, subset_of_weights=..., hessian_structure=...,
backend=TangentlabGGN)`` (or ``backend=TangentlabEF``) fits the Laplace approximation with
the curvature of :func:`tangentlab.fim` and the Jacobians of :func:`tangentlab.jacobian`.

laplace-torch's conventions (those of its ``CurvatureInterface``), for a batch of ``M``
examples out of ``N``:

* the loss is ``factor · ℓ`` with ``ℓ`` the *sum* over the batch of cross-entropy
  (classification, ``factor = 1``) or of the squared error ``‖f − y‖²`` (regression,
  ``factor = ½``: the negative log-likelihood of ``N(f, 1)`` up to a constant; the noise
  ``σ²`` is applied by ``Laplace`` itself);
* the Hessian approximation is a *sum* over the batch: GGN ``H = Σ_n J_nᵀ Λ_n J_n`` with
  ``Λ = diag(p) − ppᵀ`` (softmax) or ``Λ = I`` (regression); empirical Fisher
  ``H = factor · Σ_n ∇ℓ_n ∇ℓ_nᵀ``.

tangentlab's matrices are *means* over examples, ``F = (1/M) Σ_n Σ_c φ_c φ_cᵀ``, with the
pseudo-outputs of its ``kind``: ``"exact"`` (``φᵀφ`` summed over ``c`` is ``JᵀΛJ``),
``"regression"`` with variance ``½`` (``s = √2 f``, the square root of the Hessian ``2I``
of ``‖f − y‖²``), ``"empirical"`` (``s = ℓ_n``). So ``H = factor · M · F``.

Kronecker factors (``hessian_structure="kron"``) follow laplace-torch's curvlinops backend
(KFAC-expand with separate weight and bias blocks) so that the sums over batches that
``Laplace.fit`` forms factor by factor agree: per layer with ``T`` weight-sharing positions
and tangentlab's KFC factors ``A, B`` (``A = (1/M) Σ_n Σ_t ã ãᵀ``,
``B = (1/M) Σ_n Σ_c (1/T) Σ_t g gᵀ``),

* weight: ``[√factor · M T B,  √factor · (M / (N T)) A_ww]`` (``kron(B, A)`` acts on the
  row-major ``(out, in)`` weight);
* bias: ``[factor · M T B]`` (the bias block of KFC is ``A_bb · B`` with ``A_bb = T``).

Only layers with a Kronecker layout of one group (``Linear``, ``Conv*`` with
``groups=1``) can be represented in laplace-torch's ``Kron``; others raise.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, cast

import torch
import torch.nn.functional as Fn
from torch import nn

from ..api import fim, jacobian
from ..errors import InvalidInputError
from ..maps import PushForwardDense
from ..space import ParamSpace

try:
    from laplace.curvature import CurvatureInterface, EFInterface, GGNInterface
    from laplace.utils import Kron
except ImportError as exc:  # pragma: no cover - exercised only without the extra
    raise ImportError(
        "tangentlab.integrations.laplace needs laplace-torch: "
        "pip install -c constraints.txt -e '.[laplace]' (see the README's laplace-torch section)"
    ) from exc


def _squared_error(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example ``‖z − y‖²`` ``(M,)``: the terms of ``MSELoss(reduction="sum")``."""
    return (z - y.reshape(z.shape)).pow(2).flatten(1).sum(1)


def _cross_entropy(z: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example cross-entropy ``(M,)``: the terms of ``CrossEntropyLoss(reduction="sum")``."""
    return Fn.cross_entropy(z, y, reduction="none")


class _TangentlabCurvature(CurvatureInterface):
    """Shared part of :class:`TangentlabGGN` and :class:`TangentlabEF`: the pseudo-output
    ``kind`` of :func:`tangentlab.fim` fixes which matrix is computed; ``diag``, ``full`` and
    ``kron`` rescale tangentlab's mean over the batch to laplace-torch's sum."""

    def _fim_kwargs(self) -> dict[str, Any]:
        """``kind`` (and ``variance`` / ``loss``) of :func:`tangentlab.fim` for this matrix."""
        raise NotImplementedError

    def _fim(self, x: torch.Tensor, y: torch.Tensor, representation: str):
        """``F = (1/M) Σ_n Σ_c φ_c φ_cᵀ`` on the batch ``(x, y)``, in one pass of the engine."""
        if isinstance(x, dict):
            raise InvalidInputError("the tangentlab backends take tensor inputs, not dicts")
        return fim(self.model, (x, y), representation=representation, params=self.params,
                   batch_size=x.shape[0], progress=False, **self._fim_kwargs())

    def _loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """``factor · Σ_n ℓ_n`` on the batch (detached)."""
        with torch.no_grad():
            return self.factor * self.lossfunc(self.model(x), y)

    def diag(self, x: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, diag H)``: ``diag H = factor · M · diag F``, shape ``(P,)``."""
        h = self._fim(x, y, "diag").diag().flat()
        return self._loss(x, y), (self.factor * x.shape[0]) * h

    def full(self, x: torch.Tensor, y: torch.Tensor, **kwargs: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """``(loss, H)``: ``H = factor · M · F``, shape ``(P, P)``."""
        h = self._fim(x, y, "dense").to_dense()
        return self._loss(x, y), (self.factor * x.shape[0]) * h

    def kron(self, x: torch.Tensor, y: torch.Tensor, N: int, **kwargs: Any) -> tuple[torch.Tensor, Kron]:
        """``(loss, Kron)``: per layer ``[B, A]`` for the weight and ``[B]`` for the bias, scaled
        as laplace-torch's curvlinops backend scales them (see the module docstring)."""
        space = ParamSpace.from_model(self.model, self.params)
        layers = {lay.module: lay for lay in space.layers}
        positions: dict[str, int] = {}

        def record(name: str) -> Callable:
            def hook(module: nn.Module, inputs: Any, out: torch.Tensor) -> None:
                shared = out.shape[1:-1] if isinstance(module, nn.Linear) else out.shape[2:]
                positions[name] = shared.numel()
            return hook

        modules = dict(self.model.named_modules())
        handles = [modules[name].register_forward_hook(record(name)) for name in layers]
        try:
            loss = self._loss(x, y)
        finally:
            for h in handles:
                h.remove()
        m, sf = x.shape[0], self.factor ** 0.5
        kfacs: list[list[torch.Tensor]] = []
        for blk in self._fim(x, y, "kfac").blocks:
            if blk.b.shape[0] != 1 or blk.diagonal_a:
                raise InvalidInputError(f"layer {blk.module!r}: laplace-torch's Kron holds one dense "
                                        "Kronecker pair per parameter (no groups, no diagonal factor)")
            t = positions[blk.module]
            a, b, index = blk.a[0], m * t * blk.b[0], blk.index[0, 0]
            for p in layers[blk.module].params:
                cols = ((index >= p.offset) & (index < p.offset + p.numel)).nonzero().flatten()
                if p.local == "bias" and cols.numel() == 1:
                    kfacs.append([self.factor * b])
                    continue
                order = torch.argsort(index[cols])
                cols = cols[order]
                aw = (sf * m / (N * t)) * a[cols][:, cols]
                kfacs.append([sf * b * aw] if b.numel() == aw.numel() == 1 else [sf * b, aw])
        return loss, Kron(kfacs)


class TangentlabGGN(_TangentlabCurvature, GGNInterface):
    """GGN (= Fisher for these likelihoods) backend for laplace-torch, computed by tangentlab.

    ``diag``/``full``/``kron`` are ``factor · M ·`` :func:`tangentlab.fim` with
    ``kind="exact"`` (softmax GGN ``Σ_n J_nᵀ (diag p − ppᵀ) J_n``) or ``kind="regression"``,
    ``variance=½`` (``Σ_n J_nᵀ J_n`` after the factor ``½``); ``jacobians`` is
    :func:`tangentlab.jacobian`, ``(M, C, P)`` (with ``last_layer=True`` laplace-torch's
    closed form ``∂f/∂W = I ⊗ φ(x)ᵀ`` from the features is kept). ``stochastic=True`` (Monte-Carlo Fisher) is
    not offered: laplace-torch draws its own samples, which tangentlab's ``kind="mc"``
    would not reproduce.
    """

    def __init__(self, model: nn.Module, likelihood: str, last_layer: bool = False,
                 subnetwork_indices: torch.LongTensor | None = None, dict_key_x: str = "input_ids",
                 dict_key_y: str = "labels", stochastic: bool = False, num_samples: int = 1) -> None:
        if stochastic:
            raise InvalidInputError("TangentlabGGN computes the exact GGN; stochastic=True is not supported")
        if subnetwork_indices is not None:
            raise InvalidInputError("TangentlabGGN does not support subnetwork Laplace; use "
                                    "subset_of_weights='all' or 'last_layer'")
        super().__init__(model, likelihood, last_layer, subnetwork_indices, dict_key_x, dict_key_y,
                         stochastic=False, num_samples=num_samples)

    def _fim_kwargs(self) -> dict[str, Any]:
        if self.likelihood == "regression":
            return {"kind": "regression", "variance": 0.5}
        return {"kind": "exact"}

    def jacobians(self, x: torch.Tensor, enable_backprop: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """``(J, f)``: ``J[n, c, p] = ∂f_c(x_n)/∂θ_p`` ``(M, C, P)`` and the outputs ``f`` ``(M, C)``.

        ``enable_backprop=True`` (derivatives through ``J``) falls back to laplace-torch's
        ``torch.func`` Jacobians: tangentlab's engine returns detached tensors.
        """
        if enable_backprop:
            return CurvatureInterface.jacobians(self, x, enable_backprop=True)
        js = cast(PushForwardDense, jacobian(self.model, x, params=self.params, batch_size=x.shape[0],
                                             progress=False)).data
        with torch.no_grad():
            f = self.model(x)
        return js, f

    functorch_jacobians = CurvatureInterface.jacobians


class TangentlabEF(_TangentlabCurvature, EFInterface):
    """Empirical-Fisher backend for laplace-torch, computed by tangentlab.

    ``H = factor · Σ_n ∇ℓ_n ∇ℓ_nᵀ`` = ``factor · M ·`` :func:`tangentlab.fim` with
    ``kind="empirical"`` and the per-example terms of laplace-torch's loss (cross-entropy or
    ``‖f − y‖²``); ``gradients`` returns the per-example gradients ``(M, P)`` from
    :func:`tangentlab.jacobian` of those losses.
    """

    def __init__(self, model: nn.Module, likelihood: str, last_layer: bool = False,
                 subnetwork_indices: torch.LongTensor | None = None, dict_key_x: str = "input_ids",
                 dict_key_y: str = "labels") -> None:
        if subnetwork_indices is not None:
            raise InvalidInputError("TangentlabEF does not support subnetwork Laplace")
        super().__init__(model, likelihood, last_layer, subnetwork_indices, dict_key_x, dict_key_y)

    def _per_example_loss(self) -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        return _squared_error if self.likelihood == "regression" else _cross_entropy

    def _fim_kwargs(self) -> dict[str, Any]:
        return {"kind": "empirical", "loss": self._per_example_loss()}

    def gradients(self, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(G, ℓ)``: per-example gradients ``G[n] = ∇_θ ℓ_n`` ``(M, P)`` and ``ℓ = Σ_n ℓ_n``."""
        loss = self._per_example_loss()

        def per_example(model: nn.Module, batch: tuple) -> torch.Tensor:
            return loss(model(batch[0]), batch[1])[:, None]

        g = cast(PushForwardDense, jacobian(self.model, (x, y), output=per_example, params=self.params,
                                            batch_size=x.shape[0], progress=False)).data[:, 0]
        with torch.no_grad():
            return g, self.lossfunc(self.model(x), y)


__all__ = ["TangentlabGGN", "TangentlabEF"]
