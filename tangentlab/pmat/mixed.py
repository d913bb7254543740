"""A different representation per layer, behaving as one (block-diagonal) matrix.

The default assignment is EKFAC for layers with a Kronecker structure (Linear,
Conv1d/2d, Embedding) and BlockDiag for everything else (normalization layers,
parameters on the generic route): the thesis' recipe for networks with
GroupNorm/BatchNorm, where KFAC is not defined. Cross-part blocks are zero.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..data import Batches
from ..engine import Engine
from ..errors import InvalidInputError
from ..layers.norm import AffineNormRule
from ..memory import MemoryBudget
from ..space import ParamSpace
from ..vectors import PVector
from .base import PMat, check_damping
from .registry import kron_entries, load, lookup, register


@register("mixed", build="tangentlab.pmat.mixed:build_mixed",
          stores="one representation per set of layers (default: EKFAC where a Kronecker layout exists, "
          "BlockDiag elsewhere)", memory="sum of the parts",
          summary="block-diagonal over its parts; `mixed=` assigns representations to modules",
          footprint=lambda space: kron_entries(space, eigen=True))  # the default assignment
class PMatMixed(PMat):
    """Block-diagonal combination of representations on disjoint sets of layers.

    ``parts`` are matrices on sub-spaces whose layers partition ``space``. Every verb is
    applied part by part; a verb a part cannot do raises that part's error.

    Parameters
    ----------
    space : ParamSpace
        The parameter space (``P`` entries, in its flat order).
    parts : list of PMat
        Matrices on sub-spaces whose layers partition ``space``.
    budget : MemoryBudget or None
        The memory budget that dense conversions are checked against (None: the device's).
    """

    def __init__(self, space: ParamSpace, parts: list[PMat], budget: MemoryBudget | None = None):
        names = [n for p in parts for n in p.space.names]
        if sorted(names) != sorted(space.names) or len(names) != len(set(names)):
            raise InvalidInputError("the parts of a PMatMixed must partition its parameter space")
        self.space, self.parts = space, parts
        self.budget = budget or parts[0].budget

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the stored tensors."""
        return self.parts[0].dtype

    @property
    def device(self) -> torch.device:
        """The device of the stored tensors."""
        return self.parts[0].device

    @property
    def representations(self) -> dict[str, str]:
        """``{module path: representation class name}``."""
        return {lay.module: type(p).__name__ for p in self.parts for lay in p.space.layers}

    def _join(self, pieces: list[PVector]) -> PVector:
        tensors: dict[str, torch.Tensor] = {}
        for piece in pieces:
            tensors.update(piece.to_dict())
        return PVector(self.space, tensors)

    def _each(self, v: PVector, fn) -> PVector:
        self._check_vec(v)
        return self._join([fn(p, v.select(p.space)) for p in self.parts])

    def mv(self, v: PVector) -> PVector:
        return self._each(v, lambda p, x: p.mv(x))

    def vTMv(self, v: PVector) -> torch.Tensor:
        self._check_vec(v)
        return sum(p.vTMv(v.select(p.space)) for p in self.parts)  # type: ignore[return-value]

    def trace(self) -> torch.Tensor:
        return sum(p.trace() for p in self.parts)  # type: ignore[return-value]

    def diag(self) -> PVector:
        return self._join([p.diag() for p in self.parts])

    def _positions(self, part: PMat) -> torch.Tensor:
        return torch.cat([torch.arange(self.space.info(p.name).offset, self.space.info(p.name).offset + p.numel)
                          for p in part.space.params]).to(self.device)

    def to_dense(self) -> torch.Tensor:
        self._check_dense()
        p = self.space.numel
        out = torch.zeros(p, p, dtype=self.dtype, device=self.device)
        for part in self.parts:
            idx = self._positions(part)
            out[idx[:, None], idx[None, :]] = part.to_dense()
        return out

    def solve(self, v: PVector, damping: float = 0.0, **kw: Any) -> PVector:
        lam = check_damping(damping)
        return self._each(v, lambda p, x: p.solve(x, lam, **kw))

    def inverse(self, damping: float = 0.0) -> PMatMixed:
        lam = check_damping(damping)
        return PMatMixed(self.space, [p.inverse(lam) for p in self.parts], self.budget)

    def eigh(self, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.space.numel
        kk = p if k is None else k
        if not 1 <= kk <= p:
            raise InvalidInputError(f"k must be in [1, {p}], got {k}")
        self.budget.check(f"{kk} eigenvectors of length {p}", p * kk, self.dtype, "Ask for fewer with `k=`.")
        vals, vecs = [], []
        for part in self.parts:
            e, u = part.eigh(min(kk, part.space.numel))
            full = torch.zeros(p, u.shape[1], dtype=self.dtype, device=self.device)
            full[self._positions(part)] = u
            vals.append(e)
            vecs.append(full)
        return self._topk(torch.cat(vals), torch.cat(vecs, 1), min(kk, sum(v.numel() for v in vals)))

    def norm(self, ord: str | int = "fro") -> torch.Tensor:
        if ord == "fro":
            return torch.sqrt(sum(p.norm("fro") ** 2 for p in self.parts))  # type: ignore[arg-type]
        if ord == 2:
            return torch.stack([p.norm(2) for p in self.parts]).max()
        raise InvalidInputError(f"unsupported norm {ord!r}; use 'fro' or 2")

    def pow(self, p: float) -> PMatMixed:
        """The power ``M^p``, part by part.

        Parameters
        ----------
        p : float
            The exponent.

        Returns
        -------
        PMatMixed
            The power of every part.

        Raises
        ------
        UnsupportedOperationError
            When a part has no ``pow``.
        """
        out = []
        for part in self.parts:
            if not hasattr(part, "pow"):
                raise self._unsupported("pow", "a mixed matrix of KFAC/EKFAC parts",
                                        f"{type(part).__name__} has no pow")
            out.append(part.pow(p))
        return PMatMixed(self.space, out, self.budget)

    def update_diag(self, data: Any) -> PMatMixed:
        """Re-estimate the EKFAC diagonals of the EKFAC parts (see :meth:`PMatEKFAC.update_diag`).

        Parameters
        ----------
        data : Any
            The examples, as in :func:`tangentlab.fim`.

        Returns
        -------
        PMatMixed
            ``self``.
        """
        for part in self.parts:
            if hasattr(part, "update_diag"):
                part.update_diag(data)
        return self

    def _scale(self, s: float) -> PMatMixed:
        return PMatMixed(self.space, [s * p for p in self.parts], self.budget)

    def _add(self, other: PMatMixed) -> PMatMixed:
        if [q.space for q in self.parts] != [q.space for q in other.parts]:
            raise NotImplementedError
        return PMatMixed(self.space, [a + b for a, b in zip(self.parts, other.parts)], self.budget)

    def _matmul(self, other: PMatMixed) -> PMatMixed:
        if [q.space for q in self.parts] != [q.space for q in other.parts]:
            raise NotImplementedError
        return PMatMixed(self.space, [a @ b for a, b in zip(self.parts, other.parts)], self.budget)

    def _select(self, sub: ParamSpace, idx: torch.Tensor) -> PMatMixed:
        keep = set(sub.names)
        parts = [p.select([n for n in p.space.names if n in keep]) for p in self.parts
                 if any(n in keep for n in p.space.names)]
        return PMatMixed(sub, parts, self.budget)

    def state_dict(self) -> dict[str, Any]:
        return {**self._meta(), "parts": [p.state_dict() for p in self.parts]}

    @classmethod
    def from_state_dict(cls, state: dict[str, Any]) -> PMatMixed:
        """Rebuild the matrix from ``state``, what its :meth:`state_dict` returned.

        Parameters
        ----------
        state : dict
        """
        return cls(ParamSpace.from_state(state["space"]), [load(s) for s in state["parts"]])


def default_assignment(engine: Engine, data: Batches) -> dict[str, str]:
    """``{module path: "ekfac" | "blockdiag"}``: EKFAC where a Kronecker layout exists, except for
    normalization layers (their whole-layer block, not only its per-feature blocks)."""
    index, batch = next(engine.batches(data))
    plan = engine.plan(batch)
    kron = {h.layer.module for h in plan.hooked
            if h.rule.kron_layout(h.module) is not None and not isinstance(h.rule, AffineNormRule)}
    return {lay.module: ("ekfac" if lay.module in kron else "blockdiag") for lay in engine.space.layers}


def build_mixed(engine: Engine, data: Any, centering: bool = False,
                assign: dict[Any, str] | None = None) -> PMatMixed:
    """Build each part with its own representation on its layers.

    ``assign`` maps module paths (prefixes) or module types to representation names and
    overrides the default (EKFAC for Kronecker-factorable layers, BlockDiag otherwise).
    """
    batches = data if isinstance(data, Batches) else Batches(data)
    choice = default_assignment(engine, batches)
    if assign:
        modules = dict(engine.model.named_modules())
        for path in choice:
            for key, rep in assign.items():
                hit = (isinstance(key, type) and issubclass(key, nn.Module) and isinstance(modules[path], key)) or (
                    isinstance(key, str) and (path == key or path.startswith(key + ".") or key == ""))
                if hit:
                    choice[path] = rep
    groups: dict[str, list[str]] = {}
    for path, rep in choice.items():
        groups.setdefault(rep, []).append(path)
    parts = []
    for rep, paths in groups.items():
        entry = lookup(rep)
        if entry.cls is PMatMixed:
            raise InvalidInputError("a part of a mixed matrix cannot itself be 'mixed'")
        keep = set(paths)
        sub = engine.space.select(lambda name: (name.rsplit(".", 1)[0] if "." in name else "") in keep)
        parts.append(entry.build(engine.with_space(sub), batches, centering=centering))
    order = {lay.module: i for i, lay in enumerate(engine.space.layers)}
    parts.sort(key=lambda p: order[p.space.layers[0].module])
    return PMatMixed(engine.space, parts, engine.budget)
