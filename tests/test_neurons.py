"""IF neuron and spiking max-pool: the conversion identity and the state protocol."""

from __future__ import annotations

import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.nn import functional as F

from ann2snn.layers import QCFS, inverse_softplus
from ann2snn.neurons import IFNeuron, SpikingMaxPool2d, reset_states


def _qcfs(levels, theta, shift=0.5):
    q = QCFS(levels, shift=shift, granularity="channel", num_channels=theta.numel(), positive="none")
    q.lam.data.copy_(theta)
    return q


@settings(max_examples=200, deadline=None)
@given(
    levels=st.integers(1, 16),
    thetas=st.lists(st.floats(0.05, 8.0), min_size=1, max_size=4),
    seed=st.integers(0, 2**31 - 1),
)
def test_if_reproduces_qcfs_exactly_for_constant_input_at_T_equal_L(levels, thetas, seed):
    """(θ/T)·Σ s_t = QCFS(z) for constant z, T = L, v0 = θ/2: the identity the conversion rests on.

    Inputs are drawn on the dyadic grid z = θ·k/64 (k integer) with θ a power of two: every sum and product
    is then exact in floating point, and the grid contains decision boundaries (z·L/θ + φ an integer) for
    many L, so ties are tested too. Off-grid inputs are covered by the next test.
    """
    g = torch.Generator().manual_seed(seed)
    theta = torch.tensor([2.0 ** round(torch.log2(torch.tensor(t)).item()) for t in thetas])
    C = theta.numel()
    k = torch.randint(-64, 129, (64, C), generator=g).float()
    z = (k * theta / 64).reshape(64, C, 1, 1).expand(64, C, 2, 2).contiguous()
    q = _qcfs(levels, theta)
    neuron = IFNeuron(theta.reshape(C, 1, 1), shift=0.5)
    T = levels
    out = neuron.multi_step(z.unsqueeze(0).expand(T, *z.shape))
    assert torch.equal(out.sum(0) / T, q(z))


@settings(max_examples=100, deadline=None)
@given(levels=st.integers(1, 12), seed=st.integers(0, 2**31 - 1))
def test_if_matches_qcfs_on_random_floats_away_from_ties(levels, seed):
    """Arbitrary θ and z: identical except where z·L/θ + φ is within float error of an integer."""
    g = torch.Generator().manual_seed(seed)
    C = 5
    theta = torch.rand(C, generator=g) * 3 + 0.1
    z = (torch.rand(256, C, generator=g) * 1.6 - 0.3) * theta
    frac = torch.frac(z * levels / theta + 0.5)
    away = (frac > 1e-4) & (frac < 1 - 1e-4)
    q = QCFS(levels, granularity="neuron", num_channels=C, dim=1, positive="softplus")
    q.lam.data.copy_(inverse_softplus(theta))
    neuron = IFNeuron(q.threshold.detach(), shift=0.5)
    out = neuron.multi_step(z.unsqueeze(0).expand(levels, *z.shape)).sum(0) / levels
    ref = q(z).detach()
    torch.testing.assert_close(out[away], ref[away], rtol=1e-5, atol=1e-5)


def test_unit_threshold_neuron_emits_binary_spikes_and_soft_resets():
    n = IFNeuron(1.0, shift=0.5)
    assert n.unit_threshold
    x = torch.tensor([[0.3, 0.7, 1.2, -0.5]])
    out = n.multi_step(x.unsqueeze(0).expand(4, 1, 4))
    assert set(out.unique().tolist()) <= {0.0, 1.0}
    # counts follow floor(t·x + 1/2) clamped to [0, t]
    assert out.sum(0).tolist() == [[1.0, 3.0, 4.0, 0.0]]


def test_single_step_equals_multi_step_and_reset_restarts():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(6, 3, 4, generator=g)
    for n in (IFNeuron(1.0), IFNeuron(torch.tensor([0.5, 1.0, 2.0, 3.0]))):
        multi = n.multi_step(x)
        single = torch.stack([n(x[t]) for t in range(6)])
        torch.testing.assert_close(single, multi, rtol=0, atol=0)
        again = torch.stack([n(x[t]) for t in range(6)])
        assert not torch.equal(again, multi) or torch.equal(multi, torch.zeros_like(multi))  # state carried on
        reset_states(torch.nn.Sequential(n))
        torch.testing.assert_close(torch.stack([n(x[t]) for t in range(6)]), multi, rtol=0, atol=0)


def test_explicit_state_step_is_pure():
    n = IFNeuron(1.0)
    x = torch.full((2, 3), 0.6)
    state = n.init_state(x)
    y1, s1 = n.step(x, state=state)
    y2, s2 = n.step(x, state=state)
    assert torch.equal(y1, y2) and torch.equal(s1[0], s2[0])
    assert n.state is None  # step() never touches the module's own state


def test_constant_input_closed_form_matches_scan():
    g = torch.Generator().manual_seed(1)
    x = torch.rand(8, 16, generator=g) * 1.4 - 0.2
    n = IFNeuron(1.0)
    T = 8
    counts = n.constant_input_counts(x, T)
    scan = n.multi_step(x.unsqueeze(0).expand(T, *x.shape)).cumsum(0)
    assert torch.equal(counts, scan)


def test_spiking_maxpool_is_exact_in_the_cumulative_sense():
    g = torch.Generator().manual_seed(2)
    spikes = (torch.rand(7, 2, 3, 6, 6, generator=g) > 0.6).float()
    pool = SpikingMaxPool2d(2)
    out = pool.multi_step(spikes)
    assert set(out.unique().tolist()) <= {0.0, 1.0}  # binary in, binary out
    for t in range(1, 8):
        torch.testing.assert_close(out[:t].sum(0), F.max_pool2d(spikes[:t].sum(0), 2))
    single = torch.stack([pool(spikes[t]) for t in range(7)])
    torch.testing.assert_close(single, out)
