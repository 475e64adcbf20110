"""The safe model file format: tensors and plain data only, read with ``torch.load(weights_only=True)``.

A QANN file is ``{"format": "ann2snn.qann", "version": 1, "arch": name, "kwargs": {...},
"state_dict": {...}, "input_shape": [...], "meta": {...}}``; the architecture is rebuilt from the zoo
(or a module the user names) and the weights loaded strictly. A converted SNN file
(``"format": "ann2snn.snn"``) stores the QANN the same way plus the conversion options, and is rebuilt
by converting again (deterministic, milliseconds) with the options it was converted with (T, input shape,
max-pool mode, time convention). A pickled whole ``nn.Module`` is opened only with
``trust_pickle=True``, because unpickling runs code from the file.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ann2snn import models
from ann2snn.errors import CheckpointError
from ann2snn.files import atomic_write, qann_payload
from ann2snn.network import SpikingNetwork, convert

# atomic_write lives in ann2snn.files; it stays importable from here for callers not yet moved
__all__ = ["save", "load", "load_qann", "atomic_write", "VERSION"]

VERSION = 1
QANN_FORMAT = "ann2snn.qann"
SNN_FORMAT = "ann2snn.snn"


def save(obj: nn.Module, path: str | os.PathLike, *, meta: dict[str, Any] | None = None,
         force: bool = False) -> Path:
    """Write a QANN (zoo-built) or a :class:`SpikingNetwork` to ``path`` in the safe format, atomically.

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
    return atomic_write(path, lambda tmp: torch.save(payload, tmp), force=force)


def _read(path: Path, trust_pickle: bool) -> Any:
    if not path.exists():
        raise CheckpointError(f"model file {str(path)!r} does not exist; check the path")
    if path.is_dir():
        raise CheckpointError(f"{str(path)!r} is a directory, not a model file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "unsupported global" not in str(exc).lower():  # anything else: not a pickle of objects at all
            raise CheckpointError(f"{str(path)!r} is not a readable PyTorch file (corrupt or truncated?)") from exc
        if not trust_pickle:
            raise CheckpointError(
                f"{str(path)!r} holds pickled Python objects (e.g. a whole nn.Module); loading it runs code from the "
                "file: pass --trust-pickle (trust_pickle=True) only if you trust its source, or re-save it with "
                "ann2snn.save"
            ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError) as exc:
        raise CheckpointError(f"{str(path)!r} is not a readable PyTorch file (corrupt or truncated?): "
                              f"{str(exc).splitlines()[0] if str(exc) else type(exc).__name__}") from None
    try:
        return torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:
        raise CheckpointError(f"{str(path)!r} could not be unpickled: {type(exc).__name__}: {exc}") from None


def _build(spec: dict[str, Any], *, where: str) -> nn.Module:
    model = models.create(spec["arch"], **spec.get("kwargs", {}))
    sd = spec.get("state_dict")
    if not isinstance(sd, dict):
        raise CheckpointError(f"{where} has no state_dict")
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as exc:
        lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
        raise CheckpointError(
            f"{where}: weights do not fit architecture {spec['arch']!r} with {spec.get('kwargs')}: "
            f"{' '.join(lines[1:3])[:300]}; pass the --arch / kwargs the model was trained with"
        ) from None
    if spec.get("input_shape"):
        model.input_shape = tuple(spec["input_shape"])
    return model.eval()


def load(path: str | os.PathLike, *, trust_pickle: bool = False, arch: str | None = None,
         arch_kwargs: dict[str, Any] | None = None, arch_module: str | None = None):
    """Read a model file: a QANN (``nn.Module``) or a converted :class:`SpikingNetwork`.

    Accepts the ann2snn format, a bare ``state_dict`` together with ``arch`` (and ``arch_kwargs``), and — only
    with ``trust_pickle=True`` — a pickled ``nn.Module``.
    """
    path = Path(path)
    if arch_module:
        models.import_arch_module(arch_module)
    obj = _read(path, trust_pickle)
    where = f"model file {str(path)!r}"
    if isinstance(obj, nn.Module):
        return obj.eval()
    if not isinstance(obj, dict):
        raise CheckpointError(f"{where} holds a {type(obj).__name__}, not a model; save models with ann2snn.save")
    fmt = obj.get("format")
    if fmt == QANN_FORMAT:
        if arch is not None and arch != obj["arch"]:
            raise CheckpointError(f"{where} is a {obj['arch']!r}, not {arch!r}")
        model = _build(obj, where=where)
        model.checkpoint_meta = obj.get("meta", {})
        return model
    if fmt == SNN_FORMAT:
        qann = _build(obj["qann"], where=where)
        opts = obj["convert"]
        snn = convert(qann, opts["T"], input_shape=tuple(opts["input_shape"]), maxpool=opts.get("maxpool", "spiking"),
                      convention=opts.get("convention", "rate"))  # files from before conventions are rate networks
        snn.info = dataclasses.replace(snn.info, qann_payload=obj["qann"])
        return snn
    if fmt is not None:
        raise CheckpointError(f"{where} has unknown format {fmt!r}; this ann2snn reads {QANN_FORMAT} and {SNN_FORMAT}")
    if all(isinstance(v, torch.Tensor) for v in obj.values()) and obj:
        if arch is None:
            raise CheckpointError(f"{where} is a bare state_dict: name its architecture with --arch (arch=...)")
        return _build({"arch": arch, "kwargs": arch_kwargs or {}, "state_dict": obj}, where=where)
    raise CheckpointError(f"{where} is a dict without an ann2snn format tag; save models with ann2snn.save")


def load_qann(path, **kw) -> nn.Module:
    """:func:`load`, insisting on a QANN (not an already converted SNN)."""
    model = load(path, **kw)
    if isinstance(model, SpikingNetwork):
        raise CheckpointError(f"{str(path)!r} is already a converted SNN; pass the QANN checkpoint")
    return model
