"""Run exported SNNs on onnxruntime: session creation with an honest provider choice, and the stateful driver.

>>> from ann2snn.runtime import StatefulRunner
>>> runner = StatefulRunner("model.snn.step.onnx", provider="auto")
>>> logits_per_t = runner.run(x, T=4)      # [T, B, K] running means, state kept on the device under CUDA
"""

from __future__ import annotations

import functools
import json
import os
from pathlib import Path
from typing import Any

import numpy as np

from ann2snn.errors import Ann2SnnError

__all__ = ["cuda_usable", "make_session", "model_metadata", "StatefulRunner", "PROVIDERS"]

PROVIDERS = ("auto", "cuda", "cpu")
_CUDA, _CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


def _ort():
    try:
        import onnxruntime as ort
    except ImportError as exc:  # pragma: no cover - onnxruntime is a dependency
        raise Ann2SnnError(f"onnxruntime is not installed ({exc}); pip install onnxruntime-gpu") from None
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


def make_session(model: str | os.PathLike | bytes, *, provider: str = "auto", threads: int | None = None):
    """``(session, provider_used)`` where ``provider_used`` is ``"cuda"`` or ``"cpu"``.

    ``auto`` uses CUDA only when the session really gets it (``session.get_providers()``); ``cuda`` raises an
    :class:`Ann2SnnError` when CUDA cannot be used; ``cpu`` never tries CUDA.
    """
    if provider not in PROVIDERS:
        raise Ann2SnnError(f"provider must be one of {', '.join(PROVIDERS)}, got {provider!r}")
    ort = _ort()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if threads:
        opts.intra_op_num_threads = int(threads)
    available = ort.get_available_providers()
    want_cuda = provider in ("auto", "cuda") and cuda_usable()
    if provider == "cuda" and not want_cuda:
        if _CUDA not in available:
            raise Ann2SnnError("CUDA was asked for (--provider cuda) but this onnxruntime has no CUDA provider "
                               f"(available: {', '.join(available)}); install onnxruntime-gpu or use --provider cpu")
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


def model_metadata(sess) -> dict[str, str]:
    """The model's ``metadata_props`` as a dict."""
    return dict(sess.get_modelmeta().custom_metadata_map)


class StatefulRunner:
    """Drive a stateful (one-step) ONNX graph for T steps.

    The states' names, shapes and initial values come from the model's ``ann2snn.states`` metadata (also in
    the sidecar JSON). Under CUDA the states are bound with IOBinding as device OrtValues and fed back without
    leaving the GPU; only the per-step logits are copied to the host.

    Args:
        model: path (or bytes) of the stateful ONNX file.
        provider: ``auto`` | ``cuda`` | ``cpu`` (see :func:`make_session`).
    """

    def __init__(self, model: str | os.PathLike | bytes, *, provider: str = "auto", threads: int | None = None,
                 states: list[dict[str, Any]] | None = None) -> None:
        self.session, self.provider = make_session(model, provider=provider, threads=threads)
        meta = model_metadata(self.session)
        if meta.get("ann2snn.format") != "stateful":
            raise Ann2SnnError(f"{'the model' if isinstance(model, bytes) else repr(str(model))} is not an ann2snn "
                               f"stateful ONNX file (format {meta.get('ann2snn.format')!r}); export with "
                               "--format stateful")
        self.states = states if states is not None else json.loads(meta.get("ann2snn.states", "[]"))
        self.T = int(meta.get("ann2snn.T", "1"))
        self.encoding = meta.get("ann2snn.encoding", "direct")
        self._device = "cuda" if self.provider == "cuda" else "cpu"

    def initial_state(self, batch: int) -> dict[str, np.ndarray]:
        out = {}
        for s in self.states:
            shape = (batch, *s["shape"])
            init = s["init"]
            if "fill" in init:
                out[s["input"]] = np.full(shape, init["fill"], dtype=np.float32)
            else:
                out[s["input"]] = np.ascontiguousarray(
                    np.broadcast_to(np.asarray(init["values"], dtype=np.float32), shape))
        return out

    def run_instant(self, x: np.ndarray, T: int | None = None) -> np.ndarray:
        """The instantaneous outputs ``logits_t`` of steps 1..T, ``[T, B, K]``."""
        ort = _ort()
        T = self.T if T is None else int(T)
        x = np.ascontiguousarray(x, dtype=np.float32)
        seq = self.encoding == "sequence"
        batch = x.shape[1] if seq else x.shape[0]
        dev = self._device
        def to_dev(a):
            return ort.OrtValue.ortvalue_from_numpy(a, dev, 0)

        states = {k: to_dev(v) for k, v in self.initial_state(batch).items()}
        xs = [to_dev(x[t]) for t in range(T)] if seq else [to_dev(x)] * T
        outs = []
        for t in range(T):
            b = self.session.io_binding()
            b.bind_ortvalue_input("input", xs[t])
            for s in self.states:
                b.bind_ortvalue_input(s["input"], states[s["input"]])
            b.bind_output("logits_t", dev)
            for s in self.states:
                b.bind_output(s["output"], dev)
            self.session.run_with_iobinding(b)
            vals = b.get_outputs()
            outs.append(vals[0].numpy())
            states = {s["input"]: v for s, v in zip(self.states, vals[1:])}
        return np.stack(outs)

    def run(self, x: np.ndarray, T: int | None = None) -> np.ndarray:
        """Logits at every t = 1..T (running mean of ``logits_t``), ``[T, B, K]``."""
        inst = self.run_instant(x, T)
        return np.cumsum(inst, 0) / np.arange(1, inst.shape[0] + 1, dtype=np.float32).reshape(-1, 1, 1)
