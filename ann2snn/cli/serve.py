"""``ann2snn serve``: the local web app (needs the ``ui`` extra)."""

from __future__ import annotations

import ipaddress
from pathlib import Path

import click

from ann2snn.cli.common import console


def is_loopback(host: str) -> bool:
    """True for 127.0.0.0/8, ::1 and localhost: only this machine can connect."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@click.command("serve")
@click.option("--runs", "runs", type=click.Path(file_okay=False, path_type=Path), default=None,
              help="Runs directory (default $ANN2SNN_RUNS or ./runs); launched jobs keep their files in RUNS/jobs.")
@click.option("--data", "data", type=click.Path(file_okay=False, exists=True, path_type=Path), default=None,
              help="Data directory: its MNIST / CIFAR folders (two levels deep) are offered by the forms; digits "
                   "is always there.")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to bind. Beyond localhost every request needs the token printed at start-up.")
@click.option("--port", type=click.IntRange(1, 65535), default=8000, show_default=True)
@click.option("--workers", type=click.IntRange(min=1), default=1, show_default=True,
              help="Jobs that run at the same time; the others wait in the queue.")
def serve_cmd(runs, data, host, port, workers):
    """Serve the web app: launch QANN training, SNN tests and conversions from the browser, follow them live,
    browse and compare the run records of RUNS.

    Jobs are `ann2snn` commands run as subprocesses (the same code path as the terminal); a job's records join
    RUNS when it ends. Stopping the server (Ctrl+C) marks running jobs as interrupted.

    Example: ann2snn serve --runs runs --data ../shared/data --workers 2
    """
    import secrets

    from ann2snn.errors import Ann2SnnError
    from ann2snn.runs import runs_dir

    try:
        import jinja2  # noqa: F401
        import starlette  # noqa: F401
        import uvicorn
    except ImportError as exc:
        raise Ann2SnnError(f"`ann2snn serve` needs the web extra ({exc.name} is not installed): "
                           "pip install 'ann2snn[ui]'") from None
    from ann2snn.web.app import create_app

    local = is_loopback(host)
    token = None if local else secrets.token_urlsafe(18)
    runs = runs_dir(runs)
    app = create_app(runs, data=data, workers=workers, token=token, local_only=local)
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/" + (f"?token={token}" if token else "")
    console.print(f"ann2snn serve: [bold]{url}[/] (runs {runs}, data {data or 'none: digits only'}, {workers} "
                  f"worker{'s' if workers != 1 else ''}); Ctrl+C stops", highlight=False, soft_wrap=True)
    if token:
        console.print(f"bound beyond localhost: every request needs the token {token} (the URL above sets it)",
                      highlight=False, soft_wrap=True)
    uvicorn.run(app, host=host, port=port, log_level="warning")
