"""QCFS family: the formula, every variant, straight-through gradients, state-dict keys, channel-wise expansion."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import ann2snn
from ann2snn.errors import Ann2SnnError
from ann2snn.layers import QCFS, inverse_softplus, to_channelwise


def reference_qcfs(z, theta, L, phi=0.5):
    return theta * torch.clamp(torch.floor(z * L / theta + phi) / L, 0, 1)


@pytest.mark.parametrize("granularity,shape,dim", [
    ("layer", (4, 3, 5, 5), None), ("channel", (4, 3, 5, 5), 1), ("head", (2, 3, 7, 4), 1), ("neuron", (6, 3), -1),
])
@pytest.mark.parametrize("positive", ["softplus", "none"])
def test_forward_matches_the_formula(granularity, shape, dim, positive):
    g = torch.Generator().manual_seed(0)
    n = 1 if granularity == "layer" else 3
    q = QCFS(4, granularity=granularity, num_channels=None if n == 1 else n, positive=positive)
    theta = torch.rand(n, generator=g) * 2 + 0.2
    q.lam.data.copy_(inverse_softplus(theta) if positive == "softplus" else theta)
    z = torch.randn(shape, generator=g) * 2
    bshape = [1] * len(shape)
    if n > 1:
        bshape[dim % len(shape)] = n
    torch.testing.assert_close(q(z), reference_qcfs(z, theta.reshape(bshape), 4))
    torch.testing.assert_close(q.threshold, theta)


def test_softplus_keeps_thresholds_positive_and_plain_can_go_negative():
    q = QCFS(4, positive="softplus")
    q.lam.data.fill_(-30.0)
    assert float(q.threshold.detach()) > 0
    q = QCFS(4, positive="none")
    q.lam.data.fill_(-1.0)
    assert float(q.threshold.detach()) < 0


def test_straight_through_gradient():
    q = QCFS(4, init_threshold=1.0, positive="none")
    z = torch.tensor([0.1, 0.4, 0.8, 1.5, -0.3], requires_grad=True)
    q(z).sum().backward()
    # inside the clip range the floor passes the gradient through: d/dz = 1; outside it is 0
    assert z.grad.tolist() == [1.0, 1.0, 1.0, 0.0, 0.0]
    assert q.lam.grad is not None and torch.isfinite(q.lam.grad).all()


def test_state_dict_keys_are_stable():
    assert list(QCFS(4).state_dict()) == ["lam"]
    assert QCFS(4, granularity="channel", num_channels=5).state_dict()["lam"].shape == (5,)
    net = ann2snn.models.create("digits-cnn", levels=4, granularity="channel")
    keys = [k for k in net.state_dict() if k.endswith("lam")]
    assert keys == ["2.lam", "5.lam"]


def test_to_channelwise_keeps_the_function():
    torch.manual_seed(0)
    net = ann2snn.models.create("resnet20", width=4, levels=4, init_threshold=1.3).eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        before = net(x)
        to_channelwise(net, x)
        after = net(x)
    assert all(q.granularity == "channel" and q.num_channels > 1 for _, q in ann2snn.layers.qcfs_modules(net))
    assert torch.equal(before, after)


@pytest.mark.parametrize("kwargs,match", [
    (dict(levels=0), "levels"), (dict(levels=4, granularity="pixel"), "granularity"),
    (dict(levels=4, granularity="channel"), "num_channels"), (dict(levels=4, positive="relu"), "positive"),
    (dict(levels=4, init_threshold=0.0), "init_threshold"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(Ann2SnnError, match=match):
        QCFS(**kwargs)


def test_wrong_channel_count_is_a_clear_error():
    q = QCFS(4, granularity="channel", num_channels=3)
    with pytest.raises(Ann2SnnError, match="num_channels=5"):
        q(torch.zeros(1, 5, 2, 2))


def test_affine_is_linear():
    a = ann2snn.Affine(torch.tensor([2.0, 3.0]).reshape(1, 2), torch.tensor([1.0, -1.0]).reshape(1, 2))
    assert a(torch.ones(1, 2)).tolist() == [[3.0, 2.0]]
    assert isinstance(a, nn.Module)


def test_to_unit_reads_qcfs_in_threshold_units():
    """θ ⊙ q.to_unit()(z/θ) == q(z) for per-channel θ: a fixed layer-wise QCFS with θ = 1, levels and shift kept."""
    g = torch.Generator().manual_seed(4)
    q = QCFS(4, shift=0.25, granularity="channel", num_channels=3)
    q.lam.data.copy_(inverse_softplus(torch.rand(3, generator=g) * 2 + 0.3))
    unit = q.to_unit()
    assert type(unit) is QCFS and not unit.signed and not q.signed
    assert (unit.levels, unit.shift, unit.granularity, unit.positive) == (4, 0.25, "layer", "none")
    assert torch.equal(unit.threshold, torch.ones(1)) and not unit.lam.requires_grad
    assert list(unit.state_dict()) == ["lam"]
    theta = q.broadcast_threshold(4).detach()
    z = (torch.rand(32, 3, 4, 4, generator=g) * 1.6 - 0.3) * theta
    a = z * (4 / theta) + 0.25
    away = (a - a.round()).abs() > 1e-4  # z/θ·L and z·(L/θ) may round to different sides of a boundary
    assert away.float().mean() > 0.99
    got = theta * unit(z / theta)
    assert torch.equal(got[away], q(z).detach()[away])
