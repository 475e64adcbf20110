"""The operator registry, parametrized over every record: each pattern matches a node built for it, folding keeps
the QANN function for every operator that folding meets, and every kind the registry can leave in a spiking
network has an exporter builder. Adding a record without a sample here fails a test."""

from __future__ import annotations

import operator

import pytest
import torch
from helpers import Fn, level_mismatch_fraction, randomize
from opnets import Residual, conv, q
from tnets import TinySwin, TinyViT, sq, uq
from torch import fx, nn
from torch.nn import functional as F

from ann2snn.exporters.common import STATEFUL, STATELESS
from ann2snn.layers import QCFS, Affine, ClassToken, MatMul, Multiply, SignedQCFS
from ann2snn.neurons import BipolarNeuron, Compensated, IFNeuron, MultiBitNeuron, SpikingMaxPool2d
from ann2snn.ops import RECORDS, REGISTRY, Fold, OpRecord, Spiking, record_for, stateful_kinds, stateless_kinds
from ann2snn.ops.registry import _index
from ann2snn.passes import DEFAULT_PASSES, run_pipeline, trace

FOLD_PASSES = DEFAULT_PASSES[:3]  # normalize, fold_batchnorm, fold_thresholds: still a QANN, in threshold units


def _iadd_graph() -> fx.GraphModule:
    """``operator.iadd`` is never produced by symbolic tracing (``+=`` traces as ``add``): build the node."""
    g = fx.Graph()
    x = g.placeholder("x")
    g.output(g.call_function(operator.iadd, (x, x)))
    return fx.GraphModule(nn.Module(), g)


C2, D1, FLAT, T3 = (2, 4, 4), (2, 8), (8,), (3, 4)


class Param(nn.Module):
    """``x + P`` with a parameter P read in forward (a position embedding)."""

    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, *T3))

    def forward(self, x):
        return x + self.pos


class Two(nn.Module):
    """A two-input module applied to ``x`` and its transpose (``x`` for an elementwise one)."""

    def __init__(self, m: nn.Module, transpose: bool = True) -> None:
        super().__init__()
        self.m, self.transpose = m, transpose

    def forward(self, x):
        return self.m(x, x.transpose(1, 2) if self.transpose else x)

#: pattern -> (model containing it, input shape of one sample); a pattern is a class, a function,
#: ("method", name) or ("opcode", name)
PATTERN_SAMPLES = {
    ("opcode", "placeholder"): (lambda: nn.Flatten(), C2),
    ("opcode", "output"): (lambda: nn.Flatten(), C2),
    ("method", "size"): (lambda: Fn(lambda x: x.view(x.size(0), -1)), C2),
    ("method", "dim"): (lambda: Fn(lambda x: x.flatten(x.dim() - 3)), C2),
    operator.getitem: (lambda: Fn(lambda x: x.view(x.size()[0], -1)), C2),
    nn.Conv1d: (lambda: nn.Conv1d(2, 3, 3), D1),
    nn.Conv2d: (lambda: nn.Conv2d(2, 3, 3), C2),
    nn.Linear: (lambda: nn.Linear(8, 3), FLAT),
    nn.BatchNorm1d: (lambda: nn.BatchNorm1d(8), FLAT),
    nn.BatchNorm2d: (lambda: nn.BatchNorm2d(2), C2),
    Affine: (lambda: Affine(torch.full((1, 2, 1, 1), 2.0)), C2),
    QCFS: (lambda: QCFS(4), C2),
    SignedQCFS: (lambda: SignedQCFS(4, alpha=0.1), C2),
    nn.AvgPool1d: (lambda: nn.AvgPool1d(2), D1),
    nn.AvgPool2d: (lambda: nn.AvgPool2d(2), C2),
    nn.AdaptiveAvgPool1d: (lambda: nn.AdaptiveAvgPool1d(1), D1),
    nn.AdaptiveAvgPool2d: (lambda: nn.AdaptiveAvgPool2d(1), C2),
    F.avg_pool1d: (lambda: Fn(lambda x: F.avg_pool1d(x, 2)), D1),
    F.avg_pool2d: (lambda: Fn(lambda x: F.avg_pool2d(x, 2)), C2),
    F.adaptive_avg_pool1d: (lambda: Fn(lambda x: F.adaptive_avg_pool1d(x, 1)), D1),
    F.adaptive_avg_pool2d: (lambda: Fn(lambda x: F.adaptive_avg_pool2d(x, 1)), C2),
    torch.mean: (lambda: Fn(lambda x: torch.mean(x, (2, 3))), C2),
    ("method", "mean"): (lambda: Fn(lambda x: x.mean((2, 3))), C2),
    nn.MaxPool2d: (lambda: nn.MaxPool2d(2), C2),
    F.max_pool2d: (lambda: Fn(lambda x: F.max_pool2d(x, 2)), C2),
    nn.ReLU: (lambda: nn.ReLU(), C2),
    F.relu: (lambda: Fn(lambda x: F.relu(x)), C2),
    torch.relu: (lambda: Fn(lambda x: torch.relu(x)), C2),
    ("method", "relu"): (lambda: Fn(lambda x: x.relu()), C2),
    nn.Identity: (lambda: nn.Identity(), C2),
    nn.Dropout: (lambda: nn.Dropout(0.5), C2),
    nn.Dropout1d: (lambda: nn.Dropout1d(0.5), D1),
    nn.Dropout2d: (lambda: nn.Dropout2d(0.5), C2),
    nn.AlphaDropout: (lambda: nn.AlphaDropout(0.5), C2),
    F.dropout: (lambda: Fn(lambda x: F.dropout(x, 0.5, False)), C2),
    F.dropout1d: (lambda: Fn(lambda x: F.dropout1d(x, 0.5, False)), D1),
    F.dropout2d: (lambda: Fn(lambda x: F.dropout2d(x, 0.5, False)), C2),
    F.alpha_dropout: (lambda: Fn(lambda x: F.alpha_dropout(x, 0.5, False)), C2),
    ("method", "contiguous"): (lambda: Fn(lambda x: x.contiguous()), C2),
    ("method", "clone"): (lambda: Fn(lambda x: x.clone()), C2),
    ("method", "detach"): (lambda: Fn(lambda x: x.detach()), C2),
    operator.add: (lambda: Fn(lambda x: x + x), C2),
    operator.iadd: (_iadd_graph, C2),
    torch.add: (lambda: Fn(lambda x: torch.add(x, x)), C2),
    ("method", "add"): (lambda: Fn(lambda x: x.add(x)), C2),
    torch.cat: (lambda: Fn(lambda x: torch.cat([x, x], 1)), C2),
    torch.concat: (lambda: Fn(lambda x: torch.concat([x, x], 1)), C2),
    nn.Flatten: (lambda: nn.Flatten(), C2),
    torch.flatten: (lambda: Fn(lambda x: torch.flatten(x, 1)), C2),
    ("method", "flatten"): (lambda: Fn(lambda x: x.flatten(1)), C2),
    torch.reshape: (lambda: Fn(lambda x: torch.reshape(x, (-1, 32))), C2),
    ("method", "view"): (lambda: Fn(lambda x: x.view(-1, 32)), C2),
    ("method", "reshape"): (lambda: Fn(lambda x: x.reshape(-1, 32)), C2),
    ("opcode", "get_attr"): (Param, T3),
    nn.Unflatten: (lambda: nn.Unflatten(1, (2, 4)), FLAT),
    torch.permute: (lambda: Fn(lambda x: torch.permute(x, (0, 2, 1))), T3),
    torch.transpose: (lambda: Fn(lambda x: torch.transpose(x, 1, 2)), T3),
    torch.swapaxes: (lambda: Fn(lambda x: torch.swapaxes(x, 1, 2)), T3),
    torch.movedim: (lambda: Fn(lambda x: torch.movedim(x, 1, 2)), T3),
    torch.roll: (lambda: Fn(lambda x: torch.roll(x, 1, 2)), T3),
    torch.narrow: (lambda: Fn(lambda x: torch.narrow(x, 2, 1, 2)), T3),
    torch.select: (lambda: Fn(lambda x: torch.select(x, 1, 0)), T3),
    torch.squeeze: (lambda: Fn(lambda x: torch.squeeze(x, 1)), (1, 4)),
    torch.unsqueeze: (lambda: Fn(lambda x: torch.unsqueeze(x, 1)), T3),
    torch.unflatten: (lambda: Fn(lambda x: torch.unflatten(x, 2, (2, 2))), T3),
    **{("method", m): (lambda m=m, a=a: Fn(lambda x: getattr(x, m)(*a)), T3) for m, a in {
        "permute": (0, 2, 1), "transpose": (1, 2), "swapaxes": (1, 2), "movedim": (1, 2), "roll": (1, 2),
        "narrow": (2, 1, 2), "select": (1, 0), "squeeze": (), "unsqueeze": (1,), "unflatten": (2, (2, 2)),
        "expand": (-1, 3, 4), "repeat": (1, 2, 1), "chunk": (2, 2), "split": (2, 2), "unbind": (1,),
        "tensor_split": (2, 2), "mul": (2.0,), "div": (2.0,), "sub": (1.0,), "softmax": (-1,)}.items()},
    ("method", "matmul"): (lambda: Fn(lambda x: x.matmul(x.transpose(1, 2))), T3),
    ("method", "bmm"): (lambda: Fn(lambda x: x.bmm(x.transpose(1, 2))), T3),
    torch.chunk: (lambda: Fn(lambda x: torch.chunk(x, 2, 2)[1]), T3),
    torch.split: (lambda: Fn(lambda x: torch.split(x, 2, 2)[1]), T3),
    torch.unbind: (lambda: Fn(lambda x: torch.unbind(x, 1)[2]), T3),
    torch.tensor_split: (lambda: Fn(lambda x: torch.tensor_split(x, 2, 2)[0]), T3),
    operator.mul: (lambda: Fn(lambda x: x * 2.0), T3),
    torch.mul: (lambda: Fn(lambda x: torch.mul(x, 2.0)), T3),
    operator.truediv: (lambda: Fn(lambda x: x / 2.0), T3),
    torch.div: (lambda: Fn(lambda x: torch.div(x, 2.0)), T3),
    operator.sub: (lambda: Fn(lambda x: x - 1.0), T3),
    torch.sub: (lambda: Fn(lambda x: torch.sub(x, 1.0)), T3),
    ClassToken: (lambda: ClassToken(4), T3),
    MatMul: (lambda: Two(MatMul()), T3),
    operator.matmul: (lambda: Fn(lambda x: x @ x.transpose(1, 2)), T3),
    torch.matmul: (lambda: Fn(lambda x: torch.matmul(x, x.transpose(1, 2))), T3),
    torch.bmm: (lambda: Fn(lambda x: torch.bmm(x, x.transpose(1, 2))), T3),
    Multiply: (lambda: Two(Multiply(), transpose=False), T3),
    nn.Softmax: (lambda: nn.Softmax(-1), T3),
    F.softmax: (lambda: Fn(lambda x: F.softmax(x, -1)), T3),
    torch.softmax: (lambda: Fn(lambda x: torch.softmax(x, -1)), T3),
    nn.LayerNorm: (lambda: nn.LayerNorm(4), T3),
    nn.GELU: (lambda: nn.GELU(), T3),
    F.gelu: (lambda: Fn(F.gelu), T3),
    Compensated: (lambda: Compensated(nn.GELU(), 1), T3),
    IFNeuron: (lambda: IFNeuron(), C2),
    MultiBitNeuron: (lambda: MultiBitNeuron(max_spikes=2), C2),
    BipolarNeuron: (lambda: BipolarNeuron(n_min=-4, n_max=4), C2),
    SpikingMaxPool2d: (lambda: SpikingMaxPool2d(2), C2),
}


def _patterns(r: OpRecord) -> list:
    return ([("opcode", o) for o in r.opcodes] + list(r.modules) + list(r.functions)
            + [("method", m) for m in r.methods])


def _pattern_id(p) -> str:
    return ":".join(p) if isinstance(p, tuple) else getattr(p, "__name__", str(p))


PATTERNS = [pytest.param(r, p, id=f"{r.name}-{_pattern_id(p)}") for r in REGISTRY for p in _patterns(r)]


def _is_pattern_node(node: fx.Node, pattern, modules) -> bool:
    if isinstance(pattern, tuple):
        how, name = pattern
        return node.op == name if how == "opcode" else (node.op == "call_method" and node.target == name)
    if isinstance(pattern, type):
        return node.op == "call_module" and type(modules[node.target]) is pattern
    return node.op == "call_function" and node.target is pattern


#: (record, pattern) -> sample, where two records share a pattern (one of them conditionally)
RECORD_PATTERN_SAMPLES = {("layout", operator.getitem): (lambda: Fn(lambda x: x[:, 0::2, 1:]), T3)}


@pytest.mark.parametrize("record, pattern", PATTERNS)
def test_every_pattern_matches_a_node_built_for_it(record, pattern):
    sample = RECORD_PATTERN_SAMPLES.get((record.name, pattern), PATTERN_SAMPLES.get(pattern))
    assert sample, f"add a sample model for pattern {_pattern_id(pattern)} of {record.name!r}"
    build, shape = sample
    model = build()
    model = model if isinstance(model, fx.GraphModule) else nn.Sequential(model)  # a module is called, not traced
    gm = trace(model.eval(), example_input=torch.rand(2, *shape))
    modules = dict(gm.named_modules())
    nodes = [n for n in gm.graph.nodes if _is_pattern_node(n, pattern, modules)]
    assert nodes, f"the sample for {_pattern_id(pattern)} has no such node: {gm.graph}"
    assert all(record_for(n, modules) is record for n in nodes)


def test_getitem_that_is_not_shape_arithmetic_is_a_layout_op():
    gm = trace(Fn(lambda x: x[:, 0]), example_input=torch.rand(2, *C2))
    modules = dict(gm.named_modules())
    item = next(n for n in gm.graph.nodes if n.target is operator.getitem)
    assert record_for(item, modules) is RECORDS["layout"]


def test_two_records_with_one_pattern_are_refused():
    a = OpRecord("a", "linear", modules=(nn.Linear,))
    b = OpRecord("b", "linear", modules=(nn.Linear,))
    with pytest.raises(ValueError, match="both match"):
        _index((a, b))


# --- folding keeps the QANN function, per record -----------------------------------------------------------------


def head(features: int, k: int = 3) -> list[nn.Module]:
    return [nn.Flatten(), nn.Linear(features, k)]


class Branches(nn.Module):
    """``cat`` along channels of two differently scaled streams, and along the last dim of a sequence."""

    def __init__(self) -> None:
        super().__init__()
        self.a, self.qa, self.b, self.qb = conv(2, 3), q(3), conv(2, 2), q(2)
        self.c, self.qc, self.fc = nn.Conv2d(5, 4, 1), q(4), nn.Linear(4 * 36 * 2, 3)

    def forward(self, x):
        h = self.qc(self.c(torch.cat([self.qa(self.a(x)), self.qb(self.b(x))], dim=1)))
        return self.fc(torch.flatten(torch.cat([h, h], -1), 1))


def _signed_net() -> nn.Module:
    learned = SignedQCFS(4, learn_negative=True, granularity="channel", num_channels=4)
    with torch.no_grad():
        learned.lam_neg.copy_(torch.tensor([0.1, 0.3, 0.7, 1.2]))
    return nn.Sequential(conv(), SignedQCFS(4, alpha=0.2, granularity="channel", num_channels=4), conv(4, 4),
                         learned, conv(4, 4), q(4), *head(4 * 36))


#: record name -> builders of tiny QANNs (input 2×6×6 unless the builder sets ``input_shape``) that contain it
#: between quantizers with non-trivial thresholds, so folding must move scales through it
FOLD_SAMPLES = {
    "conv": [lambda: nn.Sequential(conv(), q(4), conv(4, 4, groups=2), q(4), *head(4 * 36)),
             lambda: _shaped(nn.Sequential(nn.Conv1d(2, 4, 3, padding=1), q(4), nn.Conv1d(4, 4, 3), q(4),
                                           *head(4 * 6)), (2, 8))],
    "linear": [lambda: _shaped(nn.Sequential(nn.Flatten(), nn.Linear(8, 5), QCFS(4, granularity="neuron",
                                             num_channels=5), nn.Linear(5, 4), q(), nn.Linear(4, 3)), (8,)),
               lambda: _shaped(nn.Sequential(nn.Linear(6, 5), QCFS(4, granularity="neuron", num_channels=5),
                                             nn.Linear(5, 4), q(), *head(3 * 4)), (3, 6))],
    "batchnorm": [lambda: nn.Sequential(conv(), nn.BatchNorm2d(4), q(4), nn.BatchNorm2d(4), conv(4, 4), q(4),
                                        *head(4 * 36)),
                  lambda: _shaped(nn.Sequential(nn.Linear(8, 5), nn.BatchNorm1d(5), q(5), nn.Linear(5, 3)), (8,))],
    "affine": [lambda: nn.Sequential(conv(), q(4), Affine(torch.tensor([0.5, 2.0, -1.0, 1.5]).reshape(1, 4, 1, 1),
                                                         torch.full((1, 4, 1, 1), 0.1)), conv(4, 4), q(4),
                                     *head(4 * 36))],
    "qcfs": [lambda: nn.Sequential(conv(), q(), conv(4, 4), QCFS(4, granularity="neuron", num_channels=6, dim=-1),
                                   conv(4, 4), q(4), *head(4 * 36))],
    "signed_qcfs": [_signed_net],
    "avgpool": [lambda: nn.Sequential(conv(), q(4), nn.AvgPool2d(2), conv(4, 4), q(4),
                                      Fn(lambda x: F.adaptive_avg_pool2d(x, 1)), *head(4)),
                lambda: nn.Sequential(conv(), q(4), Fn(lambda x: x.mean((2, 3))), nn.Linear(4, 3))],
    "maxpool": [lambda: nn.Sequential(conv(), q(4), nn.MaxPool2d(2), conv(4, 4), q(4),
                                      Fn(lambda x: F.max_pool2d(x, 3)), *head(4))],
    "relu": [lambda: nn.Sequential(conv(), q(4), nn.ReLU(), conv(4, 4), q(4), Fn(F.relu), *head(4 * 36))],
    "identity": [lambda: nn.Sequential(conv(), q(4), nn.Dropout(0.3), conv(4, 4), nn.Identity(), q(4),
                                       Fn(lambda x: x.contiguous()), *head(4 * 36))],
    "add": [Residual],
    "cat": [Branches],
    "flatten": [lambda: nn.Sequential(conv(), q(4), Fn(lambda x: torch.flatten(x, 1)), nn.Linear(4 * 36, 5),
                                      q(), nn.Linear(5, 3))],
    "reshape": [lambda: nn.Sequential(conv(), q(4), Fn(lambda x: x.view(x.size(0), -1)), nn.Linear(4 * 36, 3))],
    # transformer operators: the tiny ViT (class token, position embedding, attention with unbind, scale, softmax,
    # products, LayerNorm, head-/neuron-wise thresholds) and Swin block (roll, windows, slicing, bias, mask)
    "layout": [TinyViT, TinySwin],
    "split": [TinyViT],
    "elementwise": [TinyViT, TinySwin],
    "class_token": [TinyViT],
    "matmul": [TinyViT, TinySwin],
    "softmax": [TinyViT],
    "layernorm": [lambda: TinyViT(cls_token=False), TinySwin],
    "multiply": [lambda: _shaped(nn.Sequential(nn.Linear(4, 4), sq(4, -1), Two(Multiply(), transpose=False),
                                               uq(4, -1), nn.Linear(4, 3)), T3)],
    "gelu": [lambda: _shaped(nn.Sequential(nn.Linear(4, 6), nn.GELU(), uq(6, -1), nn.Linear(6, 3)), T3)],
}
FOLDED = [pytest.param(r, i, id=f"{r.name}-{i}") for r in REGISTRY
          if r.spiking not in (Spiking.STRUCTURAL, Spiking.STATEFUL) for i in range(len(FOLD_SAMPLES.get(r.name, [0])))]


def _shaped(model: nn.Module, shape) -> nn.Module:
    model.input_shape = shape
    return model


def _levels(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Every quantizer output as integer levels: ``y·L/θ``, or ``y·L/θ_n`` where a signed one is negative."""
    out = []

    def hook(mod, args, y):
        th = mod.broadcast_threshold(y.dim())
        if mod.signed:
            th = torch.where(y >= 0, th, mod.broadcast_neg_threshold(y.dim()))
        out.append(torch.round(y * mod.levels / th))

    hooks = [m.register_forward_hook(hook) for m in model.modules() if isinstance(m, QCFS)]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for h in hooks:
            h.remove()
    return out


@pytest.mark.parametrize("record, i", FOLDED)
def test_folding_keeps_the_qann_function(record, i):
    assert record.name in FOLD_SAMPLES, f"add a tiny QANN containing {record.name!r} to FOLD_SAMPLES"
    torch.manual_seed(i)
    model = randomize(FOLD_SAMPLES[record.name][i](), seed=i, theta=(0.3, 2.0))
    x = torch.randn(16, *getattr(model, "input_shape", (2, 6, 6)), generator=torch.Generator().manual_seed(i))
    traced = trace(model, example_input=x)
    mods = dict(traced.named_modules())
    assert any(record_for(n, mods) is record for n in traced.graph.nodes), "the sample must contain the operator"
    folded, report = run_pipeline(model, example_input=x, passes=FOLD_PASSES)
    fmods = dict(folded.named_modules())
    left = {record_for(n, fmods).name for n in folded.graph.nodes}
    assert not left & {"batchnorm", "relu", "identity", "split", "elementwise"}
    quantizers = [m for m in folded.modules() if isinstance(m, QCFS)]
    assert quantizers and all(bool((m.threshold == 1).all()) for m in quantizers)
    assert report.counts()["thresholds_folded"] == len(quantizers)
    ref, got = _levels(model, x), _levels(folded, x)
    assert sum(int((r != 0).sum()) for r in ref) > 0, "the sample should reach nonzero levels"
    assert level_mismatch_fraction(ref, got) == 0.0  # every quantized activation equal
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("record", [r for r in REGISTRY if r.fold is not Fold.BARRIER and r.spiking is not
                                    Spiking.STRUCTURAL], ids=lambda r: r.name)
def test_every_folding_role_has_a_sample(record):
    assert FOLD_SAMPLES.get(record.name), f"add a tiny QANN containing {record.name!r} to FOLD_SAMPLES"


# --- the exporters have a builder for every kind a spiking network can hold -------------------------------------


@pytest.mark.parametrize("kind", stateful_kinds())
def test_every_stateful_kind_has_an_exporter_builder(kind):
    assert kind in STATEFUL, f"spiking operator kind {kind!r} has no builder in ann2snn.exporters.common.STATEFUL"


@pytest.mark.parametrize("kind", stateless_kinds())
def test_every_stateless_kind_has_an_exporter_emitter(kind):
    assert kind in STATELESS, f"node kind {kind!r} has no emitter in ann2snn.exporters.common.STATELESS"


def test_every_exporter_builder_belongs_to_a_record():
    assert set(STATEFUL) <= set(stateful_kinds())


@pytest.mark.parametrize("record", [r for r in REGISTRY if r.spiking is Spiking.STATEFUL], ids=lambda r: r.name)
def test_spiking_records_name_their_classes_kind(record):
    assert all(cls.kind == record.stateful_kind for cls in record.modules)
    assert record.kind == "stateful"


@pytest.mark.parametrize("record", [r for r in REGISTRY if r.spiking is Spiking.REPLACED], ids=lambda r: r.name)
def test_replacements_are_registered_spiking_operators(record):
    """Converting each replaced operator's fold sample yields only registered spiking operators in its place."""
    model = randomize(FOLD_SAMPLES[record.name][0](), theta=(0.3, 2.0))
    x = torch.randn(2, *getattr(model, "input_shape", (2, 6, 6)))
    for convention in ("rate", "exact"):
        gm, report = run_pipeline(model, example_input=x, options={"to_spiking": {"convention": convention}})
        mods = dict(gm.named_modules())
        recs = [record_for(n, mods) for n in gm.graph.nodes]
        assert not [r.name for r in recs if r.spiking is Spiking.REPLACED]
        stateful = [r for r in recs if r.spiking is Spiking.STATEFUL]
        counted = sum(v for k, v in report.counts().items() if k in {r.accounting.counter for r in stateful})
        assert stateful and counted == len(stateful)
