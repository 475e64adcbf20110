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

Usage: ``python bench/peers.py [--epochs 1] [--levels 4] [--json out.json]``; prints a table and JSON.
"""

from __future__ import annotations

import argparse
import copy
import gzip
import json
import os
import struct
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
from ann2snn.bench import median_time  # noqa: E402
from ann2snn.models.cnn import mnist_convnet  # noqa: E402

T_LIST = (1, 2, 4, 8, 16, 32, 64)


def _idx(path: Path) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    ndim = data[3]
    dims = struct.unpack(">" + "I" * ndim, data[4:4 + 4 * ndim])
    return np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim).reshape(dims)


def load_data():
    """``(name, x_train, y_train, x_test, y_test)`` as float tensors in [0, 1], ``[N, 1, 28, 28]``."""
    root = Path(os.environ.get("ANN2SNN_MNIST", ROOT.parent / "shared" / "data" / "mnist"))
    files = {k: root / f"{k}.gz" for k in ("train-images.idx3-ubyte", "train-labels.idx1-ubyte",
                                          "t10k-images.idx3-ubyte", "t10k-labels.idx1-ubyte")}
    if all(p.exists() for p in files.values()):
        arr = [_idx(p) for p in files.values()]
        x = [torch.tensor(a, dtype=torch.float32).unsqueeze(1) / 255.0 for a in (arr[0], arr[2])]
        y = [torch.tensor(a, dtype=torch.int64) for a in (arr[1], arr[3])]
        return "mnist", x[0], y[0], x[1], y[1]
    print(f"MNIST not found in {root} (set ANN2SNN_MNIST); using scikit-learn digits upsampled to 28x28")
    d = ann2snn.data.load_digits()
    up = (lambda t: F.interpolate(t, size=(28, 28), mode="bilinear", align_corners=False))
    return "digits", up(d.x_train), d.y_train, up(d.x_test), d.y_test


def train(model: nn.Module, x, y, *, epochs: int, seed: int = 0, batch: int = 128, lr: float = 2e-3) -> nn.Module:
    torch.manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps = epochs * ((len(y) + batch - 1) // batch)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=lr, total_steps=steps)
    model.train()
    g = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        perm = torch.randperm(len(y), generator=g)
        for i in range(0, len(y), batch):
            j = perm[i:i + batch]
            loss = F.cross_entropy(model(x[j]), y[j])
            opt.zero_grad()
            loss.backward()
            opt.step()
            sched.step()
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


def run_ann2snn(qann, x_test, y_test, *, T_max: int, batches, time_T: int, repeats: int):
    from ann2snn.exporters.onnx_unrolled import build_unrolled
    from ann2snn.runtime import make_session

    snn = ann2snn.convert(qann, T_max)
    sess, provider = make_session(build_unrolled(snn, T=T_max).SerializeToString(), provider="cpu")
    acc = accuracy(lambda xb: sess.run(["logits_per_step"], {"input": xb.numpy()})[0], x_test, y_test)
    tsess, _ = make_session(build_unrolled(ann2snn.convert(qann, time_T)).SerializeToString(), provider="cpu")
    times = {}
    for b in batches:
        xb = x_test[:b].numpy()
        times[b] = median_time(lambda: tsess.run(["logits"], {"input": xb}), repeats=repeats) / b
    return acc, times, provider


def run_spikingjelly(ann, x_train, x_test, y_test, *, mode, T_max: int, batches, time_T: int, repeats: int):
    from spikingjelly.activation_based import functional
    from spikingjelly.activation_based.ann2snn import Converter, RateCodingRecipe

    loader = [(x_train[i:i + 200], None) for i in range(0, min(len(x_train), 6000), 200)]
    loader = [xb for xb, _ in loader]
    snn = Converter(RateCodingRecipe(loader, mode=mode)).convert(copy.deepcopy(ann)).eval()
    functional.set_step_mode(snn, "m")

    @torch.no_grad()
    def run(xb, T):
        functional.reset_net(snn)
        out = snn(xb.unsqueeze(0).expand(T, *xb.shape).contiguous())
        return (out.cumsum(0) / torch.arange(1, T + 1).reshape(-1, 1, 1)).numpy()

    acc = accuracy(lambda xb: run(xb, T_max), x_test, y_test)
    times = {b: median_time(lambda: run(x_test[:b], time_T), repeats=repeats) / b for b in batches}
    return acc, times


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=1)
    p.add_argument("--levels", type=int, default=4, help="QCFS levels L of the QANN")
    p.add_argument("--T", default=",".join(map(str, T_LIST)))
    p.add_argument("--time-T", type=int, default=4, help="T at which time per sample is measured")
    p.add_argument("--batch", default="1,256")
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--train-samples", type=int, default=0, help="use only this many training images (0: all)")
    p.add_argument("--test-samples", type=int, default=0, help="use only this many test images (0: all)")
    p.add_argument("--json", type=Path, default=None, help="also write the result here")
    a = p.parse_args(argv)
    Ts = [int(t) for t in a.T.split(",")]
    batches = [int(b) for b in a.batch.split(",")]
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    name, xtr, ytr, xte, yte = load_data()
    if a.train_samples:
        xtr, ytr = xtr[:a.train_samples], ytr[:a.train_samples]
    if a.test_samples:
        xte, yte = xte[:a.test_samples], yte[:a.test_samples]
    result = {"data": name, "net": "conv16-conv32-linear (zoo: mnist-convnet)", "levels": a.levels,
              "epochs": a.epochs, "train": len(ytr), "test": len(yte), "time_T": a.time_T, "T": Ts, "rows": []}
    t0 = time.time()
    qann = train(mnist_convnet(levels=a.levels, init_threshold=2.0), xtr, ytr, epochs=a.epochs)
    qann.arch_name, qann.arch_kwargs = "mnist-convnet", {"levels": a.levels}
    q_acc = float(accuracy(lambda xb: qann(xb).numpy(), xte, yte))
    acc, times, provider = run_ann2snn(qann, xte, yte, T_max=max(Ts), batches=batches, time_T=a.time_T,
                                       repeats=a.repeats)
    result["rows"].append({"method": f"ann2snn QCFS L={a.levels} (onnxruntime {provider})", "ann_accuracy": q_acc,
                           "accuracy": {T: float(acc[T - 1]) for T in Ts},
                           "ms_per_sample": {b: times[b] * 1e3 for b in batches}})
    try:
        import spikingjelly  # noqa: F401
    except ImportError:
        print("SpikingJelly is not installed: skipping the peer (pip install --no-deps spikingjelly==2.0.0; "
              "pip install scipy h5py loguru requests tqdm)")
    else:
        ann = train(relu_net(0), xtr, ytr, epochs=a.epochs)
        r_acc = float(accuracy(lambda xb: ann(xb).numpy(), xte, yte))
        for mode in ("max", "99.9%"):
            acc, times = run_spikingjelly(ann, xtr, xte, yte, mode=mode, T_max=max(Ts), batches=batches,
                                          time_T=a.time_T, repeats=a.repeats)
            result["rows"].append({"method": f"SpikingJelly 2.0 rate coding mode={mode} (PyTorch, multi-step)",
                                   "ann_accuracy": r_acc, "accuracy": {T: float(acc[T - 1]) for T in Ts},
                                   "ms_per_sample": {b: times[b] * 1e3 for b in batches}})
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
    t.add_column("method")
    t.add_column("ANN")
    for T in Ts:
        t.add_column(f"T={T}", justify="right")
    for b in batches:
        t.add_column(f"ms/sample b={b}", justify="right")
    for r in result["rows"]:
        t.add_row(r["method"], f"{100 * r['ann_accuracy']:.2f}", *[f"{100 * r['accuracy'][T]:.2f}" for T in Ts],
                  *[f"{r['ms_per_sample'][b]:.4f}" for b in batches])
    Console().print(t)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
