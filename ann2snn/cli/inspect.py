"""``ann2snn inspect thresholds`` and ``ann2snn inspect graph``."""

from __future__ import annotations

from pathlib import Path

import click

from ann2snn.cli.common import check_input_shape, console, esc, model_options, parse_shape, print_json, table


def _load_qann(model, trust_pickle, arch, arch_module, arch_kwargs=None):
    import ann2snn
    from ann2snn.network import SpikingNetwork

    obj = ann2snn.load(model, trust_pickle=trust_pickle, arch=arch, arch_kwargs=arch_kwargs, arch_module=arch_module)
    if isinstance(obj, SpikingNetwork):
        from ann2snn.errors import Ann2SnnError

        raise Ann2SnnError(f"{str(model)!r} is a converted SNN (thresholds already folded into weights); "
                           "inspect the QANN checkpoint it was converted from")
    return obj


def _check_output(path: Path | None, force: bool) -> None:
    from ann2snn.files import check_writable

    if path is not None:
        check_writable(path, force=force)


@click.group("inspect")
def inspect_group():
    """Look inside a QANN: its QCFS thresholds, or what conversion does to its graph."""


@inspect_group.command("thresholds")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="Print the rows as JSON (with every θ value).")
@click.option("--plot", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Write a histogram of θ per layer to this PNG (needs matplotlib).")
@click.option("--force", is_flag=True, help="Overwrite an existing --plot file.")
@model_options
def thresholds_cmd(model, as_json, plot, force, trust_pickle, arch, arch_kwargs, arch_module):
    """Per QCFS layer of MODEL: granularity, count, min / mean / max θ (after Softplus), λ ≤ 0, MaxDiff, AvgDiff,
    L, φ.

    \b
    MaxDiff = max_c θ_c − min_c θ_c            (largest gap between two thresholds of the layer)
    AvgDiff = mean over pairs c≠c' of |θ_c − θ_c'|  (mean absolute pairwise difference)
    over the layer's channels / heads / neurons; both are 0 for a layer-wise QCFS.
    A transformer (vit-*, swin-*) gets two more tables, as the seed's tables 4-5: head-wise (q, k, v, softmax,
    attn·V) and neuron-wise (LayerNorm outputs, MLP hidden) MaxDiff / AvgDiff, one column per block.
    "λ ≤ 0" counts raw parameters ≤ 0: thresholds ≤ 0 without Softplus (conversion refuses them),
    θ ≤ ln 2 with Softplus. Details: docs/metrics.md.

    Example: ann2snn inspect thresholds digits.pt --plot thresholds.png
    """
    from ann2snn.inspect import inspect_thresholds, plot_threshold_histogram, spread_tables

    _check_output(plot, force)
    rows = inspect_thresholds(_load_qann(model, trust_pickle, arch, arch_module, arch_kwargs))
    if plot is not None:
        from ann2snn.checkpoint import atomic_write

        atomic_write(plot, lambda tmp: plot_threshold_histogram(rows, tmp), force=force)
    if as_json:
        print_json({"model": str(model), "layers": rows, "spread_tables": spread_tables(rows),
                    "plot": str(plot) if plot else None})
        return
    from rich import box
    from rich.table import Table
    from rich.text import Text

    uniform = len({(r["levels"], r["shift"]) for r in rows}) == 1
    lphi = f", L = {rows[0]['levels']}, φ = {rows[0]['shift']}" if uniform else ""
    t = Table(title=Text(f"QCFS thresholds of {model.name} ({len(rows)} layers{lphi})"), title_justify="left",
              box=box.SIMPLE_HEAD)
    for i, c in enumerate(["layer", "granularity", "n", "min θ", "mean θ", "max θ", "λ≤0", "MaxDiff", "AvgDiff"]
                          + ([] if uniform else ["L", "φ"])):
        t.add_column(c, justify="left" if i < 2 else "right")
    for r in rows:
        neg = r["raw_nonpositive"]
        flag = f"[red]{neg}[/]" if neg and r["theta_nonpositive"] else (f"[yellow]{neg}[/]" if neg else "0")
        cells = [Text(str(r["name"])), r["granularity"], str(r["count"]), f"{r['min']:.3g}", f"{r['mean']:.3g}",
                 f"{r['max']:.3g}", flag, f"{r['max_diff']:.3g}", f"{r['avg_diff']:.3g}"]
        t.add_row(*cells, *([] if uniform else [str(r["levels"]), str(r["shift"])]))
    console.print(t)
    _print_spread_tables(spread_tables(rows))
    bad = sum(r["theta_nonpositive"] for r in rows)
    if bad:
        console.print(f"[red]{bad} threshold(s) are <= 0: this model cannot be converted; retrain with "
                      "positive='softplus' or clamp them[/]")
    if plot is not None:
        console.print(f"wrote [bold]{esc(plot)}[/]", highlight=False)


def _print_spread_tables(tables) -> None:
    """A transformer's head-wise / neuron-wise spreads: quantizer × block, cells ``MaxDiff / AvgDiff``."""
    titles = {"head": "Head-wise thresholds (H-QCFS)", "neuron": "Neuron-wise thresholds (N-QCFS)"}
    for gran, tab in tables.items():
        cols = ["quantizer", "n"] + list(tab["blocks"])
        body = [[r["quantizer"], ",".join(str(n) for n in dict.fromkeys(c for c in r["count"] if c is not None))]
                + ["-" if m is None else f"{m:.3g} / {a:.3g}" for m, a in zip(r["max_diff"], r["avg_diff"])]
                for r in tab["rows"]]
        console.print(table(f"{titles[gran]}: MaxDiff / AvgDiff per block (n = {gran}s)", cols, body))


@inspect_group.command("graph")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--input-shape", default=None, metavar="C,H,W", help="Input shape, if the checkpoint does not record it.")
@click.option("--maxpool", type=click.Choice(["spiking", "error"]), default="spiking", show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print everything as JSON.")
@model_options
def graph_cmd(model, input_shape, maxpool, as_json, trust_pickle, arch, arch_kwargs, arch_module):
    """The conversion of MODEL, pass by pass: nodes before and after, BNs folded, thresholds folded or kept as
    explicit scales, and every neuron with its threshold and state shape. Nothing is written.

    Example: ann2snn inspect graph digits.pt
    """
    from ann2snn.cli.convert import render_report
    from ann2snn.inspect import inspect_graph

    shape = parse_shape(input_shape)
    qann = _load_qann(model, trust_pickle, arch, arch_module, arch_kwargs)
    check_input_shape(qann, shape)
    g = inspect_graph(qann, input_shape=shape, maxpool=maxpool)
    if as_json:
        print_json(g)
        return
    from ann2snn.passes import ConversionReport, PassRecord

    render_report(ConversionReport([PassRecord(**p) for p in g["report"]["passes"]]),
                  title=f"Conversion of {model.name}: {g['nodes_before']} → {g['nodes_after']} nodes")
    if g["batchnorm_folded"] or g["batchnorm_kept_as_affine"]:
        console.print(table("BatchNorm", ["BN", "what"],
                            [[b, "folded"] for b in g["batchnorm_folded"]]
                            + [[b, "kept as per-channel affine"] for b in g["batchnorm_kept_as_affine"]]))
    if g["explicit_scales"]:
        console.print(table("Thresholds kept as explicit scales", ["scale", "between", "shape"],
                            [[s["name"], " → ".join(s["between"]), tuple(s["shape"])] for s in g["explicit_scales"]]))
    rows = []
    for n in g["neurons"]:
        orig = "-" if n["original_min"] is None else (
            f"{n['original_min']:.4g}" if n["original_min"] == n["original_max"]
            else f"{n['original_min']:.4g} … {n['original_max']:.4g}")
        rows.append([n["node"], n["kind"], n.get("granularity") or "-", orig, n["threshold"], n["levels"], n["shift"],
                     "×".join(map(str, n["state_shape"]))])
    console.print(table("Neurons", ["neuron", "kind", "granularity", "QANN θ", "threshold now", "L", "φ",
                                    "state shape (per sample)"], rows, justify_right_from=5))
