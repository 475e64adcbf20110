"""Every method option through both ONNX forms (verified on onnxruntime against the simulator by ``export``), or
refused there in one line: rate-coded and step-noised input (generated outside the graph, fed as the ``sequence``
encoding), multi-bit neurons, COS-calibrated membranes, STDP-trained read-out weights, the LIF read-out applied to
the graph's outputs; SRP's pre-run is refused."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import make_qann, randomize
from opnets import conv, q, seq
from torch import nn

import ann2snn
from ann2snn.errors import Ann2SnnError
from ann2snn.methods import LIFReadout, STDPConfig, apply_cos, apply_srp, rate_encode, salt_pepper, train_stdp
from ann2snn.methods.noise import step_inputs
from ann2snn.simulator import run_steps

pytest.importorskip("onnxruntime")


def _tiny() -> nn.Module:
    torch.manual_seed(0)
    return randomize(seq(conv(), q(4), nn.AvgPool2d(2), conv(4, 4), q(4), nn.Flatten(), nn.Linear(4 * 9, 3)), seed=1,
                     theta=(0.5, 1.5))


def _images(n: int = 8) -> torch.Tensor:
    return torch.rand(n, 2, 6, 6, generator=torch.Generator().manual_seed(2))


def _verified(res) -> None:
    assert set(res.verification) == {"unrolled", "stateful"}
    for v in res.verification.values():
        assert v["samples"] - v["mismatched_samples"] >= 1 and v["max_abs_error"] <= v["atol"] + 1e-3


def test_rate_coded_input_through_both_forms(tmp_path):
    snn = ann2snn.convert(_tiny(), T=4)
    x = rate_encode(_images(), 4, low=-0.5, high=1.0, generator=torch.Generator().manual_seed(0))
    _verified(ann2snn.export(snn, tmp_path / "r.onnx", format="both", encoding="sequence", verify_input=x))


def test_noise_on_chosen_steps_through_both_forms(tmp_path):
    snn = ann2snn.convert(_tiny(), T=5)
    clean = _images()
    noisy = salt_pepper(clean, 0.3, low=0.0, high=1.0, generator=torch.Generator().manual_seed(0))
    x = step_inputs(clean, noisy, 5, (2, 5))
    _verified(ann2snn.export(snn, tmp_path / "n.onnx", format="both", encoding="sequence", verify_input=x))


@pytest.mark.parametrize("key, D", [("maxpool", 2), ("resnet", 3)])
def test_multibit_neurons_through_both_forms(tmp_path, key, D):
    snn = ann2snn.convert(make_qann(key), max_spikes=D, T=5)  # D = 3 with L = 4: the spike budget is in the graph
    assert snn.info.neuron_kinds == (("maxpool", "multibit") if key == "maxpool" else ("multibit",))
    _verified(ann2snn.export(snn, tmp_path / "m.onnx", format="both"))


def test_cos_calibrated_membranes_through_both_forms(tmp_path):
    qann = make_qann("digits")
    snn = ann2snn.convert(qann, max_spikes=2, T=3)
    cos = apply_cos(snn, torch.rand(32, *qann.input_shape, generator=torch.Generator().manual_seed(2)), 3)
    assert any(m.calibrated for _, m in cos.stateful())
    _verified(ann2snn.export(cos, tmp_path / "c.onnx", format="both"))


@pytest.mark.parametrize("fmt", ["unrolled", "stateful"])
def test_srp_is_refused_in_one_line(tmp_path, fmt):
    srp = apply_srp(ann2snn.convert(_tiny(), T=4), 2)
    with pytest.raises(Ann2SnnError, match="pre-run of 2 steps") as err:
        ann2snn.export(srp, tmp_path / "s.onnx", format=fmt)
    assert "\n" not in str(err.value) and not list(tmp_path.iterdir())


def test_stdp_weights_export_and_the_lif_readout_runs_on_onnx_outputs(tmp_path):
    from ann2snn.exporters.contract import INPUT, LOGITS_PER_STEP
    from ann2snn.runtime import make_session

    snn = ann2snn.convert(_tiny(), T=4)
    trained, _ = train_stdp(snn, _images(32), STDPConfig(a_plus=0.05, a_minus=0.05, readout=LIFReadout(0.8, 0.02)))
    res = ann2snn.export(trained, tmp_path / "t.onnx", format="both")
    _verified(res)
    session, _ = make_session(str(res.files["unrolled"]), provider="cpu")
    x = _images()
    per_step = torch.from_numpy(session.run([LOGITS_PER_STEP], {INPUT: x.numpy()})[0])  # running means
    t = torch.arange(1, 5, dtype=torch.float32).reshape(4, 1, 1)
    sums = per_step * t
    messages = torch.diff(sums, dim=0, prepend=torch.zeros_like(sums[:1]))  # logits_t of each step
    lif = LIFReadout(0.7, 0.5)
    ref = lif.scores(run_steps(trained.graph_module, x, 4))
    np.testing.assert_allclose(lif.scores(messages).numpy(), ref.numpy(), rtol=1e-4, atol=1e-4)
