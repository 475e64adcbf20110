"""``ann2snn convert``."""

from __future__ import annotations

from pathlib import Path

import click

from ann2snn.cli.common import console, model_options, parse_shape, print_json, table


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
@click.option("--T", "T", type=int, default=None, help="Time steps (default: the QCFS levels L, where accuracy peaks).")
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output file (default: MODEL with suffix .snn.pt).")
@click.option("--input-shape", default=None, metavar="C,H,W", help="Input shape, if the checkpoint does not record it.")
@click.option("--maxpool", type=click.Choice(["spiking", "error"]), default="spiking", show_default=True,
              help="Convert max-pooling to a spiking max on accumulated counts, or refuse it.")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON instead of tables.")
@model_options
def convert_cmd(model, T, output, input_shape, maxpool, force, as_json, trust_pickle, arch, arch_module):
    """Convert a QANN checkpoint MODEL into a spiking network and print the pass report.

    Every BatchNorm is folded, every QCFS threshold folded into weights and every QCFS replaced by an IF neuron;
    anything that cannot be converted is an error naming the node and the fix.

    Example: ann2snn convert resnet20.pt --T 4
    """
    import ann2snn
    from ann2snn.errors import Ann2SnnError

    if T is not None and T <= 0:
        raise Ann2SnnError(f"--T must be a positive number of time steps, got {T}")
    qann = ann2snn.checkpoint.load_qann(model, trust_pickle=trust_pickle, arch=arch, arch_module=arch_module)
    snn = ann2snn.convert(qann, T, input_shape=parse_shape(input_shape), maxpool=maxpool)
    out = output or model.with_name(model.name.removesuffix(".pt") + ".snn.pt")
    if getattr(qann, "arch_name", None) is None:
        raise Ann2SnnError("this model has no registered architecture, so its SNN cannot be saved safely; build it "
                           "with ann2snn.models.create or register it (--arch-module)")
    ann2snn.save(snn, out, force=force)
    if as_json:
        print_json({"output": str(out), "T": snn.T, "report": snn.report.to_dict()})
        return
    render_report(snn.report)
    console.print(f"wrote [bold]{out}[/] (T={snn.T}, {len(snn.stateful())} stateful operators)", highlight=False)
