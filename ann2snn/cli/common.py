"""Options and rendering shared by the commands."""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.console import Console
from rich.table import Table

console = Console()
err_console = Console(stderr=True)


def model_options(fn):
    """``--trust-pickle``, ``--arch``, ``--arch-module`` for commands that read a model file."""
    fn = click.option("--arch-module", default=None, metavar="MODULE",
                      help="Import this module (dotted name or .py) to register custom architectures.")(fn)
    fn = click.option("--arch", default=None, metavar="NAME",
                      help="Architecture of a bare state_dict file (see `ann2snn models`).")(fn)
    fn = click.option("--trust-pickle", is_flag=True, default=False,
                      help="Allow a pickled nn.Module file. Unpickling runs code from the file: "
                                            "trusted files only.")(fn)
    return fn


def parse_int_list(value: str, *, name: str) -> list[int]:
    """``"1,2,4"`` → ``[1, 2, 4]``; every entry a positive integer."""
    from ann2snn.errors import Ann2SnnError

    try:
        out = [int(v) for v in value.split(",") if v.strip()]
    except ValueError:
        raise Ann2SnnError(f"{name} must be a comma-separated list of positive integers, got {value!r}") from None
    if not out or any(v <= 0 for v in out):
        raise Ann2SnnError(f"{name} must be a comma-separated list of positive integers, got {value!r}")
    return out


def parse_shape(value: str | None) -> tuple[int, ...] | None:
    return None if value is None else tuple(parse_int_list(value, name="--input-shape"))


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def table(title: str, columns: list[str], rows: list[list[Any]], *, justify_right_from: int = 1) -> Table:
    t = Table(title=title, title_justify="left")
    for i, c in enumerate(columns):
        t.add_column(c, justify="right" if i >= justify_right_from else "left")
    for r in rows:
        t.add_row(*[str(v) for v in r])
    return t
