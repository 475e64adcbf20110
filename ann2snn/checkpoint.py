"""The safe model file format: tensors and plain data only, read with ``torch.load(weights_only=True)``.

A QANN file is ``{"format": "ann2snn.qann", "version": 1, "arch": name, "kwargs": {...},
"state_dict": {...}, "input_shape": [...], "preprocessing": {...} | None, "meta": {...}}``; the architecture is
rebuilt from the zoo (or a module the user names) and the weights loaded strictly. A converted SNN file
(``"format": "ann2snn.snn"``) stores the QANN the same way plus the conversion options, and is rebuilt
by converting again (deterministic, milliseconds) with the options it was converted with (T, input shape,
max-pool mode, time convention). A pickled whole ``nn.Module`` is opened only with ``trust_pickle=True``, because
unpickling runs code from the file.

Reading checks, each a one-line :class:`~ann2snn.errors.CheckpointError`: the zip CRC of every record (a file whose
bytes changed after it was written is a "corrupt file", never garbage weights); a legacy (non-zip) pickle is named as
such and read only with ``trust_pickle``; the recorded architecture, arguments, input shape and preprocessing must be
well-formed; every floating-point tensor must be finite (the error names the tensor).
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import zipfile
import zlib
from pathlib import Path
from typing import Any, Mapping

import torch
from torch import nn

from ann2snn import models
from ann2snn.data import Preprocessing
from ann2snn.errors import Ann2SnnError, CheckpointError
from ann2snn.files import atomic_write, qann_payload
from ann2snn.network import SpikingNetwork, convert

# atomic_write lives in ann2snn.files; it stays importable from here for callers not yet moved
__all__ = ["save", "load", "load_qann", "qann_from_payload", "check_finite", "atomic_write", "VERSION"]

VERSION = 1
QANN_FORMAT = "ann2snn.qann"
SNN_FORMAT = "ann2snn.snn"
_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTO = b"\x80"  # pickle protocol 2+ (PyTorch's legacy format starts with one)


def save(obj: nn.Module, path: str | os.PathLike, *, meta: dict[str, Any] | None = None,
         force: bool = False) -> Path:
    """Write a QANN (zoo-built) or a :class:`SpikingNetwork` to ``path`` in the safe format, atomically.

    A model's ``preprocessing`` (:class:`~ann2snn.data.Preprocessing`, set by ``ann2snn train`` and ``prepare``)
    is written with it.

    Examples:
        >>> ann2snn.save(qann, "digits.pt", meta={"test_accuracy": 0.97})
    """
    if isinstance(obj, SpikingNetwork):
        info = obj.info
        if info.qann_payload is None:
            raise CheckpointError("this SpikingNetwork was not converted from a saved-able QANN; save the QANN instead")
        options = {"T": obj.T, "input_shape": list(obj.input_shape), "maxpool": info.maxpool,
                   "convention": info.convention}
        payload = {"format": SNN_FORMAT, "version": VERSION, "qann": info.qann_payload, "convert": options,
                   "meta": meta or {}}
    elif isinstance(obj, nn.Module):
        payload = {"format": QANN_FORMAT, "version": VERSION, **qann_payload(obj), "meta": meta or {}}
    else:
        raise CheckpointError(f"save takes an nn.Module or a SpikingNetwork, got {type(obj).__name__}")

    def write(tmp: str) -> None:
        with open(tmp, "wb") as f:  # a file object: the archive's records are named archive/…, not after tmp
            torch.save(payload, f)

    return atomic_write(path, write, force=force)


def _corrupt(path: Path, what: str) -> CheckpointError:
    return CheckpointError(f"corrupt file {str(path)!r}: {what}; restore it from a good copy or re-save the model")


def _check_zip(path: Path) -> None:
    """Every record's CRC-32 (PyTorch writes them; its reader does not check them)."""
    try:
        with zipfile.ZipFile(path) as z:
            bad = z.testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, ValueError, NotImplementedError, OSError) as exc:
        raise _corrupt(path, f"not a readable PyTorch file (truncated or damaged zip: "
                             f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__})") from None
    if bad is not None:
        raise _corrupt(path, f"record {bad!r} fails its CRC check (its bytes changed after the file was written)")


def _not_torch(path: Path, head: bytes) -> CheckpointError:
    text = head and all(32 <= b < 127 or b in (9, 10, 13) for b in head)
    what = f"it starts with text {head[:12].decode('ascii')!r}" if text else (
        "it is empty" if not head else f"it starts with bytes {head[:8].hex()}")
    return CheckpointError(f"{str(path)!r} is not a readable PyTorch file ({what}); pass a model file written by "
                           "ann2snn.save or torch.save")


def _read(path: Path, trust_pickle: bool) -> Any:
    if not path.exists():
        raise CheckpointError(f"model file {str(path)!r} does not exist; check the path")
    if path.is_dir():
        raise CheckpointError(f"{str(path)!r} is a directory, not a model file")
    try:
        with open(path, "rb") as f:
            head = f.read(64)
    except OSError as exc:
        raise CheckpointError(f"cannot read model file {str(path)!r}: {exc.strerror or exc}") from None
    if head.startswith(_PICKLE_PROTO):
        if not trust_pickle:
            raise CheckpointError(
                f"{str(path)!r} is a legacy pickle file (PyTorch's pre-1.6 format or a plain pickle): it has no "
                "integrity check and reading it runs code from the file; pass --trust-pickle (trust_pickle=True) "
                "only if you trust its source, then re-save it with ann2snn.save")
        return _unpickle(path)
    if not head.startswith(_ZIP_MAGIC):
        raise _not_torch(path, head)
    _check_zip(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "unsupported global" not in str(exc).lower():  # anything else: not a pickle of objects at all
            raise _corrupt(path, "not a readable PyTorch file (its pickle is damaged)") from None
        if not trust_pickle:
            raise CheckpointError(
                f"{str(path)!r} holds pickled Python objects (e.g. a whole nn.Module); loading it runs code from the "
                "file: pass --trust-pickle (trust_pickle=True) only if you trust its source, or re-save it with "
                "ann2snn.save"
            ) from None
    except Exception as exc:  # torch raises RuntimeError, KeyError, EOFError, ... for damaged archives
        raise _corrupt(path, f"not a readable PyTorch file ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:200] if str(exc) else 'no detail'})") from None
    return _unpickle(path)


def _unpickle(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"{str(path)!r} could not be unpickled: {type(exc).__name__}: "
                              f"{str(exc).splitlines()[0][:200] if str(exc) else ''}") from None


def check_finite(tensors: Mapping[str, Any], *, where: str) -> None:
    """Refuse NaN or infinite values in any floating-point tensor (parameters, buffers, thresholds) and a negative
    BatchNorm variance, naming the tensor: a QANN with them computes NaN, and nothing converted from it can match."""
    for name, t in tensors.items():
        if not isinstance(t, torch.Tensor) or not (t.is_floating_point() or t.is_complex()):
            continue
        finite = torch.isfinite(t)
        if not bool(finite.all()):
            bad = int((~finite).sum())
            raise CheckpointError(f"{where}: tensor {name!r} has {bad} NaN or infinite value(s) out of {t.numel()}; "
                                  "the file is damaged or training diverged: retrain or restore a good checkpoint")
        if name.endswith("running_var") and bool((t < 0).any()):
            raise CheckpointError(f"{where}: BatchNorm variance {name!r} has negative values; the file is damaged: "
                                  "restore a good checkpoint")


def _spec(spec: Any, *, where: str) -> tuple[str, dict[str, Any], dict[str, torch.Tensor]]:
    """The architecture name, its arguments and the state_dict of a QANN record, checked for shape."""
    def bad(what: str) -> CheckpointError:
        return CheckpointError(f"{where} is malformed: {what}; re-save the model with ann2snn.save")

    if not isinstance(spec, Mapping):
        raise bad(f"its QANN record is a {type(spec).__name__}, not a dict")
    arch, kwargs, sd = spec.get("arch"), spec.get("kwargs", {}), spec.get("state_dict")
    if not isinstance(arch, str) or not arch:
        raise bad(f"its architecture name is {arch!r}, not a name")
    if kwargs is None:
        kwargs = {}
    if not isinstance(kwargs, Mapping) or not all(isinstance(k, str) for k in kwargs):
        raise bad(f"the arguments of architecture {arch!r} are a {type(kwargs).__name__}, not a dict of names")
    if not isinstance(sd, Mapping) or not sd:
        raise bad("it has no state_dict")
    if not all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in sd.items()):
        raise bad("its state_dict holds entries that are not named tensors")
    shape = spec.get("input_shape")
    if shape is not None and (not isinstance(shape, (list, tuple)) or not shape or not all(
            isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape)):
        raise bad(f"its input shape is {shape!r}, not a list of positive integers")
    return arch, dict(kwargs), dict(sd)


def qann_from_payload(spec: Mapping[str, Any], *, where: str = "the model") -> nn.Module:
    """Rebuild the QANN of a model file's QANN record (``{"arch", "kwargs", "state_dict", "input_shape",
    "preprocessing"}``, :func:`ann2snn.files.qann_payload`): build, load the weights strictly, eval mode."""
    arch, kwargs, sd = _spec(spec, where=where)
    check_finite(sd, where=where)
    pre = spec.get("preprocessing")
    preprocessing = Preprocessing.from_json(pre, where=where) if pre is not None else None
    model = _create(arch, kwargs, where=where)
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        raise _misfit(arch, kwargs, exc, where) from None
    if spec.get("input_shape"):
        model.input_shape = tuple(spec["input_shape"])
    model.preprocessing = preprocessing
    return model.eval()


def _create(arch: str, kwargs: dict[str, Any], *, where: str) -> nn.Module:
    try:
        return models.create(arch, **kwargs)
    except Ann2SnnError as exc:
        raise CheckpointError(f"{where}: {exc}") from None
    except Exception as exc:  # a builder rejecting a malformed argument in its own way (ValueError, RuntimeError, …)
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        raise CheckpointError(f"{where}: architecture {arch!r} cannot be built with arguments {kwargs} "
                              f"({type(exc).__name__}: {first}); pass the arguments the model was built with"
                              ) from None


def _misfit(arch: str, kwargs: dict[str, Any], exc: Exception, where: str) -> CheckpointError:
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    detail = " ".join(lines[1:3] if len(lines) > 1 else lines)[:300]
    return CheckpointError(f"{where}: weights do not fit architecture {arch!r} with {kwargs}: {detail}; pass the "
                           "--arch / --arch-kwargs the model was trained with")


def _check_options(opts: Any, *, where: str) -> dict[str, Any]:
    if not isinstance(opts, Mapping) or not isinstance(opts.get("T"), int) or isinstance(opts.get("T"), bool) \
            or not isinstance(opts.get("input_shape"), (list, tuple)):
        raise CheckpointError(f"{where} is malformed: its conversion options {opts!r} lack T and input_shape; "
                              "convert the QANN again")
    return dict(opts)


def load(path: str | os.PathLike, *, trust_pickle: bool = False, arch: str | None = None,
         arch_kwargs: dict[str, Any] | None = None, arch_module: str | None = None):
    """Read a model file: a QANN (``nn.Module``, with ``.preprocessing`` and ``.checkpoint_meta``) or a converted
    :class:`SpikingNetwork`.

    Accepts the ann2snn format, a bare ``state_dict`` together with ``arch`` *and* ``arch_kwargs`` (the arguments
    it was built with: ``{}`` for the architecture's defaults, said explicitly, because a default L differs from
    the trained one without any error), and — only with ``trust_pickle=True`` — a pickled ``nn.Module`` or a legacy
    (non-zip) pickle. ``arch_module`` is imported first: it runs that module's code.
    """
    path = Path(path)
    if arch_module:
        models.import_arch_module(arch_module)
    obj = _read(path, trust_pickle)
    where = f"model file {str(path)!r}"
    if isinstance(obj, nn.Module):
        check_finite(obj.state_dict(), where=where)
        return obj.eval()
    if not isinstance(obj, dict):
        raise CheckpointError(f"{where} holds a {type(obj).__name__}, not a model; save models with ann2snn.save")
    fmt = obj.get("format")
    if fmt == QANN_FORMAT:
        if arch is not None and arch != obj.get("arch"):
            raise CheckpointError(f"{where} is a {obj.get('arch')!r}, not {arch!r}")
        if arch_kwargs is not None and dict(arch_kwargs) != dict(obj.get("kwargs") or {}):
            raise CheckpointError(f"{where} records its own architecture arguments {obj.get('kwargs')}; drop "
                                  "--arch-kwargs (it is for bare state_dict files)")
        model = qann_from_payload(obj, where=where)
        meta = obj.get("meta", {})
        model.checkpoint_meta = meta if isinstance(meta, dict) else {}
        return model
    if fmt == SNN_FORMAT:
        qann = qann_from_payload(obj.get("qann"), where=where)
        opts = _check_options(obj.get("convert"), where=where)
        snn = convert(qann, opts["T"], input_shape=tuple(opts["input_shape"]), maxpool=opts.get("maxpool", "spiking"),
                      convention=opts.get("convention", "rate"))  # files from before conventions are rate networks
        snn.info = dataclasses.replace(snn.info, qann_payload=obj["qann"])
        return snn
    if fmt is not None:
        raise CheckpointError(f"{where} has unknown format {fmt!r}; this ann2snn reads {QANN_FORMAT} and {SNN_FORMAT}")
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        if arch is None:
            raise CheckpointError(f"{where} is a bare state_dict: name its architecture with --arch (arch=...) and "
                                  "its arguments with --arch-kwargs (arch_kwargs=...)")
        if arch_kwargs is None:
            raise CheckpointError(
                f"{where} is a bare state_dict, which does not record the arguments of {arch!r} (levels L, "
                "granularity, ...): pass the ones it was built with, e.g. --arch-kwargs '{\"levels\": 4}' "
                "(arch_kwargs=...), or --arch-kwargs '{}' for the architecture's defaults")
        return qann_from_payload({"arch": arch, "kwargs": arch_kwargs, "state_dict": obj}, where=where)
    raise CheckpointError(f"{where} is a dict without an ann2snn format tag; save models with ann2snn.save")


def load_qann(path, **kw) -> nn.Module:
    """:func:`load`, insisting on a QANN (not an already converted SNN)."""
    model = load(path, **kw)
    if isinstance(model, SpikingNetwork):
        raise CheckpointError(f"{str(path)!r} is already a converted SNN; pass the QANN checkpoint")
    return model
