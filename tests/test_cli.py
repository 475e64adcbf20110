"""The CLI: convert on a saved ResNet-20, the demo's table, and one-line errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from helpers import randomize

import ann2snn
from ann2snn.cli.main import main

ARCHS = str(Path(__file__).parent / "fixtures" / "archs.py")


def run_cli(args, capsys):
    """Run the CLI in-process; returns (exit code, stdout, stderr)."""
    try:
        main(list(args))
        code = 0
    except SystemExit as exc:
        code = exc.code or 0
    out = capsys.readouterr()
    return code, out.out, out.err


@pytest.fixture
def resnet_ckpt(tmp_path):
    qann = randomize(ann2snn.models.create("resnet20", levels=4, granularity="channel"))
    return ann2snn.save(qann, tmp_path / "resnet20.pt")


def test_convert_resnet20_reports_every_bn_folded_and_every_qcfs_replaced(resnet_ckpt, tmp_path, capsys):
    out = tmp_path / "r.snn.pt"
    code, stdout, _ = run_cli(["convert", str(resnet_ckpt), "--T", "4", "--format", "torch", "-o", str(out), "--json"],
                              capsys)
    assert code == 0, stdout
    rep = json.loads(stdout)
    counts = rep["report"]["counts"]
    assert counts["batchnorm_folded"] == 21 and counts["batchnorm_kept_as_affine"] == 0  # 19 conv-BN + 2 shortcut
    assert counts["qcfs_found"] == counts["if_neurons"] == 19
    snn = ann2snn.load(out)
    assert snn.T == 4 and len(snn.stateful()) == 19


def test_convert_prints_a_table(resnet_ckpt, tmp_path, capsys):
    code, stdout, _ = run_cli(["convert", str(resnet_ckpt), "--format", "torch", "-o", str(tmp_path / "o.pt")], capsys)
    assert code == 0
    assert "fold_batchnorm" in stdout and "batchnorm folded" in stdout and "if neurons" in stdout


def _saved(tmp_path, arch):
    ann2snn.models.import_arch_module(ARCHS)
    return str(ann2snn.save(ann2snn.models.create(arch), tmp_path / f"{arch}.pt"))


@pytest.mark.parametrize("case,expect", [
    ("no-qcfs", "no QCFS activation"),
    ("untraceable", "cannot be traced by torch.fx"),
    ("unsupported", "Sigmoid has no spiking equivalent"),
    ("T0", "positive number of time steps"),
    ("pickle", "--trust-pickle"),
    ("corrupt", "not a readable PyTorch file"),
    ("missing", "does not exist"),
])
def test_bad_input_gives_one_line_and_nonzero_exit(case, expect, tmp_path, capsys):
    args = {
        "no-qcfs": lambda: [_saved(tmp_path, "test-relu-mlp"), "--arch-module", ARCHS],
        "untraceable": lambda: [_saved(tmp_path, "test-untraceable"), "--arch-module", ARCHS],
        "unsupported": lambda: [_saved(tmp_path, "test-sigmoid"), "--arch-module", ARCHS],
        "T0": lambda: [str(ann2snn.save(ann2snn.models.create("digits-cnn"), tmp_path / "d.pt")), "--T", "0"],
        "pickle": lambda: [_pickled(tmp_path)],
        "corrupt": lambda: [_corrupt(tmp_path)],
        "missing": lambda: [str(tmp_path / "nope.pt")],
    }[case]()
    before = set(tmp_path.iterdir())
    code, stdout, stderr = run_cli(["convert", *args], capsys)
    assert code != 0
    lines = [ln for ln in stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], stderr
    assert "Traceback" not in stderr
    assert set(tmp_path.iterdir()) == before  # nothing written


def _pickled(tmp_path):
    torch.save(ann2snn.models.create("digits-cnn"), tmp_path / "p.pt")
    return str(tmp_path / "p.pt")


def _corrupt(tmp_path):
    (tmp_path / "c.pt").write_bytes(b"\x00garbage")
    return str(tmp_path / "c.pt")


def test_verbose_shows_the_traceback(tmp_path, capsys):
    with pytest.raises(Exception, match="does not exist"):
        main(["--verbose", "convert", str(tmp_path / "nope.pt")])


def test_pickled_module_converts_with_trust_flag(tmp_path, capsys):
    path = _pickled(tmp_path)
    out = tmp_path / "p.snn.pt"
    code, stdout, stderr = run_cli(["convert", path, "--trust-pickle", "--format", "torch", "--json", "-o", str(out)],
                                   capsys)
    assert code == 0, stderr
    assert json.loads(stdout)["report"]["counts"]["if_neurons"] == 2
    assert isinstance(ann2snn.load(out), ann2snn.SpikingNetwork)  # written in the safe format, no pickle needed


def test_console_script_runs():
    r = subprocess.run([sys.executable, "-m", "ann2snn", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "convert" in r.stdout and "demo" in r.stdout
