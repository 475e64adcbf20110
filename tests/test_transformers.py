"""Spiking transformers: the compensated operator's identity, the time-commuting layout ops, scheduled constants,
and whole tiny ViT / Swin QANNs converted under both time conventions (DESIGN §2b)."""

from __future__ import annotations

import pytest
import torch
from helpers import randomize
from tnets import TinySwin, TinyViT
from torch import nn

import ann2snn
from ann2snn import simulator
from ann2snn.errors import UnsupportedNodeError
from ann2snn.layers import MatMul, Multiply
from ann2snn.neurons import Compensated
from ann2snn.simulator import TimeSchedule, readout, run_steps

T = 12


def _streams(shape, *, seed: int, schedule: TimeSchedule) -> torch.Tensor:
    """A ``[T, ...]`` float64 stream of ±1/0 spikes and fractional messages, cut after L under the exact schedule."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randint(-1, 2, (T, *shape), generator=g).double() + 0.3 * torch.rand(T, *shape, generator=g).double()
    if schedule.exact:
        x[schedule.length:] = 0
    return x


CASES = {
    "product": (MatMul(), [(3, 2, 4, 5), (3, 2, 5, 4)]),
    "elementwise-product": (Multiply(), [(3, 6), (3, 6)]),
    "softmax": (nn.Softmax(-1), [(3, 2, 4, 4)]),
    "layernorm": (nn.LayerNorm(6), [(3, 5, 6)]),
    "gelu": (nn.GELU(), [(3, 7)]),
    "gelu-tanh": (nn.GELU(approximate="tanh"), [(3, 7)]),
}


@pytest.mark.parametrize("convention", ["rate", "exact"])
@pytest.mark.parametrize("case", list(CASES))
def test_compensated_operator_value_is_f_of_input_values_at_every_step(case, convention):
    """``Σ O / N(t) = f(Σ x / N(t))`` at every t, exactly (float64), multi-step and single-step alike."""
    op, shapes = CASES[case]
    if case == "layernorm":
        with torch.no_grad():
            op.weight.uniform_(0.5, 1.5)
            op.bias.uniform_(-0.5, 0.5)
    sched = TimeSchedule(convention, 4 if convention == "exact" else None)
    m = Compensated(op, len(shapes), convention=convention, length=sched.length).double()
    xs = [_streams(s, seed=i, schedule=sched) for i, s in enumerate(shapes)]
    out = m.multi_step(*xs)
    values_in = [readout(x, sched) for x in xs]
    want = torch.stack([op.double()(*(v[t] for v in values_in)) for t in range(T)])
    torch.testing.assert_close(readout(out, sched), want, rtol=0, atol=1e-12)
    state = m.init_state(*(x[0] for x in xs))
    single = []
    for t in range(T):
        y, state = m.step(*(x[t] for x in xs), state=state)
        single.append(y)
    torch.testing.assert_close(torch.stack(single), out, rtol=0, atol=1e-12)


def test_naive_per_step_softmax_is_not_the_value_of_the_stream():
    """What the compensation buys: softmax of each step's message (MST-style) is far from softmax of the value."""
    sched = TimeSchedule()
    x = _streams((3, 5), seed=3, schedule=sched)
    naive = readout(torch.softmax(x, -1), sched)
    exact = torch.softmax(readout(x, sched), -1)
    assert float((naive - exact).abs().max()) > 0.05


def _qann_input_logits(Net):
    """A seeded tiny transformer QANN with non-dyadic thresholds, 8 inputs and its logits on them."""
    torch.manual_seed(0)
    qann = randomize(Net(), seed=1, theta=(0.4, 1.5))
    x = torch.rand(8, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        return qann, x, qann(x)


@pytest.mark.parametrize("Net", [TinyViT, TinySwin], ids=["vit", "swin"])
def test_exact_mode_reaches_the_qann_logits_and_single_step_equals_multi_step(Net):
    qann, x, ref = _qann_input_logits(Net)
    snn = ann2snn.convert(qann, convention="exact")
    multi = snn.simulate(x, 24)
    single = snn.simulate(x, 24, mode="single")
    torch.testing.assert_close(single, multi, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(multi[-1], ref, rtol=1e-5, atol=1e-5)
    rate = ann2snn.convert(qann, convention="rate").simulate(x, 24)
    assert float((rate[-1] - ref).abs().max()) > 1e-3  # rate mode is not exact (neurons add error)


def test_a_constant_that_is_not_scheduled_breaks_exactness(monkeypatch):
    """The position embedding, class token and attention bias are constants: under the exact convention they stop
    after step L with the input. Injecting them at every step instead (no constant removal) loses exactness."""
    qann, x, ref = _qann_input_logits(TinyViT)
    snn = ann2snn.convert(qann, convention="exact")
    torch.testing.assert_close(snn.simulate(x, 24)[-1], ref, rtol=1e-5, atol=1e-5)
    monkeypatch.setattr(simulator, "constant_part", lambda *a, **k: None)
    assert float((snn.simulate(x, 24)[-1] - ref).abs().max()) > 1e-2


def test_conversion_report_counts_transformer_operators():
    snn = ann2snn.convert(randomize(TinyViT(), seed=1), convention="rate")
    counts = snn.report.counts()
    assert counts["compensated_ops"] == 6  # 3 LayerNorms (two in the block, the final one), 2 products, softmax
    kinds = {m.kind for _, m in snn.stateful()}
    assert kinds == {"if", "bipolar", "compensated"}


class _MergesBatch(nn.Module):
    input_shape = (4, 6)

    def __init__(self) -> None:
        super().__init__()
        self.fc, self.q = nn.Linear(6, 6), ann2snn.layers.QCFS(4)

    def forward(self, x):
        return self.q(self.fc(x)).reshape(-1, 6).sum(1, keepdim=True)


def test_a_layout_op_that_merges_the_batch_is_refused():
    with pytest.raises(UnsupportedNodeError, match="batch"):
        ann2snn.convert(_MergesBatch())


@pytest.mark.slow
def test_trained_digits_vit_converts_and_exact_mode_agrees_fully():
    """A tiny ViT QANN trained here on digits (seconds): rate mode close to it at T = L, exact mode equal."""
    from ann2snn.data import load_digits
    from ann2snn.train import fit

    torch.manual_seed(0)
    data = load_digits(seed=0)
    qann = TinyViT(dim=16, heads=2, classes=10)
    fit(qann, data, epochs=6, lr=3e-3, seed=0)
    qann.eval()
    with torch.no_grad():
        ref = qann(data.x_test)
    acc = float((ref.argmax(1) == data.y_test).float().mean())
    assert acc > 0.7, acc
    exact = ann2snn.convert(qann, convention="exact").simulate(data.x_test, 24)
    agree = (exact[-1].argmax(1) == ref.argmax(1)).float().mean()
    assert float(agree) == 1.0
    rate = ann2snn.convert(qann, convention="rate").simulate(data.x_test, 4)
    rate_acc = float((rate[-1].argmax(1) == data.y_test).float().mean())
    print(f"\ndigits tiny ViT: QANN {acc:.4f}, rate T=4 {rate_acc:.4f}, exact T=24 agreement {float(agree):.4f}")
    assert rate_acc > acc - 0.1


def test_energy_counts_attention_products_as_macs_at_every_step():
    """The compensated products multiply running sums, not spikes: MACs in the ANN and at every SNN step."""
    from ann2snn.energy import ActivityMonitor

    snn = ann2snn.convert(randomize(TinyViT(), seed=1), convention="rate")
    mon = ActivityMonitor(snn.graph_module, T=4)
    run_steps(snn.graph_module, torch.rand(3, 1, 8, 8), 4, observer=mon)
    mon.add_samples(3)
    dense = [row for row in mon.summary([1, 4])["layers"] if row.get("dense")]
    heads, tokens, dh = 2, 5, 4
    assert [row["macs"] for row in dense] == [heads * tokens * tokens * dh] * 2  # Q·Kᵀ and attn·V
    assert all(row["snn_macs"] == [row["macs"], 4 * row["macs"]] for row in dense)


def test_nir_refuses_a_spiking_transformer_in_one_line(tmp_path):
    pytest.importorskip("nir")
    snn = ann2snn.convert(randomize(TinyViT(), seed=1), convention="rate")
    with pytest.raises(ann2snn.errors.Ann2SnnError, match="ONNX only"):
        ann2snn.export(snn, tmp_path / "m.nir", format="nir")
    assert not list(tmp_path.iterdir())
