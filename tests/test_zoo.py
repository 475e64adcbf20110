"""The zoo: every architecture builds and runs; QCFS sits where the seeds put it; ReLU twins line up."""

from __future__ import annotations

import json
import operator

import pytest
import torch
from torch import fx, nn

import ann2snn
from ann2snn.errors import Ann2SnnError
from ann2snn.layers import QCFS, qcfs_modules
from ann2snn.passes.trace import Ann2SnnTracer

#: small versions of every architecture (same structure, few channels)
TINY = {
    "digits-cnn": dict(channels=4),
    "mnist-mlp": dict(hidden=16),
    "mnist-cnn": {},
    "mnist-convnet": {},
    "resnet18": dict(width=4),
    "resnet20": dict(width=4),
    "resnet32": dict(width=2),
    "resnet34": dict(width=2),
    "resnet50": dict(width=2),
    "resnet56": dict(width=2),
    "resnet101": dict(width=2),
    "vgg16": dict(width_mult=1 / 32, classifier_width=8),
}


def test_every_registered_model_is_covered():
    """Every CNN is covered here; the transformers (models.vit, models.swin) in tests/test_transformer_zoo.py."""
    available = ann2snn.models.available()
    transformers = {n for n in ann2snn.models.builtin() if available[n].__module__.split(".")[-1] in ("vit", "swin")}
    assert transformers
    assert set(TINY) == set(ann2snn.models.builtin()) - transformers


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("granularity", ["layer", "channel"])
def test_builds_and_runs(name, granularity):
    torch.manual_seed(0)
    net = ann2snn.models.create(name, levels=4, granularity=granularity, **TINY[name]).eval()
    x = torch.randn(2, *net.input_shape)
    assert net(x).shape == (2, 10)
    assert net.arch_name == name and net.arch_kwargs["granularity"] == granularity
    qs = qcfs_modules(net)
    assert qs and all(q.levels == 4 and q.granularity == granularity for _, q in qs)
    assert not any(isinstance(m, (nn.ReLU, nn.ReLU6)) for m in net.modules())


@pytest.mark.parametrize("name", ["resnet20", "resnet50"])
def test_resnet_add_comes_before_the_blocks_last_qcfs(name):
    net = ann2snn.models.create(name, **TINY[name])
    gm = fx.GraphModule(net, Ann2SnnTracer().trace(net))
    mods = dict(gm.named_modules())
    adds = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in (operator.add, torch.add)]
    blocks = [m for m in net.modules() if type(m).__name__ in ("BasicBlock", "Bottleneck")]
    assert len(adds) == len(blocks) > 0
    for add in adds:
        (user,) = add.users
        assert user.op == "call_module" and isinstance(mods[user.target], QCFS), add.format_node()
        assert user.target.endswith(("act2", "act3"))


def test_relu_twin_has_the_same_weights_and_names():
    relu = ann2snn.models.create("resnet20", act="relu", width=4)
    qann = ann2snn.models.create("resnet20", width=4, granularity="channel")
    assert not qcfs_modules(relu)
    relu_names = {n for n, m in relu.named_modules() if isinstance(m, nn.ReLU)}
    assert relu_names == {n for n, _ in qcfs_modules(qann)}
    missing, unexpected = qann.load_state_dict(relu.state_dict(), strict=False)
    assert not unexpected and all(k.endswith(".lam") for k in missing)


def test_mnist_architectures_match_the_seeds():
    mlp = ann2snn.models.create("mnist-mlp")
    assert [m.out_features for m in mlp.modules() if isinstance(m, nn.Linear)] == [1200, 1200, 10]
    cnn = ann2snn.models.create("mnist-cnn")
    convs = [m for m in cnn.modules() if isinstance(m, nn.Conv2d)]
    assert [(c.out_channels, c.kernel_size) for c in convs] == [(12, (5, 5)), (64, (5, 5))]
    vgg = ann2snn.models.create("vgg16", width_mult=1 / 32, classifier_width=8)
    assert sum(isinstance(m, nn.Conv2d) for m in vgg.modules()) == 13


def test_softplus_option():
    net = ann2snn.models.create("digits-cnn", positive="none", init_threshold=3.0)
    assert all(q.positive == "none" and float(q.threshold.detach()) == 3.0 for _, q in qcfs_modules(net))


@pytest.mark.parametrize("kw,match", [
    (dict(levels=0), "levels must be a positive integer"),
    (dict(levels=-2), "levels must be a positive integer"),
    (dict(granularity="head"), "no attention heads"),
    (dict(granularity="pixel"), "granularity must be"),
    (dict(act="gelu"), "act must be one of"),
    (dict(init_threshold=0), "init_threshold must be > 0"),
    (dict(colour="red"), "does not accept these arguments"),
])
def test_bad_arguments(kw, match):
    with pytest.raises(Ann2SnnError, match=match):
        ann2snn.models.create("digits-cnn", **kw)


def test_unknown_architecture():
    with pytest.raises(Ann2SnnError, match="unknown architecture 'resnet9'.*resnet20"):
        ann2snn.models.create("resnet9")


def test_models_cli_lists_names_shapes_and_parameters(capsys):
    from ann2snn.cli.main import main

    main(["models", "--json"])
    rows = {r["name"]: r for r in json.loads(capsys.readouterr().out)}
    assert set(TINY) <= set(rows)
    assert rows["mnist-cnn"]["input_shape"] == [1, 28, 28] and rows["resnet20"]["input_shape"] == [3, 32, 32]
    assert rows["mnist-cnn"]["parameters"] == sum(p.numel() for p in ann2snn.models.create("mnist-cnn").parameters())
    assert "784-1200-1200-10" in rows["mnist-mlp"]["description"]
