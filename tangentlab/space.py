"""Parameter spaces: which parameters an object lives on, and how they are laid out.

A :class:`ParamSpace` is a pure description (names, shapes, grouping into
layers); it holds no tensors and no module references, so every object built on
it can be pickled. The flat order of parameters is the order of
``model.named_parameters()`` (shared parameters appear once, under their first
name). Parameters are grouped into *layers*: the parameters owned directly by
one module form one layer (used by block-diagonal representations and for
selecting subsets).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from .errors import InvalidInputError


@dataclass(frozen=True)
class ParamInfo:
    """One parameter tensor: full name, shape, and position in the flat vector.

    Attributes
    ----------
    name : str
        The full name, as in ``model.named_parameters()``.
    shape : tuple of int
        The tensor's shape.
    offset : int
        The index of its first entry in the flat vector.
    """

    name: str
    shape: tuple[int, ...]
    offset: int

    @property
    def numel(self) -> int:
        """The number of entries."""
        n = 1
        for s in self.shape:
            n *= s
        return n

    @property
    def local(self) -> str:
        """The name inside its module (``"weight"``, ``"bias"``...)."""
        return self.name.rsplit(".", 1)[-1]

    @property
    def slice(self) -> slice:
        """The entries' positions ``offset : offset + numel`` in the flat vector."""
        return slice(self.offset, self.offset + self.numel)


@dataclass(frozen=True)
class Layer:
    """The parameters owned directly by one module (``module`` is its path, ``""`` for the root).

    Attributes
    ----------
    module : str
        The module's path.
    module_type : str
        The module's class name.
    params : tuple of ParamInfo
        Its selected parameters, in order (contiguous in the flat vector).
    """

    module: str
    module_type: str
    params: tuple[ParamInfo, ...]

    @property
    def numel(self) -> int:
        """The number of entries of the layer's parameters."""
        return sum(p.numel for p in self.params)

    @property
    def offset(self) -> int:
        """The index of the layer's first entry in the flat vector."""
        return self.params[0].offset

    @property
    def slice(self) -> slice:
        """The layer's positions in the flat vector."""
        return slice(self.offset, self.offset + self.numel)

    def param(self, local: str) -> ParamInfo:
        """One parameter of the layer by its local name.

        Parameters
        ----------
        local : str
            ``"weight"``, ``"bias"``...

        Returns
        -------
        ParamInfo
            The parameter.

        Raises
        ------
        KeyError
            When the layer has no such parameter.
        """
        for p in self.params:
            if p.local == local:
                return p
        raise KeyError(local)


Selector = (
    None | str | nn.Module | nn.Parameter | Callable[[str, torch.Tensor], bool]
    | Sequence[str | nn.Module | nn.Parameter]
)


@dataclass(frozen=True)
class ParamSpace:
    """An ordered set of parameters grouped into layers.

    Build one with :meth:`from_model`; restrict it with :meth:`select`.

    Parameters
    ----------
    layers : tuple of Layer
        The layers, their parameters' offsets consecutive from 0.
    """

    layers: tuple[Layer, ...]
    _index: dict[str, ParamInfo] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {p.name: p for lay in self.layers for p in lay.params})

    # --- construction -------------------------------------------------
    @classmethod
    def from_model(cls, model: nn.Module, params: Selector = None) -> ParamSpace:
        """The parameters of ``model`` picked by ``params``.

        ``params`` may be ``None`` (all parameters with ``requires_grad``), a
        module-path prefix or parameter name (``"features.0"``,
        ``"head.weight"``), a submodule, a parameter, a sequence of these, or a
        predicate ``(name, tensor) -> bool``.

        Parameters
        ----------
        model : nn.Module
            The network.
        params : selector, optional
            The parameters to keep, as above.

        Returns
        -------
        ParamSpace
            The selected parameters in ``model.named_parameters()`` order, grouped by module.

        Raises
        ------
        InvalidInputError
            When the model has no parameter or the selection matches none.
        """
        named = list(model.named_parameters())
        if not named:
            raise InvalidInputError("the model has no parameters")
        chosen = _resolve_selection(model, named, params)
        if not chosen:
            if params is None:
                raise InvalidInputError(
                    f"no parameter requires grad: all {len(named)} parameters of the model have "
                    "requires_grad=False (frozen), and by default only trainable parameters are "
                    "selected. Unfreeze the ones you want (`p.requires_grad_(True)`) or name them "
                    "with `params=` (e.g. `params=model` for all of them)"
                )
            raise InvalidInputError(f"the parameter selection {params!r} matched no parameter")
        modules = dict(model.named_modules())
        groups: dict[str, list[tuple[str, tuple[int, ...]]]] = {}
        for name, p in named:
            if name not in chosen:
                continue
            mod = name.rsplit(".", 1)[0] if "." in name else ""
            groups.setdefault(mod, []).append((name, tuple(p.shape)))
        layers = []
        offset = 0
        for mod, plist in groups.items():
            infos = []
            for name, shape in plist:
                info = ParamInfo(name, shape, offset)
                offset += info.numel
                infos.append(info)
            layers.append(Layer(mod, type(modules[mod]).__name__, tuple(infos)))
        return cls(tuple(layers))

    def select(self, names: Iterable[str] | Callable[[str], bool]) -> ParamSpace:
        """Sub-space with the parameters whose names (or module prefixes) are given.

        Parameters
        ----------
        names : iterable of str or callable
            Parameter names or module prefixes, or a predicate on the parameter name.

        Returns
        -------
        ParamSpace
            The sub-space, offsets renumbered from 0.

        Raises
        ------
        InvalidInputError
            When the selection matches no parameter.
        """
        if callable(names):
            keep = {p.name for p in self.params if names(p.name)}
        else:
            wanted = list(names)
            keep = {p.name for p in self.params
                    if any(p.name == w or p.name.startswith(w + ".") or w == "" for w in wanted)}
        if not keep:
            raise InvalidInputError(f"selection {names!r} matched no parameter of this space")
        layers = []
        offset = 0
        for lay in self.layers:
            infos = []
            for p in lay.params:
                if p.name in keep:
                    infos.append(ParamInfo(p.name, p.shape, offset))
                    offset += infos[-1].numel
            if infos:
                layers.append(Layer(lay.module, lay.module_type, tuple(infos)))
        return ParamSpace(tuple(layers))

    # --- description ---------------------------------------------------
    @property
    def params(self) -> tuple[ParamInfo, ...]:
        """Every parameter, in order."""
        return tuple(p for lay in self.layers for p in lay.params)

    @property
    def names(self) -> tuple[str, ...]:
        """Every parameter's full name, in order."""
        return tuple(p.name for p in self.params)

    @property
    def numel(self) -> int:
        """The dimension ``P`` of the space."""
        return sum(lay.numel for lay in self.layers)

    def __len__(self) -> int:
        return self.numel

    def __contains__(self, name: object) -> bool:
        return name in self._index

    def info(self, name: str) -> ParamInfo:
        """One parameter by its full name.

        Parameters
        ----------
        name : str
            The full name.

        Returns
        -------
        ParamInfo
            The parameter.

        Raises
        ------
        KeyError
            When the space has no such parameter.
        """
        try:
            return self._index[name]
        except KeyError:
            raise KeyError(f"parameter {name!r} is not in this space ({', '.join(self.names)})") from None

    def layer(self, module: str) -> Layer:
        """One layer by its module path.

        Parameters
        ----------
        module : str
            The module's path (``""``: the root).

        Returns
        -------
        Layer
            The layer.

        Raises
        ------
        KeyError
            When the space has no such layer.
        """
        for lay in self.layers:
            if lay.module == module:
                return lay
        raise KeyError(f"no layer {module!r} in this space")

    def __repr__(self) -> str:
        parts = ", ".join(f"{lay.module or '<root>'}:{lay.module_type}({lay.numel})" for lay in self.layers)
        return f"ParamSpace({self.numel} parameters; {parts})"

    # --- flat <-> dict ---------------------------------------------------
    def flatten(self, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
        """Concatenate ``{name: tensor}`` into one flat vector in this space's order.

        Parameters
        ----------
        tensors : dict of str to torch.Tensor
            One tensor per parameter of the space (others are ignored).

        Returns
        -------
        torch.Tensor
            ``(P,)``.
        """
        missing = [n for n in self.names if n not in tensors]
        if missing:
            raise InvalidInputError(f"missing parameters {missing}")
        return torch.cat([tensors[n].reshape(-1) for n in self.names])

    def unflatten(self, flat: torch.Tensor) -> dict[str, torch.Tensor]:
        """Split a flat vector (last dimension of size :attr:`numel`) into ``{name: tensor}``.

        Parameters
        ----------
        flat : torch.Tensor
            ``(..., P)``.

        Returns
        -------
        dict of str to torch.Tensor
            Views of shape ``(..., *parameter shape)``.
        """
        if flat.shape[-1] != self.numel:
            raise InvalidInputError(
                f"flat vector has {flat.shape[-1]} entries, this space has {self.numel}"
            )
        lead = flat.shape[:-1]
        return {p.name: flat[..., p.slice].reshape(*lead, *p.shape) for p in self.params}

    def state(self) -> list[dict[str, Any]]:
        """A plain-Python description (for ``state_dict``)."""
        return [{"module": lay.module, "type": lay.module_type,
                 "params": [(p.name, list(p.shape)) for p in lay.params]} for lay in self.layers]

    @classmethod
    def from_state(cls, state: list[dict[str, Any]]) -> ParamSpace:
        """The space described by :meth:`state`.

        Parameters
        ----------
        state : list of dict
            What :meth:`state` returned.

        Returns
        -------
        ParamSpace
            The space.
        """
        layers, offset = [], 0
        for d in state:
            infos = []
            for name, shape in d["params"]:
                infos.append(ParamInfo(name, tuple(shape), offset))
                offset += infos[-1].numel
            layers.append(Layer(d["module"], d["type"], tuple(infos)))
        return cls(tuple(layers))

    def check_model(self, model: nn.Module) -> dict[str, nn.Parameter]:
        """The model's parameters for this space; errors if one is missing or reshaped.

        Parameters
        ----------
        model : nn.Module
            The network.

        Returns
        -------
        dict of str to nn.Parameter
            The live parameters, in the space's order.

        Raises
        ------
        InvalidInputError
            When a parameter of the space is missing or has another shape.
        """
        named = dict(model.named_parameters())
        out = {}
        for p in self.params:
            if p.name not in named:
                raise InvalidInputError(f"the model has no parameter {p.name!r} of this space")
            if tuple(named[p.name].shape) != p.shape:
                raise InvalidInputError(
                    f"parameter {p.name!r} has shape {tuple(named[p.name].shape)}, the space "
                    f"expects {p.shape}"
                )
            out[p.name] = named[p.name]
        return out


def _resolve_selection(model: nn.Module, named: Sequence[tuple[str, torch.Tensor]],
                       params: Selector) -> set[str]:
    if params is None:
        return {n for n, p in named if p.requires_grad}
    if callable(params) and not isinstance(params, (nn.Module, nn.Parameter)):
        return {n for n, p in named if params(n, p)}
    items = params if isinstance(params, (list, tuple, set)) else [params]
    chosen: set[str] = set()
    modules = {id(m): path for path, m in model.named_modules()}
    by_id = {id(p): n for n, p in named}
    for it in items:
        if isinstance(it, nn.Parameter) or (isinstance(it, torch.Tensor) and id(it) in by_id):
            if id(it) not in by_id:
                raise InvalidInputError("a selected parameter does not belong to the model")
            chosen.add(by_id[id(it)])
        elif isinstance(it, nn.Module):
            if id(it) not in modules:
                raise InvalidInputError(f"selected module {type(it).__name__} is not part of the model")
            pre = modules[id(it)]
            chosen |= {n for n, _ in named if pre == "" or n.startswith(pre + ".")}
        elif isinstance(it, str):
            hit = {n for n, _ in named if n == it or n.startswith(it + ".")}
            if not hit:
                raise InvalidInputError(
                    f"{it!r} names no parameter or module of the model; parameters are "
                    f"{[n for n, _ in named]}"
                )
            chosen |= hit
        else:
            raise InvalidInputError(f"cannot select parameters with {type(it).__name__}")
    return chosen
