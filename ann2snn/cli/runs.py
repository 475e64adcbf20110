"""``ann2snn runs``: list the run records."""

from __future__ import annotations

from pathlib import Path

import click

from ann2snn.cli.common import console, err_console, esc, print_json


@click.command("runs")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Runs directory (default $ANN2SNN_RUNS or ./runs).")
@click.option("--kind", default=None, help="Only runs of this kind (train, convert, eval, bench).")
@click.option("--json", "as_json", is_flag=True, help="Print the records as JSON.")
def runs_cmd(directory, kind, as_json):
    """List the run records that train, convert, eval and bench wrote, oldest first.

    Example: ann2snn runs --kind eval; then ann2snn report <id> -o report.html
    """
    from ann2snn.runs import list_records, runs_dir

    skipped: list = []
    records = [r for r in list_records(directory, skipped=skipped) if kind is None or r.get("kind") == kind]
    if as_json:
        print_json(records)
        _report_skipped(skipped)
        return
    if not records:
        console.print(f"no run records in {esc(runs_dir(directory))}", highlight=False)
        _report_skipped(skipped)
        return
    from rich.table import Table
    from rich.text import Text

    t = Table(title=Text(f"{len(records)} run(s) in {runs_dir(directory)}"), title_justify="left")
    t.add_column("run", no_wrap=True)
    t.add_column("kind")
    t.add_column("time (UTC)", no_wrap=True)
    t.add_column("model")
    t.add_column("result")
    for r in records:
        cells = [r.get("id"), r.get("kind"), str(r.get("time", ""))[:16].replace("T", " "),
                 r["config"].get("model", "-"), _headline(r)]
        t.add_row(*[Text(str(c)) for c in cells])
    console.print(t)
    _report_skipped(skipped)


def _headline(rec) -> str:
    """The record's one-line result; a record whose metrics are not what its kind writes gets a note, not a crash."""
    from ann2snn.report import headline

    try:
        return headline(rec)
    except Exception as exc:  # a hand-edited or foreign record: show the others
        return f"(metrics unreadable: {type(exc).__name__})"


def _report_skipped(skipped) -> None:
    for path, why in skipped:
        err_console.print(f"skipped {path.name}: {why}", style="yellow", markup=False, highlight=False,
                          soft_wrap=True)
