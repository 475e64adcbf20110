"""``ann2snn convert`` with the seed methods: multi-bit neurons, COS and TTRBR produce verified ONNX files (both
forms) that compute what the method's SNN computes; their mistakes are one-line errors that write nothing."""

from __future__ import annotations

import json

import pytest
import torch

import ann2snn
from ann2snn.data import Preprocessing, load_dataset
from ann2snn.methods.calibrate import apply_cos
from tests.helpers import randomize
from tests.test_cli import run_cli

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def digits_ckpt(tmp_path_factory):
    torch.manual_seed(0)
    qann = randomize(ann2snn.models.create("digits-cnn", levels=4, channels=4), seed=1, theta=(0.4, 1.5))
    qann.preprocessing = Preprocessing(16.0, None, None, "digits")
    return ann2snn.save(qann, tmp_path_factory.mktemp("methods") / "q.pt")


def _sidecar_kinds(path) -> set[str]:
    return set(json.loads(path.read_text())["neuron_kinds"])


def test_max_spikes_writes_multibit_neurons_verified(digits_ckpt, tmp_path, capsys):
    out = tmp_path / "mb.snn.onnx"
    code, stdout, err = run_cli(["convert", str(digits_ckpt), "--T", "2", "--max-spikes", "2", "-o", str(out)], capsys)
    assert code == 0, err
    assert out.exists() and (tmp_path / "mb.snn.step.onnx").exists()
    assert "16/16" in stdout and _sidecar_kinds(tmp_path / "mb.snn.json") == {"multibit"}


def test_cos_calibrates_on_data_and_the_file_computes_the_cos_snn(digits_ckpt, tmp_path, capsys):
    import onnxruntime as ort

    out = tmp_path / "cos.snn.onnx"
    code, stdout, err = run_cli(["convert", str(digits_ckpt), "--T", "4", "--cos", "--data", "digits",
                                 "--calib-samples", "64", "--format", "unrolled", "-o", str(out)], capsys)
    assert code == 0, err
    assert "COS: initial membranes calibrated for T = 4 on 64 images" in stdout
    qann = ann2snn.load(digits_ckpt)
    data = load_dataset("digits")
    cos = apply_cos(ann2snn.convert(qann, 4), data.x_train[:64], 4)
    x = data.x_test[:8]
    ref = cos.simulate(x, 4)[-1]
    got = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"]).run(["logits"], {"input": x.numpy()})[0]
    assert torch.allclose(torch.from_numpy(got), ref, atol=1e-5)
    plain = ann2snn.convert(qann, 4).simulate(x, 4)[-1]
    assert not torch.allclose(plain, ref, atol=1e-5), "COS changed nothing: the test could not tell"


def test_ttrbr_tune_writes_a_verified_snn(tmp_path, capsys):
    torch.manual_seed(0)
    qann = randomize(ann2snn.models.create("resnet20", width=4, in_channels=1, num_classes=10), seed=2)
    ckpt = ann2snn.save(qann, tmp_path / "r.pt")
    code, stdout, err = run_cli(["convert", str(ckpt), "--T", "2", "--ttrbr", "tune", "--data", "digits",
                                 "--calib-samples", "32", "--input-shape", "1,8,8", "--normalize", "none"], capsys)
    assert code == 0, err
    assert "TTRBR (tune) for T = 2 on 32 images" in stdout and (tmp_path / "r.snn.onnx").exists()


@pytest.mark.parametrize("argv,message", [
    (["--cos"], "--cos calibrates on training images: pass --data"),
    (["--ttrbr", "both"], "--ttrbr calibrates on training images: pass --data"),
    (["--cos", "--data", "digits", "--mode", "exact"], "drop --mode exact"),
    (["--max-spikes", "0"], "--max-spikes"),
])
def test_method_mistakes_are_one_line_and_write_nothing(digits_ckpt, tmp_path, capsys, argv, message):
    out = tmp_path / "x.snn.onnx"
    code, stdout, err = run_cli(["convert", str(digits_ckpt), "-o", str(out), *argv], capsys)
    assert code != 0 and message in err and len(err.strip().splitlines()) == 1, err
    assert not list(tmp_path.iterdir())
