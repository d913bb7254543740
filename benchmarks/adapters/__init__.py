"""Adapters, in reference order: for each (workload, case, quantity) the first adapter
that produced a result is the reference of the relative errors."""

from __future__ import annotations

from .base import ALL, Adapter
from .peers import BackPACK, Curvlinops, NNGeometry
from .tangentlab_adapter import TangentlabAdapter
from .torchfunc import TorchFuncJacobian, TorchFuncProducts

ADAPTERS: list[type[Adapter]] = [
    TorchFuncJacobian, TorchFuncProducts, TangentlabAdapter, NNGeometry, Curvlinops, BackPACK,
]


def by_name(name: str) -> Adapter:
    for cls in ADAPTERS:
        if cls.name == name:
            return cls()
    raise KeyError(name)


__all__ = ["ADAPTERS", "ALL", "Adapter", "by_name"]
