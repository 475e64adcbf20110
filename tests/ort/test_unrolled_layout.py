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
