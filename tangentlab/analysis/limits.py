"""Distance to the limit: how far a finite network's NTK is from its infinite-width NTK.

Two numbers compare an empirical NTK ``K`` with the limit ``Θ`` of the same architecture
(:func:`tangentlab.limits.ntk`) on the same inputs, both ``(N, N, C, C)`` (or their
``(NC, NC)`` matrices, rows ``n·C + c``):

* the relative Frobenius distance ``‖K − Θ‖_F / ‖Θ‖_F``, which falls like ``1/√width`` at
  initialization (Jacot et al. 2018; Hanin & Nica 2020) and grows as the features move
  during training;
* the centered kernel alignment ``CKA(K, Θ)`` (:func:`tangentlab.analysis.kernels.cka`,
  centering over examples per output), insensitive to the overall scale: 1 when the kernels
  are proportional after centering.

Use in a study: build the limit once per probe set (it does not change during training),
then call :func:`distance_to_limit` at each probe step with the current empirical NTK::

    limit = tangentlab.limits.ntk(model, x_probe, parameterization="standard")
    ...
    row.update(distance_to_limit(tl.ntk(model, x_probe), limit))

or :func:`limit_probe` ``(model, x)`` for both kernels and the distances in one call (at
initialization across widths). With ``parameterization="ntk"`` the empirical kernel is
:func:`tangentlab.limits.empirical_ntk`, the finite network's NTK in that parameterization.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import InvalidInputError
from .kernels import _matrix, cka

__all__ = ["distance_to_limit", "limit_probe"]


def distance_to_limit(empirical: Any, limit: Any, centering: str | None = "examples") -> dict[str, float]:
    """``{"rel_frobenius": ‖K − Θ‖_F / ‖Θ‖_F, "cka": CKA(K, Θ)}`` for kernels of the same shape.

    ``empirical`` and ``limit``: :class:`~tangentlab.FMatDense`, ``(N, N, C, C)`` or square
    ``(NC, NC)`` tensors; ``centering`` as in :func:`~tangentlab.analysis.kernels.cka`.
    """
    n_outputs = int(limit.shape[2]) if len(limit.shape) == 4 else None
    K, L = _matrix(empirical), _matrix(limit)
    if K.shape != L.shape:
        raise InvalidInputError(f"kernels of different shapes {tuple(K.shape)} and {tuple(L.shape)}")
    den = torch.linalg.norm(L)
    if den == 0:
        raise InvalidInputError("the limit kernel is zero: the relative distance is undefined")
    return {"rel_frobenius": float(torch.linalg.norm(K - L) / den),
            "cka": cka(K, L, centering=centering, n_outputs=n_outputs)}


def limit_probe(model: nn.Module, x: torch.Tensor, *, parameterization: str = "standard",
                centering: str | None = "examples", **limit_kwargs: Any) -> dict[str, float]:
    """:func:`distance_to_limit` between ``model``'s NTK on ``x`` and its infinite-width NTK.

    ``parameterization="standard"`` compares ``tl.ntk(model, x)`` with the standard-
    parameterization limit; ``"ntk"`` the NTK-parameterized kernels.
    ``limit_kwargs`` (``weight_var``, ``bias_var``, ``spatial``...) go to
    :func:`tangentlab.limits.ntk`.
    """
    from .. import limits

    wv, bv = limit_kwargs.pop("weight_var", None), limit_kwargs.pop("bias_var", None)
    lim = limits.ntk(model, x, parameterization=parameterization, weight_var=wv, bias_var=bv, **limit_kwargs)
    emp = limits.empirical_ntk(model, x, parameterization=parameterization, weight_var=wv, bias_var=bv)
    return distance_to_limit(emp, lim, centering)
