"""Your own CNN with QCFS activations → train → convert to an SNN → export to ONNX, verified on onnxruntime.

    python examples/own_cnn_to_snn.py [--epochs 8] [--out out/own_cnn]

The network is an ordinary ``nn.Module``: each ReLU is replaced by ``ann2snn.QCFS`` (channel-wise thresholds,
CS-QCFS), it trains with any loop (here ``ann2snn.train.fit``), and ``ann2snn.convert`` turns it into an SNN of
IF neurons that reproduces the QANN at T = L. Registering the builder (``@ann2snn.models.register``) lets
``ann2snn.save`` write a safe model file and the CLI rebuild it::

    ann2snn convert out/own_cnn/my_cnn.pt --arch-module examples/own_cnn_to_snn.py
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
from torch import nn

import ann2snn
from ann2snn.data import load_digits
from ann2snn.exporters.contract import LOGITS
from ann2snn.runtime import StatefulRunner, UnrolledRunner
from ann2snn.train import fit


@ann2snn.models.register("my-digits-cnn")
def my_digits_cnn(levels: int = 4, width: int = 8) -> nn.Module:
    return MyCNN(levels=levels, width=width)


class MyCNN(nn.Module):
    """conv-BN-QCFS ×2, average pooling, linear; input [B, 1, 8, 8] (scikit-learn digits)."""

    def __init__(self, levels: int = 4, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.act1 = ann2snn.QCFS(levels, granularity="channel", num_channels=width, init_threshold=2.0)
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(2 * width)
        self.act2 = ann2snn.QCFS(levels, granularity="channel", num_channels=2 * width, init_threshold=2.0)
        self.pool = nn.AvgPool2d(2)
        self.fc = nn.Linear(2 * width * 4 * 4, 10)
        self.input_shape = (1, 8, 8)  # what convert and export trace with

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.act1(self.bn1(self.conv1(x)))
        x = self.pool(self.act2(self.bn2(self.conv2(x))))
        return self.fc(torch.flatten(x, 1))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--levels", type=int, default=4, help="QCFS levels L")
    p.add_argument("--out", type=Path, default=Path("out/own_cnn"))
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    data = load_digits()

    qann = ann2snn.models.create("my-digits-cnn", levels=a.levels)
    fit(qann, data, epochs=a.epochs, lr=5e-3, seed=0)
    qann.eval()
    model_file = ann2snn.save(qann, a.out / "my_cnn.pt", force=True)

    snn = ann2snn.convert(qann, T=a.levels)  # rate convention: IF neurons, best at T = L
    print(snn.report.summary())
    x, y = data.x_test, data.y_test
    with torch.no_grad():
        qann_acc = int((qann(x).argmax(-1) == y).sum()) / len(y)
        per_t = snn.simulate(x, T=2 * a.levels)  # [T, B, K]: the logits after every t
    snn_acc = [int(c) / len(y) for c in (per_t.argmax(-1) == y).sum(1)]
    print(f"QANN {100 * qann_acc:.2f}%; SNN at t = 1..{len(snn_acc)}: "
          + " ".join(f"{100 * v:.2f}" for v in snn_acc))

    res = ann2snn.export(snn, a.out / "my_cnn.snn.onnx", format="both", force=True)  # verified, then written
    for fmt, rep in res.verification.items():
        print(f"{fmt}: max |ONNX − simulator| = {rep['max_abs_error']:.2g} on {rep['samples']} samples")
    onnx_logits = UnrolledRunner(res.files["unrolled"], provider="cpu").run_outputs(x.numpy(), [LOGITS])[LOGITS]
    stateful_logits = StatefulRunner(res.files["stateful"], provider="cpu").run(x.numpy())[-1]
    onnx_acc = int((onnx_logits.argmax(-1) == y.numpy()).sum()) / len(y)
    stateful_acc = int((stateful_logits.argmax(-1) == y.numpy()).sum()) / len(y)
    print(f"onnxruntime at T = {snn.T}: unrolled {100 * onnx_acc:.2f}%, stateful {100 * stateful_acc:.2f}%; "
          f"files in {a.out}")
    print(f"convert it again from the command line: ann2snn convert {model_file} --arch-module {__file__}")
    result = {"qann_accuracy": qann_acc, "snn_accuracy_per_t": snn_acc, "T": snn.T,
              "onnx_unrolled_accuracy": onnx_acc, "onnx_stateful_accuracy": stateful_acc,
              "onnx_vs_simulator_max_abs": float(np.abs(onnx_logits - per_t[snn.T - 1].numpy()).max()),
              "verification": res.verification, "model_file": str(model_file),
              "files": {k: str(v) for k, v in res.files.items()}, "sidecar": str(res.sidecar)}
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
