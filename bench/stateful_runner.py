"""The stateful runner's cost: peak memory of one run, and the time it adds per run, beside the unrolled graph.

- memory: one fresh process per contender (the unrolled graph on the whole batch; the unrolled graph as
  ``UnrolledRunner`` runs it, in micro-batches on CPU; the stateful runner, also in micro-batches) runs the graph
  twice (steady state: onnxruntime allocates a planned memory pattern on the second run) at ``--batch`` (default
  256) for ``--T`` steps (default 16) and reports its peak resident memory (``ru_maxrss``) minus the resident
  memory just before the runs (model, session and input loaded), single-threaded;
- overhead: in one process, the stateful graph of a tiny network (``digits-cnn``, batch 1) driven T steps by this
  checkout's runner and, with ``--baseline DIR``, by another checkout's, taking turns call by call; the difference
  of their medians is per-run driver overhead (the graph and its work are the same).

Usage: ``python bench/stateful_runner.py [--arch resnet20] [--batch 256] [--T 16] [--baseline DIR]``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r'''
import json, resource, sys, tempfile
import numpy as np, torch
torch.set_num_threads(1)
import ann2snn
from ann2snn.runtime import StatefulRunner, make_session
arch, batch, T, which = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
torch.manual_seed(0)
snn = ann2snn.convert(ann2snn.models.create(arch, levels=4).eval(), T)
d = tempfile.mkdtemp()
files = ann2snn.export(snn, d + "/m.onnx", verify=False).files
x = np.random.default_rng(0).random((batch, *snn.input_shape), dtype=np.float32)
if which == "unrolled":  # the whole batch in one run
    sess, _ = make_session(files["unrolled"], provider="cpu", threads=1)
    run = lambda: sess.run(["logits_per_step"], {"input": x})
elif which == "unrolled runner":  # as ann2snn runs it: on CPU in micro-batches
    from ann2snn.runtime import UnrolledRunner
    runner = UnrolledRunner(files["unrolled"], provider="cpu", threads=1)
    run = lambda: runner.run(x)
else:
    runner = StatefulRunner(files["stateful"], provider="cpu", threads=1)
    run = lambda: runner.run(x, T)
def rss_mb():
    with open("/proc/self/status") as f:
        return next(int(l.split()[1]) for l in f if l.startswith("VmRSS")) / 1024
before = rss_mb()
run()
run()  # onnxruntime plans its memory pattern on the first run and allocates it on the second
print(json.dumps({"peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "before_mb": before}))
'''


def memory(which: str, arch: str, batch: int, T: int, path: str) -> dict:
    env = {**os.environ, "PYTHONPATH": path, "OMP_NUM_THREADS": "1"}
    p = subprocess.run([sys.executable, "-c", CHILD, arch, str(batch), str(T), which], capture_output=True,
                       text=True, env=env, cwd="/tmp")
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode or not lines:
        return {"error": (p.stderr.strip().splitlines() or ["?"])[-1][:200]}
    r = json.loads(lines[-1])
    r["run_mb"] = r["peak_mb"] - r["before_mb"]
    return r


def _runtime_module(root: str, name: str):
    spec = importlib.util.spec_from_file_location(name, Path(root) / "ann2snn" / "runtime.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def overhead(T: int, baseline: str, repeats: int) -> dict:
    import numpy as np
    import torch

    import ann2snn
    from ann2snn.bench import measure, spread
    from ann2snn.exporters.onnx_stateful import build_stateful

    torch.set_num_threads(1)
    torch.manual_seed(0)
    snn = ann2snn.convert(ann2snn.models.create("digits-cnn", levels=4).eval(), T)
    data = build_stateful(snn, T=T)[0].SerializeToString()
    x = np.random.default_rng(0).random((1, *snn.input_shape), dtype=np.float32)
    runners = {"this checkout": _runtime_module(str(ROOT), "rt_new").StatefulRunner(data, provider="cpu", threads=1)}
    if baseline:
        runners["baseline"] = _runtime_module(baseline, "rt_old").StatefulRunner(data, provider="cpu", threads=1)
    times = measure({k: (lambda r=r: r.run(x, T)) for k, r in runners.items()}, warmup=20, repeats=repeats)
    return {k: {c: {s: v * 1e3 for s, v in spread(t[c]).items()} for c in ("wall", "cpu")} for k, t in times.items()}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--arch", default="resnet20")
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--T", type=int, default=16)
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--repeats", type=int, default=300)
    p.add_argument("--baseline", default="")
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    contenders = {"unrolled": ("unrolled", str(ROOT)), "unrolled runner": ("unrolled runner", str(ROOT)),
                  "stateful": ("stateful", str(ROOT))}
    if a.baseline:
        contenders["stateful (baseline)"] = ("stateful", a.baseline)
    mem: dict[str, list] = {k: [] for k in contenders}
    for _ in range(a.rounds):
        for k, (which, path) in contenders.items():
            mem[k].append(memory(which, a.arch, a.batch, a.T, path))
    for k, rs in mem.items():
        print(f"{a.arch} batch {a.batch} T={a.T} {k:22s} memory of one run (MB): "
              + ", ".join(f"{r['run_mb']:.0f}" if "run_mb" in r else r["error"] for r in rs)
              + "; peak RSS: " + ", ".join(f"{r.get('peak_mb', 0):.0f}" for r in rs))
    over = overhead(a.T, a.baseline, a.repeats)
    for k, v in over.items():
        print(f"digits-cnn batch 1 T={a.T} stateful run, {k:14s} wall ms {v['wall']['median']:.3f} "
              f"[{v['wall']['min']:.3f}–{v['wall']['max']:.3f}]  cpu ms {v['cpu']['median']:.3f}")
    result = {"memory": mem, "overhead_ms": over, "arch": a.arch, "batch": a.batch, "T": a.T}
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
