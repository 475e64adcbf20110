"""One record per operator: the QANN operators a converter meets, and the spiking operators it produces.

To add an operator: write its class (a ``StatefulModule`` for a spiking one), add its record here, and add its
exporter builder (``ann2snn.exporters.common``: ``STATELESS[kind]`` or ``STATEFUL[stateful_kind]``). The passes,
the energy monitor and the exporters' kind lookup read these records; nothing else needs to change.
"""

from __future__ import annotations

import operator

import torch
from torch import nn
from torch.nn import functional as F

from ann2snn.layers import QCFS, Affine, ClassToken, MatMul, Multiply, SignedQCFS
from ann2snn.neurons import BipolarNeuron, Compensated, IFNeuron, MultiBitNeuron, SpikingMaxPool2d
from ann2snn.ops import rules
from ann2snn.ops.base import Accounting, Fold, OpRecord, Rewrite, Sign, Spiking
from ann2snn.ops.scales import AFFINE_SCALE, CONV_SCALE, LINEAR_SCALE

__all__ = ["QANN_RECORDS", "SPIKING_RECORDS", "BN_FOLD_PATTERNS"]

#: (producer, BatchNorm) pairs where the BN folds into the producer's weights
BN_FOLD_PATTERNS = ((nn.Conv2d, nn.BatchNorm2d), (nn.Conv1d, nn.BatchNorm1d), (nn.Linear, nn.BatchNorm1d))

QANN_RECORDS: tuple[OpRecord, ...] = (
    OpRecord("input", "input", opcodes=("placeholder",), fold=Fold.SOURCE, spiking=Spiking.STRUCTURAL),
    OpRecord("output", "output", opcodes=("output",), fold=Fold.SINK, spiking=Spiking.STRUCTURAL),
    OpRecord("size", "size", methods=("size", "dim"), fold=Fold.SOURCE, spiking=Spiking.STRUCTURAL),
    OpRecord("size_item", "size", functions=(operator.getitem,), when=rules.is_size_item, fold=Fold.SOURCE,
             spiking=Spiking.STRUCTURAL),
    OpRecord("conv", "linear", modules=(nn.Conv1d, nn.Conv2d), fold=Fold.ABSORB, scale=CONV_SCALE,
             accounting=Accounting(synapses=rules.CONV_SYNAPSES)),
    OpRecord("linear", "linear", modules=(nn.Linear,), fold=Fold.ABSORB, scale=LINEAR_SCALE,
             accounting=Accounting(synapses=rules.LINEAR_SYNAPSES)),
    OpRecord("batchnorm", "bn", modules=(nn.BatchNorm1d, nn.BatchNorm2d), affine_form=rules.batchnorm_affine,
             fuses_after=BN_FOLD_PATTERNS, spiking=Spiking.REWRITTEN),
    OpRecord("affine", "affine", modules=(Affine,), fold=Fold.ABSORB, scale=AFFINE_SCALE),
    OpRecord("qcfs", "qcfs", modules=(QCFS,), fold=Fold.QUANTIZER, sign=Sign.NONNEG, spiking=Spiking.REPLACED,
             replace=rules.quantizer_to_neuron),
    OpRecord("signed_qcfs", "qcfs", modules=(SignedQCFS,), fold=Fold.QUANTIZER, sign=Sign.SIGNED,
             spiking=Spiking.REPLACED, replace=rules.quantizer_to_neuron),
    OpRecord("avgpool", "pool",
             modules=(nn.AvgPool1d, nn.AvgPool2d, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d),
             functions=(F.avg_pool1d, F.avg_pool2d, F.adaptive_avg_pool1d, F.adaptive_avg_pool2d, torch.mean),
             methods=("mean",), rewrite=Rewrite(rules.avgpool_function_to_module, "avgpool_functions"),
             fold=Fold.COMMUTE, sign=Sign.PRESERVE),
    OpRecord("maxpool", "maxpool", modules=(nn.MaxPool2d,), functions=(F.max_pool2d,),
             rewrite=Rewrite(rules.maxpool_function_to_module, "maxpool_functions"), fold=Fold.COMMUTE,
             sign=Sign.PRESERVE, spiking=Spiking.REPLACED, replace=rules.maxpool_to_spiking),
    OpRecord("relu", "relu", modules=(nn.ReLU,), functions=(F.relu, torch.relu), methods=("relu",),
             rewrite=Rewrite(rules.drop_redundant_relu, "relus_removed", headline=True), sign=Sign.PRESERVE,
             spiking=Spiking.REWRITTEN),
    OpRecord("identity", "identity",
             modules=(nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout),
             functions=(F.dropout, F.dropout1d, F.dropout2d, F.alpha_dropout),
             methods=("contiguous", "clone", "detach"),
             rewrite=Rewrite(rules.drop, "identities_removed", headline=True), sign=Sign.PRESERVE,
             spiking=Spiking.REWRITTEN),
    OpRecord("add", "add", functions=(operator.add, operator.iadd, torch.add), methods=("add",),
             rewrite=Rewrite(rules.check_add), fold=Fold.JOIN_ADD, sign=Sign.PRESERVE),
    OpRecord("cat", "cat", functions=(torch.cat, torch.concat), fold=Fold.JOIN_CAT, sign=Sign.PRESERVE),
    OpRecord("flatten", "flatten", modules=(nn.Flatten,), functions=(torch.flatten,), methods=("flatten",),
             fold=Fold.RESHAPE, sign=Sign.PRESERVE),
    OpRecord("reshape", "reshape", functions=(torch.reshape,), methods=("view", "reshape"),
             rewrite=Rewrite(rules.reshape_to_flatten, "reshapes_to_flatten"), fold=Fold.RESHAPE,
             sign=Sign.PRESERVE),
    # --- transformers: constants, layout ops, the class token, non-linear ops on values (DESIGN §2b) ---
    OpRecord("constant", "constant", opcodes=("get_attr",), fold=Fold.SOURCE, spiking=Spiking.STRUCTURAL),
    OpRecord("layout", "layout", modules=(nn.Unflatten,),
             functions=(torch.permute, torch.transpose, torch.swapaxes, torch.movedim, torch.roll, torch.narrow,
                        torch.select, torch.squeeze, torch.unsqueeze, torch.unflatten, operator.getitem),
             methods=("permute", "transpose", "swapaxes", "movedim", "roll", "narrow", "select", "squeeze",
                      "unsqueeze", "unflatten", "expand", "repeat"),
             rewrite=Rewrite(rules.check_layout), fold=Fold.RESHAPE, sign=Sign.PRESERVE),
    OpRecord("split", "split", functions=(torch.chunk, torch.split, torch.unbind, torch.tensor_split),
             methods=("chunk", "split", "unbind", "tensor_split"),
             rewrite=Rewrite(rules.split_to_slices, "splits_to_slices"), sign=Sign.PRESERVE,
             spiking=Spiking.REWRITTEN),
    OpRecord("elementwise", "elementwise",
             functions=(operator.mul, torch.mul, operator.truediv, torch.div, operator.sub, torch.sub),
             methods=("mul", "div", "sub"), rewrite=Rewrite(rules.elementwise, "constants_to_affine"),
             spiking=Spiking.REWRITTEN),
    OpRecord("class_token", "token", modules=(ClassToken,), fold=Fold.OPAQUE),
    OpRecord("matmul", "product", modules=(MatMul,), functions=(operator.matmul, torch.matmul, torch.bmm),
             methods=("matmul", "bmm"), rewrite=Rewrite(rules.function_to_module, "functions_to_modules"),
             fold=Fold.OPAQUE, spiking=Spiking.REPLACED, replace=rules.to_compensated,
             accounting=Accounting(dense=rules.product_macs)),
    OpRecord("multiply", "product", modules=(Multiply,), fold=Fold.OPAQUE, spiking=Spiking.REPLACED,
             replace=rules.to_compensated, accounting=Accounting(dense=rules.product_macs)),
    OpRecord("softmax", "softmax", modules=(nn.Softmax,), functions=(F.softmax, torch.softmax),
             methods=("softmax",), rewrite=Rewrite(rules.function_to_module, "functions_to_modules"),
             fold=Fold.OPAQUE, sign=Sign.NONNEG, spiking=Spiking.REPLACED, replace=rules.to_compensated),
    OpRecord("layernorm", "layernorm", modules=(nn.LayerNorm,), fold=Fold.OPAQUE, spiking=Spiking.REPLACED,
             replace=rules.to_compensated),
    OpRecord("gelu", "gelu", modules=(nn.GELU,), functions=(F.gelu,),
             rewrite=Rewrite(rules.function_to_module, "functions_to_modules"), fold=Fold.OPAQUE,
             spiking=Spiking.REPLACED, replace=rules.to_compensated),
)

SPIKING_RECORDS: tuple[OpRecord, ...] = (
    OpRecord("if", "stateful", modules=(IFNeuron,), sign=Sign.NONNEG, spiking=Spiking.STATEFUL, stateful_kind="if",
             accounting=Accounting(neuron=True, report_list="neurons", counter="if_neurons")),
    OpRecord("bipolar", "stateful", modules=(BipolarNeuron,), sign=Sign.SIGNED, spiking=Spiking.STATEFUL,
             stateful_kind="bipolar",
             accounting=Accounting(neuron=True, report_list="neurons", counter="bipolar_neurons")),
    OpRecord("compensated", "stateful", modules=(Compensated,), spiking=Spiking.STATEFUL, stateful_kind="compensated",
             accounting=Accounting(report_list="compensated_ops", counter="compensated_ops",
                                   dense=rules.compensated_macs)),
    OpRecord("spiking_maxpool", "stateful", modules=(SpikingMaxPool2d,), sign=Sign.PRESERVE,
             spiking=Spiking.STATEFUL, stateful_kind="maxpool",
             accounting=Accounting(report_list="spiking_maxpools", counter="spiking_maxpools")),
    OpRecord("multibit", "stateful", modules=(MultiBitNeuron,), sign=Sign.NONNEG, spiking=Spiking.STATEFUL,
             stateful_kind="multibit",
             accounting=Accounting(neuron=True, report_list="neurons", counter="multibit_neurons")),
)
