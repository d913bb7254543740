"""Vectors in parameter space (:class:`PVector`) and function space (:class:`FVector`)."""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, Mapping
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

    Parameters
    ----------
    space : ParamSpace
        The parameter space.
    tensors : mapping of str to torch.Tensor
        One tensor per parameter of ``space``, of that parameter's shape.

    Raises
    ------
    InvalidInputError
        For a missing parameter or a tensor of the wrong shape.
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
        """The model's current parameters (the live tensors, autograd-connected).

        Parameters
        ----------
        model : nn.Module
            The network.
        params : selector or ParamSpace, optional
            The parameters (names, module prefixes, modules, a predicate, or a space); None:
            those with ``requires_grad``.

        Returns
        -------
        PVector
            The parameters themselves, not copies.
        """
        space = params if isinstance(params, ParamSpace) else ParamSpace.from_model(model, params)
        return cls(space, space.check_model(model))

    @classmethod
    def from_grad(cls, model: nn.Module, params: Selector | ParamSpace = None) -> PVector:
        """The ``.grad`` of the model's parameters (zeros where ``.grad`` is None).

        Parameters
        ----------
        model, params
            As in :meth:`from_model`.

        Returns
        -------
        PVector
            Detached copies of the gradients.
        """
        space = params if isinstance(params, ParamSpace) else ParamSpace.from_model(model, params)
        ps = space.check_model(model)
        return cls(space, {n: (p.grad.detach().clone() if p.grad is not None else torch.zeros_like(p))
                           for n, p in ps.items()})

    @classmethod
    def from_flat(cls, space: ParamSpace, flat: torch.Tensor) -> PVector:
        """A vector from its flat form (the inverse of :meth:`flat`).

        Parameters
        ----------
        space : ParamSpace
            The parameter space.
        flat : torch.Tensor
            ``(P,)``, entries in the space's order.

        Returns
        -------
        PVector
            Views of ``flat``, one per parameter.

        Raises
        ------
        InvalidInputError
            When ``flat`` is not 1-d.
        """
        if flat.dim() != 1:
            raise InvalidInputError(f"expected a 1-d flat vector, got shape {tuple(flat.shape)}")
        return cls(space, space.unflatten(flat))

    @classmethod
    def zeros(cls, space: ParamSpace, dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None) -> PVector:
        """The zero vector.

        Parameters
        ----------
        space : ParamSpace
            The parameter space.
        dtype : torch.dtype
            The entries' dtype.
        device : torch.device or str, optional
            The entries' device.

        Returns
        -------
        PVector
            Zeros.
        """
        return cls(space, {p.name: torch.zeros(p.shape, dtype=dtype, device=device) for p in space.params})

    @classmethod
    def randn(cls, space: ParamSpace, dtype: torch.dtype = torch.float32,
              device: torch.device | str | None = None,
              generator: torch.Generator | None = None) -> PVector:
        """A vector of independent standard normal entries.

        Parameters
        ----------
        space : ParamSpace
            The parameter space.
        dtype : torch.dtype
            The entries' dtype.
        device : torch.device or str, optional
            The entries' device.
        generator : torch.Generator, optional
            The random generator.

        Returns
        -------
        PVector
            ``N(0, 1)`` entries.
        """
        return cls(space, {p.name: torch.randn(p.shape, dtype=dtype, device=device, generator=generator)
                           for p in space.params})

    # --- access -----------------------------------------------------------
    def __getitem__(self, name: str) -> torch.Tensor:
        return self._t[name]

    def __iter__(self) -> Iterator[str]:
        return iter(self._t)

    def items(self) -> ItemsView[str, torch.Tensor]:
        """The ``(parameter name, tensor)`` pairs, in the space's order."""
        return self._t.items()

    def to_dict(self) -> dict[str, torch.Tensor]:
        """A new ``{parameter name: tensor}`` dict (the tensors are not copied)."""
        return dict(self._t)

    def flat(self) -> torch.Tensor:
        """All entries concatenated in the space's order (differentiable)."""
        return torch.cat([t.reshape(-1) for t in self._t.values()])

    @property
    def dtype(self) -> torch.dtype:
        """The dtype of the first tensor."""
        return next(iter(self._t.values())).dtype

    @property
    def device(self) -> torch.device:
        """The device of the first tensor."""
        return next(iter(self._t.values())).device

    def size(self) -> int:
        """The number ``P`` of entries."""
        return self.space.numel

    def __len__(self) -> int:
        return self.space.numel

    # --- model interaction -------------------------------------------------
    def copy_to_model(self, model: nn.Module) -> None:
        """Write these values into the model's parameters (in place, no autograd).

        Parameters
        ----------
        model : nn.Module
            A network with the parameters of this vector's space.
        """
        ps = self.space.check_model(model)
        with torch.no_grad():
            for n, p in ps.items():
                p.copy_(self._t[n])

    def add_to_model(self, model: nn.Module) -> None:
        """Add this vector to the model's parameters (in place, no autograd): ``θ ← θ + v``.

        Parameters
        ----------
        model : nn.Module
            A network with the parameters of this vector's space.
        """
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
        """Euclidean inner product ``Σ_p self_p · other_p``.

        Parameters
        ----------
        other : PVector
            A vector on the same space.

        Returns
        -------
        torch.Tensor
            A 0-d tensor.
        """
        self._check(other)
        return sum((a * other._t[n]).sum() for n, a in self._t.items())  # type: ignore[return-value]

    def norm(self, p: float = 2) -> torch.Tensor:
        """The ``p``-norm of the flattened vector.

        Parameters
        ----------
        p : float
            The order of the norm.

        Returns
        -------
        torch.Tensor
            A 0-d tensor.
        """
        return torch.linalg.vector_norm(self.flat(), ord=p)

    def detach(self) -> PVector:
        """A copy of the vector cut from autograd (the tensors are shared)."""
        return self._map(lambda a: a.detach())

    def clone(self) -> PVector:
        """A copy of the vector with copied tensors."""
        return self._map(lambda a: a.clone())

    def to(self, *args: Any, **kwargs: Any) -> PVector:
        """The vector with every tensor converted by :meth:`torch.Tensor.to`.

        Parameters
        ----------
        *args, **kwargs
            As for :meth:`torch.Tensor.to` (a dtype, a device...).

        Returns
        -------
        PVector
            The converted vector.
        """
        return self._map(lambda a: a.to(*args, **kwargs))

    def select(self, space: ParamSpace) -> PVector:
        """The entries of a sub-space.

        Parameters
        ----------
        space : ParamSpace
            A space whose parameters are among this vector's.

        Returns
        -------
        PVector
            The restriction (tensors shared).
        """
        return PVector(space, {n: self._t[n] for n in space.names})

    def __repr__(self) -> str:
        return f"PVector({self.space.numel} parameters, {len(self._t)} tensors, dtype={self.dtype})"


class FVector:
    """A vector in function space: one value per (example, output), shape ``(N, C)``.

    Layout: row ``i`` is example ``i`` in data order, column ``c`` output
    coordinate ``c``. :meth:`flat` gives the ``N·C`` vector with index ``i·C + c``
    (the order used by :meth:`FMatDense.as_matrix`).

    Parameters
    ----------
    tensor : torch.Tensor
        ``(N, C)``.

    Raises
    ------
    InvalidInputError
        For a tensor that is not 2-d.
    """

    __slots__ = ("tensor",)

    def __init__(self, tensor: torch.Tensor):
        if tensor.dim() != 2:
            raise InvalidInputError(f"FVector expects an (N, C) tensor, got shape {tuple(tensor.shape)}")
        self.tensor = tensor

    @property
    def shape(self) -> torch.Size:
        """``(N, C)``."""
        return self.tensor.shape

    def flat(self) -> torch.Tensor:
        """The ``N·C`` entries, index ``i·C + c``."""
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
        """Euclidean inner product ``Σ_{i,c} self_{i,c} · o_{i,c}``.

        Parameters
        ----------
        o : FVector
            A vector of the same shape.

        Returns
        -------
        torch.Tensor
            A 0-d tensor.
        """
        return (self.tensor * self._other(o)).sum()

    __matmul__ = dot

    def norm(self, p: float = 2) -> torch.Tensor:
        """The ``p``-norm of the flattened vector.

        Parameters
        ----------
        p : float
            The order of the norm.

        Returns
        -------
        torch.Tensor
            A 0-d tensor.
        """
        return torch.linalg.vector_norm(self.tensor.reshape(-1), ord=p)

    def detach(self) -> FVector:
        """A copy of the vector cut from autograd (the tensor is shared)."""
        return FVector(self.tensor.detach())

    def __repr__(self) -> str:
        return f"FVector(N={self.shape[0]}, C={self.shape[1]}, dtype={self.tensor.dtype})"
