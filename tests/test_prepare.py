"""prepare: every ReLU (module and functional) becomes QCFS, thresholds are the calibrated percentiles."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import fx, nn

import ann2snn
from ann2snn.errors import Ann2SnnError
from ann2snn.layers import qcfs_modules
from ann2snn.prepare import Calibrator, prepare


class Mixed(nn.Module):
    """ReLU in every spelling: module, F.relu, torch.relu, .relu(), ReLU6, a shared module; max-pools."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=1)
        self.c2 = nn.Conv2d(4, 6, 3, padding=1)
        self.c3 = nn.Conv2d(6, 6, 3, padding=1)
        self.relu = nn.ReLU()
        self.relu6 = nn.ReLU6()
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(6 * 2 * 2, 3)
        self.input_shape = (1, 8, 8)

    def forward(self, x):
        x = self.relu(self.c1(x))
        x = F.relu(self.c2(x))
        x = self.pool(torch.relu(x))
        x = self.relu6(self.c3(x)).relu()
        x = self.relu(F.max_pool2d(x, 2))  # the shared ReLU again
        return self.fc(torch.flatten(x, 1))


def _graph_ops(gm: fx.GraphModule):
    mods = dict(gm.named_modules())
    for n in gm.graph.nodes:
        if n.op == "call_module":
            yield mods[n.target]
        elif n.op in ("call_function", "call_method"):
            yield n.target


def test_replaces_every_relu_module_and_functional():
    torch.manual_seed(0)
    ann = Mixed().eval()
    qann = prepare(ann, torch.randn(32, 1, 8, 8), levels=4, granularity="channel")
    assert isinstance(qann, fx.GraphModule)
    ops = list(_graph_ops(qann))
    relu_like = (nn.ReLU, nn.ReLU6, nn.MaxPool2d, F.relu, torch.relu, F.relu6, F.max_pool2d, "relu")
    assert not [o for o in ops if isinstance(o, type) or o in relu_like or isinstance(o, relu_like[:3])]
    qs = qcfs_modules(qann)
    assert len(qs) == 6 == len(qann.prepare_report["activations"])
    kinds = [a["replaced"] for a in qann.prepare_report["activations"]]
    assert sum("ReLU module" in k for k in kinds) == 2 and sum("ReLU6" in k for k in kinds) == 1
    assert any("method" in k for k in kinds) and sum("function" in k for k in kinds) == 2
    assert len(qann.prepare_report["maxpool_swapped"]) == 2
    assert sum(isinstance(m, nn.AvgPool2d) for m in qann.modules()) == 1
    assert qann(torch.randn(2, 1, 8, 8)).shape == (2, 3)
    assert [a for a in qann.prepare_report["activations"] if a["kind"] == "relu6"][0]["threshold_max"] <= 6.0
    # the original model is untouched
    assert any(isinstance(m, nn.MaxPool2d) for m in ann.modules()) and not qcfs_modules(ann)


def test_keep_maxpool_and_uncalibrated_thresholds():
    qann = prepare(Mixed(), levels=2, maxpool="keep", init_threshold=3.0)
    assert any(isinstance(m, nn.MaxPool2d) for m in qann.modules())
    th = {a["kind"]: a["threshold_max"] for a in qann.prepare_report["activations"]}
    assert th == {"relu": pytest.approx(3.0), "relu6": pytest.approx(6.0)}


@pytest.mark.parametrize("granularity", ["layer", "channel"])
@pytest.mark.parametrize("method,pct", [("percentile", 99.0), ("percentile", 90.0), ("max", 100.0)])
def test_calibrated_thresholds_equal_the_percentile_computed_directly(granularity, method, pct):
    torch.manual_seed(1)
    ann = ann2snn.models.create("digits-cnn", act="relu", channels=4).eval()
    x = torch.randn(37, 1, 8, 8)
    qann = prepare(ann, x, levels=4, granularity=granularity, method=method, percentile=pct, batch_size=8,
                   positive="none")
    # the ReLU outputs, computed directly
    acts = []
    hooks = [m.register_forward_hook(lambda m, i, o: acts.append(o.detach()))
             for m in ann.modules() if isinstance(m, nn.ReLU)]
    with torch.no_grad():
        ann(x)
    for h in hooks:
        h.remove()
    for a, (_, q) in zip(acts, qcfs_modules(qann)):
        rows = a.reshape(1, -1) if granularity == "layer" else a.transpose(0, 1).reshape(a.shape[1], -1)
        expected = rows.max(1).values if method == "max" else torch.quantile(rows, pct / 100, dim=1)
        torch.testing.assert_close(q.threshold.detach(), expected)


def test_calibrator_streams_exactly():
    torch.manual_seed(2)
    y = torch.relu(torch.randn(50, 3, 4, 4))
    cal = Calibrator(method="percentile", percentile=99.5, dim=1, num_samples=50)
    for i in range(0, 50, 7):
        cal.observe(y[i:i + 7])
    torch.testing.assert_close(cal.thresholds(), torch.quantile(y.transpose(0, 1).reshape(3, -1), 0.995, dim=1))
    assert cal.top.shape[1] < 50 * 16  # only the tail is kept


@pytest.mark.parametrize("name,kw", [("mnist-cnn", dict(pool="max")), ("resnet20", dict(width=4)),
                                     ("vgg16", dict(width_mult=1 / 32, classifier_width=8, pool="max"))])
def test_zoo_relu_ann_becomes_a_saveable_convertible_qann(tmp_path, name, kw):
    torch.manual_seed(0)
    ann = ann2snn.models.create(name, act="relu", **kw).eval()
    path = ann2snn.save(ann, tmp_path / "ann.pt")
    x = torch.randn(24, *ann.input_shape)
    qann = prepare(path, x, levels=4, granularity="channel")  # from the file
    assert qann.arch_name == name and qann.arch_kwargs["act"] == "qcfs"
    assert qann.arch_kwargs["granularity"] == "channel" and qann.arch_kwargs.get("pool", "avg") == "avg"
    assert qann.prepare_report["rebuilt_as"] == name
    assert len(qcfs_modules(qann)) == sum(isinstance(m, nn.ReLU) for m in ann.modules())
    # weights kept
    sd_ann, sd_q = ann.state_dict(), qann.state_dict()
    assert all(torch.equal(sd_ann[k], sd_q[k]) for k in sd_ann)
    ann2snn.save(qann, tmp_path / "qann.pt")
    again = ann2snn.load(tmp_path / "qann.pt")
    with torch.no_grad():
        torch.testing.assert_close(again(x), qann(x))
    snn = ann2snn.convert(again, T=4)
    assert snn.simulate(x[:2]).shape == (4, 2, 10)


def test_high_resolution_qann_matches_the_ann():
    """With many levels and max calibration, the QANN is the ANN up to quantization steps."""
    torch.manual_seed(3)
    ann = ann2snn.models.create("digits-cnn", act="relu", channels=4).eval()
    x = torch.rand(64, 1, 8, 8)
    qann = prepare(ann, x, levels=256, method="max", granularity="channel")
    with torch.no_grad():
        torch.testing.assert_close(qann(x), ann(x), atol=0.05, rtol=0.02)


def test_prepare_errors():
    with pytest.raises(Ann2SnnError, match="already a QANN"):
        prepare(ann2snn.models.create("digits-cnn"))
    with pytest.raises(Ann2SnnError, match="levels must be a positive integer"):
        prepare(Mixed(), levels=0)
    with pytest.raises(Ann2SnnError, match="GELU has no QCFS equivalent"):
        prepare(nn.Sequential(nn.Linear(4, 4), nn.GELU(), nn.Linear(4, 2)))
    with pytest.raises(Ann2SnnError, match="granularity must be 'layer' or 'channel'"):
        prepare(Mixed(), granularity="head")
    with pytest.raises(Ann2SnnError, match="calibration data is empty"):
        prepare(Mixed(), torch.zeros(0, 1, 8, 8))
    with pytest.raises(Ann2SnnError, match="does not exist"):
        prepare("/nonexistent/ann.pt")


def test_prepare_cli(tmp_path, capsys):
    from ann2snn.cli.main import main

    ann = ann2snn.models.create("digits-cnn", act="relu", channels=4)
    ann2snn.save(ann, tmp_path / "ann.pt")
    main(["prepare", str(tmp_path / "ann.pt"), "--data", "digits", "--samples", "64", "--levels", "4",
          "--granularity", "channel", "--json"])
    qann = ann2snn.load(tmp_path / "ann.qann.pt")
    assert len(qcfs_modules(qann)) == 2 and all(q.granularity == "channel" for _, q in qcfs_modules(qann))
    with pytest.raises(SystemExit) as exc:
        main(["prepare", str(tmp_path / "ann.pt"), "--data", "digits"])  # exists, no --force
    assert exc.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "already exists" in err[0]


class Leaky(nn.Module):
    """LeakyReLU as a module and as F.leaky_relu (slope positional and keyword), digits-sized input [B, 1, 8, 8]."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(1, 6, 3, padding=1)
        self.c2 = nn.Conv2d(6, 8, 3, padding=1)
        self.c3 = nn.Conv2d(8, 8, 3, padding=1)
        self.act = nn.LeakyReLU(0.1)
        self.fc = nn.Linear(8 * 4 * 4, 10)
        self.input_shape = (1, 8, 8)

    def forward(self, x):
        x = self.act(self.c1(x))
        x = F.avg_pool2d(F.leaky_relu(self.c2(x), 0.2), 2)
        x = F.leaky_relu(self.c3(x), negative_slope=0.05)
        return self.fc(torch.flatten(x, 1))


def _signed_inputs(qann, x):
    """Each SignedQCFS of ``qann`` with the input it sees on ``x``."""
    seen = []
    hooks = [q.register_forward_pre_hook(lambda m, a: seen.append((m, a[0].detach()))) for _, q in qcfs_modules(qann)]
    with torch.no_grad():
        qann(x)
    for h in hooks:
        h.remove()
    return seen


@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_leaky_relu_becomes_signed_qcfs_with_alpha_the_slope(granularity):
    from ann2snn.layers import SignedQCFS

    torch.manual_seed(0)
    ann = Leaky().eval()
    x = torch.rand(48, 1, 8, 8)
    qann = prepare(ann, x, levels=4, granularity=granularity, method="max", positive="none")
    ops = list(_graph_ops(qann))
    assert not [o for o in ops if isinstance(o, nn.LeakyReLU) or o in (F.leaky_relu, F.leaky_relu_)]
    qs = [q for _, q in qcfs_modules(qann)]
    assert all(isinstance(q, SignedQCFS) and q.negative == "alpha" for q in qs)
    assert [q.alpha for q in qs] == [0.1, 0.2, 0.05] == [a["alpha"] for a in qann.prepare_report["activations"]]
    assert qann.prepare_report["activations"][0]["replaced"] == "LeakyReLU module 'act'"
    # θ_p is the calibration statistic of the positive side (here its max) of the ANN's activation, θ_n = α·θ_p
    pre = []  # the ANN's pre-activations: the convolutions feed the three LeakyReLUs
    hooks = [c.register_forward_hook(lambda m, i, o: pre.append(o.detach())) for c in (ann.c1, ann.c2, ann.c3)]
    with torch.no_grad():
        ann(x)
    for h in hooks:
        h.remove()
    for q, z in zip(qs, pre):
        rows = z.reshape(1, -1) if granularity == "layer" else z.transpose(0, 1).reshape(z.shape[1], -1)
        top = rows.clamp(min=0).max(1).values
        top = torch.where(top > 1e-3, top, top.max())  # a channel never positive takes the layer's largest θ
        torch.testing.assert_close(q.threshold.detach(), top)
        torch.testing.assert_close(q.neg_threshold.detach(), q.alpha * q.threshold.detach())


def test_signed_qann_is_within_half_a_step_of_the_leaky_relu_on_calibration_data():
    """Every layer: |SignedQCFS(z) − leaky_relu(z)| ≤ θ/2L (θ_n/2L below 0) wherever z is inside [−θ, θ]."""
    torch.manual_seed(1)
    ann = Leaky().eval()
    x = torch.rand(64, 1, 8, 8)
    L = 8
    qann = prepare(ann, x, levels=L, granularity="channel", method="max")
    for q, z in _signed_inputs(qann, x):
        theta, theta_n = q.broadcast_threshold(4).detach(), q.broadcast_neg_threshold(4).detach()
        err = (q(z).detach() - F.leaky_relu(z, q.alpha)).abs()
        inside = (z >= -theta) & (z <= theta)
        half_step = torch.where(z >= 0, theta, theta_n).expand_as(z) / (2 * L)
        assert inside.float().mean() > 0.5
        assert bool((err <= half_step + 1e-6)[inside].all())
    # with many levels the whole QANN is the ANN up to the clip at −θ_n (slope-scaled, small)
    fine = prepare(ann, x, levels=256, granularity="channel", method="max")
    with torch.no_grad():
        torch.testing.assert_close(fine(x), ann(x), atol=0.05, rtol=0.02)


def test_learn_negative_starts_at_the_slope_and_slope_zero_is_a_relu():
    torch.manual_seed(2)
    x = torch.rand(32, 1, 8, 8)
    ann = Leaky().eval()
    fixed = prepare(ann, x, levels=4, granularity="channel")
    learned = prepare(ann, x, levels=4, granularity="channel", learn_negative=True)
    for (_, a), (_, b) in zip(qcfs_modules(fixed), qcfs_modules(learned)):
        assert b.negative == "learned" and b.lam_neg.requires_grad
        torch.testing.assert_close(b.neg_threshold.detach(), a.neg_threshold.detach())
    with torch.no_grad():
        torch.testing.assert_close(learned(x), fixed(x))
    relu_like = prepare(nn.Sequential(nn.Conv2d(1, 2, 3), nn.LeakyReLU(0.0), nn.Flatten()), x, levels=4)
    assert [type(q) for _, q in qcfs_modules(relu_like)] == [ann2snn.QCFS]


def test_zoo_leaky_ann_becomes_a_saveable_signed_zoo_qann(tmp_path):
    torch.manual_seed(0)
    ann = ann2snn.models.create("digits-cnn", act="leaky", alpha=0.2, channels=4).eval()
    path = ann2snn.save(ann, tmp_path / "ann.pt")
    x = torch.randn(24, 1, 8, 8)
    for learn in (False, True):
        qann = prepare(path, x, levels=4, granularity="channel", learn_negative=learn)
        assert qann.prepare_report["rebuilt_as"] == "digits-cnn"
        assert qann.arch_kwargs["act"] == "signed" and qann.arch_kwargs["alpha"] == 0.2
        assert qann.arch_kwargs.get("learn_negative", False) == learn
        ann2snn.save(qann, tmp_path / "qann.pt", force=True)
        again = ann2snn.load(tmp_path / "qann.pt")
        with torch.no_grad():
            assert torch.equal(again(x), qann(x))


def test_leaky_relu_errors():
    with pytest.raises(Ann2SnnError, match="negative_slope -0.1 has no SignedQCFS equivalent"):
        prepare(nn.Sequential(nn.Linear(4, 4), nn.LeakyReLU(-0.1), nn.Linear(4, 2)))
    with pytest.raises(Ann2SnnError, match="ELU has no QCFS equivalent; prepare replaces ReLU, ReLU6 and LeakyReLU"):
        prepare(nn.Sequential(nn.Linear(4, 4), nn.ELU(), nn.Linear(4, 2)))


def test_prepare_cli_leaky(tmp_path, capsys):
    from ann2snn.cli.main import main

    ann2snn.save(ann2snn.models.create("digits-cnn", act="leaky", alpha=0.1, channels=4), tmp_path / "ann.pt")
    main(["prepare", str(tmp_path / "ann.pt"), "--data", "digits", "--samples", "64", "--learn-negative"])
    assert "2 signed" in capsys.readouterr().out
    qann = ann2snn.load(tmp_path / "ann.qann.pt")
    assert [q.negative for _, q in qcfs_modules(qann)] == ["learned", "learned"]


def test_a_builder_that_max_pools_by_default_is_rebuilt_average_pooled(monkeypatch):
    """A user's builder whose ``pool`` defaults to max: prepare swaps the max-pools and rebuilds the architecture
    with ``pool="avg"`` (not only when ``pool="max"`` was passed explicitly), so the result is the zoo-style model."""
    from ann2snn.models.registry import REGISTRY, register

    def user_maxnet(act="relu", pool="max", levels=4, granularity="layer", positive="softplus", shift=0.5):
        act_layer = nn.ReLU if act == "relu" else (lambda: ann2snn.layers.QCFS(levels, shift=shift))
        m = nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), act_layer(), nn.MaxPool2d(2) if pool == "max" else
                          nn.AvgPool2d(2), nn.Flatten(), nn.Linear(64, 3))
        m.input_shape = (1, 8, 8)
        return m

    monkeypatch.setitem(REGISTRY, "user-maxnet", user_maxnet)
    register("user-maxnet")(user_maxnet)
    qann = prepare(ann2snn.models.create("user-maxnet"), torch.rand(32, 1, 8, 8))
    assert getattr(qann, "arch_name", None) == "user-maxnet" and qann.arch_kwargs["pool"] == "avg"
    assert not any(isinstance(m, nn.MaxPool2d) for m in qann.modules())
    assert any(isinstance(m, nn.AvgPool2d) for m in qann.modules())


def test_a_builder_whose_qcfs_names_differ_is_named_in_the_reason(monkeypatch):
    """A builder that puts its QCFS under other names than the ANN's activations: prepare keeps the traced model
    and says why it could not rebuild it (the parameter names on each side), which the CLI prints in one line."""
    from ann2snn.models.registry import REGISTRY, register

    def user_net(act="relu", levels=4, granularity="layer", positive="softplus", shift=0.5):
        if act == "relu":
            return nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2))
        return nn.Sequential(nn.Linear(4, 4), nn.Sequential(ann2snn.layers.QCFS(levels)), nn.Linear(4, 2))

    monkeypatch.setitem(REGISTRY, "user-renamed", user_net)
    register("user-renamed")(user_net)
    qann = prepare(ann2snn.models.create("user-renamed"), torch.rand(16, 4))
    why = qann.prepare_report["not_rebuilt_because"]
    assert qann.prepare_report["rebuilt_as"] is None and "\n" not in why
    assert "other parameter names" in why and "1.0.lam" in why and "1.lam" in why, why
