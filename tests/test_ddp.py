"""DistributedDataParallel: two gloo processes on CPU, launched the way users do (torchrun -m ann2snn train)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import torch

import ann2snn
from ann2snn.data import load_digits
from ann2snn.layers import qcfs_modules


def test_two_gloo_processes_train_one_epoch_and_write_a_normal_checkpoint(tmp_path):
    env = {**os.environ, "ANN2SNN_RUNS": str(tmp_path / "runs"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "ann2snn", "train", "--arch", "digits-cnn", "--data", "digits", "--epochs", "1", "--lr", "5e-3",
           "--device", "cpu", "-o", str(tmp_path / "ddp.pt"), "--json"]
    proc = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = json.loads(proc.stdout[proc.stdout.index("{"):])  # only rank 0 prints
    assert out["world_size"] == 2 and out["epochs"] == 1
    model = ann2snn.load(tmp_path / "ddp.pt")
    assert model.arch_name == "digits-cnn" and len(qcfs_modules(model)) == 2
    assert model.checkpoint_meta["test_accuracy"] == out["best_test_accuracy"]
    assert sorted(p.name for p in tmp_path.glob("*.pt")) == ["ddp.last.pt", "ddp.pt"]
    assert len(list((tmp_path / "runs").glob("*.json"))) == 1  # rank 0 alone writes the record
    data = load_digits()
    with torch.no_grad():
        acc = float((model(data.x_test).argmax(1) == data.y_test).float().mean())
    assert abs(acc - out["best_test_accuracy"]) < 1e-6  # sharded evaluation counted every test image once
