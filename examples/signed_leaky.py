"""A LeakyReLU ANN → ``ann2snn.prepare`` → signed QANN (``SignedQCFS``) → SNN, in rate and exact mode.

    python examples/signed_leaky.py [--epochs 6] [--finetune 2] [--out out/signed_leaky]

``prepare`` turns each ``LeakyReLU(α)`` into a ``SignedQCFS``: a LeakyReLU of slope α quantized to L levels on
each side, clipped to ``[−α·θ, θ]``, θ calibrated on the positive side. A zoo model comes back as the zoo's own
signed architecture (``act="signed"``), so ``ann2snn.save`` can write it. It converts to bipolar neurons, which
emit +1 and −1 spikes, under both time conventions; both SNNs are exported to ONNX and verified.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

import ann2snn
from ann2snn.data import load_digits
from ann2snn.evaluate import evaluate
from ann2snn.train import accuracy, fit


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=6, help="epochs of LeakyReLU ANN training")
    p.add_argument("--finetune", type=int, default=2, help="epochs of signed QANN fine-tuning")
    p.add_argument("--levels", type=int, default=4, help="quantization levels L on each side")
    p.add_argument("--alpha", type=float, default=0.1, help="the LeakyReLU slope")
    p.add_argument("--out", type=Path, default=Path("out/signed_leaky"))
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    a = p.parse_args(argv)
    a.out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    data = load_digits()
    x, y = data.x_test, data.y_test

    ann = ann2snn.models.create("digits-cnn", channels=8, act="leaky", alpha=a.alpha)
    fit(ann, data, epochs=a.epochs, lr=5e-3, seed=0)
    ann_acc = accuracy(ann, x, y)
    qann = ann2snn.prepare(ann, data.x_train, levels=a.levels, granularity="channel")
    print(f"prepared: {qann.prepare_report['rebuilt_as']}; "
          + ", ".join(f"{s['replaced']} → SignedQCFS α = {s['alpha']}" for s in qann.prepare_report["activations"]))
    fit(qann, data, epochs=a.finetune, lr=1e-3, seed=1)
    qann.eval()
    ann2snn.save(qann, a.out / "signed_qann.pt", force=True)

    T = 4 * a.levels
    res = evaluate(qann, (x, y), list(range(1, T + 1)), convention="rate,exact")
    print(f"LeakyReLU ANN {100 * ann_acc:.2f}% → signed QANN {100 * res['qann_accuracy']:.2f}%")
    result = {"ann_accuracy": ann_acc, "qann_accuracy": res["qann_accuracy"], "T": T, "modes": {},
              "prepared_as": qann.prepare_report["rebuilt_as"], "model_file": str(a.out / "signed_qann.pt")}
    for mode in ("rate", "exact"):
        snn = ann2snn.convert(qann, T=T, convention=mode)
        out = ann2snn.export(snn, a.out / f"signed_{mode}.snn.onnx", format="both", force=True)
        curve = [r["snn_accuracy"] for r in res["modes"][mode]["per_T"]]
        exact_logits = res["modes"][mode]["exactness"]["exact_logits"]
        print(f"{mode:>5} ({', '.join(snn.info.neuron_kinds)} neurons): SNN at t = 1..{T}: "
              + " ".join(f"{100 * v:.1f}" for v in curve))
        equal_at_T = res["modes"][mode]["per_T"][-1]["exact_logits"]
        since = f"from step {exact_logits['step_all']}" if exact_logits["step_all"] else "not for every image"
        print(f"       logits equal the QANN's at t = {T} for {100 * equal_at_T:.1f}% of the images ({since}); "
              f"ONNX verified: {', '.join(p.name for p in out.files.values())}")
        result["modes"][mode] = {"neuron_kinds": list(snn.info.neuron_kinds), "accuracy_per_t": curve,
                                 "exact_logits": exact_logits, "verification": out.verification,
                                 "files": {k: str(v) for k, v in out.files.items()}}
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
