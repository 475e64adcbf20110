"""Entry point: ``ann2snn <command>``. Errors print one line and exit non-zero; ``--verbose`` shows the traceback.

Only click is imported at start-up; torch and rich load inside :func:`main`, where a Ctrl-C is one line.
"""

from __future__ import annotations

import importlib
import sys

import click

#: command name -> "module:function"; modules are imported only when their command runs.
COMMANDS = {
    "convert": "ann2snn.cli.convert:convert_cmd",
    "demo": "ann2snn.cli.demo:demo_cmd",
    "models": "ann2snn.cli.models:models_cmd",
    "prepare": "ann2snn.cli.prepare:prepare_cmd",
    "train": "ann2snn.cli.train:train_cmd",
    "inspect": "ann2snn.cli.inspect:inspect_group",
    "eval": "ann2snn.cli.eval:eval_cmd",
    "runs": "ann2snn.cli.runs:runs_cmd",
    "report": "ann2snn.cli.report:report_cmd",
    "bench": "ann2snn.cli.bench:bench_cmd",
    "serve": "ann2snn.cli.serve:serve_cmd",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        mod, _, fn = COMMANDS[name].partition(":")
        return getattr(importlib.import_module(mod), fn)


@click.group(cls=_LazyGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.option("-v", "--verbose", is_flag=True, help="Show tracebacks on errors.")
@click.version_option(package_name="ann2snn")
@click.pass_context
def cli(ctx: click.Context, verbose: bool) -> None:
    """ann2snn: convert QCFS-quantized ANNs into verified spiking networks."""
    ctx.ensure_object(dict)["verbose"] = verbose


class Terminated(BaseException):
    """SIGTERM, raised in the main thread so that ``finally`` blocks run (temporary files are removed) before exit."""


def _on_sigterm(signum, frame) -> None:
    raise Terminated()


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; every error becomes one line on stderr and a non-zero exit code (``--verbose``: the traceback).

    Exit codes: 1 an error, 2 a usage error, 130 Ctrl-C, 143 SIGTERM (after removing any half-written file).
    """
    import signal

    args = sys.argv[1:] if argv is None else argv
    verbose = "-v" in args or "--verbose" in args
    previous = signal.getsignal(signal.SIGTERM)
    try:
        signal.signal(signal.SIGTERM, _on_sigterm)
    except ValueError:  # not the main thread (called from a library): leave signals alone
        previous = None
    try:
        _run(args, verbose)
    except KeyboardInterrupt:
        _say("aborted (Ctrl-C)")
        sys.exit(130)
    except Terminated:
        _say("terminated (SIGTERM)")
        sys.exit(143)
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _say(line: str) -> None:
    """One line on stderr, printed literally (user text inside is never read as markup)."""
    from ann2snn.cli.common import err_console

    err_console.print(line, style="red", highlight=False, soft_wrap=True, markup=False)


def _run(args: list[str], verbose: bool) -> None:
    from ann2snn.errors import Ann2SnnError

    try:
        cli.main(args=args, prog_name="ann2snn", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        _say("aborted")
        sys.exit(130)
    except click.UsageError as exc:
        if verbose:
            raise
        hint = f" (see `ann2snn {exc.ctx.info_name} --help`)" if exc.ctx is not None and exc.ctx.parent else ""
        _say(f"error: {exc.format_message()}{hint}")
        sys.exit(2)
    except click.ClickException as exc:  # e.g. a file option click could not open
        if verbose:
            raise
        _say(f"error: {exc.format_message()}")
        sys.exit(exc.exit_code or 1)
    except Ann2SnnError as exc:
        if verbose:
            raise
        _say(f"error: {exc}")
        sys.exit(1)
    except (KeyboardInterrupt, Terminated, SystemExit):
        raise
    except BaseException as exc:  # not an Ann2SnnError: still one line, the traceback with --verbose
        if verbose:
            raise
        _say(f"error: {_unexpected(exc)}")
        sys.exit(1)


def _unexpected(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
    if isinstance(exc, MemoryError) or "out of memory" in text.lower() or "not enough memory" in text.lower():
        return f"out of memory ({type(exc).__name__}: {text}); use a smaller batch (--batch / --batch-size) or T"
    if isinstance(exc, OSError) and exc.strerror:
        name = f": {exc.filename!r}" if exc.filename else ""
        return f"{exc.strerror}{name}"
    return (f"{type(exc).__name__}: {text} — an unexpected error; rerun with `ann2snn --verbose …` and report it "
            "with the traceback")


if __name__ == "__main__":  # pragma: no cover
    main()
