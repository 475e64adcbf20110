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
