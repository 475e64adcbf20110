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

__all__ = ["register", "create", "available", "builtin", "import_arch_module", "randomize"]

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
    """Import a user module (dotted name or ``.py`` path) whose ``register`` calls add architectures.

    This runs the module's code, as ``import`` does: name only modules you trust. A ``.py`` file goes into
    ``sys.modules`` under its own name only while that name is free (not imported, not importable from elsewhere),
    so a file ``json.py`` never replaces the standard ``json``; otherwise under a private name. A missing module, a
    syntax error or an exception while it runs is a one-line error.
    """
    try:
        if spec.endswith(".py"):
            path = Path(spec)
            if not path.is_file():
                raise Ann2SnnError(f"architecture module {spec!r} does not exist")
            name = _user_module_name(path)
            mod_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(mod_spec)
            previous = sys.modules.get(name)
            sys.modules[name] = module  # dataclasses and pickle look their module up here while it runs
            try:
                mod_spec.loader.exec_module(module)
            except BaseException:
                if previous is None:
                    sys.modules.pop(name, None)
                else:
                    sys.modules[name] = previous
                raise
        else:
            importlib.import_module(spec)
    except Ann2SnnError:
        raise
    except SyntaxError as exc:
        raise Ann2SnnError(f"architecture module {spec!r} has a syntax error at line {exc.lineno}: {exc.msg}") from exc
    except ImportError as exc:
        raise Ann2SnnError(f"cannot import architecture module {spec!r}: {exc}") from exc
    except Exception as exc:  # the module's own code failed while it ran
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise Ann2SnnError(f"architecture module {spec!r} failed while it ran ({type(exc).__name__}: {first}); "
                           "fix the module (ann2snn --verbose shows where)") from exc


def _user_module_name(path: Path) -> str:
    """The ``sys.modules`` name for a user's ``.py`` file: its stem when that names no other module, else a
    private name, so that loading it never shadows the standard library or an installed package."""
    import hashlib
    import keyword
    import re

    stem, resolved = path.stem, path.resolve()

    def same_file(origin) -> bool:
        return bool(origin) and Path(origin).resolve() == resolved

    if stem.isidentifier() and not keyword.iskeyword(stem):
        loaded = sys.modules.get(stem)
        if loaded is not None:
            if same_file(getattr(loaded, "__file__", None)):
                return stem
        else:
            try:
                found = importlib.util.find_spec(stem)
            except (ImportError, ValueError):
                found = None
            if found is None or same_file(found.origin):
                return stem
    digest = hashlib.sha1(str(resolved).encode()).hexdigest()[:8]
    return f"_ann2snn_arch_{re.sub(r'[^0-9A-Za-z_]', '_', stem)}_{digest}"


def _load_builtin() -> None:
    from ann2snn.models import cnn, resnet, swin, vgg, vit  # noqa: F401  (registers on import)


def randomize(model: nn.Module, seed: int = 0, *, theta: tuple[float, float] = (0.3, 1.5)) -> nn.Module:
    """``model`` in eval mode with seeded BatchNorm statistics and QCFS thresholds (uniform in ``theta``): a freshly
    built model has them all at 1. For timing (time does not depend on training) and for tests."""
    import torch

    from ann2snn.layers import QCFS, inverse_softplus

    g = torch.Generator().manual_seed(seed)

    def uniform(t, lo, hi):
        t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)

    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
                uniform(m.running_mean, -0.3, 0.3)
                uniform(m.running_var, 0.5, 2.0)
                uniform(m.weight, 0.5, 1.5)
                uniform(m.bias, -0.2, 0.4)
            elif isinstance(m, QCFS):
                target = torch.rand(m.lam.shape, generator=g) * (theta[1] - theta[0]) + theta[0]
                m.lam.copy_(inverse_softplus(target) if m.positive == "softplus" else target)
    return model.eval()
