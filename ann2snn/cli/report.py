"""``ann2snn report``: one self-contained HTML page from run records."""

from __future__ import annotations

from pathlib import Path

import click

from ann2snn.cli.common import console


@click.command("report")
@click.argument("runs", nargs=-1)
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=Path("report.html"),
              show_default=True, help="The HTML file to write.")
@click.option("--dir", "directory", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Runs directory (default $ANN2SNN_RUNS or ./runs).")
@click.option("--title", default="ann2snn report", show_default=True)
@click.option("--no-images", is_flag=True, help="Tables only (no matplotlib needed).")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
def report_cmd(runs, output, directory, title, no_images, force):
    """Render RUNS (ids, unique parts of ids, or record files; all runs when none given) into one HTML page:
    accuracy, firing-rate, operation and threshold tables, with plots embedded as base64 PNG.

    Example: ann2snn report 3f2a1c 9b0d4e -o report.html
    """
    from ann2snn.report import write_report
    from ann2snn.runs import list_records, read_record

    records = [read_record(r, directory) for r in runs] if runs else list_records(directory)
    path = write_report(records, output, title=title, force=force, images=not no_images)
    console.print(f"wrote [bold]{path}[/] ({len(records)} run(s))", highlight=False)
