"""ann2snn: convert quantized ANNs (QCFS) into spiking networks of integrate-and-fire neurons.

>>> import ann2snn
>>> qann = ann2snn.models.create("digits-cnn", levels=4)
>>> snn = ann2snn.convert(qann, T=4)
>>> logits_per_t = ann2snn.simulate(snn, x)      # [T, B, K]: the logits at every t = 1..T
>>> ann2snn.save(qann, "digits.pt"); qann = ann2snn.load("digits.pt")
"""

from ann2snn import models
from ann2snn.checkpoint import load, save
from ann2snn.errors import Ann2SnnError, CheckpointError, ConversionError, UnsupportedNodeError, VerificationError
from ann2snn.exporters import export
from ann2snn.layers import QCFS, Affine, to_channelwise
from ann2snn.network import SpikingNetwork, convert, simulate
from ann2snn.neurons import IFNeuron, SpikingMaxPool2d, StatefulModule
from ann2snn.prepare import prepare

__version__ = "0.1.0"

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
    "QCFS",
    "Affine",
    "to_channelwise",
    "IFNeuron",
    "SpikingMaxPool2d",
    "StatefulModule",
    "Ann2SnnError",
    "CheckpointError",
    "ConversionError",
    "UnsupportedNodeError",
    "VerificationError",
]
