"""Run records: one JSON file per train / convert / eval / bench run, in a runs directory.

A record holds the command, its configuration, package versions, SHA-256 of its input files and its
metrics. The directory is ``$ANN2SNN_RUNS`` or ``./runs``.
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

__all__ = ["runs_dir", "write_record", "list_records", "read_record", "file_sha256", "package_versions"]


def runs_dir(path: str | os.PathLike | None = None) -> Path:
    return Path(path or os.environ.get("ANN2SNN_RUNS", "runs"))


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
        "outputs": [str(p) for p in outputs],
        "metrics": metrics,
    }
    d = runs_dir(directory)
    d.mkdir(parents=True, exist_ok=True)
    path = d / f"{run_id}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(record, indent=2, default=str))
    os.replace(tmp, path)
    return path


def read_record(path_or_id: str | os.PathLike, directory: str | os.PathLike | None = None) -> dict[str, Any]:
    p = Path(path_or_id)
    if not p.is_file():
        p = runs_dir(directory) / f"{path_or_id}.json"
    from ann2snn.errors import Ann2SnnError

    if not p.is_file():
        raise Ann2SnnError(f"run {str(path_or_id)!r} not found in {runs_dir(directory)}; list runs with `ann2snn runs`")
    try:
        return json.loads(p.read_text())
    except json.JSONDecodeError as exc:
        raise Ann2SnnError(f"run record {str(p)!r} is not valid JSON: {exc}") from None


def list_records(directory: str | os.PathLike | None = None) -> list[dict[str, Any]]:
    """All readable records, oldest first."""
    d = runs_dir(directory)
    out = []
    for p in sorted(d.glob("*.json")) if d.is_dir() else []:
        try:
            out.append(json.loads(p.read_text()))
        except (OSError, json.JSONDecodeError):
            continue
    return out
