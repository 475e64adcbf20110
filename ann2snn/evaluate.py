"""Accuracy of a QANN and of its SNN at every T from one run, per time convention, with exactness, firing rates
and operation counts.

For each time convention (``"rate"``, ``"exact"``; see ``../shared/DESIGN.md`` §2b) the QANN is converted once and
its SNN runs once for ``T_max = max(Ts)`` steps; its logits at T = t are the running sum of the first t per-step
outputs read out by the network's schedule (divided by t in rate mode, by min(t, L) in exact mode), so every T in
the list costs nothing extra.

**Exact logits.** A sample's SNN logits at step t *equal* the QANN's when every logit is within
``EXACT_RTOL · max(1, max_k |qann_k|)`` of the QANN's (the QANN logits of that sample): exact mode is exact up to
float rounding and ties on a quantization boundary, not bit for bit. A sample is *exact from step s* when its
logits are equal at every step s..T_max (likewise *agrees from step s* for the predicted class); samples that are
not equal at T_max never got there and are counted, never given a made-up step.
"""

from __future__ import annotations

import statistics
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ann2snn.data import Dataset, batches
from ann2snn.energy import ActivityMonitor, EnergyModel
from ann2snn.errors import Ann2SnnError
from ann2snn.layers import qcfs_modules
from ann2snn.limits import steps_error
from ann2snn.plots import mode_results, plot_eval  # plot_eval re-exported: it lives with the other plots

__all__ = ["DEFAULT_TS", "MODES", "EXACT_RTOL", "parse_ts", "parse_modes", "evaluate", "mode_results",
           "exact_logits_mask", "first_stable_step", "step_stats", "plot_eval"]

DEFAULT_TS = (1, 2, 4, 8, 16, 32, 64)
#: the time conventions, in the order they are reported
MODES = ("rate", "exact")
#: relative tolerance of "the SNN logits equal the QANN's" (see the module docstring)
EXACT_RTOL = 1e-4
EXACT_RULE = "|snn - qann| <= rtol * max(1, max_k |qann_k|) for every logit k of the sample"


def parse_ts(value: str | Sequence[int]) -> list[int]:
    """``"1,2,4"`` (or a sequence of ints) → sorted unique positive step counts; one-line error otherwise."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        if not value.strip() or any(not p.isdigit() for p in parts):
            raise Ann2SnnError(f"T list must be comma-separated positive integers like 1,2,4,8, got {value!r}")
        value = [int(p) for p in parts]
    ts = list(value)
    if not ts or any(isinstance(t, bool) or not isinstance(t, int) or t <= 0 for t in ts):
        raise Ann2SnnError(f"T list must be positive integers like 1,2,4,8, got {ts!r}")
    why = steps_error(max(ts), "T")
    if why:
        raise Ann2SnnError(why)
    return sorted(set(ts))


def parse_modes(value: str | Sequence[str]) -> list[str]:
    """``"rate,exact"`` (or a sequence of names) → the time conventions in the order given, without duplicates."""
    parts = [p.strip() for p in value.split(",")] if isinstance(value, str) else list(value)
    bad = [p for p in parts if p not in MODES]
    if not parts or bad:
        raise Ann2SnnError(f"mode must be rate, exact or both comma-separated (rate,exact), got {value!r}")
    return list(dict.fromkeys(parts))


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset | tuple[torch.Tensor, torch.Tensor], Ts: Sequence[int] = DEFAULT_TS,
             *, convention: str | Sequence[str] = "rate", batch_size: int = 256, limit: int | None = None,
             energy: EnergyModel | None = None, snn=None, backend: str = "torch", provider: str = "auto",
             progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Evaluate ``model`` (a QANN) and its SNN on ``data``'s test split at every T in ``Ts``, per time convention.

    Args:
        model: the QANN (QCFS activations), in eval mode.
        data: a :class:`~ann2snn.data.Dataset` (its test split is used) or ``(x, y)`` tensors.
        Ts: time steps to report; each SNN runs once for ``max(Ts)`` steps.
        convention: ``"rate"``, ``"exact"``, or several (``"rate,exact"`` or a list): each converts its own SNN
            (``ann2snn.convert(model, T=max(Ts), convention=...)``); all run on the same batches.
        batch_size: mini-batch size.
        limit: evaluate only the first ``limit`` samples (None: all).
        energy: energy constants (:class:`~ann2snn.energy.EnergyModel`, defaults E_MAC 4.6 pJ, E_AC 0.9 pJ).
        snn: an already converted :class:`SpikingNetwork` of ``model`` for a single convention (its own).
        backend: ``"torch"`` (the reference simulator) or ``"onnx"``: the SNN exported as an unrolled ONNX graph
            for ``max(Ts)`` steps and run on onnxruntime (``provider`` ``auto`` / ``cuda`` / ``cpu``); accuracies
            then come from its ``logits_per_step`` output, while firing rates and operation counts still come
            from the reference simulator run on the same batches (``backend_max_abs_diff`` compares the two).
        progress: called with the number of samples done after each batch.

    Returns:
        A JSON-ready dict. Shared keys: ``dataset, samples, T_list, levels, qann_accuracy, exact_tolerance``.
        ``modes`` maps each convention to its results: ``per_T`` (``T, snn_accuracy, agreement, delta_pp,
        exact_logits, logit_max_abs_diff``), ``curve`` (``snn_accuracy``, ``agreement``, ``exact_logits`` at every
        t = 1..T_max), ``exactness`` (for ``exact_logits`` and ``agreement``: the step from which every sample
        stays there, the median and max of the per-sample steps, how many never got there), ``firing_rates``,
        ``energy``, ``conversion``, ``best_T``, ``backend``. The first convention's results are also at the top
        level (``convention`` names it), as before conventions existed.

    Examples:
        >>> res = evaluate(qann, load_dataset("digits"), [1, 2, 4, 8], convention="rate,exact")
        >>> res["modes"]["exact"]["exactness"]["exact_logits"]["step_all"]
    """
    modes = parse_modes(convention)
    Ts = parse_ts(Ts)
    if backend not in ("torch", "onnx"):
        raise Ann2SnnError(f"backend must be 'torch' or 'onnx', got {backend!r}")
    if batch_size <= 0:
        raise Ann2SnnError(f"batch size must be positive, got {batch_size}")
    if snn is not None and len(modes) > 1:
        raise Ann2SnnError("snn= is one converted network: pass it with a single convention, or leave it out")
    name, x, y = _test_split(model, data, limit)
    model = model.eval()
    runs = [_ModeRun(mode, model, tuple(x.shape[1:]), max(Ts), snn=snn, energy=energy, backend=backend,
                     provider=provider) for mode in modes]
    qann_correct = done = 0
    for xb, yb in batches(x, y, batch_size):
        q_logits = model(xb)
        qann_correct += int((q_logits.argmax(-1) == yb).sum())
        for run in runs:
            run.add(xb, yb, q_logits)
        done += len(yb)
        if progress is not None:
            progress(done)
    qacc = qann_correct / len(y)
    results = {run.mode: run.result(Ts, qacc) for run in runs}
    return {
        "dataset": name, "samples": len(y), "T_list": Ts,
        "levels": sorted({q.levels for _, q in qcfs_modules(model)}),
        "qann_accuracy": qacc,
        "exact_tolerance": {"rtol": EXACT_RTOL, "rule": EXACT_RULE},
        "convention": modes[0], **results[modes[0]],
        "modes": results,
    }


def _test_split(model: nn.Module, data, limit: int | None) -> tuple[str, torch.Tensor, torch.Tensor]:
    """The dataset's name and its (limited) test tensors, checked against the model's input shape."""
    name = data.name if isinstance(data, Dataset) else "tensors"
    x, y = (data.x_test, data.y_test) if isinstance(data, Dataset) else data
    if limit is not None:
        if limit <= 0:
            raise Ann2SnnError(f"limit must be a positive number of samples, got {limit}")
        x, y = x[:limit], y[:limit]
    if len(y) == 0:
        raise Ann2SnnError(f"dataset {name!r} has no test samples to evaluate; check the data directory")
    expected = getattr(model, "input_shape", None)
    if expected is not None and tuple(x.shape[1:]) != tuple(expected):
        raise Ann2SnnError(f"the data's samples have shape {tuple(x.shape[1:])} but the model takes "
                           f"{tuple(expected)}; pass the dataset the model was trained on (--data)")
    return name, x, y


def exact_logits_mask(snn_logits: torch.Tensor, qann_logits: torch.Tensor, *, rtol: float = EXACT_RTOL
                      ) -> torch.Tensor:
    """``[T, B, K]`` SNN logits vs ``[B, K]`` QANN logits → ``[T, B]``: are the sample's logits equal at step t?"""
    tol = rtol * qann_logits.abs().amax(-1).clamp(min=1.0)  # [B]
    return ((snn_logits - qann_logits).abs() <= tol[:, None]).all(-1)


def first_stable_step(ok: torch.Tensor) -> torch.Tensor:
    """``[T, B]`` booleans → ``[B]``: the first step t (1-based) from which ``ok`` holds through step T; 0 where
    it does not hold at step T (never got there)."""
    stays = ok.flip(0).to(torch.int8).cummin(0).values.flip(0)  # stays[t]: ok at every step from t on
    count = stays.sum(0, dtype=torch.long)
    return torch.where(count > 0, ok.shape[0] - count + 1, torch.zeros_like(count))


def step_stats(first: torch.Tensor, T_max: int) -> dict[str, Any]:
    """Summary of per-sample first stable steps (0 = never, see :func:`first_stable_step`).

    ``step_all``: the first step from which *every* sample stays there (None if some never did);
    ``median`` over all samples (a sample that never got there counts as later than T_max; None if that is the
    median), ``max`` over the samples that got there, ``never``: how many did not by T_max,
    ``first_step_counts[t-1]``: how many samples got there from step t.
    """
    reached = first[first > 0]
    never = int(first.numel() - reached.numel())
    median = statistics.median([float(s) for s in reached.tolist()] + [float("inf")] * never)
    return {
        "step_all": int(reached.max()) if never == 0 else None,
        "median": None if median == float("inf") else (int(median) if median == int(median) else median),
        "max": int(reached.max()) if reached.numel() else None,
        "never": never,
        "first_step_counts": torch.bincount(reached, minlength=T_max + 1)[1:].tolist(),
    }


class _ModeRun:
    """One time convention: its SNN, activity monitor and per-step tallies accumulated over the batches."""

    def __init__(self, mode: str, model: nn.Module, input_shape: tuple[int, ...], T_max: int, *, snn, energy,
                 backend: str, provider: str) -> None:
        from ann2snn.network import convert

        if snn is None:
            snn = convert(model, T=T_max, input_shape=input_shape, convention=mode)
        own = _convention_of(snn)
        if own != mode:
            raise Ann2SnnError(f"the given snn was converted with convention {own!r}, not {mode!r}; convert it with "
                               f"convention={mode!r} or leave snn out")
        self.mode, self.snn, self.T_max = mode, snn, T_max
        self.monitor = ActivityMonitor(snn.graph_module, T_max, energy=energy)
        self.runner, self.backend, self.backend_diff = None, backend, 0.0
        if backend == "onnx":
            from ann2snn.exporters.onnx_unrolled import build_unrolled
            from ann2snn.runtime import UnrolledRunner

            self.runner = UnrolledRunner(build_unrolled(snn, T=T_max).SerializeToString(), provider=provider)
            self.backend = f"onnx ({self.runner.provider})"
        # per step t: samples correct, agreeing with the QANN, with exact logits; the largest |SNN − QANN| logit
        self.correct, self.agree, self.exact, self.max_diff = (torch.zeros(T_max, dtype=torch.float64)
                                                               for _ in range(4))
        self.exact_from: list[torch.Tensor] = []
        self.agree_from: list[torch.Tensor] = []

    def logits(self, xb: torch.Tensor) -> torch.Tensor:
        """The SNN's logits at every step, ``[T_max, B, K]``, from the reference simulator (recording activity)
        or, with the ONNX backend, from onnxruntime."""
        from ann2snn.simulator import readout, run_steps

        schedule = self.snn.schedule
        per_t = readout(run_steps(self.snn.graph_module, xb, self.T_max, schedule=schedule, observer=self.monitor),
                        schedule)
        if self.runner is not None:
            ort_t = torch.from_numpy(self.runner.run(xb.numpy()))
            self.backend_diff = max(self.backend_diff, float((ort_t - per_t).abs().max()))
            per_t = ort_t
        return per_t

    def add(self, xb: torch.Tensor, yb: torch.Tensor, q_logits: torch.Tensor) -> None:
        per_t = self.logits(xb)
        self.monitor.add_samples(len(yb))
        s_pred = per_t.argmax(-1)  # [T, B]
        agree = s_pred == q_logits.argmax(-1)
        exact = exact_logits_mask(per_t, q_logits)
        self.correct += (s_pred == yb).sum(1, dtype=torch.float64)
        self.agree += agree.sum(1, dtype=torch.float64)
        self.exact += exact.sum(1, dtype=torch.float64)
        self.max_diff = torch.maximum(self.max_diff, (per_t - q_logits).abs().flatten(1).amax(1).double())
        self.agree_from.append(first_stable_step(agree))
        self.exact_from.append(first_stable_step(exact))

    def result(self, Ts: list[int], qacc: float) -> dict[str, Any]:
        n = self.monitor.samples
        curve = (self.correct / n).tolist()
        agree, exact = (self.agree / n).tolist(), (self.exact / n).tolist()
        per_T = [{"T": t, "snn_accuracy": curve[t - 1], "agreement": agree[t - 1],
                  "delta_pp": round((curve[t - 1] - qacc) * 100, 4), "exact_logits": exact[t - 1],
                  "logit_max_abs_diff": float(self.max_diff[t - 1])} for t in Ts]
        best = max(per_T, key=lambda r: (r["snn_accuracy"], -r["T"]))
        report = self.snn.report
        return {
            "convention": self.mode, "backend": self.backend,
            **({"backend_max_abs_diff": self.backend_diff} if self.runner is not None else {}),
            "per_T": per_T, "best_T": best["T"],
            "curve": {"T": list(range(1, self.T_max + 1)), "snn_accuracy": curve, "agreement": agree,
                      "exact_logits": exact},
            "exactness": {"exact_logits": step_stats(torch.cat(self.exact_from), self.T_max),
                          "agreement": step_stats(torch.cat(self.agree_from), self.T_max)},
            "firing_rates": self.monitor.firing_rates(Ts),
            "energy": self.monitor.summary(Ts),
            "conversion": report.counts() if report is not None else {},
        }


def _convention_of(snn) -> str:
    schedule = getattr(snn, "schedule", None)
    return getattr(schedule, "convention", "rate")
