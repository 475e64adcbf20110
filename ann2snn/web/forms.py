"""The launch forms: their fields, and the checks that turn posted values into the arguments of a CLI command.

A form's values become ``ann2snn <command> ...`` arguments and are then checked by that command's own parser
(``click``'s ``make_context``: types, choices, ranges) and by the checks its body runs before any work
(:func:`ann2snn.train._check_config`, :func:`ann2snn.evaluate.parse_ts`, ...), so the page and the terminal
refuse the same input with the same one-line message. Paths never come from the page: a model is named by its
place in the runs directory, a dataset by one of the folders found in the data directory, and both are resolved
and confined there. No form can import a module (no ``--arch-module``) or unpickle a file (no
``--trust-pickle``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from ann2snn.errors import Ann2SnnError

__all__ = ["Field", "Launch", "Dirs", "KINDS", "form_fields", "build_launch", "datasets", "models_in_runs",
           "confine"]

#: form kind -> (CLI command, page title)
KINDS = {"train": ("train", "Launch QANN training"), "test": ("eval", "Launch an SNN test"),
         "convert": ("convert", "Convert and download")}
_NAME = re.compile(r"[A-Za-z0-9._-]{0,40}")
_MAX_DIRS = 200


@dataclass(frozen=True)
class Field:
    """One form input. ``choices`` are ``(value, label)`` pairs (a select); ``flag`` is the CLI option it sets."""

    name: str
    label: str
    default: str = ""
    choices: tuple[tuple[str, str], ...] | None = None
    flag: str = ""
    help: str = ""
    placeholder: str = ""
    number: bool = False


@dataclass(frozen=True)
class Launch:
    """A checked job: ``args`` follow ``ann2snn``; ``fields`` are the values that made it (to launch it again)."""

    kind: str
    title: str
    args: tuple[str, ...]
    fields: dict[str, str]


@dataclass(frozen=True)
class Dirs:
    """The two directories the web app may read: the runs (read and write) and the data (read)."""

    runs: Path
    data: Path | None = None


def confine(path: str | Path, root: Path, what: str) -> Path:
    """``root / path`` resolved, or a one-line error when it leaves ``root`` (``..``, an absolute path, a link)."""
    root = root.resolve()
    p = (root / path).resolve()
    if not p.is_relative_to(root):
        raise Ann2SnnError(f"{what} {str(path)!r} is outside {root}; the web app only reads files there")
    return p


# -- choices found on disk -------------------------------------------------------------------------------------
def _dataset_kind(d: Path) -> str | None:
    names = {p.name for p in d.iterdir() if p.is_file()}
    if any(n.startswith("train-images") and "idx3-ubyte" in n for n in names):
        return "mnist"
    if "data_batch_1" in names:
        return "cifar10"
    if {"train", "test", "meta"} <= names:
        return "cifar100"
    return None


def datasets(data: Path | None) -> list[tuple[str, str]]:
    """``digits`` and every MNIST / CIFAR folder within two levels of the data directory, as ``kind:relative``."""
    out = [("digits", "digits (bundled with scikit-learn)")]
    if data is None or not data.is_dir():
        return out
    dirs = [data] + sorted(p for p in data.iterdir() if p.is_dir())
    dirs += sorted(q for p in dirs[1:] for q in p.iterdir() if q.is_dir())
    for d in dirs[:_MAX_DIRS]:
        try:
            kind = _dataset_kind(d)
        except OSError:
            continue
        if kind:
            rel = d.relative_to(data).as_posix()
            out.append((f"{kind}:{rel}", f"{kind}: {rel if rel != '.' else data.name}"))
    return out


def models_in_runs(runs: Path, records: list[dict[str, Any]]) -> list[tuple[str, str]]:
    """Model files named by the runs' train / prepare records that exist inside the runs directory, newest first."""
    from ann2snn.report import headline

    out, seen, root = [], set(), runs.resolve()
    for rec in reversed(records):
        if rec.get("kind") not in ("train", "prepare"):
            continue
        for p in rec.get("outputs") or []:
            path = Path(str(p))
            if not path.name.endswith(".pt") or path.name.endswith(".last.pt") or not path.is_file():
                continue
            path = path.resolve()
            if not path.is_relative_to(root) or path in seen:
                continue
            seen.add(path)
            cfg = rec.get("config") or {}
            out.append((path.relative_to(root).as_posix(),
                        f"{path.name} — {cfg.get('arch', '?')}, {Path(str(cfg.get('data', '?'))).name}, "
                        f"{headline(rec)} (run {str(rec.get('id'))[-6:]})"))
    return out


# -- the forms ---------------------------------------------------------------------------------------------------
def _choices(command, name: str) -> tuple[tuple[str, str], ...]:
    """The values the CLI option ``name`` accepts (its click.Choice), so the form offers exactly those."""
    param = next(p for p in command.params if p.name == name)
    return tuple((c, c) for c in param.type.choices)


def _command(kind: str):
    import importlib

    module = {"train": "ann2snn.cli.train", "eval": "ann2snn.cli.eval", "convert": "ann2snn.cli.convert"}[kind]
    return getattr(importlib.import_module(module), f"{kind}_cmd")


def form_fields(kind: str, dirs: Dirs, records: list[dict[str, Any]]) -> list[Field]:
    """The fields of form ``kind`` (train, test, convert), with the choices the runs and data directories offer;
    only those whose CLI option the installed command has."""
    if kind not in KINDS:
        raise Ann2SnnError(f"unknown form {kind!r}; use train, test or convert")
    command = _command(KINDS[kind][0])
    flags = {o for p in command.params for o in [*p.opts, *p.secondary_opts]}
    return [f for f in _fields(kind, dirs, records) if not f.flag.startswith("--") or f.flag in flags]


def _fields(kind: str, dirs: Dirs, records: list[dict[str, Any]]) -> list[Field]:
    from ann2snn import models

    data = tuple(datasets(dirs.data))
    found = tuple(models_in_runs(dirs.runs, records))
    on_off = (("on", "on"), ("off", "off"))
    if kind == "train":
        cmd = _command("train")
        acts = {"qcfs": "QCFS", "signed": "signed QCFS (double threshold, quantized LeakyReLU)",
                "relu": "ReLU ANN (for ann2snn prepare)", "leaky": "LeakyReLU ANN (for ann2snn prepare)"}
        grans = {"layer": "layer-wise θ (QCFS)", "channel": "channel-wise θ (CS-QCFS)", "neuron": "neuron-wise θ",
                 "head": "head-wise θ"}
        return [
            Field("name", "name prefix", help="prefix of the model file name (letters, digits, . _ -)"),
            Field("arch", "architecture", "digits-cnn", tuple((a, a) for a in sorted(models.available())), "--arch"),
            Field("data", "dataset", "digits", data, "--data"),
            Field("from_ann", "pretrained model", "", (("", "none: train from scratch"),) + found, "--from-ann",
                  help="start from a trained model of the runs (a ReLU ANN is prepared, thresholds calibrated)"),
            Field("act", "QCFS variant", "qcfs", tuple((c, acts.get(c, c)) for c, _ in _choices(cmd, "act")),
                  "--act"),
            Field("granularity", "threshold granularity", "layer",
                  tuple((c, grans.get(c, c)) for c, _ in _choices(cmd, "granularity")), "--granularity",
                  help="with two-stage: the stage-2 granularity"),
            Field("softplus", "θ = Softplus(λ)", "on", on_off, "--softplus", help="keeps every threshold > 0"),
            Field("init_threshold", "initial threshold θ", "2.0", flag="--init-threshold", number=True),
            Field("levels", "quantization step L", "4", flag="--levels", number=True),
            Field("alpha", "negative slope α", "0.1", flag="--alpha", number=True, help="signed QCFS and LeakyReLU"),
            Field("optimizer", "optimizer", "", (("", "the architecture's default"),) + _choices(cmd, "optimizer"),
                  "--optimizer"),
            Field("lr", "learning rate", "", flag="--lr", placeholder="default", number=True,
                  help="empty: the optimizer's default (see ann2snn train --help)"),
            Field("warmup", "warmup epochs", "", flag="--warmup", placeholder="default", number=True,
                  help="linear learning-rate warmup before the cosine schedule"),
            Field("seed", "seed", "0", flag="--seed", number=True),
            Field("epochs", "epochs", "10", flag="--epochs", number=True),
            Field("two_stage", "two-stage E1,E2", "", flag="--two-stage", placeholder="e.g. 3,2",
                  help="CS-QCFS: E1 epochs layer-wise, then E2 at the granularity above (replaces epochs)"),
            Field("batch_size", "batch size", "128", flag="--batch-size", number=True),
            Field("device", "device", "auto", (("auto", "auto"), ("cpu", "cpu"), ("cuda", "cuda")), "--device"),
        ]
    if kind == "test":
        cmd = _command("eval")
        return [
            Field("model", "model", found[0][0] if found else "", found, "MODEL"),
            Field("data", "dataset", "digits", data, "--data", help="the test split is used"),
            Field("Ts", "simulation steps T", "1,2,4,8,16,32", flag="--T", help="comma-separated; one run"),
            Field("mode", "mode", "rate", (("rate", "rate"), ("exact", "exact"), ("rate,exact", "rate and exact")),
                  "--mode"),
            Field("backend", "backend", "torch", _choices(cmd, "backend"), "--backend",
                  help="onnx runs the unrolled graph on onnxruntime"),
            Field("batch_size", "batch size", "256", flag="--batch-size", number=True),
            Field("limit", "test samples", "", flag="--limit", placeholder="all", number=True),
        ]
    if kind == "convert":
        cmd = _command("convert")
        return [
            Field("model", "model", found[0][0] if found else "", found, "MODEL"),
            Field("T", "time steps T", "", flag="--T", placeholder="default", number=True,
                  help="empty: L in rate mode, 4·L in exact mode"),
            Field("mode", "mode", "rate", _choices(cmd, "convention"), "--mode"),
            Field("format", "format", "both", tuple(c for c in _choices(cmd, "fmt") if c[0] != "torch"), "--format",
                  help="both: unrolled and stateful ONNX; nir: a NIR graph"),
            Field("verify", "verify", "on", on_off, "--verify", help="on onnxruntime (ONNX) or nirtorch (NIR)"),
        ]
    raise Ann2SnnError(f"unknown form {kind!r}; use train, test or convert")


# -- posted values -> checked CLI arguments ----------------------------------------------------------------------
def build_launch(kind: str, posted: dict[str, str], dirs: Dirs, records: list[dict[str, Any]]) -> Launch:
    """Check the posted values of form ``kind`` and return the job to run, or raise one :class:`Ann2SnnError`."""
    fields = form_fields(kind, dirs, records)
    values = {}
    for f in fields:
        v = str(posted.get(f.name, f.default)).strip()
        if any(ord(c) < 32 for c in v):
            raise Ann2SnnError(f"{f.label}: control characters are not allowed")
        if f.choices is not None and v not in {c for c, _ in f.choices}:
            raise Ann2SnnError(_bad_choice(f, v, dirs))
        values[f.name] = v
    builder: Callable[[dict[str, str], Dirs], tuple[str, list[str]]] = _BUILDERS[kind]
    title, args = builder(values, dirs)
    command = _command(KINDS[kind][0])
    params = _parse(command, args)
    _CHECKS[kind](params)
    return Launch(kind, title, tuple(args), values)


def _bad_choice(f: Field, v: str, dirs: Dirs) -> str:
    if f.flag == "MODEL":
        if not f.choices:
            return f"no model to pick: train one first (the {f.label} list shows the models of {dirs.runs})"
        return f"{f.label} {v!r} is not a model of the runs directory {dirs.runs}; pick one from the list"
    if f.name == "data":
        return (f"dataset {v!r} is not digits or a dataset folder in the data directory "
                f"{dirs.data or '(none: start ann2snn serve with --data DIR)'}")
    return f"{f.label} must be one of {', '.join(c for c, _ in f.choices)}, got {v!r}"


def _data_spec(value: str, dirs: Dirs) -> str:
    if value == "digits":
        return value
    kind, _, rel = value.partition(":")
    return f"{kind}:{confine(rel, dirs.data, 'data folder')}"


def _opt(args: list[str], flag: str, value: str) -> None:
    if value != "":
        args += [flag, value]


def _train_args(v: dict[str, str], dirs: Dirs) -> tuple[str, list[str]]:
    if not _NAME.fullmatch(v["name"]):
        raise Ann2SnnError(f"name prefix {v['name']!r} may hold only letters, digits, '.', '_' and '-' (40 at most)")
    dataset = v["data"].partition(":")[0]
    args = ["train", "--arch", v["arch"], "--data", _data_spec(v["data"], dirs)]
    for name in ("levels", "granularity", "init_threshold", "act", "alpha", "optimizer", "lr", "warmup", "seed",
                 "batch_size", "device"):
        if name in v:
            _opt(args, "--" + name.replace("_", "-"), v[name])
    args.append("--softplus" if v["softplus"] == "on" else "--no-softplus")
    if v["two_stage"]:
        args += ["--two-stage", v["two_stage"]]
    else:
        _opt(args, "--epochs", v["epochs"])
    if v["from_ann"]:
        args += ["--from-ann", str(confine(v["from_ann"], dirs.runs, "model"))]
    args += ["-o", f"{v['name']}{v['arch']}-{dataset}.pt"]
    epochs = f"{v['two_stage']} epochs (two-stage)" if v["two_stage"] else f"{v['epochs'] or 10} epochs"
    return f"train {v['arch']} on {dataset}, L={v['levels']}, {v['act']}, {epochs}", args


def _test_args(v: dict[str, str], dirs: Dirs) -> tuple[str, list[str]]:
    model = confine(v["model"], dirs.runs, "model")
    args = ["eval", str(model), "--data", _data_spec(v["data"], dirs), "--T", v["Ts"], "--mode", v["mode"],
            "--backend", v["backend"]]
    _opt(args, "--batch-size", v["batch_size"])
    _opt(args, "--limit", v["limit"])
    return f"SNN test of {model.name} on {v['data'].partition(':')[0]}, T={v['Ts']}, {v['mode']}", args


def _convert_args(v: dict[str, str], dirs: Dirs) -> tuple[str, list[str]]:
    model = confine(v["model"], dirs.runs, "model")
    suffix = ".snn.nir" if v["format"] == "nir" else ".snn.onnx"
    args = ["convert", str(model), "--mode", v["mode"], "--format", v["format"],
            "--verify" if v["verify"] == "on" else "--no-verify", "-o", model.name.removesuffix(".pt") + suffix]
    _opt(args, "--T", v["T"])
    return f"convert {model.name} to {v['format']}, {v['mode']} mode{', T=' + v['T'] if v['T'] else ''}", args


def _parse(command, args: list[str]) -> dict[str, Any]:
    """The command's own option parsing (types, choices, ranges), without running it."""
    import click

    try:
        ctx = command.make_context(args[0], args[1:])
    except click.UsageError as exc:
        raise Ann2SnnError(exc.format_message()) from None
    return ctx.params


def _check_train(p: dict[str, Any]) -> None:
    """What ``ann2snn train`` checks before it loads anything: the architecture, its --two-stage parsing and
    :func:`ann2snn.train._check_config` on the options that are TrainConfig fields."""
    import dataclasses

    from ann2snn import models
    from ann2snn.cli.common import parse_int_list
    from ann2snn.train import TrainConfig, _check_config

    if p["arch"] not in models.available():
        raise Ann2SnnError(f"unknown architecture {p['arch']!r}; choose one of {', '.join(sorted(models.available()))}")
    stages = None
    if p["two_stage"] is not None:
        stages = tuple(parse_int_list(p["two_stage"], name="--two-stage"))
        if len(stages) != 2:
            raise Ann2SnnError(f"--two-stage takes two epoch counts E1,E2, got {p['two_stage']!r}")
    names = {f.name for f in dataclasses.fields(TrainConfig)}
    kw = {k: v for k, v in p.items() if k in names and v is not None}
    _check_config(TrainConfig(**{**kw, "epochs": p["epochs"] or 10, "two_stage": stages}))
    _check_data(p["data"])


def _check_test(p: dict[str, Any]) -> None:
    from ann2snn.evaluate import parse_modes, parse_ts

    parse_ts(p["Ts"])
    parse_modes(p["mode"])
    _check_data(p["data_spec"])


def _check_convert(p: dict[str, Any]) -> None:
    if p["T"] is not None and p["T"] <= 0:
        raise Ann2SnnError(f"--T must be a positive number of time steps, got {p['T']}")


def _check_data(spec: str) -> None:
    from ann2snn.cli.eval import check_data_spec

    check_data_spec(spec)


_BUILDERS = {"train": _train_args, "test": _test_args, "convert": _convert_args}
_CHECKS = {"train": _check_train, "test": _check_test, "convert": _check_convert}
