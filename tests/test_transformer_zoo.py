"""The zoo's transformers: ViT and Swin build to the conversion contract (batch at dim 0, no shape reads, HN-QCFS
quantizers where the seed puts them), train, go two-stage, and `inspect thresholds` reports their spreads."""

from __future__ import annotations

import json

import pytest
import torch
from click.testing import CliRunner
from torch import nn

import ann2snn
from ann2snn.cli.main import cli
from ann2snn.data import load_digits
from ann2snn.errors import Ann2SnnError
from ann2snn.inspect import inspect_thresholds, spread_tables, threshold_stats
from ann2snn.layers import QCFS, ClassToken, SignedQCFS, inverse_softplus, qcfs_modules, to_channelwise
from ann2snn.models.swin import shift_mask, window_merge, window_partition
from ann2snn.passes.trace import LEAF_MODULES, symbolic_trace
from ann2snn.train import TrainConfig, decay_groups, family_defaults, make_optimizer

#: small versions (same structure) of every zoo transformer
TINY = {
    "vit-tiny": dict(dim=16, depth=2, heads=2),
    "vit-digits": dict(dim=16, depth=1),
    "swin-tiny": dict(dim=8, heads=(2, 2)),
    "swin-digits": dict(dim=8, depths=(1, 1)),
}
HEAD = ("quant_q", "quant_k", "quant_v", "quant_attn", "quant_out")


def _tiny(name, **kw):
    return ann2snn.models.create(name, levels=4, **{**TINY[name], **kw})


@pytest.mark.parametrize("name", sorted(TINY))
@pytest.mark.parametrize("options", [{}, {"granularity": "layer"}, {"norm": "bn"}, {"act": "relu"}])
def test_builds_runs_and_traces_without_shape_reads(name, options):
    net = _tiny(name, **options).eval()
    x = torch.randn(3, *net.input_shape)
    assert net(x).shape == (3, 10)
    gm = symbolic_trace(net)
    torch.testing.assert_close(gm(x), net(x))
    _assert_batch_untouched(gm)
    quantizers = qcfs_modules(net)
    if options.get("act") == "relu":
        assert not quantizers and any(isinstance(m, nn.GELU) for m in net.modules())
    else:
        assert quantizers and not any(isinstance(m, nn.GELU) for m in net.modules())


def test_class_token_variant_traces_with_the_token_as_one_operator():
    net = _tiny("vit-tiny", cls_token=True).eval()
    x = torch.randn(2, 1, 28, 28)
    gm = symbolic_trace(net, leaf_modules=(*LEAF_MODULES, ClassToken))
    torch.testing.assert_close(gm(x), net(x))
    _assert_batch_untouched(gm)
    assert net.pos.shape == (1, 17, 16)  # 16 patches + the class token


def _assert_batch_untouched(gm):
    """No ``x.shape`` / ``x.size()`` anywhere; on values derived from the input, reshapes put -1 (only) at the batch
    dim and transposes/permutes keep dim 0 where it is."""
    from_input = set()
    for node in gm.graph.nodes:
        assert not (node.op == "call_method" and node.target in ("size", "dim")), node.format_node()
        assert not (node.op == "call_function" and node.target is getattr), node.format_node()  # x.shape
        if node.op == "placeholder" or any(a in from_input for a in node.all_input_nodes):
            from_input.add(node)
        else:
            continue
        if node.op == "call_method" and node.target in ("reshape", "view"):
            dims = node.args[1:]
            assert dims[0] == -1 and all(isinstance(d, int) and d > 0 for d in dims[1:]), node.format_node()
        if node.op == "call_method" and node.target == "transpose":
            assert 0 not in node.args[1:], node.format_node()
        if node.op == "call_method" and node.target == "permute":
            assert node.args[1] == 0, node.format_node()


@pytest.mark.parametrize("name, head_shape", [("vit-tiny", (1, 2, 1, 1)), ("swin-tiny", (1, 1, 2, 1, 1))])
def test_hn_qcfs_thresholds_where_the_seed_puts_them(name, head_shape):
    net = _tiny(name)
    rank = len(head_shape)
    block = net.blocks[0] if name.startswith("vit") else net.stages[0][0]
    attn = block.attn
    for q in ("quant_q", "quant_k", "quant_v", "quant_out"):
        m = getattr(attn, q)
        assert isinstance(m, SignedQCFS) and m.granularity == "head"
        assert m.broadcast_threshold(rank).shape == head_shape and m.threshold.shape == (2,)
    assert type(attn.quant_attn) is QCFS and attn.quant_attn.broadcast_threshold(rank).shape == head_shape
    features = 16 if rank == 4 else 8
    for m in (block.quant_norm1, block.quant_norm2):
        assert isinstance(m, SignedQCFS) and m.granularity == "neuron" and m.threshold.shape == (features,)
    hidden = block.mlp.act
    assert type(hidden) is QCFS and hidden.granularity == "neuron" and hidden.threshold.shape == (2 * features,)
    assert set(net.threshold_plan()) == {n for n, _ in qcfs_modules(net)}  # every quantizer has a stage-2 place
    layer = _tiny(name, granularity="layer")
    assert all(q.granularity == "layer" and q.threshold.shape == (1,) for _, q in qcfs_modules(layer))
    only_heads = _tiny(name, granularity="head")
    assert {n.rsplit(".", 1)[-1] for n, q in qcfs_modules(only_heads) if q.granularity == "head"} == set(HEAD)
    assert all(q.granularity == "layer" for n, q in qcfs_modules(only_heads) if n.rsplit(".", 1)[-1] not in HEAD)


@pytest.mark.parametrize("name", ["vit-tiny", "swin-tiny"])
def test_stage_two_plan_keeps_the_function_and_matches_a_head_neuron_build(name):
    torch.manual_seed(1)
    net = _tiny(name, granularity="layer").eval()
    for i, (_, q) in enumerate(qcfs_modules(net)):  # distinct layer values, so a wrong copy would show
        q.lam.data.fill_(float(inverse_softplus(0.5 + 0.1 * i)))
    x = torch.randn(4, *net.input_shape)
    before = net(x)
    to_channelwise(net, x[:2], granularity=net.threshold_plan("head-neuron"))
    torch.testing.assert_close(net(x), before)
    fresh = _tiny(name)
    fresh.load_state_dict(net.state_dict())  # same parameter shapes as a model built head-neuron
    assert {n: (q.granularity, q.dim) for n, q in qcfs_modules(net)} == \
        {n: (q.granularity, q.dim) for n, q in qcfs_modules(fresh)}


def test_windows_stay_a_dim_of_their_own_and_the_shift_mask_is_minus_100():
    x = torch.arange(2 * 8 * 8 * 3, dtype=torch.float32).reshape(2, 8, 8, 3)
    w = window_partition(x, 8, 4, 3)
    assert w.shape == (2, 4, 16, 3)
    torch.testing.assert_close(w[1, 1].reshape(4, 4, 3), x[1, :4, 4:])  # window (row 0, column 1) of image 1
    torch.testing.assert_close(window_merge(w, 8, 4, 3), x)
    mask = shift_mask(8, 4, 2)
    assert mask.shape == (4, 1, 16, 16) and set(mask.unique().tolist()) == {-100.0, 0.0}
    assert (mask[0] == 0).all()  # the top-left window holds one region of the rolled image
    assert int((mask[3, 0] == 0).sum()) == 4 * 4 ** 2  # the bottom-right window: four regions of 4 tokens


def test_bad_options_are_one_line_errors():
    with pytest.raises(Ann2SnnError, match="granularity"):
        ann2snn.models.create("vit-tiny", granularity="channel")
    with pytest.raises(Ann2SnnError, match="act"):
        ann2snn.models.create("vit-tiny", act="signed")
    with pytest.raises(Ann2SnnError, match="divisible"):
        ann2snn.models.create("vit-tiny", dim=30, heads=4)
    with pytest.raises(Ann2SnnError, match="patch"):
        ann2snn.models.create("vit-tiny", image_size=30)
    with pytest.raises(Ann2SnnError, match="norm"):
        ann2snn.models.create("swin-digits", norm="group")


@pytest.fixture
def one_thread():
    """Tiny transformers are per-op overhead, not FLOPs: one thread is faster, and far faster on a shared CPU."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.mark.parametrize("name", ["vit-digits", "swin-digits"])
def test_a_few_seconds_of_digits_training_reduce_the_loss(name, one_thread):
    data = load_digits()
    x, y = data.x_train[:64], data.y_train[:64]
    net = _tiny(name)
    opt = torch.optim.Adam(net.parameters(), lr=5e-3)
    losses = []
    for _ in range(40):  # the loss sits near ln 10 for the first ~20 steps (class prior), then falls
        loss = nn.functional.cross_entropy(net(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < losses[0] - 0.3, losses


def test_transformer_training_defaults_and_decay_groups():
    vit, cnn = _tiny("vit-digits"), ann2snn.models.create("digits-cnn", channels=4)
    cfg = family_defaults(TrainConfig(arch="vit-digits"), vit)
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.warmup) == ("adamw", 2e-3, 0.05, 1.0)
    cfg = family_defaults(TrainConfig(arch="digits-cnn"), cnn)
    assert (cfg.optimizer, cfg.lr, cfg.weight_decay, cfg.warmup) == ("adam", 2e-3, 0.0, 0.0)
    assert family_defaults(TrainConfig(optimizer="sgd", lr=0.5), vit).lr == 0.5
    decay, keep = decay_groups(vit, 0.05)
    names = {id(p): n for n, p in vit.named_parameters()}
    assert all(p.ndim >= 2 for p in decay["params"]) and id(vit.pos) not in {id(p) for p in decay["params"]}
    assert {names[id(p)].rsplit(".", 1)[-1] for p in keep["params"]} >= {"pos", "lam", "bias", "weight"}
    assert keep["weight_decay"] == 0.0 and decay["weight_decay"] == 0.05
    opt, sched = make_optimizer([nn.Parameter(torch.zeros(1))], "adamw", lr=1.0, weight_decay=0.0, steps=10,
                                warmup_steps=4)
    lrs = []
    for _ in range(10):
        lrs.append(sched.get_last_lr()[0])
        opt.step()
        sched.step()
    assert lrs[:5] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0]) and lrs[5] < 1.0 and lrs[-1] < 0.1


def test_spread_tables_on_hand_set_thresholds():
    net = _tiny("vit-digits", positive="none")  # θ = λ, set directly
    attn, block = net.blocks[0].attn, net.blocks[0]
    attn.quant_q.lam.data = torch.tensor([1.0, 3.0])
    hidden = torch.ones(32)
    hidden[:4] = torch.tensor([1.0, 2.0, 4.0, 5.0])  # θ = (1, 2, 4, 5, 1, …, 1)
    block.mlp.act.lam.data = hidden
    rows = {r["name"]: r for r in inspect_thresholds(net)}
    q = rows["blocks.0.attn.quant_q"]
    assert (q["block"], q["max_diff"], q["avg_diff"], q["mean_abs_deviation"]) == ("blocks.0", 2.0, 2.0, 1.0)
    s = threshold_stats(hidden)
    mean = (1 + 2 + 4 + 5 + 28) / 32
    assert s["max_diff"] == 4.0
    assert s["mean_abs_deviation"] == pytest.approx((abs(1 - mean) * 29 + abs(2 - mean) + abs(4 - mean)
                                                     + abs(5 - mean)) / 32)
    # Σ over unordered pairs: among (1, 2, 4, 5) 1+3+4+2+3+1 = 14, plus each of 2, 4, 5 against 28 more ones
    assert s["avg_diff"] == pytest.approx((14 + 28 * (1 + 3 + 4)) / (32 * 31 / 2))
    tables = spread_tables(list(rows.values()))
    assert tables["head"]["blocks"] == ["blocks.0"]
    by = {r["quantizer"]: r for r in tables["head"]["rows"]}
    assert list(by) == ["q", "k", "v", "softmax", "attn·V"]
    assert (by["q"]["max_diff"], by["q"]["avg_diff"], by["q"]["count"]) == ([2.0], [2.0], [2])
    assert by["k"]["max_diff"] == [0.0]
    neuron = {r["quantizer"]: r for r in tables["neuron"]["rows"]}
    assert list(neuron) == ["LN1 out", "LN2 out", "MLP hidden"]
    assert neuron["MLP hidden"]["max_diff"] == [4.0] and neuron["MLP hidden"]["count"] == [32]


def test_cli_trains_two_stage_on_digits_and_inspect_shows_head_and_neuron_spreads(tmp_path, one_thread):
    out = tmp_path / "v.pt"
    kwargs = json.dumps({"dim": 8, "depth": 1})
    r = CliRunner().invoke(cli, ["train", "--arch", "vit-digits", "--data", "digits", "--granularity", "head-neuron",
                                  "--two-stage", "1,1", "--arch-kwargs", kwargs, "--batch-size", "256", "-o", str(out),
                                  "--json"])
    assert r.exit_code == 0, r.output
    summary = json.loads(r.output)
    assert [h["stage"] for h in summary["history"]] == [1, 2]
    net = ann2snn.load(out)
    assert net.arch_kwargs["granularity"] == "head-neuron" and net.arch_kwargs["dim"] == 8
    grans = {n.rsplit(".", 1)[-1]: q.granularity for n, q in qcfs_modules(net)}
    assert all(grans[h] == "head" for h in HEAD) and grans["quant_norm1"] == grans["act"] == "neuron"
    assert net.checkpoint_meta["train_config"]["optimizer"] == "adamw"
    assert (tmp_path / "v.stage1.pt").exists()
    r = CliRunner().invoke(cli, ["inspect", "thresholds", str(out), "--json"])
    assert r.exit_code == 0, r.output
    tables = json.loads(r.output)["spread_tables"]
    assert [row["quantizer"] for row in tables["head"]["rows"]] == ["q", "k", "v", "softmax", "attn·V"]
    assert tables["head"]["rows"][0]["count"] == [2] and tables["neuron"]["rows"][-1]["count"] == [16]
    r = CliRunner().invoke(cli, ["inspect", "thresholds", str(out)])
    assert r.exit_code == 0 and "Head-wise thresholds (H-QCFS)" in r.output and "MLP hidden" in r.output
