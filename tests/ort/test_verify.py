"""Verification operator by operator: threshold ties stay local however many there are, and a wrong graph (a weight,
a bias under huge logits, a threshold moved by 1%) is refused, naming where."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch
from helpers import make_qann
from torch import nn

import ann2snn
from ann2snn.errors import VerificationError
from ann2snn.exporters import common
from ann2snn.exporters import verify as V
from ann2snn.exporters.onnx_stateful import build_stateful
from ann2snn.exporters.onnx_unrolled import build_unrolled
from ann2snn.layers import QCFS
from ann2snn.runtime import make_session


def _verify(snn, fmt: str, x, model=None, **kw):
    """Verify ``fmt`` of ``snn`` on ``x`` (a probe graph built here unless ``model`` is given)."""
    if model is None:
        model = build_unrolled(snn, probes=True) if fmt == "unrolled" else build_stateful(snn, probes=True)[0]
    check = V.verify_unrolled if fmt == "unrolled" else V.verify_stateful
    return check(snn, model.SerializeToString(), T=snn.T, x=x, provider="cpu", **kw)


def _tie_net(hidden_bias: float, weight: float, T: int = 2):
    """in(2) → Linear → QCFS(L=1) → Linear → QCFS(L=1) → Linear(2): hidden unit 0 receives ``hidden_bias +
    weight·s`` where s is a first-layer unit that always fires (input 1), so its membrane is fixed by the two
    numbers; hidden unit 1 follows the second input (random: compared as usual)."""
    net = nn.Sequential(nn.Linear(2, 2), QCFS(1, init_threshold=1.0, positive="none"), nn.Linear(2, 2),
                        QCFS(1, init_threshold=1.0, positive="none"), nn.Linear(2, 2)).eval()
    with torch.no_grad():
        net[0].weight.copy_(torch.eye(2))
        net[0].bias.zero_()
        net[2].weight.copy_(torch.tensor([[weight, 0.0], [0.0, 1.0]]))
        net[2].bias.copy_(torch.tensor([hidden_bias, 0.0]))
        net[4].weight.copy_(torch.tensor([[1.0, 0.5], [-1.0, 2.0]]))
        net[4].bias.copy_(torch.tensor([0.1, -0.2]))
    return ann2snn.convert(net, T=T, example_input=torch.zeros(1, 2))


def _tie_input(batch: int = 8):
    x = torch.rand(batch, 2, generator=torch.Generator().manual_seed(0))
    x[:, 0] = 1.0  # first-layer unit 0 fires at every step
    return x


def _patch_if(monkeypatch, target, *, compare: str | None = None, raise_by: float = 0.0):
    """Corrupt the IF neuron ``target`` in both graphs: its comparison op replaced by ``compare`` (unrolled), or
    its threshold raised by ``raise_by`` (both)."""
    orig = common.STATEFUL["if"]

    def unrolled(em, m, xs, T, **kw):
        if m is not target:
            return orig.unrolled(em, m, xs, T, **kw)
        if raise_by and isinstance(xs[0], list):
            xs = [[em.op("Sub", [X, em.scalar(raise_by)]) for X in xs[0]]]
        start = len(em.graph.nodes)
        out = orig.unrolled(em, m, xs, T, **kw)
        for node in em.graph.nodes[start:]:
            if compare and node.op == "GreaterOrEqual":
                node.op = compare
        return out

    def step(em, m, xs, states):
        if m is not target or not raise_by:
            return orig.step(em, m, xs, states)
        # v' = v − δ: fires at v + x ≥ 1 + δ; the carried membrane gets δ back (threshold moved, nothing else)
        out, (v,) = orig.step(em, m, xs, [em.op("Sub", [states[0], em.scalar(raise_by)])])
        return out, [em.op("Add", [v, em.scalar(raise_by)])]

    monkeypatch.setitem(common.STATEFUL, "if", common.StatefulBuilder(unrolled=unrolled, step=step,
                                                                     input_offset=orig.input_offset))


def test_ties_in_every_sample_stay_local(monkeypatch):
    """Every sample has a hidden membrane exactly at threshold and the graph decides it the other way (Greater for
    GreaterOrEqual): end to end every sample differs, so the old check had nothing strict left and refused the
    export; operator by operator each flip is one tie, and everything after it is still compared strictly."""
    snn = _tie_net(hidden_bias=0.5, weight=0.0)
    x = _tie_input()
    _patch_if(monkeypatch, [m for _, m in snn.stateful()][1], compare="Greater")
    model = build_unrolled(snn, probes=True)
    ref, _ = V.reference(snn, x, snn.T)
    sess, _ = make_session(model.SerializeToString(), provider="cpu")
    out = sess.run(["logits_per_step"], {"input": x.numpy()})[0]
    assert (~V._close(out, ref)).all(), "the flip should reach the logits of every sample"
    rep = _verify(snn, "unrolled", x, model)
    assert rep["mismatched_samples"] == 0 and rep["tie_flips"] == len(x) == rep["tie_sensitive_samples"]
    assert rep["spike_counts_compared"] == 4 * len(x) and rep["max_error_over_magnitude"] < V.LOGIT_RTOL


def test_a_threshold_moved_by_one_percent_is_refused(monkeypatch, snns):
    snn = snns("resnet")
    target_name, target = list(snn.stateful())[3]
    _patch_if(monkeypatch, target, raise_by=0.01)
    x = V.example_batch(snn, batch=2)
    for fmt in ("unrolled", "stateful"):
        with pytest.raises(VerificationError, match=f"at {target_name}: .* away from any threshold tie"):
            _verify(snn, fmt, x)


def _initializer(model, name):
    return next(t for t in model.graph.initializer if t.name == name)


def _bump(model, name: str, index: int, delta: float) -> None:
    t = _initializer(model, name)
    a = onnx.numpy_helper.to_array(t).copy()
    a.flat[index] += delta
    t.CopyFrom(onnx.numpy_helper.from_array(a, name))


def test_a_changed_weight_is_refused_naming_the_operator(snns):
    snn = snns("resnet")
    x = V.example_batch(snn, batch=2)
    for fmt in ("unrolled", "stateful"):
        model = build_unrolled(snn, probes=True) if fmt == "unrolled" else build_stateful(snn, probes=True)[0]
        convs = [n for n in model.graph.node if n.op_type == "Conv"
                 and all(a.i == 1 for a in n.attribute if a.name == "group")]  # not a per-channel scale
        conv = convs[len(convs) // 3]  # an early one: the deep layers of this small random net barely spike
        _bump(model, conv.input[1], 0, 0.25)  # one weight of one conv, in threshold units
        with pytest.raises(VerificationError, match="at layers\\..*away from any threshold tie"):
            _verify(snn, fmt, x, model)


def test_a_bias_moved_by_50_is_refused_under_huge_logits():
    """Logits near 1e6: a tolerance relative to the logits (1e-4·|ref| = 100) lets +50 pass; the magnitude of
    each logit's own terms does not."""
    qann = make_qann("digits")
    fc = [m for m in qann.modules() if isinstance(m, nn.Linear)][-1]
    with torch.no_grad():
        fc.weight.mul_(1e3)
        fc.bias.fill_(1e6)
    snn = ann2snn.convert(qann, 4)
    x = V.example_batch(snn, batch=4)
    assert _verify(snn, "unrolled", x)["max_error_over_magnitude"] < V.LOGIT_RTOL  # the honest graph passes
    for fmt in ("unrolled", "stateful"):
        model = build_unrolled(snn, probes=True) if fmt == "unrolled" else build_stateful(snn, probes=True)[0]
        logits = next(n for n in model.graph.node if n.output[0] == ("logits_per_step" if fmt == "unrolled"
                                                                     else "logits_t"))
        if fmt == "unrolled":  # read-out: (J·c)/N(t) + f0
            bias = logits.input[1]
        else:  # logits_t = Identity(Gemm(x, W, b))
            gemm = next(n for n in model.graph.node if n.output[0] == logits.input[0])
            bias = gemm.input[2]
        _bump(model, bias, 3, 50.0)
        with pytest.raises(VerificationError, match="logits of 4/4 samples"):
            _verify(snn, fmt, x, model)
    ref, _ = V.reference(snn, x, snn.T)
    moved = ref.copy()
    moved[..., 3] += 50.0
    assert V._close(moved, ref).all(), "a logit-relative tolerance would have let it pass"


def test_ties_are_judged_by_the_magnitude_of_their_terms(monkeypatch):
    """A decision 6e-5 from the threshold, made from terms of size 2000 (float32 resolution ~1e-4), may go either
    way; the same decision made from terms of size 0.5 may not."""
    margin = float(np.spacing(np.float32(1000.5)))  # 6.1e-5: the smallest step above 1000.5
    big = _tie_net(hidden_bias=1000.5 + margin, weight=-1000.0)  # X = 0.5 + margin, from |terms| ≈ 2000
    small = _tie_net(hidden_bias=0.5 + margin, weight=0.0)       # the same X from |terms| ≈ 0.5
    x = _tie_input()
    for snn, ok in ((big, True), (small, False)):
        _patch_if(monkeypatch, [m for _, m in snn.stateful()][1], raise_by=1e-4)
        if ok:
            assert _verify(snn, "unrolled", x)["tie_flips"] == len(x)
        else:
            with pytest.raises(VerificationError, match="away from any threshold tie"):
                _verify(snn, "unrolled", x)


def test_chunked_runs_report_what_one_run_reports(monkeypatch, snns):
    snn = snns("digits")
    x = V.example_batch(snn, batch=5)
    whole = _verify(snn, "stateful", x)
    monkeypatch.setattr(V, "CHUNK_BYTES", 1)  # one sample per onnxruntime run
    parts = _verify(snn, "stateful", x)
    for key in ("tie_flips", "spike_counts_compared", "spike_count_agreement", "samples", "argmax_agreement"):
        assert parts[key] == whole[key], key


def test_the_written_graph_is_the_verified_one_without_probes(tmp_path, snns):
    snn = snns("digits")
    res = ann2snn.export(snn, tmp_path / "d.onnx")
    for fmt, path in res.files.items():
        written = onnx.load(str(path))
        built = build_unrolled(snn, probes=True) if fmt == "unrolled" else build_stateful(snn, probes=True)[0]
        assert not [o for o in written.graph.output if o.name.startswith("count.")]
        probes = {o.name for o in built.graph.output if o.name.startswith("count.")}
        assert len(probes) == len(list(snn.stateful())) == res.verification[fmt]["operators_checked"]
        names = {n.name for n in written.graph.node}  # same nodes, same order, nothing changed
        kept = [n.SerializeToString() for n in built.graph.node if n.name in names]
        assert [n.SerializeToString() for n in written.graph.node] == kept
        dropped = {o for n in built.graph.node if n.name not in names for o in n.output}
        consumed = {i for n in written.graph.node for i in n.input} | {o.name for o in written.graph.output}
        assert probes <= dropped and not dropped & consumed  # what went only made the probes
    assert V.default_batch(snn, 4) == 16 == res.verification["unrolled"]["samples"]


def test_both_graphs_share_the_samples_where_their_outputs_agree(monkeypatch, snns):
    """A sample whose stateful outputs equal the unrolled graph's, bit for bit, takes its operator results; a
    stateful graph that differs is checked on its own, and a wrong one is still refused."""
    snn = snns("digits")
    x = V.example_batch(snn, batch=6)
    def models():
        return {"unrolled": build_unrolled(snn, probes=True).SerializeToString(),
                "stateful": build_stateful(snn, probes=True)[0].SerializeToString()}

    reps = V.verify_graphs(snn, models(), T=snn.T, x=x, provider="cpu")
    assert reps["stateful"]["samples_shared_with_unrolled"] == 6
    assert reps["unrolled"]["samples_shared_with_unrolled"] == 0
    assert reps["stateful"]["spike_counts_compared"] == reps["unrolled"]["spike_counts_compared"]
    target_name, target = list(snn.stateful())[1]
    orig = common.STATEFUL["if"]
    built = models()
    _patch_if(monkeypatch, target, raise_by=0.05)
    built["stateful"] = build_stateful(snn, probes=True)[0].SerializeToString()  # only the stateful graph is wrong
    monkeypatch.setitem(common.STATEFUL, "if", orig)
    with pytest.raises(VerificationError, match=f"stateful ONNX graph driven T times does not match the simulator at "
                                                f"{target_name}"):
        V.verify_graphs(snn, built, T=snn.T, x=x, provider="cpu")
