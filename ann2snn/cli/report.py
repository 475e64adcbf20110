"""``ann2snn report``: one self-contained HTML page from run records."""

from __future__ import annotations

from pathlib import Path

import click

from ann2snn.cli.common import console, err_console, esc


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
    from ann2snn.errors import Ann2SnnError
    from ann2snn.files import check_writable
    from ann2snn.report import render_html, write_report
    from ann2snn.runs import list_records, read_record

    check_writable(output, force=force)
    skipped: list = []
    records = [read_record(r, directory) for r in runs] if runs else list_records(directory, skipped=skipped)
    usable = []
    for rec in records:  # a record whose metrics are not what its kind writes must not sink the page
        try:
            render_html([rec], title=title, images=False)
        except Exception as exc:
            if runs:
                raise Ann2SnnError(f"run record {rec.get('id')!r} cannot be rendered ({type(exc).__name__}: {exc}); "
                                   "it was edited or not written by this ann2snn") from None
            skipped.append((Path(f"{rec.get('id')}.json"), f"cannot be rendered ({type(exc).__name__})"))
            continue
        usable.append(rec)
    path = write_report(usable, output, title=title, force=force, images=not no_images)
    for p, why in skipped:
        err_console.print(f"skipped {p.name}: {why}", style="yellow", markup=False, highlight=False, soft_wrap=True)
    console.print(f"wrote [bold]{esc(path)}[/] ({len(usable)} run(s))", highlight=False)
