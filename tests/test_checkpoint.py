"""The safe checkpoint format: round trips, bare state dicts, pickles only with trust, clear errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import randomize

import ann2snn
from ann2snn.data import Preprocessing
from ann2snn.errors import Ann2SnnError, CheckpointError
from ann2snn.files import atomic_write
from ann2snn.layers import qcfs_modules
from ann2snn.network import ConversionInfo


def test_qann_round_trip(tmp_path):
    qann = randomize(ann2snn.models.create("resnet20", width=4, levels=4, granularity="channel"))
    path = ann2snn.save(qann, tmp_path / "r.pt", meta={"note": "x"})
    back = ann2snn.load(path)
    assert back.arch_name == "resnet20" and back.arch_kwargs == qann.arch_kwargs
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(back(x), qann(x))
    assert back.checkpoint_meta == {"note": "x"}
    # the file is plain data: readable with weights_only=True
    assert torch.load(path, weights_only=True)["format"] == "ann2snn.qann"


def test_snn_round_trip_rebuilds_the_same_network(tmp_path):
    qann = randomize(ann2snn.models.create("digits-cnn", levels=4))
    snn = ann2snn.convert(qann, T=3)
    path = ann2snn.save(snn, tmp_path / "d.snn.pt")
    back = ann2snn.load(path)
    assert isinstance(back, ann2snn.SpikingNetwork) and back.T == 3
    x = torch.randn(4, 1, 8, 8)
    torch.testing.assert_close(back.simulate(x, 8), snn.simulate(x, 8))


def test_conversion_info_is_typed_and_frozen():
    qann = randomize(ann2snn.models.create("digits-cnn", levels=4))
    info = ann2snn.convert(qann, T=3).info
    assert isinstance(info, ConversionInfo)
    assert info.levels == (4,) and info.shift == 0.5 and info.neuron_kinds == ("if",) and info.maxpool == "spiking"
    assert info.arch == "digits-cnn" and info.convention == "rate" and info.schedule_length is None
    assert info.qann_payload["arch"] == "digits-cnn" and info.qann_payload["input_shape"] == [1, 8, 8]
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.levels = (8,)


def test_exact_snn_round_trip_keeps_its_convention(tmp_path):
    qann = randomize(ann2snn.models.create("digits-cnn", levels=4))
    snn = ann2snn.convert(qann, T=6, convention="exact")
    assert snn.info.convention == "exact" and snn.info.schedule_length == 4
    back = ann2snn.load(ann2snn.save(snn, tmp_path / "e.snn.pt"))
    assert back.info.convention == "exact" and back.info.schedule_length == 4
    assert back.info == snn.info  # every field but the payload, which is compared below
    assert back.info.qann_payload["state_dict"].keys() == snn.info.qann_payload["state_dict"].keys()
    x = torch.rand(4, 1, 8, 8)
    torch.testing.assert_close(back.simulate(x, 10), snn.simulate(x, 10))


def test_snn_file_without_convention_reads_as_rate(tmp_path):
    qann = randomize(ann2snn.models.create("digits-cnn", levels=4))
    path = ann2snn.save(ann2snn.convert(qann, T=3), tmp_path / "old.snn.pt")
    payload = torch.load(path, weights_only=True)
    assert payload["convert"]["convention"] == "rate"
    del payload["convert"]["convention"]  # as written before time conventions existed
    torch.save(payload, path)
    back = ann2snn.load(path)
    assert back.info.convention == "rate" and back.T == 3


def test_atomic_write_lives_in_files():
    assert ann2snn.checkpoint.atomic_write is atomic_write  # the old import path keeps working


def test_existing_file_is_not_overwritten_without_force(tmp_path):
    qann = ann2snn.models.create("digits-cnn", levels=2)
    path = ann2snn.save(qann, tmp_path / "m.pt")
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="already exists"):
        ann2snn.save(ann2snn.models.create("digits-cnn", levels=4), path)
    assert path.read_bytes() == before
    ann2snn.save(qann, path, force=True)
    assert list(tmp_path.iterdir()) == [path]  # no temporary files left behind


def test_bare_state_dict_needs_arch(tmp_path):
    qann = ann2snn.models.create("digits-cnn", levels=2)
    torch.save(qann.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match="--arch"):
        ann2snn.load(tmp_path / "sd.pt")
    back = ann2snn.load(tmp_path / "sd.pt", arch="digits-cnn", arch_kwargs={"levels": 2})
    assert back.arch_name == "digits-cnn" and back.arch_kwargs == {"levels": 2}
    assert {q.levels for _, q in qcfs_modules(back)} == {2}  # the L it was built with, not the zoo default
    with pytest.raises(CheckpointError, match="do not fit"):
        ann2snn.load(tmp_path / "sd.pt", arch="mnist-cnn", arch_kwargs={})


def test_bare_state_dict_never_silently_takes_the_default_levels(tmp_path):
    torch.save(ann2snn.models.create("digits-cnn", levels=2).state_dict(), tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match="does not record the arguments of 'digits-cnn'.*--arch-kwargs"):
        ann2snn.load(tmp_path / "sd.pt", arch="digits-cnn")
    default = ann2snn.load(tmp_path / "sd.pt", arch="digits-cnn", arch_kwargs={})  # the defaults, said explicitly
    zoo_default = qcfs_modules(ann2snn.models.create("digits-cnn"))[0][1].levels
    assert zoo_default != 2 and {q.levels for _, q in qcfs_modules(default)} == {zoo_default}
    path = ann2snn.save(ann2snn.models.create("digits-cnn", levels=2), tmp_path / "m.pt")
    with pytest.raises(CheckpointError, match="records its own architecture arguments"):
        ann2snn.load(path, arch_kwargs={"levels": 3})


def test_pickled_module_needs_trust(tmp_path):
    qann = ann2snn.models.create("digits-cnn", levels=2).eval()
    torch.save(qann, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match="--trust-pickle"):
        ann2snn.load(tmp_path / "pickled.pt")
    back = ann2snn.load(tmp_path / "pickled.pt", trust_pickle=True)
    assert isinstance(back, torch.nn.Module)


@pytest.mark.parametrize("content", [b"", b"not a torch file at all", b"PK\x03\x04garbage", b"\x00\x01binary"])
def test_corrupt_and_missing_files(tmp_path, content):
    bad = tmp_path / "bad.pt"
    bad.write_bytes(content)
    with pytest.raises(CheckpointError, match="not a readable PyTorch file"):
        ann2snn.load(bad)
    with pytest.raises(CheckpointError, match="does not exist"):
        ann2snn.load(tmp_path / "missing.pt")


def test_truncated_checkpoint(tmp_path):
    path = ann2snn.save(ann2snn.models.create("digits-cnn", levels=2), tmp_path / "m.pt")
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="not a readable PyTorch file"):
        ann2snn.load(path)


def test_unregistered_model_cannot_be_saved(tmp_path):
    with pytest.raises(CheckpointError, match="register"):
        ann2snn.save(torch.nn.Linear(2, 2), tmp_path / "x.pt")
    assert not (tmp_path / "x.pt").exists()


def _flip_weight_bytes(path):
    """Change two bytes inside the largest tensor record (not padding), keeping the zip structure intact."""
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    # the record's data follows its local header: 30 bytes + name + extra field
    name_len = int.from_bytes(data[info.header_offset + 26:info.header_offset + 28], "little")
    extra_len = int.from_bytes(data[info.header_offset + 28:info.header_offset + 30], "little")
    start = info.header_offset + 30 + name_len + extra_len + info.file_size // 2
    data[start] ^= 0xFF
    data[start + 1] ^= 0x55
    path.write_bytes(bytes(data))
    return info.filename


def test_corrupted_bytes_are_a_corrupt_file_not_garbage_weights(tmp_path):
    path = ann2snn.save(ann2snn.models.create("digits-cnn", levels=2), tmp_path / "m.pt")
    record = _flip_weight_bytes(path)
    assert torch.load(path, weights_only=True)["format"] == "ann2snn.qann"  # torch itself reads it without a word
    with pytest.raises(CheckpointError, match=f"corrupt file .*record '{record}' fails its CRC check"):
        ann2snn.load(path)


def test_legacy_pickle_is_named_and_needs_trust(tmp_path):
    qann = ann2snn.models.create("digits-cnn", levels=2)
    torch.save(qann.state_dict(), tmp_path / "old.pt", _use_new_zipfile_serialization=False)
    with pytest.raises(CheckpointError, match="legacy pickle file.*--trust-pickle"):
        ann2snn.load(tmp_path / "old.pt", arch="digits-cnn", arch_kwargs={"levels": 2})
    back = ann2snn.load(tmp_path / "old.pt", arch="digits-cnn", arch_kwargs={"levels": 2}, trust_pickle=True)
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(back(x), qann.eval()(x))


@pytest.mark.parametrize("where,value", [("weight", float("inf")), ("weight", float("nan")), ("lam", float("inf")),
                                         ("running_var", -1.0)])
def test_non_finite_tensors_are_refused_at_load_naming_the_tensor(tmp_path, where, value):
    path = ann2snn.save(ann2snn.models.create("digits-cnn", levels=2), tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    name = next(k for k in payload["state_dict"] if k.endswith(where))
    payload["state_dict"][name].view(-1)[0] = value
    torch.save(payload, path)
    with pytest.raises(CheckpointError, match=f"tensor {name!r} has 1 NaN or infinite|variance {name!r}"):
        ann2snn.load(path)


@pytest.mark.parametrize("field,value,expect", [
    ("arch", 5, "architecture name is 5"),
    ("kwargs", "levels=2", "not a dict"),
    ("kwargs", {"levels": "x"}, "levels must be a positive integer"),
    ("kwargs", {"nope": 1}, "does not accept these arguments"),
    ("kwargs", {"levels": 2, "channels": 3}, "weights do not fit"),
    ("input_shape", [1, -8, 8], "input shape is"),
    ("state_dict", {"a": 1}, "not named tensors"),
    ("preprocessing", {"mean": [0.5], "std": [0.0]}, "malformed preprocessing"),
])
def test_malformed_records_are_one_line_errors(tmp_path, field, value, expect):
    path = ann2snn.save(ann2snn.models.create("digits-cnn", levels=2), tmp_path / "m.pt")
    payload = torch.load(path, weights_only=True)
    payload[field] = value
    torch.save(payload, path)
    with pytest.raises(Ann2SnnError, match=expect) as e:
        ann2snn.load(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def test_preprocessing_travels_with_the_model(tmp_path):
    qann = ann2snn.models.create("digits-cnn", levels=2)
    qann.preprocessing = Preprocessing(255.0, (0.1307,), (0.3081,), "mnist")
    back = ann2snn.load(ann2snn.save(qann, tmp_path / "m.pt"))
    assert back.preprocessing == qann.preprocessing
    snn = ann2snn.convert(back, T=2)
    assert snn.info.qann_payload["preprocessing"]["mean"] == [0.1307]
    again = ann2snn.load(ann2snn.save(snn, tmp_path / "m.snn.pt"))
    assert again.info.qann_payload["preprocessing"] == snn.info.qann_payload["preprocessing"]
    plain = ann2snn.load(ann2snn.save(ann2snn.models.create("digits-cnn", levels=2), tmp_path / "p.pt"))
    assert plain.preprocessing is None  # not recorded: unknown, never a guess


def test_preprocessing_goes_into_the_onnx_metadata_and_sidecar(tmp_path):
    import json

    from ann2snn.exporters.contract import META_PREPROCESSING, read_metadata

    qann = ann2snn.models.create("digits-cnn", levels=2, channels=4)
    qann.preprocessing = Preprocessing(16.0, (0.25,), (0.5,), "digits")
    res = ann2snn.export(ann2snn.convert(qann, T=2), tmp_path / "d.snn.onnx", format="both", verify=False)
    for path in res.files.values():
        assert read_metadata(path).preprocessing == qann.preprocessing
    side = json.loads(res.sidecar.read_text())
    assert side["preprocessing"]["mean"] == [0.25] and side["preprocessing"]["pixel_max"] == 16.0
    assert "pixels / 16" in side["preprocessing"]["text"]
    import onnx

    props = {p.key: p.value for p in onnx.load(str(res.files["unrolled"])).metadata_props}
    assert json.loads(props[META_PREPROCESSING])["input_range"] == [[-0.5, 1.5]]
    plain = ann2snn.export(ann2snn.convert(ann2snn.models.create("digits-cnn", levels=2, channels=4), T=2),
                           tmp_path / "p.snn.onnx", format="unrolled", verify=False)
    assert read_metadata(plain.files["unrolled"]).preprocessing is None  # unknown, said as such
