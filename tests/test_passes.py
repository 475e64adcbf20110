"""Each pass: structure (what is left in the graph) and numbers (the QANN's function is unchanged)."""

from __future__ import annotations

import copy
import operator

import pytest
import torch
from helpers import level_mismatch_fraction, quantized_levels, randomize
from torch import nn
from torch.nn import functional as F

import ann2snn
from ann2snn.errors import Ann2SnnError, ConversionError, UnsupportedNodeError
from ann2snn.layers import QCFS, Affine, SignedQCFS
from ann2snn.neurons import BipolarNeuron, IFNeuron, SpikingMaxPool2d
from ann2snn.passes import (
    DEFAULT_PASSES,
    PassResult,
    fold_batchnorm,
    normalize,
    run_pipeline,
    to_spiking,
    trace,
)

FOLD_PASSES = DEFAULT_PASSES[:3]  # normalize, fold_batchnorm, fold_thresholds: still a QANN, in threshold units


def _modules(gm, cls):
    return [m for m in gm.modules() if isinstance(m, cls)]


def _inputs(model, n=16, seed=0):
    return torch.randn(n, *model.input_shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("name", ["mlp", "digits", "vgg", "resnet", "maxpool"])
@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_folding_keeps_the_qann_function(tiny_models, name, granularity):
    qann = randomize(tiny_models[name](levels=4, granularity=granularity), seed=3)
    x = _inputs(qann)
    folded, report = run_pipeline(qann, example_input=x, passes=FOLD_PASSES)
    # structure: no BN, every QCFS now reads threshold units
    assert not _modules(folded, (nn.BatchNorm1d, nn.BatchNorm2d))
    assert all(float(q.threshold.max()) == 1.0 and q.granularity == "layer" for q in _modules(folded, QCFS))
    assert len(_modules(folded, QCFS)) == len(_modules(qann, QCFS))
    # numbers: every quantized activation equal (ties may flip by float rounding: allow 1 in 10^4) ...
    ref_levels = quantized_levels(qann, x)
    got_levels = [torch.round(v) for v in quantized_levels(folded, x)]
    assert level_mismatch_fraction(ref_levels, got_levels) <= 1e-4
    # ... and the logits equal, to a tolerance far below one quantization step of the last layer
    with torch.no_grad():
        torch.testing.assert_close(folded(x), qann(x), rtol=1e-4, atol=1e-4)
    assert report.counts()["thresholds_folded"] == len(_modules(qann, QCFS))


def test_fold_batchnorm_folds_conv_bn_and_keeps_unfoldable_bn_as_affine():
    class BNAfterAdd(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(2, 4, 3, padding=1)
            self.bn = nn.BatchNorm2d(4)
            self.bn_in = nn.BatchNorm2d(2)  # on the input: nothing to fold into
            self.q = QCFS(4, init_threshold=1.0)
            self.fc = nn.Linear(4 * 16, 3)

        def forward(self, x):
            x = self.bn_in(x)
            return self.fc(torch.flatten(self.q(self.bn(self.conv(x))), 1))

    m = randomize(BNAfterAdd())
    x = torch.randn(4, 2, 4, 4)
    gm = trace(copy.deepcopy(m), example_input=x)  # passes edit in place; run_pipeline copies for you
    res = fold_batchnorm(normalize(gm).gm)
    assert isinstance(res, PassResult)
    gm, rec = res.gm, res.changes
    assert res.counters == {"batchnorm_folded": 1, "batchnorm_kept_as_affine": 1}
    assert rec["folded"] == ["bn -> conv"] and rec["kept_as_affine"] == ["bn_in"]
    assert not _modules(gm, nn.BatchNorm2d) and len(_modules(gm, Affine)) == 1
    with torch.no_grad():
        torch.testing.assert_close(gm(x), m(x), rtol=1e-5, atol=1e-5)


def test_residual_add_with_different_thresholds_gets_an_explicit_scale():
    qann = randomize(ann2snn.models.create("resnet20", width=4, levels=4, granularity="channel"), seed=1)
    x = _inputs(qann, 4)
    gm, report = run_pipeline(qann, example_input=x, passes=FOLD_PASSES)
    scales = report.get("fold_thresholds")["explicit_scales"]
    # resnet20 has 9 blocks; the 2 downsampling blocks rescale their 1x1 shortcut conv instead
    assert len(scales) == 7
    # per channel (not one scalar): 3 identity shortcuts at width 4, 2 at width 8, 2 at width 16
    assert sorted(s["shape"][1] for s in scales) == [4, 4, 4, 8, 8, 16, 16]
    assert all(s["shape"] == [1, s["shape"][1], 1, 1] for s in scales)


def test_equal_thresholds_need_no_explicit_scale():
    qann = ann2snn.models.create("resnet20", width=4, levels=4, init_threshold=1.5).eval()
    _, report = run_pipeline(qann, example_input=_inputs(qann, 2), passes=FOLD_PASSES)
    assert report.counts()["explicit_scales"] == 0


def test_replace_gives_one_neuron_per_qcfs_and_no_qcfs_left(tiny_models):
    qann = randomize(tiny_models["resnet"](levels=4, granularity="channel"))
    gm, report = run_pipeline(qann, example_input=_inputs(qann, 2))
    n_qcfs = len(_modules(qann, QCFS))
    assert not _modules(gm, QCFS)
    neurons = _modules(gm, IFNeuron)
    assert len(neurons) == n_qcfs == report.counts()["if_neurons"]
    assert all(n.unit_threshold and n.shift == 0.5 for n in neurons)
    assert len({id(n) for n in neurons}) == n_qcfs


def test_replace_without_folding_keeps_thresholds_in_the_neuron():
    qann = randomize(ann2snn.models.create("mnist-mlp", hidden=8, levels=2, granularity="neuron"))
    gm = trace(qann, example_input=_inputs(qann, 2))
    gm = to_spiking(fold_batchnorm(normalize(gm).gm).gm).gm
    neurons = _modules(gm, IFNeuron)
    assert len(neurons) == 2 and not neurons[0].unit_threshold and neurons[0].threshold.shape == (8,)


def test_shared_qcfs_module_gets_one_neuron_per_call_site():
    class Shared(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.fc2, self.fc3 = nn.Linear(4, 4), nn.Linear(4, 4), nn.Linear(4, 2)
            self.act = QCFS(4, init_threshold=1.0)

        def forward(self, x):
            return self.fc3(self.act(self.fc2(self.act(self.fc1(x)))))

    m = Shared().eval()
    x = torch.randn(8, 4)
    snn = ann2snn.convert(m, T=4, example_input=x)
    assert len(snn.stateful()) == 2


def test_normalize_handles_functional_calls_and_drops_dropout_and_redundant_relu():
    class Functional(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(1, 4, 3)
            self.q = QCFS(2, init_threshold=1.0)
            self.drop = nn.Dropout(0.3)
            self.fc = nn.Linear(4 * 16, 3)

        def forward(self, x):
            h = F.relu(self.q(self.conv(x)))  # redundant: QCFS is already non-negative
            h = F.avg_pool2d(self.drop(h), 2)
            return self.fc(h.view(h.size(0), -1))

    m = Functional().eval()
    x = torch.randn(3, 1, 10, 10)
    gm = trace(copy.deepcopy(m), example_input=x)
    res = normalize(gm)
    gm, rec = res.gm, res.changes
    assert rec["relus_removed"] == 1 and rec["identities_removed"] == 1 and rec["reshapes_to_flatten"] == 1
    targets = [n.target for n in gm.graph.nodes]
    assert F.relu not in targets and torch.flatten in targets
    with torch.no_grad():
        torch.testing.assert_close(gm(x), m(x))
    snn = ann2snn.convert(m, T=2, example_input=x)
    assert snn(x).shape == (3, 3)


def test_relu_that_is_not_after_qcfs_is_refused():
    m = nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 4), QCFS(2), nn.Linear(4, 2))
    with pytest.raises(UnsupportedNodeError, match="not a QCFS activation"):
        ann2snn.convert(m, example_input=torch.zeros(1, 4))


def test_unsupported_module_names_node_and_fix():
    m = nn.Sequential(nn.Linear(4, 4), QCFS(2), nn.Linear(4, 4), nn.Sigmoid(), nn.Linear(4, 2))
    with pytest.raises(UnsupportedNodeError) as exc:
        ann2snn.convert(m, example_input=torch.zeros(1, 4))
    msg = str(exc.value)
    assert "Sigmoid" in msg and "layer '3'" in msg and "QCFS" in msg and "\n" not in msg


class _SigmoidHead(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc, self.q = nn.Linear(4, 4), QCFS(2)

    def forward(self, x):
        x = self.q(self.fc(x))
        return torch.sigmoid(x)  # the line the error must name


def test_unsupported_function_names_the_call_and_the_users_source_line():
    import inspect

    with pytest.raises(UnsupportedNodeError) as exc:
        ann2snn.convert(_SigmoidHead(), example_input=torch.zeros(1, 4))
    msg = str(exc.value)
    line = next(i for i, text in enumerate(inspect.getsourcelines(_SigmoidHead.forward)[0]) if "sigmoid" in text)
    lineno = _SigmoidHead.forward.__code__.co_firstlineno + line
    assert f'File "{__file__}", line {lineno}, in forward' in msg, msg
    assert "call of torch.sigmoid" in msg and "call_function" not in msg and "\n" not in msg


def test_model_without_qcfs_is_refused_with_how_to_make_a_qann():
    with pytest.raises(ConversionError, match="no QCFS activation"):
        ann2snn.convert(nn.Sequential(nn.Linear(4, 4), nn.ReLU(), nn.Linear(4, 2)), example_input=torch.zeros(1, 4))


def test_untraceable_model_is_refused_with_a_fix():
    class DataDependent(nn.Module):
        def __init__(self):
            super().__init__()
            self.q = QCFS(2)

        def forward(self, x):
            if x.sum() > 0:
                return self.q(x)
            return x

    with pytest.raises(ConversionError, match="cannot be traced by torch.fx"):
        ann2snn.convert(DataDependent(), example_input=torch.zeros(1, 4))


def test_maxpool_is_converted_or_refused():
    qann = randomize(ann2snn.models.create("mnist-cnn", pool="max", levels=4))
    snn = ann2snn.convert(qann, T=4)
    assert len([m for _, m in snn.stateful() if isinstance(m, SpikingMaxPool2d)]) == 2
    assert snn.report.counts()["spiking_maxpools"] == 2
    with pytest.raises(UnsupportedNodeError, match="average pooling"):
        ann2snn.convert(qann, T=4, maxpool="error")


def test_negative_threshold_is_refused():
    qann = ann2snn.models.create("digits-cnn", levels=4, positive="none").eval()
    with torch.no_grad():
        next(m for m in qann.modules() if isinstance(m, QCFS)).lam.fill_(-0.5)
    with pytest.raises(ConversionError, match="threshold"):
        ann2snn.convert(qann)


def test_pipeline_failure_names_the_pass_and_those_before():
    def broken(gm):
        raise RuntimeError("boom")

    qann = ann2snn.models.create("digits-cnn", levels=2).eval()
    with pytest.raises(ConversionError, match=r"pass broken failed after \[trace, normalize\]: RuntimeError: boom"):
        run_pipeline(qann, example_input=_inputs(qann, 1), passes=(DEFAULT_PASSES[0], ("broken", broken)))


def test_pipeline_leaves_the_users_model_untouched():
    qann = randomize(ann2snn.models.create("digits-cnn", levels=4, granularity="channel"))
    before = {k: v.clone() for k, v in qann.state_dict().items()}
    ann2snn.convert(qann)
    assert all(torch.equal(before[k], v) for k, v in qann.state_dict().items())


def test_cat_of_differently_scaled_branches():
    class Branches(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Conv2d(1, 3, 3, padding=1), nn.Conv2d(1, 2, 3, padding=1)
            self.qa = QCFS(4, granularity="channel", num_channels=3)
            self.qb = QCFS(4, granularity="channel", num_channels=2)
            self.c = nn.Conv2d(5, 4, 1)
            self.qc = QCFS(4)
            self.fc = nn.Linear(4 * 36, 2)

        def forward(self, x):
            h = torch.cat([self.qa(self.a(x)), self.qb(self.b(x))], dim=1)
            return self.fc(torch.flatten(self.qc(self.c(h)) + h.mean(1, keepdim=True) * 0 + self.qc(self.c(h)), 1))

    m = randomize(Branches())
    x = torch.randn(4, 1, 6, 6)
    # the `* 0` is a constant multiply: unsupported, with a clear message
    with pytest.raises(UnsupportedNodeError):
        ann2snn.convert(m, example_input=x)

    class Cat(Branches):
        def forward(self, x):
            h = torch.cat([self.qa(self.a(x)), self.qb(self.b(x))], dim=1)
            return self.fc(torch.flatten(self.qc(self.c(h)), 1))

    m = randomize(Cat())
    folded, report = run_pipeline(m, example_input=x, passes=FOLD_PASSES)
    with torch.no_grad():
        torch.testing.assert_close(folded(x), m(x), rtol=1e-4, atol=1e-4)
    assert report.counts()["explicit_scales"] == 0  # the 1x1 conv absorbs the concatenated per-channel scale
    assert [n.target for n in folded.graph.nodes if n.op == "call_function"].count(torch.cat) == 1
    assert operator.add not in [n.target for n in folded.graph.nodes]


def test_report_sums_the_counters_each_pass_declares():
    qann = randomize(ann2snn.models.create("mnist-cnn", pool="max", levels=4))
    _, report = run_pipeline(qann, example_input=_inputs(qann, 2))
    counts = report.counts()
    assert counts == {k: v for p in report.passes for k, v in p.counters.items()}  # one pass per counter here
    assert counts["if_neurons"] == counts["qcfs_found"] == 2 and counts["bipolar_neurons"] == 0
    assert counts["spiking_maxpools"] == 2 and counts["batchnorm_folded"] == 2
    assert report.summary().startswith("relus_removed=0, identities_removed=")

    def plain(gm):  # a torch.fx pass that declares nothing still runs
        return gm

    _, report = run_pipeline(qann, example_input=_inputs(qann, 2), passes=(*FOLD_PASSES, ("plain", plain)))
    assert report.passes[-1].name == "plain" and report.passes[-1].counters == {}
    assert "if_neurons" not in report.counts()


def test_pass_options_and_unknown_pass():
    qann = randomize(ann2snn.models.create("mnist-cnn", pool="max", levels=4))
    x = _inputs(qann, 2)
    with pytest.raises(UnsupportedNodeError, match="average pooling"):
        run_pipeline(qann, example_input=x, options={"to_spiking": {"maxpool": "error"}})
    with pytest.raises(ConversionError, match="unknown passes"):
        run_pipeline(qann, example_input=x, options={"fold_everything": {}})
    with pytest.raises(Ann2SnnError, match="convention"):
        run_pipeline(qann, example_input=x, options={"to_spiking": {"convention": "temporal"}})


def test_exact_convention_gives_bounded_bipolar_neurons_scaled_to_the_schedule():
    class MixedL(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc1, self.q1 = nn.Linear(4, 6), QCFS(2, init_threshold=1.0)
            self.fc2, self.q2 = nn.Linear(6, 5), QCFS(8, init_threshold=1.0)
            self.fc3 = nn.Linear(5, 3)

        def forward(self, x):
            return self.fc3(self.q2(self.fc2(self.q1(self.fc1(x)))))

    m = randomize(MixedL())
    gm, report = run_pipeline(m, example_input=torch.randn(4, 4), options={"to_spiking": {"convention": "exact"}})
    neurons = _modules(gm, BipolarNeuron)
    assert not _modules(gm, IFNeuron) and len(neurons) == 2
    assert report.counts()["bipolar_neurons"] == 2 and report.counts()["if_neurons"] == 0
    assert report.get("to_spiking")["schedule_length"] == 8  # the largest L
    assert [(n.n_min, n.n_max) for n in neurons] == [(0, 2), (0, 8)]
    # threshold-folded θ = 1, times L_s/L: a layer of 2 levels counts over 8 injected steps in steps of 4
    assert [float(n.threshold.max()) for n in neurons] == [4.0, 1.0]
    assert [e["kind"] for e in report.get("to_spiking")["neurons"]] == ["bipolar", "bipolar"]


def test_signed_quantizer_folds_and_becomes_a_bipolar_neuron():
    m = nn.Sequential(nn.Linear(4, 6), SignedQCFS(4, alpha=0.25, granularity="neuron", num_channels=6),
                      nn.Linear(6, 3))
    m = randomize(m, theta=(0.5, 2.0))
    x = torch.randn(64, 4, generator=torch.Generator().manual_seed(0))
    folded, _ = run_pipeline(m, example_input=x, passes=FOLD_PASSES)
    with torch.no_grad():
        assert bool((m(x) < m[2].bias).any())  # the sample reaches the negative side
        torch.testing.assert_close(folded(x), m(x), rtol=1e-4, atol=1e-4)
    for convention, bounds in (("rate", (None, None)), ("exact", (-4, 4))):
        gm, report = run_pipeline(m, example_input=x, options={"to_spiking": {"convention": convention}})
        (n,) = _modules(gm, BipolarNeuron)
        assert (n.n_min, n.n_max) == bounds and n.signed
        assert float(n.threshold) == 1.0 and float(n.neg_threshold) == pytest.approx(0.25)  # θ_n / θ_p
        entry = report.get("to_spiking")["neurons"][0]
        assert entry["kind"] == "bipolar" and entry["threshold"] == "1" and entry["neg_threshold"].startswith("tensor")


def test_relu_after_a_signed_quantizer_is_refused():
    m = nn.Sequential(nn.Linear(4, 4), SignedQCFS(4, alpha=0.5), nn.ReLU(), nn.Linear(4, 2))
    with pytest.raises(UnsupportedNodeError, match="can be negative"):
        ann2snn.convert(m, example_input=torch.zeros(1, 4))
    m = nn.Sequential(nn.Linear(4, 4), QCFS(4), nn.Flatten(), nn.ReLU(), nn.Linear(4, 2))
    _, report = run_pipeline(m, example_input=torch.zeros(1, 4))
    assert report.counts()["relus_removed"] == 1


def test_to_spiking_refuses_a_functional_op_it_would_have_to_skip():
    class FunctionalPool(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv, self.q = nn.Conv2d(1, 2, 3), QCFS(4)

        def forward(self, x):
            return F.max_pool2d(self.q(self.conv(x)), 2)

    gm = trace(FunctionalPool(), example_input=torch.zeros(1, 1, 6, 6))
    with pytest.raises(ConversionError, match="run normalize first"):
        to_spiking(gm)
    assert isinstance(to_spiking(normalize(gm).gm).gm.get_submodule("maxpool"), SpikingMaxPool2d)
