"""``ann2snn eval``: QANN and SNN accuracy at every T, firing rates, operations and energy, from one run."""

from __future__ import annotations

from pathlib import Path

import click

from ann2snn.cli.common import (
    MAX_BATCH,
    FiniteFloat,
    check_input,
    console,
    esc,
    model_options,
    normalize_option,
    print_json,
    resolve_preprocessing,
)
from ann2snn.methods.cli import method_options, render_comparison, run_comparison


def table(title: str, columns: list[str], rows: list[list], *, justify_right_from: int = 1):
    """A compact rich table (fits 80 columns for the usual T lists); title and cells print literally."""
    from rich import box
    from rich.table import Table
    from rich.text import Text

    t = Table(title=Text(str(title)), title_justify="left", box=box.SIMPLE_HEAD, pad_edge=False)
    for i, c in enumerate(columns):
        t.add_column(c, justify="right" if i >= justify_right_from else "left")
    for r in rows:
        t.add_row(*[Text(str(v)) for v in r])
    return t


def _si(v: float) -> str:
    for unit, div in (("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if abs(v) >= div:
            return f"{v / div:.3g}{unit}"
    return f"{v:.3g}"


def check_data_spec(spec: str) -> None:
    """Fail early, in one line, on a data spec whose directory is missing or empty."""
    from ann2snn.errors import Ann2SnnError

    name, sep, path = spec.partition(":")
    if not sep:
        return
    if not path:
        raise Ann2SnnError(f"--data {spec!r} names no directory; use {name}:PATH")
    p = Path(path)
    if not p.exists():
        raise Ann2SnnError(f"data directory {path!r} does not exist; check the path in --data {spec!r}")
    if p.is_dir() and not any(p.iterdir()):
        raise Ann2SnnError(f"data directory {path!r} is empty; put the {name} files there (no downloads are made)")


def load_model_pair(model: Path, trust_pickle: bool, arch, arch_module, arch_kwargs=None):
    """The QANN of ``model`` (a QANN checkpoint, or an SNN file whose QANN is rebuilt from its payload)."""
    import ann2snn
    from ann2snn.checkpoint import qann_from_payload
    from ann2snn.errors import Ann2SnnError
    from ann2snn.network import SpikingNetwork

    obj = ann2snn.load(model, trust_pickle=trust_pickle, arch=arch, arch_kwargs=arch_kwargs, arch_module=arch_module)
    if isinstance(obj, SpikingNetwork):
        payload = obj.info.qann_payload
        if payload is None:
            raise Ann2SnnError(f"{model} is an SNN without its QANN; pass the QANN checkpoint to eval")
        return qann_from_payload(payload, where=f"model file {str(model)!r}")
    return obj


def _step_line(what: str, stats: dict, T_max: int, n: int) -> str:
    """"exact logits for 100% of samples from step S (median m, max M)", or how many never got there."""
    if stats["never"] == 0:
        return (f"{what} for 100% of samples from step {stats['step_all']} "
                f"(median {stats['median']}, max {stats['max']})")
    line = f"{what}: not reached by T_max = {T_max} for {stats['never']} of {n} samples"
    if stats["max"] is not None:
        line += f" (median {stats['median'] if stats['median'] is not None else '> T_max'}, rest by {stats['max']})"
    return line


def render_mode(result: dict, mode: str, m: dict) -> None:
    """One convention's accuracy table (like the seed's test log) and its exactness lines."""
    levels = result["levels"]
    e = {r["T"]: r for r in m["energy"]["per_T"]}
    rows = [["QANN", f"{result['qann_accuracy']:.2%}", "-", "-", "-", _si(m["energy"]["ann_macs"]) + " MAC", "1"]]
    for r in m["per_T"]:
        er = e[r["T"]]
        exact = "-" if r.get("exact_logits") is None else f"{r['exact_logits']:.2%}"
        rows.append([f"{r['T']}{'=L' if r['T'] in levels else ''}", f"{r['snn_accuracy']:.2%}",
                     f"{r['delta_pp'] + 0.0:+.2f} pp", f"{r['agreement']:.2%}", exact, _si(er["sops"]) + " SOP",
                     f"{er['ratio']:.3f}"])
    backend = m.get("backend", "torch")
    if "backend_max_abs_diff" in m:
        backend += f", max |ORT − torch| = {m['backend_max_abs_diff']:.1e}"
    console.print(table(f"{result['dataset']}, {mode} mode: {result['samples']} test samples, "
                        f"L = {', '.join(map(str, levels))} ({backend})",
                        ["T", "accuracy", "vs QANN", "agreement", "exact logits", "ops/sample", "E/E_ANN"], rows))
    ex = m.get("exactness")
    if ex:
        T_max = len(m["curve"]["T"])
        for what, key in (("exact logits", "exact_logits"), ("agreement", "agreement")):
            console.print(_step_line(what, ex[key], T_max, result["samples"]), highlight=False)
    console.print()


def render_eval(result: dict) -> None:
    """Per convention the accuracy table and exactness lines, then firing rates and operations per layer."""
    from ann2snn.plots import mode_results

    modes = mode_results(result)
    for mode, m in modes.items():
        render_mode(result, mode, m)
    tol = result.get("exact_tolerance")
    if tol:
        console.print(f"[dim]agreement: same prediction as the QANN; exact logits: every logit within "
                      f"{tol['rtol']:g} × max(1, max |QANN logit|) of the QANN's; E/E_ANN: energy ratio.[/]")
    Ts = result["T_list"]
    many = len(modes) > 1

    def label(name: str, kind: str | None, mode: str) -> str:
        notes = [k for k in (kind, mode if many else None) if k]
        return name + (f" ({', '.join(notes)})" if notes else "")

    console.print(table("Firing rate (spikes per neuron per step)", ["layer", "neurons"] + [f"T={t}" for t in Ts],
                        [[label(f["name"], None if f["kind"] == "if" else f["kind"], mode), f["neurons"]]
                         + [f"{v:.3f}" for v in f["rates"]] for mode, m in modes.items() for f in m["firing_rates"]]))
    layers = [(mode, r) for mode, m in modes.items() for r in m["energy"]["layers"]]
    c = next(iter(modes.values()))["energy"]["constants"]
    console.print(table(f"Operations per sample (SNN: spikes × fan-out, E_AC = {c['e_ac_pj']} pJ each)",
                        ["layer", "ANN MACs"] + [f"T={t}" for t in Ts],
                        [[label(r["name"] + (" †" if r.get("dense") else " *" if r["analog_input"] else ""),
                                r["kind"], mode), _si(r["macs"])]
                         + [_si(v) for v in (r["snn_macs"] if r["analog_input"] else r["sops"])]
                         for mode, r in layers]))
    if any(r.get("dense") for _, r in layers):
        console.print("[dim]† product of two spiking values (attention): computed on running sums at every step, "
                      f"so its MACs count at every step (T × MACs) at E_MAC = {c['e_mac_pj']} pJ.[/]")
    if any(r["analog_input"] and not r.get("dense") for _, r in layers):
        console.print(f"[dim]* analog input (direct encoding): no spikes, so its MACs run at every step the input is "
                      f"fed (T × MACs; min(T, L) × MACs in exact mode) at E_MAC = {c['e_mac_pj']} pJ.[/]")


@click.command("eval")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--data", "data_spec", default="digits", show_default=True, metavar="SPEC",
              help="Dataset: digits, mnist:PATH or cifar10:PATH (the test split is used).")
@click.option("--T", "Ts", default="1,2,4,8,16,32,64", show_default=True, metavar="T1,T2,...",
              help="Time steps to report; the SNN runs once for the largest.")
@click.option("--mode", "mode", default="rate", show_default=True, metavar="rate|exact|rate,exact",
              help="Time convention(s): rate (IF neurons, input every step) or exact (bounded bipolar neurons, "
                   "input for the first L steps, logits settle on the QANN's); several comma-separated, each "
                   "converting its own SNN.")
@click.option("--backend", type=click.Choice(["torch", "onnx"]), default="torch", show_default=True,
              help="torch: the PyTorch reference simulator; onnx: the unrolled ONNX graph on onnxruntime (firing "
                   "rates and operation counts still from the reference).")
@click.option("--provider", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True,
              help="onnxruntime provider for --backend onnx.")
@click.option("--batch-size", type=click.IntRange(min=1, max=MAX_BATCH), default=256, show_default=True)
@click.option("--limit", type=click.IntRange(min=1), default=None, help="Evaluate only the first N test samples.")
@click.option("--e-mac", type=FiniteFloat(min=0), default=4.6, show_default=True, help="Energy of one MAC (pJ).")
@click.option("--e-ac", type=FiniteFloat(min=0), default=0.9, show_default=True, help="Energy of one AC (pJ).")
@click.option("--analog-once", is_flag=True,
              help="Count the analog-input layer's MACs once instead of at every step (T × MACs).")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write accuracy / firing rate / energy vs T to this PNG (needs matplotlib).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON instead of tables.")
@click.option("--runs-dir", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Where to write the run record (default $ANN2SNN_RUNS or ./runs).")
@click.option("--no-record", is_flag=True, help="Do not write a run record.")
@click.option("--force", is_flag=True, help="Overwrite an existing --plot file.")
@normalize_option
@model_options
@method_options
def eval_cmd(model, data_spec, Ts, mode, backend, provider, batch_size, limit, e_mac, e_ac, analog_once, plot, as_json,
             runs_dir, no_record, force, normalize, trust_pickle, arch, arch_kwargs, arch_module, methods):
    """Accuracy of the QANN MODEL and of its SNN at every T, from one simulation per --mode; prediction agreement
    with the QANN; the fraction of samples whose SNN logits equal the QANN's and the step from which they all do;
    firing rate per neuron layer; ANN MACs vs SNN synaptic operations and the energy ratio.

    \b
    Exact logits: every logit within 1e-4 x max(1, max |QANN logit|).
    Firing rate: spikes per neuron per step over the first T steps.
    SNN ops: each input spike (nonzero input) costs its fan-out in
    additions (E_AC each); a layer fed by the analog input (direct
    encoding) costs T x its MACs (E_MAC each). Energy ratio: E_SNN / E_ANN.
    Definitions: docs/metrics.md.

    The test images are preprocessed as the model file records (files
    from ann2snn train / prepare do); for others, say it with --normalize.

    Example: ann2snn eval digits.pt --mode rate,exact --T 1,2,4,8,16,32 --plot acc.png
    """
    from ann2snn.data import load_dataset_for
    from ann2snn.energy import EnergyModel
    from ann2snn.evaluate import evaluate, parse_modes, parse_ts
    from ann2snn.files import check_writable
    from ann2snn.inspect import inspect_thresholds
    from ann2snn.plots import plot_eval
    from ann2snn.runs import check_runs_dir

    T_list = parse_ts(Ts)
    modes = parse_modes(mode)
    if plot is not None:
        check_writable(plot, force=force)
    if methods.active:  # the seed's other methods beside the plain conversion (ann2snn.methods): fail early
        methods.methods(), methods.noise_spec()
        if methods.noise_plot is not None:
            check_writable(methods.noise_plot, force=force)
    if not no_record:
        check_runs_dir(runs_dir)
    check_data_spec(data_spec)
    qann = load_model_pair(model, trust_pickle, arch, arch_module, arch_kwargs)
    pre = resolve_preprocessing(qann, normalize, data_spec, model_path=model)
    data = load_dataset_for(data_spec, pre)
    check_input(qann, data.x_test[:2], f"dataset {data_spec!r}")
    energy = EnergyModel(e_mac_pj=e_mac, e_ac_pj=e_ac, analog_per_step=not analog_once)
    n = min(limit or len(data.y_test), len(data.y_test))
    run = dict(convention=modes, batch_size=batch_size, limit=limit, energy=energy, backend=backend,
               provider=provider)
    if as_json:
        result = evaluate(qann, data, T_list, **run)
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

        with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                      console=console, transient=True, disable=not console.is_terminal) as bar:
            task = bar.add_task(f"QANN + SNN {'+'.join(modes)} (T={max(T_list)})", total=n)
            result = evaluate(qann, data, T_list, **run, progress=lambda done: bar.update(task, completed=done))
    result["model"] = str(model)
    result["preprocessing"] = pre.to_json() if pre is not None else None
    result["thresholds"] = inspect_thresholds(qann)
    if methods.active:
        result["methods_comparison"] = run_comparison(qann, data, T_list, methods, batch_size=batch_size,
                                                      limit=limit, energy=energy)
        if methods.noise_plot is not None:
            from ann2snn.files import atomic_write
            from ann2snn.plots import plot_noise

            atomic_write(methods.noise_plot, lambda tmp: plot_noise(result["methods_comparison"], tmp), force=force)
    if plot is not None:
        from ann2snn.files import atomic_write

        atomic_write(plot, lambda tmp: plot_eval(result, tmp), force=force)
    if not no_record:
        from ann2snn.runs import write_record

        config = {"model": str(model), "data": data_spec, "T": T_list, "mode": modes, "backend": backend,
                  "provider": provider, "batch_size": batch_size, "limit": limit,
                  "energy": {"e_mac_pj": e_mac, "e_ac_pj": e_ac, "analog_per_step": not analog_once},
                  **({"methods": methods.to_json()} if methods.active else {})}
        rec = write_record("eval", config=config, metrics=result, inputs=[model], outputs=[plot] if plot else [],
                           directory=runs_dir)
        result["record"] = str(rec)
    if as_json:
        print_json(result)
        return
    render_eval(result)
    if methods.active:
        render_comparison(result["methods_comparison"], console, table)
        if methods.noise_plot is not None:
            console.print(f"wrote [bold]{esc(methods.noise_plot)}[/]", highlight=False)
    if plot is not None:
        console.print(f"wrote [bold]{esc(plot)}[/]", highlight=False)
    if not no_record:
        console.print(f"run record: {esc(result['record'])}", highlight=False)
