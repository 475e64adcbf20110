"""Whole network: a digits QANN trained here converts to an SNN within 1 pp of it at T = L."""

from __future__ import annotations

import pytest
import torch

import ann2snn
from ann2snn.cli.demo import DEMO_TS, run_demo


@pytest.mark.slow
def test_digits_snn_at_T_equal_L_is_within_1pp_of_the_qann():
    result = run_demo(levels=4, epochs=12, seed=0)
    qacc = result["qann_accuracy"]
    by_t = {r["T"]: r for r in result["per_T"]}
    assert qacc >= 0.95
    assert abs(by_t[4]["snn_accuracy"] - qacc) <= 0.01, result["per_T"]
    assert by_t[4]["agreement_with_qann"] >= 0.98
    assert [r["T"] for r in result["per_T"]] == list(DEMO_TS)
    print("\nQANN %.4f | " % qacc + " | ".join(f"T={r['T']}: {r['snn_accuracy']:.4f}" for r in result["per_T"]))


def test_first_neuron_layer_is_exact_at_T_equal_L():
    """With direct input the first IF layer sees a constant input: its counts at T = L equal the QANN's levels."""
    torch.manual_seed(0)
    qann = ann2snn.models.create("digits-cnn", levels=4, init_threshold=1.0).eval()
    x = torch.rand(16, 1, 8, 8)
    snn = ann2snn.convert(qann, T=4)
    first = snn.stateful()[0][1]
    counts = []
    orig = first.multi_step
    first.multi_step = lambda xs: counts.append(orig(xs)) or counts[-1]
    snn.simulate(x, 4)
    q = next(m for m in qann.modules() if isinstance(m, ann2snn.QCFS))
    levels = []
    hq = q.register_forward_hook(lambda m, i, o: levels.append(torch.round(o * 4 / m.threshold)))
    with torch.no_grad():
        qann(x)
    hq.remove()
    assert torch.equal(counts[0].sum(0), levels[0])
