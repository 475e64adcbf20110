"""The ``ann2snn eval`` options of the methods (imported by the CLI only: this module imports click and rich).

``@method_options`` adds the options to a command and hands them to it as one ``methods`` argument
(:class:`MethodFlags`); :func:`run_comparison` turns them into :class:`~ann2snn.methods.Method` rows beside the
plain conversion and runs :func:`~ann2snn.methods.compare_methods`; :func:`render_comparison` prints its tables.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, fields
from typing import Any

import click

from ann2snn.methods.compare import DEFAULT_CALIB_SAMPLES, Method
from ann2snn.methods.noise import NoiseSpec, parse_noise, parse_noise_steps
from ann2snn.methods.readout import LIFReadout, STDPConfig
from ann2snn.methods.ttrbr import TTRBRConfig

__all__ = ["MethodFlags", "method_options", "run_comparison", "render_comparison"]


#: the row name of each ``--ttrbr`` choice
_TTRBR_NAMES = {"both": "TTRBR", "tune": "TTRBR tuning only", "restructure": "TTRBR restructuring only"}


@dataclass(frozen=True)
class MethodFlags:
    """The methods options of one command line."""

    encoding: str = "direct"
    rate_scale: float = 1.0
    seed: int = 0
    max_spikes: tuple[int, ...] = ()
    cos: bool = False
    cos_iterations: int = 1
    srp: tuple[int, ...] = ()
    lif_readout: tuple[float, ...] = ()
    lif_threshold: float = 1.0
    stdp: bool = False
    ttrbr: tuple[str, ...] = ()
    ttrbr_finetune: int = 1
    noise: str | None = None
    noise_steps: str | None = None
    calib_samples: int = DEFAULT_CALIB_SAMPLES
    noise_plot: Any = None

    @property
    def active(self) -> bool:
        """True when the command asked for a comparison (a method or a noise curve)."""
        return bool(self.methods()[1:]) or self.noise is not None or self.noise_steps is not None

    def to_json(self) -> dict[str, Any]:
        return {f.name: (list(v) if isinstance(v, tuple) else v if v is None or isinstance(v, (bool, int, float, str))
                         else str(v)) for f in fields(self) for v in [getattr(self, f.name)]}

    def methods(self) -> list[Method]:
        """The plain conversion, then one row per method asked for."""
        out = [Method("plain")]
        if self.encoding == "rate":
            out.append(Method("rate coding", encoding="rate", rate_scale=self.rate_scale))
        out += [Method(f"multi-bit D={d}", max_spikes=d) for d in self.max_spikes if d > 1]
        if self.cos:
            out.append(Method("COS", cos=True, cos_iterations=self.cos_iterations))
        out += [Method(f"SRP τ={s}", srp_steps=s) for s in self.srp]
        out += [Method(f"LIF γ={g:g}", readout=LIFReadout(g, self.lif_threshold)) for g in self.lif_readout]
        if self.stdp:
            g = self.lif_readout[0] if self.lif_readout else 1.0
            rd = LIFReadout(g, self.lif_threshold)
            out.append(Method(f"LIF γ={g:g} + STDP", readout=rd, stdp=STDPConfig(readout=rd)))
        for part in dict.fromkeys(self.ttrbr):
            cfg = TTRBRConfig(restructure=part != "tune", tune=part != "restructure",
                              finetune_epochs=self.ttrbr_finetune)
            out.append(Method(_TTRBR_NAMES[part], ttrbr=cfg))
        return out

    def noise_spec(self) -> NoiseSpec | None:
        if self.noise is None:
            if self.noise_steps is not None:
                raise click.UsageError("--noise-steps needs --noise (e.g. --noise salt-pepper:0,0.1,0.2,0.3)")
            return None
        kind, levels = parse_noise(self.noise)
        return NoiseSpec(kind, levels, parse_noise_steps(self.noise_steps))


_OPTIONS = [
    click.option("--encoding", type=click.Choice(["direct", "rate"]), default="direct", show_default=True,
                 help="Methods: 'rate' adds a row with Bernoulli rate-coded input (s = [c·u > U(0,1)] of the "
                      "intensity u, seeded, fed as a pre-encoded sequence) beside the plain (direct) conversion."),
    click.option("--rate-scale", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
                 help="Rate coding's scale c: a pixel of intensity u fires with probability c·u per step."),
    click.option("--seed", type=int, default=0, show_default=True,
                 help="Seed of rate coding, the noise draws and STDP's order."),
    click.option("--max-spikes", type=click.IntRange(min=1), multiple=True,
                 help="Methods: multi-bit neurons emitting up to D spikes a step (QCFS level at T = ⌈L/D⌉); "
                      "repeat for several D."),
    click.option("--cos", is_flag=True, help="Methods: COS, initial membranes calibrated for each T on "
                                             "--calib-samples training images."),
    click.option("--cos-iterations", type=click.IntRange(min=1), default=1, show_default=True,
                 help="COS rounds per layer."),
    click.option("--srp", type=click.IntRange(min=1), multiple=True, metavar="TAU",
                 help="Methods: SRP with a pre-run of TAU steps (neurons not charged after it stay silent); the "
                      "logits at T come from the T steps after the pre-run, and energy counts the pre-run."),
    click.option("--lif-readout", type=click.FloatRange(min=0, max=1, min_open=True), multiple=True,
                 metavar="GAMMA", help="Methods: a LIF read-out with leak GAMMA (1: no leak); repeat for several."),
    click.option("--lif-threshold", type=click.FloatRange(min=0, min_open=True), default=1.0, show_default=True,
                 help="Threshold of the LIF read-out neurons."),
    click.option("--stdp", is_flag=True,
                 help="Methods: the LIF read-out (first --lif-readout γ, else 1) with its weights trained by "
                      "unsupervised pair-based STDP on --calib-samples training images."),
    click.option("--ttrbr", type=click.Choice(list(_TTRBR_NAMES)), multiple=True, metavar="both|tune|restructure",
                 help="Methods: TTRBR for ResNet-style QANNs: residual blocks restructured (both summands of every "
                      "residual add quantized) and fine-tuned on --calib-samples labelled training images, then "
                      "thresholds tuned for each T on them (both), or one part only; repeat for several rows."),
    click.option("--ttrbr-finetune", type=click.IntRange(min=0), default=1, show_default=True, metavar="EPOCHS",
                 help="TTRBR's fine-tuning passes over the calibration images after restructuring (0: none)."),
    click.option("--noise", default=None, metavar="KIND:LEVELS",
                 help="Robustness curve, e.g. salt-pepper:0,0.1,0.2,0.3: ANN vs SNN accuracy (every method) "
                      "by fraction of pixels replaced."),
    click.option("--noise-steps", default=None, metavar="K/N",
                 help="SNN noise on the first K of every N steps only (the paper: 2/5); default every step."),
    click.option("--calib-samples", type=click.IntRange(min=1), default=DEFAULT_CALIB_SAMPLES, show_default=True,
                 help="Training images for COS calibration, STDP and TTRBR."),
    click.option("--noise-plot", type=click.Path(dir_okay=False), default=None,
                 help="Write the noise curve (ANN vs SNN) to this PNG."),
]
_NAMES = [f.name for f in fields(MethodFlags)]


def method_options(fn):
    """Add the methods options to a click command; they reach it as one ``methods`` (:class:`MethodFlags`)."""
    @functools.wraps(fn)
    def wrapper(*args, **kw):
        flags = {k: kw.pop(k) for k in _NAMES if k in kw}
        return fn(*args, methods=MethodFlags(**flags), **kw)

    for opt in reversed(_OPTIONS):
        wrapper = opt(wrapper)
    return wrapper


def run_comparison(qann, data, Ts, flags: MethodFlags, *, batch_size: int, limit: int | None, energy,
                   progress=None) -> dict[str, Any]:
    """:func:`~ann2snn.methods.compare_methods` for the flags (one-line errors for bad ones)."""
    from ann2snn.methods.compare import compare_methods

    return compare_methods(qann, data, Ts, flags.methods(), noise=flags.noise_spec(), seed=flags.seed,
                           batch_size=batch_size, limit=limit, calib_samples=flags.calib_samples, energy=energy,
                           progress=progress)


def _pct(v) -> str:
    return "-" if v is None else f"{v * 100:.2f}"


def render_comparison(comp: dict[str, Any], console, table) -> None:
    """The methods' accuracy and energy by T beside the plain conversion, then the noise table."""
    Ts = comp["T_list"]
    cal = comp["calibration"]
    rows = [["QANN", *[_pct(comp["qann_accuracy"])] * len(Ts)]]
    erows = []
    for name, m in comp["methods"].items():
        rows.append([name, *[_pct(r["snn_accuracy"]) for r in m["per_T"]]])
        erows.append([name, *[f"{r['energy_ratio']:.3f}" + (f" ({r['steps_run']})" if r["steps_run"] != r["T"]
                                                            else "") for r in m["per_T"]]])
    console.print(table(f"{comp['dataset']}, methods vs plain conversion: accuracy (%) by T ({comp['samples']} "
                        f"samples, L = {', '.join(map(str, comp['levels']))}, rate convention)",
                        ["method", *[f"T={t}" for t in Ts]], rows))
    console.print(table("Energy E_SNN / E_ANN by T (steps actually run, when more)", ["method",
                                                                                    *[f"T={t}" for t in Ts]], erows))
    notes = []
    if any(m["method"]["cos"] or m["method"]["stdp"] or m["method"].get("ttrbr") for m in comp["methods"].values()):
        notes.append(f"COS / STDP / TTRBR used {cal['samples']} {cal['split']} images")
    for name, m in comp["methods"].items():
        t = m.get("ttrbr")
        if t and t["inserted_quantizers"]:
            notes.append(f"{name}: {len(t['inserted_quantizers'])} quantizers inserted, restructured QANN "
                         f"{_pct(t.get('qann_accuracy'))}%")
    if "rate coding" in comp["methods"]:
        notes.append(f"rate coding scale c = {comp['methods']['rate coding']['rate_scale']:.4g}")
    if notes:
        console.print(f"[dim]{'; '.join(notes)}.[/]")
    noise = comp["noise"]
    if len(noise["levels"]) > 1 or noise["levels"][0] > 0:
        steps = "every step" if noise["steps"] == "all" else \
            f"the first {noise['steps'].replace('/', ' of every ')} steps"
        rows = [["ANN (QANN)", *[_pct(a) for a in noise["qann_accuracy"]]]]
        rows += [[f"SNN {name}, T={t}", *[_pct(a) for a in tab[j]]]
                 for name, tab in noise["methods"].items() for j, t in enumerate(Ts)]
        console.print(table(f"{noise['kind']} noise: accuracy (%) by fraction of pixels, ANN vs SNN (SNN noise on "
                            f"{steps}; seed {noise['seed']})",
                            ["model", *[f"{p * 100:g}%" for p in noise["levels"]]], rows))
