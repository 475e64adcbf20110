"""The runtime: stateful states driven from their specs alone, the read-out of each time convention, and the
unrolled runner's micro-batches."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from onnx import TensorProto, helper

from ann2snn.errors import Ann2SnnError
from ann2snn.exporters import contract as C
from ann2snn.runtime import StatefulRunner

V0 = np.array([1.0, 2.0], dtype=np.float32)


def _stepper(convention: str, length: int | None, fmt: str = "stateful") -> bytes:
    """A hand-written one-step graph of an operator kind no exporter knows: ``v += x; n += 1; out = v + n``.

    Its two states have different initial forms (values, fill) and their outputs come in the opposite order of
    the specs, so the runner must bind them by name.
    """
    states = (C.StateSpec("acc", "v", "made-up", (2,), values=V0.tolist()),
              C.StateSpec("acc", "n", "made-up", (1,), fill=0.5))
    v, n = states
    one = helper.make_tensor("one", TensorProto.FLOAT, [], [1.0])
    nodes = [helper.make_node("Add", [v.input, C.INPUT], ["v_new"]),
             helper.make_node("Add", [n.input, "one"], ["n_new"]),
             helper.make_node("Add", ["v_new", "n_new"], [C.LOGITS_T]),
             helper.make_node("Identity", ["n_new"], [n.output]),
             helper.make_node("Identity", ["v_new"], [v.output])]
    def value(name, width):
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", width])

    graph = helper.make_graph(nodes, "stepper", [value(C.INPUT, 2), value(v.input, 2), value(n.input, 1)],
                              [value(C.LOGITS_T, 2), value(n.output, 1), value(v.output, 2)], initializer=[one])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 10)
    meta = C.ModelMetadata(format=fmt, T=3, input_shape=(2,), convention=convention, schedule_length=length,
                           states=states)
    for k, val in meta.to_props().items():
        entry = model.metadata_props.add()
        entry.key, entry.value = k, val
    return model.SerializeToString()


@pytest.mark.parametrize("convention,length,divisors", [("rate", None, [1, 2, 3, 4]), ("exact", 2, [1, 2, 2, 2])])
def test_runner_drives_any_state_and_reads_out_by_convention(convention, length, divisors):
    runner = StatefulRunner(_stepper(convention, length), provider="cpu")
    assert (runner.convention, runner.schedule_length, runner.T) == (convention, length, 3)
    x = np.array([[1.0, 0.0], [0.0, -1.0]], dtype=np.float32)
    t = np.arange(1, 5, dtype=np.float32).reshape(-1, 1, 1)
    instant = V0 + t * x + (0.5 + t)  # v_t + n_t
    np.testing.assert_allclose(runner.run_instant(x, 4), instant, rtol=1e-6)
    expected = np.cumsum(instant, 0) / np.array(divisors, dtype=np.float32).reshape(-1, 1, 1)
    np.testing.assert_allclose(runner.run(x, 4), expected, rtol=1e-6)
    assert runner.run(x).shape == (3, 2, 2)  # T from the metadata


def test_runner_refuses_an_unrolled_file():
    with pytest.raises(Ann2SnnError, match="not an ann2snn stateful ONNX file"):
        StatefulRunner(_stepper("rate", None, fmt="unrolled"), provider="cpu")


def test_read_metadata_from_a_session():
    runner = StatefulRunner(_stepper("exact", 2), provider="cpu")
    meta = C.read_metadata(runner.session)
    assert meta == runner.metadata and [s.input for s in meta.states] == ["state.acc.v", "state.acc.n"]


@pytest.mark.parametrize("T", [1, 4, 5])
def test_runner_alternates_two_state_buffers_and_returns_extra_outputs(T):
    """Odd and even T end on either buffer; an extra output comes back per step, an unknown one is an error."""
    runner = StatefulRunner(_stepper("rate", None), provider="cpu")
    x = np.array([[1.0, 0.0], [0.0, -1.0]], dtype=np.float32)
    outs = runner.run_outputs(x, T, extra=[C.state_output_name("acc", "n")])
    t = np.arange(1, T + 1, dtype=np.float32).reshape(-1, 1, 1)
    np.testing.assert_allclose(outs[C.LOGITS_T], V0 + t * x + (0.5 + t), rtol=1e-6)
    np.testing.assert_allclose(outs[C.state_output_name("acc", "n")], np.broadcast_to(0.5 + t, (T, 2, 1)))
    with pytest.raises(Ann2SnnError, match="no output 'nope'"):
        runner.run_outputs(x, T, extra=["nope"])


def test_micro_batch_size_fits_the_budget():
    from ann2snn.runtime import MICRO_BATCH_BYTES, micro_batch_size

    assert micro_batch_size(None) is None and micro_batch_size(0) is None
    assert micro_batch_size(50176) == 16  # MNIST conv net: 16 × 28 × 28 floats a sample
    assert micro_batch_size(MICRO_BATCH_BYTES * 4) == 1
    assert micro_batch_size(1) == 1 << (MICRO_BATCH_BYTES.bit_length() - 1)


@pytest.mark.parametrize("encoding", ["direct", "sequence"])
def test_unrolled_runner_gives_the_whole_batch_result_in_micro_batches(snns, encoding):
    from ann2snn.exporters.onnx_unrolled import build_unrolled
    from ann2snn.runtime import UnrolledRunner

    snn = snns("digits")
    model = build_unrolled(snn, encoding=encoding).SerializeToString()
    g = torch.Generator().manual_seed(2)
    x = torch.rand(*((snn.T,) if encoding == "sequence" else ()), 13, *snn.input_shape, generator=g).numpy()
    whole = UnrolledRunner(model, provider="cpu", micro_batch=None)
    parts = UnrolledRunner(model, provider="cpu", micro_batch=4)
    auto = UnrolledRunner(model, provider="cpu")
    assert whole.micro_batch is None and parts.micro_batch == 4
    assert auto.micro_batch == micro_batch_size_of(model)
    a = whole.run_outputs(x, ["logits", "logits_per_step"])
    b = parts.run_outputs(x, ["logits", "logits_per_step"])
    assert b["logits"].shape == (13, 10) and b["logits_per_step"].shape == (snn.T, 13, 10)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k])  # every sample is computed on its own: bit for bit


def micro_batch_size_of(model: bytes) -> int | None:
    from ann2snn.exporters.contract import read_metadata
    from ann2snn.runtime import micro_batch_size

    meta = read_metadata(model)
    assert meta.activation_bytes and meta.activation_bytes % 4 == 0
    return micro_batch_size(meta.activation_bytes)


def test_unrolled_runner_refuses_a_stateful_file_and_a_bad_micro_batch(snns):
    from ann2snn.exporters.onnx_stateful import build_stateful
    from ann2snn.exporters.onnx_unrolled import build_unrolled
    from ann2snn.runtime import UnrolledRunner

    snn = snns("digits")
    with pytest.raises(Ann2SnnError, match="not an ann2snn unrolled ONNX file"):
        UnrolledRunner(build_stateful(snn)[0].SerializeToString(), provider="cpu")
    for bad in (0, -3, "8", True):
        with pytest.raises(Ann2SnnError, match="micro_batch must be"):
            UnrolledRunner(build_unrolled(snn).SerializeToString(), provider="cpu", micro_batch=bad)


@pytest.mark.parametrize("encoding", ["direct", "sequence"])
def test_stateful_runner_drives_micro_batches_to_the_same_result(snns, encoding):
    from ann2snn.exporters.onnx_stateful import build_stateful

    snn = snns("digits")
    model = build_stateful(snn, encoding=encoding)[0].SerializeToString()
    g = torch.Generator().manual_seed(3)
    x = torch.rand(*((snn.T,) if encoding == "sequence" else ()), 11, *snn.input_shape, generator=g).numpy()
    whole = StatefulRunner(model, provider="cpu", micro_batch=None)
    parts = StatefulRunner(model, provider="cpu", micro_batch=3)
    assert whole.micro_batch is None and parts.micro_batch == 3
    a, b = whole.run(x, snn.T), parts.run(x, snn.T)
    assert b.shape == (snn.T, 11, 10)
    np.testing.assert_array_equal(a, b)
