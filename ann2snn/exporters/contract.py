"""The ONNX file contract: input/output names, ``metadata_props`` keys and the sidecar schema, in one place.

The exporters write these names, the runtime, the bench and the verifier read them; none of them spells one out.

Graphs (batch axis dynamic and named ``batch``, T fixed):

- **unrolled**: input :data:`INPUT` ``[batch, ...]`` (direct encoding) or ``[T, batch, ...]`` (sequence);
  outputs :data:`LOGITS` ``[batch, K]`` (the logits after T steps) and :data:`LOGITS_PER_STEP` ``[T, batch, K]``
  (the logits after t = 1..T steps); verification twins add one :func:`probe_name` output per stateful operator
  (its output summed over the T steps).
- **stateful**: one step. Inputs :data:`INPUT` and one :func:`state_input_name` per state tensor; outputs
  :data:`LOGITS_T` (this step's output message) and one :func:`state_output_name` per state, fed back next step.
  The logits after t steps are the sum of ``logits_t`` over steps 1..t divided by ``N(t)``: ``t`` under the
  ``rate`` convention, ``min(t, L)`` under ``exact`` (L = ``schedule_length``), see :func:`readout_counts`.

Every file carries :class:`ModelMetadata` in its ``metadata_props`` (:meth:`ModelMetadata.to_props`, read back
with :func:`read_metadata`); the sidecar JSON written beside the files is :func:`build_sidecar`.

The graph's input is what the QANN was trained on, *not* raw pixels: :data:`META_PREPROCESSING` (and the sidecar's
``"preprocessing"``) records how to make it from an image (``x = pixels / pixel_max``, then ``(x − mean) / std`` per
channel), or ``null`` when the model file did not record it. It is metadata, not part of the graph: verification
compares the graph with the simulator on the same inputs, and a consumer applies it before feeding ``input``.

Examples:
    >>> meta = read_metadata("model.snn.step.onnx")
    >>> meta.format, meta.T, meta.convention, [s.input for s in meta.states]
    ('stateful', 4, 'rate', ['state.layer1.v', ...])
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

from ann2snn._version import __version__
from ann2snn.data import Preprocessing
from ann2snn.errors import Ann2SnnError
from ann2snn.simulator import CONVENTIONS, TimeSchedule

__all__ = [
    "INPUT", "LOGITS", "LOGITS_PER_STEP", "LOGITS_T", "STATE_IN_PREFIX", "STATE_OUT_PREFIX", "PROBE_PREFIX", "BATCH",
    "SCHEDULE_MODULE", "SCHEDULE_STATE", "SCHEDULE_KIND",
    "FORMAT_UNROLLED", "FORMAT_STATEFUL", "ONNX_FORMATS", "ENCODINGS", "CONVENTIONS",
    "META_VERSION", "META_T", "META_FORMAT", "META_ENCODING", "META_SHIFT", "META_NEURON_KINDS", "META_INPUT_SHAPE",
    "META_ARCH", "META_STATES", "META_CONVENTION", "META_SCHEDULE_LENGTH", "META_PREPROCESSING",
    "META_ACTIVATION_BYTES", "METADATA_KEYS",
    "SIDECAR_FORMAT", "SIDECAR_VERSION",
    "state_input_name", "state_output_name", "probe_name", "readout_counts",
    "StateSpec", "ModelMetadata", "read_metadata", "build_sidecar",
]

# ---------------------------------------------------------------------------------------------------------
# graph inputs and outputs

INPUT = "input"
LOGITS = "logits"
LOGITS_PER_STEP = "logits_per_step"
LOGITS_T = "logits_t"
STATE_IN_PREFIX = "state."
STATE_OUT_PREFIX = "state_out."
PROBE_PREFIX = "count."
BATCH = "batch"
#: the exact schedule's step counter in the stateful graph: state ``step`` of the pseudo-module ``schedule``
#: (kind ``schedule``), 0 before the first step; the graph injects its input and constants while ``step + 1 ≤ L``
SCHEDULE_MODULE = "schedule"
SCHEDULE_STATE = "step"
SCHEDULE_KIND = "schedule"

FORMAT_UNROLLED = "unrolled"
FORMAT_STATEFUL = "stateful"
ONNX_FORMATS = (FORMAT_UNROLLED, FORMAT_STATEFUL)
ENCODINGS = ("direct", "sequence")

# ---------------------------------------------------------------------------------------------------------
# metadata_props keys (values are strings: plain for version, format, encoding, convention; JSON otherwise)

META_VERSION = "ann2snn.version"
META_T = "ann2snn.T"
META_FORMAT = "ann2snn.format"
META_ENCODING = "ann2snn.encoding"
META_SHIFT = "ann2snn.shift"
META_NEURON_KINDS = "ann2snn.neuron_kinds"
META_INPUT_SHAPE = "ann2snn.input_shape"
META_ARCH = "ann2snn.arch"
META_STATES = "ann2snn.states"  # stateful files only
META_CONVENTION = "ann2snn.convention"
META_SCHEDULE_LENGTH = "ann2snn.schedule_length"
#: JSON: {"pixel_max", "mean", "std", "dataset", "input_range"} (:class:`ann2snn.data.Preprocessing`), or null
META_PREPROCESSING = "ann2snn.preprocessing"
#: JSON int: bytes of the network's largest per-step tensor for one sample (float32), or null; the runtime sizes its
#: CPU micro-batches from it (:func:`ann2snn.runtime.micro_batch_size`)
META_ACTIVATION_BYTES = "ann2snn.activation_bytes"
METADATA_KEYS = (META_VERSION, META_T, META_FORMAT, META_ENCODING, META_SHIFT, META_NEURON_KINDS, META_INPUT_SHAPE,
                 META_ARCH, META_STATES, META_CONVENTION, META_SCHEDULE_LENGTH, META_PREPROCESSING,
                 META_ACTIVATION_BYTES)

# ---------------------------------------------------------------------------------------------------------
# the sidecar JSON. Version 2 added "convention" and "schedule_length" (version 1 files are rate networks), and
# later the optional "preprocessing" (absent or null: not recorded).

SIDECAR_FORMAT = "ann2snn.onnx-sidecar"
SIDECAR_VERSION = 2


def state_input_name(module: str, state: str) -> str:
    """The stateful graph's input for state ``state`` of operator ``module``: ``state.<module>.<state>``."""
    return f"{STATE_IN_PREFIX}{module}.{state}"


def state_output_name(module: str, state: str) -> str:
    """The stateful graph's output for the next value of that state: ``state_out.<module>.<state>``."""
    return f"{STATE_OUT_PREFIX}{module}.{state}"


def probe_name(module: str) -> str:
    """The verification output of operator ``module`` in an unrolled probe graph: ``count.<module>``."""
    return f"{PROBE_PREFIX}{module}"


def readout_counts(T: int, convention: str = "rate", schedule_length: int | None = None) -> list[int]:
    """``N(t)`` for t = 1..T: what the sum of ``logits_t`` over steps 1..t is divided by to give the logits."""
    schedule = TimeSchedule(convention, schedule_length)
    return [schedule.steps_counted(t) for t in range(1, int(T) + 1)]


@dataclass(frozen=True)
class StateSpec:
    """One state tensor of the stateful graph: its input and output names, owner, per-sample shape, initial value.

    The initial value is ``fill`` (every element) or ``values`` (nested lists of the per-sample shape); in JSON
    both are written under ``"init"`` as ``{"fill": x}`` or ``{"values": [...]}``.
    """

    module: str
    state: str
    kind: str
    shape: tuple[int, ...]
    fill: float | None = None
    values: Any = None

    def __post_init__(self) -> None:
        if (self.fill is None) == (self.values is None):
            raise Ann2SnnError(f"state {self.input!r} needs exactly one initial value: fill or values")

    @property
    def input(self) -> str:
        return state_input_name(self.module, self.state)

    @property
    def output(self) -> str:
        return state_output_name(self.module, self.state)

    @classmethod
    def from_initial(cls, module: str, state: str, kind: str, initial) -> StateSpec:
        """The spec of a state whose initial value for one sample is ``initial`` (a tensor or array)."""
        import numpy as np

        arr = np.asarray(initial.detach().cpu() if hasattr(initial, "detach") else initial, dtype=np.float32)
        flat = arr.reshape(-1)
        if flat.size and bool(np.all(flat == flat[0])):
            return cls(module, state, kind, tuple(arr.shape), fill=float(flat[0]))
        return cls(module, state, kind, tuple(arr.shape), values=arr.tolist())

    def to_json(self) -> dict[str, Any]:
        init = {"fill": self.fill} if self.fill is not None else {"values": self.values}
        return {"input": self.input, "output": self.output, "module": self.module, "state": self.state,
                "kind": self.kind, "shape": list(self.shape), "init": init}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> StateSpec:
        try:
            init = d["init"]
            spec = cls(str(d["module"]), str(d["state"]), str(d["kind"]), tuple(int(s) for s in d["shape"]),
                       fill=float(init["fill"]) if "fill" in init else None, values=init.get("values"))
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise Ann2SnnError(f"a state entry of the ann2snn metadata is malformed ({type(exc).__name__}: {exc}); "
                               "re-export the model") from None
        if d.get("input", spec.input) != spec.input or d.get("output", spec.output) != spec.output:
            raise Ann2SnnError(f"state {d.get('input')!r} does not follow the naming {STATE_IN_PREFIX}<module>.<state>"
                               f" / {STATE_OUT_PREFIX}<module>.<state>; re-export the model")
        return spec


@dataclass(frozen=True)
class ModelMetadata:
    """What an exported ONNX file says about itself (its ``metadata_props``), typed."""

    format: str
    T: int
    encoding: str = "direct"
    input_shape: tuple[int, ...] = ()
    shift: float | tuple[float, ...] | None = None
    neuron_kinds: tuple[str, ...] = ()
    arch: str | None = None
    convention: str = "rate"
    schedule_length: int | None = None
    states: tuple[StateSpec, ...] = field(default=(), repr=False)
    version: str = __version__
    preprocessing: Preprocessing | None = None
    activation_bytes: int | None = None

    def __post_init__(self) -> None:
        if self.format not in ONNX_FORMATS:
            raise Ann2SnnError(f"ONNX format must be one of {', '.join(ONNX_FORMATS)}, got {self.format!r}")
        if self.encoding not in ENCODINGS:
            raise Ann2SnnError(f"encoding must be one of {', '.join(ENCODINGS)}, got {self.encoding!r}")
        if not isinstance(self.T, int) or isinstance(self.T, bool) or self.T <= 0:
            raise Ann2SnnError(f"T must be a positive number of time steps, got {self.T!r}")
        TimeSchedule(self.convention, self.schedule_length)  # raises on a bad convention or schedule length

    @property
    def schedule(self) -> TimeSchedule:
        """The time convention the file was exported for."""
        return TimeSchedule(self.convention, self.schedule_length)

    @classmethod
    def for_network(cls, snn, *, T: int, format: str, encoding: str = "direct",
                    states: Sequence[StateSpec] = (), activation_bytes: int | None = None) -> ModelMetadata:
        """The metadata of ``snn`` (a :class:`~ann2snn.network.SpikingNetwork`) exported as ``format``."""
        info = snn.info
        shift = tuple(info.shift) if isinstance(info.shift, (list, tuple)) else info.shift
        pre = (info.qann_payload or {}).get("preprocessing")
        return cls(format=format, T=int(T), encoding=encoding, input_shape=tuple(snn.input_shape), shift=shift,
                   neuron_kinds=tuple(info.neuron_kinds), arch=info.arch, convention=info.convention,
                   schedule_length=info.schedule_length, states=tuple(states),
                   preprocessing=Preprocessing.from_json(pre) if pre is not None else None,
                   activation_bytes=activation_bytes)

    def to_props(self) -> dict[str, str]:
        """The ``metadata_props`` entries (key → string)."""
        props = {
            META_VERSION: self.version,
            META_T: str(self.T),
            META_FORMAT: self.format,
            META_ENCODING: self.encoding,
            META_SHIFT: json.dumps(list(self.shift) if isinstance(self.shift, tuple) else self.shift),
            META_NEURON_KINDS: json.dumps(list(self.neuron_kinds)),
            META_INPUT_SHAPE: json.dumps(list(self.input_shape)),
            META_ARCH: json.dumps(self.arch),
            META_CONVENTION: self.convention,
            META_SCHEDULE_LENGTH: json.dumps(self.schedule_length),
            META_PREPROCESSING: json.dumps(self.preprocessing.to_json() if self.preprocessing else None),
            META_ACTIVATION_BYTES: json.dumps(self.activation_bytes),
        }
        if self.format == FORMAT_STATEFUL:
            props[META_STATES] = json.dumps([s.to_json() for s in self.states])
        return props

    @classmethod
    def from_props(cls, props: Mapping[str, str], *, where: str = "the model") -> ModelMetadata:
        """Parse ``metadata_props``; files written before conventions existed read as ``rate``."""
        fmt = props.get(META_FORMAT)
        if fmt not in ONNX_FORMATS:
            raise Ann2SnnError(f"{where} is not an ONNX file exported by ann2snn ({META_FORMAT} is {fmt!r}); "
                               "export it with `ann2snn convert`")
        try:
            shift = json.loads(props.get(META_SHIFT, "null"))
            length = json.loads(props.get(META_SCHEDULE_LENGTH, "null"))
            pre = json.loads(props.get(META_PREPROCESSING, "null"))
            act = json.loads(props.get(META_ACTIVATION_BYTES, "null"))
            return cls(
                format=fmt, T=int(props[META_T]), encoding=props.get(META_ENCODING, "direct"),
                input_shape=tuple(int(d) for d in json.loads(props[META_INPUT_SHAPE])),
                shift=tuple(shift) if isinstance(shift, list) else shift,
                neuron_kinds=tuple(json.loads(props.get(META_NEURON_KINDS, "[]"))),
                arch=json.loads(props.get(META_ARCH, "null")),
                convention=props.get(META_CONVENTION, "rate"),
                schedule_length=int(length) if length is not None else None,
                states=tuple(StateSpec.from_json(s) for s in json.loads(props.get(META_STATES, "[]"))),
                version=props.get(META_VERSION, "unknown"),
                preprocessing=Preprocessing.from_json(pre, where=where) if pre is not None else None,
                activation_bytes=int(act) if act is not None else None,
            )
        except (KeyError, ValueError, TypeError) as exc:
            raise Ann2SnnError(f"{where} has incomplete or unreadable ann2snn metadata ({type(exc).__name__}: {exc}); "
                               "re-export it") from None


def read_metadata(source, *, where: str | None = None) -> ModelMetadata:
    """The :class:`ModelMetadata` of an exported file: an ``onnx.ModelProto``, an onnxruntime session, a path,
    ONNX bytes, or a ``metadata_props`` mapping. ``where`` names the file in error messages."""
    if isinstance(source, (str, os.PathLike)):
        where = where or repr(str(source))
        if not Path(source).is_file():
            raise Ann2SnnError(f"ONNX file {where} does not exist; check the path")
        import onnx

        try:
            source = onnx.load(str(source), load_external_data=False)
        except Exception as exc:
            raise Ann2SnnError(f"{where} is not a readable ONNX file ({type(exc).__name__})") from None
    elif isinstance(source, bytes):
        import onnx

        source = onnx.load_from_string(source)
    where = where or "the model"
    if isinstance(source, Mapping):
        return ModelMetadata.from_props(source, where=where)
    if hasattr(source, "get_modelmeta"):  # onnxruntime.InferenceSession
        return ModelMetadata.from_props(dict(source.get_modelmeta().custom_metadata_map), where=where)
    if hasattr(source, "metadata_props"):  # onnx.ModelProto
        return ModelMetadata.from_props({p.key: p.value for p in source.metadata_props}, where=where)
    raise Ann2SnnError(f"read_metadata takes an ONNX model, session, path or bytes, got {type(source).__name__}")


def _readout_text(meta: ModelMetadata, what: str) -> str:
    if meta.convention == "exact":
        return f"sum of {what} over steps 1..t divided by min(t, L), L = {meta.schedule_length}"
    return f"sum of {what} over steps 1..t divided by t (running mean)"


def _preprocessing_json(pre: Preprocessing | None) -> dict[str, Any] | None:
    if pre is None:
        return None
    return {**pre.to_json(), "text": f"how {INPUT} is made from an image: {pre.describe()}"}


def build_sidecar(meta: ModelMetadata, *, files: Mapping[str, str],
                  verification: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The sidecar JSON (as a dict) for the files ``files`` (``{"unrolled"|"stateful": file name}``) of one export.

    ``meta`` describes the export (T, encoding, convention, ...); its ``states`` are the stateful graph's.
    """
    unknown = set(files) - set(ONNX_FORMATS)
    if unknown:
        raise Ann2SnnError(f"sidecar files must be keyed by {', '.join(ONNX_FORMATS)}, got {sorted(unknown)}")
    exact = meta.convention == "exact"
    unrolled = {"outputs": {
        LOGITS: f"[{BATCH}, K] logits after T steps",
        LOGITS_PER_STEP: f"[T, {BATCH}, K] logits after t = 1..T steps: " + _readout_text(meta, "the outputs"),
    }}
    stateful = {
        "output": LOGITS_T,
        "readout": "logits after t steps = " + _readout_text(meta, LOGITS_T),
        "input_schedule": f"feed {INPUT} at every step" + (
            f"; the graph counts steps in {state_input_name(SCHEDULE_MODULE, SCHEDULE_STATE)} and stops its "
            "constants (and a direct input) after step L" if exact else ""),
        "state_naming": f"input {state_input_name('<module>', '<state>')}, "
                        f"output {state_output_name('<module>', '<state>')}",
        "states": [s.to_json() for s in meta.states],
    }
    return {
        "format": SIDECAR_FORMAT, "version": SIDECAR_VERSION, "ann2snn_version": meta.version,
        "T": meta.T, "encoding": meta.encoding, "convention": meta.convention,
        "schedule_length": meta.schedule_length,
        "input": {"name": INPUT, "shape": (["T"] if meta.encoding == "sequence" else []) + [BATCH, *meta.input_shape]},
        "shift": list(meta.shift) if isinstance(meta.shift, tuple) else meta.shift,
        "neuron_kinds": list(meta.neuron_kinds), "arch": meta.arch,
        "preprocessing": _preprocessing_json(meta.preprocessing),
        "files": dict(files),
        FORMAT_UNROLLED: unrolled if FORMAT_UNROLLED in files else None,
        FORMAT_STATEFUL: stateful if FORMAT_STATEFUL in files else None,
        "verification": dict(verification) if verification else None,
    }
