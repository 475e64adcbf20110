"""``ann2snn bench``."""

from __future__ import annotations

import json
from pathlib import Path

import click

from ann2snn.cli.common import (
    check_T,
    console,
    err_console,
    esc,
    model_options,
    parse_batches,
    parse_int_list,
    parse_micro_batch,
    print_json,
    table,
)


def micro_note(rows) -> str:
    """The table note on micro-batches, when a row used them."""
    r = next((r for r in rows if r.get("micro_batch")), None)
    if r is None:
        return ""
    return (f" batch {r['batch']} ({r['micro_batch']}s): the ANN and both SNN forms run it in micro-batches of "
            f"{r['micro_batch']} samples (--micro-batch).")


@click.command("bench")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--T", "Ts", default="1,2,4,8", show_default=True, help="Time steps to measure (QANN input).")
@click.option("--batch", "batches", default="1,256", show_default=True, help="Batch sizes.")
@click.option("--mode", "convention", type=click.Choice(["rate", "exact"]), default="rate", show_default=True,
              help="Time convention of the SNN converted from a QANN checkpoint (an .onnx file says its own).")
@click.option("--provider", type=click.Choice(["auto", "cuda", "cpu"]), default="auto", show_default=True,
              help="onnxruntime provider; auto uses CUDA only when a session really gets it.")
@click.option("--repeats", default=10, type=click.IntRange(1, 100_000), show_default=True,
              help="Timed runs per measurement (median reported).")
@click.option("--warmup", default=3, type=click.IntRange(0, 100_000), show_default=True, help="Untimed runs first.")
@click.option("--threads", default=1, type=click.IntRange(1, 4096), show_default=True,
              help="Threads of every contender: onnxruntime intra-op threads and torch.set_num_threads.")
@click.option("--spin/--no-spin", "spinning", default=None,
              help="onnxruntime workers spin after a run (--threads > 1); default: no spin, so that no contender "
                   "pays for the previous one's spinning workers.")
@click.option("--micro-batch", default="auto", show_default=True,
              help="Samples per onnxruntime run of the ANN and the SNN, all alike: auto (on CPU, sized from "
                   "the SNN's largest tensor so a micro-batch stays in cache; none under CUDA), a number, or off "
                   "(the whole batch at once).")
@click.option("--no-torch", is_flag=True, help="Skip the PyTorch simulator (slow at large batch).")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of tables.")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Also write the JSON result to this file.")
@click.option("--force", is_flag=True, help="Overwrite an existing --output file.")
@click.option("--record/--no-record", default=True, show_default=True,
              help="Write a run record ($ANN2SNN_RUNS, default ./runs).")
@model_options
def bench_cmd(model, Ts, batches, convention, provider, repeats, warmup, threads, spinning, micro_batch, no_torch,
              as_json, output, force, record, trust_pickle, arch, arch_kwargs, arch_module):
    """Latency and throughput of a QANN checkpoint's ANN and SNN (or of an exported SNN ONNX file).

    For a checkpoint: the ANN (the QANN as a plain ReLU ONNX net), the unrolled SNN, the stateful SNN driven T
    steps, and the PyTorch simulator, with the ratio SNN / (T × ANN) measured in the same run (median of
    --repeats after --warmup). For an .onnx file: the SNN alone.

    Example: ann2snn bench mnist.pt --T 4 --batch 1,256
    """
    import ann2snn
    from ann2snn import bench
    from ann2snn.files import check_writable
    from ann2snn.runs import check_runs_dir

    T_list = [check_T(t) for t in parse_int_list(Ts, name="--T")]
    micro = parse_micro_batch(micro_batch)
    B_list = parse_batches(batches)
    if output is not None:
        check_writable(output, force=force)
    if record:
        check_runs_dir()
    from rich.progress import Progress

    with Progress(console=err_console, transient=True, disable=as_json or not err_console.is_terminal) as prog:
        task = prog.add_task("benchmarking", total=None)

        def tick(msg):
            prog.update(task, description=msg, advance=1)

        if model.suffix == ".onnx":
            result = bench.benchmark_onnx(model, batches=B_list, provider=provider, repeats=repeats, warmup=warmup,
                                          threads=threads, progress=tick, spinning=spinning, micro_batch=micro)
        else:
            qann = ann2snn.checkpoint.load_qann(model, trust_pickle=trust_pickle, arch=arch, arch_kwargs=arch_kwargs,
                                                arch_module=arch_module)
            include = ("ann", "unrolled", "stateful") + (() if no_torch else ("torch",))
            result = bench.benchmark(qann, Ts=T_list, batches=B_list, provider=provider, repeats=repeats,
                                     warmup=warmup, threads=threads, include=include, progress=tick, spinning=spinning,
                                     convention=convention, micro_batch=micro)
    result["model"] = str(model)
    if output is not None:
        from ann2snn.files import atomic_write, text_writer

        text = json.dumps(result, indent=2)
        atomic_write(output, text_writer(text), force=force)
    if as_json:
        print_json(result)
        return
    def cell(r, name, clock):
        key = f"{name}_ms" if clock == "wall" else f"{name}_cpu_ms"
        if r.get(key) is None:
            return "-"
        text = f"{r[key]:.3f} [{r[key + '_min']:.3f}–{r[key + '_max']:.3f}]"
        ratio = f"{name}_ratio" if clock == "wall" else f"{name}_cpu_ratio"
        if r.get(ratio) is None:
            return text
        return text + f" ({r[ratio]:.2f} [{r[ratio + '_min']:.2f}–{r[ratio + '_max']:.2f}])"

    names = ["ann", "unrolled", "stateful", "torch"]
    for clock, what in (("wall", "Latency (wall)"), ("cpu", "Work (process CPU time, all threads)")):
        rows = [[r["T"], r["batch"] if not r.get("micro_batch") else f"{r['batch']} ({r['micro_batch']}s)",
                 *(cell(r, n, clock) for n in names)] for r in result["rows"]]
        console.print(table(f"{what} per batch in ms, median [min–max] of {repeats}, (ratio SNN ÷ T·ANN, per turn); "
                            f"onnxruntime {result['provider']}, {result.get('threads')} thread(s), "
                            f"{result['convention']} mode",
                            ["T", "batch", "ANN", "unrolled", "stateful", "torch sim"], rows, justify_right_from=0))
    console.print(f"[dim]{result['note']}. Contenders take turns call by call; ratio = SNN time / (T × ANN time) "
                  f"of the same turn.{micro_note(result['rows'])}[/]")
    if output is not None:
        console.print(f"wrote [bold]{esc(output)}[/]", highlight=False)
    if record:
        from ann2snn.runs import write_record

        path = write_record("bench", config={"model": str(model), "T": T_list, "batch": B_list, "mode": convention,
                                             "provider": provider, "repeats": repeats, "threads": threads,
                                             "spinning": spinning, "micro_batch": micro},
                            metrics=result, inputs=[model], outputs=[output] if output else [])
        console.print(f"[dim]run record {esc(path)}[/]", highlight=False)
