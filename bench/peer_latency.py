"""Latency of one zoo network as an SNN: ann2snn's unrolled graph on onnxruntime, ann2snn's PyTorch simulator and
SpikingJelly 2.0 multi-step, at one T and batch size, single-threaded, taking turns call by call.

The unrolled graph runs as :class:`ann2snn.runtime.UnrolledRunner` runs it (on CPU in cache-sized micro-batches);
SpikingJelly and the simulator take the whole batch, as they ship.

The QANN is the zoo architecture (L levels, channel-wise thresholds) with seeded random weights, BatchNorm statistics
and thresholds (as ``bench/convert_scale.py``); SpikingJelly converts the ReLU ANN of the same architecture and
weights (``Converter(RateCodingRecipe(loader, mode="max"))``, 2 batches of 16 random images) and runs multi-step
(``[T, B, ...]``), as it ships. Time does not depend on training. Every contender gets one thread
(``torch.set_num_threads(1)``, onnxruntime's intra-op threads); wall and process CPU time of every call are recorded
and reported as median [min–max].

SpikingJelly is optional: ``--sj-path DIR`` adds a directory made with ``pip install --no-deps --target DIR
spikingjelly==2.0.0 tqdm loguru requests urllib3 idna certifi charset-normalizer`` (never into the project's
environment).

Usage: ``python bench/peer_latency.py --arch vgg16 --T 16 --batch 1 [--sj-path DIR] [--json out.json]``.
"""

from __future__ import annotations

import argparse
import copy
import json
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import ann2snn  # noqa: E402
from ann2snn.bench import measure, spread  # noqa: E402


def contenders(arch: str, levels: int, T: int, with_sj: bool) -> dict:
    from ann2snn.exporters.onnx_unrolled import build_unrolled
    from ann2snn.runtime import UnrolledRunner

    torch.manual_seed(0)
    qann = ann2snn.models.randomize(ann2snn.models.create(arch, levels=levels, granularity="channel"))
    snn = ann2snn.convert(qann, T)
    runner = UnrolledRunner(build_unrolled(snn, T=T).SerializeToString(), provider="cpu", threads=1)
    out = {"ann2snn unrolled (onnxruntime)": runner.run,
           "ann2snn simulator (PyTorch)": lambda x: snn.simulate(torch.from_numpy(x), T)}
    if with_sj:
        from spikingjelly.activation_based import functional
        from spikingjelly.activation_based.ann2snn import Converter, RateCodingRecipe

        torch.manual_seed(0)
        ann = ann2snn.models.randomize(ann2snn.models.create(arch, act="relu"))
        g = torch.Generator().manual_seed(1)
        loader = [torch.rand(16, *ann.input_shape, generator=g) for _ in range(2)]
        sj = Converter(RateCodingRecipe(loader, mode="max")).convert(copy.deepcopy(ann)).eval()
        functional.set_step_mode(sj, "m")

        @torch.no_grad()
        def run_sj(x):
            functional.reset_net(sj)
            xt = torch.from_numpy(x)
            return sj(xt.unsqueeze(0).expand(T, *xt.shape).contiguous()).cumsum(0)

        out["SpikingJelly 2.0 multi-step (PyTorch)"] = run_sj
    return out, tuple(qann.input_shape)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="vgg16")
    p.add_argument("--levels", type=int, default=4)
    p.add_argument("--T", type=int, default=16)
    p.add_argument("--batch", type=int, default=1)
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--sj-path", default="", help="directory with spikingjelly (and its light dependencies)")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    if a.sj_path:
        sys.path.insert(0, a.sj_path)
    torch.set_num_threads(1)
    try:
        import spikingjelly  # noqa: F401
        with_sj = True
    except ImportError:
        print("SpikingJelly is not importable: timing ann2snn only (see --sj-path)")
        with_sj = False
    fns, shape = contenders(a.arch, a.levels, a.T, with_sj)
    x = np.random.default_rng(0).random((a.batch, *shape), dtype=np.float32)
    times = measure({k: (lambda f=f: f(x)) for k, f in fns.items()}, warmup=3, repeats=a.repeats)
    result = {"arch": a.arch, "T": a.T, "batch": a.batch, "threads": 1, "repeats": a.repeats, "ms": {}}
    for k, t in times.items():
        result["ms"][k] = {c: {s: v * 1e3 for s, v in spread(t[c]).items()} for c in ("wall", "cpu")}
        w, c = result["ms"][k]["wall"], result["ms"][k]["cpu"]
        print(f"{a.arch} T={a.T} batch {a.batch}  {k:40s} cpu ms {c['median']:9.2f} [{c['min']:.2f}–{c['max']:.2f}]"
              f"  wall ms {w['median']:9.2f} [{w['min']:.2f}–{w['max']:.2f}]", flush=True)
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
