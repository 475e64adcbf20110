"""Writing files safely, and the plain-data form of a QANN that model files store.

Everything that writes a file (checkpoints, ONNX exports, sidecars, plots, reports, JSON results) goes through
:func:`atomic_write`: the file appears whole or not at all, and an existing one is replaced only when asked.
:func:`qann_payload` is the QANN record of a model file; :func:`ann2snn.convert` keeps one in the network's
:class:`~ann2snn.network.ConversionInfo` so that a converted network can be saved. Both live here, below
``checkpoint`` and ``network``, so that the two import it and not each other.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

from torch import nn

from ann2snn.errors import CheckpointError

__all__ = ["atomic_write", "atomic_write_all", "text_writer", "qann_payload"]


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any], *, force: bool = False) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` in one step; never leaves half a file.

    Refuses to replace an existing ``path`` unless ``force``.

    Examples:
        >>> atomic_write("out.json", lambda tmp: Path(tmp).write_text("{}"))
    """
    path = Path(path)
    if path.exists() and not force:
        raise CheckpointError(f"{path} already exists; pass --force (force=True) to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    # the temporary name keeps the real suffix, so writers that infer the format from it (savefig) work
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def atomic_write_all(writes: list[tuple[Path, Callable[[str], Any]]], *, force: bool = False) -> list[Path]:
    """:func:`atomic_write` each ``(path, write)`` in order; if one fails, the ones already written are removed,
    so a set of files (a model and its sidecar) appears whole or not at all."""
    written: list[Path] = []
    try:
        for path, write in writes:
            written.append(atomic_write(path, write, force=force))
    except BaseException:
        for p in written:
            p.unlink(missing_ok=True)
        raise
    return written


def text_writer(text: str) -> Callable[[str], Any]:
    """A writer for :func:`atomic_write` that writes ``text``."""
    return lambda tmp: Path(tmp).write_text(text, encoding="utf-8")


def qann_payload(model: nn.Module, input_shape=None) -> dict[str, Any]:
    """``{"arch", "kwargs", "state_dict", "input_shape"}`` of a zoo-built (registered) QANN, tensors on the CPU."""
    arch = getattr(model, "arch_name", None)
    if arch is None:
        raise CheckpointError(
            f"cannot save a {type(model).__name__} safely: its architecture has no registered name; build it with "
            "ann2snn.models.create or register its builder with @ann2snn.models.register('name')"
        )
    shape = input_shape or getattr(model, "input_shape", None)
    return {
        "arch": arch,
        "kwargs": dict(getattr(model, "arch_kwargs", {}) or {}),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "input_shape": list(shape) if shape is not None else None,
    }
