"""Verification at export: onnxruntime against the PyTorch simulator on one seeded batch.

Criterion (stated in every report): the per-step logits ``[T, B, K]`` from onnxruntime match the simulator's
within ``|ort − ref| ≤ atol + rtol·|ref|`` with ``rtol = 1e-4`` and ``atol = 1e-4 · max(1, max|ref|)``, for every
sample. Spike-count agreement (each stateful operator's output summed over T, element by element) is
measured on the unrolled graph and reported; a rounding-level difference near a threshold can flip a spike,
which is why counts are reported rather than required to agree exactly. A mismatch raises
:class:`~ann2snn.errors.VerificationError`.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from ann2snn.errors import VerificationError
from ann2snn.neurons import StatefulModule
from ann2snn.simulator import run_steps, running_mean

__all__ = ["verify_unrolled", "verify_stateful", "reference", "example_batch", "RTOL", "ATOL"]

RTOL = 1e-4
ATOL = 1e-4  # times max(1, max|ref|)


def example_batch(snn, *, batch: int = 16, seed: int = 0, T: int | None = None, encoding: str = "direct"):
    """A seeded verification input: uniform [0, 1) images (or Bernoulli spikes ``[T, B, ...]`` when encoded)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, *snn.input_shape, generator=g)
    if encoding == "sequence":
        T = snn.T if T is None else T
        x = (torch.rand(T, *x.shape, generator=g) < x).float()
    return x


@torch.no_grad()
def reference(snn, x: torch.Tensor, T: int, *, encoding: str = "direct") -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The simulator's per-step logits ``[T, B, K]`` and each stateful operator's output summed over T."""
    totals: dict[str, np.ndarray] = {}

    def observe(node, inputs, output):
        if node.op == "call_module" and isinstance(snn.graph_module.get_submodule(node.target), StatefulModule):
            totals[node.target] = output.sum(0).numpy()

    out = run_steps(snn.graph_module, x, T, encoding=encoding, observer=observe)
    return running_mean(out).numpy(), totals


def _compare(ort_logits: np.ndarray, ref: np.ndarray, what: str) -> dict[str, Any]:
    if ort_logits.shape != ref.shape:
        raise VerificationError(f"{what}: onnxruntime gives logits of shape {ort_logits.shape}, the simulator "
                                f"{ref.shape}; the export is wrong, please report it")
    atol = ATOL * max(1.0, float(np.abs(ref).max(initial=0.0)))
    err = np.abs(ort_logits - ref)
    bad = (err > atol + RTOL * np.abs(ref)).reshape(ref.shape[0], ref.shape[1], -1).any(axis=(0, 2))
    agree = float((ort_logits[-1].argmax(-1) == ref[-1].argmax(-1)).mean())
    rep = {"max_abs_error": float(err.max(initial=0.0)), "rtol": RTOL, "atol": atol,
           "samples": int(ref.shape[1]), "mismatched_samples": int(bad.sum()), "argmax_agreement": agree}
    if bad.any():
        raise VerificationError(
            f"{what} does not match the simulator: {int(bad.sum())}/{ref.shape[1]} samples differ beyond "
            f"atol={atol:.2g}, rtol={RTOL:g} (max error {rep['max_abs_error']:.3g}); the export is wrong — rerun "
            "with --verbose and report it, or pass --no-verify to write it anyway")
    return rep


def verify_unrolled(snn, model_bytes: bytes, probe_bytes: bytes | None, *, T: int, encoding: str = "direct",
                    x: torch.Tensor | None = None, provider: str = "cpu", ref=None) -> dict[str, Any]:
    """Check the unrolled graph (and spike counts via its probe twin) against the simulator; returns a report."""
    from ann2snn.runtime import make_session

    t0 = time.perf_counter()
    x = example_batch(snn, T=T, encoding=encoding) if x is None else x
    ref_logits, ref_counts = reference(snn, x, T, encoding=encoding) if ref is None else ref
    sess, used = make_session(model_bytes, provider=provider)
    names = [o.name for o in sess.get_outputs()]
    outs = dict(zip(names, sess.run(None, {"input": x.numpy()})))
    rep = _compare(outs["logits_per_step"], ref_logits, "the unrolled ONNX graph")
    if not np.allclose(outs["logits"], outs["logits_per_step"][-1]):
        raise VerificationError("the unrolled ONNX graph's logits differ from its last per-step logits; "
                                "the export is wrong, please report it")
    if probe_bytes is not None:
        from ann2snn.exporters.onnx_unrolled import PROBE_PREFIX

        psess, _ = make_session(probe_bytes, provider=provider)
        pnames = [o.name for o in psess.get_outputs()]
        pouts = dict(zip(pnames, psess.run(None, {"input": x.numpy()})))
        total = equal = 0
        per_op = {}
        for name, r in ref_counts.items():
            o = pouts[PROBE_PREFIX + name]
            eq = int((np.abs(o - r) <= 1e-3 * np.maximum(1.0, np.abs(r))).sum())
            per_op[name] = eq / r.size
            total, equal = total + r.size, equal + eq
        rep["spike_count_agreement"] = equal / max(total, 1)
        rep["spike_counts_compared"] = total
        rep["spike_count_agreement_min_op"] = min(per_op.values(), default=1.0)
    rep.update(provider=used, seconds=time.perf_counter() - t0)
    return rep


def verify_stateful(snn, model_bytes: bytes, *, T: int, encoding: str = "direct", x: torch.Tensor | None = None,
                    provider: str = "cpu", ref=None) -> dict[str, Any]:
    """Drive the one-step graph T times with :class:`ann2snn.runtime.StatefulRunner` and check it."""
    from ann2snn.runtime import StatefulRunner

    t0 = time.perf_counter()
    x = example_batch(snn, T=T, encoding=encoding) if x is None else x
    ref_logits, _ = reference(snn, x, T, encoding=encoding) if ref is None else ref
    runner = StatefulRunner(model_bytes, provider=provider)
    rep = _compare(runner.run(x.numpy(), T), ref_logits, "the stateful ONNX graph driven T times")
    rep.update(provider=runner.provider, seconds=time.perf_counter() - t0)
    return rep
