"""``prepare``: turn a trained ReLU ANN into a QANN (QCFS activations) ready for fine-tuning and conversion.

Every ReLU is found on the torch.fx graph, so ``nn.ReLU``, ``F.relu``, ``torch.relu`` and ``x.relu()`` are all
caught; ``nn.ReLU6`` / ``F.relu6`` become a QCFS whose threshold starts at 6. ``nn.LeakyReLU`` / ``F.leaky_relu``
of slope α > 0 become a :class:`~ann2snn.layers.SignedQCFS` (a quantized LeakyReLU clipped to ``[−α·θ, θ]``) with
``alpha`` = the slope, or with θ_n learned from α·θ (``learn_negative``). Max-pooling can be swapped for
average pooling. Initial thresholds come from calibration data: the maximum or a percentile of each
activation (per layer or per channel), streamed over the data and computed with torch; a LeakyReLU's θ = θ_p
comes from its positive side (as a ReLU's would) and θ_n = α·θ_p. The trained weights are kept, so the QANN
starts from the ANN's function up to quantization and clipping.

Examples:
    >>> ann = ann2snn.models.create("mnist-cnn", act="relu")       # ... trained ...
    >>> qann = prepare(ann, x_calib, levels=4, granularity="channel")
    >>> ann2snn.save(qann, "mnist-qann.pt")                          # rebuilds as create("mnist-cnn", act="qcfs", ...)
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

import torch
import torch.nn.functional as F
from torch import fx, nn

from ann2snn.errors import Ann2SnnError, UnsupportedNodeError
from ann2snn.layers import QCFS, SignedQCFS, inverse_softplus, qcfs_modules
from ann2snn.passes.graph import unique_name
from ann2snn.passes.trace import symbolic_trace

__all__ = ["prepare", "Calibrator", "RELU_MODULES", "RELU_FUNCTIONS", "RELU_METHODS", "MAXPOOL_SWAPS"]

#: Activations replaced by QCFS (``"leaky"``: by SignedQCFS), as data: module class / function / tensor method -> kind.
RELU_MODULES = {nn.ReLU: "relu", nn.ReLU6: "relu6", nn.LeakyReLU: "leaky"}
RELU_FUNCTIONS = {F.relu: "relu", torch.relu: "relu", torch.relu_: "relu", F.relu_: "relu", F.relu6: "relu6",
                  F.leaky_relu: "leaky", F.leaky_relu_: "leaky"}
RELU_METHODS = {"relu": "relu", "relu_": "relu"}
#: Activations that have no QCFS equivalent: prepare refuses them rather than leave them in silently.
OTHER_ACTIVATIONS = (nn.GELU, nn.SiLU, nn.ELU, nn.SELU, nn.CELU, nn.PReLU, nn.Sigmoid, nn.Tanh,
                     nn.Hardswish, nn.Hardsigmoid, nn.Mish, nn.Softplus, nn.Hardtanh)
OTHER_FUNCTIONS = (F.gelu, F.silu, F.elu, F.selu, F.celu, F.prelu, torch.sigmoid, torch.tanh,
                   F.hardswish, F.hardsigmoid, F.mish, F.softplus, F.hardtanh)
_UNSUPPORTED_FIX = ("has no QCFS equivalent; prepare replaces ReLU, ReLU6 and LeakyReLU only: train the ANN with "
                    "ReLU or LeakyReLU activations")
#: max-pool -> average-pool replacements (modules and functions).
MAXPOOL_SWAPS = {nn.MaxPool2d: nn.AvgPool2d, nn.AdaptiveMaxPool2d: nn.AdaptiveAvgPool2d,
                 F.max_pool2d: F.avg_pool2d, F.adaptive_max_pool2d: F.adaptive_avg_pool2d}
_DEFAULT_THRESHOLD = {"relu": 8.0, "relu6": 6.0, "leaky": 8.0}
_MIN_THRESHOLD = 1e-3


class _Observed(nn.Module):
    """Stands in for one ReLU while calibrating: computes it and records its outputs' statistics.

    A LeakyReLU records its positive side only (``max(y, 0)``, as the ReLU of the same input): that sets θ_p.
    """

    def __init__(self, kind: str, where: str, slope: float = 0.0) -> None:
        super().__init__()
        self.kind = kind
        self.where = where
        self.slope = slope
        self.shape: tuple[int, ...] | None = None
        self.calibrator: Calibrator | None = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.kind == "leaky":
            y = F.leaky_relu(x, self.slope)
            seen = F.relu(y)
        else:
            y = seen = F.relu6(x) if self.kind == "relu6" else F.relu(x)
        self.shape = tuple(y.shape)
        if self.calibrator is not None:
            self.calibrator.observe(seen)
        return y


class Calibrator:
    """Streaming maximum or exact percentile of an activation, per layer or per channel (``dim``).

    The percentile is exact (linear interpolation, as :func:`torch.quantile`): only the largest
    ``N - floor(q·(N-1))`` values can matter, so those are kept with :func:`torch.topk` while batches stream by;
    ``N`` (elements per threshold) is known from ``num_samples`` and the first batch's shape.
    """

    def __init__(self, *, method: str, percentile: float, dim: int | None, num_samples: int) -> None:
        self.method = method
        self.q = percentile / 100.0
        self.dim = dim
        self.num_samples = num_samples
        self.count = 0
        self.total: int | None = None
        self.k: int | None = None
        self.top: torch.Tensor | None = None  # [channels, ≤k], descending

    def _rows(self, y: torch.Tensor) -> torch.Tensor:
        y = y.detach().float()
        if self.dim is None:
            return y.reshape(1, -1)
        return y.movedim(self.dim % y.dim(), 0).reshape(y.shape[self.dim % y.dim()], -1)

    def observe(self, y: torch.Tensor) -> None:
        rows = self._rows(y)
        if self.total is None:
            per_sample = rows.shape[1] // max(1, y.shape[0])
            self.total = per_sample * self.num_samples
            lo = math.floor(self.q * (self.total - 1)) if self.method == "percentile" else self.total - 1
            self.k = max(1, self.total - lo)
        self.count += rows.shape[1]
        cand = rows if self.top is None else torch.cat([self.top, rows], dim=1)
        self.top = cand.topk(min(self.k, cand.shape[1]), dim=1).values

    def thresholds(self) -> torch.Tensor:
        """One value per channel (``[1]`` layer-wise)."""
        if self.top is None:
            raise Ann2SnnError("calibration saw no data; pass a non-empty calibration set")
        if self.count != self.total:
            raise Ann2SnnError(f"calibration expected {self.num_samples} samples but got a different number "
                               f"({self.count} vs {self.total} activations); pass every batch once")
        top = self.top.cpu()
        if self.method == "max":
            return top[:, 0]
        n = self.total
        pos = self.q * (n - 1)
        lo = math.floor(pos)
        hi = min(lo + 1, n - 1)
        v_lo, v_hi = top[:, n - 1 - lo], top[:, n - 1 - hi]
        return v_lo + (v_hi - v_lo) * (pos - lo)


@dataclass(frozen=True)
class _Site:
    node: str
    source: str
    kind: str
    slope: float = 0.0  # a LeakyReLU's negative_slope (α of its SignedQCFS)


def _activation_kind(gm: fx.GraphModule, node: fx.Node) -> tuple[str | None, str, float]:
    """``(kind, source, slope)`` for a ReLU-like node, ``(None, "", 0)`` otherwise; raises on other activations."""
    if node.op == "call_module":
        mod = gm.get_submodule(node.target)
        for cls, kind in RELU_MODULES.items():
            if type(mod) is cls:
                return _leaky_or_relu(node, kind, f"{cls.__name__} module {node.target!r}",
                                      getattr(mod, "negative_slope", 0.0))
        if isinstance(mod, OTHER_ACTIVATIONS):
            raise UnsupportedNodeError(node, f"{type(mod).__name__} {_UNSUPPORTED_FIX}")
    elif node.op == "call_function":
        if node.target in RELU_FUNCTIONS:
            kind = RELU_FUNCTIONS[node.target]
            slope = node.args[1] if len(node.args) > 1 else node.kwargs.get("negative_slope", 0.01)
            return _leaky_or_relu(node, kind, f"function {getattr(node.target, '__name__', node.target)}",
                                  slope if kind == "leaky" else 0.0)
        if node.target in OTHER_FUNCTIONS:
            raise UnsupportedNodeError(node, f"{node.target.__name__} {_UNSUPPORTED_FIX}")
    elif node.op == "call_method" and node.target in RELU_METHODS:
        return RELU_METHODS[node.target], f"method .{node.target}()", 0.0
    return None, "", 0.0


def _leaky_or_relu(node: fx.Node, kind: str, source: str, slope) -> tuple[str, str, float]:
    """A LeakyReLU's slope checked: > 0 -> signed, 0 -> a plain ReLU, anything else refused."""
    if kind != "leaky":
        return kind, source, 0.0
    if isinstance(slope, bool) or not isinstance(slope, (int, float)) or not math.isfinite(slope) or slope < 0:
        raise UnsupportedNodeError(node, f"leaky_relu with negative_slope {slope!r} has no SignedQCFS equivalent "
                                         "(θ_n = slope·θ_p needs a constant slope ≥ 0); use a constant slope > 0")
    return ("leaky" if slope > 0 else "relu"), source, float(slope)


def _observe_activations(gm: fx.GraphModule) -> list[_Site]:
    """Replace every ReLU-like node by a call to an :class:`_Observed` submodule; returns the sites."""
    sites, used = [], set()
    found = [(node, *_activation_kind(gm, node)) for node in gm.graph.nodes]  # before any module is swapped
    for node, kind, source, slope in found:
        if kind is None:
            continue
        if node.op == "call_module" and node.target not in used:
            target = node.target  # keep the module's name, so a zoo model's state_dict keys line up
        else:
            target = unique_name(gm, f"{node.name}_qcfs")
        used.add(target)
        gm.add_submodule(target, _Observed(kind, target, slope))
        with gm.graph.inserting_after(node):
            new = gm.graph.call_module(target, (node.args[0],))
        node.replace_all_uses_with(new)
        gm.graph.erase_node(node)
        sites.append(_Site(target, source, kind, slope))
    return sites


def _swap_maxpool(gm: fx.GraphModule) -> list[str]:
    """Max-pooling -> average pooling of the same window (modules and functional calls)."""
    swapped = []
    for node in list(gm.graph.nodes):
        if node.op == "call_module":
            mod = gm.get_submodule(node.target)
            if type(mod) is nn.MaxPool2d:
                if mod.dilation not in (1, (1, 1)) or mod.return_indices:
                    raise UnsupportedNodeError(node, "max-pool with dilation or return_indices has no average-pool "
                                                     "equivalent; use maxpool='keep' (spiking max-pool)")
                new = nn.AvgPool2d(mod.kernel_size, mod.stride, mod.padding, ceil_mode=mod.ceil_mode)
            elif type(mod) is nn.AdaptiveMaxPool2d:
                new = nn.AdaptiveAvgPool2d(mod.output_size)
            else:
                continue
            gm.add_submodule(node.target, new)
            swapped.append(f"{node.target}: {type(mod).__name__} -> {type(new).__name__}")
        elif node.op == "call_function" and node.target is F.max_pool2d:
            names = ("input", "kernel_size", "stride", "padding", "dilation", "ceil_mode", "return_indices")
            a = dict(zip(names, node.args)) | dict(node.kwargs)
            if a.get("dilation", 1) not in (1, (1, 1)) or a.get("return_indices", False):
                raise UnsupportedNodeError(node, "max_pool2d with dilation or return_indices has no average-pool "
                                                 "equivalent; use maxpool='keep' (spiking max-pool)")
            node.target = F.avg_pool2d
            node.args = (a["input"], a["kernel_size"])
            node.kwargs = {"stride": a.get("stride"), "padding": a.get("padding", 0),
                           "ceil_mode": a.get("ceil_mode", False)}
            swapped.append(f"{node.name}: max_pool2d -> avg_pool2d")
        elif node.op == "call_function" and node.target is F.adaptive_max_pool2d:
            names = ("input", "output_size", "return_indices")
            a = dict(zip(names, node.args)) | dict(node.kwargs)
            node.target, node.args, node.kwargs = F.adaptive_avg_pool2d, (a["input"], a["output_size"]), {}
            swapped.append(f"{node.name}: adaptive_max_pool2d -> adaptive_avg_pool2d")
    return swapped


def _as_batches(data, batch_size: int) -> tuple[list[torch.Tensor] | torch.Tensor, int]:
    """Calibration data as (tensor or list of batches, number of samples)."""
    if isinstance(data, torch.Tensor):
        return data, len(data)
    if hasattr(data, "x_train"):  # an ann2snn.data.Dataset
        return data.x_train, len(data.x_train)
    out = []
    for b in data:
        b = b[0] if isinstance(b, (tuple, list)) else b
        if not isinstance(b, torch.Tensor):
            raise Ann2SnnError(f"calibration batches must be tensors or (x, y) pairs, got {type(b).__name__}")
        out.append(b)
    return out, sum(len(b) for b in out)


def _iter(data, batch_size: int) -> Iterable[torch.Tensor]:
    if isinstance(data, torch.Tensor):
        for i in range(0, len(data), batch_size):
            yield data[i:i + batch_size]
    else:
        yield from data


def _device(model: nn.Module) -> torch.device:
    p = next(iter(model.parameters()), None)
    return p.device if p is not None else torch.device("cpu")


def _set_raw(q: QCFS, name: str, theta: torch.Tensor) -> None:
    """Set the raw parameter ``name`` (``lam`` or ``lam_neg``) of ``q`` so that its threshold is ``theta``."""
    raw = getattr(q, name)
    theta = theta.to(raw.device, torch.float32).reshape(raw.shape)
    with torch.no_grad():
        raw.copy_(inverse_softplus(theta) if q.positive == "softplus" else theta)


def _calibrated_threshold(site: _Site, obs: _Observed, *, size: int, init_threshold: float | None) -> torch.Tensor:
    """θ (θ_p for a LeakyReLU) per threshold index: the calibrated statistic, or the default without data."""
    default = 6.0 if site.kind == "relu6" else (init_threshold or _DEFAULT_THRESHOLD[site.kind])
    if obs.calibrator is None:
        return torch.full((size,), default)
    theta = obs.calibrator.thresholds()
    positive_vals = theta[theta > 0]
    fallback = float(positive_vals.max()) if len(positive_vals) else default
    theta = torch.where(theta > _MIN_THRESHOLD, theta, torch.full_like(theta, fallback))
    return theta.clamp(max=6.0) if site.kind == "relu6" else theta


def _quantizer(site: _Site, theta: torch.Tensor, levels: int, *, learn_negative: bool, **qcfs_kw) -> QCFS:
    """The QCFS (SignedQCFS for a LeakyReLU, θ_n = slope·θ) that replaces ``site``, thresholds set to ``theta``."""
    qcfs_kw["init_threshold"] = float(theta.max())
    if site.kind != "leaky":
        q = QCFS(levels, **qcfs_kw)
    elif learn_negative:
        q = SignedQCFS(levels, learn_negative=True, init_neg_threshold=site.slope * float(theta.max()), **qcfs_kw)
        _set_raw(q, "lam_neg", site.slope * theta)
    else:
        q = SignedQCFS(levels, alpha=site.slope, **qcfs_kw)
    _set_raw(q, "lam", theta)
    return q


def _calibrate(gm: fx.GraphModule, observers: dict[str, _Observed], calibration, *, dim, method, percentile,
               batch_size, source, example_input) -> None:
    """Run the calibration data (or one example input) through ``gm``, feeding every observer."""
    device = _device(gm)
    with torch.no_grad():
        if calibration is not None:
            data, n = _as_batches(calibration, batch_size)
            if n == 0:
                raise Ann2SnnError("calibration data is empty; pass some training images")
            for obs in observers.values():
                obs.calibrator = Calibrator(method=method, percentile=percentile, dim=dim, num_samples=n)
            for xb in _iter(data, batch_size):
                gm(xb.to(device))
        else:
            from ann2snn.network import example_input_for

            gm(example_input_for(source, example_input).to(device))


def prepare(model: nn.Module | str | os.PathLike, calibration: Any = None, *, levels: int = 8,
            granularity: str = "layer", positive: str = "softplus", shift: float = 0.5,
            init_threshold: float | None = None, method: str = "percentile", percentile: float = 99.9,
            maxpool: str = "avg", batch_size: int = 256, example_input: torch.Tensor | None = None,
            learn_negative: bool = False) -> nn.Module:
    """Turn a ReLU ANN into a QANN: every ReLU/ReLU6 becomes a :class:`~ann2snn.layers.QCFS`, every LeakyReLU
    a :class:`~ann2snn.layers.SignedQCFS` with ``alpha`` = its slope.

    Args:
        model: the trained ANN (never modified) or a model file readable by :func:`ann2snn.load`.
        calibration: images to calibrate thresholds on: a tensor ``[N, C, H, W]``, a Dataset (its training
            images), or an iterable of batches (tensors or ``(x, y)``). ``None``: every threshold starts at
            ``init_threshold`` (ReLU6: at 6).
        levels: the QCFS option L (quantization levels).
        granularity: the QCFS option, ``"layer"`` or ``"channel"``.
        positive: the QCFS option (``"softplus"`` or ``"none"``).
        shift: the QCFS option φ.
        init_threshold: θ without calibration data (default 8; a ReLU6 always starts at 6 uncalibrated).
        method: ``"percentile"`` (``percentile`` of each activation, exact) or ``"max"``. A LeakyReLU's θ_p is
            that of its positive side; θ_n = slope·θ_p.
        maxpool: ``"avg"`` swaps max-pooling for average pooling, ``"keep"`` leaves it to the spiking max-pool.
        example_input: an input the model takes (default zeros of ``model.input_shape``), for channel counts.
        learn_negative: a LeakyReLU's SignedQCFS learns θ_n (own ``lam_neg``, starting at slope·θ_p) instead of
            keeping the fixed ratio ``θ_n = slope·θ_p``.

    Returns the QANN in eval mode. A zoo model comes back as the zoo's own QCFS architecture
    (``arch_kwargs`` with ``act="qcfs"``, or ``act="signed"`` from ``act="leaky"``), so :func:`ann2snn.save`
    writes a file that rebuilds as a QANN; any other model comes back as a ``torch.fx.GraphModule``.
    ``model.prepare_report`` lists what was replaced.

    Examples:
        >>> qann = prepare(ann, data.x_train[:2048], levels=4, granularity="channel", percentile=99.9)
    """
    model = _check_prepare_args(model, levels=levels, granularity=granularity, method=method,
                                percentile=percentile, maxpool=maxpool, init_threshold=init_threshold)
    source = model
    model = copy.deepcopy(model).eval()
    gm = symbolic_trace(model)
    sites = _observe_activations(gm)
    if not sites:
        kind = "already a QANN (it has QCFS layers)" if qcfs_modules(model) else "it has no ReLU or LeakyReLU"
        raise Ann2SnnError(f"nothing to prepare: {kind}; prepare takes a ReLU or LeakyReLU ANN (train one with "
                           "act='relu' or act='leaky')")
    swapped = _swap_maxpool(gm) if maxpool == "avg" else []
    gm.graph.lint()
    gm.recompile()

    observers = {s.node: gm.get_submodule(s.node) for s in sites}
    _calibrate(gm, observers, calibration, dim=None if granularity == "layer" else 1, method=method,
               percentile=percentile, batch_size=batch_size, source=source, example_input=example_input)
    report_sites = []
    for s in sites:
        obs = observers[s.node]
        if obs.shape is None:
            raise Ann2SnnError(f"activation {s.node!r} ({s.source}) was not reached by the calibration/example input")
        channels = obs.shape[1] if len(obs.shape) > 1 else 1
        theta = _calibrated_threshold(s, obs, size=1 if granularity == "layer" else channels,
                                      init_threshold=init_threshold)
        q = _quantizer(s, theta, levels, learn_negative=learn_negative, shift=shift, granularity=granularity,
                       positive=positive, num_channels=None if granularity == "layer" else channels)
        gm.add_submodule(s.node, q.to(_device(gm)))
        report_sites.append({"name": s.node, "replaced": s.source, "kind": s.kind, "channels": q.num_channels,
                             "threshold_min": float(theta.min()), "threshold_mean": float(theta.mean()),
                             "threshold_max": float(theta.max()), "alpha": s.slope if q.signed else None})
    gm.delete_all_unused_submodules()
    gm.recompile()

    result, rebuilt, why_not = _rebuild_in_zoo(source, gm, sites, levels=levels, granularity=granularity,
                                               positive=positive, shift=shift, swapped=bool(swapped),
                                               example=example_input, learn_negative=learn_negative)
    shape = getattr(source, "input_shape", None)
    if shape is not None:
        result.input_shape = tuple(shape)
    result.prepare_report = {
        "activations": report_sites, "maxpool_swapped": swapped, "levels": levels, "granularity": granularity,
        "calibration": None if calibration is None else {"method": method, "percentile": percentile},
        "learn_negative": learn_negative, "rebuilt_as": rebuilt, "not_rebuilt_because": why_not,
    }
    return result.eval()


def _takes_pool(builder) -> bool:
    """Whether an architecture builder has a ``pool`` parameter (``pool="avg"`` rebuilds it average-pooled)."""
    import inspect

    try:
        return builder is not None and "pool" in inspect.signature(builder).parameters
    except (TypeError, ValueError):
        return False


def _check_prepare_args(model, *, levels, granularity, method, percentile, maxpool, init_threshold) -> nn.Module:
    """The model (loaded when given as a file), after checking prepare's options; raises on the first bad one."""
    if isinstance(model, (str, os.PathLike)):
        from ann2snn.checkpoint import load_qann

        model = load_qann(Path(model))
    if not isinstance(model, nn.Module):
        raise Ann2SnnError(f"prepare takes an nn.Module or a model file, got {type(model).__name__}")
    if isinstance(levels, bool) or not isinstance(levels, int) or levels <= 0:
        raise Ann2SnnError(f"levels must be a positive integer (QCFS quantization levels L), got {levels!r}")
    if granularity not in ("layer", "channel"):
        raise Ann2SnnError(f"prepare granularity must be 'layer' or 'channel', got {granularity!r}")
    if method not in ("percentile", "max"):
        raise Ann2SnnError(f"calibration method must be 'percentile' or 'max', got {method!r}")
    if not 0.0 < percentile <= 100.0:
        raise Ann2SnnError(f"percentile must be in (0, 100], got {percentile!r}")
    if maxpool not in ("avg", "keep"):
        raise Ann2SnnError(f"maxpool must be 'avg' (swap for average pooling) or 'keep', got {maxpool!r}")
    if init_threshold is not None and init_threshold <= 0:
        raise Ann2SnnError(f"init_threshold must be > 0, got {init_threshold!r}")
    return model


def _rebuild_in_zoo(source: nn.Module, gm: fx.GraphModule, sites: list[_Site], *, levels, granularity, positive,
                    shift, swapped, example, learn_negative) -> tuple[nn.Module, str | None, str | None]:
    """``(model, arch, None)``: the registered architecture rebuilt as a QANN with ``gm``'s weights, when it computes
    exactly what ``gm`` does; else ``(gm, None, why not)``.

    The builder is called with the ANN's own arguments plus ``act="qcfs"`` (``"signed"``), ``levels``,
    ``granularity``, ``positive``, ``shift`` (and ``pool="avg"`` after a max-pool swap); its QCFS modules must
    carry the names prepare gives them: the replaced activation module's name, or the fx node name (``relu``,
    ``relu_1``, ...) for a functional ``F.relu`` / ``torch.relu``."""
    from ann2snn import models

    arch = getattr(source, "arch_name", None)
    if arch is None:
        return gm, None, ("the ANN was not built by a registered architecture; build it with ann2snn.models.create "
                          "from a builder registered with @ann2snn.models.register (--arch-module)")
    kw = dict(getattr(source, "arch_kwargs", {}) or {})
    kw.update(act="qcfs", levels=levels, granularity=granularity, positive=positive, shift=shift)
    slopes = {s.slope for s in sites if s.kind == "leaky"}
    if len(slopes) == 1:  # a zoo LeakyReLU ANN: one slope, every activation signed (else the check below fails)
        kw.update(act="signed", alpha=slopes.pop())
        if learn_negative:
            kw["learn_negative"] = True
    if swapped and (kw.get("pool") == "max" or "pool" not in kw and _takes_pool(models.available().get(arch))):
        kw["pool"] = "avg"  # the max-pools were swapped: the rebuilt model pools by average (its default may be max)
    try:
        zoo = models.create(arch, **kw)
    except (Ann2SnnError, TypeError, ValueError) as exc:
        return gm, None, f"{arch}({_kwargs_text(kw)}) failed: {exc}"
    mine, theirs = set(gm.state_dict()), set(zoo.state_dict())
    if mine != theirs:
        return gm, None, (f"{arch}({_kwargs_text(kw)}) has other parameter names than the prepared model (only in "
                          f"the rebuilt one: {_names(theirs - mine)}; only in the prepared one: {_names(mine - theirs)}"
                          "); name each QCFS as the activation it replaces (a functional relu: its node name)")
    try:
        zoo.load_state_dict(gm.state_dict(), strict=True)
    except RuntimeError as exc:
        return gm, None, f"{arch}({_kwargs_text(kw)}) cannot take the prepared weights: {str(exc).splitlines()[-1]}"
    zoo.to(_device(gm)).eval()
    from ann2snn.network import example_input_for

    try:
        x = example_input_for(source, example, batch=4)
    except Ann2SnnError as exc:
        return gm, None, f"no input to compare the rebuilt model on: {exc}"
    x = torch.randn(x.shape, generator=torch.Generator().manual_seed(0)) * 2 if example is None else x
    with torch.no_grad():
        x = x.to(_device(gm))
        if not torch.equal(zoo(x), gm(x)):
            return gm, None, (f"{arch}({_kwargs_text(kw)}) computes something else than the prepared model (its QCFS "
                              "or pooling placement differs from the ANN's activations and pools)")
    return zoo, arch, None


def _kwargs_text(kw: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in kw.items())


def _names(names: set[str], most: int = 4) -> str:
    names = sorted(names)
    return (", ".join(names[:most]) + (f" and {len(names) - most} more" if len(names) > most else "")) or "none"
