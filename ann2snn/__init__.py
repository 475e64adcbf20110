"""ann2snn: convert quantized ANNs (QCFS) into spiking networks of integrate-and-fire neurons.

>>> import ann2snn
>>> qann = ann2snn.models.create("digits-cnn", levels=4)
>>> snn = ann2snn.convert(qann, T=4)                       # rate mode: IF neurons, best near T = L
>>> exact = ann2snn.convert(qann, convention="exact")    # logits equal the QANN's a few steps after L
>>> logits_per_t = ann2snn.simulate(snn, x)      # [T, B, K]: the logits at every t = 1..T
>>> ann2snn.save(qann, "digits.pt"); qann = ann2snn.load("digits.pt")

The names below are imported on first use (PEP 562), so that ``import ann2snn`` — and the ``ann2snn`` command's
start-up, where a Ctrl-C must end in one line, not a traceback from inside torch — does not load torch until a
name needs it.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from typing import TYPE_CHECKING

from ann2snn._version import __version__

if TYPE_CHECKING:  # what the lazy names are, for readers, type checkers and the import-graph test
    from ann2snn import models
    from ann2snn.checkpoint import load, save
    from ann2snn.errors import Ann2SnnError, CheckpointError, ConversionError, UnsupportedNodeError, VerificationError
    from ann2snn.exporters import export
    from ann2snn.layers import QCFS, Affine, ClassToken, SignedQCFS, to_channelwise
    from ann2snn.network import ConversionInfo, SpikingNetwork, convert, simulate
    from ann2snn.neurons import BipolarNeuron, Compensated, IFNeuron, SpikingMaxPool2d, StatefulModule
    from ann2snn.prepare import prepare
    from ann2snn.simulator import TimeSchedule

#: public name -> the module that defines it
_LAZY = {
    "load": "ann2snn.checkpoint", "save": "ann2snn.checkpoint",
    "Ann2SnnError": "ann2snn.errors", "CheckpointError": "ann2snn.errors", "ConversionError": "ann2snn.errors",
    "UnsupportedNodeError": "ann2snn.errors", "VerificationError": "ann2snn.errors",
    "export": "ann2snn.exporters",
    "QCFS": "ann2snn.layers", "Affine": "ann2snn.layers", "SignedQCFS": "ann2snn.layers",
    "to_channelwise": "ann2snn.layers", "ClassToken": "ann2snn.layers",
    "ConversionInfo": "ann2snn.network", "SpikingNetwork": "ann2snn.network", "convert": "ann2snn.network",
    "simulate": "ann2snn.network",
    "BipolarNeuron": "ann2snn.neurons", "IFNeuron": "ann2snn.neurons", "SpikingMaxPool2d": "ann2snn.neurons",
    "StatefulModule": "ann2snn.neurons", "Compensated": "ann2snn.neurons",
    "prepare": "ann2snn.prepare",
    "TimeSchedule": "ann2snn.simulator",
}

__all__ = [
    "__version__",
    "convert",
    "simulate",
    "prepare",
    "export",
    "save",
    "load",
    "models",
    "SpikingNetwork",
    "ConversionInfo",
    "TimeSchedule",
    "BipolarNeuron",
    "QCFS",
    "SignedQCFS",
    "Affine",
    "ClassToken",
    "to_channelwise",
    "IFNeuron",
    "SpikingMaxPool2d",
    "StatefulModule",
    "Compensated",
    "Ann2SnnError",
    "CheckpointError",
    "ConversionError",
    "UnsupportedNodeError",
    "VerificationError",
]


def __getattr__(name: str):
    """A public name from its module, or a submodule (``ann2snn.checkpoint``), imported on first use."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
    elif not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


class _Package(types.ModuleType):
    """Keeps a public function whose module has the same name (``ann2snn.prepare``): importing the submodule would
    otherwise rebind the package attribute to the module, as the eager ``from … import`` used to prevent."""

    def __setattr__(self, name: str, value) -> None:
        if name in _LAZY and isinstance(value, types.ModuleType):
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
