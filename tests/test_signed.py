"""Signed (double-threshold) QCFS: the formula, its grid, α-ratio and learned θ_n, gradients, unit form, zoo, train."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

import ann2snn
from ann2snn.errors import Ann2SnnError
from ann2snn.layers import QCFS, SignedQCFS, inverse_softplus, qcfs_modules, to_channelwise

_SHAPES = {"layer": ((6, 3, 4, 4), None), "channel": ((6, 3, 4, 4), 1), "head": ((2, 3, 5, 4), 1),
           "neuron": ((16, 3), -1)}


def _signed(levels, granularity, *, mode, positive="softplus", theta, theta_n=None, alpha=0.1):
    """A SignedQCFS with thresholds θ (and, learned, θ_n) set exactly as given (up to Softplus round trip)."""
    n = theta.numel()
    kw = dict(granularity=granularity, num_channels=None if granularity == "layer" else n, positive=positive)
    q = SignedQCFS(levels, alpha=alpha, **kw) if mode == "alpha" else SignedQCFS(levels, learn_negative=True, **kw)
    raw = (lambda t: inverse_softplus(t)) if positive == "softplus" else (lambda t: t)
    q.lam.data.copy_(raw(theta))
    if mode == "learned":
        q.lam_neg.data.copy_(raw(theta_n))
    return q


def _along(t, shape, dim):
    b = [1] * len(shape)
    if t.numel() > 1:
        b[dim % len(shape)] = t.numel()
    return t.reshape(b)


@settings(max_examples=150, deadline=None)
@given(levels=st.sampled_from([1, 2, 3, 4, 8, 16]), granularity=st.sampled_from(list(_SHAPES)),
       mode=st.sampled_from(["alpha", "learned"]), positive=st.sampled_from(["softplus", "none"]),
       alpha=st.floats(0.01, 2.0), seed=st.integers(0, 2**31 - 1))
def test_forward_is_the_double_threshold_formula_and_lies_on_its_grid(levels, granularity, mode, positive, alpha,
                                                                      seed):
    g = torch.Generator().manual_seed(seed)
    shape, dim = _SHAPES[granularity]
    n = 1 if granularity == "layer" else 3
    q = _signed(levels, granularity, mode=mode, positive=positive, alpha=alpha,
                theta=torch.rand(n, generator=g) * 3 + 0.1, theta_n=torch.rand(n, generator=g) * 2 + 0.05)
    theta, theta_n = q.threshold.detach(), q.neg_threshold.detach()
    if mode == "alpha":
        torch.testing.assert_close(theta_n, alpha * theta)
    z = (torch.rand(shape, generator=g) * 3 - 1.5) * _along(theta, shape, dim)  # beyond the clip on both sides
    out = q(z).detach().double()
    # the formula in float64, compared away from decision boundaries (where float32 rounding may pick either level)
    th, thn = _along(theta, shape, dim).double(), _along(theta_n, shape, dim).double()
    a = z.double() * levels / th + q.shift
    k = torch.clamp(torch.floor(a), -levels, levels)
    ref = torch.where(k >= 0, th * k / levels, thn * k / levels)
    away = (a - a.round()).abs() > 1e-4
    assert away.float().mean() > 0.9
    torch.testing.assert_close(out[away], ref[away], rtol=1e-5, atol=1e-6)
    # every output (ties included) is a grid point: θ·k/L (k = 0..L) or θ_n·k/L (k = -L..-1)
    k_pos = torch.where(out >= 0, out * levels / th, out * levels / thn)
    assert torch.allclose(k_pos, k_pos.round(), atol=1e-3)
    assert int(k_pos.round().min()) >= -levels and int(k_pos.round().max()) <= levels
    assert bool((out >= -thn - 1e-6).all() and (out <= th + 1e-6).all())


def test_alpha_mode_follows_theta_and_learned_mode_has_its_own_lambda():
    q = SignedQCFS(4, alpha=0.25, granularity="channel", num_channels=3, init_threshold=2.0)
    assert list(q.state_dict()) == ["lam"] and q.signed and not QCFS.signed
    q.lam.data.copy_(inverse_softplus(torch.tensor([1.0, 2.0, 4.0])))
    torch.testing.assert_close(q.neg_threshold.detach(), torch.tensor([0.25, 0.5, 1.0]))
    assert q.broadcast_neg_threshold(4).shape == (1, 3, 1, 1)

    learned = SignedQCFS(4, learn_negative=True, granularity="channel", num_channels=3, init_threshold=2.0,
                         init_neg_threshold=0.5)
    assert list(learned.state_dict()) == ["lam", "lam_neg"] and learned.lam_neg.shape == (3,)
    torch.testing.assert_close(learned.neg_threshold.detach(), torch.full((3,), 0.5))
    z = torch.linspace(-3, 3, 24).reshape(1, 3, 2, 4)
    before = learned(z).detach()
    learned.lam_neg.data.add_(1.0)  # only the negative side moves
    after = learned(z).detach()
    assert torch.equal(after[z >= 0], before[z >= 0]) and not torch.equal(after[z < -0.5], before[z < -0.5])
    assert "alpha=0.25" in repr(q) and "negative=learned" in repr(learned)


def test_plain_thresholds_can_be_learned_without_softplus():
    q = SignedQCFS(2, learn_negative=True, positive="none", init_threshold=1.0, init_neg_threshold=0.3)
    torch.testing.assert_close(q(torch.tensor([-5.0, -0.3, 0.3, 5.0])), torch.tensor([-0.3, -0.15, 0.5, 1.0]))


@pytest.mark.parametrize("mode", ["alpha", "learned"])
def test_straight_through_gradients_reach_z_lambda_and_lambda_neg(mode):
    q = _signed(4, "layer", mode=mode, positive="none", theta=torch.tensor([1.0]), theta_n=torch.tensor([0.2]),
                alpha=0.2)
    z = torch.tensor([-2.0, -0.6, -0.2, 0.1, 0.4, 0.8, 1.5], requires_grad=True)
    q(z).sum().backward()
    # slope 1 inside (0, θ], slope θ_n/θ = 0.2 inside [-θ, 0), 0 beyond either clip
    torch.testing.assert_close(z.grad, torch.tensor([0.0, 0.2, 0.2, 1.0, 1.0, 1.0, 0.0]))
    assert q.lam.grad is not None and float(q.lam.grad.abs()) > 0
    if mode == "learned":
        assert q.lam_neg.grad is not None and float(q.lam_neg.grad) < 0  # the clipped -2 pulls θ_n up


@pytest.mark.parametrize("mode", ["alpha", "learned"])
def test_state_dict_round_trip(mode):
    g = torch.Generator().manual_seed(3)
    q = _signed(4, "channel", mode=mode, theta=torch.rand(5, generator=g) + 0.5,
                theta_n=torch.rand(5, generator=g) * 0.3 + 0.05)
    again = SignedQCFS(4, granularity="channel", num_channels=5,
                       **(dict(alpha=0.1) if mode == "alpha" else dict(learn_negative=True)))
    again.load_state_dict(q.state_dict())
    z = torch.randn(4, 5, 3, 3, generator=g) * 2
    assert torch.equal(again(z), q(z))


@pytest.mark.parametrize("mode,granularity", [("alpha", "channel"), ("learned", "channel"), ("learned", "neuron"),
                                              ("learned", "layer")])
def test_to_unit_reads_the_same_quantizer_in_units_of_theta(mode, granularity):
    """θ ⊙ unit(z/θ) == q(z): exactly on the positive side, to 1 ulp on the negative (one product more)."""
    g = torch.Generator().manual_seed(5)
    shape, dim = _SHAPES[granularity]
    n = 1 if granularity == "layer" else 3
    q = _signed(4, granularity, mode=mode, theta=torch.rand(n, generator=g) * 2 + 0.3,
                theta_n=torch.rand(n, generator=g) * 0.5 + 0.05, alpha=0.3)
    unit = q.to_unit()
    assert isinstance(unit, SignedQCFS) and unit.negative == "fixed" and unit.levels == 4
    assert torch.equal(unit.threshold, torch.ones(1)) and not any(p.requires_grad for p in unit.parameters())
    ratio = unit.broadcast_neg_threshold(len(shape))
    if mode == "alpha":
        assert ratio.shape == (1,) * len(shape) and float(ratio) == pytest.approx(0.3)
    elif n > 1:
        assert ratio.shape == tuple(n if d == dim % len(shape) else 1 for d in range(len(shape)))
    theta = q.broadcast_threshold(len(shape)).detach()
    z = (torch.rand((64, *shape[1:]), generator=g) * 3 - 1.5) * theta
    expect, got = q(z).detach(), theta * unit(z / theta)
    a = z * (4 / theta) + 0.5
    away = (a - a.round()).abs() > 1e-4  # z/θ·L and z·(L/θ) round differently only at a decision boundary
    assert away.float().mean() > 0.99
    ulp = torch.finfo(torch.float32).eps * expect.abs()
    assert bool(((got - expect).abs() <= ulp)[away].all())
    assert torch.equal(got[away & (expect >= 0)], expect[away & (expect >= 0)])


def test_to_channelwise_copies_lambda_neg_and_keeps_the_function():
    torch.manual_seed(0)
    net = ann2snn.models.create("digits-cnn", channels=4, act="signed", learn_negative=True, levels=4,
                                init_threshold=1.5).eval()
    x = torch.randn(8, 1, 8, 8)
    with torch.no_grad():
        before = net(x)
        to_channelwise(net, x)
        after = net(x)
    qs = [q for _, q in qcfs_modules(net)]
    assert all(q.granularity == "channel" and q.lam_neg.shape == q.lam.shape == (q.num_channels,) for q in qs)
    assert torch.equal(before, after)


def test_zoo_builds_signed_and_leaky_models_and_keeps_its_defaults(tmp_path):
    plain = ann2snn.models.create("digits-cnn", channels=4)
    assert all(type(q) is QCFS for _, q in qcfs_modules(plain)) and "alpha" not in plain.arch_kwargs
    leaky = ann2snn.models.create("digits-cnn", channels=4, act="leaky", alpha=0.2)
    assert [m.negative_slope for m in leaky.modules() if isinstance(m, nn.LeakyReLU)] == [0.2, 0.2]
    net = ann2snn.models.create("mnist-convnet", act="signed", alpha=0.2, levels=4, granularity="channel")
    qs = [q for _, q in qcfs_modules(net)]
    assert len(qs) == 2 and all(isinstance(q, SignedQCFS) and q.alpha == 0.2 for q in qs)
    with torch.no_grad():
        for q in qs:
            q.lam.uniform_(0.5, 2.0)
    ann2snn.save(net, tmp_path / "s.pt")
    again = ann2snn.load(tmp_path / "s.pt")
    x = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        assert torch.equal(again.eval()(x), net.eval()(x))


@pytest.mark.parametrize("kwargs,match", [
    (dict(), "needs alpha"), (dict(alpha=0.1, learn_negative=True), "not both"),
    (dict(alpha=0.0), "alpha must be a finite number > 0"), (dict(alpha=-0.1), "alpha must be"),
    (dict(alpha=float("nan")), "alpha must be"), (dict(alpha=True), "alpha must be"), (dict(alpha="x"), "alpha must"),
    (dict(alpha=0.1, init_neg_threshold=1.0), "init_neg_threshold applies only"),
    (dict(learn_negative=True, init_neg_threshold=0.0), "init_neg_threshold must be"),
    (dict(alpha=0.1, levels=0), "levels"), (dict(alpha=0.1, granularity="channel"), "num_channels"),
])
def test_bad_arguments(kwargs, match):
    with pytest.raises(Ann2SnnError, match=match):
        SignedQCFS(**kwargs)


@pytest.mark.parametrize("kwargs,match", [(dict(act="signed", alpha=0), "alpha"), (dict(act="tanh"), "act must"),
                                          (dict(learn_negative=True), "learn_negative applies to act='signed'")])
def test_zoo_bad_arguments(kwargs, match):
    with pytest.raises(Ann2SnnError, match=match):
        ann2snn.models.create("digits-cnn", **kwargs)


def test_wrong_channel_count_is_a_clear_error():
    q = SignedQCFS(4, alpha=0.1, granularity="channel", num_channels=3)
    with pytest.raises(Ann2SnnError, match="SignedQCFS with 3 thresholds.*num_channels=5"):
        q(torch.zeros(1, 5, 2, 2))


def test_train_signed_and_leaky_on_digits(tmp_path):
    from ann2snn.train import TrainConfig, train

    fast = dict(arch="digits-cnn", data="digits", lr=5e-3, batch_size=64, arch_kwargs={"channels": 8}, epochs=1,
                record=False)
    res = train(TrainConfig(**fast, act="signed", alpha=0.2, learn_negative=True, output=str(tmp_path / "s.pt")))
    qs = [q for _, q in qcfs_modules(res.model)]
    assert qs and all(isinstance(q, SignedQCFS) and q.negative == "learned" for q in qs)
    assert res.metrics["test_accuracy"] > 0.6, res.metrics["history"]  # one epoch; chance is 0.1
    assert ann2snn.load(res.best_path).arch_kwargs["act"] == "signed"
    ann = train(TrainConfig(**fast, act="leaky", alpha=0.2, output=str(tmp_path / "l.pt")))
    assert not qcfs_modules(ann.model) and any(isinstance(m, nn.LeakyReLU) for m in ann.model.modules())
    # --from-ann on a LeakyReLU ANN prepares it into the signed QANN and fine-tunes it
    fine = train(TrainConfig(**fast, act="signed", alpha=0.2, from_ann=str(ann.best_path),
                             output=str(tmp_path / "f.pt")))
    assert all(isinstance(q, SignedQCFS) and q.alpha == pytest.approx(0.2) for _, q in qcfs_modules(fine.model))
    with pytest.raises(Ann2SnnError, match="--learn-negative .* needs --act signed"):
        train(TrainConfig(**fast, act="qcfs", learn_negative=True, output=str(tmp_path / "x.pt")))
    with pytest.raises(Ann2SnnError, match="--alpha"):
        train(TrainConfig(**fast, act="signed", alpha=-1.0, output=str(tmp_path / "x.pt")))


def test_train_cli_signed_options_fail_in_one_line(tmp_path, capsys):
    from ann2snn.cli.main import main

    for args, match in ((["--act", "signed", "--alpha", "0"], "--alpha"),
                        (["--act", "relu", "--learn-negative"], "needs --act signed")):
        with pytest.raises(SystemExit) as exc:
            main(["train", "--arch", "digits-cnn", *args, "--epochs", "1", "-o", str(tmp_path / "x.pt")])
        assert exc.value.code == 1
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and match in err[0], err
