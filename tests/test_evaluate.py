"""`evaluate` and `ann2snn eval`: per-T accuracies from one run, bad input, records and plots."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import ann2snn
from ann2snn.cli.main import cli
from ann2snn.data import load_digits
from ann2snn.errors import Ann2SnnError
from ann2snn.evaluate import evaluate, parse_ts

MNIST = ann2snn.data.default_mnist_dir()  # $ANN2SNN_MNIST or ../shared/data/mnist


@pytest.fixture(scope="module")
def qann():
    torch.manual_seed(0)
    return ann2snn.models.create("digits-cnn", levels=2, channels=4, init_threshold=1.0).eval()


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def model_file(qann, tmp_path_factory):
    return ann2snn.save(qann, tmp_path_factory.mktemp("m") / "digits.pt")


def test_per_T_accuracy_equals_simulator_steps(qann, digits):
    x, y = digits.x_test[:120], digits.y_test[:120]
    res = evaluate(qann, (x, y), [5, 1, 2, 3], batch_size=50)
    snn = ann2snn.convert(qann, T=5)
    per_t = snn.simulate(x, 5)  # [T, B, K], running mean
    q_pred = qann(x).argmax(1)
    assert res["T_list"] == [1, 2, 3, 5] and res["samples"] == 120
    assert res["qann_accuracy"] == pytest.approx(float((q_pred == y).float().mean()))
    for row in res["per_T"]:
        pred = per_t[row["T"] - 1].argmax(1)
        assert row["snn_accuracy"] == pytest.approx(float((pred == y).float().mean()))
        assert row["agreement"] == pytest.approx(float((pred == q_pred).float().mean()))
    assert len(res["curve"]["snn_accuracy"]) == 5
    assert [len(f["rates"]) for f in res["firing_rates"]] == [4, 4]
    assert all(0 <= r <= 1 for f in res["firing_rates"] for r in f["rates"])
    assert [r["T"] for r in res["energy"]["per_T"]] == [1, 2, 3, 5]
    json.dumps(res)  # JSON-ready


@pytest.mark.parametrize("bad", ["", "1,,2", "a", "0", "1,-2", "2.5", "1;2"])
def test_malformed_T_list(bad):
    with pytest.raises(Ann2SnnError, match="T list"):
        parse_ts(bad)


def test_T_list_sorted_unique():
    assert parse_ts("8, 1,2,2") == [1, 2, 8]


def test_bad_data(qann):
    with pytest.raises(Ann2SnnError, match="no test samples"):
        evaluate(qann, (torch.zeros(0, 1, 8, 8), torch.zeros(0, dtype=torch.long)), [1])
    with pytest.raises(Ann2SnnError, match="shape"):
        evaluate(qann, (torch.zeros(4, 1, 28, 28), torch.zeros(4, dtype=torch.long)), [1])


def test_cli_eval_json_record_plot(model_file, tmp_path):
    runs, png = tmp_path / "runs", tmp_path / "acc.png"
    r = CliRunner().invoke(cli, ["eval", str(model_file), "--T", "1,2,4", "--limit", "60", "--json",
                                 "--runs-dir", str(runs), "--plot", str(png)])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert [row["T"] for row in res["per_T"]] == [1, 2, 4] and res["samples"] == 60
    assert png.read_bytes()[:4] == b"\x89PNG"
    rec = json.loads(Path(res["record"]).read_text())
    assert rec["kind"] == "eval" and rec["config"]["T"] == [1, 2, 4]
    assert list(rec["inputs"].values())[0] and rec["metrics"]["per_T"] == res["per_T"]
    r = CliRunner().invoke(cli, ["eval", str(model_file), "--T", "1,2", "--limit", "30", "--no-record"])
    assert r.exit_code == 0, r.output
    assert "agreement" in r.output and "Firing rate" in r.output and "analog input" in r.output


@pytest.mark.parametrize("args, message", [
    (["--T", "1,x"], "T list"),
    (["--data", "mnist:/nonexistent/dir"], "does not exist"),
    (["--data", "mnist:EMPTY"], "is empty"),
])
def test_cli_eval_bad_input(model_file, tmp_path, capsys, args, message):
    from ann2snn.cli.main import main

    args = [str(tmp_path) if a == "mnist:EMPTY" else a for a in args]
    args = [f"mnist:{tmp_path}" if a == str(tmp_path) else a for a in args]
    with pytest.raises(SystemExit) as exc:
        main(["eval", str(model_file), "--no-record", *args])
    assert exc.value.code != 0
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(not MNIST.is_dir(), reason="MNIST IDX files not present (set ANN2SNN_MNIST)")
def test_eval_on_mnist_subset():
    data = ann2snn.data.load_dataset(f"mnist:{MNIST}")
    torch.manual_seed(0)
    qann = ann2snn.models.create("mnist-cnn", levels=2, init_threshold=1.0).eval()
    res = evaluate(qann, data, [1, 2], limit=64)
    assert res["samples"] == 64 and res["energy"]["ann_macs"] > 0


def test_onnx_backend_matches_torch(qann, digits):
    pytest.importorskip("onnxruntime")
    pytest.importorskip("ann2snn.exporters.onnx_unrolled")
    x, y = digits.x_test[:40], digits.y_test[:40]
    ref = evaluate(qann, (x, y), [1, 3])
    res = evaluate(qann, (x, y), [1, 3], backend="onnx", provider="cpu")
    assert res["backend"] == "onnx (cpu)" and res["backend_max_abs_diff"] < 1e-3
    assert [r["snn_accuracy"] for r in res["per_T"]] == [r["snn_accuracy"] for r in ref["per_T"]]
    with pytest.raises(Ann2SnnError, match="backend"):
        evaluate(qann, (x, y), [1], backend="tensorrt")
