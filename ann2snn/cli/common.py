"""Options and rendering shared by the commands.

User-provided text (file names, layer names, record fields) is printed with :func:`esc` or as table cells, never as
rich markup: a file named ``m[red]x.pt`` prints as itself.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import click
from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

console = Console()
err_console = Console(stderr=True)

from ann2snn.limits import MAX_BATCH, MAX_T  # noqa: E402,F401  (re-exported: the CLI's limits)


class FiniteFloat(click.FloatRange):
    """A float option that must be finite (click's FloatRange lets nan and inf through) and within its range."""

    name = "finite float"

    def convert(self, value, param, ctx):
        import math

        v = super().convert(value, param, ctx)
        if not math.isfinite(v):
            self.fail(f"{value!r} is not a finite number", param, ctx)
        return v


def esc(value: Any) -> str:
    """``value`` as rich markup that prints literally (for file names and other user-provided text)."""
    return escape(str(value))


def model_options(fn):
    """``--trust-pickle``, ``--arch``, ``--arch-kwargs``, ``--arch-module`` for commands that read a model file."""
    fn = click.option("--arch-module", default=None, metavar="MODULE",
                      help="Import this Python module (dotted name or .py file) to register custom architectures. "
                           "This RUNS the module's code, like `import`: name only modules you trust.")(fn)
    fn = click.option("--arch-kwargs", default=None, metavar="JSON", callback=_parse_arch_kwargs,
                      help="Arguments of --arch for a bare state_dict file, as a JSON object, e.g. "
                           "'{\"levels\": 4, \"granularity\": \"channel\"}' ('{}': the architecture's defaults). "
                           "Required with a bare state_dict: a default L would silently build a different QANN.")(fn)
    fn = click.option("--arch", default=None, metavar="NAME",
                      help="Architecture of a bare state_dict file (see `ann2snn models`).")(fn)
    fn = click.option("--trust-pickle", is_flag=True, default=False,
                      help="Allow a pickled nn.Module file or a legacy (non-zip) pickle. Unpickling runs code from "
                           "the file: trusted files only.")(fn)
    return fn


def _parse_arch_kwargs(ctx, param, value):
    if value is None:
        return None
    try:
        out = json.loads(value)
    except json.JSONDecodeError as exc:
        raise click.BadParameter(f"not JSON ({exc.msg} at character {exc.pos}); write e.g. '{{\"levels\": 4}}'",
                                 ctx=ctx, param=param) from None
    if not isinstance(out, dict):
        raise click.BadParameter(f"must be a JSON object like '{{\"levels\": 4}}', got {value!r}", ctx=ctx,
                                 param=param)
    return out


def normalize_option(fn):
    """``--normalize``: the input preprocessing of a model file that does not record it."""
    return click.option(
        "--normalize", default=None, metavar="SPEC",
        help="Input normalization, for a model file that does not record it (files written by ann2snn train / "
             "prepare do): 'dataset' (the dataset's standard mean/std, what ann2snn train applies), a dataset name "
             "(mnist, cifar10, cifar100, digits), 'none' (pixels scaled to [0, 1]) or MEAN/STD per channel, e.g. "
             "0.1307/0.3081. A file that records it must agree.")(fn)


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


def check_T(T: int | None, *, name: str = "--T") -> int | None:
    """``T`` itself, or a one-line error when it is not in 1..:data:`MAX_T`."""
    from ann2snn.errors import Ann2SnnError
    from ann2snn.limits import steps_error

    if T is None:
        return None
    why = steps_error(T, name)
    if why:
        raise Ann2SnnError(why)
    return T


def parse_batches(value: str, *, name: str = "--batch") -> list[int]:
    """A comma-separated list of batch sizes in 1..:data:`MAX_BATCH`."""
    from ann2snn.errors import Ann2SnnError

    out = parse_int_list(value, name=name)
    if max(out) > MAX_BATCH:
        raise Ann2SnnError(f"{name} {max(out)} is above the limit of {MAX_BATCH} samples per batch; use a smaller "
                           "batch")
    return out


def parse_micro_batch(value: str) -> int | str | None:
    """``--micro-batch``: ``auto``, ``off`` (None) or a positive number of samples."""
    from ann2snn.errors import Ann2SnnError

    text = value.strip().lower()
    if text in ("auto", "off"):
        return None if text == "off" else "auto"
    if not text.isdigit() or int(text) < 1:
        raise Ann2SnnError(f"--micro-batch must be auto, off or a positive number of samples, got {value!r}")
    return int(text)


def parse_shape(value: str | None) -> tuple[int, ...] | None:
    """``"C,H,W"`` → ``(C, H, W)``: one to four positive integers (the shape of one sample, no batch)."""
    from ann2snn.errors import Ann2SnnError

    if value is None:
        return None
    shape = tuple(parse_int_list(value, name="--input-shape"))
    if len(shape) > 4 or any(d > 1 << 16 for d in shape) or _prod(shape) > 1 << 26:
        raise Ann2SnnError(f"--input-shape {value!r} is not the shape of one sample (C,H,W without the batch, e.g. "
                           "1,28,28)")
    return shape


def _prod(shape) -> int:
    out = 1
    for d in shape:
        out *= d
    return out


def resolve_preprocessing(model, normalize: str | None, data_spec: str | None, *, model_path):
    """The :class:`~ann2snn.data.Preprocessing` to feed ``model`` with: the one its file records, or the one
    ``--normalize`` states; a file without a record and no ``--normalize`` is an error when data is to be read
    (``data_spec``) and the dataset has more than one usual form, else ``None`` (unknown)."""
    from ann2snn.data import Preprocessing
    from ann2snn.errors import Ann2SnnError

    recorded = getattr(model, "preprocessing", None)
    stated = _parse_normalize(normalize, data_spec) if normalize is not None else None
    if recorded is not None and stated is not None and (recorded.mean, recorded.std) != (stated.mean, stated.std):
        raise Ann2SnnError(f"{str(model_path)!r} records its input preprocessing ({recorded.describe()}) and "
                           f"--normalize {normalize} disagrees; drop --normalize")
    if recorded is not None:
        return recorded
    if stated is not None:
        return stated
    if data_spec is None:
        return None
    name = data_spec.partition(":")[0].strip().lower()
    if name == "digits":  # one form only: pixels / 16, no mean/std
        return Preprocessing(16.0, None, None, "digits")
    raise Ann2SnnError(f"{str(model_path)!r} does not record how its inputs were normalized; pass --normalize "
                       f"dataset ({name}'s standard mean/std, what ann2snn train applies) or --normalize none "
                       "(pixels scaled to [0, 1]), or MEAN/STD")


def _parse_normalize(value: str, data_spec: str | None):
    from ann2snn.data import NORMALIZATION, Preprocessing
    from ann2snn.errors import Ann2SnnError

    dataset = data_spec.partition(":")[0].strip().lower() if data_spec else None
    pixel_max = 16.0 if dataset == "digits" else 255.0
    v = value.strip().lower()
    if v == "dataset":
        if dataset is None:
            raise Ann2SnnError("--normalize dataset needs --data; name the dataset instead (e.g. --normalize mnist)")
        v = dataset
    if v in ("digits", *NORMALIZATION):
        mean, std = NORMALIZATION.get(v, (None, None))
        return Preprocessing(16.0 if v == "digits" else 255.0, mean, std, v)
    if v == "none":
        return Preprocessing(pixel_max, None, None, dataset)
    mean_s, sep, std_s = v.partition("/")
    try:
        mean = tuple(float(x) for x in mean_s.split(","))
        std = tuple(float(x) for x in std_s.split(","))
        if not sep:
            raise ValueError
        return Preprocessing(pixel_max, mean, std, dataset)
    except (ValueError, Ann2SnnError):
        raise Ann2SnnError(f"--normalize {value!r} is not 'dataset', a dataset name, 'none' or MEAN/STD (comma-"
                           "separated per channel, e.g. 0.1307/0.3081); std must be > 0") from None


def check_input_shape(model, shape: tuple[int, ...] | None) -> None:
    """One line when ``model`` does not run on samples of ``shape`` (``--input-shape``, else the shape its file
    records); before conversion, whose shape pass would print torch's own traceback first."""
    import torch

    shape = shape or getattr(model, "input_shape", None)
    if shape:
        check_input(model, torch.zeros(2, *shape), f"--input-shape {','.join(map(str, shape))}")


def check_input(model, x, what: str) -> None:
    """One line (not a traceback from inside the model) when ``model`` cannot run on the batch ``x`` from
    ``what`` (e.g. "dataset 'mnist'"): data of another shape than the model was built for."""
    import torch

    from ann2snn.errors import Ann2SnnError

    try:
        with torch.no_grad():
            model.eval()(x)
    except Exception as exc:
        shape = getattr(model, "input_shape", None)
        takes = f" (it takes {tuple(shape)})" if shape else ""
        first = str(exc).strip().splitlines()[0][:160] if str(exc).strip() else ""
        raise Ann2SnnError(f"the model does not run on {what}, whose samples have shape {tuple(x.shape[1:])}{takes}: "
                           f"{type(exc).__name__}: {first}; use the data the model was built for") from None


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str) + "\n")


def table(title: str, columns: list[str], rows: list[list[Any]], *, justify_right_from: int = 1) -> Table:
    """A rich table; the title and every cell print literally (no markup)."""
    t = Table(title=Text(str(title)), title_justify="left")
    for i, c in enumerate(columns):
        t.add_column(c, justify="right" if i >= justify_right_from else "left")
    for r in rows:
        t.add_row(*[Text(str(v)) for v in r])
    return t
