"""A trained ReLU CNN → ``ann2snn.prepare`` (QCFS, thresholds from data) → fine-tune → SNN, exported and verified.

    python examples/relu_via_prepare.py [--epochs 6] [--finetune 2] [--out out/relu_via_prepare]

``prepare`` finds every ReLU on the torch.fx graph — ``nn.ReLU`` modules and ``F.relu`` calls alike — and puts a
QCFS in its place whose threshold is the 99.9th percentile of that activation on calibration images (per channel
here); max-pooling becomes average pooling. The weights are kept, so the QANN starts close to the ANN; a short
fine-tune with the QCFS straight-through gradient closes most of the gap, and the SNN follows the QANN.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

import ann2snn
from ann2snn.data import load_digits
from ann2snn.train import accuracy, fit


class ReluCNN(nn.Module):
    """An ordinary ReLU CNN for 8×8 digits: a module ReLU, a functional one and a max-pool."""

    def __init__(self, width: int = 8) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(1, width, 3, padding=1)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU()
        self.conv2 = nn.Conv2d(width, 2 * width, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(2 * width * 4 * 4, 10)
        self.input_shape = (1, 8, 8)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        return self.fc(x.flatten(1))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=6, help="epochs of ANN training")
    p.add_argument("--finetune", type=int, default=2, help="epochs of QANN fine-tuning")
    p.add_argument("--levels", type=int, default=4, help="QCFS levels L")
    p.add_argument("--out", type=Path, default=Path("out/relu_via_prepare"))
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    data = load_digits()
    x, y = data.x_test, data.y_test

    ann = ReluCNN()
    fit(ann, data, epochs=a.epochs, lr=5e-3, seed=0)
    ann_acc = accuracy(ann, x, y)

    qann = ann2snn.prepare(ann, data.x_train, levels=a.levels, granularity="channel", percentile=99.9)
    for site in qann.prepare_report["activations"]:
        print(f"  {site['replaced']} → QCFS, θ from {site['threshold_min']:.2f} to {site['threshold_max']:.2f}")
    print(f"  max-pool swapped for average pooling: {qann.prepare_report['maxpool_swapped']}")
    prepared_acc = accuracy(qann, x, y)
    fit(qann, data, epochs=a.finetune, lr=1e-3, seed=1)  # straight-through gradient through QCFS
    qann.eval()
    qann_acc = accuracy(qann, x, y)

    snn = ann2snn.convert(qann, T=a.levels)
    with torch.no_grad():
        per_t = snn.simulate(x, T=2 * a.levels)
    snn_acc = [int(c) / len(y) for c in (per_t.argmax(-1) == y).sum(1)]
    res = ann2snn.export(snn, a.out / "relu_cnn.snn.onnx", format="both", force=True)
    print(f"ReLU ANN {100 * ann_acc:.2f}% → prepared QANN {100 * prepared_acc:.2f}% → fine-tuned QANN "
          f"{100 * qann_acc:.2f}%")
    print(f"SNN at t = 1..{len(snn_acc)}: " + " ".join(f"{100 * v:.2f}" for v in snn_acc))
    print(f"exported and verified: {', '.join(str(f) for f in res.files.values())}")
    result = {"ann_accuracy": ann_acc, "prepared_accuracy": prepared_acc, "qann_accuracy": qann_acc,
              "snn_accuracy_per_t": snn_acc, "T": snn.T, "prepare_report": qann.prepare_report,
              "conversion": snn.report.counts(), "verification": res.verification,
              "files": {k: str(v) for k, v in res.files.items()}}
    if a.json:
        a.json.write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
