"""NIR export (https://neuroir.org): a converted rate-mode network as a ``nir.NIRGraph``, written with ``nir.write``.

Examples:
    >>> graph = build_nir(snn, neuron="integrator")                  # lossless form
    >>> res = ann2snn.export(snn, "digits.snn.nir", format="nir", nir={"approximate": True})  # nir.IF + sidecar
    >>> logits_per_t = run_nir("digits.snn.nir", x, T=4)            # [T, B, K], NIR semantics, via nirtorch

One NIR node (or a small group) per node of the spiking fx graph, chosen by its kind
(:func:`ann2snn.passes.graph.classify`) from :data:`NIR_STATELESS` and, for stateful operators, by ``module.kind``
from :data:`NIR_STATEFUL`:

- ``linear``: Conv1d/Conv2d → ``nir.Conv1d``/``nir.Conv2d`` (grouped ones with their dense, block-diagonal weight:
  nir 1.0.8's type check rejects ``groups > 1``); Linear → ``nir.Affine`` (``nir.Linear`` without bias);
- ``affine`` (``ann2snn.Affine``, ``w ⊙ x + b``): ``nir.Scale`` without bias, a 1×1 ``nir.Conv1d/2d`` with w on
  the diagonal when w and b are per channel, ``nir.Affine`` with a diagonal matrix on a vector;
- ``pool``: AvgPool2d, AdaptiveAvgPool2d and a spatial mean (that divide) → ``nir.AvgPool2d``, or with
  ``pool="sum"`` → ``nir.SumPool2d`` and its ``1/k²`` folded into the next linear layer (else a ``nir.Scale``);
- ``flatten``/``reshape`` → ``nir.Flatten`` (dimensions counted without the batch, as NIR's shapes are);
- ``add`` → fan-in: the edges of both operands go into the consumer, which sums its inputs (NIR, nirtorch);
- ``if`` → ``nir.IF`` (``neuron="if"``, an approximation, see below) or ``nir.I`` + ``nir.Threshold`` with a
  ``nir.Scale(−θ)`` feedback edge (``neuron="integrator"``, exact);
- refused, one line each: ``cat`` (NIR sums inputs, it has no concatenation), bipolar neurons (no NIR node emits
  −1 spikes or bounds a spike count), the spiking max-pool (no NIR node), the exact time convention (NIR has no
  input schedule), anything else without a NIR node.

**The IF neuron.** ann2snn's IF neuron (threshold θ, which is 1 after threshold folding) starts at ``v0 = φ·θ``,
fires when ``v ≥ θ`` and subtracts θ (soft reset). NIR's ``IF`` starts at 0 (it has no initial-state field), fires
when ``v > v_threshold`` and sets ``v = v_reset`` (hard reset; up to nir 1.0.5 it subtracted the threshold, this
module needs nir ≥ 1.0.8). The comparison maps exactly: ``v_threshold`` is the
largest float32 below θ, so ``v > v_threshold`` is ``v ≥ θ`` for every float32 v. The reset and v0 do not: a
shifted threshold, a scaled input (``r``) or a bias reproduce at most the first spike (with subtractive reset the
threshold must equal the amount subtracted; a bias adds ``t·b``, equal to v0 at one step only), and a hard reset
discards the residual ``v − θ``. So ``neuron="if"`` is refused unless ``approximate=True``, and every ``IF`` node
and the graph metadata record the differences.

The **integrator form** is exact: ``I`` holds ``w = v − φθ`` (so it may start at 0), ``Threshold`` fires at
``w ≥ θ(1 − φ)`` (again written as the largest float32 below), and the spike, scaled by ``−θ``, flows back into
``I`` — the subtractive reset, delivered at the next step as nirtorch runs a recurrent edge; in continuous time it is
the instantaneous reset of NIR's own description. It needs a consumer that runs ``I``, ``Threshold`` and recurrent
edges: :func:`run_nir` does (nirtorch with NIR semantics); snnTorch 1.0 and Sinabs 3.1 import neither node.

Values: the graph's output at step t is the last node's instantaneous output; the logits after t steps are its mean
over steps 1..t (rate convention), as in :meth:`ann2snn.SpikingNetwork.simulate`. The input is given at every step
(the image itself under direct encoding).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from torch import fx, nn

from ann2snn._version import __version__
from ann2snn.errors import Ann2SnnError, UnsupportedNodeError
from ann2snn.layers import Affine
from ann2snn.neurons import IFNeuron, StatefulModule

__all__ = ["NirOptions", "build_nir", "run_nir", "load_nir", "export_nir", "approximations", "verify_nir",
           "nir_sidecar", "NEURON_FORMS", "POOL_FORMS", "NIR_STATELESS", "NIR_STATEFUL", "FORMAT_NIR",
           "NIR_SIDECAR_FORMAT", "NIR_SIDECAR_VERSION", "META"]

FORMAT_NIR = "nir"
NEURON_FORMS = ("if", "integrator")
POOL_FORMS = ("avg", "sum")
NIR_SIDECAR_FORMAT = "ann2snn.nir-sidecar"
NIR_SIDECAR_VERSION = 1
#: prefix of every metadata key ann2snn writes into a NIR graph or node
META = "ann2snn."

_IF_RESET = ("reset: ann2snn's IF subtracts θ at a spike (soft reset, the residual v − θ is kept); nir.IF sets v to "
             "v_reset = 0 (hard reset)")
_IF_V0 = ("initial membrane: ann2snn's IF starts at v0 = φ·θ; NIR has no initial-state field, so nir.IF starts at 0 "
          "and its first spikes come later")


#: the oldest nir this module is written for: IF with v_reset (1.0.6) and metadata on every node (1.0.8)
NIR_MIN_VERSION = (1, 0, 8)


def _nir():
    try:
        import nir
    except ImportError:
        raise Ann2SnnError("NIR export needs the `nir` package: pip install 'ann2snn[nir]'") from None
    try:
        version = tuple(int(p) for p in str(nir.version).split(".")[:3])
    except ValueError:
        version = NIR_MIN_VERSION  # a development build: assume it is recent
    if version < NIR_MIN_VERSION:
        need = ".".join(map(str, NIR_MIN_VERSION))
        raise Ann2SnnError(f"NIR export needs nir>={need}, found {nir.version}: pip install -U 'nir>={need}'")
    return nir


def _f32(t) -> np.ndarray:
    arr = t.detach().cpu().numpy() if isinstance(t, torch.Tensor) else np.asarray(t)
    return np.ascontiguousarray(arr, dtype=np.float32)


def _below(a: np.ndarray) -> np.ndarray:
    """The largest float32 below each element: ``v > _below(θ)`` is ``v ≥ θ`` for every float32 ``v``."""
    a = np.asarray(a, dtype=np.float32)
    return np.nextafter(a, np.float32(-np.inf), dtype=np.float32)


@dataclass(frozen=True)
class NirOptions:
    """How :func:`ann2snn.export` writes NIR (``format="nir"``; CLI ``--nir-neuron``, ``--nir-pool``,
    ``--nir-approximate``); see :func:`build_nir`."""

    neuron: str = "if"
    pool: str = "avg"
    approximate: bool = False

    def __post_init__(self) -> None:
        if self.neuron not in NEURON_FORMS:
            raise Ann2SnnError(f"neuron must be one of {', '.join(NEURON_FORMS)}, got {self.neuron!r} "
                               "(CLI --nir-neuron)")
        if self.pool not in POOL_FORMS:
            raise Ann2SnnError(f"pool must be one of {', '.join(POOL_FORMS)}, got {self.pool!r} (CLI --nir-pool)")

    @classmethod
    def of(cls, value) -> NirOptions:
        """``value`` as options: None (defaults), a NirOptions, or a mapping of its fields."""
        if value is None or isinstance(value, cls):
            return value or cls()
        try:
            return cls(**dict(value))
        except TypeError as exc:
            raise Ann2SnnError(f"NIR options take neuron, pool and approximate ({exc})") from None


@dataclass
class _Builder:
    """The NIR graph under construction, with the NIR sources of every fx value (a value may be a sum of several)."""

    nir: Any
    gm: fx.GraphModule
    shapes: dict
    neuron: str
    approximate: bool
    pool: str = "avg"

    def __post_init__(self) -> None:
        self.modules = dict(self.gm.named_modules())
        self.nodes: dict[str, Any] = {}
        self.edges: list[tuple[str, str]] = []
        self.values: dict[fx.Node, list[str]] = {}
        #: value = gain × (sum of its sources); a sum pool leaves 1/k² here for the next linear layer to absorb
        self.gain: dict[fx.Node, float] = {}
        self.approx: dict[str, list[str]] = {}

    def name(self, hint: str) -> str:
        name, i = hint, 1
        while name in self.nodes:
            name, i = f"{hint}_{i}", i + 1
        return name

    def add(self, hint: str, node, sources: list[str]) -> str:
        """Add ``node`` fed by the sum of ``sources``; returns its name."""
        name = self.name(hint)
        self.nodes[name] = node
        if len(set(sources)) != len(sources):
            raise Ann2SnnError(f"NIR node {name!r} would receive the same input twice; NIR sums edges but allows "
                               "one edge per pair of nodes")
        self.edges.extend((s, name) for s in sources)
        return name

    def raw(self, node: fx.Node) -> tuple[list[str], float]:
        """``(sources, gain)``: the value is ``gain`` times the sum of the sources."""
        if node not in self.values:
            raise UnsupportedNodeError(node, "its value has no NIR form (it is not a tensor of the spiking network)")
        return self.values[node], self.gain.get(node, 1.0)

    def sources(self, node: fx.Node) -> list[str]:
        """The NIR nodes whose sum is the value (a pending gain becomes a ``nir.Scale`` node first)."""
        src, gain = self.raw(node)
        if gain != 1.0:
            scale = np.full(self.shape(node), gain, np.float32)
            self.values[node], self.gain[node] = [self.add(f"{node.name}_scale", self.nir.Scale(scale=scale), src)], 1.0
        return self.values[node]

    def shape(self, node: fx.Node) -> tuple[int, ...]:
        return tuple(self.shapes[node])

    def approximation(self, what: str, node_name: str) -> None:
        self.approx.setdefault(what, []).append(node_name)


# ---------------------------------------------------------------------------------------------------------
# stateless operators: emit(b, node, module) -> the NIR names whose sum is the node's value


def _linear(b: _Builder, node: fx.Node, m: nn.Module) -> list[str]:
    (src, gain), in_shape = b.raw(node.args[0]), b.shape(node.args[0])
    weight = _f32(m.weight) * np.float32(gain)  # W·(g·x) = (g·W)·x: a sum pool's 1/k² lands here
    if isinstance(m, nn.Linear):
        if len(in_shape) != 1:
            raise UnsupportedNodeError(node, f"NIR's Affine/Linear take a vector, this Linear gets shape {in_shape}; "
                                       "flatten its input first")
        out = b.nir.Affine(weight, _f32(m.bias)) if m.bias is not None else b.nir.Linear(weight)
        return [b.add(node.name, out, src)]
    if not isinstance(m, (nn.Conv1d, nn.Conv2d)):
        raise UnsupportedNodeError(node, f"{type(m).__name__} has no NIR node; use Conv1d/Conv2d/Linear")
    if m.padding_mode != "zeros" or isinstance(m.padding, str):
        raise UnsupportedNodeError(node, "only zero padding given as numbers is exported to NIR; set padding=(p, p)")
    bias = _f32(m.bias) if m.bias is not None else np.zeros(m.out_channels, np.float32)
    meta = {META + "groups": int(m.groups)} if m.groups > 1 else {}
    weight = _ungrouped(weight, int(m.groups))
    if isinstance(m, nn.Conv1d):
        out = b.nir.Conv1d(input_shape=int(in_shape[1]), weight=weight, stride=int(m.stride[0]),
                           padding=int(m.padding[0]), dilation=int(m.dilation[0]), groups=1, bias=bias, metadata=meta)
    else:
        out = b.nir.Conv2d(input_shape=tuple(int(s) for s in in_shape[1:]), weight=weight,
                           stride=tuple(int(s) for s in m.stride), padding=tuple(int(p) for p in m.padding),
                           dilation=tuple(int(d) for d in m.dilation), groups=1, bias=bias, metadata=meta)
    return [b.add(node.name, out, src)]


def _ungrouped(weight: np.ndarray, groups: int) -> np.ndarray:
    """A grouped convolution's weight ``[C_out, C_in/g, ...]`` as the equal dense one ``[C_out, C_in, ...]`` (zeros
    off the diagonal blocks): nir 1.0.8 reads a Conv's input channels as ``weight.shape[1]``, so its type check
    rejects ``groups > 1``."""
    if groups == 1:
        return weight
    c_out, c_in_g = weight.shape[:2]
    dense = np.zeros((c_out, c_in_g * groups, *weight.shape[2:]), np.float32)
    per = c_out // groups
    for g in range(groups):
        dense[g * per:(g + 1) * per, g * c_in_g:(g + 1) * c_in_g] = weight[g * per:(g + 1) * per]
    return dense


def _per_sample(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor:
    """A buffer broadcastable to ``[B, *shape]`` (or to ``shape``) at the full per-sample shape."""
    t = t.detach().float()
    return torch.broadcast_to(t, (1, *shape))[0] if t.dim() > len(shape) else torch.broadcast_to(t, shape)


def _per_channel(t: torch.Tensor, shape: tuple[int, ...]) -> torch.Tensor | None:
    """``t`` (broadcastable to ``shape`` = ``(C, ...)``) as ``[C]`` when it is constant over the other dims."""
    full = _per_sample(t, shape)
    flat = full.reshape(shape[0], -1)
    return flat[:, 0].clone() if bool((flat == flat[:, :1]).all()) else None


def _affine(b: _Builder, node: fx.Node, m: Affine) -> list[str]:
    src, shape = b.sources(node.args[0]), b.shape(node)
    if m.bias is None:
        return [b.add(node.name, b.nir.Scale(_f32(_per_sample(m.weight, shape))), src)]
    if len(shape) == 1:
        w, bias = _per_sample(m.weight, shape), _per_sample(m.bias, shape)
        return [b.add(node.name, b.nir.Affine(_f32(torch.diag(w)), _f32(bias)), src)]
    w, bias = _per_channel(m.weight, shape), _per_channel(m.bias, shape)
    if w is None or bias is None or len(shape) not in (2, 3):
        raise UnsupportedNodeError(node, "an element-wise Affine with a bias that varies within a channel has no NIR "
                                   "node (NIR has Scale, and Affine on vectors only)")
    diag = _f32(torch.diag(w)).reshape(shape[0], shape[0], *([1] * (len(shape) - 1)))  # a 1×1 conv, w on the diagonal
    if len(shape) == 2:
        out = b.nir.Conv1d(input_shape=int(shape[1]), weight=diag, stride=1, padding=0, dilation=1, groups=1,
                           bias=_f32(bias))
    else:
        out = b.nir.Conv2d(input_shape=tuple(shape[1:]), weight=diag, stride=1, padding=0, dilation=1, groups=1,
                           bias=_f32(bias))
    return [b.add(node.name, out, src)]


def _pair(v) -> tuple[int, int]:
    return tuple(int(x) for x in v) if isinstance(v, (tuple, list)) else (int(v), int(v))


def _pool_geometry(node: fx.Node, m, in_shape, out_shape) -> tuple[tuple, tuple, tuple]:
    """``(kernel, stride, padding)`` of an average pool over the two last dims, or an error naming the node."""
    if len(in_shape) != 3:
        raise UnsupportedNodeError(node, "NIR has average pooling in 2-D only (AvgPool2d); this pool is "
                                   f"{len(in_shape) - 1}-D")
    if isinstance(m, nn.AvgPool2d):
        if m.ceil_mode or m.divisor_override:
            raise UnsupportedNodeError(node, "avg-pool ceil_mode / divisor_override has no NIR form; remove it")
        pad = _pair(m.padding)
        if any(pad) and not m.count_include_pad:
            raise UnsupportedNodeError(node, "avg-pool with padding and count_include_pad=False has no NIR form")
        return _pair(m.kernel_size), _pair(m.stride if m.stride is not None else m.kernel_size), pad
    if isinstance(m, nn.AdaptiveAvgPool2d):
        out = out_shape[1:]
        if any(i % o for i, o in zip(in_shape[1:], out)):
            raise UnsupportedNodeError(node, "adaptive pooling to a size that does not divide the input has no NIR "
                                       "form; use AvgPool2d or pool to 1")
        k = tuple(i // o for i, o in zip(in_shape[1:], out))
        return k, k, (0, 0)
    raise UnsupportedNodeError(node, "this pooling has no NIR node; use nn.AvgPool2d or nn.AdaptiveAvgPool2d")


def _is_spatial_mean(node: fx.Node, rank: int) -> bool:
    if node.target not in (torch.mean, "mean"):
        return False
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    dims = [dims] if isinstance(dims, int) else list(dims or ())
    return rank == 4 and sorted(d % rank for d in dims) == [2, 3]


def _pool(b: _Builder, node: fx.Node, m) -> list[str]:
    src, in_shape, out_shape = b.sources(node.args[0]), b.shape(node.args[0]), b.shape(node)
    mean = node.op != "call_module" and _is_spatial_mean(node, len(in_shape) + 1)
    if mean:  # x.mean((2, 3)): a pool over the whole map, then [C, 1, 1] -> [C] unless keepdim
        k, s, p = tuple(in_shape[1:]), tuple(in_shape[1:]), (0, 0)
    else:
        k, s, p = _pool_geometry(node, m if node.op == "call_module" else None, in_shape, out_shape)
    got = (in_shape[0], *((i + 2 * pp - kk) // ss + 1 for i, kk, ss, pp in zip(in_shape[1:], k, s, p)))
    if got != (out_shape if not mean or len(out_shape) == 3 else (in_shape[0], 1, 1)):
        raise UnsupportedNodeError(node, f"NIR's AvgPool2d would give shape {got}, not {out_shape}")
    geometry = {"kernel_size": np.array(k), "stride": np.array(s), "padding": np.array(p)}
    if b.pool == "sum" and not any(p):  # a sum pool, its 1/k² left to the next linear layer (or a Scale)
        b.gain[node] = 1.0 / float(np.prod(k))
        name = b.add(node.name, b.nir.SumPool2d(**geometry), src)
    else:
        name = b.add(node.name, b.nir.AvgPool2d(**geometry), src)
    if mean and len(out_shape) == 1:
        name = b.add(f"{node.name}_flat", b.nir.Flatten(input_type={"input": np.array(got)}, start_dim=0,
                                                        end_dim=-1), [name])
    return [name]


def _flattened(shape: tuple[int, ...], start: int, end: int) -> tuple[int, ...]:
    """``shape`` with dims ``start..end`` (``end = -1``: to the last) merged, as NIR's Flatten computes it."""
    stop = len(shape) if end == -1 else end + 1
    return (*shape[:start], int(np.prod(shape[start:stop])), *shape[stop:])


def _flatten(b: _Builder, node: fx.Node, m) -> list[str]:
    (src, gain), in_shape, out_shape = b.raw(node.args[0]), b.shape(node.args[0]), b.shape(node)
    b.gain[node] = gain
    if in_shape == out_shape:
        return src
    for start in range(len(in_shape)):
        for end in [*range(start + 1, len(in_shape) - 1), -1]:
            if _flattened(in_shape, start, end) == out_shape:
                flat = b.nir.Flatten(input_type={"input": np.array(in_shape)}, start_dim=start, end_dim=end)
                return [b.add(node.name, flat, src)]
    raise UnsupportedNodeError(node, f"this reshape {in_shape} -> {out_shape} is not a flatten; NIR has Flatten only")


def _add(b: _Builder, node: fx.Node, m) -> list[str]:
    operands = list(node.args[:2])
    if node.kwargs.get("alpha", 1) != 1 or len(node.args) != 2 or not all(isinstance(a, fx.Node) for a in operands):
        raise UnsupportedNodeError(node, "only a + b of two tensors is exported to NIR (it becomes two edges into "
                                   "the consumer); NIR has no node that adds a constant")
    (sa, ga), (sb, gb) = b.raw(operands[0]), b.raw(operands[1])
    if ga == gb:
        b.gain[node] = ga
        return sa + sb
    return b.sources(operands[0]) + b.sources(operands[1])


def _identity(b: _Builder, node: fx.Node, m) -> list[str]:
    src, b.gain[node] = b.raw(node.args[0])
    return src


def _cat(b: _Builder, node: fx.Node, m) -> list[str]:
    raise UnsupportedNodeError(node, "torch.cat has no NIR node (edges into a NIR node are summed, never "
                               "concatenated); NIR export needs a network without cat")


def _layout(b: _Builder, node: fx.Node, m) -> list[str]:
    raise UnsupportedNodeError(node, "NIR has no node that permutes, slices or gathers a tensor (only Flatten); "
                               "NIR export needs a network whose reshapes are flattens")


def _token(b: _Builder, node: fx.Node, m) -> list[str]:
    raise UnsupportedNodeError(node, "a class token is concatenated to the tokens, and NIR has no concatenation; "
                               "NIR export needs a network without a class token")


#: node kind -> emitter of its NIR node(s) or of a refusal; every stateless kind of the operator registry
NIR_STATELESS: dict[str, Callable] = {
    "linear": _linear,
    "affine": _affine,
    "pool": _pool,
    "flatten": _flatten,
    "reshape": _flatten,
    "add": _add,
    "identity": _identity,
    "cat": _cat,
    "layout": _layout,
    "token": _token,
}


# ---------------------------------------------------------------------------------------------------------
# stateful operators: the IF neuron in two forms; everything else refused with its reason


def _if_common(node: fx.Node, m: IFNeuron, shape) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    theta = _f32(_per_sample(m.threshold, shape))
    v0 = m.shift * theta
    meta = {META + "module": str(node.target), META + "kind": "if", META + "reset": "subtract",
            META + "v0": float(v0.flat[0]) if np.all(v0 == v0.flat[0]) else json.dumps(v0.tolist()),
            META + "shift": float(m.shift)}
    return theta, v0, meta


def _if_neuron(b: _Builder, node: fx.Node, m: IFNeuron) -> list[str]:
    shape = b.shape(node)
    theta, v0, meta = _if_common(node, m, shape)
    src = b.sources(node.args[0])
    if b.neuron == "integrator":
        return _if_integrator(b, node, theta, v0, meta, src)
    if not b.approximate:
        raise UnsupportedNodeError(node, "NIR's IF resets to v_reset and starts at 0, ann2snn's IF subtracts θ and "
                                   f"starts at φ·θ = {float(v0.flat[0]):g}: not exact. Pass approximate=True (CLI "
                                   "--nir-approximate) to write nir.IF anyway, or neuron='integrator' (CLI "
                                   "--nir-neuron integrator) for the exact nir.I + nir.Threshold form")
    meta[META + "threshold"] = "fires at v >= θ: v_threshold is the largest float32 below θ (NIR fires at v > it)"
    meta[META + "approximation"] = f"{_IF_RESET}; {_IF_V0}"
    out = b.nir.IF(r=np.ones(shape, np.float32), v_threshold=_below(theta), v_reset=np.zeros(shape, np.float32),
                   metadata=meta)
    name = b.add(node.name, out, src)
    b.approximation(_IF_RESET, name)
    b.approximation(_IF_V0, name)
    return _scaled_spikes(b, name, theta)


def _if_integrator(b: _Builder, node: fx.Node, theta, v0, meta, src) -> list[str]:
    """``I`` (w = v − v0) → ``Threshold`` (w ≥ θ − v0) → spikes; spikes × (−θ) back into ``I`` (soft reset)."""
    shape = theta.shape
    meta = {**meta, META + "form": "integrator",
            META + "threshold": "fires at w >= θ - v0 (w = v - v0): threshold is the largest float32 below θ - v0"}
    v_name = b.add(f"{node.name}_v", b.nir.I(r=np.ones(shape, np.float32), metadata={**meta, META + "role": "v"}),
                   src)
    spikes = b.add(node.name, b.nir.Threshold(threshold=_below(theta - v0), metadata={**meta, META + "role": "spikes"}),
                   [v_name])
    reset = b.add(f"{node.name}_reset", b.nir.Scale(scale=-theta, metadata={**meta, META + "role": "reset"}), [spikes])
    b.edges.append((reset, v_name))  # recurrent: the spikes of step t reach the integrator at step t + 1
    return _scaled_spikes(b, spikes, theta)


def _scaled_spikes(b: _Builder, spikes: str, theta: np.ndarray) -> list[str]:
    """The neuron's output θ·s: the spikes themselves when θ = 1 (always, after threshold folding)."""
    if np.all(theta == 1.0):
        return [spikes]
    return [b.add(f"{spikes}_value", b.nir.Scale(scale=theta), [spikes])]


#: StatefulModule.kind -> emitter; kinds absent here are refused with the reason in _REFUSED
NIR_STATEFUL: dict[str, Callable] = {"if": _if_neuron}

_REFUSED = {
    "bipolar": "bipolar (signed or bounded) neurons emit −1 spikes and keep a spike count; NIR has no such neuron. "
               "NIR export needs an unsigned QCFS network converted with --mode rate",
    "maxpool": "the spiking max-pool (max of accumulated spike counts) has no NIR node; use average pooling "
               "(ann2snn prepare replaces max-pool by average pooling) or convert with --maxpool error to find it",
    "multibit": "a multi-bit neuron emits up to D spikes a step; NIR's neurons emit one. NIR export needs a network "
                "converted without --max-spikes",
    "compensated": "a compensated operator (product, softmax, LayerNorm, GELU of running sums) has no NIR node; "
                   "NIR export of spiking transformers is not supported",
}


def _stateful(b: _Builder, node: fx.Node, m: StatefulModule) -> list[str]:
    emit = NIR_STATEFUL.get(m.kind)
    if emit is None:
        raise UnsupportedNodeError(node, _REFUSED.get(m.kind, f"stateful operator kind {m.kind!r} has no NIR node; "
                                   "add one to ann2snn.exporters.nir.NIR_STATEFUL"))
    return emit(b, node, m)


# ---------------------------------------------------------------------------------------------------------
# the graph


def _check_network(snn) -> None:
    compensated = [name for name, m in snn.stateful() if m.kind == "compensated"]
    if compensated:
        raise Ann2SnnError(f"NIR has no primitive for operators on spike values (the compensated product, softmax, "
                           f"LayerNorm or GELU at {', '.join(compensated[:3])}{', ...' if len(compensated) > 3 else ''}"
                           "): a spiking transformer exports to ONNX only (--format both)")
    if snn.schedule.exact:
        raise Ann2SnnError("NIR has no input schedule: an exact-mode network (input and constants for the first L "
                           "steps only) cannot be written to NIR; convert with convention='rate' (CLI --mode rate)")


def build_nir(snn, *, neuron: str = "if", approximate: bool = False, pool: str = "avg", T: int | None = None):
    """The ``nir.NIRGraph`` of a converted rate-mode network (one step of it; run it T times).

    Args:
        snn: a :class:`~ann2snn.SpikingNetwork` (``convention="rate"``).
        neuron: ``"if"`` (``nir.IF`` nodes; not exact, so refused unless ``approximate``) or ``"integrator"``
            (``nir.I`` + ``nir.Threshold`` + a ``nir.Scale`` reset loop per neuron; exact).
        approximate: accept ``nir.IF``'s differences (hard reset, membrane starting at 0); they are recorded in each
            node's metadata and in the graph's (``ann2snn.approximations``, see :func:`approximations`).
        pool: ``"avg"`` (``nir.AvgPool2d``) or ``"sum"`` (``nir.SumPool2d``, its ``1/k²`` folded into the next
            linear layer's weights, else a ``nir.Scale``; for consumers with sum pooling only, e.g. Sinabs).
        T: the number of steps recorded in the metadata (default ``snn.T``).

    Raises :class:`~ann2snn.errors.UnsupportedNodeError` (one line: the node and what to do) for what NIR cannot
    express. Example:

        >>> g = build_nir(ann2snn.convert(qann, T=4), neuron="integrator")
        >>> sorted({type(n).__name__ for n in g.nodes.values()})
        ['AvgPool2d', 'Affine', 'Conv2d', 'Flatten', 'I', 'Input', 'Output', 'Scale', 'Threshold']
    """
    from ann2snn.exporters.common import check_graph_module, node_shapes
    from ann2snn.passes.graph import classify

    NirOptions(neuron, pool, approximate)  # validates
    _check_network(snn)
    gm = snn.graph_module
    check_graph_module(gm)
    nir = _nir()
    b = _Builder(nir, gm, node_shapes(gm, snn.input_shape), neuron, approximate, pool)
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            b.values[node] = [b.add("input", nir.Input(input_type={"input": np.array(b.shape(node))}), [])]
        elif node.op == "output":
            _output(b, node.args[0])
        else:
            m = b.modules.get(node.target) if node.op == "call_module" else None
            if isinstance(m, StatefulModule):
                b.values[node] = _stateful(b, node, m)
                continue
            kind = classify(node, b.modules)
            emit = NIR_STATELESS.get(kind)
            if emit is None:
                raise UnsupportedNodeError(node, f"node kind {kind!r} has no NIR node; add an emitter to "
                                           "ann2snn.exporters.nir.NIR_STATELESS")
            b.values[node] = emit(b, node, m)
    try:  # nir checks that every edge joins matching shapes
        return nir.NIRGraph(nodes=b.nodes, edges=b.edges, metadata=_graph_metadata(snn, b, T=T))
    except (ValueError, AssertionError) as exc:
        raise Ann2SnnError(f"the nir package rejects the graph ann2snn built ({exc}); please report it") from exc


def _output(b: _Builder, value: fx.Node) -> None:
    src = b.sources(value)
    if len(src) > 1:  # a sum straight into the output: nirtorch sums a node's inputs, not the Output's
        src = [b.add("output_sum", b.nir.Scale(scale=np.ones(b.shape(value), np.float32)), src)]
    b.add("output", b.nir.Output(output_type={"output": np.array(b.shape(value))}), src)


def _approximation_list(b: _Builder) -> list[str]:
    return [f"{what} (nodes: {', '.join(names)})" for what, names in b.approx.items()]


def _graph_metadata(snn, b: _Builder, *, T: int | None) -> dict[str, Any]:
    info = snn.info
    return {
        META + "version": __version__,
        META + "T": int(snn.T if T is None else T),
        META + "convention": info.convention,
        META + "neuron_form": b.neuron,
        META + "pool_form": b.pool,
        META + "input_shape": json.dumps(list(snn.input_shape)),
        META + "arch": json.dumps(info.arch),
        META + "readout": "logits after t steps = mean of the output over steps 1..t",
        META + "input": "give the input at every step (the image itself under direct encoding)",
        META + "approximations": json.dumps(_approximation_list(b)),
    }


def approximations(graph) -> list[str]:
    """What a NIR graph written by ann2snn computes differently from the simulator (empty when exact)."""
    raw = (getattr(graph, "metadata", None) or {}).get(META + "approximations", "[]")
    return list(json.loads(raw.decode() if isinstance(raw, bytes) else str(raw)))


# ---------------------------------------------------------------------------------------------------------
# running a NIR graph (NIR semantics, discrete time dt = 1) with nirtorch


class _IF(nn.Module):
    """nir.IF: ``v += r·x; z = [v > v_threshold]; v = v_reset where z``; output z; v starts at 0."""

    def __init__(self, node) -> None:
        super().__init__()
        for k in ("r", "v_threshold", "v_reset"):
            self.register_buffer(k, torch.as_tensor(np.asarray(getattr(node, k), np.float32)))

    def forward(self, x, state=None):
        v = (torch.zeros_like(x) if state is None else state) + self.r * x
        z = v > self.v_threshold
        return z.to(x.dtype), torch.where(z, self.v_reset.expand_as(v), v)


class _I(nn.Module):
    """nir.I: ``v += r·x``; output v; v starts at 0."""

    def __init__(self, node) -> None:
        super().__init__()
        self.register_buffer("r", torch.as_tensor(np.asarray(node.r, np.float32)))

    def forward(self, x, state=None):
        v = (torch.zeros_like(x) if state is None else state) + self.r * x
        return v, v


class _Elementwise(nn.Module):
    """nir.Threshold (``[x > threshold]``) and nir.Scale (``x ⊙ scale``)."""

    def __init__(self, values, threshold: bool) -> None:
        super().__init__()
        self.threshold = threshold
        self.register_buffer("values", torch.as_tensor(np.asarray(values, np.float32)))

    def forward(self, x):
        return (x > self.values).to(x.dtype) if self.threshold else x * self.values


def _ints(v, n: int) -> tuple[int, ...]:
    """An int or a sequence of ints (numpy arrays from a file included) as an ``n``-tuple."""
    flat = [int(x) for x in np.atleast_1d(np.asarray(v))]
    return tuple(flat * n) if len(flat) == 1 else tuple(flat)


def _conv(node) -> nn.Module:
    w = torch.as_tensor(np.asarray(node.weight, np.float32))
    nd = w.dim() - 2
    cls = nn.Conv1d if nd == 1 else nn.Conv2d
    pad = node.padding if isinstance(node.padding, str) else _ints(node.padding, nd)
    m = cls(w.shape[1] * int(node.groups), w.shape[0], tuple(w.shape[2:]), stride=_ints(node.stride, nd),
            padding=pad, dilation=_ints(node.dilation, nd), groups=int(node.groups))
    m.weight.data, m.bias.data = w, torch.as_tensor(np.asarray(node.bias, np.float32))
    return m


def _dense(node) -> nn.Module:
    w = torch.as_tensor(np.asarray(node.weight, np.float32))
    bias = getattr(node, "bias", None)
    m = nn.Linear(w.shape[1], w.shape[0], bias=bias is not None)
    m.weight.data = w
    if bias is not None:
        m.bias.data = torch.as_tensor(np.asarray(bias, np.float32))
    return m


def _node_map() -> dict:
    """NIR node type -> torch module with NIR semantics. Replaces nirtorch 2.6's defaults where they are wrong for
    these graphs: its Affine drops the bias (NIRTorch#55), its Flatten counts dims with the batch, its Conv builds
    ``in_channels`` from the output channels (fails on depthwise convolutions)."""
    nir = _nir()

    def pool(node, total: bool):
        k, s, p = (_ints(a, 2) for a in (node.kernel_size, node.stride, node.padding))
        avg = nn.AvgPool2d(k, s, p, count_include_pad=True)
        return nn.Sequential(avg, _Elementwise(float(np.prod(k)), False)) if total else avg

    def flatten(node):  # NIR counts dims without the batch
        start, end = int(node.start_dim), int(node.end_dim)
        return nn.Flatten(start + 1 if start >= 0 else start, end + 1 if end >= 0 else end)

    return {
        nir.Input: lambda n: nn.Identity(), nir.Output: lambda n: nn.Identity(),
        nir.Affine: _dense, nir.Linear: _dense, nir.Conv1d: _conv, nir.Conv2d: _conv,
        nir.AvgPool2d: lambda n: pool(n, False), nir.SumPool2d: lambda n: pool(n, True),
        nir.Flatten: flatten, nir.IF: _IF, nir.I: _I,
        nir.Threshold: lambda n: _Elementwise(n.threshold, True), nir.Scale: lambda n: _Elementwise(n.scale, False),
    }


def load_nir(graph) -> nn.Module:
    """A NIR graph (``nir.NIRGraph`` or a path) as a torch module that runs one step: ``y, state = m(x, state)``.

    nirtorch wires the graph (a node's incoming edges are summed; a recurrent edge delivers the previous step's
    value); each node computes what the NIR specification states, in discrete time with dt = 1: IF (hard reset to
    v_reset, fires at v > v_threshold, starts at 0), I, Threshold, Scale, Affine, Linear, Conv1d/2d, AvgPool2d,
    SumPool2d, Flatten (dims counted without the batch).
    """
    nir = _nir()
    try:
        import nirtorch
    except ImportError:
        raise Ann2SnnError("running a NIR graph needs `nirtorch`: pip install 'ann2snn[nir]'") from None
    if isinstance(graph, (str, Path)):
        graph = nir.read(str(graph))
    return nirtorch.nir_to_torch(graph, _node_map())


@torch.no_grad()
def run_nir(graph, x: torch.Tensor, T: int, *, encoding: str = "direct") -> torch.Tensor:
    """The logits of a NIR graph after t = 1..T steps, ``[T, B, K]`` (running mean of its output), run by
    :func:`load_nir`. ``x``: ``[B, ...]`` given at every step (direct) or ``[T, B, ...]`` (sequence)."""
    from ann2snn.simulator import running_mean

    module = load_nir(graph) if not isinstance(graph, nn.Module) else graph
    state, outs = None, []
    for t in range(T):
        y, state = module(x if encoding == "direct" else x[t], state)
        outs.append(y)
    return running_mean(torch.stack(outs))


# ---------------------------------------------------------------------------------------------------------
# verification and export


def verify_nir(snn, graph, *, T: int, x: torch.Tensor | None = None, encoding: str = "direct",
               batch: int = 16) -> dict[str, Any]:
    """Run ``graph`` with :func:`run_nir` against the simulator on one batch (default: 16 seeded uniform images).

    A graph without approximations must match within the ONNX verification's tolerance (only tie-sensitive samples
    may differ, :mod:`ann2snn.exporters.verify`), else :class:`~ann2snn.errors.VerificationError`. For an
    approximate graph nothing is required: the report gives the agreement of the predictions after T steps and the
    largest logit difference over all steps.
    """
    from ann2snn.exporters import verify as V

    t0 = time.perf_counter()
    x = V.example_batch(snn, batch=batch, T=T, encoding=encoding) if x is None else x
    ref, _ = V.reference(snn, x, T, encoding=encoding)
    got = run_nir(graph, x, T, encoding=encoding).numpy()
    approx = approximations(graph)
    if approx:
        err = np.abs(got - ref)
        rep = {"max_abs_error": float(err.max(initial=0.0)), "max_abs_error_at_T": float(err[-1].max(initial=0.0)),
               "argmax_agreement": float((got[-1].argmax(-1) == ref[-1].argmax(-1)).mean()),
               "samples": int(ref.shape[1]), "approximate": True, "approximations": approx}
    else:
        rep = V._compare(got, ref, "the NIR graph (run by nirtorch with NIR semantics)",
                         lambda: V.tie_sensitive(snn, x, T, ref, encoding=encoding))
        rep["approximate"] = False
    rep.update(provider="nirtorch", T=int(T), seconds=time.perf_counter() - t0)
    return rep


def nir_sidecar(snn, graph, *, T: int, file: str, encoding: str = "direct",
                verification: dict[str, Any] | None = None) -> dict[str, Any]:
    """The sidecar JSON (as a dict) written beside a NIR file: what the graph expects and how to read its output."""
    nir = _nir()
    info = snn.info
    meta = graph.metadata
    types: dict[str, int] = {}
    for n in graph.nodes.values():
        types[type(n).__name__] = types.get(type(n).__name__, 0) + 1
    out = next(n for n in graph.nodes.values() if isinstance(n, nir.Output))
    return {
        "format": NIR_SIDECAR_FORMAT, "version": NIR_SIDECAR_VERSION, "ann2snn_version": __version__,
        "nir_version": nir.version, "T": int(T), "encoding": encoding, "convention": info.convention,
        "schedule_length": info.schedule_length,
        "input": {"node": "input", "shape": (["T"] if encoding == "sequence" else []) + ["batch", *snn.input_shape]},
        "output": {"node": "output", "shape": ["batch", *(int(d) for d in out.output_type["output"])]},
        "shift": list(info.shift) if isinstance(info.shift, tuple) else info.shift,
        "neuron_kinds": list(info.neuron_kinds), "arch": info.arch,
        "files": {FORMAT_NIR: file},
        FORMAT_NIR: {"neuron_form": str(meta.get(META + "neuron_form")), "pool_form": str(meta.get(META + "pool_form")),
                     "readout": str(meta.get(META + "readout")),
                     "input_schedule": str(meta.get(META + "input")), "node_types": types},
        "approximations": approximations(graph),
        "verification": dict(verification) if verification else None,
    }


def export_nir(snn, path, sidecar, *, options: NirOptions | None = None, T: int | None = None, verify: bool = True,
               force: bool = False, encoding: str = "direct", verify_input=None,
               verify_batch: int = 16) -> tuple[dict[str, Any], dict[str, float]]:
    """Build, verify and write the NIR file ``path`` and its sidecar JSON ``sidecar``; returns the verification report
    (``{"nir": {...}}``, empty when skipped) and the seconds per stage. Use :func:`ann2snn.export` (``format="nir"``).

    The file is read back with ``nir.read`` before it replaces anything; on any failure nothing is left behind.
    """
    from ann2snn.errors import CheckpointError

    T = snn.T if T is None else T
    path, sidecar = Path(path), Path(sidecar)
    if not force:
        for p in (path, sidecar):
            if p.exists():
                raise CheckpointError(f"{p} already exists; pass --force (force=True) to overwrite it")
    seconds: dict[str, float] = {}
    t0 = time.perf_counter()
    o = NirOptions.of(options)
    graph = build_nir(snn, neuron=o.neuron, approximate=o.approximate, pool=o.pool, T=T)
    seconds["build"] = time.perf_counter() - t0
    report: dict[str, Any] = {}
    if verify:
        report[FORMAT_NIR] = verify_nir(snn, graph, T=T, x=verify_input, encoding=encoding, batch=verify_batch)
        seconds["verify"] = report[FORMAT_NIR]["seconds"]
    side = nir_sidecar(snn, graph, T=T, file=path.name, encoding=encoding, verification=report)
    _write(graph, side, path, sidecar, force=force)
    return report, seconds


def _write(graph, side: dict[str, Any], path: Path, sidecar: Path, *, force: bool) -> None:
    """Write the NIR file (read back with ``nir.read`` first) and the sidecar atomically, both or neither."""
    from ann2snn.files import atomic_write_all, text_writer

    nir = _nir()

    def write_nir(tmp: str) -> None:
        nir.write(tmp, graph)
        nir.read(tmp)

    atomic_write_all([(path, write_nir), (sidecar, text_writer(json.dumps(side, indent=2, default=str)))], force=force)
