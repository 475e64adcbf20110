"""The seed's other methods against the plain conversion, on the same batches: accuracy at every T, energy, and
accuracy under salt-and-pepper noise (ANN vs SNN).

A :class:`Method` is one way of running the converted QANN — rate-coded input, multi-bit spikes, COS, SRP, a LIF
read-out with or without STDP-trained weights — and :func:`compare_methods` runs each (and the plain conversion,
``PLAIN``) on the test split under the rate convention, at every noise level, returning one JSON-ready dict.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ann2snn.data import Dataset, batches
from ann2snn.energy import ActivityMonitor, EnergyModel
from ann2snn.errors import Ann2SnnError
from ann2snn.methods.calibrate import apply_cos, apply_srp
from ann2snn.methods.coding import check_rate_scale, rate_encode
from ann2snn.methods.noise import NoiseSpec, salt_pepper, step_inputs
from ann2snn.methods.readout import LIFReadout, STDPConfig, train_stdp
from ann2snn.methods.ttrbr import TTRBRConfig, finetune, restructure_residuals, tune_thresholds
from ann2snn.simulator import readout, run_steps

__all__ = ["Method", "PLAIN", "compare_methods", "DEFAULT_CALIB_SAMPLES"]

#: calibration images (COS) and training images (STDP) taken from the training split by default
DEFAULT_CALIB_SAMPLES = 512


@dataclass(frozen=True)
class Method:
    """One way of running the converted network (each field off by default: the plain conversion).

    ``encoding``: ``"direct"`` or ``"rate"`` (Bernoulli coding of the intensity between the data's smallest and
    largest value, scale ``rate_scale``, default 1); ``max_spikes``: D of multi-bit neurons; ``cos``:
    COS-calibrated for each T (``cos_iterations`` per layer); ``srp_steps``: SRP's pre-run τ (0: none);
    ``readout``: a LIF read-out; ``stdp``: read-out weights trained by STDP first (with ``stdp.readout`` producing
    the post spikes); ``ttrbr``: TTRBR (residual blocks restructured and fine-tuned once, thresholds tuned for each
    T)."""

    name: str
    encoding: str = "direct"
    rate_scale: float = 1.0
    max_spikes: int = 1
    cos: bool = False
    cos_iterations: int = 1
    srp_steps: int = 0
    readout: LIFReadout | None = None
    stdp: STDPConfig | None = None
    ttrbr: TTRBRConfig | None = None

    def __post_init__(self) -> None:
        if self.encoding not in ("direct", "rate"):
            raise Ann2SnnError(f"encoding must be 'direct' or 'rate', got {self.encoding!r}")
        check_rate_scale(self.rate_scale)
        if self.srp_steps < 0 or self.max_spikes < 1 or self.cos_iterations < 1:
            raise Ann2SnnError(f"method {self.name!r}: srp_steps >= 0, max_spikes >= 1, cos_iterations >= 1")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


PLAIN = Method("plain")


@torch.no_grad()
def compare_methods(model: nn.Module, data: Dataset | tuple[torch.Tensor, torch.Tensor], Ts: Sequence[int],
                    methods: Sequence[Method], *, noise: NoiseSpec | None = None, seed: int = 0,
                    batch_size: int = 256, limit: int | None = None, calib_samples: int = DEFAULT_CALIB_SAMPLES,
                    energy: EnergyModel | None = None, progress: Callable[[int], None] | None = None
                    ) -> dict[str, Any]:
    """Accuracy at every T of the plain conversion and of each method, on the same batches (rate convention).

    Args:
        model: the QANN. data: a dataset (test split evaluated; COS and STDP use the first ``calib_samples``
            training images) or ``(x, y)`` tensors (then they use the first test images, and say so).
        Ts: time steps reported. methods: the methods (the plain conversion is added first when missing).
        noise: salt-and-pepper levels (and the SNN steps it is on); default: none.
        seed: seeds the noise draws and every method's rate coding and STDP order.
        progress: called with (samples done, summed over noise levels) after each batch.

    Returns:
        ``{dataset, samples, T_list, levels, qann_accuracy, calibration, methods: {name: {method, per_T, ...}},
        noise: {kind, levels, steps, qann_accuracy: [per level], methods: {name: [[acc per level] per T]}}}``;
        ``per_T`` rows carry ``snn_accuracy``, ``delta_pp`` and ``agreement`` (vs the QANN on clean input), the
        steps actually run (SRP adds its pre-run) and the energy ratio at that T.
    """
    from ann2snn.evaluate import _test_split, parse_ts
    from ann2snn.layers import qcfs_modules
    from ann2snn.network import convert

    Ts = parse_ts(Ts)
    methods = list(methods)
    if not any(m == PLAIN for m in methods):
        methods.insert(0, PLAIN)
    if len({m.name for m in methods}) != len(methods):
        raise Ann2SnnError(f"method names must differ, got {[m.name for m in methods]}")
    noise = noise or NoiseSpec()
    name, x, y = _test_split(model, data, limit)
    model = model.eval()
    if isinstance(data, Dataset) and len(data.x_train):
        calib, calib_y, calib_from = data.x_train[:calib_samples], data.y_train[:calib_samples], "train"
    else:
        calib, calib_y, calib_from = x[:calib_samples], y[:calib_samples], "test"
    lo, hi = float(x.min()), float(x.max())
    shape = tuple(x.shape[1:])
    base = convert(model, T=max(Ts), input_shape=shape)
    runs = [_Run(m, model, base, Ts, shape, (calib, calib_y), noise, seed, (lo, hi), energy, batch_size)
            for m in methods]
    levels = noise.levels
    q_correct = torch.zeros(len(levels), dtype=torch.float64)
    clean_correct = done = 0
    for li, level in enumerate(levels):
        g = torch.Generator().manual_seed(seed + 7919 * li)
        for xb, yb in batches(x, y, batch_size):
            clean_q = model(xb)
            if li == 0:
                clean_correct += int((clean_q.argmax(-1) == yb).sum())
            noisy = salt_pepper(xb, level, low=lo, high=hi, generator=g)
            q = clean_q if level == 0 else model(noisy)
            q_correct[li] += float((q.argmax(-1) == yb).sum())
            for run in runs:
                run.add(li, level, xb, noisy, yb, clean_q)
            done += len(yb)
            if progress is not None:
                progress(done)
    n = len(y)
    qacc = clean_correct / n
    return {
        "dataset": name, "samples": n, "T_list": Ts, "convention": "rate", "backend": "torch (reference simulator)",
        "levels": sorted({q.levels for _, q in qcfs_modules(model)}),
        "qann_accuracy": qacc,
        "calibration": {"samples": len(calib), "split": calib_from},
        "input_range": [lo, hi],
        "methods": {r.method.name: r.result(qacc) for r in runs},
        "noise": {"kind": noise.kind, "levels": list(levels), "steps": noise.steps_label(), "seed": seed,
                  "qann_accuracy": (q_correct / n).tolist(),
                  "methods": {r.method.name: r.noise_table() for r in runs}},
    }


class _Run:
    """One method: its network(s), per-T tallies at every noise level, and its activity on clean input."""

    def __init__(self, method: Method, model, base, Ts, shape, calib, noise: NoiseSpec, seed, input_range, energy,
                 batch_size) -> None:
        from ann2snn.network import convert

        self.method, self.Ts, self.noise = method, Ts, noise
        calib, calib_y = calib
        self.T_max = max(Ts)
        self.scale = method.rate_scale
        self.low, self.high = input_range
        self.g = torch.Generator().manual_seed(seed)
        snn = base if method.max_spikes == 1 else convert(model, T=self.T_max, input_shape=shape,
                                                          max_spikes=method.max_spikes)
        self.extra: dict[str, Any] = {}
        if method.stdp is not None:
            snn, self.extra["stdp"] = train_stdp(snn, calib, method.stdp, batch_size=batch_size,
                                                 generator=torch.Generator().manual_seed(seed))
        if method.srp_steps:
            snn = apply_srp(snn, method.srp_steps)
        self.pre = method.srp_steps
        # COS and TTRBR: one network per T, calibrated for it; otherwise one network read at every T
        self.per_T = method.cos or method.ttrbr is not None
        if method.ttrbr is not None:
            self.nets = self._ttrbr(model, shape, calib, calib_y, seed)
        elif method.cos:
            self.nets = {T: apply_cos(snn, calib, T, iterations=method.cos_iterations, batch_size=batch_size)
                         for T in Ts}
        else:
            self.nets = {self.T_max: snn}
        rest = self.low if method.encoding == "rate" else None  # rate coding: a silent pixel sends `low`
        self.monitors = {T: ActivityMonitor(net.graph_module, T + self.pre, energy=energy, input_rest=rest)
                         for T, net in self.nets.items()}
        L = len(noise.levels)
        self.correct = torch.zeros(L, self.T_max, dtype=torch.float64)
        self.agree = torch.zeros(self.T_max, dtype=torch.float64)
        self.samples = torch.zeros(L, dtype=torch.float64)
        self.record_level = noise.levels.index(0.0) if 0.0 in noise.levels else 0

    def _ttrbr(self, model, shape, calib, calib_y, seed) -> dict:
        """TTRBR's networks, one per T: the residual blocks restructured and fine-tuned once, thresholds tuned per T."""
        from ann2snn.network import convert

        cfg = self.method.ttrbr
        self.qann_r, inserted = model, []
        if cfg.restructure:
            self.qann_r, inserted = restructure_residuals(model)
            finetune(self.qann_r, calib, calib_y, epochs=cfg.finetune_epochs, lr=cfg.lr, batch_size=cfg.batch_size,
                     seed=seed)
        self.qann_r_correct = 0.0
        nets, factors = {}, {}
        for T in self.Ts:
            q, factors[T] = (tune_thresholds(self.qann_r, calib[:cfg.tune_samples], T, scales=cfg.scales,
                                             input_shape=shape) if cfg.tune else (self.qann_r, {}))
            nets[T] = convert(q, T=T, input_shape=shape)
        self.extra["ttrbr"] = {"inserted_quantizers": inserted, "threshold_factors": factors}
        return nets

    def _input(self, clean: torch.Tensor, noisy: torch.Tensor, level: float, steps: int):
        """The network input for ``steps`` steps: ``(x, encoding)``."""
        if level > 0 and self.noise.steps is not None:
            x, per_step = step_inputs(clean, noisy, steps, self.noise.steps), True
        else:
            x, per_step = noisy, False
        if self.method.encoding == "rate":
            return rate_encode(x, None if per_step else steps, scale=self.scale, low=self.low, high=self.high,
                               generator=self.g), "sequence"
        return x, "sequence" if per_step else "direct"

    def _logits(self, T_run: int, net, x, encoding, monitor) -> torch.Tensor:
        out = run_steps(net.graph_module, x, T_run + self.pre, encoding=encoding, observer=monitor)
        out = out[self.pre:]
        if self.method.readout is not None:
            return self.method.readout.scores(out)
        return readout(out)

    def add(self, li: int, level: float, clean, noisy, yb, q_clean) -> None:
        record = li == self.record_level
        for T, net in self.nets.items():
            x, enc = self._input(clean, noisy, level, T + self.pre)
            pred = self._logits(T, net, x, enc, self.monitors[T] if record else None).argmax(-1)  # [T, B]
            steps = slice(T - 1, T) if self.per_T else slice(0, T)  # COS, TTRBR: a network per T, read at its T
            self.correct[li, steps] += (pred[steps] == yb).sum(1, dtype=torch.float64)
            if record and level == 0:
                self.agree[steps] += (pred[steps] == q_clean.argmax(-1)).sum(1, dtype=torch.float64)
        if record:
            for m in self.monitors.values():
                m.add_samples(len(yb))
            if self.method.ttrbr is not None and level == 0:  # the restructured QANN's own accuracy
                self.qann_r_correct += float((self.qann_r(clean).argmax(-1) == yb).sum())
        self.samples[li] += len(yb)

    def result(self, qacc: float) -> dict[str, Any]:
        li = self.record_level
        n = float(self.samples[li])
        rows = []
        for T in self.Ts:
            mon = self.monitors[T if self.per_T else self.T_max]
            e = mon.summary([T + self.pre])["per_T"][0]
            acc = float(self.correct[li, T - 1]) / n
            rows.append({"T": T, "steps_run": T + self.pre, "snn_accuracy": acc,
                         "delta_pp": round((acc - qacc) * 100, 4),
                         "agreement": float(self.agree[T - 1]) / n if self.noise.levels[li] == 0 else None,
                         "sops": e["sops"], "snn_macs": e["snn_macs"], "energy_ratio": e["ratio"]})
        out = {"method": self.method.to_json(), "per_T": rows, **self.extra}
        if self.method.ttrbr is not None and self.noise.levels[li] == 0:
            out["ttrbr"]["qann_accuracy"] = self.qann_r_correct / n
        if self.method.encoding == "rate":
            out["rate_scale"] = self.scale
        return out

    def noise_table(self) -> list[list[float]]:
        """``[T][level]`` accuracies."""
        acc = (self.correct / self.samples.clamp(min=1)[:, None]).t()  # [T_max, L]
        return [acc[T - 1].tolist() for T in self.Ts]
