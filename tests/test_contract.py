"""The ONNX file contract: names, metadata round trips, the sidecar schema, and no copies of it elsewhere."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
from helpers import randomize

import ann2snn
from ann2snn.errors import Ann2SnnError
from ann2snn.exporters import contract as C


def test_names():
    assert C.state_input_name("layer1.0", "v") == "state.layer1.0.v"
    assert C.state_output_name("layer1.0", "v") == "state_out.layer1.0.v"
    assert C.probe_name("conv1.act") == "count.conv1.act"
    assert C.readout_counts(5) == [1, 2, 3, 4, 5]
    assert C.readout_counts(5, "exact", 2) == [1, 2, 2, 2, 2]
    with pytest.raises(Ann2SnnError, match="schedule length"):
        C.readout_counts(3, "exact", None)


def _states():
    return (C.StateSpec.from_initial("layer.0", "v", "if", torch.full((3, 2), 0.5)),
            C.StateSpec.from_initial("pool", "max", "maxpool", torch.tensor([[0.0, 1.0]])))


def test_state_spec_json_round_trip():
    fill, values = _states()
    assert fill.fill == 0.5 and fill.values is None and fill.shape == (3, 2)
    assert values.fill is None and values.values == [[0.0, 1.0]]
    d = fill.to_json()
    assert d == {"input": "state.layer.0.v", "output": "state_out.layer.0.v", "module": "layer.0", "state": "v",
                 "kind": "if", "shape": [3, 2], "init": {"fill": 0.5}}
    assert C.StateSpec.from_json(d) == fill and C.StateSpec.from_json(values.to_json()) == values
    with pytest.raises(Ann2SnnError, match="naming"):
        C.StateSpec.from_json({**d, "input": "v_in"})
    with pytest.raises(Ann2SnnError, match="malformed"):
        C.StateSpec.from_json({k: v for k, v in d.items() if k != "init"})


@pytest.mark.parametrize("convention,length", [("rate", None), ("exact", 4)])
def test_metadata_round_trip(convention, length):
    meta = C.ModelMetadata(format=C.FORMAT_STATEFUL, T=6, encoding="direct", input_shape=(1, 8, 8), shift=0.5,
                           neuron_kinds=("bipolar", "maxpool"), arch="digits-cnn", convention=convention,
                           schedule_length=length, states=_states())
    props = meta.to_props()
    assert set(props) == set(C.METADATA_KEYS) and all(isinstance(v, str) for v in props.values())
    assert props[C.META_CONVENTION] == convention and json.loads(props[C.META_SCHEDULE_LENGTH]) == length
    back = C.read_metadata(props)
    assert back == meta and back.states == meta.states
    assert back.schedule.convention == convention
    unrolled = C.ModelMetadata(format=C.FORMAT_UNROLLED, T=2, input_shape=(3,), shift=(0.5, 0.0),
                               activation_bytes=4096).to_props()
    assert C.META_STATES not in unrolled and C.read_metadata(unrolled).shift == (0.5, 0.0)
    assert C.read_metadata(unrolled).activation_bytes == 4096 and back.activation_bytes is None


def test_metadata_of_files_before_conventions_reads_as_rate():
    old = {"ann2snn.version": "0.1.0", "ann2snn.T": "4", "ann2snn.format": "unrolled", "ann2snn.encoding": "direct",
           "ann2snn.shift": "0.5", "ann2snn.neuron_kinds": '["if"]', "ann2snn.input_shape": "[1, 8, 8]",
           "ann2snn.arch": '"digits-cnn"'}
    meta = C.read_metadata(old)
    assert meta.convention == "rate" and meta.schedule_length is None and meta.T == 4 and meta.input_shape == (1, 8, 8)


@pytest.mark.parametrize("change,match", [
    ({"ann2snn.format": None}, "not an ONNX file exported by ann2snn"),
    ({"ann2snn.T": None}, "incomplete"),
    ({"ann2snn.input_shape": "[1, 8"}, "unreadable"),
    ({"ann2snn.convention": "exact"}, "schedule length"),
    ({"ann2snn.convention": "fast"}, "'rate' or 'exact'"),
])
def test_bad_metadata_is_refused(change, match):
    props = C.ModelMetadata(format="unrolled", T=4, input_shape=(2,)).to_props()
    props.update(change)
    props = {k: v for k, v in props.items() if v is not None}
    with pytest.raises(Ann2SnnError, match=match):
        C.read_metadata(props)


def test_read_metadata_from_model_bytes_and_path(tmp_path):
    from ann2snn.exporters.onnx_unrolled import build_unrolled

    snn = ann2snn.convert(randomize(ann2snn.models.create("digits-cnn", levels=4)), T=3, convention="exact")
    model = build_unrolled(snn)
    path = tmp_path / "m.onnx"
    path.write_bytes(model.SerializeToString())
    for source in (model, model.SerializeToString(), path, str(path)):
        meta = C.read_metadata(source)
        assert meta.format == "unrolled" and meta.T == 3 and meta.input_shape == (1, 8, 8)
        assert meta.convention == "exact" and meta.schedule_length == 4
    with pytest.raises(Ann2SnnError, match="does not exist"):
        C.read_metadata(tmp_path / "missing.onnx")
    (tmp_path / "bad.onnx").write_bytes(b"not onnx")
    with pytest.raises(Ann2SnnError, match="not a readable ONNX file"):
        C.read_metadata(tmp_path / "bad.onnx")


def test_metadata_for_network_reads_the_conversion_info():
    snn = ann2snn.convert(randomize(ann2snn.models.create("digits-cnn", levels=4)), T=5, convention="exact")
    meta = C.ModelMetadata.for_network(snn, T=5, format="stateful")
    assert (meta.T, meta.input_shape, meta.arch, meta.neuron_kinds) == (5, (1, 8, 8), "digits-cnn",
                                                                        snn.info.neuron_kinds)
    assert (meta.convention, meta.schedule_length, meta.shift) == ("exact", 4, 0.5)


@pytest.mark.parametrize("convention,length", [("rate", None), ("exact", 4)])
def test_sidecar_describes_the_files_and_the_convention(convention, length):
    meta = C.ModelMetadata(format="stateful", T=6, input_shape=(1, 8, 8), shift=0.5, neuron_kinds=("if",),
                           convention=convention, schedule_length=length, states=_states())
    side = C.build_sidecar(meta, files={"unrolled": "m.onnx", "stateful": "m.step.onnx"},
                           verification={"unrolled": {"mismatched_samples": 0}})
    json.dumps(side)  # plain JSON
    assert side["format"] == C.SIDECAR_FORMAT and side["version"] == C.SIDECAR_VERSION == 2
    assert (side["convention"], side["schedule_length"], side["T"]) == (convention, length, 6)
    assert side["input"] == {"name": "input", "shape": ["batch", 1, 8, 8]}
    assert side["stateful"]["states"] == [s.to_json() for s in _states()]
    assert side["stateful"]["output"] == C.LOGITS_T
    assert ("min(t, L)" in side["stateful"]["readout"]) == (convention == "exact")
    assert set(side["unrolled"]["outputs"]) == {C.LOGITS, C.LOGITS_PER_STEP}
    only = C.build_sidecar(meta, files={"stateful": "m.onnx"})
    assert only["unrolled"] is None and only["verification"] is None
    with pytest.raises(Ann2SnnError, match="keyed by"):
        C.build_sidecar(meta, files={"sidecar": "m.json"})


# the names no module but the contract may spell out (``input`` and ``logits`` are also ordinary words in the
# passes and reports, so they are left out of this check)
_CONTRACT_LITERALS = {C.LOGITS_PER_STEP, C.LOGITS_T, C.SIDECAR_FORMAT, *C.METADATA_KEYS}
_CONTRACT_PREFIXES = (C.STATE_IN_PREFIX, C.STATE_OUT_PREFIX, C.PROBE_PREFIX)


def _literal_uses(path: Path, root: Path) -> list[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and n.body
                  and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return [f"{path.relative_to(root)}:{n.lineno} {n.value!r}" for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings
            and (n.value in _CONTRACT_LITERALS or n.value.startswith(_CONTRACT_PREFIXES))]


def test_no_module_spells_out_the_contract():
    root = Path(ann2snn.__file__).parent
    uses = [u for p in sorted(root.rglob("*.py")) if p != Path(C.__file__) for u in _literal_uses(p, root)]
    assert not uses, "use the constants of ann2snn.exporters.contract instead of: " + "; ".join(uses)
