"""`evaluate` and `ann2snn eval`: per-T accuracies from one run in rate and exact mode, exact logits and the step
they are reached at, bad input, records and plots."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from helpers import make_qann

import ann2snn
from ann2snn.cli.main import cli
from ann2snn.data import load_digits
from ann2snn.errors import Ann2SnnError
from ann2snn.evaluate import EXACT_RTOL, evaluate, first_stable_step, parse_modes, parse_ts, step_stats
from ann2snn.simulator import run_steps, running_mean

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
    per_t = running_mean(run_steps(snn.graph_module, x, 5))  # [T, B, K]: rate mode as before conventions existed
    q_pred = qann(x).argmax(1)
    assert res["T_list"] == [1, 2, 3, 5] and res["samples"] == 120
    assert res["convention"] == "rate" and list(res["modes"]) == ["rate"]
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


def _first_steps(ok: list[list[bool]]) -> list[int | None]:
    """Per sample, the first step (1-based) from which ``ok`` holds through the last step; None if not at the last."""
    out = []
    for row in ok:
        t = len(row)
        while t > 0 and row[t - 1]:
            t -= 1
        out.append(None if t == len(row) else t + 1)
    return out


@pytest.fixture(scope="module")
def both_modes(digits):
    qann = make_qann("digits", levels=4, seed=1)
    x, y = digits.x_test[:96], digits.y_test[:96]
    return qann, x, y, evaluate(qann, (x, y), [1, 2, 4, 8, 16], convention="rate,exact", batch_size=40)


def test_exact_mode_settles_on_the_qann_logits(both_modes):
    qann, x, y, res = both_modes
    ex, T_max, n = res["modes"]["exact"], 16, len(y)
    per_t = ann2snn.convert(qann, T=T_max, convention="exact").simulate(x, T_max)
    with torch.no_grad():
        q = qann(x)
    tol = EXACT_RTOL * q.abs().amax(1).clamp(min=1.0)
    exact = [[bool(((per_t[t, b] - q[b]).abs() <= tol[b]).all()) for t in range(T_max)] for b in range(n)]
    agree = [[bool(per_t[t, b].argmax() == q[b].argmax()) for t in range(T_max)] for b in range(n)]
    assert ex["curve"]["exact_logits"] == pytest.approx([sum(e[t] for e in exact) / n for t in range(T_max)])
    assert ex["curve"]["agreement"] == pytest.approx([sum(a[t] for a in agree) / n for t in range(T_max)])
    assert [r["exact_logits"] for r in ex["per_T"]] == [ex["curve"]["exact_logits"][t - 1] for t in res["T_list"]]
    for key, ok in (("exact_logits", exact), ("agreement", agree)):
        steps, stats = _first_steps(ok), ex["exactness"][key]
        assert None not in steps, f"{key}: a sample never got there by T_max"  # exact mode: every sample, finite
        assert stats["never"] == 0 and stats["step_all"] == stats["max"] == max(steps) <= T_max
        assert stats["median"] == statistics.median(steps)
        assert stats["first_step_counts"] == [steps.count(t) for t in range(1, T_max + 1)]
        assert ex["curve"][key][stats["step_all"] - 1:] == [1.0] * (T_max - stats["step_all"] + 1)
    # from the step on, the SNN is the QANN: its accuracy too
    step = ex["exactness"]["exact_logits"]["step_all"]
    assert ex["curve"]["snn_accuracy"][step - 1:] == [res["qann_accuracy"]] * (T_max - step + 1)
    assert ex["per_T"][-1]["logit_max_abs_diff"] <= EXACT_RTOL * float(q.abs().max().clamp(min=1.0))


def test_both_modes_in_one_run(both_modes, qann):
    qann4, x, y, res = both_modes
    assert list(res["modes"]) == ["rate", "exact"] and res["convention"] == "rate"
    assert {k: res[k] for k in res["modes"]["rate"]} == res["modes"]["rate"]  # the first mode also at the top level
    assert res["modes"]["exact"]["convention"] == "exact"
    assert res["exact_tolerance"]["rtol"] == EXACT_RTOL
    alone = evaluate(qann4, (x, y), [1, 2, 4, 8, 16], convention="rate", batch_size=96)
    assert alone["modes"]["rate"] == res["modes"]["rate"]  # modes do not disturb each other; batching neither
    json.dumps(res)
    snn = ann2snn.convert(qann, T=4, convention="exact")
    with pytest.raises(Ann2SnnError, match="single convention"):
        evaluate(qann, (x, y), [4], convention="rate,exact", snn=snn)
    with pytest.raises(Ann2SnnError, match="convention 'exact', not 'rate'"):
        evaluate(qann, (x, y), [4], snn=snn)


def test_first_stable_step_and_stats():
    ok = torch.tensor([[False, True, True], [True, False, True], [True, True, False], [True, True, True]]).T
    first = first_stable_step(ok)  # [T, B] -> [B]
    assert first.tolist() == [2, 3, 0, 1]
    stats = step_stats(first, 3)
    assert stats == {"step_all": None, "median": 2.5, "max": 3, "never": 1, "first_step_counts": [1, 1, 1]}
    assert step_stats(first[first > 0], 3)["step_all"] == 3
    assert step_stats(torch.zeros(3, dtype=torch.long), 3)["median"] is None


@pytest.mark.parametrize("bad", ["", "fast", "rate;exact", "rate,"])
def test_bad_mode(bad):
    with pytest.raises(Ann2SnnError, match="mode must be rate, exact"):
        parse_modes(bad)
    assert parse_modes("exact, rate,exact") == ["exact", "rate"]


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


def test_cli_eval_exact_json(model_file, tmp_path):
    r = CliRunner().invoke(cli, ["eval", str(model_file), "--mode", "exact", "--T", "1,2,4,8,16", "--limit", "50",
                                 "--json", "--runs-dir", str(tmp_path)])
    assert r.exit_code == 0, r.output
    res = json.loads(r.output)
    assert res["convention"] == "exact" and list(res["modes"]) == ["exact"]
    assert [row["T"] for row in res["per_T"]] == [1, 2, 4, 8, 16] and res["samples"] == 50
    stats = res["exactness"]["exact_logits"]
    assert stats["never"] == 0 and 1 <= stats["step_all"] <= 16 and res["per_T"][-1]["exact_logits"] == 1.0
    rec = json.loads(Path(res["record"]).read_text())
    assert rec["config"]["mode"] == ["exact"] and rec["metrics"]["modes"] == res["modes"]


def test_cli_eval_tables_per_mode(model_file, monkeypatch):
    from ann2snn.cli.common import console

    monkeypatch.setattr(console, "width", 80)
    r = CliRunner().invoke(cli, ["eval", str(model_file), "--mode", "rate,exact", "--T", "1,2,4,8", "--limit", "40",
                                 "--no-record"])
    assert r.exit_code == 0, r.output
    out = r.output
    assert "rate mode" in out and "exact mode" in out and "exact logits" in out
    assert "exact logits for 100% of samples from step" in out  # the exact mode's line
    assert "(Conv2d, exact)" in out  # firing rates and operations name the mode of each row
    assert max(len(line.rstrip()) for line in out.splitlines()) <= 80


@pytest.mark.parametrize("args, message", [
    (["--T", "1,x"], "T list"),
    (["--mode", "fast"], "mode must be rate, exact"),
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
    ref = evaluate(qann, (x, y), [1, 3, 6], convention="exact")
    res = evaluate(qann, (x, y), [1, 3, 6], convention="exact", backend="onnx", provider="cpu")
    assert res["backend_max_abs_diff"] < 1e-3 and res["exactness"] == ref["exactness"]
    with pytest.raises(Ann2SnnError, match="backend"):
        evaluate(qann, (x, y), [1], backend="tensorrt")
