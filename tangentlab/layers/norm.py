"""Rules for normalization layers with an elementwise affine transform
``y = x̂ ⊙ w + b``: BatchNorm1d/2d (eval mode), LayerNorm, GroupNorm, RMSNorm.

The per-example weight gradient is ``Σ g ⊙ x̂`` and the bias gradient ``Σ g``,
summed over the output dimensions the parameters are broadcast along.

Kronecker representations (KFAC/EKFAC, their optimizers): the ``D`` affine features
(``D = weight.numel()``) are ``D`` groups, each a ``(1 × R)`` matrix ``[w_d, b_d]`` (``R = 2``
columns, or 1 when only one of weight/bias exists). Their factors hold feature ``d``'s exact
Fisher block rather than a product of input and output statistics: ``A_d = Σ_n Σ_c ψ ψᵀ``
(``R × R``) with ``ψ_{c,n,d} = (Σ_t g x̂, Σ_t g)_d`` the per-example gradient of
``(w_d, b_d)`` (``t``: the positions the parameters are broadcast over) and ``B_d = Σ_n 1 = N``;
once the builders divide each factor by ``N``, ``A_d ⊗ B_d = (1/N) Σ_{n,c} ψ ψᵀ`` is that block
itself: only the blocks between different features are dropped. Both ``approx="expand"`` and
``"reduce"`` give it (nothing is approximated inside it); EKFAC's eigenbasis diagonalizes it, so
EKFAC equals KFAC here. As ``A`` depends on the output gradients, it is returned for every
output block of a batch and ``B`` (the count) for the first one only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import UnsupportedLayerError
from .base import KronLayout, LayerRule
from .patch import check_approx


@dataclass
class Normalized:
    xhat: torch.Tensor  # (N, *out) normalized input, before the affine map
    param_dims: tuple[int, ...]  # dims of (N, *out) spanned by the parameters


def batchnorm_coupling(module: nn.Module) -> str | None:
    """Why a BatchNorm couples the examples of a batch (None if it does not)."""
    if not isinstance(module, nn.modules.batchnorm._NormBase) or isinstance(
        module, nn.modules.instancenorm._InstanceNorm
    ):
        return None
    if module.training:
        return "is in training mode (batch statistics couple the examples)"
    if not module.track_running_stats or module.running_mean is None:
        return "has track_running_stats=False, so it always uses batch statistics"
    return None


class AffineNormRule(LayerRule):
    """Shared maths of the elementwise-affine normalization layers (see the module docstring)."""

    def _reduce(self, feat: Normalized, x: torch.Tensor) -> torch.Tensor:
        """Sum a ``(C, N, *out)`` tensor over the non-parameter output dims."""
        keep = {0, 1} | {d + 1 for d in feat.param_dims}
        dims = tuple(d for d in range(x.dim()) if d not in keep)
        return x.sum(dims) if dims else x

    def per_example(self, module, feat: Normalized, g):
        out = {}
        if getattr(module, "weight", None) is not None:
            w = self._reduce(feat, g * feat.xhat[None])
            out["weight"] = w.reshape(g.shape[0], g.shape[1], *module.weight.shape)
        if getattr(module, "bias", None) is not None:
            b = self._reduce(feat, g)
            out["bias"] = b.reshape(g.shape[0], g.shape[1], *module.bias.shape)
        return out

    # ---- Kronecker blocks: the exact (R × R) block of each affine feature ---------------------
    def kron_layout(self, module: nn.Module) -> KronLayout | None:
        names = self.params(module)
        if not names:
            return None
        d = getattr(module, names[0]).numel()
        index = {}
        for col, k in enumerate(names):
            idx = torch.full((d, 1, len(names)), -1, dtype=torch.long)
            idx[:, 0, col] = torch.arange(d)
            index[k] = idx
        return KronLayout(d, 1, len(names), index)

    def _psi(self, module: nn.Module, feat: Normalized, g: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
        """The per-example gradients ``ψ`` as ``(C, N, D, R)`` (columns: weight then bias), kept
        columns ``cols`` only."""
        pe = self.per_example(module, feat, g)
        c, n = g.shape[0], g.shape[1]
        names = self.params(module)
        return torch.stack([pe[names[int(k)]].reshape(c, n, -1) for k in cols], -1)

    def kfac_factors(self, module, feat: Normalized, g, cols, input_factor=True, approx="expand"):
        """``A_d = Σ_{n,c} ψ ψᵀ`` (``(D, R, R)``, every output block) and ``B = N``
        (``(D, 1, 1)``; 0 for a batch's later output blocks), for either ``approx``: the exact
        per-feature blocks (module docstring)."""
        check_approx(approx)
        psi = self._psi(module, feat, g, cols)
        big_a = torch.einsum("cndr,cnds->drs", psi, psi)
        big_b = g.new_full((psi.shape[2], 1, 1), float(g.shape[1]) if input_factor else 0.0)
        return big_a, big_b

    def kfe_diag(self, module, feat: Normalized, g, cols, ua, ub):
        """``Σ_{n,c} (U_Bᵀ ψᵀ U_A)²`` (``(D, 1, R)``; ``U_B`` is ``±1``)."""
        rot = torch.einsum("cndr,drs->cnds", self._psi(module, feat, g, cols), ua)
        return (rot.square().sum((0, 1)) * ub[:, 0, :].square())[:, None, :]


class BatchNormRule(AffineNormRule):
    """BatchNorm1d/2d/3d in eval mode (running statistics)."""

    def check(self, module):
        why = batchnorm_coupling(module)
        if why:
            raise UnsupportedLayerError(
                f"{type(module).__name__} {why}; per-example Jacobians are then undefined. "
                "Call `model.eval()` first, or pass `route='joint'` for the Jacobian of the "
                "whole batch (examples coupled)."
            )
        return None

    def features(self, module, args, kwargs):
        x = args[0] if args else kwargs["input"]
        shape = [1, -1] + [1] * (x.dim() - 2)
        xhat = (x - module.running_mean.reshape(shape)) * torch.rsqrt(
            module.running_var.reshape(shape) + module.eps
        )
        return Normalized(xhat, (1,))


class LayerNormRule(AffineNormRule):
    def features(self, module: nn.LayerNorm, args, kwargs):
        x = args[0] if args else kwargs["input"]
        xhat = F.layer_norm(x, module.normalized_shape, None, None, module.eps)
        k = len(module.normalized_shape)
        return Normalized(xhat, tuple(range(x.dim() - k, x.dim())))


class GroupNormRule(AffineNormRule):
    def features(self, module: nn.GroupNorm, args, kwargs):
        x = args[0] if args else kwargs["input"]
        return Normalized(F.group_norm(x, module.num_groups, None, None, module.eps), (1,))


class RMSNormRule(AffineNormRule):
    def features(self, module, args, kwargs):
        x = args[0] if args else kwargs["input"]
        xhat = F.rms_norm(x, module.normalized_shape, None, module.eps)
        k = len(module.normalized_shape)
        return Normalized(xhat, tuple(range(x.dim() - k, x.dim())))
