"""Run exported SNNs on onnxruntime: session creation with an honest provider choice, and the stateful driver.

Examples:
    >>> from ann2snn.runtime import StatefulRunner, UnrolledRunner
    >>> runner = StatefulRunner("model.snn.step.onnx", provider="auto")
    >>> logits_per_t = runner.run(x, T=4)      # [T, B, K] logits after t steps, state on the device under CUDA
    >>> logits_per_t = UnrolledRunner("model.snn.onnx").run(x)   # the same from the unrolled graph

Names and metadata come from :mod:`ann2snn.exporters.contract`.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from ann2snn.errors import Ann2SnnError
from ann2snn.exporters.contract import (
    FORMAT_STATEFUL,
    FORMAT_UNROLLED,
    INPUT,
    LOGITS_PER_STEP,
    LOGITS_T,
    StateSpec,
    read_metadata,
    readout_counts,
)

__all__ = ["cuda_usable", "installed_ort_builds", "make_session", "StatefulRunner", "UnrolledRunner", "PROVIDERS",
           "micro_batch_size", "resolve_micro_batch", "MicroBatcher", "MICRO_BATCH_BYTES"]

PROVIDERS = ("auto", "cuda", "cpu")
_CUDA, _CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


# The builds of onnxruntime on PyPI: each installs the same `onnxruntime` module, so two in one environment
# overwrite each other's files (and uninstalling one breaks the other).
ORT_BUILDS = ("onnxruntime", "onnxruntime-gpu", "onnxruntime-directml", "onnxruntime-openvino", "onnxruntime-qnn",
              "onnxruntime-rocm", "onnxruntime-training")
INSTALL_HINT = ("install one build: pip install onnxruntime, or onnxruntime-gpu for CUDA (the extras ann2snn[cpu] / "
                "ann2snn[gpu])")


@functools.lru_cache(maxsize=None)
def installed_ort_builds() -> tuple[str, ...]:
    """The onnxruntime builds installed here (distribution names from :data:`ORT_BUILDS`), checked once."""
    from importlib import metadata

    found = []
    for name in ORT_BUILDS:
        try:
            metadata.distribution(name)
        except metadata.PackageNotFoundError:
            continue
        found.append(name)
    return tuple(found)


def _ort():
    """The ``onnxruntime`` module, or an :class:`Ann2SnnError` that names the install command."""
    builds = installed_ort_builds()
    if len(builds) > 1:
        raise Ann2SnnError(f"{len(builds)} onnxruntime builds are installed ({', '.join(builds)}) and they overwrite "
                           f"each other's onnxruntime module; pip uninstall -y {' '.join(builds)}, then {INSTALL_HINT}")
    try:
        import onnxruntime as ort
    except ImportError as exc:
        if isinstance(exc, ModuleNotFoundError) and exc.name == "onnxruntime":
            raise Ann2SnnError("onnxruntime is not installed (it verifies and runs the ONNX files); "
                               + INSTALL_HINT) from None
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise Ann2SnnError(f"onnxruntime cannot be imported ({first}); pip uninstall -y "
                           f"{' '.join(builds or ('onnxruntime',))}, then {INSTALL_HINT}") from None
    return ort


@functools.lru_cache(maxsize=None)
def cuda_usable() -> bool:
    """Whether onnxruntime can really run on CUDA here (checked once per process, quietly).

    onnxruntime-gpu lists the CUDA provider even where CUDA or cuDNN libraries are missing; creating a session
    then logs an error and falls back to CPU. A one-node probe session tells the two cases apart.
    """
    ort = _ort()
    if _CUDA not in ort.get_available_providers():
        return False
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    probe.ir_version = min(probe.ir_version, 10)
    ort.set_default_logger_severity(4)  # the failed CUDA load is expected here, not news for the user
    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        sess = ort.InferenceSession(probe.SerializeToString(),
                                    sess_options=opts, providers=[_CUDA, _CPU])
        return _CUDA in sess.get_providers()
    except Exception:
        return False
    finally:
        ort.set_default_logger_severity(3)


def make_session(model: str | os.PathLike | bytes, *, provider: str = "auto", threads: int | None = None,
                 spinning: bool | None = None, memory_pattern: bool | None = None):
    """``(session, provider_used)`` where ``provider_used`` is ``"cuda"`` or ``"cpu"``.

    ``auto`` uses CUDA only when the session really gets it (``session.get_providers()``); ``cuda`` raises an
    :class:`Ann2SnnError` when CUDA cannot be used; ``cpu`` never tries CUDA. ``threads``: intra-op threads
    (None: onnxruntime's default, one per core). ``spinning=False``: worker threads sleep as soon as a run ends
    instead of spinning (``session.intra_op.allow_spinning``; None keeps onnxruntime's default, on).
    ``memory_pattern=False``: no pre-planned block for all intermediate tensors (``enable_mem_pattern``; None keeps
    the default, on). Measured on ResNet-20, batch 256, T = 16: the unrolled graph's run takes 360 MB instead of
    715, the stateful one 756 instead of 1143, at the same time (±3 %); a plain ReLU ANN was ~9 % slower without.
    """
    if provider not in PROVIDERS:
        raise Ann2SnnError(f"provider must be one of {', '.join(PROVIDERS)}, got {provider!r}")
    ort = _ort()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
    if spinning is not None:
        opts.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    if memory_pattern is not None:
        opts.enable_mem_pattern = bool(memory_pattern)
    available = ort.get_available_providers()
    want_cuda = provider in ("auto", "cuda") and cuda_usable()
    if provider == "cuda" and not want_cuda:
        if _CUDA not in available:
            raise Ann2SnnError("CUDA was asked for (--provider cuda) but this onnxruntime build has no CUDA provider "
                               f"(available: {', '.join(available)}); use --provider cpu or auto, or swap in the CUDA "
                               "build: pip uninstall -y onnxruntime && pip install onnxruntime-gpu")
        raise Ann2SnnError("CUDA was asked for (--provider cuda) but onnxruntime could not start it on this machine "
                           "(no GPU or CUDA/cuDNN libraries missing); use --provider cpu or auto")
    where = "the given model" if isinstance(model, bytes) else repr(str(model))
    if not isinstance(model, bytes) and not Path(model).is_file():
        raise Ann2SnnError(f"ONNX file {where} does not exist; check the path")
    try:
        sess = ort.InferenceSession(model if isinstance(model, bytes) else str(model), sess_options=opts,
                                    providers=[_CUDA, _CPU] if want_cuda else [_CPU])
    except Exception as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        first = first.split(" failed:", 1)[-1].strip() if " failed:" in first else first
        raise Ann2SnnError(f"onnxruntime cannot load {where} (corrupt or not an ONNX model?): {first[:300]}") from None
    used = "cuda" if _CUDA in sess.get_providers() else "cpu"
    if provider == "cuda" and used != "cuda":
        raise Ann2SnnError("CUDA was asked for (--provider cuda) but onnxruntime could not start it on this machine "
                           "(no GPU or CUDA/cuDNN libraries missing); use --provider cpu or auto")
    return sess, used


class StatefulRunner:
    """Drive a stateful (one-step) ONNX graph for T steps.

    Every state is driven the same way, whatever operator owns it: its names, per-sample shape and initial value
    come from the model's metadata (:class:`~ann2snn.exporters.contract.StateSpec`, also in the sidecar JSON), so a
    new kind of stateful operator needs nothing here; that includes the exact schedule's step counter, with which
    the graph itself stops its input and constants after step L. The time convention comes from the metadata
    (:attr:`convention`, :attr:`schedule_length`) and sets the read-out: the logits after t steps are the sum of
    ``logits_t`` over steps 1..t divided by t (rate) or ``min(t, L)`` (exact).

    The states are bound with IOBinding, on CPU as on CUDA, in two sets of buffers allocated once per run that the
    steps alternate between (:meth:`run_outputs`): no state is copied or allocated per step, and under CUDA none
    leaves the GPU; only the per-step logits are copied to the host (on CPU written in place).

    Args:
        model: path (or bytes) of the stateful ONNX file.
        provider: ``auto`` | ``cuda`` | ``cpu`` (see :func:`make_session`); ``threads``, ``spinning``: as there.
        memory_pattern: as there; off by default here, where the two state sets already double the footprint.
        states: override the states recorded in the file (specs or their JSON form).
        micro_batch: as :class:`UnrolledRunner`: on CPU a batch is driven in micro-batches (``"auto"``: sized from
            the file's ``activation_bytes``; a number of samples; None: the whole batch at once).
    """

    def __init__(self, model: str | os.PathLike | bytes, *, provider: str = "auto", threads: int | None = None,
                 states: Sequence[StateSpec | Mapping[str, Any]] | None = None, spinning: bool | None = None,
                 memory_pattern: bool = False, micro_batch: int | str | None = "auto") -> None:
        self.session, self.provider = make_session(model, provider=provider, threads=threads, spinning=spinning,
                                                   memory_pattern=memory_pattern)
        where = "the model" if isinstance(model, bytes) else repr(str(model))
        self.metadata = read_metadata(self.session)
        if self.metadata.format != FORMAT_STATEFUL:
            raise Ann2SnnError(f"{where} is not an ann2snn stateful ONNX file (format {self.metadata.format!r}); "
                               "export with --format stateful")
        self.micro_batch = resolve_micro_batch(micro_batch, self.provider, self.metadata.activation_bytes)
        self.states: tuple[StateSpec, ...] = self.metadata.states if states is None else tuple(
            s if isinstance(s, StateSpec) else StateSpec.from_json(s) for s in states)
        self.T = self.metadata.T
        self.encoding = self.metadata.encoding
        self._device = "cuda" if self.provider == "cuda" else "cpu"

    @property
    def convention(self) -> str:
        """``"rate"`` or ``"exact"``: the time convention the file was exported for."""
        return self.metadata.convention

    @property
    def schedule_length(self) -> int | None:
        """L of the exact convention (None under rate)."""
        return self.metadata.schedule_length

    def initial_state(self, batch: int) -> dict[str, np.ndarray]:
        """Every state's initial value for ``batch`` samples, by input name."""
        out = {}
        for s in self.states:
            shape = (batch, *s.shape)
            if s.fill is not None:
                out[s.input] = np.full(shape, s.fill, dtype=np.float32)
            else:
                out[s.input] = np.ascontiguousarray(np.broadcast_to(np.asarray(s.values, dtype=np.float32), shape))
        return out

    def run_instant(self, x: np.ndarray, T: int | None = None) -> np.ndarray:
        """The instantaneous outputs ``logits_t`` of steps 1..T, ``[T, B, K]``."""
        return self.run_outputs(x, T)[LOGITS_T]

    def run_outputs(self, x: np.ndarray, T: int | None = None, extra: Sequence[str] = ()) -> dict[str, np.ndarray]:
        """``logits_t`` and each graph output named in ``extra`` at every step 1..T, each ``[T, B, ...]``.

        No state is copied or allocated per step: two sets of state buffers are bound once (IOBinding, on CPU as
        on CUDA) and the steps alternate between them (step t reads one set and writes the other; a graph may not
        read and write one buffer). On CPU each step writes its outputs straight into row t of the result arrays;
        per step only those rows (and, for a pre-encoded input, the input) are rebound. A batch larger than
        :attr:`micro_batch` is driven T steps one micro-batch at a time.
        """
        x = np.ascontiguousarray(x, dtype=np.float32)
        seq = self.encoding == "sequence"
        batch = x.shape[1] if seq else x.shape[0]
        if not self.micro_batch or batch <= self.micro_batch:
            return self._run_outputs(x, T, extra)
        names = list(dict.fromkeys([LOGITS_T, *extra]))  # the order _run_outputs returns them in
        outs = _in_micro_batches(lambda part: list(self._run_outputs(part, T, extra).values()), x,
                                 1 if seq else 0, self.micro_batch, [1] * len(names))  # outputs are [T, B, ...]
        return dict(zip(names, outs))

    def _run_outputs(self, x: np.ndarray, T: int | None, extra: Sequence[str]) -> dict[str, np.ndarray]:
        ort = _ort()
        T = self.T if T is None else int(T)
        seq = self.encoding == "sequence"
        batch = x.shape[1] if seq else x.shape[0]
        dev = self._device
        declared = {o.name: o.shape for o in self.session.get_outputs()}
        state_of = {st.output: st.input for st in self.states}
        names = list(dict.fromkeys([LOGITS_T, *extra]))
        for n in names:
            if n not in declared:
                raise Ann2SnnError(f"the stateful graph has no output {n!r}; its outputs: {', '.join(declared)}")

        def wrap(a: np.ndarray):  # on CPU the OrtValue is a view of the numpy array: no copy
            return ort.OrtValue.ortvalue_from_numpy(a, dev, 0)

        init = self.initial_state(batch)
        sets = [{k: wrap(v) for k, v in init.items()},
                {k: wrap(np.empty_like(v)) if dev == "cpu" else
                 ort.OrtValue.ortvalue_from_shape_and_type(v.shape, np.float32, dev, 0) for k, v in init.items()}]
        # on CPU, outputs with a known per-sample shape are written in place into [T, B, ...] arrays; a state asked
        # for is copied from the buffer it was written to
        results = {n: np.empty((T, batch, *declared[n][1:]), dtype=np.float32) for n in names
                   if dev == "cpu" and all(isinstance(d, int) for d in declared[n][1:]) and n not in state_of}
        copied = [n for n in names if n not in results and n not in state_of]
        states_asked = [n for n in names if n in state_of]
        rows_of_states: dict[str, list[np.ndarray]] = {n: [] for n in states_asked}
        rows: dict[str, list[np.ndarray]] = {n: [] for n in copied}
        xs = [wrap(x[t]) for t in range(T)] if seq else [wrap(x)]
        bindings = []
        for i in (0, 1):  # binding i reads state set i and writes set 1 - i
            b = self.session.io_binding()
            b.bind_ortvalue_input(INPUT, xs[0])
            for st in self.states:
                b.bind_ortvalue_input(st.input, sets[i][st.input])
                b.bind_ortvalue_output(st.output, sets[1 - i][st.input])
            for n in names:
                if n in results:
                    b.bind_ortvalue_output(n, wrap(results[n][0]))
                elif n in copied:
                    b.bind_output(n, dev)
            bindings.append(b)
        unbound = [n for n in names if n not in state_of]
        position = {n: len(self.states) + j for j, n in enumerate(unbound)}  # get_outputs() is in binding order
        for t in range(T):
            b = bindings[t % 2]
            if seq:
                b.bind_ortvalue_input(INPUT, xs[t])
            for n, arr in results.items():
                b.bind_ortvalue_output(n, wrap(arr[t]))
            self.session.run_with_iobinding(b)
            if copied:
                outs = b.get_outputs()
                for n in copied:
                    rows[n].append(outs[position[n]].numpy())
            for n in states_asked:
                rows_of_states[n].append(sets[1 - t % 2][state_of[n]].numpy().copy())
        results.update({n: np.stack(v) for n, v in rows.items()})
        results.update({n: np.stack(v) for n, v in rows_of_states.items()})
        return {n: results[n] for n in names}

    def run(self, x: np.ndarray, T: int | None = None) -> np.ndarray:
        """Logits at every t = 1..T, ``[T, B, K]``: the sum of ``logits_t`` over steps 1..t divided by ``N(t)``
        (t under rate, min(t, L) under exact)."""
        inst = self.run_instant(x, T)
        n = np.asarray(readout_counts(inst.shape[0], self.convention, self.schedule_length), dtype=np.float32)
        return np.cumsum(inst, 0) / n.reshape(-1, *([1] * (inst.ndim - 1)))


#: on CPU, a batch runs in micro-batches whose largest per-step tensor takes about this many bytes (a core's L2
#: cache): measured on onnxruntime 1.32, one thread, batch 256, unrolled SNN T = 4 ÷ the same graph on the whole
#: batch: MNIST conv net (49 KB a sample) 0.73 in micro-batches of 8–16, ResNet-20 (64 KB) 0.81 in micro-batches of
#: 16; the whole batch's tensors (12.8 MB each for the MNIST net) stream from memory at every elementwise pass
MICRO_BATCH_BYTES = 1 << 20


def micro_batch_size(activation_bytes: int | None, *, budget: int = MICRO_BATCH_BYTES) -> int | None:
    """Samples per CPU micro-batch for a network whose largest per-sample tensor takes ``activation_bytes`` (the
    metadata's ``activation_bytes``): the largest power of two whose tensors fit ``budget`` (at least 1); None
    (the whole batch at once) when the size is unknown."""
    if not activation_bytes or activation_bytes <= 0:
        return None
    n = max(1, budget // int(activation_bytes))
    return 1 << (n.bit_length() - 1)


def resolve_micro_batch(micro_batch, provider: str, activation_bytes: int | None) -> int | None:
    """A runner's ``micro_batch`` argument (``"auto"``, a number of samples or None) as samples per run (None: the
    whole batch), for a session on ``provider`` and a file whose largest per-sample tensor takes
    ``activation_bytes``."""
    if micro_batch == "auto":
        return None if provider == "cuda" else micro_batch_size(activation_bytes)
    if micro_batch is not None and (isinstance(micro_batch, bool) or not isinstance(micro_batch, int)
                                    or micro_batch < 1):
        raise Ann2SnnError(f"micro_batch must be 'auto', a positive number of samples or None, got {micro_batch!r}")
    return micro_batch


def _batch_axis(shape) -> int:
    """The position of the dynamic batch axis in a declared input or output shape (0 when none is named)."""
    return next((i for i, d in enumerate(shape) if not isinstance(d, int)), 0)


class MicroBatcher:
    """``session.run`` on at most ``micro_batch`` samples at a time (None: one run), the results put back together
    along each output's batch axis. The input's batch axis is its first dynamic one (``[B, ...]`` or, pre-encoded,
    ``[T, B, ...]``). Names and axes are read from the session once, not per call."""

    def __init__(self, session, micro_batch: int | None = None) -> None:
        (inp,) = session.get_inputs()
        self.session, self.micro_batch = session, micro_batch
        self.input_name, self.axis = inp.name, _batch_axis(inp.shape)
        self.output_axes = {o.name: _batch_axis(o.shape) for o in session.get_outputs()}

    def run(self, x: np.ndarray, outputs: Sequence[str] | None = None) -> list[np.ndarray]:
        if not self.micro_batch or x.shape[self.axis] <= self.micro_batch:
            return self.session.run(outputs, {self.input_name: x})
        names = list(outputs) if outputs else list(self.output_axes)
        return _in_micro_batches(lambda part: self.session.run(names, {self.input_name: part}), x, self.axis,
                                 self.micro_batch, [self.output_axes[n] for n in names])


def _in_micro_batches(run, x: np.ndarray, axis: int, micro: int, out_axes: Sequence[int]) -> list[np.ndarray]:
    """``run(part)`` (a list of arrays) on at most ``micro`` samples of ``x`` at a time along its batch ``axis``,
    each output written into its place along its own batch axis (``out_axes``) of an array allocated once."""
    batch, results = x.shape[axis], None
    for start in range(0, batch, micro):
        outs = run(np.ascontiguousarray(x[(slice(None),) * axis + (slice(start, start + micro),)]))
        if results is None:
            results = [np.empty(o.shape[:a] + (batch,) + o.shape[a + 1:], dtype=o.dtype)
                       for o, a in zip(outs, out_axes)]
        for r, o, a in zip(results, outs, out_axes):
            r[(slice(None),) * a + (slice(start, start + o.shape[a]),)] = o
    return results


class UnrolledRunner:
    """Run an unrolled ONNX graph (all T steps in one graph) on a batch.

    On CPU the batch runs in micro-batches (:func:`micro_batch_size` of the file's ``activation_bytes``, or
    ``micro_batch``): every per-step tensor of a micro-batch stays in cache between the graph's many elementwise
    passes, where a whole batch's tensors would stream from memory at each (see :data:`MICRO_BATCH_BYTES`). The
    outputs are identical either way: every sample is computed on its own. Under CUDA the whole batch runs at once.

    Args:
        model: path (or bytes) of the unrolled ONNX file.
        provider: ``auto`` | ``cuda`` | ``cpu`` (see :func:`make_session`); ``threads``, ``spinning``,
            ``memory_pattern``: as there.
        micro_batch: ``"auto"`` (default: from the file on CPU, none under CUDA), a number of samples, or None
            (the whole batch at once).
    """

    def __init__(self, model: str | os.PathLike | bytes, *, provider: str = "auto", threads: int | None = None,
                 spinning: bool | None = None, memory_pattern: bool | None = None,
                 micro_batch: int | str | None = "auto") -> None:
        self.session, self.provider = make_session(model, provider=provider, threads=threads, spinning=spinning,
                                                   memory_pattern=memory_pattern)
        where = "the model" if isinstance(model, bytes) else repr(str(model))
        self.metadata = read_metadata(self.session, where=where)
        if self.metadata.format != FORMAT_UNROLLED:
            raise Ann2SnnError(f"{where} is not an ann2snn unrolled ONNX file (format {self.metadata.format!r}); "
                               "export with --format unrolled, or run it with StatefulRunner")
        self.micro_batch = resolve_micro_batch(micro_batch, self.provider, self.metadata.activation_bytes)
        self.T = self.metadata.T
        self._batcher = MicroBatcher(self.session, self.micro_batch)

    def run_outputs(self, x: np.ndarray, outputs: Sequence[str] = (LOGITS_PER_STEP,)) -> dict[str, np.ndarray]:
        """The named graph outputs for input ``x`` (``[B, ...]``, or ``[T, B, ...]`` pre-encoded)."""
        outs = self._batcher.run(np.ascontiguousarray(x, dtype=np.float32), list(outputs))
        return dict(zip(outputs, outs))

    def run(self, x: np.ndarray) -> np.ndarray:
        """Logits after every step t = 1..T, ``[T, B, K]``."""
        return self._batcher.run(np.ascontiguousarray(x, dtype=np.float32), [LOGITS_PER_STEP])[0]
