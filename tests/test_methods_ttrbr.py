"""TTRBR (ann2snn.methods.ttrbr): residual block restructuring (structure: every residual add's summands are
quantizer outputs, on the post-add threshold grid) and threshold tuning (factor 1 is the identity, a scaled QCFS is
the scaled neuron, tuning never lowers the calibration agreement), both ONNX forms, ``eval --ttrbr`` with its
report section, and a small numeric regression on digits."""

from __future__ import annotations

import json
import operator

import pytest
import torch
from helpers import randomize
from opnets import conv, q
from torch import nn

import ann2snn
from ann2snn.errors import Ann2SnnError
from ann2snn.layers import QCFS, qcfs_modules
from ann2snn.methods import Method, TTRBRConfig, apply_ttrbr, compare_methods, restructure_residuals, tune_thresholds
from ann2snn.methods.ttrbr import _scale_threshold
from ann2snn.simulator import readout, run_steps


class TinyResNet(nn.Module):
    """stem conv-BN-QCFS, one identity block and one projection block (each with a QCFS after the add), linear."""

    input_shape = (1, 8, 8)

    def __init__(self, c: int = 4, levels: int = 4) -> None:
        super().__init__()
        self.stem, self.bn, self.q0 = nn.Conv2d(1, c, 3, padding=1), nn.BatchNorm2d(c), QCFS(levels, init_threshold=2.)
        self.a1, self.qa, self.a2 = conv(c, c), QCFS(levels, init_threshold=2.), conv(c, c)
        self.short = nn.Identity()
        self.qa2 = QCFS(levels, init_threshold=2.)
        self.b1, self.qb, self.b2 = conv(c, 2 * c, stride=2), QCFS(levels, init_threshold=2.), conv(2 * c, 2 * c)
        self.proj = nn.Sequential(nn.Conv2d(c, 2 * c, 1, stride=2), nn.BatchNorm2d(2 * c))
        self.qb2 = QCFS(levels, init_threshold=2.)
        self.fc = nn.Linear(2 * c, 10)

    def forward(self, x):
        x = self.q0(self.bn(self.stem(x)))
        x = self.qa2(self.a2(self.qa(self.a1(x))) + self.short(x))
        x = self.qb2(self.b2(self.qb(self.b1(x))) + self.proj(x))
        return self.fc(x.mean((2, 3)))


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return randomize(TinyResNet(), seed=seed, theta=(0.5, 1.5))


def _images(n: int = 32) -> torch.Tensor:
    return torch.rand(n, 1, 8, 8, generator=torch.Generator().manual_seed(3))


# --- residual block restructuring ----------------------------------------------------------------------------


def test_restructuring_quantizes_both_summands_of_every_residual_add():
    model = _net()
    gm, inserted = restructure_residuals(model)
    modules = dict(gm.named_modules())
    adds = [n for n in gm.graph.nodes if n.op == "call_function" and n.target is operator.add]
    assert len(adds) == 2 and len(inserted) == 3  # a2 and b2 branches, the projection; not the identity shortcut
    for add in adds:
        post = modules[next(iter(add.users)).target]
        for a in add.args:
            src = a.args[0] if isinstance(modules.get(a.target), nn.Identity) else a
            assert isinstance(modules[src.target], QCFS)
            if src.target in inserted:  # a copy of the post-add quantizer: same grid
                assert torch.equal(modules[src.target].threshold, post.threshold)
                assert modules[src.target].levels == post.levels
    assert len(qcfs_modules(gm)) == len(qcfs_modules(model)) + 3
    assert gm.input_shape == (1, 8, 8)
    x = _images()
    out = gm(x)
    assert out.shape == (32, 10) and not torch.equal(out, model(x))  # a different QANN: hence the fine-tuning
    # the original is not modified
    assert len(qcfs_modules(model)) == 5


def test_restructured_summands_lie_on_the_post_add_grid():
    gm, inserted = restructure_residuals(_net())
    seen = []
    hooks = [gm.get_submodule(n).register_forward_hook(
        lambda m, a, o: seen.append((o / m.threshold * m.levels).detach())) for n in inserted]
    gm(_images())
    for h in hooks:
        h.remove()
    for levels in seen:
        torch.testing.assert_close(levels, torch.round(levels), atol=1e-4, rtol=0)
        assert float(levels.min()) >= 0 and float(levels.max()) <= 4


def test_restructuring_needs_a_residual_add():
    net = nn.Sequential(conv(1, 2), q(), nn.Flatten(), nn.Linear(2 * 64, 3))
    with pytest.raises(Ann2SnnError, match="no residual add"):
        restructure_residuals(net)


# --- threshold tuning --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("positive", ["softplus", "none"])
def test_scaled_quantizer_is_the_qcfs_of_the_scaled_threshold(positive):
    q1 = QCFS(4, positive=positive, init_threshold=1.3)
    _scale_threshold(q1, 0.6)
    torch.testing.assert_close(q1.threshold, torch.tensor([0.78]))
    z = torch.linspace(-1, 2, 61)
    q2 = QCFS(4, positive=positive, init_threshold=0.78)
    torch.testing.assert_close(q1(z), q2(z))


def test_tuning_with_factor_one_is_the_identity():
    model, x = _net(), _images()
    tuned, factors = tune_thresholds(model, x, 2, scales=(1.0,))
    assert set(factors) == {n for n, _ in qcfs_modules(model)} and set(factors.values()) == {1.0}
    torch.testing.assert_close(tuned(x), model(x))


@pytest.mark.parametrize("T", [1, 2, 4])
@torch.no_grad()
def test_tuning_never_worsens_the_calibration_agreement(T):
    model, x = _net(1), _images(64)
    q = model(x)

    def score(m):
        out = readout(run_steps(ann2snn.convert(m, T=T).graph_module, x, T))[-1]
        return float((out.argmax(-1) == q.argmax(-1)).float().mean()), -float(((out - q) ** 2).mean())

    tuned, factors = tune_thresholds(model, x, T)
    assert score(tuned) >= score(model)
    assert all(f in TTRBRConfig().scales for f in factors.values())


def test_tuned_and_restructured_qann_through_both_onnx_forms(tmp_path):
    pytest.importorskip("onnxruntime")
    x = _images(64)
    qann, info = apply_ttrbr(_net(), x, torch.randint(0, 10, (64,), generator=torch.Generator().manual_seed(0)), 2,
                             TTRBRConfig(finetune_epochs=1, batch_size=32))
    assert len(info["inserted"]) == 3 and len(info["factors"]) == 8
    res = ann2snn.export(ann2snn.convert(qann, T=2), tmp_path / "t.onnx", format="both")
    assert set(res.verification) == {"unrolled", "stateful"}
    for v in res.verification.values():
        assert v["samples"] - v["mismatched_samples"] >= 1 and v["max_abs_error"] <= v["atol"] + 1e-3


# --- on digits: a small numeric regression -------------------------------------------------------------------------


@pytest.fixture(scope="module")
def digits_resnet():
    from ann2snn.data import load_digits
    from ann2snn.train import fit

    data = load_digits()
    torch.manual_seed(0)
    model = TinyResNet(c=8)
    fit(model, data, epochs=3, lr=1e-2, batch_size=64, seed=0)
    return model.eval(), data


def test_ttrbr_against_the_plain_conversion_on_digits(digits_resnet):
    model, data = digits_resnet
    methods = [Method("TTRBR", ttrbr=TTRBRConfig()), Method("tune", ttrbr=TTRBRConfig(restructure=False))]
    res = compare_methods(model, data, [1, 2, 4], methods, limit=150, calib_samples=512)
    acc = {name: [r["snn_accuracy"] for r in m["per_T"]] for name, m in res["methods"].items()}
    t = res["methods"]["TTRBR"]["ttrbr"]
    assert len(t["inserted_quantizers"]) == 3 and set(t["threshold_factors"]) == {1, 2, 4}
    assert t["qann_accuracy"] > 0.55 and res["qann_accuracy"] > 0.7
    assert res["methods"]["tune"]["ttrbr"]["inserted_quantizers"] == []
    from ann2snn.methods.ttrbr import TUNE_SCALES

    tuned = res["methods"]["tune"]["ttrbr"]
    assert all(set(f.values()) <= set(TUNE_SCALES) for f in tuned["threshold_factors"].values())
    # no counts pinned: the 3-epoch training differs between machines (pinned on an AVX2 CPU, the counts failed
    # on an AVX-512 one): plain / TTRBR / tune had 68 / 68 / 68 of 150 right at T = 1 and 105 / 83 / 105 at T = 4
    # on the first, 72 / 58 / 83 and 105 / 83 / 105 on the second. What holds on both: at T = 4 = L each SNN is
    # within 15 samples of its own QANN
    n = 150
    for name, qann_acc in (("plain", res["qann_accuracy"]), ("tune", res["qann_accuracy"]),
                           ("TTRBR", t["qann_accuracy"])):
        assert acc[name][-1] * n >= qann_acc * n - 15, (name, acc[name], qann_acc)


# --- ann2snn eval --ttrbr, JSON and the report page ----------------------------------------------------------------


def test_cli_eval_ttrbr_json_and_report(tmp_path):
    from click.testing import CliRunner

    from ann2snn.cli.main import cli
    from ann2snn.report import render_html
    from ann2snn.runs import read_record

    torch.manual_seed(0)
    qann = ann2snn.models.create("resnet20", levels=2, width=2, in_channels=1, init_threshold=1.0).eval()
    qann.input_shape = (1, 8, 8)  # digits
    model_file = ann2snn.save(qann, tmp_path / "r.pt")
    args = ["eval", str(model_file), "--T", "1,2", "--limit", "16", "--ttrbr", "both", "--ttrbr", "tune",
            "--ttrbr-finetune", "0",
            "--calib-samples", "16", "--noise", "salt-pepper:0,0.2", "--runs-dir", str(tmp_path / "runs")]
    r = CliRunner().invoke(cli, [*args, "--json"])
    assert r.exit_code == 0, r.output
    out = json.loads(r.output)
    comp = out["methods_comparison"]
    assert list(comp["methods"]) == ["plain", "TTRBR", "TTRBR tuning only"]
    assert comp["methods"]["TTRBR tuning only"]["ttrbr"]["inserted_quantizers"] == []
    assert len(comp["methods"]["TTRBR"]["ttrbr"]["inserted_quantizers"]) == 11  # 9 residual branches, 2 projections
    assert comp["methods"]["TTRBR"]["method"]["ttrbr"]["finetune_epochs"] == 0
    html = render_html([read_record(out["record"])], images=False)
    assert "Methods vs plain conversion" in html and "TTRBR" in html and "salt-pepper noise" in html
    r = CliRunner().invoke(cli, [*args[:-4], "--T", "1", "--no-record"])
    assert r.exit_code == 0, r.output
    assert "TTRBR" in r.output and "quantizers inserted" in r.output
