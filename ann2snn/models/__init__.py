"""The model zoo: QANNs built on :class:`ann2snn.layers.QCFS`, created by name.

Examples:
    >>> from ann2snn import models
    >>> net = models.create("resnet20", levels=4, granularity="channel")
    >>> sorted(models.available())[:3]
    ['digits-cnn', 'mnist-cnn', 'mnist-mlp']

User code adds architectures with :func:`register`; checkpoints name the architecture and its keyword
arguments, so a model file never needs to be unpickled.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path
from typing import Callable

from torch import nn

from ann2snn.errors import Ann2SnnError
from ann2snn.models.registry import REGISTRY as _REGISTRY
from ann2snn.models.registry import register

__all__ = ["register", "create", "available", "builtin", "import_arch_module"]

def available() -> dict[str, Callable[..., nn.Module]]:
    """Registered architectures by name (the zoo and any registered by user code)."""
    _load_builtin()
    return dict(_REGISTRY)


def builtin() -> list[str]:
    """Names of the zoo's own architectures."""
    _load_builtin()
    return sorted(n for n, fn in _REGISTRY.items() if fn.__module__.startswith("ann2snn.models"))


def create(name: str, **kwargs) -> nn.Module:
    """Build architecture ``name`` with ``kwargs``; the module remembers both for checkpoints."""
    _load_builtin()
    if name not in _REGISTRY:
        raise Ann2SnnError(
            f"unknown architecture {name!r}; choose one of {', '.join(sorted(_REGISTRY))} "
            "or register your own with ann2snn.models.register (CLI: --arch-module)"
        )
    try:
        model = _REGISTRY[name](**kwargs)
    except TypeError as exc:
        raise Ann2SnnError(f"architecture {name!r} does not accept these arguments: {exc}") from exc
    model.arch_name = name
    model.arch_kwargs = dict(kwargs)
    return model


def import_arch_module(spec: str) -> None:
    """Import a user module (dotted name or ``.py`` path) whose ``register`` calls add architectures."""
    try:
        if spec.endswith(".py"):
            path = Path(spec)
            if not path.is_file():
                raise Ann2SnnError(f"architecture module {spec!r} does not exist")
            mod_spec = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(mod_spec)
            sys.modules[path.stem] = module
            mod_spec.loader.exec_module(module)
        else:
            importlib.import_module(spec)
    except ImportError as exc:
        raise Ann2SnnError(f"cannot import architecture module {spec!r}: {exc}") from exc


def _load_builtin() -> None:
    from ann2snn.models import cnn, resnet, vgg  # noqa: F401  (registers on import)
