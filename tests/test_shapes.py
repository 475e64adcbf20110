"""Shape arithmetic in forward (``x.shape[i]``, ``x.size(i)``, ``B, C, H, W = x.shape``, ``x.dim()``, arithmetic on
them): resolved by :func:`ann2snn.passes.shape_arith.resolve_shape_arithmetic` before conversion, so such QANNs
convert, export and verify; a use of the batch size that would bake the traced batch into the graph is refused in
one line naming the node and the fix."""

from __future__ import annotations

import operator

import pytest
import torch
from helpers import randomize
from opnets import conv, q
from torch import nn

import ann2snn
from ann2snn.errors import UnsupportedNodeError
from ann2snn.evaluate import exact_logits_mask
from ann2snn.passes import trace
from ann2snn.passes.shape_arith import resolve_shape_arithmetic


@pytest.fixture(autouse=True)
def _one_thread():
    """Tiny graphs: one thread is fastest (oneDNN's thread barriers dominate tiny convs on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def unpack(x):
    B, C, H, W = x.shape
    return x.view(B, -1)


def unpack_sizes(x):
    B, C, H, W = x.shape
    return x.reshape(B, C * H * W)


def sequence_mean(x):
    B, C, H, W = x.size()
    return x.view(B, C, H * W).mean(-1).repeat(1, H * W // C * 4)  # [B, 4] -> [B, 144]: sizes as numbers


#: forward spellings that read shapes; each maps [B, 4, 6, 6] to [B, 144]
FORMS = {
    "B, C, H, W = x.shape; x.view(B, -1)": unpack,
    "x.reshape(B, C * H * W)": unpack_sizes,
    "x.view(x.size(0), -1)": lambda x: x.view(x.size(0), -1),
    "x.view(x.shape[0], -1)": lambda x: x.view(x.shape[0], -1),
    "x.view((x.shape[0], -1))": lambda x: x.view((x.shape[0], -1)),
    "x.reshape(x.size()[0], x.size(1) * x.size(2) * x.size(3))":
        lambda x: x.reshape(x.size()[0], x.size(1) * x.size(2) * x.size(3)),
    "x.view(x.shape[:1] + (-1,))": lambda x: x.view(x.shape[:1] + (-1,)),
    "x.view(-1, x.shape[1:].numel())": lambda x: x.view(-1, x.shape[1:].numel()),
    "torch.flatten(x, x.dim() - 3)": lambda x: torch.flatten(x, x.dim() - 3),
    "x.flatten(x.ndim - 3)": lambda x: x.flatten(x.ndim - 3),
    "x.view(x.size(0), x.size(-1) ** 2 * 4)": lambda x: x.view(x.size(0), x.size(-1) ** 2 * 4),
    "B, C, H, W = x.size(); x.view(B, C, H * W).mean(-1) ...": sequence_mean,
}


class Net(nn.Module):
    input_shape = (2, 6, 6)

    def __init__(self, form) -> None:
        super().__init__()
        self.form = form
        self.c1, self.q1, self.fc = conv(2, 4), q(4), nn.Linear(144, 3)

    def forward(self, x):
        return self.fc(self.form(self.q1(self.c1(x))))


def _net(form) -> nn.Module:
    torch.manual_seed(0)
    return randomize(Net(form), seed=1, theta=(0.5, 1.5))


def _shape_nodes(gm) -> list:
    return [n for n in gm.graph.nodes if n.op == "call_method" and n.target in ("size", "dim", "numel")
            or n.op == "call_function" and n.target is getattr]


@pytest.mark.parametrize("form", list(FORMS))
def test_shape_reads_resolve_to_numbers_and_the_batch_to_minus_one(form):
    gm = trace(_net(FORMS[form]), example_input=torch.zeros(2, 2, 6, 6))
    assert _shape_nodes(gm)
    res = resolve_shape_arithmetic(gm)
    assert not _shape_nodes(gm), [n.format_node() for n in _shape_nodes(gm)]
    assert not any(n.op == "call_function" and n.target in (operator.mul, operator.getitem) for n in gm.graph.nodes)
    assert res.changes["shape_nodes_resolved"] >= 1
    x = torch.rand(5, 2, 6, 6)  # another batch than the trace's
    torch.testing.assert_close(gm(x), _net(FORMS[form])(x))


@pytest.mark.parametrize("form", list(FORMS))
def test_each_form_converts_exports_and_verifies(tmp_path, form):
    model = _net(FORMS[form])
    x = torch.rand(7, 2, 6, 6, generator=torch.Generator().manual_seed(3))
    exact = ann2snn.convert(model, T=8, convention="exact")
    assert bool(exact_logits_mask(exact.simulate(x, 16)[-1:], model(x).detach()).all())  # the QANN's logits
    for batch in (1, 3):  # traced with batch 2: nothing of it is left in the graph
        assert exact(torch.rand(batch, 2, 6, 6)).shape == (batch, 3)
    res = ann2snn.export(ann2snn.convert(model, T=4), tmp_path / "m.onnx", format="both")
    assert set(res.verification) == {"unrolled", "stateful"}


def test_sizes_of_parameters_and_of_layers_are_numbers_too():
    class ParamSize(nn.Module):
        input_shape = (2, 6, 6)

        def __init__(self) -> None:
            super().__init__()
            self.c1, self.q1, self.fc = conv(2, 4), q(4), nn.Linear(144, 3)

        def forward(self, x):
            return self.fc(self.q1(self.c1(x)).view(-1, self.fc.weight.shape[1]))

    torch.manual_seed(0)
    model = randomize(ParamSize(), seed=1, theta=(0.5, 1.5))
    snn = ann2snn.convert(model, T=8, convention="exact")
    x = torch.rand(4, 2, 6, 6)
    assert bool(exact_logits_mask(snn.simulate(x, 16)[-1:], model(x).detach()).all())


class Misuse(nn.Module):
    """A forward that uses the batch size other than as the leading size of view / reshape / expand."""

    input_shape = (2, 6, 6)

    def __init__(self, misuse) -> None:
        super().__init__()
        self.misuse = misuse
        self.c1, self.q1, self.fc = conv(2, 4), q(4), nn.Linear(144, 3)
        self.token = nn.Parameter(torch.zeros(1, 144))

    def forward(self, x):
        return self.fc(self.misuse(self, self.q1(self.c1(x))))


#: misuse -> (forward, a phrase the one-line error must hold)
MISUSES = {
    "x * B": (lambda m, x: x.flatten(1) * x.size(0), "uses the batch size"),
    "B * 1 as a size": (lambda m, x: x.view(x.size(0) * 1, -1), "uses the batch size in mul(B, 1)"),
    "x.numel() // B": (lambda m, x: x.view(x.size(0), x.numel() // x.size(0)), "floordiv(numel(x), B)"),
    "batch not leading": (lambda m, x: x.view(1, x.size(0), -1)[0], "other than the leading one"),
    "new_zeros(B, ...)": (lambda m, x: x.flatten(1) + x.new_zeros(x.size(0), 144), "uses the batch size"),
    "parameter expanded to B": (lambda m, x: x.flatten(1) + m.token.expand(x.shape[0], -1), "ClassToken"),
}


@pytest.mark.parametrize("misuse", list(MISUSES))
def test_a_batch_size_that_would_be_baked_in_is_refused_in_one_line(misuse):
    forward, phrase = MISUSES[misuse]
    with pytest.raises(UnsupportedNodeError) as err:
        ann2snn.convert(Misuse(forward))
    msg = str(err.value)
    assert phrase in msg and "\n" not in msg
    if "ClassToken" not in phrase:
        assert "use -1 for the batch dim" in msg


class TimmAttention(nn.Module):
    """Self-attention written the way timm writes it, every size read from ``x.shape`` (the batch size included),
    but with the batch kept at dim 0 as the conversion contract asks (timm's ``permute(2, 0, 3, 1, 4)`` moves it)."""

    def __init__(self, attn: nn.Module) -> None:
        super().__init__()
        self.a = attn  # the tiny ViT's attention: its layers and quantizers, another forward

    def forward(self, x):
        B, N, C = x.shape
        a = self.a
        q, k, v = a.qkv(x).reshape(B, N, 3, a.h, C // a.h).permute(0, 2, 3, 1, 4).unbind(1)
        q, k, v = a.qq(q), a.qk(k), a.qv(v)
        attn = a.qa((q @ k.transpose(-2, -1) * a.scale).softmax(dim=-1))
        return a.proj(a.qo(attn @ v).transpose(1, 2).reshape(B, N, C))


def test_a_timm_style_attention_reading_x_shape_converts_exactly():
    from tnets import TinyViT

    torch.manual_seed(0)
    vit = randomize(TinyViT(), seed=1, theta=(0.4, 1.5))
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    ref = vit(x).detach()
    vit.attn = TimmAttention(vit.attn)
    torch.testing.assert_close(vit(x), ref)
    snn = ann2snn.convert(vit, convention="exact")
    assert bool(exact_logits_mask(snn.simulate(x, 24)[-1:], ref).all())


def test_the_pass_changes_nothing_without_shape_reads():
    torch.manual_seed(0)
    model = nn.Sequential(conv(2, 4), q(4), nn.Flatten(), nn.Linear(144, 3))
    gm = trace(model, example_input=torch.zeros(2, 2, 6, 6))
    before = [n.format_node() for n in gm.graph.nodes]
    res = resolve_shape_arithmetic(gm)
    assert [n.format_node() for n in gm.graph.nodes] == before
    assert res.changes == {"shape_nodes_resolved": 0, "batch_sizes_to_minus_one": 0}
