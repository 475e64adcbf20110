"""The CLI around export and bench: outputs written atomically, one-line errors, nothing half-written."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from helpers import make_qann

import ann2snn
from ann2snn.cli.main import main


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    path = tmp_path_factory.mktemp("ckpt") / "digits.pt"
    ann2snn.save(make_qann("digits"), path)
    return path


def _run(args, capsys):
    with pytest.raises(SystemExit) as exc:
        main(args)
    out = capsys.readouterr()
    return exc.value.code, out.out, out.err


def _ok(args, capsys):
    try:
        main(args)
    except SystemExit as exc:  # pragma: no cover - shows the error on failure
        pytest.fail(f"exit {exc.code}: {capsys.readouterr().err}")
    return capsys.readouterr().out


def test_convert_writes_both_formats_and_sidecar(ckpt, tmp_path, capsys):
    out = tmp_path / "d.snn.onnx"
    data = json.loads(_ok(["convert", str(ckpt), "--T", "4", "-o", str(out), "--json", "--provider", "cpu"], capsys))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.snn.json", "d.snn.onnx", "d.snn.step.onnx"]
    assert data["verification"]["unrolled"]["mismatched_samples"] == 0
    code, _, err = _run(["convert", str(ckpt), "--T", "4", "-o", str(out)], capsys)
    assert code == 1 and "already exists" in err and "--force" in err and len(err.strip().splitlines()) == 1
    _ok(["convert", str(ckpt), "--T", "4", "-o", str(out), "--force", "--format", "unrolled", "--no-verify"], capsys)


def test_convert_torch_format_kept(ckpt, tmp_path, capsys):
    out = tmp_path / "d.snn.pt"
    _ok(["convert", str(ckpt), "--format", "torch", "-o", str(out)], capsys)
    assert isinstance(ann2snn.load(out), ann2snn.SpikingNetwork)


def test_convert_failed_verification_is_one_line_and_writes_nothing(ckpt, tmp_path, capsys, monkeypatch):
    from ann2snn.exporters import common

    orig = common.STATEFUL["if"]

    def corrupt_step(em, m, xs, states):
        y, new = orig.step(em, m, xs, states)
        return em.op("Add", [y, em.scalar(1.0)]), new

    monkeypatch.setitem(common.STATEFUL, "if", common.StatefulBuilder(unrolled=orig.unrolled, step=corrupt_step))
    code, _, err = _run(["convert", str(ckpt), "-o", str(tmp_path / "x.onnx"), "--provider", "cpu"], capsys)
    assert code == 1 and "stateful ONNX graph" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []


def test_cuda_requested_without_gpu_is_one_line(ckpt, tmp_path, capsys):
    import onnxruntime as ort

    code, _, err = _run(["convert", str(ckpt), "-o", str(tmp_path / "x.onnx"), "--provider", "cuda"], capsys)
    if code is None or code == 0:
        pytest.skip("this machine has a working CUDA provider")
    assert code == 1 and "CUDA" in err and len(err.strip().splitlines()) == 1
    assert list(tmp_path.iterdir()) == []
    _ = ort


def test_bench_checkpoint_json_and_output(ckpt, tmp_path, capsys):
    out = tmp_path / "b.json"
    data = json.loads(_ok(["bench", str(ckpt), "--T", "2", "--batch", "1,3", "--repeats", "2", "--warmup", "1",
                           "--json", "-o", str(out), "--provider", "cpu"], capsys))
    assert json.loads(out.read_text())["rows"] == data["rows"]
    row = data["rows"][0]
    assert {"ann_ms", "unrolled_ms", "stateful_ms", "torch_ms", "unrolled_ratio"} <= set(row)
    assert "ReLU" in data["note"]
    code, _, err = _run(["bench", str(ckpt), "--T", "2", "--batch", "1", "--json", "-o", str(out)], capsys)
    assert code == 1 and "already exists" in err


def test_bench_micro_batches_run_the_ann_and_the_snn_alike(ckpt, capsys):
    base = ["bench", str(ckpt), "--T", "2", "--batch", "1,5", "--repeats", "1", "--warmup", "0", "--no-torch",
            "--provider", "cpu", "--no-record"]
    data = json.loads(_ok([*base, "--micro-batch", "2", "--json"], capsys))
    assert data["micro_batch"] == 2 and [r["micro_batch"] for r in data["rows"]] == [None, 2]
    assert "micro-batches of 2" in _ok([*base, "--micro-batch", "2"], capsys)
    assert json.loads(_ok([*base, "--micro-batch", "off", "--json"], capsys))["micro_batch"] is None
    code, _, err = _run([*base, "--micro-batch", "0"], capsys)
    assert code == 1 and "--micro-batch must be auto, off or a positive number" in err


def test_bench_table_renders(ckpt, capsys):
    text = _ok(["bench", str(ckpt), "--T", "2", "--batch", "1", "--repeats", "1", "--warmup", "0", "--no-torch",
                "--provider", "cpu"], capsys)
    assert "SNN ÷ T·ANN" in text and "ReLU" in text


def test_bench_exported_onnx(ckpt, tmp_path, capsys):
    out = tmp_path / "d.onnx"
    _ok(["convert", str(ckpt), "-o", str(out), "--no-verify"], capsys)
    for f in (out, tmp_path / "d.step.onnx"):
        data = json.loads(_ok(["bench", str(f), "--batch", "2", "--repeats", "1", "--json", "--provider", "cpu"],
                              capsys))
        assert data["rows"][0]["T"] == 4


@pytest.mark.parametrize("content", [b"not an onnx file at all", b""])
def test_bench_corrupt_onnx_is_one_line(tmp_path, capsys, content):
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    code, _, err = _run(["bench", str(bad), "--batch", "1"], capsys)
    assert code == 1 and err.startswith("error:") and len(err.strip().splitlines()) == 1


def test_bench_foreign_onnx_is_one_line(tmp_path, capsys):
    from ann2snn.bench import relu_ann_onnx

    f = tmp_path / "plain.onnx"
    f.write_bytes(relu_ann_onnx(make_qann("digits"), (1, 8, 8)))
    code, _, err = _run(["bench", str(f), "--batch", "1"], capsys)
    assert code == 1 and "not an ONNX file exported by ann2snn" in err and len(err.strip().splitlines()) == 1


def test_import_stays_free_of_cli_and_onnx():
    code = ("import sys, ann2snn; bad = [m for m in ('click', 'rich', 'onnx', 'onnxruntime', 'onnx_graphsurgeon') "
            "if m in sys.modules]; print(bad)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"
    assert "export" in ann2snn.__all__ and callable(ann2snn.export)
