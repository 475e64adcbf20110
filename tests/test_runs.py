"""Run records: write, list, find by id or part of one, and `ann2snn runs`."""

from __future__ import annotations

import hashlib
import json

import pytest
from click.testing import CliRunner

from ann2snn.cli.main import cli
from ann2snn.errors import Ann2SnnError
from ann2snn.runs import find_record, list_records, read_record, write_record


def test_write_list_read(tmp_path):
    model = tmp_path / "m.pt"
    model.write_bytes(b"weights")
    a = write_record("eval", config={"model": str(model)}, metrics={"qann_accuracy": 0.9}, inputs=[model],
                     directory=tmp_path / "runs")
    b = write_record("train", config={}, metrics={"test_accuracy": 0.8}, directory=tmp_path / "runs")
    recs = list_records(tmp_path / "runs")
    assert sorted(r["kind"] for r in recs) == ["eval", "train"]
    rec = read_record(a, tmp_path / "runs")
    assert rec["inputs"][str(model)] == hashlib.sha256(b"weights").hexdigest()
    assert "torch" in rec["versions"] and "python" in rec["versions"]
    rid = json.loads(b.read_text())["id"]
    assert read_record(rid, tmp_path / "runs")["kind"] == "train"
    assert find_record(rid[-6:], tmp_path / "runs") == b  # unique suffix


def test_missing_ambiguous_and_corrupt(tmp_path):
    d = tmp_path / "runs"
    write_record("eval", config={}, metrics={}, directory=d)
    write_record("eval", config={}, metrics={}, directory=d)
    with pytest.raises(Ann2SnnError, match="not found"):
        read_record("nope", d)
    with pytest.raises(Ann2SnnError, match="matches 2"):
        read_record("eval", d)
    bad = d / "zzz-bad.json"
    bad.write_text("{not json")
    assert len(list_records(d)) == 2  # unreadable files are skipped in listings
    with pytest.raises(Ann2SnnError, match="not valid JSON"):
        read_record(bad)


def test_cli_runs(tmp_path):
    d = tmp_path / "runs"
    r = CliRunner().invoke(cli, ["runs", "--dir", str(d)])
    assert r.exit_code == 0 and "no run records" in r.output
    write_record("eval", config={"model": "digits.pt"},
                 metrics={"qann_accuracy": 0.95, "dataset": "digits",
                          "per_T": [{"T": 4, "snn_accuracy": 0.94, "agreement": 0.97, "delta_pp": -1.0}]},
                 directory=d)
    write_record("train", config={}, metrics={"test_accuracy": 0.9}, directory=d)
    r = CliRunner().invoke(cli, ["runs", "--dir", str(d)])
    assert r.exit_code == 0, r.output
    assert "eval" in r.output and "train" in r.output and "94.00%" in r.output
    r = CliRunner().invoke(cli, ["runs", "--dir", str(d), "--kind", "train", "--json"])
    assert [x["kind"] for x in json.loads(r.output)] == ["train"]


def test_record_conversion(tmp_path):
    import ann2snn
    from ann2snn.runs import record_conversion

    qann = ann2snn.models.create("digits-cnn", levels=2, channels=4)
    model = ann2snn.save(qann, tmp_path / "m.pt")
    snn = ann2snn.convert(qann, T=2)
    path = record_conversion(model, snn, [tmp_path / "m.snn.onnx"], config={"format": "unrolled"},
                             verification={"unrolled": {"max_abs_error": 0.0}}, directory=tmp_path / "runs")
    rec = read_record(path)
    assert rec["kind"] == "convert" and rec["config"] == {"model": str(model), "format": "unrolled"}
    assert rec["metrics"]["if_neurons"] == 2 and rec["metrics"]["T"] == 2 and str(model) in rec["inputs"]
    assert rec["metrics"]["verification"]["unrolled"]["max_abs_error"] == 0.0


def test_unwritable_runs_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(Ann2SnnError, match="cannot write run record"):
        write_record("eval", config={}, metrics={}, directory=blocker / "runs")
