"""``ann2snn models``: the zoo's architectures with their input shapes, parameter counts and descriptions."""

from __future__ import annotations

import click

from ann2snn.cli.common import console, print_json


def describe_models() -> list[dict]:
    """One row per registered architecture, built with its default arguments."""
    import inspect

    import torch

    from ann2snn import models

    rows = []
    with torch.device("meta"):  # shapes only: no memory, no initialization time
        for name, builder in sorted(models.available().items(), key=lambda kv: _natural(kv[0])):
            net = models.create(name)
            doc = inspect.getdoc(builder) or ""
            rows.append({"name": name, "input_shape": list(getattr(net, "input_shape", ()) or ()),
                         "parameters": sum(p.numel() for p in net.parameters()),
                         "description": doc.splitlines()[0].replace("``", "") if doc else ""})
    return rows


def _natural(name: str):
    import re

    return [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


@click.command("models")
@click.option("--json", "as_json", is_flag=True, help="Print the list as JSON.")
@click.option("--arch-module", default=None, metavar="MODULE",
              help="Import this Python module (dotted name or .py file) first, to list custom architectures too. "
                   "This RUNS the module's code: name only modules you trust.")
def models_cmd(as_json, arch_module):
    """List the architectures `ann2snn train --arch` and model files can name.

    Every one takes the QCFS options (levels, granularity, positive, init_threshold, shift) and act="relu" for the
    plain ReLU ANN of the same shape. Parameter counts are for the defaults (10 classes).
    """
    from ann2snn import models

    if arch_module:
        models.import_arch_module(arch_module)
    rows = describe_models()
    if as_json:
        print_json(rows)
        return
    from rich.table import Table
    from rich.text import Text

    t = Table(title="ann2snn model zoo", title_justify="left")
    t.add_column("name")
    t.add_column("input", justify="right")
    t.add_column("parameters", justify="right")
    t.add_column("description")
    for r in rows:
        t.add_row(Text(r["name"]), "×".join(map(str, r["input_shape"])), f"{r['parameters']:,}",
                  Text(r["description"]))  # user-registered names and docstrings print literally
    console.print(t)
