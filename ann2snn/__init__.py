"""ann2snn: convert quantized ANNs (QCFS) into spiking networks of integrate-and-fire neurons.

>>> import ann2snn
>>> qann = ann2snn.models.create("digits-cnn", levels=4)
>>> snn = ann2snn.convert(qann, T=4)                       # rate mode: IF neurons, best near T = L
>>> exact = ann2snn.convert(qann, convention="exact")    # logits equal the QANN's a few steps after L
>>> logits_per_t = ann2snn.simulate(snn, x)      # [T, B, K]: the logits at every t = 1..T
>>> ann2snn.save(qann, "digits.pt"); qann = ann2snn.load("digits.pt")
"""

from ann2snn import models
from ann2snn._version import __version__
from ann2snn.checkpoint import load, save
from ann2snn.errors import Ann2SnnError, CheckpointError, ConversionError, UnsupportedNodeError, VerificationError
from ann2snn.exporters import export
from ann2snn.layers import QCFS, Affine, SignedQCFS, to_channelwise
from ann2snn.network import ConversionInfo, SpikingNetwork, convert, simulate
from ann2snn.neurons import BipolarNeuron, IFNeuron, SpikingMaxPool2d, StatefulModule
from ann2snn.prepare import prepare
from ann2snn.simulator import TimeSchedule

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
