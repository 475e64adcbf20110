"""Writing files safely, and the plain-data form of a QANN that model files store.

Everything that writes a file (checkpoints, ONNX exports, sidecars, plots, reports, JSON results, run records) goes
through :func:`atomic_write`: the file appears whole or not at all, an existing one is replaced only when asked, its
mode follows the umask like any file the user creates (the temporary file it is written to is private until then),
and a directory that cannot be written is a one-line error naming it. :func:`qann_payload` is the QANN record of a
model file; :func:`ann2snn.convert` keeps one in the network's :class:`~ann2snn.network.ConversionInfo` so that a
converted network can be saved. Both live here, below ``checkpoint`` and ``network``, so that the two import it and
not each other.
"""

from __future__ import annotations

import functools
import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from ann2snn.errors import CheckpointError

if TYPE_CHECKING:
    from torch import nn

__all__ = ["atomic_write", "atomic_write_all", "check_writable", "text_writer", "qann_payload", "file_mode"]


@functools.cache
def _umask_once() -> int:
    # os.umask can only be read by setting it; set the strictest mask for that instant (another thread creating a
    # file then gets a private one, never a too-open one), and do it once per process
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode a new file gets from ``open()`` under the current umask (``0o666 & ~umask``), e.g. 0o644."""
    try:  # Linux reports the umask without changing it, so a umask set after import is honoured
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return 0o666 & ~int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    return 0o666 & ~_umask_once()


def _cannot_write(path: Path, exc: OSError) -> CheckpointError:
    reason = exc.strerror or type(exc).__name__
    return CheckpointError(f"cannot write {str(path)!r}: {reason}; choose a writable location (-o / --output)")


def _existing_ancestor(path: Path) -> Path:
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    return parent


def check_writable(path: str | os.PathLike, *, force: bool = False) -> Path:
    """Fail early, in one line, when ``path`` could not be written: it exists (without ``force``), it is a
    directory, or the directory it would go into is not a writable directory. Writes nothing.

    Commands call it before their work so that a typo in ``-o`` does not cost a training run;
    :func:`atomic_write` calls it again (and still reports any error the write itself meets).
    """
    path = Path(path)
    if path.is_dir():
        raise CheckpointError(f"{str(path)!r} is a directory; name a file to write")
    if path.exists() and not force:
        raise CheckpointError(f"{path} already exists; pass --force (force=True) to overwrite it")
    parent = _existing_ancestor(path)
    if not parent.is_dir():
        raise CheckpointError(f"cannot write {str(path)!r}: {str(parent)!r} is not a directory; choose a writable "
                              "location (-o / --output)")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise CheckpointError(f"cannot write {str(path)!r}: directory {str(parent)!r} is not writable; choose a "
                              "writable location (-o / --output)")
    return path


def atomic_write(path: str | os.PathLike, write: Callable[[str], Any], *, force: bool = False) -> Path:
    """Call ``write(tmp_path)`` and move the result to ``path`` in one step; never leaves half a file.

    Refuses to replace an existing ``path`` unless ``force`` (also when it appears while ``write`` runs). The file
    gets the mode the umask gives new files (:func:`file_mode`); an ``OSError`` (no permission, disk full) is a
    one-line :class:`~ann2snn.errors.CheckpointError` naming the file.

    Examples:
        >>> atomic_write("out.json", lambda tmp: Path(tmp).write_text("{}"))
    """
    path = check_writable(path, force=force)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # the temporary name keeps the real suffix, so writers that infer the format from it (savefig) work
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=f".tmp{path.suffix}", dir=path.parent)
    except OSError as exc:
        raise _cannot_write(path, exc) from None
    try:
        try:
            os.fchmod(fd, file_mode())  # mkstemp makes it 0600; writers truncate the file and keep its mode
        finally:
            os.close(fd)
        try:
            write(tmp)
            with open(tmp, "rb") as f:  # on disk before it gets its name: no empty file after a power cut
                os.fsync(f.fileno())
            _publish(tmp, path, force)
        except OSError as exc:
            raise _cannot_write(path, exc) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def _publish(tmp: str, path: Path, force: bool) -> None:
    """Give ``tmp`` the name ``path``: replacing it with ``force``, else only if nothing took the name meanwhile."""
    if force:
        os.replace(tmp, path)
        return
    try:
        os.link(tmp, path)  # fails if path exists: the check and the write are one step
    except FileExistsError:
        raise CheckpointError(f"{path} already exists; pass --force (force=True) to overwrite it") from None
    except OSError:  # a file system without hard links
        if path.exists():
            raise CheckpointError(f"{path} already exists; pass --force (force=True) to overwrite it") from None
        os.replace(tmp, path)
        return
    os.unlink(tmp)


def atomic_write_all(writes: list[tuple[Path, Callable[[str], Any]]], *, force: bool = False) -> list[Path]:
    """:func:`atomic_write` each ``(path, write)`` in order; if one fails, the ones already written are removed,
    so a set of files (a model and its sidecar) appears whole or not at all. Every path is checked with
    :func:`check_writable` before the first is written."""
    for path, _ in writes:
        check_writable(path, force=force)
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
    """``{"arch", "kwargs", "state_dict", "input_shape", "preprocessing"}`` of a zoo-built (registered) QANN,
    tensors on the CPU; ``preprocessing`` is the model's :class:`~ann2snn.data.Preprocessing` as JSON (or None)."""
    arch = getattr(model, "arch_name", None)
    if arch is None:
        raise CheckpointError(
            f"cannot save a {type(model).__name__} safely: its architecture has no registered name; build it with "
            "ann2snn.models.create or register its builder with @ann2snn.models.register('name')"
        )
    shape = input_shape or getattr(model, "input_shape", None)
    pre = getattr(model, "preprocessing", None)
    return {
        "arch": arch,
        "kwargs": dict(getattr(model, "arch_kwargs", {}) or {}),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
        "input_shape": list(shape) if shape is not None else None,
        "preprocessing": pre.to_json() if pre is not None else None,
    }
