"""Exact mode (DESIGN §2b): the bounded bipolar neuron, the exact time schedule, and whole networks whose logits
become equal to the QANN's."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import make_qann
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import ann2snn
from ann2snn.errors import Ann2SnnError
from ann2snn.layers import QCFS, SignedQCFS
from ann2snn.neurons import BipolarNeuron, IFNeuron
from ann2snn.simulator import TimeSchedule, readout

#: logits "equal" the QANN's: float32 sums taken in another order differ by a few ulps, nothing more
EXACT_TOL = 1e-5


def _signed_level(z, theta, levels, shift=0.5, signed=False):
    """The QCFS level n = clip(floor(z·L/θ + φ), n_min, L) (n_min = −L signed, 0 unsigned)."""
    return torch.clamp(torch.floor(z * levels / theta + shift), -levels if signed else 0, levels)


def _dyadic(g, C, lo=-96, hi=160):
    """Per-channel power-of-two θ and inputs on the grid θ·k/64: every sum is exact in float32, ties included."""
    theta = 2.0 ** torch.randint(-3, 4, (C,), generator=g).float()
    k = torch.randint(lo, hi, (64, C), generator=g).float()
    return theta, k * theta / 64


@settings(max_examples=150, deadline=None)
@given(levels=st.integers(1, 12), C=st.integers(1, 4), signed=st.booleans(), seed=st.integers(0, 2**31 - 1))
def test_bipolar_neuron_equals_qcfs_for_constant_input_at_T_equal_L(levels, C, signed, seed):
    """Input every step for T = L steps (the rate convention): the count is the QCFS level, for unsigned and signed
    quantizers and per-channel θ — the conversion identity, as for IF."""
    g = torch.Generator().manual_seed(seed)
    theta, z = _dyadic(g, C)
    n = BipolarNeuron(theta, shift=0.5, n_min=-levels if signed else 0, n_max=levels)
    out = n.multi_step(z.unsqueeze(0).expand(levels, *z.shape))
    assert torch.equal(out.sum(0) / theta, _signed_level(z, theta, levels, signed=signed))
    q = (SignedQCFS(levels, alpha=1.0, granularity="neuron", num_channels=C, positive="none") if signed
         else QCFS(levels, granularity="neuron", num_channels=C, positive="none"))
    q.lam.data.copy_(theta)
    assert torch.equal(out.sum(0) / levels, q(z).detach())


@settings(max_examples=100, deadline=None)
@given(levels=st.integers(1, 8), alpha=st.sampled_from([0.125, 0.25, 0.5, 2.0]), seed=st.integers(0, 2**31 - 1))
def test_signed_neuron_with_a_negative_threshold_equals_signed_qcfs(levels, alpha, seed):
    """SignedQCFS with slope α (θ_n = α·θ) and the bipolar neuron with ``neg_threshold = θ_n``, counts in [−L, L],
    constant input for T = L steps: the same value, negative side included (dyadic grid: exact arithmetic)."""
    g = torch.Generator().manual_seed(seed)
    theta, z = _dyadic(g, 3)
    q = SignedQCFS(levels, alpha=alpha, granularity="neuron", num_channels=3, positive="none")
    q.lam.data.copy_(theta)
    n = BipolarNeuron(theta, neg_threshold=q.neg_threshold.detach(), n_min=-levels, n_max=levels)
    out = n.multi_step(z.unsqueeze(0).expand(levels, *z.shape))
    assert torch.equal(out.sum(0) / levels, q(z).detach())


@settings(max_examples=150, deadline=None)
@given(levels=st.integers(1, 8), signed=st.booleans(), ratio=st.sampled_from([1.0, 0.25, 0.5]),
       seed=st.integers(0, 2**31 - 1))
def test_bipolar_neuron_settles_on_the_level_of_any_input_after_it_stops(levels, signed, ratio, seed):
    """Any input sequence over the first L steps, then nothing (the exact convention): within n_max − n_min more
    steps the count is clip(floor(S/θ + φ)) for the input's sum S, and stays there; the output value is θ·n (θ_n·n
    on the negative side)."""
    g = torch.Generator().manual_seed(seed)
    C = 3
    theta = 2.0 ** torch.randint(-2, 3, (C,), generator=g).float()
    steps = (torch.randint(-48, 80, (levels, 32, C), generator=g).float() / 32) * theta  # uneven spike timing
    extra = 2 * levels if signed else levels
    seq = torch.cat([steps, torch.zeros(extra + 3, 32, C)])
    n = BipolarNeuron(theta, neg_threshold=theta * ratio, n_min=-levels if signed else 0, n_max=levels)
    acc = n.multi_step(seq).cumsum(0)
    level = torch.floor(steps.sum(0) / theta + 0.5).clamp(-levels if signed else 0, levels)
    expect = torch.where(level >= 0, level * theta, level * theta * ratio)
    for t in range(levels + extra - 1, seq.shape[0]):
        assert torch.equal(acc[t], expect), t


def test_bipolar_neuron_rejects_bad_parameters():
    with pytest.raises(ValueError, match="> 0"):
        BipolarNeuron(torch.tensor([1.0, 0.0]))
    with pytest.raises(ValueError, match="n_min <= n_max"):
        BipolarNeuron(1.0, n_min=2, n_max=1)


def test_if_is_the_bipolar_neuron_without_bounds_or_negative_spikes():
    """Non-negative input: no −1 is ever due, so an unbounded bipolar neuron spikes exactly like IF."""
    x = torch.rand(12, 64, 5) * 0.8
    assert torch.equal(BipolarNeuron(0.7).multi_step(x), IFNeuron(0.7).multi_step(x))


def test_time_schedule_validates_and_reads_out():
    with pytest.raises(Ann2SnnError, match="rate' or 'exact"):
        TimeSchedule("fast")
    with pytest.raises(Ann2SnnError, match="schedule length"):
        TimeSchedule("exact")
    s = TimeSchedule("exact", 3)
    assert [s.injected(t) for t in range(1, 6)] == [True, True, True, False, False]
    assert s.counts(5).tolist() == [1, 2, 3, 3, 3]
    out = torch.ones(5, 1, 1, dtype=torch.float64)
    assert readout(out, s)[:, 0, 0].tolist() == [1, 1, 1, 4 / 3, 5 / 3]


SHAPES = {"digits": (1, 8, 8), "resnet": (3, 12, 12), "mlp": (1, 28, 28), "maxpool": (1, 28, 28), "vgg": (3, 32, 32)}


@torch.no_grad()
def _qann_ties(qann: nn.Module, x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """``[B]`` bool: samples where some QCFS input ``u = z·L/θ + φ`` lies within ``eps·max(1, |u|)`` (about 8 float32
    ulps) of a rounding boundary.

    There the QANN's own float32 result decides a tie that the SNN, summing in another order, may decide the other
    way; such a sample's logits can stay one level apart for ever. This is the "up to float ties" of exact mode.
    """
    near = torch.zeros(x.shape[0], dtype=torch.bool)

    def hook(m, args, out):
        nonlocal near
        u = args[0] * m.levels / m.broadcast_threshold(args[0].dim()) + m.shift
        d = ((u - torch.round(u)).abs() / u.abs().clamp(min=1.0)).flatten(1).amin(1)
        near = near | (d < eps)

    hooks = [m.register_forward_hook(hook) for m in qann.modules() if isinstance(m, QCFS)]
    try:
        qann(x)
    finally:
        for h in hooks:
            h.remove()
    return near


def _first_exact_step(per_t: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
    """Per sample, the first step t from which the logits stay within EXACT_TOL of ``ref`` (T + 1: never)."""
    T = per_t.shape[0]
    tol = EXACT_TOL * ref.abs().amax(-1, keepdim=True).clamp(min=1.0)
    ok = ((per_t - ref).abs() <= tol).all(-1)  # [T, B]
    stays = ok.flip(0).cumprod(0).flip(0)  # 1 from the step on which it stays exact
    return T + 1 - stays.sum(0)


@pytest.mark.parametrize("key", sorted(SHAPES))
def test_exact_mode_logits_equal_the_qann_after_a_few_steps(key):
    """Random seeded zoo QANNs (residual, max-pool, MLP, VGG): the logits equal the QANN's by step 4L and stay;
    single-step (streaming) and multi-step runs agree; the network holds bipolar neurons only."""
    shape = SHAPES[key]
    qann = make_qann(key, input_shape=shape)
    snn = ann2snn.convert(qann, convention="exact")
    assert snn.T == 16 and snn.schedule == TimeSchedule("exact", 4)
    kinds = {m.kind for _, m in snn.stateful()}
    assert "if" not in kinds and "bipolar" in kinds
    x = torch.rand(6, *shape)
    per_t = snn.simulate(x, 20)
    if key in ("digits", "resnet"):  # streaming (single-step) runs: the same numbers
        torch.testing.assert_close(snn.simulate(x, 20, mode="single"), per_t, rtol=0, atol=1e-5)
        snn.reset()
        stream = torch.stack([snn.step(x) for _ in range(20)])
        torch.testing.assert_close(readout(stream, snn.schedule), per_t, rtol=0, atol=1e-5)
    with torch.no_grad():
        ref = qann(x)
    first = _first_exact_step(per_t, ref)
    assert int(first.max()) <= 16, first.tolist()


def test_rate_mode_never_becomes_exact_and_keeps_if_neurons():
    qann = make_qann("resnet", input_shape=SHAPES["resnet"])
    snn = ann2snn.convert(qann)
    assert {m.kind for _, m in snn.stateful()} == {"if"} and not snn.schedule.exact
    x = torch.rand(8, *SHAPES["resnet"])
    with torch.no_grad():
        ref = qann(x)
    assert int(_first_exact_step(snn.simulate(x, 24), ref).min()) == 25


def test_constants_stop_after_L_in_exact_mode():
    """A network whose only input to the read-out is a bias: exact mode keeps the logits at the QANN's (the bias
    enters L times and is read over L steps); injecting it every step would still be read correctly only if
    N(t) = t, so a missing schedule in either place fails this test."""
    torch.manual_seed(0)
    qann = nn.Sequential(nn.Flatten(), nn.Linear(4, 6), QCFS(2, init_threshold=1.0), nn.Linear(6, 3)).eval()
    with torch.no_grad():
        qann[1].bias.fill_(0.8)
        qann[3].bias.copy_(torch.tensor([0.5, -1.0, 2.0]))
    snn = ann2snn.convert(qann, convention="exact", input_shape=(1, 2, 2))
    x = torch.zeros(3, 1, 2, 2)
    per_t = snn.simulate(x, 12)
    with torch.no_grad():
        ref = qann(x)
    torch.testing.assert_close(per_t[-1], ref, rtol=0, atol=1e-6)
    inst = ann2snn.simulator.run_steps(snn.graph_module, x, 12, schedule=snn.schedule)
    assert torch.equal(inst[4:], torch.zeros_like(inst[4:]))  # after L = 2 and the settling, nothing more arrives


def test_mixed_levels_are_exact_too():
    """Layers with different L: the schedule runs for the largest L; a layer of L' levels gets threshold L/L'."""
    torch.manual_seed(1)
    qann = nn.Sequential(nn.Conv2d(1, 6, 3), QCFS(2, granularity="channel", num_channels=6, init_threshold=1.0),
                         nn.Conv2d(6, 8, 3), QCFS(5, init_threshold=1.5), nn.Flatten(), nn.Linear(8 * 4 * 4, 10)).eval()
    snn = ann2snn.convert(qann, convention="exact", input_shape=(1, 8, 8))
    assert snn.schedule.length == 5
    assert [float(m.threshold.max()) for _, m in snn.stateful()] == [2.5, 1.0]
    x = torch.rand(16, 1, 8, 8) * 2
    with torch.no_grad():
        ref = qann(x)
    assert int(_first_exact_step(snn.simulate(x, 30), ref).max()) <= 30


@pytest.mark.slow
def test_trained_digits_qann_reaches_exact_logits_for_every_test_image():
    """A digits QANN trained here: every one of the 359 test images has the QANN's logits by a step ≤ 4L = 16
    (measured: median 5, max 6), except images on a float tie of the QANN itself (measured: 1, image 332,
    a second-layer input 2.4e-7 from a rounding boundary)."""
    from ann2snn.data import load_digits
    from ann2snn.train import fit

    torch.manual_seed(0)
    data = load_digits(seed=0)
    qann = ann2snn.models.create("digits-cnn", levels=4, init_threshold=2.0)
    fit(qann, data, epochs=4, lr=5e-3, seed=0)
    qann.eval()
    snn = ann2snn.convert(qann, convention="exact")
    per_t = snn.simulate(data.x_test, 24)
    with torch.no_grad():
        ref = qann(data.x_test)
    first = _first_exact_step(per_t, ref)
    ties = _qann_ties(qann, data.x_test)
    assert int(ties.sum()) <= 12  # measured 8 of 359 within 8 ulps, 1 of them decided the other way
    assert int(first[~ties].max()) <= 16, first.tolist()
    print(f"\ndigits exact mode: exact logits by step median {float(first.float().median()):.0f}, "
          f"max {int(first[~ties].max())} ({int(ties.sum())} float ties in the QANN)")


class _ResidualNet(nn.Module):
    """A small MNIST QANN with an identity-shortcut residual block (two different θ meet at the add)."""

    def __init__(self, levels: int = 4) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(1, 8, 3, stride=2, padding=1), nn.BatchNorm2d(8),
                                  QCFS(levels, granularity="channel", num_channels=8, init_threshold=2.0))
        self.c1 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8),
                                QCFS(levels, granularity="channel", num_channels=8, init_threshold=2.0))
        self.c2 = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.act = QCFS(levels, granularity="channel", num_channels=8, init_threshold=2.0)
        self.head = nn.Sequential(nn.AvgPool2d(2), nn.Flatten(), nn.Linear(8 * 7 * 7, 10))

    def forward(self, x):
        x = self.stem(x)
        return self.head(self.act(self.c2(self.c1(x)) + x))


@pytest.mark.slow
def test_trained_mnist_residual_qann_reaches_exact_logits():
    """MNIST (skipped without the IDX files): a residual QANN trained briefly; on 500 test images every logit
    equals the QANN's by step ≤ 4L = 16 (500 test images; float ties of the QANN itself excepted)."""
    from ann2snn.data import DataError, load_mnist
    from ann2snn.train import fit

    try:
        data = load_mnist()
    except DataError as exc:
        pytest.skip(f"MNIST not available: {exc}")
    torch.manual_seed(0)
    small = dataclasses.replace(data, x_train=data.x_train[:4000], y_train=data.y_train[:4000],
                                x_test=data.x_test[:500], y_test=data.y_test[:500])
    qann = _ResidualNet()
    fit(qann, small, epochs=1, lr=5e-3, seed=0)
    qann.eval()
    snn = ann2snn.convert(qann, convention="exact", input_shape=(1, 28, 28))
    assert snn.report.counts()["explicit_scales"] >= 1
    per_t = snn.simulate(small.x_test, 24)
    with torch.no_grad():
        ref = qann(small.x_test)
    first = _first_exact_step(per_t, ref)
    ties = _qann_ties(qann, small.x_test)
    assert int(ties.sum()) <= 30
    assert int(first[~ties].max()) <= 16, sorted(first.tolist())[-10:]
    print(f"\nMNIST residual exact mode: exact logits by step median {float(first.float().median()):.0f}, "
          f"max {int(first[~ties].max())} ({int(ties.sum())} float ties in the QANN)")
