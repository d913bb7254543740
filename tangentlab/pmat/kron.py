"""Kronecker-factored representations: KFAC (KFC for convolutions) and EKFAC.

Each layer's parameters are arranged as ``G`` matrices ``V_γ`` of shape ``(O, I)``
(rows: outputs; columns: inputs, with a trailing bias column for layers with a
bias — the homogeneous form ``s = W ã``; see :class:`~tangentlab.layers.base.KronLayout`).
With per-example gradients ``G_{c,n} = Σ_t g_{c,n,t} ã_{n,t}ᵀ``:

* **KFAC**: ``F_γ ≈ A_γ ⊗ B_γ`` acting as ``V ↦ B V A`` with, for ``T`` positions sharing the
  weight (1 for a plain Linear), one of the two approximations of Eschenhagen et al. (2023)
  (``kfac_approx`` of :func:`tangentlab.fim`):

  - ``"expand"`` (default; KFC's normalization for convolutions): ``A = (1/N) Σ_n Σ_t ã ãᵀ``
    and ``B = (1/N) Σ_n Σ_c (1/T) Σ_t g gᵀ`` — exact for deep linear networks whose outputs
    keep the positions (the expand setting);
  - ``"reduce"``: ``A = (1/N) Σ_n â âᵀ`` with ``â = (1/T) Σ_t ã`` and
    ``B = (1/N) Σ_n Σ_c ĝ ĝᵀ`` with ``ĝ = Σ_t g`` — exact for deep linear networks that pool
    the positions before a linear read-out (the reduce setting).

  Both coincide for ``T = 1``, where KFAC is exact for one example and for deep linear
  networks with raw outputs. Normalization layers' blocks are their exact per-feature blocks
  (:mod:`tangentlab.layers.norm`).
* **EKFAC**: the Kronecker-factored eigenbasis ``U_A ⊗ U_B`` of the KFAC factors (expand or
  reduce) with the Frobenius-optimal diagonal ``s* = (1/N) Σ_{n,c} (U_Bᵀ G_{c,n} U_A)²`` of the
  per-example gradients in it, so
  ``trace(EKFAC) = trace(F)`` and ``‖F_l − EKFAC_l‖_F ≤ ‖F_l − KFAC_l‖_F`` per layer.

Cross-layer (and cross-group) blocks are zero. The factor statistics, eigenbases, ``s*`` and
damping are those of the Kronecker pipeline (:mod:`tangentlab.kron`), shared with the
optimizers of :mod:`tangentlab.optim`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

import torch

from ..errors import InvalidInputError
from ..kron import (
    ekfac_shift,
    factored_inverses,
    kfe_diagonals,
    right_mul,
    rotate,
    solve_in_basis,
    sym_eigh,
    sym_fn,
    unrotate,
)
from ..memory import MemoryBudget
from ..space import ParamSpace
from ..vectors import PVector
from .base import PMat, check_damping
from .registry import kron_entries, register

METHODS = ("exact", "factored")


def _method(method: str) -> str:
    if method not in METHODS:
        raise InvalidInputError(f"method must be one of {METHODS}, got {method!r}")
    return method


@dataclass
class KronBlock:
    """One layer of a Kronecker-factored matrix.

    ``index`` (``(G, O, I)``, long) gives the position of every matrix entry in the
    flat parameter vector of the space. ``a``: ``(G, I, I)`` or ``(G, I)`` when diagonal;
    ``b``: ``(G, O, O)``.
    """

    module: str
    index: torch.Tensor
    a: torch.Tensor
    b: torch.Tensor

    @property
    def diagonal_a(self) -> bool:
        return self.a.dim() == 2


@dataclass
class KfeBlock:
    """One layer of an EKFAC: eigenbasis ``U_A`` (``(G, I, I)``, None = identity),
    ``U_B`` (``(G, O, O)``), diagonal ``s`` (``(G, O, I)``) and the factors' eigenvalues
    ``ea`` (``(G, I)``), ``eb`` (``(G, O)``) used by the factored damping."""

    module: str
    index: torch.Tensor
    ua: torch.Tensor | None
    ub: torch.Tensor
    s: torch.Tensor
    ea: torch.Tensor
    eb: torch.Tensor


def _gather(flat: torch.Tensor, index: torch.Tensor) -> torch.Tensor:
    return flat[index]


def _scatter(out: torch.Tensor, index: torch.Tensor, values: torch.Tensor) -> None:
    out[index.reshape(-1)] = values.reshape(-1)


class _KronBase(PMat):
    """Shared plumbing: blocks covering the space, flat <-> per-layer matrices."""

    blocks: list

    def _init(self, space: ParamSpace, blocks: list, budget: MemoryBudget | None) -> None:
        covered = torch.cat([b.index.reshape(-1) for b in blocks]) if blocks else torch.zeros(0)
        if covered.numel() != space.numel or (covered.numel() and (  # a permutation of 0..P-1 (O(P) check)
            int(covered.min()) < 0 or int(covered.max()) >= space.numel
            or not bool((torch.bincount(covered, minlength=space.numel) == 1).all()))):
            raise InvalidInputError("the Kronecker blocks do not cover the parameter space exactly once")
        self.space, self.blocks = space, blocks
        self.budget = budget or MemoryBudget.resolve(None, self.device)

    @property
    def device(self) -> torch.device:
        return self.blocks[0].index.device

    def _apply(self, v: PVector, fn) -> PVector:
        self._check_vec(v)
        flat = v.flat()
        out = torch.zeros(self.space.numel, dtype=flat.dtype, device=flat.device)
        for blk in self.blocks:
            _scatter(out, blk.index, fn(blk, _gather(flat, blk.index)))
        return self._vec(out)

    def _dense_from(self, per_group) -> torch.Tensor:
        """Assemble the dense matrix from per-group dense ``(O·I, O·I)`` blocks."""
        self._check_dense()
        p = self.space.numel
        out = torch.zeros(p, p, dtype=self.dtype, device=self.device)
        for blk in self.blocks:
            for gi in range(blk.index.shape[0]):
                idx = blk.index[gi].reshape(-1)
                out[idx[:, None], idx[None, :]] = per_group(blk, gi)
        return out

    def _eig_parts(self) -> list[tuple[Any, torch.Tensor, torch.Tensor | None, torch.Tensor]]:
        """Per block: (block, eigenvalues (G, O, I), U_A or None, U_B)."""
        raise NotImplementedError

    def eigh(self, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Eigenpairs from the factors: eigenvectors ``u_B ⊗ u_A`` (descending eigenvalues)."""
        p = self.space.numel
        kk = p if k is None else k
        if not 1 <= kk <= p:
            raise InvalidInputError(f"k must be in [1, {p}], got {k}")
        self.budget.check(f"{kk} eigenvectors of length {p}", p * kk, self.dtype,
                          "Ask for fewer eigenpairs with `k=`.")
        parts = self._eig_parts()
        vals = torch.cat([e.reshape(-1) for _, e, _, _ in parts])
        order = torch.argsort(vals, descending=True)[:kk]
        vecs = torch.zeros(p, kk, dtype=self.dtype, device=self.device)
        sizes = torch.tensor([e.numel() for _, e, _, _ in parts], device=order.device)
        starts = torch.cumsum(sizes, 0) - sizes
        owner = torch.searchsorted(starts, order, right=True) - 1  # block of each selected eigenpair
        for bi, (blk, e, ua, ub) in enumerate(parts):
            cols = (owner == bi).nonzero().flatten()
            if cols.numel() == 0:
                continue
            g, o, i = torch.unravel_index(order[cols] - starts[bi], e.shape)
            left = ub[g, :, o]  # (k, O): columns of U_B
            right = torch.nn.functional.one_hot(i, e.shape[2]).to(self.dtype) if ua is None else ua[g, :, i]
            rows = blk.index[g].reshape(cols.numel(), -1)  # (k, O·I) flat positions
            vecs[rows, cols[:, None].to(vecs.device)] = (left[:, :, None] * right[:, None, :]).reshape(cols.numel(), -1)
        return vals[order], vecs

    def _select_blocks(self, sub: ParamSpace):
        """Per kept block: (block, kept columns, new index) — whole rows (outputs) are kept;
        columns are dropped when their parameter is not selected (e.g. a bias)."""
        lookup = {}
        for p in sub.params:
            src = self.space.info(p.name)
            lookup[p.name] = (src.offset, p.numel, p.offset)
        out = []
        for blk in self.blocks:
            lay = self.space.layer(blk.module)
            kept = [p for p in lay.params if p.name in lookup]
            if not kept:
                continue
            old = blk.index
            mapping = torch.full((self.space.numel,), -1, dtype=torch.long, device=old.device)
            for p in kept:
                o, n, newo = lookup[p.name]
                mapping[o:o + n] = torch.arange(newo, newo + n, device=old.device)
            new = mapping[old]
            cols = (new >= 0).all(0).all(0)
            if (new[..., cols] < 0).any() or ((new >= 0) & ~cols).any():
                raise InvalidInputError(f"cannot split layer {blk.module!r} inside a Kronecker factor")
            out.append((blk, cols.nonzero().flatten(), new[..., cols]))
        return out


@register("kfac", build="tangentlab.pmat.kron_build:build_kfac", stores="Kronecker factors `A_l`, `B_l` per layer",
          memory="`Σ_l (I_l² + O_l²)`", summary="Martens & Grosse (2015), KFC for convolutions; exact or "
          "factored damped `solve`/`inverse`, `pow`", footprint=kron_entries)
class PMatKFAC(_KronBase):
    """KFAC / KFC: ``F_l ≈ A_l ⊗ B_l`` per layer (and per group of a grouped convolution).

    Memory ``Σ_l (I_l² + O_l²)``. Two damped solves:

    * ``method="exact"`` (default): ``(A ⊗ B + λI)⁻¹ v`` through the factors' eigenbases,
      ``V ↦ U_B [(U_Bᵀ V U_A) ⊘ (s_B s_Aᵀ + λ)] U_Aᵀ`` — the same damping as every other
      representation;
    * ``method="factored"``: Martens & Grosse's factored Tikhonov damping with π:
      ``(A + π√λ I)⁻¹ ⊗ (B + √λ/π I)⁻¹``, ``π = sqrt((tr A / dim A) / (tr B / dim B))`` —
      *not* ``(A⊗B + λI)⁻¹``, but Kronecker-factored and cheap.

    Parameters
    ----------
    space, budget
        As in :class:`~tangentlab.pmat.PMatDense`.
    blocks : list of KronBlock
        Factors ``A`` ``(G, I, I)`` (``(G, I)`` if diagonal), ``B`` ``(G, O, O)``, covering ``space``.
    """

    def __init__(self, space: ParamSpace, blocks: list[KronBlock], budget: MemoryBudget | None = None):
        self.blocks = blocks
        self._init(space, blocks, budget)

    @property
    def dtype(self) -> torch.dtype:
        return self.blocks[0].b.dtype

    @property
    def factors(self) -> dict[str, list[tuple[torch.Tensor, torch.Tensor]]]:
        """``{module path: [(A_γ, B_γ) for each group]}`` (a diagonal ``A`` as a vector)."""
        return {b.module: [(b.a[g], b.b[g]) for g in range(b.b.shape[0])] for b in self.blocks}

    def mv(self, v: PVector) -> PVector:
        return self._apply(v, lambda blk, x: blk.b @ right_mul(x, blk.a))

    def trace(self) -> torch.Tensor:
        tot: Any = 0
        for blk in self.blocks:
            ta = blk.a.sum(-1) if blk.diagonal_a else torch.diagonal(blk.a, dim1=1, dim2=2).sum(-1)
            tot = tot + (ta * torch.diagonal(blk.b, dim1=1, dim2=2).sum(-1)).sum()
        return tot

    def diag(self) -> PVector:
        out = torch.zeros(self.space.numel, dtype=self.dtype, device=self.device)
        for blk in self.blocks:
            da = blk.a if blk.diagonal_a else torch.diagonal(blk.a, dim1=1, dim2=2)
            db = torch.diagonal(blk.b, dim1=1, dim2=2)
            _scatter(out, blk.index, db[:, :, None] * da[:, None, :])
        return self._vec(out)

    def to_dense(self) -> torch.Tensor:
        def group(blk, g):
            a = torch.diag(blk.a[g]) if blk.diagonal_a else blk.a[g]
            return torch.kron(blk.b[g].contiguous(), a.contiguous())

        return self._dense_from(group)

    def norm(self, ord: str | int = "fro") -> torch.Tensor:
        if ord == "fro":
            tot = 0
            for blk in self.blocks:
                na = blk.a.pow(2).sum(-1) if blk.diagonal_a else blk.a.pow(2).sum((1, 2))
                tot = tot + (na * blk.b.pow(2).sum((1, 2))).sum()
            return torch.sqrt(tot)  # type: ignore[arg-type]
        if ord == 2:
            return torch.stack([e.abs().max() for _, e, _, _ in self._eig_parts()]).max()
        raise InvalidInputError(f"unsupported norm {ord!r}; use 'fro' or 2")

    def _eig_parts(self):
        parts = []
        for blk in self.blocks:
            ea, ua = sym_eigh(blk.a)
            eb, ub = sym_eigh(blk.b)
            parts.append((blk, eb[:, :, None] * ea[:, None, :], ua, ub))
        return parts

    def solve(self, v: PVector, damping: float = 0.0, method: str = "exact") -> PVector:
        """``(M + λI)⁻¹ v`` (see the class docstring for ``method``).

        Parameters
        ----------
        method : {"exact", "factored"}
        """
        lam = check_damping(damping)
        if _method(method) == "factored":
            if lam == 0:
                return self.inverse(0.0).mv(v)

            def fac(blk, x):
                ia, ib = factored_inverses(blk.a, blk.b, lam)
                return ib @ right_mul(x, ia)

            return self._apply(v, fac)
        parts = {id(blk): (e, ua, ub) for blk, e, ua, ub in self._eig_parts()}

        def exact(blk, x):
            e, ua, ub = parts[id(blk)]
            den = e + lam
            if (den == 0).any():
                raise InvalidInputError("the KFAC matrix is singular; pass damping > 0")
            return solve_in_basis(x, ua, ub, den)

        return self._apply(v, exact)

    def inverse(self, damping: float = 0.0, method: str = "exact") -> PMat:
        """``(A⊗B + λI)⁻¹``: for ``λ = 0`` the KFAC ``A⁻¹ ⊗ B⁻¹``; for ``λ > 0`` an
        :class:`PMatEKFAC` (the damped inverse is diagonal in the eigenbasis, not a Kronecker
        product). ``method="factored"``: the KFAC of the π-damped factors.

        Parameters
        ----------
        method : {"exact", "factored"}
        """
        lam = check_damping(damping)
        if _method(method) == "factored" and lam > 0:
            out = []
            for blk in self.blocks:
                ia, ib = factored_inverses(blk.a, blk.b, lam)
                out.append(replace(blk, a=ia, b=ib))
            return PMatKFAC(self.space, out, self.budget)
        if lam == 0:
            def inv(m):
                if m.dim() == 2:
                    if (m == 0).any():
                        raise InvalidInputError("a KFAC factor is singular; pass damping > 0")
                    return 1.0 / m
                chol, info = torch.linalg.cholesky_ex(m)
                if int(info.max()) != 0:
                    raise InvalidInputError("a KFAC factor is singular; pass damping > 0")
                return torch.cholesky_inverse(chol)

            return PMatKFAC(self.space, [replace(blk, a=inv(blk.a), b=inv(blk.b)) for blk in self.blocks],
                            self.budget)
        e = PMatEKFAC.from_kfac(self)
        return e.inverse(lam)

    def pow(self, p: float) -> PMatKFAC:
        """``(A ⊗ B)^p = A^p ⊗ B^p`` (eigenvalues below 0 are clipped for fractional powers; a
        negative ``p`` needs positive definite factors, else InvalidInputError).

        Parameters
        ----------
        p : float
        """
        def f(e):
            if p < 0 and (e <= 0).any():
                raise InvalidInputError("negative power of a singular KFAC factor; add damping first")
            return e.clamp_min(0).pow(p) if p != int(p) else e.pow(p)

        return PMatKFAC(self.space, [replace(blk, a=sym_fn(blk.a, f), b=sym_fn(blk.b, f))
                                     for blk in self.blocks], self.budget)

    def _scale(self, s: float) -> PMatKFAC:
        return PMatKFAC(self.space, [replace(blk, b=blk.b * s) for blk in self.blocks], self.budget)

    def _matmul(self, other: PMatKFAC) -> PMatKFAC:
        out = []
        for x, y in zip(self.blocks, other.blocks):
            if not torch.equal(x.index, y.index) or x.diagonal_a != y.diagonal_a:
                raise NotImplementedError
            a = x.a * y.a if x.diagonal_a else x.a @ y.a
            out.append(replace(x, a=a, b=x.b @ y.b))
        return PMatKFAC(self.space, out, self.budget)

    def _select(self, sub: ParamSpace, idx: torch.Tensor) -> PMatKFAC:
        out = []
        for blk, cols, new in self._select_blocks(sub):
            a = blk.a[:, cols] if blk.diagonal_a else blk.a[:, cols][:, :, cols]
            out.append(KronBlock(blk.module, new, a, blk.b))
        return PMatKFAC(sub, out, self.budget)

    def state_dict(self) -> dict[str, Any]:
        return {**self._meta(), "blocks": [vars(b).copy() for b in self.blocks]}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> PMatKFAC:
        """Rebuild the matrix from ``state``, what its :meth:`state_dict` returned.

        Parameters
        ----------
        state : dict
        """
        return cls(ParamSpace.from_state(state["space"]), [KronBlock(**b) for b in state["blocks"]])


@register("ekfac", build="tangentlab.pmat.kron_build:build_ekfac",
          stores="eigenbases of the KFAC factors and a diagonal `s*` in that basis",
          memory="`Σ_l (I_l² + O_l² + O_l·I_l)`", summary="George et al. (2018); `trace` exact, "
          "`update_diag` re-estimates `s*` in the fixed basis",
          footprint=lambda space: kron_entries(space, eigen=True))
class PMatEKFAC(_KronBase):
    """EKFAC: ``F_l ≈ (U_A ⊗ U_B) diag(s*) (U_A ⊗ U_B)ᵀ`` per layer.

    Built by :func:`tangentlab.fim` with ``representation="ekfac"``, ``s*`` is estimated
    at construction (a fresh EKFAC is a real EKFAC, not KFAC): ``trace = Σ s* =
    trace(F)``. :meth:`update_diag` re-estimates ``s*`` at the model's current
    parameters in the fixed basis. Memory ``Σ_l (I_l² + O_l² + O_l I_l)``.

    Damped solves: ``method="exact"`` divides by ``s* + λ``; ``method="factored"`` by
    ``s* + λ + √λ (λ_A + λ_B)`` (thesis appendix A.4: ε added to both factors' eigenvalues).

    Parameters
    ----------
    space, budget
        As in :class:`~tangentlab.pmat.PMatDense`.
    blocks : list of KfeBlock
        Eigenbases ``U_A``, ``U_B`` and scalings ``s``; their indices cover ``space`` exactly once.
    engine : Engine, optional
        The engine :meth:`update_diag` uses by default.
    """

    def __init__(self, space: ParamSpace, blocks: list[KfeBlock], budget: MemoryBudget | None = None,
                 engine: Any = None):
        self.blocks = blocks
        self._init(space, blocks, budget)
        self.engine = engine  # to re-estimate s* (not pickled)

    def __getstate__(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["engine"] = None
        return d

    @property
    def dtype(self) -> torch.dtype:
        return self.blocks[0].s.dtype

    @classmethod
    def from_kfac(cls, kfac: PMatKFAC) -> PMatEKFAC:
        """The EKFAC with KFAC's eigenbasis and diagonal ``s_B ⊗ s_A`` (equal to ``kfac``).

        Parameters
        ----------
        kfac : PMatKFAC
        """
        blocks = []
        for blk, e, ua, ub in kfac._eig_parts():
            ea, _ = sym_eigh(blk.a)
            eb, _ = sym_eigh(blk.b)
            blocks.append(KfeBlock(blk.module, blk.index, ua, ub, e, ea, eb))
        return cls(kfac.space, blocks, kfac.budget)

    def _eig_parts(self):
        return [(blk, blk.s, blk.ua, blk.ub) for blk in self.blocks]

    def mv(self, v: PVector) -> PVector:
        return self._apply(v, lambda blk, x: unrotate(blk.s * rotate(x, blk.ua, blk.ub), blk.ua, blk.ub))

    def vTMv(self, v: PVector) -> torch.Tensor:
        self._check_vec(v)
        flat = v.flat()
        return sum((blk.s * rotate(_gather(flat, blk.index), blk.ua, blk.ub).pow(2)).sum()
                   for blk in self.blocks)

    def trace(self) -> torch.Tensor:
        return sum(blk.s.sum() for blk in self.blocks)

    def diag(self) -> PVector:
        """Exact diagonal ``(U_B∘U_B) S (U_A∘U_A)ᵀ``."""
        out = torch.zeros(self.space.numel, dtype=self.dtype, device=self.device)
        for blk in self.blocks:
            d = blk.ub.pow(2) @ blk.s
            if blk.ua is not None:
                d = d @ blk.ua.pow(2).transpose(1, 2)
            _scatter(out, blk.index, d)
        return self._vec(out)

    def to_dense(self) -> torch.Tensor:
        def group(blk, g):
            ua = torch.eye(blk.s.shape[2], dtype=self.dtype, device=self.device) if blk.ua is None else blk.ua[g]
            q = torch.kron(blk.ub[g].contiguous(), ua.contiguous())
            return (q * blk.s[g].reshape(-1)) @ q.T

        return self._dense_from(group)

    def norm(self, ord: str | int = "fro") -> torch.Tensor:
        if ord == "fro":
            return torch.sqrt(sum(blk.s.pow(2).sum() for blk in self.blocks))
        if ord == 2:
            return torch.stack([blk.s.abs().max() for blk in self.blocks]).max()
        raise InvalidInputError(f"unsupported norm {ord!r}; use 'fro' or 2")

    def _denominator(self, blk: KfeBlock, lam: float, method: str) -> torch.Tensor:
        den = blk.s + (ekfac_shift(blk.ea, blk.eb, lam) if _method(method) == "factored" else lam)
        if (den == 0).any():
            raise InvalidInputError("the EKFAC diagonal has zero entries; pass damping > 0")
        return den

    def solve(self, v: PVector, damping: float = 0.0, method: str = "exact") -> PVector:
        """``(M + λI)⁻¹ v`` (see the class docstring for ``method``).

        Parameters
        ----------
        method : {"exact", "factored"}
        """
        lam = check_damping(damping)
        return self._apply(v, lambda blk, x: solve_in_basis(x, blk.ua, blk.ub, self._denominator(blk, lam, method)))

    def inverse(self, damping: float = 0.0, method: str = "exact") -> PMatEKFAC:
        """``(M + λI)⁻¹``, diagonal in the same eigenbasis (``method``: see the class docstring).

        Parameters
        ----------
        method : {"exact", "factored"}
        """
        lam = check_damping(damping)
        return self._with_s([1.0 / self._denominator(b, lam, method) for b in self.blocks])

    def pow(self, p: float) -> PMatEKFAC:
        """``S^p`` in the fixed eigenbasis (negative entries clipped for fractional powers; a
        negative ``p`` needs a positive ``s``, else InvalidInputError).

        Parameters
        ----------
        p : float
        """
        out = []
        for b in self.blocks:
            if p < 0 and (b.s <= 0).any():
                raise InvalidInputError("negative power of a singular EKFAC; add damping first")
            out.append(b.s.clamp_min(0).pow(p) if p != int(p) else b.s.pow(p))
        return self._with_s(out)

    def _with_s(self, ss: list[torch.Tensor]) -> PMatEKFAC:
        return PMatEKFAC(self.space, [replace(b, s=s) for b, s in zip(self.blocks, ss)], self.budget, self.engine)

    def _same_basis(self, other: PMatEKFAC) -> bool:
        return all(x.ub is y.ub and x.ua is y.ua or (
            torch.equal(x.ub, y.ub) and (x.ua is None) == (y.ua is None) and (x.ua is None or torch.equal(x.ua, y.ua))
        ) for x, y in zip(self.blocks, other.blocks))

    def _add(self, other: PMatEKFAC) -> PMatEKFAC:
        if not self._same_basis(other):
            raise NotImplementedError
        return self._with_s([x.s + y.s for x, y in zip(self.blocks, other.blocks)])

    def _scale(self, s: float) -> PMatEKFAC:
        return self._with_s([b.s * s for b in self.blocks])

    def _matmul(self, other: PMatEKFAC) -> PMatEKFAC:
        if not self._same_basis(other):
            raise NotImplementedError
        return self._with_s([x.s * y.s for x, y in zip(self.blocks, other.blocks)])

    def _select(self, sub: ParamSpace, idx: torch.Tensor) -> PMat:
        out = []
        for blk, cols, new in self._select_blocks(sub):
            if cols.numel() != blk.s.shape[2]:
                raise self._unsupported("select of part of a layer", "select whole layers, or PMatKFAC",
                                        "dropping a column breaks the eigenbasis")
            out.append(replace(blk, index=new))
        return PMatEKFAC(sub, out, self.budget, self.engine)

    def update_diag(self, data: Any, engine: Any = None) -> PMatEKFAC:
        """Re-estimate ``s*`` on ``data`` at the model's current parameters, keeping the
        eigenbasis (in place; returns ``self``). ``engine`` is needed after unpickling.

        Parameters
        ----------
        data : Any
            The examples, as in :func:`tangentlab.fim`.
        engine : Engine, optional
            Default: the one this EKFAC was built with (InvalidInputError when there is none).
        """
        eng = engine or self.engine
        if eng is None:
            raise InvalidInputError("this EKFAC has no engine (it was unpickled): pass "
                                    "engine=tangentlab.Engine(model, kind, params)")
        ss = kfe_diagonals(eng, data, self.space, self.blocks)
        self.blocks = [replace(b, s=s) for b, s in zip(self.blocks, ss)]
        return self

    def state_dict(self) -> dict[str, Any]:
        return {**self._meta(), "blocks": [vars(b).copy() for b in self.blocks]}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> PMatEKFAC:
        """Rebuild the matrix from ``state``, what its :meth:`state_dict` returned.

        Parameters
        ----------
        state : dict
        """
        return cls(ParamSpace.from_state(state["space"]), [KfeBlock(**b) for b in state["blocks"]])
