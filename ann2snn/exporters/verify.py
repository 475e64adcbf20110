"""Verification at export: onnxruntime against the PyTorch simulator on one seeded batch.

Criterion (stated in every report): the per-step logits ``[T, B, K]`` from onnxruntime match the simulator's
within ``|ort − ref| ≤ atol + rtol·|ref|`` (``rtol = 1e-4``, ``atol = 1e-4 · max(1, max|ref|)``) and, for the
unrolled graph, every stateful operator's output summed over T (spike counts) is equal, for every sample that is
not *tie-sensitive*.

Why tie-sensitive samples are set apart: PyTorch (oneDNN) and onnxruntime (MLAS) sum in different orders, so a
membrane within a few float32 ulps of the threshold can fire in one and not in the other, and the difference then
propagates. In real networks this is not rare (randomized full-size ResNet-20/-18 on 16 images: one export in
three had 1–2 such samples). A sample is tie-sensitive when the simulator's own logits or spike counts for it
change once every neuron decides at ``(1 ± TIE_EPS)·θ`` with ``TIE_EPS = 1e-6`` (about 8 ulps at θ = 1); only
such samples may differ, at least one sample must be compared strictly, and the counts are reported. A structural
error in an export changes every sample, so it cannot hide there. A failure raises
:class:`~ann2snn.errors.VerificationError`.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from ann2snn.errors import VerificationError
from ann2snn.exporters.contract import INPUT, LOGITS, LOGITS_PER_STEP, probe_name
from ann2snn.neurons import StatefulModule
from ann2snn.simulator import readout, run_steps

__all__ = ["verify_unrolled", "verify_stateful", "reference", "tie_sensitive", "example_batch", "RTOL", "ATOL",
           "TIE_EPS"]

RTOL = 1e-4
ATOL = 1e-4  # times max(1, max|ref|)
TIE_EPS = 1e-6


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

    out = run_steps(snn.graph_module, x, T, encoding=encoding, observer=observe, schedule=snn.schedule)
    return readout(out, snn.schedule).numpy(), totals


@torch.no_grad()
def tie_sensitive(snn, x: torch.Tensor, T: int, ref_logits: np.ndarray, *, encoding: str = "direct",
                  eps: float = TIE_EPS, ref_counts: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """``[B]`` bool: samples whose simulated logits (or, given ``ref_counts``, any operator's output summed over T)
    change when every neuron decides at ``(1 ± eps)·θ`` (each stateful operator's own
    :meth:`~ann2snn.neurons.StatefulModule.tie_probe`)."""
    import copy

    from ann2snn.passes.graph import set_module

    sensitive = np.zeros(ref_logits.shape[1], dtype=bool)
    for factor in (1.0 + eps, 1.0 - eps):
        gm = copy.deepcopy(snn.graph_module)
        for name, m in list(gm.named_modules()):
            probe = m.tie_probe(factor) if isinstance(m, StatefulModule) else None
            if probe is not None:
                set_module(gm, name, probe)
        totals: dict[str, torch.Tensor] = {}

        def observe(node, inputs, output, gm=gm, totals=totals):
            if node.op == "call_module" and isinstance(gm.get_submodule(node.target), StatefulModule):
                totals[node.target] = output.sum(0)

        out = readout(run_steps(gm, x, T, encoding=encoding, schedule=snn.schedule,
                                observer=observe if ref_counts else None), snn.schedule).numpy()
        sensitive |= ~_close(out, ref_logits)
        for name, ref in (ref_counts or {}).items():
            moved = np.abs(totals[name].numpy() - ref) > 1e-3 * np.maximum(1.0, np.abs(ref))
            sensitive |= moved.reshape(moved.shape[0], -1).any(1)
    return sensitive


def _close(a: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``[B]`` bool: per sample, all per-step logits within the stated tolerance."""
    atol = ATOL * max(1.0, float(np.abs(ref).max(initial=0.0)))
    bad = (np.abs(a - ref) > atol + RTOL * np.abs(ref)).reshape(ref.shape[0], ref.shape[1], -1).any(axis=(0, 2))
    return ~bad


def _compare(ort_logits: np.ndarray, ref: np.ndarray, what: str, sensitive=None,
             also_bad: np.ndarray | None = None) -> dict[str, Any]:
    """Compare per-step logits (and ``also_bad``: samples failing another check, e.g. spike counts);
    ``sensitive()`` (computed only when something differs) marks the tie-sensitive samples."""
    if ort_logits.shape != ref.shape:
        raise VerificationError(f"{what}: onnxruntime gives logits of shape {ort_logits.shape}, the simulator "
                                f"{ref.shape}; the export is wrong, please report it")
    atol = ATOL * max(1.0, float(np.abs(ref).max(initial=0.0)))
    err = np.abs(ort_logits - ref)
    bad = ~_close(ort_logits, ref)
    if also_bad is not None:
        bad |= also_bad
    agree = float((ort_logits[-1].argmax(-1) == ref[-1].argmax(-1)).mean())
    rep = {"max_abs_error": float(err.max(initial=0.0)), "rtol": RTOL, "atol": atol,
           "samples": int(ref.shape[1]), "mismatched_samples": int(bad.sum()), "argmax_agreement": agree,
           "tie_sensitive_samples": 0, "tie_eps": TIE_EPS}
    if bad.any():
        tie = sensitive() if sensitive is not None else np.zeros_like(bad)
        rep["tie_sensitive_samples"] = int(tie.sum())
        unexplained = bad & ~tie
        if unexplained.any() or tie.all():
            raise VerificationError(
                f"{what} does not match the simulator: {int(unexplained.sum())}/{ref.shape[1]} samples differ beyond "
                f"atol={atol:.2g}, rtol={RTOL:g} or in spike counts (max logit error {rep['max_abs_error']:.3g}), "
                f"besides {int(tie.sum())} tie-sensitive ones; the export is wrong — rerun with --verbose and report "
                "it, or pass --no-verify to write it anyway")
        rep["max_abs_error_strict"] = float(err[:, ~tie].max(initial=0.0))
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
    outs = dict(zip(names, sess.run(None, {INPUT: x.numpy()})))
    if not np.allclose(outs[LOGITS], outs[LOGITS_PER_STEP][-1]):
        raise VerificationError("the unrolled ONNX graph's logits differ from its last per-step logits; "
                                "the export is wrong, please report it")
    counts: dict[str, Any] = {}
    count_bad = None
    if probe_bytes is not None:
        psess, _ = make_session(probe_bytes, provider=provider)
        pnames = [o.name for o in psess.get_outputs()]
        pouts = dict(zip(pnames, psess.run(None, {INPUT: x.numpy()})))
        total = equal = 0
        per_op = {}
        count_bad = np.zeros(ref_logits.shape[1], dtype=bool)
        for name, r in ref_counts.items():
            same = np.abs(pouts[probe_name(name)] - r) <= 1e-3 * np.maximum(1.0, np.abs(r))
            count_bad |= ~same.reshape(same.shape[0], -1).all(1)
            per_op[name] = float(same.mean())
            total, equal = total + r.size, equal + int(same.sum())
        counts = {"spike_count_agreement": equal / max(total, 1), "spike_counts_compared": total,
                  "spike_count_agreement_min_op": min(per_op.values(), default=1.0)}
    rep = _compare(outs[LOGITS_PER_STEP], ref_logits, "the unrolled ONNX graph",
                   lambda: tie_sensitive(snn, x, T, ref_logits, encoding=encoding, ref_counts=ref_counts),
                   also_bad=count_bad)
    rep.update(counts)
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
    rep = _compare(runner.run(x.numpy(), T), ref_logits, "the stateful ONNX graph driven T times",
                   lambda: tie_sensitive(snn, x, T, ref_logits, encoding=encoding))
    rep.update(provider=runner.provider, seconds=time.perf_counter() - t0)
    return rep
