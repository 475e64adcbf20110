"""The reference simulator: multi-step == single-step, per-step outputs, state reset, encodings."""

from __future__ import annotations

import pytest
import torch
from helpers import randomize

import ann2snn
from ann2snn.errors import Ann2SnnError
from ann2snn.simulator import run_steps, running_mean


@pytest.mark.parametrize("name", ["mlp", "vgg", "resnet", "maxpool"])
def test_multi_step_equals_single_step(tiny_models, name):
    snn = ann2snn.convert(randomize(tiny_models[name](levels=4, granularity="channel"), seed=2), T=4)
    x = torch.randn(5, *snn.input_shape, generator=torch.Generator().manual_seed(0))
    multi = snn.simulate(x, 12)
    single = snn.simulate(x, 12, mode="single")
    assert multi.shape == (12, 5, 10)
    torch.testing.assert_close(single, multi, rtol=1e-5, atol=1e-5)


def test_per_step_outputs_are_running_means_of_instant_outputs(tiny_models):
    snn = ann2snn.convert(randomize(tiny_models["digits"](levels=4)), T=4)
    x = torch.randn(3, *snn.input_shape)
    inst = run_steps(snn.graph_module, x, 6)
    per_step = snn.simulate(x, 6)
    torch.testing.assert_close(per_step[0], inst[0])
    torch.testing.assert_close(per_step[5], inst.mean(0))
    torch.testing.assert_close(snn(x), per_step[3])  # default T = 4
    torch.testing.assert_close(running_mean(inst), per_step)


def test_state_is_reset_between_batches(tiny_models):
    snn = ann2snn.convert(randomize(tiny_models["resnet"](levels=4)), T=4)
    x1, x2 = torch.randn(2, 2, *snn.input_shape)
    a = snn.simulate(x1, mode="single")
    snn.simulate(x2, mode="single")
    torch.testing.assert_close(snn.simulate(x1, mode="single"), a)
    # streaming: step() carries state until reset()
    snn.reset()
    steps = torch.stack([snn.step(x1) for _ in range(4)])
    torch.testing.assert_close(running_mean(steps)[-1], a[-1])
    snn.reset()
    torch.testing.assert_close(snn.step(x1), steps[0])


def test_sequence_encoding_equals_direct_for_repeated_input(tiny_models):
    snn = ann2snn.convert(randomize(tiny_models["vgg"](levels=2)), T=2)
    x = torch.randn(2, *snn.input_shape)
    seq = x.unsqueeze(0).expand(5, *x.shape)
    torch.testing.assert_close(snn.simulate(seq, 5, encoding="sequence"), snn.simulate(x, 5))
    torch.testing.assert_close(snn.simulate(seq, 5, encoding="sequence", mode="single"), snn.simulate(x, 5))


def test_bad_T_is_refused(tiny_models):
    snn = ann2snn.convert(tiny_models["digits"](levels=2).eval())
    for bad in (0, -1, 2.5):
        with pytest.raises(Ann2SnnError, match="positive"):
            snn.simulate(torch.zeros(1, 1, 8, 8), bad)
    with pytest.raises(Ann2SnnError, match="positive"):
        ann2snn.convert(tiny_models["digits"](levels=2).eval(), T=0)


@pytest.mark.parametrize("what", ["weight", "threshold", "bn"])
def test_convert_refuses_non_finite_parameters(what):
    """A NaN/Inf weight, threshold or BN statistic is an error naming the tensor, not an SNN that "verifies"."""
    qann = ann2snn.models.create("digits-cnn", levels=4)
    with torch.no_grad():
        if what == "weight":
            next(m for m in qann.modules() if isinstance(m, torch.nn.Conv2d)).weight[0, 0, 0, 0] = float("inf")
        elif what == "threshold":
            next(m for m in qann.modules() if isinstance(m, ann2snn.QCFS)).lam.fill_(float("nan"))
        else:
            next(m for m in qann.modules() if isinstance(m, torch.nn.BatchNorm2d)).running_var[0] = float("inf")
    with pytest.raises(Ann2SnnError, match="NaN or infinite"):
        ann2snn.convert(qann)
