"""Quasi-diagonal representation (Ollivier 2015): the diagonal plus bias–row couplings.

With ``F = (1/N) Σ_n Σ_c φ_c(x_n) φ_c(x_n)ᵀ`` (mean over examples, sum over output
coordinates), :class:`PMatQuasiDiag` keeps

* every diagonal entry ``F_pp = (1/N) Σ_{n,c} φ_{c,n,p}²``;
* for every *coupled layer* the cross terms
  ``c_{o,j} = F[b_o, W_{o,j}] = (1/N) Σ_{n,c} φ_{c,n}[b_o] · φ_{c,n}[W_{o,j}]``.

A layer (the parameters owned by one module) is coupled when the space holds both its
``weight`` and its ``bias`` and ``bias.shape == weight.shape[:bias.dim()]``; ``o`` is then a
(multi-)index into ``bias`` and ``W_o = weight[o]`` its *row*:

* ``nn.Linear``: weight ``(O, I)``, bias ``(O,)``: ``b_o`` couples with ``W[o, :]``;
* ``nn.Conv1d/2d``: weight ``(C_out, C_in/G, kh, kw)``, bias ``(C_out,)``: ``b_o`` couples with
  every kernel weight of output channel ``o`` (per example, the bias gradient is
  ``Σ_t g_{o,t}`` over output positions ``t``);
* normalization layers (weight and bias ``(C,)``): ``b_o`` couples with ``w_o`` (2×2 blocks).

Every other entry is zero. Parameters of no coupled layer (no bias, a bias of another
shape, only one of the two selected) keep only their diagonal. The structure depends on
the parameter space alone (names and shapes), not on how the features were computed:
coupled layers on the generic ``torch.func`` route get their cross terms too.

For a fixed row ``o`` the block over ``(W_o, b_o)`` is an *arrowhead* matrix::

    M_o = [ diag(d_W)  c  ]     d_W, c ∈ ℝ^K  (K = weight.numel() / bias.numel())
          [ cᵀ         d_b ]

so the matrix is block diagonal with ``bias.numel()`` arrowhead blocks of size ``K + 1`` per
coupled layer and ``1 × 1`` blocks elsewhere. Memory: ``P`` for the diagonal plus the number
of weights of the coupled layers (at most ``2P``).

Unlike ``F``, the quasi-diagonal matrix need not be positive semi-definite: each
``c_j² ≤ d_{W_j} d_b`` (Cauchy–Schwarz) but ``Σ_j c_j² / d_{W_j}`` may exceed ``d_b``, so some
eigenvalues can be negative; ``norm(2)`` is the largest ``|λ|``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..engine import Capture, Engine, LayerCapture, ops
from ..engine.passes import one_pass
from ..errors import InvalidInputError
from ..layers.patch import Patches, PatchRule
from ..memory import MemoryBudget
from ..space import ParamInfo, ParamSpace
from ..vectors import PVector
from .base import PMat, check_damping
from .registry import register, vector_entries


@dataclass(frozen=True)
class CoupledLayer:
    """A layer whose bias entries couple with the rows of its weight."""

    module: str
    weight: ParamInfo
    bias: ParamInfo

    @property
    def rows(self) -> int:
        """Number of arrowhead blocks (``bias.numel()``)."""
        return self.bias.numel

    @property
    def width(self) -> int:
        """Weights per row ``K`` (each block has size ``K + 1``)."""
        return self.weight.numel // max(1, self.bias.numel)

    def indices(self, device: torch.device | None = None) -> torch.Tensor:
        """Flat indices of each block, ``(rows, K + 1)``: the row's weights, then its bias."""
        r, k = self.rows, self.width
        w = self.weight.offset + torch.arange(r * k, device=device).reshape(r, k)
        b = self.bias.offset + torch.arange(r, device=device)[:, None]
        return torch.cat([w, b], 1)


def coupled_layers(space: ParamSpace) -> tuple[CoupledLayer, ...]:
    """The layers of ``space`` with both a ``weight`` and a ``bias`` where
    ``bias.shape == weight.shape[:bias.dim()]``."""
    out = []
    for lay in space.layers:
        loc = {p.local: p for p in lay.params}
        w, b = loc.get("weight"), loc.get("bias")
        if w is None or b is None or b.numel == 0:
            continue
        if tuple(w.shape[:len(b.shape)]) == tuple(b.shape):
            out.append(CoupledLayer(lay.module, w, b))
    return tuple(out)


@register("quasidiag", build="tangentlab.pmat.quasidiag:build_quasidiag",
          stores="`diag F` plus the bias–row couplings of each layer", memory="`≤ 2P`",
          summary="Ollivier (2015); `solve` by Schur complements of arrowhead blocks, batched `eigh`; "
          "no `inverse`", keeps="quasi-diagonal", distributed=True,
          footprint=lambda space: 2 * vector_entries(space))
class PMatQuasiDiag(PMat):
    """Diagonal plus bias–row cross terms (see the module docstring for the maths).

    Stored: ``data``, the diagonal ``(P,)`` in the space's flat order, and ``cross``,
    ``{module path: tensor of the weight's shape}`` with ``cross[m][o, ...] = F[b_o, W_{o,...}]``
    for every coupled layer of the space.

    Verbs work block by block in closed form: ``mv``/``vTMv`` in ``O(P)``; ``solve`` by the
    Schur complement of each arrowhead block; ``eigh`` by batched eigendecompositions of the
    ``(K+1) × (K+1)`` blocks (chunked to fit the memory budget). ``inverse`` is not
    quasi-diagonal (the inverse of an arrowhead block is dense) and is refused.

    Parameters
    ----------
    space : ParamSpace
        The parameter space (``P`` entries, in its flat order).
    diag : torch.Tensor
        ``(P,)``, the diagonal.
    cross : dict of str to torch.Tensor
        ``{module path: tensor of the weight's shape}``, the bias–row cross terms.
    budget : MemoryBudget or None
        The memory budget that dense conversions are checked against (None: the device's).
    """

    def __init__(self, space: ParamSpace, diag: torch.Tensor, cross: dict[str, torch.Tensor],
                 budget: MemoryBudget | None = None):
        if not isinstance(diag, torch.Tensor) or diag.shape != (space.numel,):
            got = tuple(diag.shape) if isinstance(diag, torch.Tensor) else type(diag).__name__
            raise InvalidInputError(f"quasi-diagonal data must be ({space.numel},), got {got}")
        self.space, self.data = space, diag
        self.pairs = coupled_layers(space)
        want = {p.module for p in self.pairs}
        if set(cross) != want:
            raise InvalidInputError(
                f"cross terms must be given for exactly the coupled layers {sorted(want)}, "
                f"got {sorted(cross)}"
            )
        for p in self.pairs:
            if tuple(cross[p.module].shape) != p.weight.shape:
                raise InvalidInputError(
                    f"cross terms of layer {p.module!r} must have the weight's shape "
                    f"{p.weight.shape}, got {tuple(cross[p.module].shape)}"
                )
        self.cross = {p.module: cross[p.module] for p in self.pairs}
        self.budget = budget or MemoryBudget.resolve(None, diag.device)

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the stored tensors."""
        return self.data.dtype

    @property
    def device(self) -> torch.device:
        """The device of the stored tensors."""
        return self.data.device

    def __repr__(self) -> str:
        return f"PMatQuasiDiag({self.space.numel} parameters, {len(self.pairs)} coupled layers)"

    @staticmethod
    def mask(space: ParamSpace, device: torch.device | None = None) -> torch.Tensor:
        """Boolean ``(P, P)`` pattern of the entries a quasi-diagonal matrix on ``space`` keeps
        (the diagonal and the bias–row couplings). Meant for tests and small spaces.

        Parameters
        ----------
        space : ParamSpace
            The parameter space.
        device : torch.device, optional
            Where to allocate the mask.

        Returns
        -------
        torch.Tensor
            ``(P, P)`` booleans.
        """
        p = space.numel
        m = torch.eye(p, dtype=torch.bool, device=device)
        for pair in coupled_layers(space):
            idx = pair.indices(device)
            w, b = idx[:, :-1].reshape(-1), idx[:, -1:].expand(-1, pair.width).reshape(-1)
            m[w, b] = True
            m[b, w] = True
        return m

    # ---- block views -------------------------------------------------------------------
    def _rows(self, pair: CoupledLayer, flat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """A flat vector's ``(rows, K)`` weight part and ``(rows,)`` bias part for ``pair``."""
        return flat[pair.weight.slice].reshape(pair.rows, pair.width), flat[pair.bias.slice]

    def _c(self, pair: CoupledLayer) -> torch.Tensor:
        return self.cross[pair.module].reshape(pair.rows, pair.width)

    def _singles(self) -> torch.Tensor:
        """Flat indices of the ``1 × 1`` blocks (entries of no coupled layer)."""
        keep = torch.ones(self.space.numel, dtype=torch.bool, device=self.device)
        for pair in self.pairs:
            keep[pair.weight.slice] = False
            keep[pair.bias.slice] = False
        return keep.nonzero().flatten()

    # ---- verbs -------------------------------------------------------------------------
    def mv(self, v: PVector) -> PVector:
        """The product ``M v``.

        ``(M v)_W = d_W ∘ v_W + c · v_b`` (broadcast along each row) and
        ``(M v)_b = d_b ∘ v_b + Σ_j c_{·j} v_{W·j}``.
        """
        self._check_vec(v)
        f = v.flat()
        dv = self.data * f
        parts = {p.name: dv[p.slice] for p in self.space.params}
        for pair in self.pairs:
            c = self._c(pair)
            vw, vb = self._rows(pair, f)
            parts[pair.weight.name] = parts[pair.weight.name] + (c * vb[:, None]).reshape(-1)
            parts[pair.bias.name] = parts[pair.bias.name] + (c * vw).sum(1)
        return self._vec(torch.cat([parts[n] for n in self.space.names]))

    def vTMv(self, v: PVector) -> torch.Tensor:
        """``Σ_p d_p v_p² + 2 Σ_{o,j} c_{o,j} v_{W_{o,j}} v_{b_o}`` (differentiable in ``v``)."""
        self._check_vec(v)
        f = v.flat()
        out = (self.data * f * f).sum()
        for pair in self.pairs:
            vw, vb = self._rows(pair, f)
            out = out + 2 * (self._c(pair) * vw * vb[:, None]).sum()
        return out

    def trace(self) -> torch.Tensor:
        """``Σ_p F_pp``: the exact trace of ``F``."""
        return self.data.sum()

    def diag(self) -> PVector:
        return self._vec(self.data.clone())

    def to_dense(self) -> torch.Tensor:
        self._check_dense()
        out = torch.diag(self.data)
        for pair in self.pairs:
            idx = pair.indices(self.device)
            w, b = idx[:, :-1].reshape(-1), idx[:, -1:].expand(-1, pair.width).reshape(-1)
            c = self.cross[pair.module].reshape(-1)
            out[w, b] = c
            out[b, w] = c
        return out

    def solve(self, v: PVector, damping: float = 0.0) -> PVector:
        """``x`` with ``(M + λI) x = v``, block by block. With ``d ← d + λ``, for each row ``o``
        of a coupled layer (Schur complement of the arrowhead block)::

            x_b = (v_b − Σ_j c_j v_{W_j} / d_{W_j}) / (d_b − Σ_j c_j² / d_{W_j})
            x_W = (v_W − x_b c) / d_W

        and ``x_p = v_p / d_p`` elsewhere. Raises if a pivot (a ``d_W``, a Schur complement or
        an uncoupled ``d``) is zero."""
        self._check_vec(v)
        d = self.data + check_damping(damping)
        f = v.flat()
        singles = self._singles()
        zero = int((d[singles] == 0).sum())
        for pair in self.pairs:
            zero += int((d[pair.weight.slice] == 0).sum())
        if zero:
            raise InvalidInputError(
                f"the quasi-diagonal matrix has {zero} zero diagonal pivots; pass damping > 0"
            )
        x = f / d
        parts = {p.name: x[p.slice] for p in self.space.params}
        for pair in self.pairs:
            c = self._c(pair)
            dw, db = self._rows(pair, d)
            vw, vb = self._rows(pair, f)
            schur = db - (c * c / dw).sum(1)
            if (schur == 0).any():
                raise InvalidInputError(
                    f"layer {pair.module!r}: {int((schur == 0).sum())} arrowhead blocks are "
                    "singular (zero Schur complement); pass damping > 0"
                )
            xb = (vb - (c * vw / dw).sum(1)) / schur
            parts[pair.weight.name] = ((vw - xb[:, None] * c) / dw).reshape(-1)
            parts[pair.bias.name] = xb
        return self._vec(torch.cat([parts[n] for n in self.space.names]))

    def inverse(self, damping: float = 0.0) -> PMat:
        raise self._unsupported(
            "inverse", "solve(v, damping) or PMatBlockDiag",
            "the inverse of an arrowhead block is dense, not quasi-diagonal",
        )

    # ---- eigendecomposition ------------------------------------------------------------
    def _blocks(self, pair: CoupledLayer, rows: torch.Tensor) -> torch.Tensor:
        """The arrowhead blocks of the given rows: ``(len(rows), K + 1, K + 1)``."""
        k = pair.width
        dw, db = self._rows(pair, self.data)
        c = self._c(pair)[rows]
        blocks = torch.diag_embed(torch.cat([dw[rows], db[rows, None]], 1))
        blocks[:, :k, k] = c
        blocks[:, k, :k] = c
        return blocks

    def _row_chunks(self, pair: CoupledLayer, rows: torch.Tensor) -> list[torch.Tensor]:
        """Split ``rows`` so that each batch of blocks (with eigenvectors and workspace) fits."""
        size = (pair.width + 1) ** 2
        self.budget.check(
            f"one arrowhead block of layer {pair.module!r} ({pair.width + 1}² entries)", 3 * size,
            self.dtype, "Use PMatDiag or PMatBlockDiag with fewer parameters, or select fewer "
            "parameters with `params=`.",
        )
        step = max(1, self.budget.max_elements(self.dtype) // (3 * size))
        return list(torch.split(rows, step))

    def _pair_eigvals(self, pair: CoupledLayer) -> torch.Tensor:
        """Eigenvalues of every block of ``pair``, ascending per row: ``(rows, K + 1)``."""
        rows = torch.arange(pair.rows, device=self.device)
        return torch.cat([torch.linalg.eigvalsh(self._blocks(pair, r))
                          for r in self._row_chunks(pair, rows)])

    def _eigvals(self) -> torch.Tensor:
        """All ``P`` eigenvalues: those of the ``1 × 1`` blocks, then of each coupled layer's
        blocks (row-major, ascending within a block)."""
        return torch.cat([self.data[self._singles()]]
                         + [self._pair_eigvals(p).reshape(-1) for p in self.pairs])

    def eigh(self, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top ``k`` eigenpairs (descending), from the ``1 × 1`` blocks and the batched
        eigendecompositions of the arrowhead blocks."""
        p = self.space.numel
        kk = p if k is None else k
        if not 1 <= kk <= p:
            raise InvalidInputError(f"k must be in [1, {p}], got {k}")
        self.budget.check(f"{kk} eigenvectors of length {p}", p * kk, self.dtype,
                          "Ask for fewer eigenpairs with `k=`.")
        singles = self._singles()
        evals = self._eigvals()
        chosen = torch.argsort(evals, descending=True)[:kk]
        vals = torch.empty(kk, dtype=self.dtype, device=self.device)
        vecs = torch.zeros(p, kk, dtype=self.dtype, device=self.device)
        cols = torch.arange(kk, device=self.device)
        start = singles.numel()
        hit = chosen < start
        vals[cols[hit]] = evals[chosen[hit]]
        vecs[singles[chosen[hit]], cols[hit]] = 1.0
        for pair in self.pairs:
            n = pair.rows * (pair.width + 1)
            hit = (chosen >= start) & (chosen < start + n)
            local = chosen[hit] - start
            start += n
            if local.numel() == 0:
                continue
            r, j = local // (pair.width + 1), local % (pair.width + 1)
            rows, inv = torch.unique(r, return_inverse=True)
            e_parts, u_parts = [], []
            for chunk in self._row_chunks(pair, rows):
                e, u = torch.linalg.eigh(self._blocks(pair, chunk))
                e_parts.append(e)
                u_parts.append(u)
            e, u = torch.cat(e_parts), torch.cat(u_parts)
            mine = cols[hit]
            vals[mine] = e[inv, j]
            vecs[pair.indices(self.device)[r], mine[:, None]] = u[inv, :, j]
        order = torch.argsort(vals, descending=True)
        return vals[order], vecs[:, order]

    def norm(self, ord: str | int = "fro") -> torch.Tensor:
        """``'fro'``: ``√(Σ_p d_p² + 2 Σ c²)``; ``2``: the largest ``|λ|`` over all blocks."""
        if ord == "fro":
            sq = self.data.pow(2).sum()
            for c in self.cross.values():
                sq = sq + 2 * c.pow(2).sum()
            return sq.sqrt()
        if ord == 2:
            return self._eigvals().abs().max()
        raise InvalidInputError(f"unsupported norm {ord!r}; use 'fro' or 2")

    # ---- algebra -----------------------------------------------------------------------
    def _add(self, other: PMatQuasiDiag) -> PMatQuasiDiag:
        return PMatQuasiDiag(self.space, self.data + other.data,
                             {m: c + other.cross[m] for m, c in self.cross.items()}, self.budget)

    def _scale(self, s: float) -> PMatQuasiDiag:
        return PMatQuasiDiag(self.space, self.data * s,
                             {m: c * s for m, c in self.cross.items()}, self.budget)

    def _select(self, sub: ParamSpace, idx: torch.Tensor) -> PMatQuasiDiag:
        # a cross term survives iff both its weight and its bias are kept
        return PMatQuasiDiag(sub, self.data[idx],
                             {p.module: self.cross[p.module] for p in coupled_layers(sub)},
                             self.budget)

    # ---- persistence -------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        return {**self._meta(), "diag": self.data, "cross": dict(self.cross)}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> PMatQuasiDiag:
        """Rebuild the matrix from ``state``, what its :meth:`state_dict` returned.

        Parameters
        ----------
        state : dict
        """
        return cls(ParamSpace.from_state(state["space"]), state["diag"], dict(state["cross"]))


# ---- building from the engine ----------------------------------------------------------
def _cross_patch(lc: LayerCapture, pair: CoupledLayer) -> torch.Tensor:
    """``Σ_{c,n} φ_b[c,n,o] φ_W[c,n,o,i]`` for a patch layer without materializing ``φ``.

    With ``gg`` the output gradients ``(C, N, T, G, O)`` and ``ã`` the homogeneous inputs
    ``(N, T, G, I+1)``: ``φ_b = Σ_t gg_t ã_{t,I}`` (``ã_{t,I} = 1``), ``φ_W = Σ_t gg_t ã_tᵀ``, so
    ``cross[g,o,i] = Σ_{n,t} h[n,t,g,o] ã[n,t,g,i]`` with ``h = Σ_c φ_b[c,n,g,o] gg[c,n,t,g,o]``.
    For ``T = 1`` this is ``(Σ_c gg²)ᵀ ã``: one matmul.
    """
    feat: Patches = lc.feat
    a = feat.a
    gg = lc.rule.shape_g(lc.module, feat, lc.g)  # type: ignore[attr-defined]
    if feat.t == 1:
        h = gg[:, :, 0].pow(2).sum(0) * a[:, 0, :, -1:]  # (N, G, O)
        out = torch.einsum("ngo,ngi->goi", h, a[:, 0, :, :-1])
    else:
        fb = torch.einsum("cntgo,ntg->cngo", gg, a[..., -1])
        h = torch.einsum("cngo,cntgo->ntgo", fb, gg)
        out = torch.einsum("ntgo,ntgi->goi", h, a[..., :-1])
    return out.reshape(pair.weight.shape)


def _cross_from(phi_w: torch.Tensor, phi_b: torch.Tensor, pair: CoupledLayer) -> torch.Tensor:
    c, n = phi_w.shape[0], phi_w.shape[1]
    w = phi_w.reshape(c, n, pair.rows, pair.width)
    b = phi_b.reshape(c, n, pair.rows)
    return torch.einsum("cnr,cnrk->rk", b, w).reshape(pair.weight.shape)


def layer_cross(cap: Capture, pair: CoupledLayer, fast: bool = True) -> torch.Tensor:
    """``Σ_{c,n} φ_b[c,n,o] · φ_W[c,n,o,...]`` over one capture (weight-shaped, not normalized).

    Patch layers (Linear, Conv) use :func:`_cross_patch` when ``fast``; other hooked
    layers materialize per-example gradients in chunks over outputs; generic-route
    parameters use their per-example Jacobians."""
    lc = next((x for x in cap.layers if x.layer.module == pair.module), None)
    if lc is None:
        return _cross_from(cap.generic[pair.weight.name], cap.generic[pair.bias.name], pair)
    if (fast and isinstance(lc.rule, PatchRule) and isinstance(lc.feat, Patches)
            and lc.feat.has_bias):
        return _cross_patch(lc, pair)
    out = None
    for sl in lc.rule._chunks(lc.module, lc.g):
        pe = lc.rule.per_example(lc.module, lc.feat, lc.g[sl])
        part = _cross_from(pe["weight"], pe["bias"], pair)
        out = part if out is None else out + part
    assert out is not None
    return out


def build_quasidiag(engine: Engine, data: Any, centering: bool = False, *,
                    fast: bool = True) -> PMatQuasiDiag:
    """The quasi-diagonal ``F`` in one pass over ``data``: ``diag = (1/N) Σ_{n,c} φ²`` and, for
    each coupled layer, ``cross = (1/N) Σ_{n,c} φ_b φ_W`` (mean over examples, sum over outputs).

    With ``centering=True`` the features are centered, which subtracts ``Σ_c m_c[p]²`` from the
    diagonal and ``Σ_c m_c[b_o] m_c[W_{o,j}]`` from the cross terms. ``fast=False`` forces the
    materialized per-example path for patch layers too (for testing)."""
    space = engine.space
    pairs = coupled_layers(space)
    kw: dict[str, Any] = {"dtype": engine.dtype, "device": engine.device}
    diag = torch.zeros(space.numel, **kw)
    cross = {p.module: torch.zeros(p.weight.shape, **kw) for p in pairs}

    def consume(cap: Capture) -> None:
        diag.add_(ops.diag(cap, space))
        for pair in pairs:
            cross[pair.module].add_(layer_cross(cap, pair, fast))

    n, mean = one_pass(engine, data, "quasi-diagonal", consume, centering, merge=True, reduce=[diag, *cross.values()],
                       output_blocks=True)
    diag /= n
    for c in cross.values():
        c /= n
    if mean is not None:
        diag -= mean.pow(2).sum(0)
        for pair in pairs:
            mw = mean[:, pair.weight.slice].reshape(-1, pair.rows, pair.width)
            mb = mean[:, pair.bias.slice]
            cross[pair.module] -= torch.einsum("cr,crk->rk", mb, mw).reshape(pair.weight.shape)
    return PMatQuasiDiag(space, diag, cross, engine.budget)
