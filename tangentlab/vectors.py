"""Vectors in parameter space (:class:`PVector`) and function space (:class:`FVector`)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from numbers import Number
from typing import Any

import torch
from torch import nn

from .errors import InvalidInputError
from .space import ParamSpace, Selector


class PVector:
    """A vector in parameter space, stored as ``{parameter name: tensor}``.

    Arithmetic (``+``, ``-``, scalar ``*`` and ``/``, unary ``-``), :meth:`dot`
    and :meth:`norm` work tensor by tensor and stay differentiable: a PVector
    made with :meth:`from_model` holds the live parameters, so a penalty such as
    ``F.vTMv(PVector.from_model(model) - theta_star)`` back-propagates into the
    model (EWC).
    """

    __slots__ = ("space", "_t")

    def __init__(self, space: ParamSpace, tensors: Mapping[str, torch.Tensor]):
        self.space = space
        for p in space.params:
            if p.name not in tensors:
                raise InvalidInputError(f"PVector is missing parameter {p.name!r}")
            if tuple(tensors[p.name].shape) != p.shape:
                raise InvalidInputError(
                    f"PVector entry {p.name!r} has shape {tuple(tensors[p.name].shape)}, "
                    f"expected {p.shape}"
                )
        self._t = {p.name: tensors[p.name] for p in space.params}

    # --- constructors ---------------------------------------------------
    @classmethod
    def from_model(cls, model: nn.Module, params: Selector | ParamSpace = None) -> PVector:
        """The model's current parameters (the live tensors, autograd-connected)."""
        space = params if isinstance(params, ParamSpace) else ParamSpace.from_model(model, params)
        return cls(space, space.check_model(model))

    @classmethod
    def from_grad(cls, model: nn.Module, params: Selector | ParamSpace = None) -> PVector:
        """The ``.grad`` of the model's parameters (zeros where ``.grad`` is None)."""
        space = params if isinstance(params, ParamSpace) else ParamSpace.from_model(model, params)
        ps = space.check_model(model)
        return cls(space, {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
                           for n, p in ps.items()})

    @classmethod
    def from_flat(cls, space: ParamSpace, flat: torch.Tensor) -> PVector:
        if flat.dim() != 1:
            raise InvalidInputError(f"expected a 1-d flat vector, got shape {tuple(flat.shape)}")
        return cls(space, space.unflatten(flat))

    @classmethod
    def zeros(cls, space: ParamSpace, dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None) -> PVector:
        return cls(space, {p.name: torch.zeros(p.shape, dtype=dtype, device=device) for p in space.params})

    @classmethod
    def randn(cls, space: ParamSpace, dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None,
              generator: torch.Generator | None = None) -> PVector:
        """Standard normal entries."""
        return cls(space, {p.name: torch.randn(p.shape, dtype=dtype, device=device, generator=generator)
                           for p in space.params})

    # --- access -----------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._t[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._t)

    def items(self):
        return self._t.items()

    def to_dict(self) -> dict[str, torch.Tensor]:
        return dict(self._t)

    def flat(self) -> torch.Tensor:
        """All entries concatenated in the space's order (differentiable)."""
        return torch.cat([t.reshape(-1) for t in self._t.values()])

    @property
    def dtype(self) -> torch.dtype:
        return next(iter(self._t.values())).dtype

    @property
    def device(self) -> torch.device:
        return next(iter(self._t.values())).device

    def size(self) -> int:
        return self.space.numel

    def __len__(self) -> int:
        return self.space.numel

    # --- model interaction -------------------------------------------------
    def copy_to_model(self, model: nn.Module) -> None:
        """Write these values into the model's parameters (in place, no autograd)."""
        ps = self.space.check_model(model)
        with torch.no_grad():
            for n, p in ps.items():
                p.copy_(self._t[n])

    def add_to_model(self, model: nn.Module) -> None:
        ps = self.space.check_model(model)
        with torch.no_grad():
            for n, p in ps.items():
                p.add_(self._t[n])

    # --- algebra -----------------------------------------------------------
    def _check(self, other: PVector) -> None:
        if not isinstance(other, PVector):
            raise TypeError(f"expected a PVector, got {type(other).__name__}")
        if other.space.names != self.space.names or any(
            a.shape != b.shape for a, b in zip(self.space.params, other.space.params)
        ):
            raise InvalidInputError("the two PVectors live on different parameter spaces")

    def _map(self, fn) -> PVector:
        return PVector(self.space, {n: fn(t) for n, t in self._t.items()})

    def _zip(self, other: PVector, fn) -> PVector:
        self._check(other)
        return PVector(self.space, {n: fn(t, other._t[n]) for n, t in self._t.items()})

    def __add__(self, other: PVector) -> PVector:
        return self._zip(other, lambda a, b: a + b)

    def __sub__(self, other: PVector) -> PVector:
        return self._zip(other, lambda a, b: a - b)

    def __neg__(self) -> PVector:
        return self._map(lambda a: -a)

    def __mul__(self, s: Any) -> PVector:
        if isinstance(s, PVector):
            return self._zip(s, lambda a, b: a * b)
        if not isinstance(s, (Number, torch.Tensor)):
            return NotImplemented
        return self._map(lambda a: a * s)

    __rmul__ = __mul__

    def __truediv__(self, s: Any) -> PVector:
        if not isinstance(s, (Number, torch.Tensor)):
            return NotImplemented
        return self._map(lambda a: a / s)

    def __matmul__(self, other: PVector) -> torch.Tensor:
        return self.dot(other)

    def dot(self, other: PVector) -> torch.Tensor:
        """Euclidean inner product ``Σ_p self_p · other_p`` (a 0-d tensor)."""
        self._check(other)
        return sum((a * other._t[n]).sum() for n, a in self._t.items())  # type: ignore[return-value]

    def norm(self, p: float = 2) -> torch.Tensor:
        """``p``-norm of the flattened vector."""
        return torch.linalg.vector_norm(self.flat(), ord=p)

    def detach(self) -> PVector:
        return self._map(lambda a: a.detach())

    def clone(self) -> PVector:
        return self._map(lambda a: a.clone())

    def to(self, *args: Any, **kwargs: Any) -> PVector:
        return self._map(lambda a: a.to(*args, **kwargs))

    def select(self, space: ParamSpace) -> PVector:
        """The entries of a sub-space."""
        return PVector(space, {n: self._t[n] for n in space.names})

    def __repr__(self) -> str:
        return f"PVector({self.space.numel} parameters, {len(self._t)} tensors, dtype={self.dtype})"


class FVector:
    """A vector in function space: one value per (example, output), shape ``(N, C)``.

    Layout: row ``i`` is example ``i`` in data order, column ``c`` output
    coordinate ``c``. :meth:`flat` gives the ``N·C`` vector with index ``i·C + c``
    (the order used by :meth:`FMatDense.as_matrix`).
    """

    __slots__ = ("tensor",)

    def __init__(self, tensor: torch.Tensor):
        if tensor.dim() != 2:
            raise InvalidInputError(f"FVector expects an (N, C) tensor, got shape {tuple(tensor.shape)}")
        self.tensor = tensor

    @property
    def shape(self) -> torch.Size:
        return self.tensor.shape

    def flat(self) -> torch.Tensor:
        return self.tensor.reshape(-1)

    def _other(self, o: FVector) -> torch.Tensor:
        if not isinstance(o, FVector):
            raise TypeError(f"expected an FVector, got {type(o).__name__}")
        if o.tensor.shape != self.tensor.shape:
            raise InvalidInputError(f"FVector shapes differ: {tuple(self.shape)} vs {tuple(o.shape)}")
        return o.tensor

    def __add__(self, o: FVector) -> FVector:
        return FVector(self.tensor + self._other(o))

    def __sub__(self, o: FVector) -> FVector:
        return FVector(self.tensor - self._other(o))

    def __neg__(self) -> FVector:
        return FVector(-self.tensor)

    def __mul__(self, s: Any) -> FVector:
        if not isinstance(s, (Number, torch.Tensor)):
            return NotImplemented
        return FVector(self.tensor * s)  # type: ignore[operator]  # torch's stubs omit numbers.Number scalars

    __rmul__ = __mul__

    def __truediv__(self, s: Any) -> FVector:
        return FVector(self.tensor / s)

    def dot(self, o: FVector) -> torch.Tensor:
        return (self.tensor * self._other(o)).sum()

    __matmul__ = dot

    def norm(self, p: float = 2) -> torch.Tensor:
        return torch.linalg.vector_norm(self.tensor.reshape(-1), ord=p)

    def detach(self) -> FVector:
        return FVector(self.tensor.detach())

    def __repr__(self) -> str:
        return f"FVector(N={self.shape[0]}, C={self.shape[1]}, dtype={self.tensor.dtype})"
