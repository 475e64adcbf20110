"""The architecture registry: names → builders. Kept apart from ``ann2snn.models`` so that the zoo's modules
register themselves without importing the package that imports them (no import cycle)."""

from __future__ import annotations

from typing import Callable

from torch import nn

__all__ = ["register", "REGISTRY"]

REGISTRY: dict[str, Callable[..., nn.Module]] = {}


def register(name: str):
    """Decorator: make ``fn(**kwargs) -> nn.Module`` available as ``ann2snn.models.create(name, **kwargs)``."""

    def deco(fn):
        REGISTRY[name] = fn
        fn.arch_name = name
        return fn

    return deco
