"""NIR export: structure, write → nir.read round trip, the graph read back and run by nirtorch against the simulator
(exact for the integrator form, measured for the nir.IF approximation), and one-line refusals."""

from __future__ import annotations

import json
from functools import lru_cache

import numpy as np
import pytest
import torch
from helpers import Fn, make_qann, randomize
from opnets import L, Residual, conv, q, seq
from torch import nn

import ann2snn
from ann2snn.errors import Ann2SnnError, UnsupportedNodeError, VerificationError
from ann2snn.layers import QCFS, Affine, SignedQCFS

nir = pytest.importorskip("nir", minversion="1.0.8")
pytest.importorskip("nirtorch", minversion="2.6")

from ann2snn.exporters.nir import (  # noqa: E402  (after the importorskip of the optional packages)
    _IF,
    _below,
    approximations,
    build_nir,
    run_nir,
    verify_nir,
)


class Branches(nn.Module):
    input_shape = (2, 6, 6)

    def __init__(self) -> None:
        super().__init__()
        self.a, self.qa, self.b, self.qb = conv(2, 3), q(3), conv(2, 2), q(2)
        self.fc = nn.Linear(5 * 36, 3)

    def forward(self, x):
        return self.fc(torch.flatten(torch.cat([self.qa(self.a(x)), self.qb(self.b(x))], dim=1), 1))


#: case -> tiny QANN builder; every stateless kind NIR can express appears in one
CASES = {
    "conv2d-grouped": lambda: seq(conv(), q(4), conv(4, 4, groups=2), q(4), nn.Flatten(), nn.Linear(4 * 36, 3)),
    "conv1d": lambda: seq(nn.Conv1d(2, 4, 3, padding=1), q(4), nn.Conv1d(4, 4, 3), q(4), nn.Flatten(),
                          nn.Linear(4 * 6, 3), input_shape=(2, 8)),
    "linear": lambda: seq(nn.Linear(8, 6), QCFS(L, granularity="neuron", num_channels=6), nn.Linear(6, 5), q(),
                          nn.Linear(5, 3, bias=False), input_shape=(8,)),
    "bn-kept-as-affine": lambda: seq(nn.BatchNorm2d(2), conv(), q(4), conv(4, 4), q(4), nn.Flatten(),
                                     nn.Linear(4 * 36, 3)),
    "affine-scale": lambda: seq(conv(), q(4), Affine(torch.tensor([0.5, 2.0, 1.0, 1.5]).reshape(1, 4, 1, 1)),
                                conv(4, 4), q(4), nn.Flatten(), nn.Linear(4 * 36, 3)),
    "pools": lambda: seq(conv(), q(4), nn.AvgPool2d(2), conv(4, 4), q(4), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                         nn.Linear(4, 3)),
    "mean": lambda: seq(conv(), q(4), nn.AdaptiveAvgPool2d(3), conv(4, 4), q(4), Fn(lambda x: x.mean((2, 3))),
                        nn.Linear(4, 3)),
    "flatten-reshape": lambda: seq(conv(), q(4), Fn(lambda x: x.view(x.size(0), -1)), nn.Linear(4 * 36, 5), q(),
                                   nn.Linear(5, 3)),
    "add": Residual,
}


@lru_cache(maxsize=None)
def _snn(case: str, T: int = L):
    torch.manual_seed(0)
    return ann2snn.convert(randomize(CASES[case](), seed=1, theta=(0.5, 1.5)), T=T)


def _x(snn, batch: int = 8, seed: int = 2) -> torch.Tensor:
    return torch.rand(batch, *snn.input_shape, generator=torch.Generator().manual_seed(seed))


@lru_cache(maxsize=None)
def _digits():
    torch.manual_seed(0)
    qann = randomize(ann2snn.models.create("digits-cnn", channels=8, levels=L), seed=3, theta=(0.3, 1.5))
    return ann2snn.convert(qann, T=L)


def _types(graph) -> dict[str, str]:
    return {k: type(v).__name__ for k, v in graph.nodes.items()}


# ---------------------------------------------------------------------------------------------------------
# structure


def test_digits_cnn_structure_integrator_form():
    g = build_nir(_digits(), neuron="integrator")
    types = _types(g)
    assert sorted(types.values()) == sorted(["Input", "Conv2d", "I", "Threshold", "Scale", "Conv2d", "I", "Threshold",
                                             "Scale", "AvgPool2d", "Flatten", "Affine", "Output"])
    convs = [n for n in g.nodes.values() if isinstance(n, nir.Conv2d)]
    assert [c.weight.shape for c in convs] == [(8, 1, 3, 3), (16, 8, 3, 3)]
    assert list(g.nodes["input"].output_type["output"]) == [1, 8, 8]
    assert list(g.nodes["output"].input_type["input"]) == [10]
    # every neuron is a loop I -> Threshold -> Scale(-θ) -> I, and the Threshold feeds the next layer
    for name in (k for k, t in types.items() if t == "Threshold"):
        assert (f"{name}_v", name) in g.edges and (name, f"{name}_reset") in g.edges
        assert (f"{name}_reset", f"{name}_v") in g.edges
        np.testing.assert_array_equal(g.nodes[f"{name}_reset"].scale, -1.0)
        np.testing.assert_array_equal(g.nodes[name].threshold, _below(np.float32(0.5)))  # θ − φθ, fired at ≥
        assert g.nodes[name].metadata["ann2snn.reset"] == "subtract"
    assert approximations(g) == []
    assert g.metadata["ann2snn.neuron_form"] == "integrator" and g.metadata["ann2snn.T"] == L


def test_digits_cnn_structure_if_form_records_the_approximation():
    g = build_nir(_digits(), neuron="if", approximate=True)
    ifs = {k: v for k, v in g.nodes.items() if isinstance(v, nir.IF)}
    assert len(ifs) == 2 and not any(isinstance(v, (nir.I, nir.Threshold)) for v in g.nodes.values())
    for node in ifs.values():
        np.testing.assert_array_equal(node.v_reset, 0.0)
        np.testing.assert_array_equal(node.r, 1.0)
        np.testing.assert_array_equal(node.v_threshold, _below(np.float32(1.0)))
        assert node.metadata["ann2snn.v0"] == 0.5 and "hard reset" in node.metadata["ann2snn.approximation"]
    notes = approximations(g)
    assert len(notes) == 2 and all(sorted(ifs) == sorted(n.split("(nodes: ")[1][:-1].split(", ")) for n in notes)


def test_threshold_below_makes_strict_comparison_equal_to_greater_or_equal():
    theta = np.float32(1.0)
    v = np.array([np.nextafter(theta, np.float32(0)), theta, np.nextafter(theta, np.float32(2)), 0.5, 1.5],
                 np.float32)
    np.testing.assert_array_equal(v > _below(theta), v >= theta)


def test_nir_if_semantics_hard_reset_strict_threshold():
    node = nir.IF(r=np.ones(1, np.float32), v_threshold=np.ones(1, np.float32), v_reset=np.zeros(1, np.float32))
    m, state, spikes = _IF(node), None, []
    for x in (0.6, 0.4, 0.1, 0.95, 0.3):  # v: .6, 1.0 (not > 1), 1.1 -> spike, reset 0, .95, 1.25 -> spike
        z, state = m(torch.tensor([x]), state)
        spikes.append(int(z))
    assert spikes == [0, 0, 1, 0, 1]


# ---------------------------------------------------------------------------------------------------------
# file round trip


@pytest.mark.parametrize("neuron", ["integrator", "if"])
def test_write_read_round_trip_is_equal(tmp_path, neuron):
    g = build_nir(_digits(), neuron=neuron, approximate=True)
    nir.write(tmp_path / "m.nir", g)
    r = nir.read(tmp_path / "m.nir")
    assert _types(r) == _types(g) and sorted(r.edges) == sorted(g.edges)
    for name, node in g.nodes.items():
        back, mine = r.nodes[name], node.to_dict()
        assert set(back.to_dict()) == set(mine)
        for key, value in mine.items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(np.asarray(back.to_dict()[key]), value, err_msg=f"{name}.{key}")
        assert {k: str(v) for k, v in back.metadata.items()} == {k: str(v) for k, v in node.metadata.items()}
    assert approximations(r) == approximations(g)
    x = _x(_digits())
    torch.testing.assert_close(run_nir(r, x, 6), run_nir(g, x, 6), rtol=0, atol=0)


# ---------------------------------------------------------------------------------------------------------
# the consumer (nirtorch, NIR semantics) against the simulator


@pytest.mark.parametrize("pool", ["avg", "sum"])
@pytest.mark.parametrize("case", list(CASES))
def test_integrator_form_equals_the_simulator(case, pool):
    snn, T = _snn(case), 2 * L
    x = _x(snn)
    ref = snn.simulate(x, T)
    assert float(ref.abs().sum()) > 0
    g = build_nir(snn, neuron="integrator", pool=pool)
    assert approximations(g) == []
    torch.testing.assert_close(run_nir(g, x, T), ref, rtol=1e-5, atol=1e-5)
    if pool == "sum" and case == "pools":
        assert any(isinstance(n, nir.SumPool2d) for n in g.nodes.values())
        assert not any(isinstance(n, nir.AvgPool2d) for n in g.nodes.values())


def test_residual_adds_become_fan_in_edges():
    g = build_nir(_snn("add"), neuron="integrator")
    fan_in = {dst: sorted(s for s, d in g.edges if d == dst) for _, dst in g.edges}
    # a + b (b rescaled to a's threshold units by an explicit Scale) and q3 + b: two edges into the consumer
    assert fan_in["c3"] == ["q1", "scale_q2"] and fan_in["flatten"] == ["q3", "scale_q2_1"]
    assert isinstance(g.nodes["scale_q2"], nir.Scale) and isinstance(g.nodes["flatten"], nir.Flatten)
    assert all(fan_in[f"{q}_v"] == [f"c{q[1]}", f"{q}_reset"] for q in ("q1", "q2", "q3"))  # input + reset loop


def test_if_form_is_an_approximation_and_verification_measures_it():
    snn = _digits()
    g = build_nir(snn, neuron="if", approximate=True)
    x = _x(snn, batch=16)
    ref, got = snn.simulate(x, 8), run_nir(g, x, 8)
    assert float((ref - got).abs().max()) > 0.05  # not exact: hard reset, membrane from 0
    rep = verify_nir(snn, g, T=8, x=x)
    assert rep["approximate"] and rep["approximations"] == approximations(g)
    agreement = float((ref[-1].argmax(-1) == got[-1].argmax(-1)).float().mean())
    assert rep["argmax_agreement"] == pytest.approx(agreement)
    assert agreement >= 0.75, f"nir.IF agreement with the simulator on digits fell to {agreement:.2f}"


def test_verification_fails_on_a_wrong_graph():
    snn = _digits()
    g = build_nir(snn, neuron="integrator")
    fc = next(n for n in g.nodes.values() if isinstance(n, nir.Affine))
    fc.bias = fc.bias + 1.0
    with pytest.raises(VerificationError, match="does not match the simulator"):
        verify_nir(snn, g, T=L)


# ---------------------------------------------------------------------------------------------------------
# export, sidecar, CLI


def test_export_writes_the_file_and_sidecar(tmp_path):
    res = ann2snn.export(_digits(), tmp_path / "d.snn.nir", format="nir", nir={"neuron": "integrator"})
    assert res.files == {"nir": tmp_path / "d.snn.nir"} and res.sidecar == tmp_path / "d.snn.json"
    side = json.loads(res.sidecar.read_text())
    assert side["format"] == "ann2snn.nir-sidecar" and side["files"] == {"nir": "d.snn.nir"}
    assert side["approximations"] == [] and side["nir"]["neuron_form"] == "integrator"
    assert side["input"]["shape"] == ["batch", 1, 8, 8] and side["output"]["shape"] == ["batch", 10]
    v = side["verification"]["nir"]
    assert v["mismatched_samples"] == 0 and not v["approximate"]
    assert _types(nir.read(res.files["nir"])) == _types(build_nir(_digits(), neuron="integrator"))
    with pytest.raises(Ann2SnnError, match="already exists"):
        ann2snn.export(_digits(), tmp_path / "d.snn.nir", format="nir", nir={"neuron": "integrator"})


def test_sequence_encoding_feeds_one_frame_per_step(tmp_path):
    snn = _snn("pools")
    spikes = (torch.rand(2 * L, 4, *snn.input_shape, generator=torch.Generator().manual_seed(5)) < 0.5).float()
    g = build_nir(snn, neuron="integrator")
    ref = snn.simulate(spikes, 2 * L, encoding="sequence")
    torch.testing.assert_close(run_nir(g, spikes, 2 * L, encoding="sequence"), ref, rtol=1e-5, atol=1e-5)
    res = ann2snn.export(snn, tmp_path / "s.nir", format="nir", encoding="sequence", nir={"neuron": "integrator"})
    assert res.verification["nir"]["mismatched_samples"] == 0
    assert json.loads(res.sidecar.read_text())["input"]["shape"] == ["T", "batch", 2, 6, 6]


def test_export_if_form_refused_without_the_flag_and_recorded_with_it(tmp_path):
    with pytest.raises(UnsupportedNodeError, match="--nir-approximate") as e:
        ann2snn.export(_digits(), tmp_path / "d.nir", format="nir")
    assert "\n" not in str(e.value) and "--nir-neuron integrator" in str(e.value)
    assert not list(tmp_path.iterdir())
    res = ann2snn.export(_digits(), tmp_path / "d.nir", format="nir", nir={"approximate": True})
    side = json.loads(res.sidecar.read_text())
    assert len(side["approximations"]) == 2 and side["verification"]["nir"]["approximate"]


def test_cli_convert_format_nir(tmp_path, capsys):
    from ann2snn.cli.main import main

    path = ann2snn.save(randomize(ann2snn.models.create("digits-cnn", channels=8)), tmp_path / "d.pt")
    with pytest.raises(SystemExit) as e:
        main(["convert", str(path), "--format", "nir"])
    assert e.value.code != 0 and "--nir-approximate" in capsys.readouterr().err
    for args in (["--nir-neuron", "integrator"], ["--nir-approximate", "--nir-pool", "sum", "--force"]):
        try:
            main(["convert", str(path), "--format", "nir", *args])
        except SystemExit as exc:
            assert not exc.code
        out = capsys.readouterr().out
        assert "d.snn.nir" in out and "d.snn.json" in out
    assert "approximation:" in out
    assert (tmp_path / "d.snn.nir").exists()


# ---------------------------------------------------------------------------------------------------------
# refusals: one line naming the node and what to do


def test_refuses_the_exact_convention():
    snn = ann2snn.convert(make_qann("digits"), convention="exact")
    with pytest.raises(Ann2SnnError, match="NIR has no input schedule.*--mode rate"):
        build_nir(snn, neuron="integrator")


@pytest.mark.parametrize("model,match", [
    (lambda: seq(conv(), SignedQCFS(L, alpha=0.25), nn.Flatten(), nn.Linear(4 * 36, 3)), "bipolar"),
    (lambda: make_qann("maxpool"), "spiking max-pool"),
    (Branches, "torch.cat has no NIR node"),
    (lambda: seq(nn.Conv1d(2, 4, 3), q(4), nn.AvgPool1d(2), nn.Flatten(), nn.Linear(4 * 3, 3), input_shape=(2, 8)),
     "2-D only"),
])
def test_refusals_name_the_node(model, match):
    torch.manual_seed(0)
    snn = ann2snn.convert(randomize(model(), seed=1), T=L)
    with pytest.raises(UnsupportedNodeError, match=match) as e:
        build_nir(snn, neuron="integrator")
    assert str(e.value).startswith("unsupported node `%") and "\n" not in str(e.value)


def test_every_registry_kind_is_mapped_or_refused_with_a_reason():
    from ann2snn.exporters.nir import _REFUSED, NIR_STATEFUL, NIR_STATELESS
    from ann2snn.ops import stateful_kinds, stateless_kinds

    assert set(stateless_kinds()) <= set(NIR_STATELESS), "a stateless kind has no NIR emitter (or refusal)"
    assert set(stateful_kinds()) <= set(NIR_STATEFUL) | set(_REFUSED), "a stateful kind has no NIR form or reason"
