"""``ann2snn convert``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ann2snn.cli.common import (
    check_input_shape,
    check_T,
    console,
    esc,
    model_options,
    normalize_option,
    parse_shape,
    print_json,
    resolve_preprocessing,
    table,
)


def render_report(report, *, title: str = "Conversion report") -> None:
    """The pass-by-pass table and the headline counts."""
    rows = []
    for p in report.passes:
        changes = ", ".join(
            f"{k}={len(v) if isinstance(v, (list, tuple)) else v}" for k, v in p.changes.items()
            if (len(v) if isinstance(v, (list, tuple)) else v)
        ) or "-"
        rows.append([p.name, f"{p.nodes_before} → {p.nodes_after}", changes, f"{p.seconds * 1e3:.1f}"])
    console.print(table(title, ["pass", "nodes", "changes", "ms"], rows, justify_right_from=3))
    counts = report.counts()
    console.print(table("Summary", ["what", "count"], [[k.replace("_", " "), v] for k, v in counts.items()]))


@click.command("convert")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--T", "T", type=int, default=None,
              help="Time steps (default: the QCFS levels L with --mode rate; 4·L with --mode exact).")
@click.option("--mode", "convention", type=click.Choice(["rate", "exact"]), default="rate", show_default=True,
              help="Time convention. rate: IF neurons, input and biases every step (the seed's QCFS method, best "
                   "near T = L). exact: bounded bipolar neurons, input and biases for the first L steps only; "
                   "from a few steps after L the logits equal the QANN's.")
@click.option("--format", "fmt", type=click.Choice(["both", "unrolled", "stateful", "nir", "torch"]), default="both",
              show_default=True,
              help="ONNX: unrolled (all T steps in one graph, fastest batch inference), stateful (one step with "
                   "explicit state, for streaming), both; nir (a NIR graph, https://neuroir.org, needs "
                   "ann2snn[nir]); or torch (the ann2snn .snn.pt file).")
@click.option("--nir-neuron", type=click.Choice(["if", "integrator"]), default="if", show_default=True,
              help="NIR: each IF neuron as nir.IF (not exact: NIR's IF resets to 0 and starts at 0; needs "
                   "--nir-approximate) or as nir.I + nir.Threshold with a reset loop (exact; needs a consumer that "
                   "runs recurrent graphs, e.g. nirtorch).")
@click.option("--nir-pool", type=click.Choice(["avg", "sum"]), default="avg", show_default=True,
              help="NIR: average pooling as nir.AvgPool2d, or as nir.SumPool2d with its 1/k² folded into the next "
                   "layer (for consumers with sum pooling only, e.g. Sinabs).")
@click.option("--nir-approximate", is_flag=True, default=False,
              help="NIR: write nir.IF although it differs from ann2snn's IF (hard reset instead of subtracting the "
                   "threshold, membrane starting at 0 instead of φ·θ); the differences and the measured agreement "
                   "go into the file's metadata and the sidecar.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output file (default: MODEL with suffix .snn.onnx, .snn.nir for --format nir, or .snn.pt for "
                   "--format torch). With --format both the stateful graph goes to X.step.onnx; the sidecar JSON "
                   "to X.json.")
@click.option("--encoding", type=click.Choice(["direct", "sequence"]), default="direct", show_default=True,
              help="ONNX input: direct [B, C, H, W] images, or sequence [T, B, C, H, W] pre-encoded spikes.")
@click.option("--verify/--no-verify", default=True, show_default=True,
              help="Check the exported graphs against the simulator before writing them (ONNX: on onnxruntime; "
                   "NIR: run by nirtorch).")
@click.option("--provider", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True,
              help="onnxruntime provider for verification; auto uses CUDA only when a session really gets it.")
@click.option("--input-shape", default=None, metavar="C,H,W", help="Input shape, if the checkpoint does not record it.")
@click.option("--maxpool", type=click.Choice(["spiking", "error"]), default="spiking", show_default=True,
              help="Convert max-pooling to a spiking max on accumulated counts, or refuse it.")
@click.option("--max-spikes", "max_spikes", type=click.IntRange(min=1), default=1, show_default=True, metavar="D",
              help="Methods: multi-bit neurons that emit up to D spikes a step (the QCFS level after ⌈L/D⌉ steps; "
                   "rate convention).")
@click.option("--cos", is_flag=True, default=False,
              help="Methods: COS, each neuron's initial membrane shifted by its measured offset spikes for T steps, "
                   "calibrated on --calib-samples training images of --data (rate convention; docs/methods.md).")
@click.option("--ttrbr", type=click.Choice(["both", "tune", "restructure"]), default=None,
              help="Methods: TTRBR for ResNet QANNs before conversion: residual blocks restructured and fine-tuned "
                   "one epoch on --calib-samples labelled training images of --data, and/or thresholds tuned for T "
                   "(rate convention; docs/methods.md).")
@click.option("--data", "data_spec", default=None, metavar="SPEC",
              help="Calibration data for --cos / --ttrbr: digits, mnist:PATH or cifar10:PATH (the training split).")
@click.option("--calib-samples", type=click.IntRange(min=1), default=512, show_default=True,
              help="Training images used by --cos / --ttrbr.")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of tables.")
@normalize_option
@model_options
def convert_cmd(model, T, convention, fmt, nir_neuron, nir_pool, nir_approximate, output, encoding, verify,
                provider, input_shape, maxpool, max_spikes, cos, ttrbr, data_spec, calib_samples, force, as_json,
                normalize, trust_pickle, arch, arch_kwargs, arch_module):
    """Convert a QANN checkpoint MODEL into a spiking network, export it to ONNX and verify it on onnxruntime.

    Every BatchNorm is folded, every QCFS threshold folded into weights and every QCFS replaced by an IF neuron;
    anything that cannot be converted is an error naming the node and the fix.

    The default writes both ONNX formats (unrolled for batch inference, stateful for streaming) and a sidecar
    JSON naming the states; every file is checked with onnx.checker, verified against the PyTorch simulator
    (per-step logits within rtol=1e-4, atol=1e-4·max|logit|; spike-count agreement reported) and written
    atomically. A verification failure writes nothing.

    --format nir writes a NIR graph (X.nir + X.json) instead, run by nirtorch against the simulator first; see
    --nir-neuron and --nir-approximate (docs/nir.md).

    The ONNX input is what the QANN was trained on: the input preprocessing its file records (or --normalize
    states) goes into the metadata key ann2snn.preprocessing and the sidecar, for the consumer to apply.

    Example: ann2snn convert resnet20.pt --T 4 -o resnet20.snn.onnx
    """
    import ann2snn
    from ann2snn.errors import Ann2SnnError
    from ann2snn.files import check_writable
    from ann2snn.layers import qcfs_modules
    from ann2snn.network import default_steps
    from ann2snn.runs import check_runs_dir

    check_T(T)
    if (cos or ttrbr) and convention != "rate":
        raise Ann2SnnError("--cos and --ttrbr calibrate for the rate convention; drop --mode exact")
    if (cos or ttrbr) and data_spec is None:
        raise Ann2SnnError(f"--{'cos' if cos else 'ttrbr'} calibrates on training images: pass --data digits, "
                           "mnist:PATH or cifar10:PATH")
    shape = parse_shape(input_shape)
    suffix = {"nir": ".snn.nir", "torch": ".snn.pt"}.get(fmt, ".snn.onnx")
    check_writable(output or model.with_name(model.name.removesuffix(".pt") + suffix), force=force)
    check_runs_dir()
    qann = ann2snn.checkpoint.load_qann(model, trust_pickle=trust_pickle, arch=arch, arch_kwargs=arch_kwargs,
                                        arch_module=arch_module)
    qann.preprocessing = resolve_preprocessing(qann, normalize, None, model_path=model)
    check_input_shape(qann, shape)
    calib = _calibration(qann, data_spec, calib_samples) if (cos or ttrbr) else None
    if ttrbr:  # on the QANN, for the T the SNN will run
        T = T if T is not None else default_steps((q.levels for _, q in qcfs_modules(qann)), max_spikes=max_spikes)
        check_T(T)
        qann = _ttrbr(qann, *calib, T, ttrbr, quiet=as_json)
    snn = ann2snn.convert(qann, T, input_shape=shape, maxpool=maxpool, convention=convention, max_spikes=max_spikes)
    check_T(snn.T, name=f"T (default for L = {max(snn.info.levels, default=0)})")
    if cos:
        from ann2snn.methods.calibrate import apply_cos

        snn = apply_cos(snn, calib[0], snn.T)
        if not as_json:
            console.print(f"COS: initial membranes calibrated for T = {snn.T} on {len(calib[0])} images",
                          highlight=False)
    if qann.preprocessing is None and not as_json and fmt != "torch":
        console.print(f"[yellow]note:[/] {esc(model)} does not record its input preprocessing, so the export says "
                      "'unknown'; pass --normalize to record it", highlight=False)
    if fmt != "torch":
        nir = {"neuron": nir_neuron, "pool": nir_pool, "approximate": nir_approximate} if fmt == "nir" else None
        methods = {"max_spikes": max_spikes, "cos": cos, "ttrbr": ttrbr, "calibration": data_spec,
                   "calib_samples": calib_samples} if (cos or ttrbr or max_spikes > 1) else {}
        _export(snn, model, output, fmt=fmt, encoding=encoding, verify=verify, provider=provider, force=force,
                as_json=as_json, nir=nir, methods=methods)
        return
    out = output or model.with_name(model.name.removesuffix(".pt") + ".snn.pt")
    if getattr(qann, "arch_name", None) is None:
        raise Ann2SnnError("this model has no registered architecture, so its SNN cannot be saved safely; build it "
                           "with ann2snn.models.create or register it (--arch-module)")
    ann2snn.save(snn, out, force=force)
    from ann2snn.runs import record_conversion

    record_conversion(model, snn, [out], config={"T": snn.T, "format": fmt, "maxpool": maxpool,
                                                 "mode": convention})
    if as_json:
        print_json({"output": str(out), "T": snn.T, "report": snn.report.to_dict()})
        return
    render_report(snn.report)
    console.print(f"wrote [bold]{esc(out)}[/] (T={snn.T}, {len(snn.stateful())} stateful operators)", highlight=False)


def _calibration(qann, data_spec: str, samples: int):
    """``(x, y)``: the first ``samples`` training images of ``data_spec``, preprocessed as ``qann`` expects."""
    from ann2snn.cli.common import check_input
    from ann2snn.data import load_dataset_for

    data = load_dataset_for(data_spec, qann.preprocessing)
    x, y = data.x_train[:samples], data.y_train[:samples]
    check_input(qann, x[:2], f"calibration data {data_spec!r}")
    return x, y


def _ttrbr(qann, x, y, T: int, which: str, *, quiet: bool):
    """The QANN after TTRBR (``which``: both, tune or restructure) for T steps."""
    from ann2snn.methods.ttrbr import TTRBRConfig, apply_ttrbr

    config = TTRBRConfig(restructure=which in ("both", "restructure"), tune=which in ("both", "tune"))
    tuned, info = apply_ttrbr(qann, x, y, T, config)
    tuned.preprocessing = qann.preprocessing
    if not quiet:
        factors = ", ".join(f"{k} ×{v:g}" for k, v in info["factors"].items()) or "none"
        console.print(f"TTRBR ({which}) for T = {T} on {len(x)} images: {len(info['inserted'])} quantizers "
                      f"inserted; threshold factors: {esc(factors)}", highlight=False)
    return tuned


def _export(snn, model: Path, output, *, fmt, encoding, verify, provider, force, as_json, nir=None,
            methods=None) -> None:
    import ann2snn

    suffix = ".snn.nir" if fmt == "nir" else ".snn.onnx"
    out = output or model.with_name(model.name.removesuffix(".pt") + suffix)
    res = ann2snn.export(snn, out, format=fmt, encoding=encoding, verify=verify, provider=provider, force=force,
                         nir=nir)
    from ann2snn.runs import record_conversion

    record_conversion(model, snn, [*res.files.values(), res.sidecar], verification=res.verification,
                      config={"T": snn.T, "format": fmt, "encoding": encoding, "verify": verify,
                              "mode": snn.schedule.convention, **({"nir": nir} if nir else {}),
                              **({"methods": methods} if methods else {})})
    if as_json:
        print_json({"files": {k: str(v) for k, v in res.files.items()}, "sidecar": str(res.sidecar), "T": snn.T,
                    "verification": res.verification, "seconds": res.seconds, "report": snn.report.to_dict()})
        return
    render_report(snn.report)
    if fmt == "nir":
        _render_nir(snn, res)
        return
    if res.verification:
        rows = []
        for k, v in res.verification.items():
            agree = v.get("spike_count_agreement")
            rows.append([k, v["provider"], f"{v['max_abs_error']:.2e}", f"{v['atol']:.1e} / {v['rtol']:.0e}",
                         f"{v['samples'] - v['mismatched_samples']}/{v['samples']}",
                         "-" if agree is None else f"{100 * agree:.3f}%"])
        console.print(table("Verification (onnxruntime vs simulator, per-step logits)",
                            ["graph", "provider", "max |err|", "atol / rtol", "samples ok", "spike counts equal"],
                            rows))
    else:
        console.print("[yellow]verification skipped (--no-verify)[/]")
    for k, p in res.files.items():
        mode = f", exact mode, L={snn.schedule.length}" if snn.schedule.exact else ""
        console.print(f"wrote [bold]{esc(p)}[/] ({k}, T={snn.T}{mode})", highlight=False)
    console.print(f"wrote [bold]{esc(res.sidecar)}[/] (sidecar)", highlight=False)


def _render_nir(snn, res) -> None:
    v = res.verification.get("nir")
    if v is None:
        console.print("[yellow]verification skipped (--no-verify)[/]")
    elif v["approximate"]:
        console.print(f"NIR graph run by nirtorch vs the simulator, {v['samples']} seeded images, T={v['T']}: "
                      f"same prediction {100 * v['argmax_agreement']:.1f}%, max |logit difference| "
                      f"{v['max_abs_error']:.3g} (an approximation, see below)", highlight=False)
    else:
        console.print(f"NIR graph run by nirtorch vs the simulator: {v['samples'] - v['mismatched_samples']}/"
                      f"{v['samples']} samples equal (max |err| {v['max_abs_error']:.2e}, atol {v['atol']:.1e})",
                      highlight=False)
    for line in json.loads(res.sidecar.read_text()).get("approximations") or []:
        console.print(f"[yellow]approximation:[/] {esc(line)}", highlight=False)
    console.print(f"wrote [bold]{esc(res.files['nir'])}[/] (NIR, T={snn.T}; logits = mean output over steps)",
                  highlight=False)
    console.print(f"wrote [bold]{esc(res.sidecar)}[/] (sidecar)", highlight=False)
