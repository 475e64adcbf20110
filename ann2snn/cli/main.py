"""Entry point: ``ann2snn <command>``. Errors print one line and exit 1; ``--verbose`` shows the traceback."""

from __future__ import annotations

import importlib
import sys

import click

from ann2snn.cli.common import err_console

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


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; known errors become one line on stderr and a non-zero exit code."""
    from ann2snn.errors import Ann2SnnError

    args = sys.argv[1:] if argv is None else argv
    verbose = "-v" in args or "--verbose" in args
    try:
        cli.main(args=args, prog_name="ann2snn", standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.Abort:
        err_console.print("aborted", style="red", highlight=False)
        sys.exit(130)
    except click.UsageError as exc:
        if verbose:
            raise
        hint = f" (see `ann2snn {exc.ctx.info_name} --help`)" if exc.ctx is not None and exc.ctx.parent else ""
        err_console.print(f"error: {exc.format_message()}{hint}", style="red", highlight=False, soft_wrap=True,
                          markup=False)
        sys.exit(2)
    except Ann2SnnError as exc:
        if verbose:
            raise
        err_console.print(f"error: {exc}", style="red", highlight=False, soft_wrap=True, markup=False)
        sys.exit(1)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    main()
