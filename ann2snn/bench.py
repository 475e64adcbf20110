"""Latency and throughput of the ANN, the unrolled and stateful SNN on onnxruntime, and the PyTorch simulator.

The ANN baseline is the QANN exported as a plain ReLU ONNX network of the same architecture (same weights,
QCFS → ReLU): the QANN's own floor/clip chain runs ~3x slower on onnxruntime and would flatter the SNN.
Every ratio ``SNN / (T × ANN)`` is measured within one run on one provider: each configuration is warmed up,
then timed ``repeats`` times and the median taken.

>>> from ann2snn.bench import benchmark
>>> result = benchmark(qann, Ts=[4], batches=[1, 256])
"""

from __future__ import annotations

import copy
import io
import statistics
import time
import warnings
from typing import Any, Callable

import numpy as np
import torch
from torch import nn

from ann2snn.errors import Ann2SnnError
from ann2snn.exporters.contract import FORMAT_STATEFUL, INPUT, LOGITS, LOGITS_PER_STEP, read_metadata

__all__ = ["benchmark", "benchmark_onnx", "relu_ann_onnx", "median_time", "median_times", "ANN_NOTE"]

ANN_NOTE = ("ANN = the QANN exported as a plain ReLU ONNX network (same architecture and weights); the QANN's "
            "floor/clip chain is ~3x slower on onnxruntime and would flatter the SNN")


def relu_ann_onnx(qann: nn.Module, input_shape: tuple[int, ...]) -> bytes:
    """The QANN with every QCFS replaced by ReLU, as ONNX bytes (dynamic batch, opset 17)."""
    from ann2snn.layers import qcfs_modules

    ann = copy.deepcopy(qann).eval()
    for name, _ in qcfs_modules(ann):
        parent, _, attr = name.rpartition(".")
        setattr(ann.get_submodule(parent) if parent else ann, attr, nn.ReLU())
    buf = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(ann, (torch.zeros(1, *input_shape),), buf, dynamo=False, opset_version=17,
                          input_names=[INPUT], output_names=[LOGITS],
                          dynamic_axes={INPUT: {0: "batch"}, LOGITS: {0: "batch"}})
    return buf.getvalue()


def median_time(fn: Callable[[], Any], *, warmup: int = 3, repeats: int = 10, min_seconds: float = 0.0) -> float:
    """Median wall time of ``fn()`` in seconds after ``warmup`` calls."""
    return median_times({"fn": fn}, warmup=warmup, repeats=repeats, min_seconds=min_seconds)["fn"]


def median_times(fns: dict[str, Callable[[], Any]], *, warmup: int = 3, repeats: int = 10,
                 min_seconds: float = 0.0, rounds: int = 5) -> dict[str, float]:
    """Median wall time of each ``fn()``, the contenders taking turns in ``rounds`` blocks of runs.

    Taking turns puts every contender under the same machine load (this matters on a shared machine), so the
    ratios between them mean something even when absolute times drift. Each block starts with an untimed call:
    onnxruntime's worker threads keep spinning for a moment after a run, and the first run of the next session
    would pay for the previous session's spinning.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    per_block = max(1, -(-repeats // rounds))
    times: dict[str, list[float]] = {k: [] for k in fns}
    start = time.perf_counter()
    done = 0
    while done < rounds or time.perf_counter() - start < min_seconds:
        for k, fn in fns.items():
            fn()
            for _ in range(per_block):
                t0 = time.perf_counter()
                fn()
                times[k].append(time.perf_counter() - t0)
        done += 1
    return {k: statistics.median(v) for k, v in times.items()}


def _row(T, batch, ann, unrolled, stateful, sim) -> dict[str, Any]:
    row: dict[str, Any] = {"T": T, "batch": batch}
    for name, sec in (("ann", ann), ("unrolled", unrolled), ("stateful", stateful), ("torch", sim)):
        if sec is None:
            continue
        row[f"{name}_ms"] = sec * 1e3
        row[f"{name}_samples_per_s"] = batch / sec
        if ann and name != "ann":
            row[f"{name}_ratio"] = sec / (T * ann)  # SNN time / (T × ANN time)
    return row


def benchmark(qann: nn.Module, *, Ts=(1, 2, 4, 8), batches=(1, 256), provider: str = "cpu", repeats: int = 10,
              warmup: int = 3, threads: int | None = None, include=("ann", "unrolled", "stateful", "torch"),
              progress: Callable[[str], None] | None = None, convention: str = "rate") -> dict[str, Any]:
    """Time the ANN and the SNN formats of ``qann`` at every T and batch size; see the module docstring.

    ``convention``: the time convention the SNN is converted for (``"rate"`` or ``"exact"``).
    Returns ``{"provider", "convention", "note", "rows": [{"T", "batch", "ann_ms", "unrolled_ms", ...}]}``.
    """
    from ann2snn.exporters.onnx_stateful import build_stateful
    from ann2snn.exporters.onnx_unrolled import build_unrolled
    from ann2snn.network import convert
    from ann2snn.runtime import StatefulRunner, make_session

    shape = tuple(getattr(qann, "input_shape", None) or ())
    if not shape:
        raise Ann2SnnError("the model records no input shape; save it with ann2snn.save after setting input_shape")
    tick = progress or (lambda _msg: None)
    rng = np.random.default_rng(0)
    xs = {b: rng.random((b, *shape), dtype=np.float32) for b in batches}
    used = provider
    ann_sess = None
    if "ann" in include:
        ann_sess, used = make_session(relu_ann_onnx(qann, shape), provider=provider, threads=threads)
    rows = []
    for T in Ts:
        snn = convert(qann, T, convention=convention)
        un = st = None
        if "unrolled" in include:
            un, used = make_session(build_unrolled(snn, T=T).SerializeToString(), provider=provider, threads=threads)
        if "stateful" in include:
            st = StatefulRunner(build_stateful(snn, T=T)[0].SerializeToString(), provider=provider, threads=threads)
        for b in batches:
            x = xs[b]
            tick(f"T={T} batch {b}")
            fns: dict[str, Callable[[], Any]] = {}
            if ann_sess is not None:
                fns["ann"] = lambda: ann_sess.run(None, {INPUT: x})
            if un is not None:
                fns["unrolled"] = lambda: un.run([LOGITS_PER_STEP], {INPUT: x})
            if st is not None:
                fns["stateful"] = lambda: st.run(x, T)
            if "torch" in include:
                xt = torch.from_numpy(x)
                fns["torch"] = lambda: snn.simulate(xt, T)
            # small batches are fast and noisy: repeat them more
            t = median_times(fns, warmup=warmup, repeats=repeats if b > 16 else repeats * 10)
            rows.append(_row(T, b, t.get("ann"), t.get("unrolled"), t.get("stateful"), t.get("torch")))
    return {"provider": used, "convention": convention, "note": ANN_NOTE, "threads": threads or "onnxruntime default",
            "rows": rows}


def benchmark_onnx(path, *, batches=(1, 256), provider: str = "cpu", repeats: int = 10, warmup: int = 3,
                   threads: int | None = None, progress: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Time an exported ann2snn ONNX file (unrolled: one run; stateful: driven T steps). No ANN baseline (the
    weights of the QANN are not in the file): pass the QANN checkpoint for ratios."""
    from ann2snn.runtime import StatefulRunner, make_session

    sess, used = make_session(path, provider=provider, threads=threads)
    meta = read_metadata(sess, where=repr(str(path)))
    fmt, T, shape = meta.format, meta.T, meta.input_shape
    inputs = {i.name: i.shape for i in sess.get_inputs()}
    if INPUT not in inputs or [d for d in inputs[INPUT] if isinstance(d, int)][-len(shape):] != list(shape):
        raise Ann2SnnError(f"{str(path)!r}: its input {inputs.get(INPUT)} does not match its recorded input shape "
                           f"{list(shape)}; the file was modified or mismatched, re-export it")
    tick = progress or (lambda _msg: None)
    rng = np.random.default_rng(0)
    runner = StatefulRunner(path, provider=provider, threads=threads) if fmt == FORMAT_STATEFUL else None
    seq = meta.encoding == "sequence"
    rows = []
    for b in batches:
        x = rng.random(((T,) if seq else ()) + (b, *shape), dtype=np.float32)
        tick(f"{fmt} batch {b}")
        if runner is not None:
            sec = median_time(lambda: runner.run(x, T), warmup=warmup, repeats=repeats)
            rows.append(_row(T, b, None, None, sec, None))
        else:
            sec = median_time(lambda: sess.run(None, {INPUT: x}), warmup=warmup, repeats=repeats)
            rows.append(_row(T, b, None, sec, None, None))
    return {"provider": used, "convention": meta.convention, "format": fmt, "rows": rows,
            "note": "ONNX file only: no ANN baseline (pass the QANN checkpoint for ratios)"}
