"""What a conversion costs at scale: time (wall and process CPU) and peak memory of ``convert`` + ``export`` (both
ONNX forms, verified) for ResNet-20/-50/-101 and VGG-16, beside SpikingJelly's converter on the same architecture.

Each measurement is one fresh Python process (imports, model building, conversion: what ``ann2snn convert`` costs),
single-threaded (``torch.set_num_threads(1)``, onnxruntime sessions with one intra-op thread), its peak resident
memory read with ``resource.getrusage(RUSAGE_SELF).ru_maxrss``. Contenders take turns (A B C A B C ...) so that they
share the machine's load; the spread over rounds is printed with the median.

Contenders:

- ``ann2snn``: this checkout — ``ann2snn.convert(qann, T)`` then ``ann2snn.export(snn, path)`` (unrolled + stateful,
  verified on onnxruntime);
- ``ann2snn@DIR`` (``--baseline DIR``): another checkout of ann2snn (e.g. ``git archive`` of an older commit), the
  same code path; a failed verification is timed up to the failure and marked;
- ``spikingjelly`` (when importable; ``--sj-path DIR`` adds a directory to its ``sys.path``, e.g. one made with
  ``pip install --no-deps --target DIR spikingjelly==2.0.0 tqdm loguru requests urllib3 idna certifi
  charset-normalizer``; never install it into the project's environment): ``Converter(RateCodingRecipe(loader,
  mode="max")).convert(ann)`` of the ReLU ANN of the same architecture and weights, the loader being
  ``--calib`` batches of 16 images. It neither exports nor verifies anything.

The QANN is the zoo architecture (L levels, channel-wise thresholds) with seeded random weights, BatchNorm statistics
and thresholds (as the tests' fixtures): conversion cost does not depend on training.

Usage: ``python bench/convert_scale.py --models resnet20,resnet50 --rounds 2 [--json out.json]``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHILD = r'''
import json, os, resource, sys, tempfile, time
w0, c0 = time.perf_counter(), time.process_time()
who, arch, extra = sys.argv[1], sys.argv[2], sys.argv[6]
L, T, calib = int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
if extra:
    sys.path.insert(0, extra)
import torch
from torch import nn
torch.set_num_threads(1)
import ann2snn

def randomize(model, seed=0):
    g = torch.Generator().manual_seed(seed)
    def u(t, lo, hi):
        t.copy_(torch.rand(t.shape, generator=g) * (hi - lo) + lo)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d) or isinstance(m, nn.BatchNorm1d):
                u(m.running_mean, -0.3, 0.3); u(m.running_var, 0.5, 2.0); u(m.weight, 0.5, 1.5); u(m.bias, -0.2, 0.4)
            elif isinstance(m, ann2snn.layers.QCFS):
                target = torch.rand(m.lam.shape, generator=g) * 1.2 + 0.3
                m.lam.copy_(ann2snn.layers.inverse_softplus(target) if m.positive == "softplus" else target)
    return model.eval()

torch.manual_seed(0)
status, verification = "ok", None
if who == "spikingjelly":
    from spikingjelly.activation_based.ann2snn import Converter, RateCodingRecipe
    ann = randomize(ann2snn.models.create(arch, act="relu"))
    g = torch.Generator().manual_seed(1)
    loader = [torch.rand(16, *ann.input_shape, generator=g) for _ in range(calib)]
    w1, c1 = time.perf_counter(), time.process_time()
    snn = Converter(RateCodingRecipe(loader, mode="max")).convert(ann)
else:
    import ann2snn.runtime as R
    make = R.make_session
    R.make_session = lambda model, **kw: make(model, **{**kw, "threads": kw.get("threads") or 1})
    qann = randomize(ann2snn.models.create(arch, levels=L, granularity="channel"))
    w1, c1 = time.perf_counter(), time.process_time()
    try:
        snn = ann2snn.convert(qann, T)
        with tempfile.TemporaryDirectory() as d:
            res = ann2snn.export(snn, os.path.join(d, "m.onnx"))
        keys = ("samples", "tie_flips", "decisions_checked", "max_error_over_magnitude", "samples_shared_with_unrolled")
        verification = {k: {kk: v.get(kk) for kk in keys} for k, v in res.verification.items()}
    except Exception as exc:
        status = f"{type(exc).__name__}: {str(exc)[:160]}"
w2 = time.perf_counter()
c2 = time.process_time()
print(json.dumps({"wall_s": w2 - w0, "convert_wall_s": w2 - w1, "cpu_s": c2 - c0, "convert_cpu_s": c2 - c1,
                  "maxrss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, "status": status,
                  "verification": verification}))
'''


def run_one(who: str, arch: str, L: int, T: int, calib: int, path: str, timeout: float) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if who != "spikingjelly":
        env["PYTHONPATH"] = path  # the checkout to import ann2snn from
    cmd = [sys.executable, "-c", CHILD, "spikingjelly" if who == "spikingjelly" else "ann2snn", arch, str(L), str(T),
           str(calib), path if who == "spikingjelly" else ""]
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd="/tmp")
    except subprocess.TimeoutExpired:
        return {"status": f"timeout after {timeout:.0f} s"}
    lines = [ln for ln in p.stdout.splitlines() if ln.startswith("{")]
    if p.returncode or not lines:
        return {"status": f"exit {p.returncode}: {(p.stderr.strip().splitlines() or [''])[-1][:200]}"}
    return json.loads(lines[-1])


def spread(values: list[float]) -> dict:
    return {"min": min(values), "median": statistics.median(values), "max": max(values)} if values else {}


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet20,resnet50,resnet101,vgg16")
    p.add_argument("--levels", type=int, default=4)
    p.add_argument("--T", type=int, default=0, help="time steps (default: L)")
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--calib", type=int, default=2, help="SpikingJelly calibration batches of 16 images")
    p.add_argument("--baseline", default="", help="another ann2snn checkout to compare with")
    p.add_argument("--sj-path", default="", help="directory with spikingjelly (and its light dependencies)")
    p.add_argument("--no-sj", action="store_true")
    p.add_argument("--timeout", type=float, default=900.0)
    p.add_argument("--json", type=Path, default=None)
    a = p.parse_args(argv)
    T = a.T or a.levels
    contenders = {"ann2snn": str(ROOT)}
    if a.baseline:
        contenders[f"ann2snn@{a.baseline}"] = a.baseline
    if not a.no_sj:
        contenders["spikingjelly"] = a.sj_path
    result = {"levels": a.levels, "T": T, "rounds": a.rounds, "threads": 1, "models": {}}
    for arch in a.models.split(","):
        runs: dict[str, list[dict]] = {k: [] for k in contenders}
        for _ in range(a.rounds):
            for who, path in contenders.items():  # taking turns: A B C A B C
                runs[who].append(run_one(who if who == "spikingjelly" else "ann2snn", arch, a.levels, T, a.calib,
                                         path, a.timeout))
        row = {}
        for who, rs in runs.items():
            ok = [r for r in rs if "wall_s" in r]
            keys = ("wall_s", "cpu_s", "maxrss_mb", "convert_wall_s", "convert_cpu_s")
            row[who] = {"status": sorted({r["status"] for r in rs}), **{k: spread([r[k] for r in ok]) for k in keys},
                        "verification": next((r["verification"] for r in ok if r.get("verification")), None)}
        result["models"][arch] = row
        _print(arch, row)
    if a.json:
        a.json.write_text(json.dumps(result, indent=2))
    return result


def _print(arch: str, row: dict) -> None:
    def cell(d):
        return "-" if not d else f"{d['median']:.1f} [{d['min']:.1f}–{d['max']:.1f}]"

    for who, r in row.items():
        print(f"{arch:10s} {who:28s} cpu {cell(r['cpu_s']):>22s} s (convert {cell(r['convert_cpu_s'])} s)  "
              f"wall {cell(r['wall_s']):>22s} s  "
              f"peak {cell(r['maxrss_mb']):>26s} MB  {'; '.join(r['status'])}", flush=True)


if __name__ == "__main__":
    sys.exit(main() and 0)
