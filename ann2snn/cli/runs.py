"""``ann2snn runs``: list the run records."""

from __future__ import annotations

from pathlib import Path

import click

from ann2snn.cli.common import console, print_json


@click.command("runs")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Runs directory (default $ANN2SNN_RUNS or ./runs).")
@click.option("--kind", default=None, help="Only runs of this kind (train, convert, eval, bench).")
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON.")
def runs_cmd(directory, kind, as_json):
    """List the run records that train, convert, eval and bench wrote, oldest first.

    Example: ann2snn runs --kind eval; then ann2snn report <id> -o report.html
    """
    from ann2snn.report import headline
    from ann2snn.runs import list_records, runs_dir

    records = [r for r in list_records(directory) if kind is None or r.get("kind") == kind]
    if as_json:
        print_json(records)
        return
    if not records:
        console.print(f"no run records in {runs_dir(directory)}", highlight=False)
        return
    from rich.table import Table

    t = Table(title=f"{len(records)} run(s) in {runs_dir(directory)}", title_justify="left")
    t.add_column("run", no_wrap=True)
    t.add_column("kind")
    t.add_column("time (UTC)", no_wrap=True)
    t.add_column("model")
    t.add_column("result")
    for r in records:
        t.add_row(str(r.get("id")), str(r.get("kind")), str(r.get("time", ""))[:16].replace("T", " "),
                  str((r.get("config") or {}).get("model", "-")), headline(r))
    console.print(t)
