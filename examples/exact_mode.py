"""Exact mode: convert with ``convention="exact"`` and watch the SNN's logits become the QANN's, then stay there.

    python examples/exact_mode.py [--epochs 8] [--out out/exact_mode]

Under the exact convention QCFS becomes a bounded bipolar neuron and the input and every constant are injected
for the first L steps only; the read-out divides the running sum by min(t, L). Once every neuron has settled on
its QANN level the logits *equal* the QANN's (up to float ties on a quantization boundary) and accuracy stops
moving, where rate mode keeps drifting. The script reports the step from which every image's logits equal the
QANN's, compares both conventions at every t, and exports the exact SNN (both ONNX forms, verified).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import ann2snn
from ann2snn.data import load_digits
from ann2snn.evaluate import exact_logits_mask, first_stable_step, step_stats
from ann2snn.runtime import StatefulRunner
from ann2snn.train import fit


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=8)
    p.add_argument("--levels", type=int, default=4, help="QCFS levels L")
    p.add_argument("--out", type=Path, default=Path("out/exact_mode"))
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    data = load_digits()
    x, y = data.x_test, data.y_test
    qann = ann2snn.models.create("digits-cnn", levels=a.levels, channels=8, init_threshold=2.0)
    fit(qann, data, epochs=a.epochs, lr=5e-3, seed=0)
    qann.eval()

    snn = ann2snn.convert(qann, convention="exact")  # T defaults to 4·L
    rate = ann2snn.convert(qann, convention="rate")  # for comparison: IF neurons, input at every step
    T = snn.T
    with torch.no_grad():
        q_logits = qann(x)
        per_t = snn.simulate(x)  # [T, B, K]: logits after t = 1..T
        rate_t = rate.simulate(x, T=T)
    equal = exact_logits_mask(per_t, q_logits)  # [T, B]: all K logits within 1e-4·max(1, max|QANN logit|)
    stats = step_stats(first_stable_step(equal), T)
    print(f"exact mode (L = {a.levels}, T = {T}): logits equal the QANN's for every image from step "
          f"{stats['step_all']} (median {stats['median']}; {stats['never']} of {len(y)} not by step {T})")
    print(f"max |SNN − QANN| logit at T: {float((per_t[-1] - q_logits).abs().max()):.2g}")

    def accuracy_per_t(logits):
        return [int(c) / len(y) for c in (logits.argmax(-1) == y).sum(1)]

    qann_acc = int((q_logits.argmax(-1) == y).sum()) / len(y)
    rate_acc, exact_acc = accuracy_per_t(rate_t), accuracy_per_t(per_t)
    equal_fraction = [int(c) / len(y) for c in equal.sum(1)]
    print(f"QANN {100 * qann_acc:.2f}%")
    print("   t   rate acc  exact acc  exact logits")
    for t in range(T):
        print(f"{t + 1:4d}   {100 * rate_acc[t]:7.2f}  {100 * exact_acc[t]:9.2f}  {100 * equal_fraction[t]:11.2f}")

    out = ann2snn.export(snn, a.out / "digits_exact.snn.onnx", format="both", force=True)
    onnx_logits = StatefulRunner(out.files["stateful"], provider="cpu").run(x.numpy(), T)  # [T, B, K]
    onnx_diff = float((torch.from_numpy(onnx_logits[-1]) - q_logits).abs().max())
    print(f"stateful ONNX, {T} steps: max |ONNX − QANN| logit {onnx_diff:.2g}; files in {a.out}")
    result = {"T": T, "levels": a.levels, "qann_accuracy": qann_acc, "exactness": stats,
              "equal_fraction_per_t": equal_fraction, "rate_accuracy_per_t": rate_acc,
              "exact_accuracy_per_t": exact_acc,
              "onnx_stateful_vs_qann_max_abs": onnx_diff,
              "onnx_stateful_accuracy": int((onnx_logits[-1].argmax(-1) == y.numpy()).sum()) / len(y),
              "verification": out.verification, "files": {k: str(v) for k, v in out.files.items()}}
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
