"""Operation counts and energy against hand computations."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ann2snn
from ann2snn.energy import ActivityMonitor, EnergyModel, fanout_map, layer_macs
from ann2snn.errors import Ann2SnnError
from ann2snn.layers import QCFS, SignedQCFS
from ann2snn.simulator import run_steps


def test_fanout_conv_by_hand():
    # 3x3, padding 1 on 3x3, 2 output channels: a corner is in 4 windows, an edge in 6, the centre in 9.
    f = fanout_map(nn.Conv2d(1, 2, 3, padding=1), (1, 3, 3))
    assert f[0].tolist() == [[8, 12, 8], [12, 18, 12], [8, 12, 8]]
    # stride 2, no padding on 5x5: windows start at 0 and 2, so rows/cols 0,1,3,4 are in one window, 2 in two.
    f = fanout_map(nn.Conv2d(1, 1, 3, stride=2), (1, 5, 5))
    assert f[0, 2].tolist() == [2, 2, 4, 2, 2] and f[0, 0].tolist() == [1, 1, 2, 1, 1]
    assert fanout_map(nn.Linear(3, 7), (3,)).tolist() == [7, 7, 7]
    with pytest.raises(Ann2SnnError):
        fanout_map(nn.ReLU(), (3,))


def test_macs_by_hand():
    assert layer_macs(nn.Conv2d(3, 8, 3, padding=1), (8, 5, 5)) == 8 * 25 * 3 * 9
    assert layer_macs(nn.Conv2d(4, 8, 3, groups=2), (8, 2, 2)) == 8 * 4 * 2 * 9
    assert layer_macs(nn.Linear(10, 4), (4,)) == 40


def _hand_model() -> nn.Module:
    """x = (1, 0.5) -> z = (1, 0, 0.5) -> IF (θ = 1, v0 = 0.5) -> Linear(3, 4).

    Spikes: z = 1 fires every step, z = 0 never, z = 0.5 at t = 1, 3, 5, ... -> 2, 1, 2, 1 spikes per step.
    """
    first = nn.Linear(2, 3, bias=False)
    last = nn.Linear(3, 4)
    with torch.no_grad():
        first.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]))
        last.weight.fill_(0.1)
    net = nn.Sequential(first, QCFS(2, positive="none", init_threshold=1.0), last)
    net.input_shape = (2,)
    return net.eval()


def test_operation_counts_and_energy_by_hand():
    snn = ann2snn.convert(_hand_model(), T=4)
    x = torch.tensor([[1.0, 0.5], [1.0, 0.5]])  # two identical samples: per-sample numbers stay the same
    e = EnergyModel(e_mac_pj=4.6, e_ac_pj=0.9)
    mon = ActivityMonitor(snn.graph_module, 4, energy=e)
    run_steps(snn.graph_module, x, 4, observer=mon)
    mon.add_samples(len(x))
    rates = mon.firing_rates([1, 2, 4])
    assert len(rates) == 1 and rates[0]["neurons"] == 3
    assert rates[0]["rates"] == pytest.approx([2 / 3, 3 / 6, 6 / 12])
    s = mon.summary([1, 2, 4])
    first, last = s["layers"]
    assert first["analog_input"] and not last["analog_input"]
    assert (first["macs"], last["macs"], s["ann_macs"]) == (6, 12, 18)
    assert first["snn_macs"] == [6, 12, 24]
    assert last["sops"] == pytest.approx([8, 12, 24])  # (2 + 1 + 2 + 1 spikes) x fan-out 4
    t4 = s["per_T"][2]
    assert t4["snn_energy_pj"] == pytest.approx(24 * 4.6 + 24 * 0.9)
    assert s["ann_energy_pj"] == pytest.approx(18 * 4.6)
    assert t4["ratio"] == pytest.approx((24 * 4.6 + 24 * 0.9) / (18 * 4.6))
    once = ActivityMonitor(snn.graph_module, 4, energy=EnergyModel(analog_per_step=False))
    run_steps(snn.graph_module, x, 4, observer=once)
    once.add_samples(2)
    assert once.summary([4])["per_T"][0]["snn_macs"] == 6
    with pytest.raises(Ann2SnnError, match="outside"):
        mon.summary([5])


def _signed_hand_model() -> nn.Module:
    """x = (1, -0.5) -> z = (1, 0, -0.5) -> signed quantizer (L = 2, θ_p = θ_n = 1) -> Linear(3, 4).

    Rate convention (bipolar neuron, no bounds, v0 = 0.5): z = 1 fires +1 every step, z = 0 never, z = −0.5 fires
    −1 at t = 2, 4 (v = 0, −0.5 → −1 and back to 0.5, ...): 1, 2, 1, 2 events per step.
    """
    net = _hand_model()
    with torch.no_grad():
        net[0].weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 0.0], [0.0, 1.0]]))
    net[1] = SignedQCFS(2, alpha=1.0, positive="none", init_threshold=1.0)
    return net.eval()


def _monitor(snn, x, T):
    mon = ActivityMonitor(snn.graph_module, T)
    run_steps(snn.graph_module, x, T, observer=mon, schedule=snn.schedule)
    mon.add_samples(len(x))
    return mon


def test_bipolar_spikes_count_as_events_of_either_sign():
    snn = ann2snn.convert(_signed_hand_model(), T=4)
    assert [m.kind for _, m in snn.stateful()] == ["bipolar"]
    x = torch.tensor([[1.0, -0.5], [1.0, -0.5]])
    mon = _monitor(snn, x, 4)
    (rates,) = mon.firing_rates([1, 2, 3, 4])
    assert rates["kind"] == "bipolar" and rates["spikes_per_sample"] == [1, 3, 4, 6]
    last = mon.summary([1, 2, 3, 4])["layers"][1]
    assert last["sops"] == pytest.approx([4, 12, 16, 24])  # events × fan-out 4, whatever the spike's sign


def test_exact_convention_costs_analog_macs_only_while_the_input_is_injected():
    snn = ann2snn.convert(_signed_hand_model(), T=4, convention="exact")
    x = torch.tensor([[1.0, -0.5], [1.0, -0.5]])
    mon = _monitor(snn, x, 4)
    s = mon.summary([1, 2, 3, 4])
    first, last = s["layers"]
    assert first["analog_input"] and first["snn_macs"] == [6, 12, 12, 12]  # L = 2: input for t <= 2 only
    assert [r["snn_macs"] for r in s["per_T"]] == [6, 12, 12, 12]
    # bounded bipolar neuron: +1 at t = 1, 2 (count 2 = L), −1 at t = 2; nothing once the input stops
    assert mon.firing_rates([4])[0]["spikes_per_sample"] == [3]
    assert last["sops"] == pytest.approx([4, 12, 12, 12])


def test_conv_sops_equal_spikes_times_fanout():
    """On a conv net, the monitor's SOPs equal Σ spikes × fan-out computed from spikes recorded step by step."""
    torch.manual_seed(0)
    qann = ann2snn.models.create("digits-cnn", levels=2, channels=3, init_threshold=1.0).eval()
    snn = ann2snn.convert(qann, T=3)
    x = torch.rand(5, 1, 8, 8)
    mon = ActivityMonitor(snn.graph_module, 3)
    run_steps(snn.graph_module, x, 3, observer=mon)
    mon.add_samples(5)
    # independent count: forward hooks fire in single-step mode
    gm = snn.graph_module
    spikes = {}
    hooks = [m.register_forward_hook(lambda mod, a, out, n=n: spikes.setdefault(n, []).append(out))
             for n, m in snn.stateful()]
    run_steps(gm, x, 3, mode="single")
    for h in hooks:
        h.remove()
    first_if = snn.stateful()[0][0]
    s = torch.stack(spikes[first_if])  # [T, B, 3, 8, 8], feeds conv "3" (3x3, padding 1, 6 channels)
    border = torch.full((8, 8), 9.0)
    border[0, :] = border[-1, :] = border[:, 0] = border[:, -1] = 6.0
    border[0, 0] = border[0, -1] = border[-1, 0] = border[-1, -1] = 4.0
    expected = (s.sum(1) * border * 6).flatten(1).sum(1).cumsum(0) / 5
    conv = next(r for r in mon.summary([1, 2, 3])["layers"] if r["name"] == "3")
    assert conv["sops"] == pytest.approx(expected.tolist())


def test_energy_constants_validated():
    with pytest.raises(Ann2SnnError):
        EnergyModel(e_mac_pj=-1.0)
