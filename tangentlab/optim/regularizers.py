"""Fisher-based penalties and steps that work with any parameter-space representation.

* :class:`FisherPenalty` (EWC, Kirkpatrick et al. 2017): ``R(θ) = (λ/2) (θ − θ*)ᵀ F (θ − θ*)``
  computed as ``F.vTMv(θ − θ*)`` on the live parameters, so it back-propagates into the
  model for every representation (dense, diag, KFAC, EKFAC, low-rank, implicit, ...).
* :func:`natural_gradient_step`: ``θ ← θ − η (F + εI)⁻¹ ∇L`` through ``F.solve(∇L, ε)``
  (Cholesky, eigenbasis, Woodbury or CG, whatever the representation does).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..errors import InvalidInputError
from ..pmat.base import PMat
from ..vectors import PVector


class FisherPenalty:
    """``(strength/2) · F.vTMv(θ − θ*)`` with ``θ*`` the parameters when it was made (or
    ``anchor``). ``F`` may be any representation built on the model's parameters (its
    space selects which parameters are penalized).

    Parameters
    ----------
    fisher : PMat
        ``F``.
    model : nn.Module
        The network whose parameters give ``θ*`` (unless ``anchor``).
    strength : float
        ``λ ≥ 0``.
    anchor : PVector, optional
        ``θ*`` (copied).
    """

    def __init__(self, fisher: PMat, model: nn.Module, strength: float = 1.0, anchor: PVector | None = None):
        if not isinstance(fisher, PMat):
            raise InvalidInputError(f"fisher must be a tangentlab PMat, got {type(fisher).__name__}")
        if not strength >= 0:
            raise InvalidInputError(f"strength must be >= 0; got {strength!r}")
        self.fisher, self.strength = fisher, float(strength)
        self.anchor = (anchor if anchor is not None else PVector.from_model(model, fisher.space)).detach().clone()

    def __call__(self, model: nn.Module) -> torch.Tensor:
        """The penalty at the model's current parameters (a differentiable 0-d tensor)."""
        delta = PVector.from_model(model, self.fisher.space) - self.anchor
        return 0.5 * self.strength * self.fisher.vTMv(delta)


def natural_gradient_step(model: nn.Module, fisher: PMat, lr: float, damping: float,
                          grad: PVector | None = None, **solve_options: Any) -> PVector:
    """``θ ← θ − lr · F.solve(∇L, damping)`` on the parameters of ``fisher.space`` (``grad``:
    default the model's ``.grad``). Returns the step direction ``F.solve(∇L, damping)``.

    Parameters
    ----------
    model : nn.Module
        The network, updated in place.
    fisher : PMat
        ``F``.
    lr : float
        ``η``.
    damping : float
        ``ε ≥ 0``.
    grad : PVector, optional
        ``∇L`` (default: the model's ``.grad``).
    **solve_options
        Passed to ``fisher.solve`` (e.g. ``method``, ``rtol``).

    Returns
    -------
    PVector
        The direction ``(F + εI)⁻¹ ∇L``.
    """
    g = grad if grad is not None else PVector.from_grad(model, fisher.space)
    direction = fisher.solve(g, damping, **solve_options)
    with torch.no_grad():
        (direction * (-lr)).add_to_model(model)
    return direction


__all__ = ["FisherPenalty", "natural_gradient_step"]
