"""ann2snn against SpikingJelly 2.0 on the same net and data: accuracy at every T and time per sample.

Net: the MNIST conv net conv16-conv32-linear (zoo name ``mnist-convnet``), trained twice from the same
seed: as a QCFS QANN (L levels) for ann2snn, and with ReLU for SpikingJelly's rate-coding converter
(``Converter(RateCodingRecipe(dataloader, mode=...))``, modes ``max`` and ``99.9%``, run multi-step).
ann2snn's SNN runs on onnxruntime (the unrolled graph: T = max(T list) gives the accuracy at every T from one
run); SpikingJelly runs in PyTorch, multi-step (``[T, B, ...]``), as it ships.

Data: MNIST from ``$ANN2SNN_MNIST`` or ``../shared/data/mnist`` (gzip IDX files), else scikit-learn's digits
(upsampled to 28×28). The peer is optional and installed only for this script::

    pip install --no-deps spikingjelly==2.0.0
    pip install scipy h5py loguru requests tqdm

Timing: every contender runs with the same number of threads (``--threads``, default 1: ``torch.set_num_threads``
and onnxruntime's intra-op threads), the contenders take turns call by call (A B C A B C …), and each call's wall
time and process CPU time are recorded; the table gives the median and the spread (min–max) per sample.

Usage: ``python bench/peers.py [--epochs 2] [--levels 4] [--threads 1] [--json out.json]``; prints a table and JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ann2snn  # noqa: E402
from ann2snn.bench import measure, spread  # noqa: E402
from ann2snn.models.cnn import mnist_convnet  # noqa: E402

T_LIST = (1, 2, 4, 8, 16, 32, 64)


def load_data():
    """The dataset (ann2snn's own loaders): MNIST from ``$ANN2SNN_MNIST`` or ``../shared/data/mnist``, else digits
    upsampled to 28×28 so that the same net applies."""
    from ann2snn.data import Dataset, default_mnist_dir, load_digits, load_mnist

    if default_mnist_dir().is_dir():
        return load_mnist()  # normalized, as `ann2snn train` does
    print(f"MNIST not found in {default_mnist_dir()} (set ANN2SNN_MNIST); using scikit-learn digits at 28x28")
    d = load_digits()
    def up(t):
        return F.interpolate(t, size=(28, 28), mode="bilinear", align_corners=False)

    return Dataset("digits", up(d.x_train), d.y_train, up(d.x_test), d.y_test, 10)


def train(model: nn.Module, data, *, epochs: int, seed: int = 0) -> nn.Module:
    from ann2snn.train import fit

    fit(model, data, epochs=epochs, lr=2e-3, batch_size=128, seed=seed)
    return model.eval()


@torch.no_grad()
def accuracy(fn, x, y, batch: int = 500) -> np.ndarray:
    """``fn(xb) -> [T, B, K]`` running-mean logits (or ``[B, K]``) → accuracy per T (or a scalar)."""
    correct = None
    for i in range(0, len(y), batch):
        out = np.asarray(fn(x[i:i + batch]))
        c = (out.argmax(-1) == y[i:i + batch].numpy()).sum(-1)
        correct = c if correct is None else correct + c
    return correct / len(y)


def relu_net(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    net = mnist_convnet(levels=4)
    for i, m in enumerate(net):
        if isinstance(m, ann2snn.QCFS):
            net[i] = nn.ReLU()
    return net


def ann2snn_runner(qann, x_test, y_test, *, T_max: int, time_T: int, threads: int = 1):
    """Accuracy at every T (one unrolled run at T_max) and a timing function at ``time_T`` (onnxruntime)."""
    from ann2snn.exporters.onnx_unrolled import build_unrolled
    from ann2snn.runtime import UnrolledRunner

    snn = ann2snn.convert(qann, T_max)
    runner = UnrolledRunner(build_unrolled(snn, T=T_max).SerializeToString(), provider="cpu", threads=threads)
    acc = accuracy(lambda xb: runner.run(xb.numpy()), x_test, y_test)
    timed = UnrolledRunner(build_unrolled(ann2snn.convert(qann, time_T)).SerializeToString(), provider="cpu",
                           threads=threads)  # on CPU in cache-sized micro-batches, as the product runs it
    return acc, (lambda xb: timed.run_outputs(xb, ["logits"])), runner.provider


def spikingjelly_runner(ann, x_train, x_test, y_test, *, mode, T_max: int, time_T: int):
    """The same for SpikingJelly's converter, run multi-step in PyTorch as it ships."""
    from spikingjelly.activation_based import functional
    from spikingjelly.activation_based.ann2snn import Converter, RateCodingRecipe

    loader = [x_train[i:i + 200] for i in range(0, min(len(x_train), 6000), 200)]
    snn = Converter(RateCodingRecipe(loader, mode=mode)).convert(copy.deepcopy(ann)).eval()
    functional.set_step_mode(snn, "m")

    @torch.no_grad()
    def run(xb, T):
        functional.reset_net(snn)
        out = snn(xb.unsqueeze(0).expand(T, *xb.shape).contiguous())
        return (out.cumsum(0) / torch.arange(1, T + 1).reshape(-1, 1, 1)).numpy()

    acc = accuracy(lambda xb: run(xb, T_max), x_test, y_test)
    return acc, (lambda xb: run(torch.from_numpy(xb), time_T))


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--levels", type=int, default=4, help="QCFS levels L of the QANN")
    p.add_argument("--T", default=",".join(map(str, T_LIST)))
    p.add_argument("--time-T", type=int, default=4, help="T at which time per sample is measured")
    p.add_argument("--batch", default="1,256")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--threads", type=int, default=1, help="threads of every contender (torch and onnxruntime)")
    p.add_argument("--train-samples", type=int, default=0, help="use only this many training images (0: all)")
    p.add_argument("--test-samples", type=int, default=0, help="use only this many test images (0: all)")
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    a = p.parse_args(argv)
    Ts = [int(t) for t in a.T.split(",")]
    batches = [int(b) for b in a.batch.split(",")]
    torch.set_num_threads(a.threads)  # the same for every contender: SpikingJelly runs in torch
    data = load_data()
    xtr, ytr, xte, yte = data.x_train, data.y_train, data.x_test, data.y_test
    if a.train_samples:
        data.x_train, data.y_train = xtr, ytr = xtr[:a.train_samples], ytr[:a.train_samples]
    if a.test_samples:
        data.x_test, data.y_test = xte, yte = xte[:a.test_samples], yte[:a.test_samples]
    result = {"data": data.name, "net": "conv16-conv32-linear (zoo: mnist-convnet)", "levels": a.levels,
              "epochs": a.epochs, "train": len(ytr), "test": len(yte), "time_T": a.time_T, "T": Ts,
              "threads": a.threads, "rows": []}
    t0 = time.time()
    qann = train(mnist_convnet(levels=a.levels, init_threshold=2.0), data, epochs=a.epochs)
    q_acc = float(accuracy(lambda xb: qann(xb).numpy(), xte, yte))
    acc, timed, provider = ann2snn_runner(qann, xte, yte, T_max=max(Ts), time_T=a.time_T, threads=a.threads)
    contenders = {f"ann2snn L={a.levels}": (q_acc, acc, timed)}
    result["methods"] = {f"ann2snn L={a.levels}": f"QCFS QANN, L={a.levels}, converted; unrolled ONNX on onnxruntime "
                                                 f"{provider}"}
    try:
        import spikingjelly  # noqa: F401
    except ImportError:
        print("SpikingJelly is not installed: skipping the peer (pip install --no-deps spikingjelly==2.0.0; "
              "pip install scipy h5py loguru requests tqdm)")
    else:
        ann = train(relu_net(0), data, epochs=a.epochs)
        r_acc = float(accuracy(lambda xb: ann(xb).numpy(), xte, yte))
        for mode in ("max", "99.9%"):
            acc, timed = spikingjelly_runner(ann, xtr, xte, yte, mode=mode, T_max=max(Ts), time_T=a.time_T)
            contenders[f"SJ {mode}"] = (r_acc, acc, timed)
            result["methods"][f"SJ {mode}"] = (f"SpikingJelly 2.0 Converter(RateCodingRecipe(mode={mode!r})) of the "
                                               "ReLU ANN, PyTorch, multi-step")
    # time all contenders in turns, call by call, per batch size, so they share the machine's load
    ms = {name: {} for name in contenders}
    cpu = {name: {} for name in contenders}
    for b in batches:
        xb = np.ascontiguousarray(xte[:b].numpy())
        t = measure({name: (lambda f=f: f(xb)) for name, (_, _, f) in contenders.items()}, repeats=a.repeats)
        for name in contenders:
            ms[name][b] = {k: v / b * 1e3 for k, v in spread(t[name]["wall"]).items()}
            cpu[name][b] = {k: v / b * 1e3 for k, v in spread(t[name]["cpu"]).items()}
    for name, (ann_acc, acc, _) in contenders.items():
        result["rows"].append({"method": name, "ann_accuracy": ann_acc, "accuracy": {T: float(acc[T - 1]) for T in Ts},
                               "ms_per_sample": ms[name], "cpu_ms_per_sample": cpu[name]})
    result["seconds"] = time.time() - t0
    _print(result, Ts, batches)
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))
    return result


def _print(result, Ts, batches) -> None:
    try:
        from rich.console import Console
        from rich.table import Table
    except ImportError:  # pragma: no cover
        print(json.dumps(result, indent=2))
        return
    t = Table(title=f"{result['data']} test accuracy (%) by T, and time per sample at T={result['time_T']}",
              title_justify="left")
    t.add_column("method", no_wrap=True)
    t.add_column("ANN", justify="right")
    for T in Ts:
        t.add_column(f"T={T}", justify="right")
    for b in batches:
        t.add_column(f"ms b={b} [min–max]", justify="right")
        t.add_column(f"cpu ms b={b}", justify="right")

    def cell(d):
        return f"{d['median']:.4f} [{d['min']:.4f}–{d['max']:.4f}]"

    for r in result["rows"]:
        t.add_row(r["method"], f"{100 * r['ann_accuracy']:.2f}", *[f"{100 * r['accuracy'][T]:.2f}" for T in Ts],
                  *[c for b in batches for c in (cell(r["ms_per_sample"][b]), cell(r["cpu_ms_per_sample"][b]))])
    Console().print(t)
    for name, what in result.get("methods", {}).items():
        print(f"  {name}: {what}")
    print("  ANN: the QANN (ann2snn) or the ReLU ANN (SpikingJelly), same architecture, data, seed and epochs")
    print(f"  time per sample: median [min–max] over turns, {result['threads']} thread(s) for every contender; "
          "cpu = process CPU time")


if __name__ == "__main__":
    main()
