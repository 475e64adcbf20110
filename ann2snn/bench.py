"""Latency and throughput of the ANN, the unrolled and stateful SNN on onnxruntime, and the PyTorch simulator.

The ANN baseline is the QANN exported as a plain ReLU ONNX network of the same architecture (same weights,
QCFS → ReLU): the QANN's own floor/clip chain runs ~3x slower on onnxruntime and would flatter the SNN.

How it measures (:func:`measure`), so that a ratio ``SNN / (T × ANN)`` means something on a shared machine:

- every contender runs with the same, explicit number of threads (``threads``, default 1: onnxruntime's
  intra-op threads and ``torch.set_num_threads``);
- contenders take turns call by call (A B C A B C …), and each ratio is taken within one turn (the SNN's call
  against the ANN's call just before it), so a change of machine load affects both sides of every ratio;
- each call's wall time (latency) *and* process CPU time (work, all threads) are recorded; min, median and max
  are reported;
- on CPU the unrolled and the stateful SNN run in micro-batches (:class:`~ann2snn.runtime.UnrolledRunner`,
  :class:`~ann2snn.runtime.StatefulRunner`, ``micro_batch``) and the ANN in the same micro-batches, so every
  contender gets the same cache-friendly schedule (``micro_batch=None``: all run the whole batch at once);
- with several threads, onnxruntime's workers sleep as soon as a run ends (``spinning=False``, the default here):
  spinning workers keep burning a core after their call, so whatever runs next — the next contender — pays for
  them. Measured (MNIST conv net ANN, batch 256, 2 cores shared by other jobs, per call): one thread alone 16.9 ms
  CPU; taking turns with a spinning 2-thread session 26.0 ms (its own work is 13 ms); with a non-spinning one
  13.3 ms, the 2-thread session 13.4 ms and 21 % lower latency. PyTorch's OpenMP threads spin too: for
  ``threads > 1`` set ``OMP_WAIT_POLICY=PASSIVE`` before starting Python.

>>> from ann2snn.bench import benchmark
>>> result = benchmark(qann, Ts=[4], batches=[1, 256])
"""

from __future__ import annotations

import contextlib
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
from ann2snn.exporters.contract import FORMAT_STATEFUL, INPUT, LOGITS, read_metadata

__all__ = ["benchmark", "benchmark_onnx", "relu_ann_onnx", "measure", "spread", "median_time", "median_times",
           "torch_threads", "ANN_NOTE", "CONTENDERS"]

ANN_NOTE = ("ANN = the QANN exported as a plain ReLU ONNX network (same architecture and weights); the QANN's "
            "floor/clip chain is ~3x slower on onnxruntime and would flatter the SNN")
CONTENDERS = ("ann", "unrolled", "stateful", "torch")


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


def measure(fns: dict[str, Callable[[], Any]], *, warmup: int = 3, repeats: int = 10,
            min_seconds: float = 0.0) -> dict[str, dict[str, list[float]]]:
    """Wall and process CPU seconds of every call of each ``fn()``: ``{name: {"wall": [...], "cpu": [...]}}``.

    After ``warmup`` untimed calls each, the contenders take turns call by call (A B C A B C …) for ``repeats``
    turns (more while ``min_seconds`` have not passed): turn i of every contender ran under the same machine load,
    so ratios are taken turn by turn (:func:`spread` of their quotients). CPU time is the whole process's (every
    thread), ``time.process_time``.
    """
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    out: dict[str, dict[str, list[float]]] = {k: {"wall": [], "cpu": []} for k in fns}
    start = time.perf_counter()
    done = 0
    while done < repeats or time.perf_counter() - start < min_seconds:
        for k, fn in fns.items():
            c0, t0 = time.process_time(), time.perf_counter()
            fn()
            t1, c1 = time.perf_counter(), time.process_time()
            out[k]["wall"].append(t1 - t0)
            out[k]["cpu"].append(c1 - c0)
        done += 1
    return out


def spread(values) -> dict[str, float]:
    """``{"min", "median", "max"}`` of ``values``."""
    values = list(values)
    return {"min": min(values), "median": statistics.median(values), "max": max(values)}


def median_time(fn: Callable[[], Any], *, warmup: int = 3, repeats: int = 10, min_seconds: float = 0.0) -> float:
    """Median wall time of ``fn()`` in seconds after ``warmup`` calls."""
    return median_times({"fn": fn}, warmup=warmup, repeats=repeats, min_seconds=min_seconds)["fn"]


def median_times(fns: dict[str, Callable[[], Any]], *, warmup: int = 3, repeats: int = 10,
                 min_seconds: float = 0.0) -> dict[str, float]:
    """Median wall time of each ``fn()``, the contenders taking turns call by call (:func:`measure`)."""
    return {k: statistics.median(v["wall"]) for k, v in measure(fns, warmup=warmup, repeats=repeats,
                                                                 min_seconds=min_seconds).items()}


@contextlib.contextmanager
def torch_threads(n: int | None):
    """``torch.set_num_threads(n)`` inside the block (nothing when None), restored after."""
    if n is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(int(n))
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _spinning(spinning: bool | None, threads: int | None) -> bool | None:
    """The spinning setting used: as given, else off for several threads (module docstring), else the default."""
    if spinning is not None:
        return bool(spinning)
    return False if threads is None or threads > 1 else None


def _row(T: int, batch: int, times: dict[str, dict[str, list[float]]]) -> dict[str, Any]:
    """One result row: per contender its wall and CPU ms (median, min, max) and samples/s; per SNN contender the
    ratios to T ANN calls, taken turn by turn (median, min, max) for wall and CPU time."""
    row: dict[str, Any] = {"T": T, "batch": batch}
    ann = times.get("ann")
    for name in CONTENDERS:
        if name not in times:
            continue
        t = times[name]
        wall, cpu = spread(t["wall"]), spread(t["cpu"])
        row[f"{name}_ms"] = wall["median"] * 1e3
        row[f"{name}_ms_min"], row[f"{name}_ms_max"] = wall["min"] * 1e3, wall["max"] * 1e3
        row[f"{name}_cpu_ms"] = cpu["median"] * 1e3
        row[f"{name}_cpu_ms_min"], row[f"{name}_cpu_ms_max"] = cpu["min"] * 1e3, cpu["max"] * 1e3
        row[f"{name}_samples_per_s"] = batch / wall["median"]
        if ann is not None and name != "ann":
            for clock, suffix in (("wall", ""), ("cpu", "_cpu")):
                r = spread(s / (T * a) for s, a in zip(t[clock], ann[clock]) if a > 0)
                row[f"{name}{suffix}_ratio"] = r["median"]  # SNN time / (T × ANN time), same turn
                row[f"{name}{suffix}_ratio_min"], row[f"{name}{suffix}_ratio_max"] = r["min"], r["max"]
    return row


def benchmark(qann: nn.Module, *, Ts=(1, 2, 4, 8), batches=(1, 256), provider: str = "cpu", repeats: int = 10,
              warmup: int = 3, threads: int | None = 1, include=CONTENDERS,
              progress: Callable[[str], None] | None = None, convention: str = "rate",
              spinning: bool | None = None, micro_batch: int | str | None = "auto") -> dict[str, Any]:
    """Time the ANN and the SNN formats of ``qann`` at every T and batch size; see the module docstring.

    ``threads``: intra-op threads of every contender (default 1; None: each library's own default).
    ``spinning``: onnxruntime workers spin after a run (None: off when ``threads > 1``, see the module docstring;
    ``True`` keeps onnxruntime's default). ``convention``: the time
    convention the SNN is converted for (``"rate"`` or ``"exact"``). ``micro_batch``: samples per onnxruntime run
    of the ANN and the unrolled SNN (``"auto"``: the unrolled file's :func:`~ann2snn.runtime.micro_batch_size` on
    CPU, none under CUDA; None: the whole batch). Returns ``{"provider", "convention", "note", "threads",
    "micro_batch", "rows": [{"T", "batch", "ann_ms", "ann_cpu_ms", "unrolled_ms", "unrolled_ratio", ...}]}``.
    """
    from ann2snn.exporters.onnx_stateful import build_stateful
    from ann2snn.exporters.onnx_unrolled import build_unrolled
    from ann2snn.network import convert
    from ann2snn.runtime import MicroBatcher, StatefulRunner, UnrolledRunner, make_session, resolve_micro_batch

    shape = tuple(getattr(qann, "input_shape", None) or ())
    if not shape:
        raise Ann2SnnError("the model records no input shape; save it with ann2snn.save after setting input_shape")
    tick = progress or (lambda _msg: None)
    rng = np.random.default_rng(0)
    xs = {b: rng.random((b, *shape), dtype=np.float32) for b in batches}
    used = provider
    ann_sess = None
    spinning = _spinning(spinning, threads)
    opts = {"provider": provider, "threads": threads, "spinning": spinning}
    if "ann" in include:
        ann_sess, used = make_session(relu_ann_onnx(qann, shape), **opts)
    rows, micro_used = [], None
    with torch_threads(threads):
        for T in Ts:
            snn = convert(qann, T, convention=convention)
            un = st = None
            unrolled = build_unrolled(snn, T=T)
            if "unrolled" in include:
                un = UnrolledRunner(unrolled.SerializeToString(), micro_batch=micro_batch, **opts)
                used = un.provider
            # the ANN runs in the micro-batches the unrolled file asks for, as the SNN runners do
            micro = micro_used = resolve_micro_batch(micro_batch, used, read_metadata(unrolled).activation_bytes)
            if "stateful" in include:
                st = StatefulRunner(build_stateful(snn, T=T)[0].SerializeToString(), micro_batch=micro_batch, **opts)
            for b in batches:
                x = xs[b]
                tick(f"T={T} batch {b}")
                fns: dict[str, Callable[[], Any]] = {}
                if ann_sess is not None:
                    ann_run = MicroBatcher(ann_sess, micro).run
                    fns["ann"] = lambda: ann_run(x)
                if un is not None:
                    fns["unrolled"] = lambda: un.run(x)
                if st is not None:
                    fns["stateful"] = lambda: st.run(x, T)
                if "torch" in include:
                    xt = torch.from_numpy(x)
                    fns["torch"] = lambda: snn.simulate(xt, T)
                # small batches are fast and noisy: repeat them more
                times = measure(fns, warmup=warmup, repeats=repeats if b > 16 else repeats * 10)
                rows.append({**_row(T, b, times), "micro_batch": micro if micro and micro < b else None})
    return {"provider": used, "convention": convention, "note": ANN_NOTE, "micro_batch": micro_used,
            "threads": threads if threads is not None else "library defaults",
            "spinning": "onnxruntime default" if spinning is None else bool(spinning),
            "clock": "wall = latency of one call; cpu = process CPU time of that call (all threads); ratios "
                     "SNN / (T × ANN) taken turn by turn, median [min, max]",
            "rows": rows}


def benchmark_onnx(path, *, batches=(1, 256), provider: str = "cpu", repeats: int = 10, warmup: int = 3,
                   threads: int | None = 1, progress: Callable[[str], None] | None = None,
                   spinning: bool | None = None, micro_batch: int | str | None = "auto") -> dict[str, Any]:
    """Time an exported ann2snn ONNX file (unrolled: one run, in micro-batches as :class:`UnrolledRunner` runs it;
    stateful: driven T steps). No ANN baseline (the weights of the QANN are not in the file): pass the QANN
    checkpoint for ratios."""
    from ann2snn.runtime import StatefulRunner, UnrolledRunner

    where = repr(str(path))
    meta = read_metadata(path, where=where)  # the file says which runner drives it; that runner's session is timed
    stateful = meta.format == FORMAT_STATEFUL
    runner = (StatefulRunner if stateful else UnrolledRunner)(
        path, provider=provider, threads=threads, spinning=_spinning(spinning, threads), micro_batch=micro_batch)
    fmt, T, shape, used = meta.format, meta.T, meta.input_shape, runner.provider
    inputs = {i.name: i.shape for i in runner.session.get_inputs()}
    if INPUT not in inputs or [d for d in inputs[INPUT] if isinstance(d, int)][-len(shape):] != list(shape):
        raise Ann2SnnError(f"{where}: its input {inputs.get(INPUT)} does not match its recorded input shape "
                           f"{list(shape)}; the file was modified or mismatched, re-export it")
    tick = progress or (lambda _msg: None)
    rng = np.random.default_rng(0)
    seq = meta.encoding == "sequence"
    rows = []
    for b in batches:
        x = rng.random(((T,) if seq else ()) + (b, *shape), dtype=np.float32)
        tick(f"{fmt} batch {b}")
        run = (lambda: runner.run(x, T)) if stateful else (lambda: runner.run(x))
        times = measure({fmt: run}, warmup=warmup, repeats=repeats)
        micro = runner.micro_batch
        rows.append({**_row(T, b, times), "micro_batch": micro if micro and micro < b else None})
    return {"provider": used, "convention": meta.convention, "format": fmt, "rows": rows,
            "threads": threads if threads is not None else "library defaults",
            "note": "ONNX file only: no ANN baseline (pass the QANN checkpoint for ratios)"}
