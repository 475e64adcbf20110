"""Run records: one JSON file per train / convert / eval / bench run, in a runs directory.

A record holds the command, its configuration, package versions, SHA-256 of its input files and its
metrics. The directory is ``$ANN2SNN_RUNS`` or ``./runs``. A record that is not valid JSON or lacks the fields every
record has is skipped by :func:`list_records` (and named), so one damaged file never hides the others.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import os
import platform
import uuid
from pathlib import Path
from typing import Any

__all__ = ["runs_dir", "check_runs_dir", "write_record", "record_conversion", "list_records", "read_record",
           "find_record", "check_record", "file_sha256", "package_versions"]


def runs_dir(path: str | os.PathLike | None = None) -> Path:
    """``path``, else ``$ANN2SNN_RUNS``, else ``./runs``."""
    return Path(path or os.environ.get("ANN2SNN_RUNS", "runs"))


def check_runs_dir(directory: str | os.PathLike | None = None) -> Path:
    """Fail early, in one line, when run records could not be written (a command checks before its work)."""
    from ann2snn.errors import Ann2SnnError
    from ann2snn.files import check_writable

    d = runs_dir(directory)
    try:
        check_writable(d / "record.json", force=True)
    except Ann2SnnError:
        raise Ann2SnnError(f"cannot write run records in {str(d)!r}; set $ANN2SNN_RUNS (or --runs-dir) to a writable "
                           "directory, or pass --no-record") from None
    return d


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def package_versions() -> dict[str, str]:
    from importlib import metadata

    out = {"python": platform.python_version()}
    for name in ("ann2snn", "torch", "onnx", "onnxruntime-gpu", "onnxruntime", "numpy"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            pass
    return out


def write_record(kind: str, *, config: dict[str, Any], metrics: dict[str, Any],
                 inputs: list[str | os.PathLike] = (), outputs: list[str | os.PathLike] = (),
                 directory: str | os.PathLike | None = None) -> Path:
    """Write one run record and return its path (``<runs>/<time>-<kind>-<id>.json``)."""
    now = _dt.datetime.now(_dt.timezone.utc)
    run_id = f"{now:%Y%m%d-%H%M%S}-{kind}-{uuid.uuid4().hex[:6]}"
    record = {
        "id": run_id,
        "kind": kind,
        "time": now.isoformat(timespec="seconds"),
        "config": config,
        "versions": package_versions(),
        "inputs": {str(p): file_sha256(p) for p in inputs if Path(p).is_file()},
        "outputs": [str(Path(p).resolve()) for p in outputs],
        "metrics": metrics,
    }
    from ann2snn.errors import Ann2SnnError
    from ann2snn.files import atomic_write, text_writer

    d = runs_dir(directory)
    path = d / f"{run_id}.json"
    try:
        return atomic_write(path, text_writer(json.dumps(record, indent=2, default=str)))
    except Ann2SnnError as exc:
        raise Ann2SnnError(f"cannot write run record in {str(d)!r} ({exc}); set $ANN2SNN_RUNS (or --runs-dir) to a "
                           "writable directory") from None


def record_conversion(model_path: str | os.PathLike, snn, outputs: list[str | os.PathLike], *,
                      config: dict[str, Any], verification: dict[str, Any] | None = None,
                      directory: str | os.PathLike | None = None) -> Path:
    """Write the run record of ``ann2snn convert``: its options, the pass counts and any ONNX verification."""
    metrics = {"T": snn.T, "input_shape": list(snn.input_shape), "stateful_operators": len(snn.stateful()),
               **(snn.report.counts() if snn.report is not None else {}),
               "levels": list(snn.info.levels), "neuron_kinds": list(snn.info.neuron_kinds),
               "mode": snn.info.convention, "schedule_length": snn.info.schedule_length}
    if verification:
        metrics["verification"] = verification
    return write_record("convert", config={"model": str(model_path), **config}, metrics=metrics,
                        inputs=[model_path], outputs=list(outputs), directory=directory)


def find_record(ref: str | os.PathLike, directory: str | os.PathLike | None = None) -> Path:
    """The file of run ``ref``: a path, a full run id, or a unique part of one (e.g. its 6-hex suffix)."""
    from ann2snn.errors import Ann2SnnError

    p = Path(ref)
    if p.is_file():
        return p
    d = runs_dir(directory)
    exact = d / f"{ref}.json"
    if exact.is_file():
        return exact
    matches = sorted(p for p in d.glob(f"*{ref}*.json") if not p.name.startswith(".")) if d.is_dir() and str(ref) \
        else []
    if len(matches) == 1:
        return matches[0]
    if len(matches) > 1:
        raise Ann2SnnError(f"run {str(ref)!r} matches {len(matches)} records in {d}; give more of the id "
                           "(see `ann2snn runs`)")
    raise Ann2SnnError(f"run {str(ref)!r} not found in {d}; list runs with `ann2snn runs` (or set --dir / "
                       "$ANN2SNN_RUNS)")


def read_record(path_or_id: str | os.PathLike, directory: str | os.PathLike | None = None) -> dict[str, Any]:
    """One run record by path, id or unique part of an id (see :func:`find_record`)."""
    from ann2snn.errors import Ann2SnnError

    p = find_record(path_or_id, directory)
    record, problem = _load(p)
    if problem:
        raise Ann2SnnError(f"run record {str(p)!r} {problem}")
    return record


#: every record has these fields, of these types (``config`` and ``metrics`` may be empty)
_FIELDS = {"id": str, "kind": str, "config": dict, "metrics": dict}


def check_record(rec: Any) -> str | None:
    """Why ``rec`` is not a usable run record (a short phrase), or ``None`` when it is."""
    if not isinstance(rec, dict):
        return f"is a JSON {type(rec).__name__}, not an object; it was not written by ann2snn"
    for key, typ in _FIELDS.items():
        if not isinstance(rec.get(key), typ):
            return f"has no valid {key!r} field ({type(rec.get(key)).__name__}); it was not written by ann2snn"
    if not isinstance(rec.get("time", ""), str):
        return "has a malformed 'time' field"
    return None


def _load(p: Path) -> tuple[dict[str, Any] | None, str | None]:
    try:
        rec = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError, RecursionError) as exc:
        return None, f"is not valid JSON ({type(exc).__name__}: {str(exc).splitlines()[0][:120] if str(exc) else ''})"
    problem = check_record(rec)
    return (None, problem) if problem else (rec, None)


def list_records(directory: str | os.PathLike | None = None, *,
                 skipped: list[tuple[Path, str]] | None = None) -> list[dict[str, Any]]:
    """All readable records, oldest first; the others are left out and, given a ``skipped`` list, appended to it
    as ``(path, why)``."""
    d = runs_dir(directory)
    out = []
    for p in sorted(d.glob("*.json")) if d.is_dir() else []:
        if p.name.startswith("."):  # a record being written (atomic_write's temporary file)
            continue
        rec, problem = _load(p)
        if problem:
            if skipped is not None:
                skipped.append((p, problem))
            continue
        out.append(rec)
    return out
