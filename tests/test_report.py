"""The HTML report: tables and base64 images, self-contained; `ann2snn report`; no heavy imports."""

from __future__ import annotations

import base64
import re
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

import ann2snn
from ann2snn.cli.main import cli
from ann2snn.data import load_digits
from ann2snn.errors import Ann2SnnError
from ann2snn.evaluate import evaluate
from ann2snn.inspect import inspect_thresholds
from ann2snn.report import headline, render_html
from ann2snn.runs import read_record, write_record


@pytest.fixture(scope="module")
def eval_record(tmp_path_factory):
    torch.manual_seed(0)
    qann = ann2snn.models.create("digits-cnn", levels=2, channels=4, init_threshold=1.0).eval()
    d = load_digits()
    metrics = evaluate(qann, (d.x_test[:40], d.y_test[:40]), [1, 2, 4])
    metrics["thresholds"] = inspect_thresholds(qann)
    runs = tmp_path_factory.mktemp("runs")
    path = write_record("eval", config={"model": "digits.pt", "T": [1, 2, 4]}, metrics=metrics, directory=runs)
    return runs, read_record(path)


def test_report_has_tables_and_images(eval_record):
    runs, rec = eval_record
    train = {"id": "20250101-000000-train-abcdef", "kind": "train", "time": "2025-01-01T00:00:00+00:00",
             "config": {"epochs": 3}, "versions": {"torch": "x"}, "inputs": {},
             "metrics": {"test_accuracy": 0.97, "history": [{"epoch": 1, "loss": 0.5}]}}
    page = render_html([rec, train], title="t <&> report")
    assert page.startswith("<!DOCTYPE html>") and "t &lt;&amp;&gt; report" in page
    for heading in ("Accuracy at every T", "Firing rates", "Operations per sample", "QCFS thresholds", "MaxDiff",
                    "same prediction as QANN", "history"):
        assert heading in page
    assert page.count("<table>") >= 6
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) >= 2 and all(base64.b64decode(i)[:4] == b"\x89PNG" for i in images)
    assert "http://" not in page and "https://" not in page and "<script" not in page  # self-contained


@pytest.fixture(scope="module")
def two_mode_record(tmp_path_factory):
    torch.manual_seed(0)
    qann = ann2snn.models.create("digits-cnn", levels=2, channels=4, init_threshold=1.0).eval()
    d = load_digits()
    metrics = evaluate(qann, (d.x_test[:40], d.y_test[:40]), [1, 2, 4, 8], convention="rate,exact")
    path = write_record("eval", config={"model": "digits.pt", "T": [1, 2, 4, 8], "mode": ["rate", "exact"]},
                        metrics=metrics, directory=tmp_path_factory.mktemp("runs2"))
    return read_record(path)


def test_report_shows_both_modes(two_mode_record):
    page = render_html([two_mode_record])
    for text in ("Accuracy at every T, rate mode", "Accuracy at every T, exact mode", "exact logits",
                 "every sample from", "rtol = 0.0001", "<th>mode</th>"):
        assert text in page
    step = two_mode_record["metrics"]["modes"]["exact"]["exactness"]["exact_logits"]["step_all"]
    assert step is not None and f"exact logits from t={step}" in headline(two_mode_record)
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', page)
    assert len(images) == 1 and base64.b64decode(images[0])[:4] == b"\x89PNG"  # one figure with both modes


def test_report_reads_records_from_before_modes(eval_record):
    _, rec = eval_record
    old = {**rec, "metrics": {k: v for k, v in rec["metrics"].items()
                              if k not in ("modes", "convention", "exactness", "exact_tolerance")}}
    old["metrics"]["per_T"] = [{k: r[k] for k in ("T", "snn_accuracy", "agreement", "delta_pp")}
                               for r in old["metrics"]["per_T"]]
    page = render_html([old])
    assert "Accuracy at every T, rate mode" in page and "every sample from" not in page
    assert headline(old).startswith("QANN ") and "SNN best" in headline(old)


def test_report_without_images_and_empty(eval_record):
    _, rec = eval_record
    assert "data:image" not in render_html([rec], images=False)
    with pytest.raises(Ann2SnnError, match="no run records"):
        render_html([])


def test_cli_report(eval_record, tmp_path):
    runs, rec = eval_record
    out = tmp_path / "report.html"
    r = CliRunner().invoke(cli, ["report", rec["id"][-6:], "--dir", str(runs), "-o", str(out)])
    assert r.exit_code == 0, r.output
    assert "Accuracy at every T" in out.read_text()
    r = CliRunner().invoke(cli, ["report", "--dir", str(runs), "-o", str(out)])
    assert r.exit_code != 0 and "--force" in str(r.exception)
    r = CliRunner().invoke(cli, ["report", "--dir", str(runs), "-o", str(out), "--force"])
    assert r.exit_code == 0, r.output


def test_import_stays_light():
    code = ("import sys, ann2snn, ann2snn.inspect, ann2snn.evaluate, ann2snn.energy, ann2snn.report, ann2snn.runs, "
            "ann2snn.plots; "
            "print([m for m in ('click', 'rich', 'matplotlib') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
