"""ONNX (and NIR) export of a converted :class:`~ann2snn.network.SpikingNetwork`, verified before it is written.

Examples:
    >>> res = ann2snn.export(snn, "model.snn.onnx", format="both")   # + model.snn.step.onnx, model.snn.json
    >>> res.verification["unrolled"]["spike_count_agreement"]
    1.0

Formats (one module each): :mod:`~ann2snn.exporters.onnx_unrolled` (all T steps in one graph),
:mod:`~ann2snn.exporters.onnx_stateful` (one step, explicit state) and :mod:`~ann2snn.exporters.nir` (a NIR graph
of one step, ``format="nir"``). The two ONNX forms emit every stateful operator through the table in
:mod:`~ann2snn.exporters.common`; :mod:`~ann2snn.exporters.verify` checks them. The names, metadata
and sidecar schema of the files are :mod:`~ann2snn.exporters.contract`.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ann2snn.errors import Ann2SnnError, CheckpointError
from ann2snn.exporters.contract import (
    FORMAT_STATEFUL,
    FORMAT_UNROLLED,
    ONNX_FORMATS,
    ModelMetadata,
    StateSpec,
    build_sidecar,
)
from ann2snn.files import atomic_write_all, text_writer

__all__ = ["export", "ExportResult", "FORMATS", "output_paths"]

FORMATS = (*ONNX_FORMATS, "both", "nir")


@dataclass
class ExportResult:
    """What :func:`export` wrote, and the verification report per format (empty when skipped)."""

    files: dict[str, Path]
    sidecar: Path
    verification: dict[str, Any] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)


def output_paths(path: str | os.PathLike, fmt: str) -> dict[str, Path]:
    """Where each file goes: ``X.onnx`` (unrolled, or stateful alone), ``X.step.onnx`` (stateful beside
    unrolled), ``X.nir`` (nir) and the sidecar ``X.json``."""
    path = Path(path)
    if fmt == "nir":
        base = path.name[:-4] if path.name.endswith(".nir") else path.name
        return {"nir": path, "sidecar": path.with_name(base + ".json")}
    base = path.name[:-5] if path.name.endswith(".onnx") else path.name
    out = {}
    if fmt in (FORMAT_UNROLLED, "both"):
        out[FORMAT_UNROLLED] = path
    if fmt == FORMAT_STATEFUL:
        out[FORMAT_STATEFUL] = path
    elif fmt == "both":
        out[FORMAT_STATEFUL] = path.with_name(base + ".step.onnx")
    out["sidecar"] = path.with_name(base + ".json")
    return out


def _write_onnx(model_bytes: bytes):
    def write(tmp: str) -> None:
        import onnx

        with open(tmp, "wb") as f:
            f.write(model_bytes)
        onnx.checker.check_model(tmp)

    return write


def export(snn, path: str | os.PathLike, *, format: str = "both", T: int | None = None, encoding: str = "direct",
           verify: bool = True, force: bool = False, provider: str = "cpu", verify_input=None,
           verify_batch: int = 16, nir=None) -> ExportResult:
    """Export ``snn`` to ONNX (or NIR), verify it against the simulator, and write the files atomically.

    Args:
        snn: a converted network (:func:`ann2snn.convert`).
        path: the ONNX file (``X.onnx``); with ``format="both"`` the stateful graph goes to ``X.step.onnx``;
            the sidecar JSON (states, shapes, initial values, verification) to ``X.json``. For ``format="nir"``
            the NIR file (``X.nir``) and its sidecar ``X.json``.
        format: ``"unrolled"``, ``"stateful"``, ``"both"`` or ``"nir"`` (:mod:`ann2snn.exporters.nir`).
        T: time steps (default ``snn.T``). encoding: ``"direct"`` (``[B, ...]`` input) or ``"sequence"``
            (``[T, B, ...]`` pre-encoded input).
        verify: check first (ONNX: on onnxruntime; NIR: run by nirtorch with NIR semantics); on a mismatch raise
            :class:`VerificationError` and write nothing.
        force: replace existing files. provider: onnxruntime provider for verification.
        verify_input: the batch to verify on (default: 16 seeded uniform images).
        nir: NIR only, :class:`~ann2snn.exporters.nir.NirOptions` or a dict of its fields: ``neuron`` ``"if"``
            (``nir.IF``; not exact, refused unless ``approximate=True``, then the differences are recorded in the file
            and the sidecar) or ``"integrator"`` (exact); ``pool`` ``"avg"`` or ``"sum"``.

    Examples:
        >>> ann2snn.export(ann2snn.convert(qann, T=4), "digits.snn.onnx")
        >>> ann2snn.export(snn, "digits.snn.nir", format="nir", nir={"neuron": "integrator"})
    """
    if format not in FORMATS:
        raise Ann2SnnError(f"format must be one of {', '.join(FORMATS)}, got {format!r}")
    T = snn.T if T is None else T
    if not isinstance(T, int) or isinstance(T, bool) or T <= 0:
        raise Ann2SnnError(f"T must be a positive number of time steps, got {T!r}")
    if format == "nir":
        from ann2snn.exporters.nir import export_nir

        paths = output_paths(path, format)
        report, seconds = export_nir(snn, paths["nir"], paths["sidecar"], options=nir, T=T, verify=verify, force=force,
                                     encoding=encoding, verify_input=verify_input, verify_batch=verify_batch)
        return ExportResult(files={"nir": paths["nir"]}, sidecar=paths["sidecar"], verification=report,
                            seconds=seconds)
    if nir is not None:
        raise Ann2SnnError(f"nir options apply to format='nir' only, not {format!r}")
    paths = output_paths(path, format)
    if not force:
        for p in paths.values():
            if p.exists():
                raise CheckpointError(f"{p} already exists; pass --force (force=True) to overwrite it")
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    built, probe, specs = _build(snn, paths, T=T, encoding=encoding, probes=verify)
    seconds["build"] = time.perf_counter() - t0
    report: dict[str, Any] = {}
    if verify:
        t0 = time.perf_counter()
        report = _verify(snn, built, probe, T=T, encoding=encoding, provider=provider, x=verify_input,
                         batch=verify_batch)
        seconds["verify"] = time.perf_counter() - t0
    states = [s if isinstance(s, StateSpec) else StateSpec.from_json(s) for s in specs or ()]
    meta = ModelMetadata.for_network(snn, T=T, format=FORMAT_STATEFUL if specs is not None else FORMAT_UNROLLED,
                                     encoding=encoding, states=states)
    sidecar = build_sidecar(meta, files={k: paths[k].name for k in built}, verification=report)
    _write_all(built, sidecar, paths, force=force)
    return ExportResult(files={k: paths[k] for k in built}, sidecar=paths["sidecar"], verification=report,
                        seconds=seconds)


def _build(snn, paths: dict[str, Path], *, T: int, encoding: str, probes: bool):
    """The serialized graphs per format, the unrolled probe twin (when ``probes``) and the stateful specs."""
    from ann2snn.exporters.onnx_stateful import build_stateful
    from ann2snn.exporters.onnx_unrolled import build_unrolled

    built: dict[str, bytes] = {}
    probe = specs = None
    if FORMAT_UNROLLED in paths:
        built[FORMAT_UNROLLED] = build_unrolled(snn, T=T, encoding=encoding).SerializeToString()
        if probes:
            probe = build_unrolled(snn, T=T, encoding=encoding, probes=True).SerializeToString()
    if FORMAT_STATEFUL in paths:
        model, specs = build_stateful(snn, T=T, encoding=encoding)
        built[FORMAT_STATEFUL] = model.SerializeToString()
    return built, probe, specs


def _verify(snn, built: dict[str, bytes], probe, *, T: int, encoding: str, provider: str, x, batch: int):
    """Each built graph on onnxruntime against the simulator, on one batch (raises on a mismatch)."""
    from ann2snn.exporters import verify as V

    x = V.example_batch(snn, batch=batch, T=T, encoding=encoding) if x is None else x
    ref = V.reference(snn, x, T, encoding=encoding)
    report: dict[str, Any] = {}
    if FORMAT_UNROLLED in built:
        report[FORMAT_UNROLLED] = V.verify_unrolled(snn, built[FORMAT_UNROLLED], probe, T=T, encoding=encoding,
                                                    x=x, provider=provider, ref=ref)
    if FORMAT_STATEFUL in built:
        report[FORMAT_STATEFUL] = V.verify_stateful(snn, built[FORMAT_STATEFUL], T=T, encoding=encoding, x=x,
                                                    provider=provider, ref=ref)
    return report


def _write_all(built: dict[str, bytes], sidecar: dict, paths: dict[str, Path], *, force: bool) -> None:
    """Write every file atomically; if one fails, remove the ones already written (nothing half-done)."""
    text = json.dumps(sidecar, indent=2, default=str)
    atomic_write_all([*((paths[k], _write_onnx(data)) for k, data in built.items()),
                      (paths["sidecar"], text_writer(text))], force=force)
