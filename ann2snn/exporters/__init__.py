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
#: a network with this many bytes of weights gets a garbage collection after each graph built (:func:`_release_memory`)
LARGE_GRAPH_BYTES = 1 << 25


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
    def write(tmp: str) -> None:  # the bytes were checked (onnx.checker) before they got here
        with open(tmp, "wb") as f:
            f.write(model_bytes)
        if os.path.getsize(tmp) != len(model_bytes):
            raise CheckpointError(f"{tmp}: wrote {os.path.getsize(tmp)} of {len(model_bytes)} bytes; disk full?")

    return write


def export(snn, path: str | os.PathLike, *, format: str = "both", T: int | None = None, encoding: str = "direct",
           verify: bool = True, force: bool = False, provider: str = "cpu", verify_input=None,
           verify_batch: int | None = None, nir=None) -> ExportResult:
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
        verify_input: the batch to verify on (default: ``verify_batch`` seeded uniform images).
        verify_batch: how many (default: 16, fewer for a large network, at least 2 — each graph is compared operator
            by operator, :func:`~ann2snn.exporters.verify.default_batch`; NIR: 16).
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
    from ann2snn.limits import steps_error

    if steps_error(T):
        raise Ann2SnnError(steps_error(T))
    if format == "nir":
        from ann2snn.exporters.nir import export_nir

        paths = output_paths(path, format)
        report, seconds = export_nir(snn, paths["nir"], paths["sidecar"], options=nir, T=T, verify=verify, force=force,
                                     encoding=encoding, verify_input=verify_input,
                                     verify_batch=16 if verify_batch is None else verify_batch)
        return ExportResult(files={"nir": paths["nir"]}, sidecar=paths["sidecar"], verification=report,
                            seconds=seconds)
    if nir is not None:
        raise Ann2SnnError(f"nir options apply to format='nir' only, not {format!r}")
    paths = output_paths(path, format)
    if not force:
        for p in paths.values():
            if p.exists():
                raise CheckpointError(f"{p} already exists; pass --force (force=True) to overwrite it")
    seconds = {"build": 0.0, "verify": 0.0, "serialize": 0.0}
    built, specs, report = _build_verify(snn, paths, T=T, encoding=encoding, verify=verify, provider=provider,
                                         x=verify_input, batch=verify_batch, seconds=seconds)
    states = [s if isinstance(s, StateSpec) else StateSpec.from_json(s) for s in specs or ()]
    meta = ModelMetadata.for_network(snn, T=T, format=FORMAT_STATEFUL if specs is not None else FORMAT_UNROLLED,
                                     encoding=encoding, states=states)
    sidecar = build_sidecar(meta, files={k: paths[k].name for k in built}, verification=report)
    _write_all(built, sidecar, paths, force=force)
    return ExportResult(files={k: paths[k] for k in built}, sidecar=paths["sidecar"], verification=report,
                        seconds=seconds)


def _build_verify(snn, paths: dict[str, Path], *, T: int, encoding: str, verify: bool, provider: str, x,
                  batch: int | None, seconds: dict[str, float]):
    """``(bytes per format, stateful specs, verification report)``, one format after the other.

    Each graph is built once (with the verification probes when ``verify``), verified (one onnxruntime session at a
    time, :class:`~ann2snn.exporters.verify.GraphVerifier`), then loses its probes (and only them,
    :func:`~ann2snn.exporters.verify.strip_probes`) and is serialized and checked; the shapes of the spiking graph
    are computed once for both. Only the finished bytes of one graph are held while the next is built, which keeps
    a ResNet-50 export's peak memory ~0.4 GB under building both graphs first.
    """
    import onnx

    from ann2snn.exporters import verify as V
    from ann2snn.exporters.common import node_shapes
    from ann2snn.exporters.onnx_stateful import build_stateful
    from ann2snn.exporters.onnx_unrolled import build_unrolled

    shapes = node_shapes(snn.graph_module, snn.input_shape)
    gm = snn.graph_module
    large = sum(t.numel() * t.element_size() for t in (*gm.parameters(), *gm.buffers())) > LARGE_GRAPH_BYTES
    verifier = None
    if verify:
        if x is None:
            x = V.example_batch(snn, batch=V.default_batch(snn, T, shapes) if batch is None else batch, T=T,
                                encoding=encoding)
        verifier = V.GraphVerifier(snn, T=T, encoding=encoding, x=x, provider=provider, shapes=shapes)
    built: dict[str, bytes] = {}
    report: dict[str, Any] = {}
    specs = None
    for fmt in (FORMAT_UNROLLED, FORMAT_STATEFUL):
        if fmt not in paths:
            continue
        t0 = time.perf_counter()
        if fmt == FORMAT_UNROLLED:
            model = build_unrolled(snn, T=T, encoding=encoding, probes=verify, shapes=shapes)
        else:
            model, specs = build_stateful(snn, T=T, encoding=encoding, probes=verify, shapes=shapes)
        _release_memory(collect=large)
        seconds["build"] += time.perf_counter() - t0
        if verifier is not None:
            t0 = time.perf_counter()
            report[fmt] = verifier.verify(fmt, model)
            _release_memory()
            seconds["verify"] += time.perf_counter() - t0
        t0 = time.perf_counter()
        if verify:  # the probes go; the rest of the graph stays exactly as verified. Built without: checked already
            built[fmt] = V.strip_probes(model).SerializeToString()
            del model
            onnx.checker.check_model(built[fmt])
        else:
            built[fmt] = model.SerializeToString()
            del model
        _release_memory()
        seconds["serialize"] += time.perf_counter() - t0
    return built, specs, report


def _release_memory(collect: bool = False) -> None:
    """Hand freed heap memory back to the operating system (glibc's ``malloc_trim``; nothing elsewhere).

    Emitting a graph allocates and frees its weights several times over (numpy copies, tensor protos); glibc keeps
    those freed blocks, and the graph under construction (onnx-graphsurgeon nodes and tensors refer to each other)
    holds its weight copies until a cyclic garbage collection. ``collect``: run one first (~0.25 s with torch
    loaded, so only after building a large graph). A ResNet-50 export peaked at 1.45 GB without either, 1.25 GB
    with both.
    """
    import ctypes
    import ctypes.util
    import gc

    if collect:
        gc.collect()
    name = ctypes.util.find_library("c")
    try:
        trim = getattr(ctypes.CDLL(name), "malloc_trim", None) if name else None
    except OSError:
        return
    if trim is not None:
        trim(0)


def _write_all(built: dict[str, bytes], sidecar: dict, paths: dict[str, Path], *, force: bool) -> None:
    """Write every file atomically; if one fails, remove the ones already written (nothing half-done)."""
    text = json.dumps(sidecar, indent=2, default=str)
    atomic_write_all([*((paths[k], _write_onnx(data)) for k, data in built.items()),
                      (paths["sidecar"], text_writer(text))], force=force)
