"""The safe checkpoint format: round trips, bare state dicts, pickles only with trust, clear errors."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from helpers import randomize

import ann2snn
from ann2snn.errors import CheckpointError
from ann2snn.files import atomic_write
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
    assert back.arch_name == "digits-cnn"
    with pytest.raises(CheckpointError, match="do not fit"):
        ann2snn.load(tmp_path / "sd.pt", arch="mnist-cnn")


def test_pickled_module_needs_trust(tmp_path):
    qann = ann2snn.models.create("digits-cnn", levels=2).eval()
    torch.save(qann, tmp_path / "pickled.pt")
    with pytest.raises(CheckpointError, match="--trust-pickle"):
        ann2snn.load(tmp_path / "pickled.pt")
    back = ann2snn.load(tmp_path / "pickled.pt", trust_pickle=True)
    assert isinstance(back, torch.nn.Module)


@pytest.mark.parametrize("content", [b"", b"not a torch file at all", b"PK\x03\x04garbage"])
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
