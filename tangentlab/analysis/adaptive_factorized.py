"""The factorized ("adaptive tangent feature") network of the preprint's Fig. 4, for dense
and convolution layers (LeJeune & Alemohammad, CPAL 2024, §3.2).

Model. With the network ``f_θ`` frozen at ``θ0``, the adaptive model is the linear model in
the *initial* tangent features with a factorized coefficient,

    f(x) = f_{θ0}(x) + J_{θ0}(x) δ,      δ_ℓ = M1_ℓ W_ℓ M2_ℓ   (Model A, §3.2),

evaluated by :meth:`tangentlab.linearize.Linearized.expansion` (one forward-mode product
per call): ``J_{θ0}`` is never formed. Training starts at ``M = I``, ``W = 0``, ``b = 0``
(so ``f = f0`` and ``δ = 0``) and relies on the implicit regularization of SGD/Adam, as the
authors' code. With ``M`` fixed
to ``I`` it is the linearized ("fixed tangent features") model ``f0 + J0 δ``.

Layers (``δ`` is the deviation of the layer's torch parameters from ``θ0``):

* ``nn.Linear`` (torch weight ``(out, in)``): ``W ∈ R^{in×out}`` (fan-in × fan-out, the
  paper's orientation), ``M1 ∈ R^{in×in}`` acts on the layer inputs, ``M2 ∈ R^{out×out}``
  on the back-propagated signals; the torch weight deviation is ``(M1 W M2)ᵀ``.
* ``nn.Conv2d`` (torch weight ``(O, I, kh, kw)``, ``I = in_channels/groups``, ``S = kh·kw``):
  the paper notes the results "extend straightforwardly to higher order tensors (such as
  filter kernels)"; two extensions are offered (``conv``):

  - ``"tucker"`` (the authors' code): the kernel is a 3-way tensor ``W ∈ R^{S×I×O}``
    transformed along each mode,
    ``δ[s,i,o] = Σ Ms[s,s'] M1[i,i'] W[s',i',o'] M2[o',o]``
    with ``Ms ∈ R^{S×S}`` (spatial), ``M1 ∈ R^{I×I}`` (input channels), ``M2 ∈ R^{O×O}``
    (output channels). On the fan-in matricization ``W_mat ∈ R^{(I·S)×O}`` (row ``i·S + s``,
    the torch ``weight.reshape(O, −1)ᵀ`` layout) this is
    ``δ_mat = (M1 ⊗ Ms) W_mat M2``: Model A with the fan-in factor constrained to a
    Kronecker product. (The repo writes ``einsum("ij,jkl,km,ln->imn", M1, W, M2, M3)``,
    i.e. the channel factors transposed; ``M`` and ``Mᵀ`` are the same free matrix started
    at ``I``, and (S)GD/Adam trajectories are transposes of each other, so the two models
    compute the same function at every step.)
  - ``"matrix"``: Model A on the im2col matricization (a convolution is a dense layer
    acting on ``I·S``-dimensional patches): ``δ_mat = M1 W M2`` with
    ``M1 ∈ R^{(I·S)×(I·S)}``, ``M2 ∈ R^{O×O}`` — exactly the paper's §3.2 structure, so
    Theorem 2 applies to it verbatim.

* Biases: ``δ_b = M2ᵀ b`` (the fan-out factor acts on ``b`` as on ``W``'s output index; a
  bias is a fan-in row of its own, without ``M1``).

Gradients (denominator layout, ``G = ∂L/∂δ_ℓ`` in the ``W`` layout, i.e. the network's
weight gradient at ``θ0`` back-propagated through ``J0ᵀ``): ``∂L/∂W = M1ᵀ G M2ᵀ``,
``∂L/∂M1 = G (W M2)ᵀ``, ``∂L/∂M2 = (M1 W)ᵀ G``; at the start (``W = 0``, ``M = I``) the
factors get no gradient and ``∂L/∂W`` is the standard network's weight gradient, so the
first step equals the linearized model's. Autograd computes all of this; the tests check
it against float64 finite differences.
"""

from __future__ import annotations

import copy
from typing import Any, cast

import torch
from torch import nn

from ..errors import InvalidInputError
from ..linearize import Linearized

CONV_MODES = ("tucker", "matrix")


class Factorized(nn.Module):
    """``f(x) = f_{θ0}(x) + J_{θ0}(x) δ(M, W, b)`` for the ``nn.Linear`` and ``nn.Conv2d``
    layers of ``model`` (see the module docstring for ``δ``).

    Parameters per layer key (the module name with dots replaced by ``_``): ``M1[key]``,
    ``M2[key]``, ``W[key]``, ``b[key]`` (when the layer has a bias) and, for a Conv2d in
    ``"tucker"`` mode, ``Ms[key]``. ``_plan`` lists ``(parameter name, key, "weight"|"bias")``
    in the network's parameter order. Layers whose parameters have ``requires_grad=False``
    are kept at ``θ0``. Any other parameterized module raises ``TypeError``.
    """

    def __init__(self, model: nn.Module, conv: str = "tucker"):
        super().__init__()
        if conv not in CONV_MODES:
            raise InvalidInputError(f"conv: unknown factorization {conv!r}; accepted: {', '.join(CONV_MODES)}")
        self.conv = conv
        base = copy.deepcopy(model).eval()
        base.requires_grad_(False)
        self.M1, self.M2, self.Ms = nn.ParameterDict(), nn.ParameterDict(), nn.ParameterDict()
        self.W, self.b = nn.ParameterDict(), nn.ParameterDict()
        self._plan: list[tuple[str, str, str]] = []
        self._shapes: dict[str, tuple[int, ...]] = {}
        mods = dict(model.named_modules())
        trainable = {n for n, p in model.named_parameters() if p.requires_grad}
        for name, p in base.named_parameters():
            if name not in trainable:
                continue
            mod_name, _, pname = name.rpartition(".")
            mod = mods[mod_name]
            if not isinstance(mod, (nn.Linear, nn.Conv2d)):
                raise TypeError(f"Factorized supports Linear and Conv2d layers only, got {type(mod).__name__} "
                                f"at {mod_name!r}")
            if pname not in ("weight", "bias"):  # pragma: no cover - torch layers have only these
                raise TypeError(f"unexpected parameter {name!r}")
            key = mod_name.replace(".", "_") or "root"
            dtype, dev = p.dtype, p.device
            if key not in self.M1:
                fan_in, fan_out, spatial = _fans(mod, conv)
                self.M1[key] = nn.Parameter(torch.eye(fan_in, dtype=dtype, device=dev))
                self.M2[key] = nn.Parameter(torch.eye(fan_out, dtype=dtype, device=dev))
                if spatial:
                    self.Ms[key] = nn.Parameter(torch.eye(spatial, dtype=dtype, device=dev))
                self._shapes[key] = tuple(mod.weight.shape)
            if pname == "weight":
                shape = self._shapes[key]
                if isinstance(mod, nn.Conv2d) and conv == "tucker":
                    w_shape: tuple[int, ...] = (shape[2] * shape[3], shape[1], shape[0])
                else:
                    w_shape = (int(p[0].numel()), shape[0])
                self.W[key] = nn.Parameter(torch.zeros(w_shape, dtype=dtype, device=dev))
            else:
                self.b[key] = nn.Parameter(torch.zeros(p.shape[0], dtype=dtype, device=dev))
            self._plan.append((name, key, pname))
        if not self._plan:
            raise InvalidInputError("model: no trainable Linear/Conv2d parameter to factorize")
        # f0 + J0 δ over the factorized parameters; not registered (its θ is not trained)
        self._lin = [Linearized(base, params=[n for n, _, _ in self._plan])]
        self._lin[0].requires_grad_(False)

    # --- tensors ---------------------------------------------------------------------------
    def theta0(self) -> dict[str, torch.Tensor]:
        """``θ0`` of every network parameter (trainable or not), by name."""
        lin = self._lin[0]
        own = {**lin.theta0(), **{n: getattr(lin, f"fixed_{i}") for i, n in enumerate(lin._fixed_names)}}
        return {n: own[n] for n, _ in lin._base[0].named_parameters()}

    def layer_delta(self, key: str, pname: str) -> torch.Tensor:
        """``δ`` of one parameter in its torch layout (autograd-connected to the factors)."""
        if pname == "bias":
            return self.M2[key].T @ self.b[key]
        shape = self._shapes[key]
        W, M1, M2 = self.W[key], self.M1[key], self.M2[key]
        if key in self.Ms:  # tucker conv: δ[s,i,o] = Ms[s,s'] M1[i,i'] W[s',i',o'] M2[o',o]
            d = torch.einsum("ab,ij,bjp,pq->aiq", self.Ms[key], M1, W, M2)
            return d.permute(2, 1, 0).reshape(shape)
        return (M1 @ W @ M2).T.reshape(shape)

    def deltas(self) -> dict[str, torch.Tensor]:
        """``δ`` of every factorized parameter (torch layout), by parameter name."""
        return {name: self.layer_delta(key, pname) for name, key, pname in self._plan}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self._lin[0].expansion(self.deltas(), x)

    def _apply(self, fn: Any, recurse: bool = True) -> Factorized:  # keep the hidden model in step
        super()._apply(fn, recurse)
        self._lin[0]._apply(fn)
        return self

    def extra_repr(self) -> str:
        n = sum(p.numel() for p in self.parameters())
        return f"conv={self.conv!r}, {len(self.M1)} factorized layers, {n} trainable scalars"


def _fans(mod: nn.Module, conv: str) -> tuple[int, int, int]:
    """``(fan-in factor size, fan-out factor size, spatial factor size or 0)`` of a layer."""
    if isinstance(mod, nn.Linear):
        return mod.in_features, mod.out_features, 0
    w = cast(torch.Tensor, mod.weight)
    O, I, kh, kw = w.shape
    if conv == "tucker":
        return I, O, kh * kw
    return I * kh * kw, O, 0


__all__ = ["CONV_MODES", "Factorized"]
