"""The unrolled graph's layouts (per step, negated IF step, layers stacked over time) against the simulator."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from helpers import make_qann

import ann2snn
from ann2snn.exporters import onnx_unrolled
from ann2snn.exporters.onnx_unrolled import build_unrolled
from ann2snn.exporters.verify import reference
from ann2snn.runtime import make_session

KEYS = ["mlp", "vgg", "resnet", "digits", "maxpool"]
TOL = dict(rtol=1e-4, atol=1e-4)


def _run(model, x):
    sess, _ = make_session(model.SerializeToString(), provider="cpu")
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(None, {"input": x.numpy()})))


def _ops(model) -> list[str]:
    return [n.op_type for n in model.graph.node]


@pytest.fixture(scope="module")
def exact_snns():
    cache = {}

    def get(key):
        if key not in cache:
            cache[key] = ann2snn.convert(make_qann(key), 8, convention="exact")
        return cache[key]

    return get


@pytest.mark.parametrize("stacked", [False, True])
@pytest.mark.parametrize("convention", ["rate", "exact"])
@pytest.mark.parametrize("key", KEYS)
def test_layouts_match_simulator_step_by_step(snns, exact_snns, key, convention, stacked):
    snn = snns(key) if convention == "rate" else exact_snns(key)
    x = torch.rand(5, *snn.input_shape, generator=torch.Generator().manual_seed(3))
    ref, counts = reference(snn, x, snn.T)
    model = build_unrolled(snn, probes=True, stacked=stacked)
    onnx.checker.check_model(model)
    out = _run(model, x)
    np.testing.assert_allclose(out["logits_per_step"], ref, **TOL)
    for name, c in counts.items():  # spike counts after the last step: integers, equal
        np.testing.assert_allclose(out["count." + name][-1], c, atol=1e-4)


def test_conv_fed_if_neurons_step_inside_the_conv(snns):
    """A conv feeding an IF neuron emits −X'; the step is one HardSigmoid (fused into the conv by onnxruntime), and no
    comparison or cast is left for those neurons."""
    snn = snns("digits")
    ops = _ops(build_unrolled(snn, stacked=False))
    assert "HardSigmoid" in ops
    assert "GreaterOrEqual" not in ops and "Cast" not in ops


def test_stacked_layers_run_once(snns):
    snn = snns("vgg")
    convs = sum(isinstance(m, torch.nn.Conv2d) for m in snn.graph_module.modules())
    per_step, stacked = _ops(build_unrolled(snn, stacked=False)), _ops(build_unrolled(snn, stacked=True))
    assert stacked.count("Conv") == convs  # each conv once for all T steps
    assert per_step.count("Conv") > convs


def test_default_stacks_only_layers_with_large_weights(snns, monkeypatch):
    snn = snns("vgg")
    assert _ops(build_unrolled(snn)) == _ops(build_unrolled(snn, stacked=False))  # tiny weights: per step
    monkeypatch.setattr(onnx_unrolled, "STACK_WEIGHT_BYTES", 0)
    monkeypatch.setattr(onnx_unrolled, "STACK_WEIGHT_RATIO", 0)
    assert _ops(build_unrolled(snn)) == _ops(build_unrolled(snn, stacked=True))


@pytest.mark.parametrize("convention", ["rate", "exact"])
def test_per_channel_affine_is_a_depthwise_conv_bit_for_bit(convention, monkeypatch):
    """A per-channel scale (threshold folding's Affine on a residual shortcut) runs as a depthwise 1×1 conv, which
    onnxruntime keeps in its blocked layout; the products are the Mul's, bit for bit, in both graphs."""
    from ann2snn.exporters import common
    from ann2snn.exporters.onnx_stateful import build_stateful
    from ann2snn.runtime import StatefulRunner

    snn = ann2snn.convert(make_qann("resnet", width=8, granularity="channel"), 6, convention=convention)
    affines = [m for m in snn.graph_module.modules() if type(m).__name__ == "Affine"]
    assert affines and all(m.weight.numel() % 8 == 0 for m in affines)
    x = torch.rand(4, *snn.input_shape, generator=torch.Generator().manual_seed(5))
    model = build_unrolled(snn)
    groups = [a.i for n in model.graph.node if n.op_type == "Conv" for a in n.attribute if a.name == "group"]
    assert sum(g > 1 for g in groups) >= len(affines)
    assert "Mul" not in _ops(build_stateful(snn)[0]) or convention == "exact"  # exact gates with Mul
    ref, _ = reference(snn, x, snn.T)
    out = _run(model, x)["logits_per_step"]
    np.testing.assert_allclose(out, ref, **TOL)
    stepped = StatefulRunner(build_stateful(snn)[0].SerializeToString(), provider="cpu").run(x.numpy(), snn.T)
    np.testing.assert_allclose(stepped, ref, **TOL)
    monkeypatch.setattr(common, "AFFINE_AS_CONV_CHANNELS", 0)
    plain = _run(build_unrolled(snn), x)["logits_per_step"]
    assert "Mul" in _ops(build_unrolled(snn))
    np.testing.assert_array_equal(out, plain)


def test_cheap_input_convs_run_per_step_on_the_accumulated_input(snns, monkeypatch):
    """A 3-channel 3×3 stem (27 multiply-adds per output) runs once per step on ``N(t)·x``, its neurons in the fused
    negated form; above :data:`PER_STEP_INPUT_MACS` it runs once and its neurons take the closed form (Floor)."""
    snn = snns("resnet")
    x = torch.rand(3, *snn.input_shape, generator=torch.Generator().manual_seed(4))
    ref, _ = reference(snn, x, snn.T)
    per_step = build_unrolled(snn)
    monkeypatch.setattr(onnx_unrolled, "PER_STEP_INPUT_MACS", 26)
    once = build_unrolled(snn)
    assert "Floor" not in _ops(per_step) and "Floor" in _ops(once)
    assert _ops(per_step).count("Conv") == _ops(once).count("Conv") + snn.T - 1
    stem = [n for n in per_step.graph.node if n.op_type == "Conv"][0].input[1]
    assert sum(n.input[1] == stem for n in per_step.graph.node if n.op_type == "Conv") == snn.T
    for model in (per_step, once):
        np.testing.assert_allclose(_run(model, x)["logits_per_step"], ref, **TOL)


def test_average_pools_after_the_last_neuron_run_per_step(snns):
    """The global pool after the last neuron stays out of the folded read-out: it runs per step on the counts and
    the read-out matrix reads the pooled counts (channels × classes), not the whole map."""
    snn = snns("resnet")
    model = build_unrolled(snn)
    assert _ops(model).count("GlobalAveragePool") == snn.T
    (matmul,) = [n for n in model.graph.node if n.op_type == "MatMul"]
    readout = onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == matmul.input[1]))
    channels = [m for m in snn.graph_module.modules() if isinstance(m, torch.nn.Linear)][-1].in_features
    assert readout.shape[0] == channels


@pytest.mark.parametrize("granularity,how", [("channel", "affine"), ("layer", "identity")])
def test_neurons_after_a_residual_add_step_in_the_blocked_layout(granularity, how):
    """An IF neuron fed by ``conv + shortcut`` sums ``−conv + (−shortcut + c)`` itself: the shortcut negated by its
    own depthwise conv (a per-channel scale: ``affine``; an identity: weight −1) or projection conv (``conv``), the
    step a HardSigmoid; no comparison, cast or Sub is left, and the logits are the simulator's."""
    snn = ann2snn.convert(make_qann("resnet", width=8, granularity=granularity), 4)
    unroller = onnx_unrolled._Unroller(snn, snn.T, "direct", False)
    hows = sorted({h for _, _, h in unroller.residual.values()})
    assert hows == sorted({how, "conv"})
    model = unroller.build()
    ops = _ops(model)
    assert not {"GreaterOrEqual", "Cast", "Sub"} & set(ops)
    x = torch.rand(5, *snn.input_shape, generator=torch.Generator().manual_seed(6))
    ref, counts = reference(snn, x, snn.T)
    probed = build_unrolled(snn, probes=True)
    out = _run(probed, x)
    np.testing.assert_allclose(out["logits_per_step"], ref, **TOL)
    for name, c in counts.items():
        np.testing.assert_allclose(out["count." + name][-1], c, atol=1e-4)
