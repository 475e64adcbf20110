"""TTRBR: threshold tuning and residual block restructuring for deep ResNet QANNs at few time steps.

After Meng et al., "Training much deeper spiking neural networks with a small number of time-steps" (Neural
Networks 2022). Their analysis splits a converted network's error into a *quantization* error (the coding of a value
in T steps) and a *deviation* error (uneven input currents in intermediate layers), which grows with the spike
threshold and with the variance of a neuron's input — largest in deep ResNets, where the neuron after a residual
add sums two differently scaled streams. The paper's text was not at hand here; this module implements the two
parts as the project reads them (docs/methods.md says so too):

**Residual block restructuring** (:func:`restructure_residuals`). Every residual ``a + b`` whose result feeds a
quantizer gets its summands quantized on the post-add quantizer's threshold scale: a summand that is not already a
quantizer's output (the residual branch ``BN(conv(...))``, a projection shortcut ``BN(conv1×1(x))``) gets a copy
of the post-add QCFS (same L, θ, granularity); an identity shortcut already carries the previous block's spikes and
is left as it is. In the SNN both summands then arrive as spikes of a quantized value and the post-add neuron sums
two spike trains instead of an analog current. This changes the QANN, so it is fine-tuned on labelled
calibration images (``finetune_epochs``, quantization-aware, the same training step as ``ann2snn train``).

**Threshold tuning** (:func:`tune_thresholds`). Each quantizer's threshold θ is scaled by a factor s from
``scales``, layer by layer in graph order, greedily: s is the one whose SNN neuron (threshold s·θ, spikes worth s·θ
— the IF neuron of a QCFS with threshold s·θ) makes the layer's mean output over T steps closest (squared error) to
the QANN's activation there, on the calibration images, with the layers before it already tuned; the tuned set is
kept only when the SNN at T then agrees with the QANN's predictions on more calibration images (ties: closer
logits). A lower threshold fires earlier (less deviation error at small T) but clips more; a network is tuned for
one T (as COS is). The result is a QANN with scaled thresholds: ``ann2snn.convert`` and both ONNX forms
take it unchanged.

:func:`apply_ttrbr` runs both: ``ann2snn.convert(apply_ttrbr(qann, x, y, T=2), T=2)``.
"""

from __future__ import annotations

import copy
import operator
from dataclasses import dataclass

import torch
from torch import fx, nn

from ann2snn.data import batches
from ann2snn.errors import Ann2SnnError
from ann2snn.layers import QCFS, inverse_softplus, qcfs_modules
from ann2snn.neurons import IFNeuron, StatefulModule

__all__ = ["TTRBRConfig", "restructure_residuals", "tune_thresholds", "apply_ttrbr", "finetune", "TUNE_SCALES"]

#: threshold factors tried per layer by default
TUNE_SCALES = (0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0, 1.1)
_ADDS = (operator.add, torch.add, operator.iadd)


@dataclass(frozen=True)
class TTRBRConfig:
    """TTRBR's options: restructure residual blocks (then fine-tune ``finetune_epochs`` over the labelled calibration
    images at learning rate ``lr``), tune thresholds among ``scales`` on ``tune_samples`` calibration images."""

    restructure: bool = True
    tune: bool = True
    scales: tuple[float, ...] = TUNE_SCALES
    finetune_epochs: int = 1
    lr: float = 1e-3
    batch_size: int = 64
    tune_samples: int = 256

    def __post_init__(self) -> None:
        if not self.scales or any(not (s > 0) for s in self.scales):
            raise Ann2SnnError(f"TTRBR threshold scales must be positive numbers, got {self.scales!r}")
        if self.finetune_epochs < 0 or self.batch_size < 1 or self.tune_samples < 1 or not self.lr > 0:
            raise Ann2SnnError("TTRBR needs finetune_epochs >= 0, batch_size >= 1, tune_samples >= 1 and lr > 0")


#: modules a quantized value passes through unchanged (an identity shortcut)
_TRANSPARENT = (nn.Identity, nn.Dropout)


def _quantizer(node, modules) -> QCFS | None:
    """The QCFS that produced ``node`` (through identity modules), else None."""
    while isinstance(node, fx.Node) and node.op == "call_module" and isinstance(modules.get(node.target), _TRANSPARENT):
        node = node.args[0]
    m = modules.get(node.target) if isinstance(node, fx.Node) and node.op == "call_module" else None
    return m if isinstance(m, QCFS) else None


def restructure_residuals(model: nn.Module) -> tuple[fx.GraphModule, list[str]]:
    """A copy of ``model`` (traced) whose residual adds feeding a QCFS have both summands quantized.

    Returns ``(graph module, names of the quantizers inserted)``; a model without such an add is an error (TTRBR is
    for ResNet-style QANNs). Signed quantizers are refused (the restructured summands are unsigned spikes)."""
    from ann2snn.ops.graph import unique_name
    from ann2snn.passes.trace import symbolic_trace

    gm = symbolic_trace(copy.deepcopy(model).eval())
    modules = dict(gm.named_modules())
    inserted: list[str] = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in _ADDS or len(node.users) != 1:
            continue
        post = _quantizer(next(iter(node.users)), modules)
        summands = [a for a in node.args[:2] if isinstance(a, fx.Node)]
        if post is None or len(summands) != 2:
            continue
        if post.signed:
            raise Ann2SnnError(f"TTRBR restructures unsigned residual blocks; {node.format_node()} feeds a signed "
                               "quantizer")
        for arg in summands:
            if _quantizer(arg, modules) is not None:
                continue  # already spikes (an identity shortcut from the previous block's quantizer)
            name = unique_name(gm, f"{next(iter(node.users)).target.replace('.', '_')}_in")
            gm.add_submodule(name, copy.deepcopy(post))
            with gm.graph.inserting_after(arg):
                q = gm.graph.call_module(name, (arg,))
            node.replace_input_with(arg, q)
            inserted.append(name)
    if not inserted and not any(n.op == "call_function" and n.target in _ADDS for n in gm.graph.nodes):
        raise Ann2SnnError(f"TTRBR restructures residual blocks, and {type(model).__name__} has no residual add; "
                           "use it on a ResNet-style QANN (or tune thresholds only)")
    gm.graph.lint()
    gm.recompile()
    return _keep_attrs(model, gm), inserted


#: what a QANN carries besides its modules (a GraphModule's copy drops them)
_ATTRS = ("input_shape", "preprocessing")


def _keep_attrs(src: nn.Module, dst: nn.Module) -> nn.Module:
    for attr in _ATTRS:
        if hasattr(src, attr) and not isinstance(getattr(type(src), attr, None), property):
            setattr(dst, attr, getattr(src, attr))
    return dst


def finetune(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, epochs: int = 1, lr: float = 1e-3,
             batch_size: int = 64, seed: int = 0) -> nn.Module:
    """Quantization-aware fine-tuning of ``model`` in place (Adam, cosine schedule, the ``ann2snn train`` step)."""
    from ann2snn.train import make_optimizer, train_epoch

    if epochs == 0:
        return model.eval()
    g = torch.Generator().manual_seed(seed)
    steps = epochs * -(-len(x) // batch_size)
    opt, sched = make_optimizer(model.parameters(), "adam", lr=lr, weight_decay=0.0, steps=steps)
    with torch.enable_grad():
        for _ in range(epochs):
            train_epoch(model, x, y, torch.randperm(len(x), generator=g), batch_size, opt, sched)
    return model.eval()


class _ScaleSearch(StatefulModule):
    """Stands in for a rate IF neuron (θ = 1 after folding) during tuning: on each multi-step call it tries every
    threshold factor s (an IF neuron of threshold s, spikes worth s), keeps the one whose mean output over the
    steps is closest to the QANN's activation ``target`` (in threshold units) and returns its output."""

    kind = "if"
    state_names = ("v",)

    def __init__(self, neuron: IFNeuron, scales: tuple[float, ...]) -> None:
        super().__init__()
        self.neuron, self.scales = neuron, scales
        self.target: torch.Tensor | None = None
        self.errors = torch.zeros(len(scales), dtype=torch.float64)

    def multi_step(self, x_seq: torch.Tensor) -> torch.Tensor:
        theta = self.neuron.threshold.to(x_seq)
        outs = [IFNeuron(theta * s, shift=self.neuron.shift).multi_step(x_seq) for s in self.scales]
        self.errors = torch.stack([((o.mean(0) - self.target) ** 2).sum(dtype=torch.float64) for o in outs])
        return outs[int(self.errors.argmin())]


def _scale_threshold(q: QCFS, s: float) -> None:
    with torch.no_grad():
        theta = q.threshold * s
        q.lam.copy_(inverse_softplus(theta) if q.positive == "softplus" else theta)


@torch.no_grad()
def tune_thresholds(model: nn.Module, x_calib: torch.Tensor, T: int, *, scales: tuple[float, ...] = TUNE_SCALES,
                    input_shape: tuple[int, ...] | None = None) -> tuple[nn.Module, dict[str, float]]:
    """A copy of ``model`` whose QCFS thresholds are scaled for T steps (threshold tuning; see the module doc).

    One simulation of the calibration images ``x_calib`` tunes every layer: each neuron picks its factor on the
    inputs the already-tuned layers before it produce. The greedy per-layer choice is kept only when the tuned
    SNN at T agrees with the QANN's predictions on more of ``x_calib`` than the untuned SNN (equal agreement: when
    its logits are closer in mean squared error); else every factor is 1. Returns ``(QANN, {quantizer name:
    factor})``."""
    from ann2snn.network import convert
    from ann2snn.ops.graph import set_module
    from ann2snn.simulator import readout, run_steps

    if isinstance(T, bool) or not isinstance(T, int) or T <= 0:
        raise Ann2SnnError(f"T must be a positive number of time steps, got {T!r}")
    if len(x_calib) == 0:
        raise Ann2SnnError("threshold tuning needs calibration images; pass at least one (--calib-samples)")
    model = model.eval()
    quantizers = dict(qcfs_modules(model))
    if any(q.signed for q in quantizers.values()):
        raise Ann2SnnError("TTRBR tunes unsigned QCFS thresholds (rate convention, IF neurons); this QANN has "
                           "signed quantizers")
    snn = convert(model, T=T, input_shape=input_shape or tuple(x_calib.shape[1:]))
    gm = copy.deepcopy(snn.graph_module)
    probes: dict[str, _ScaleSearch] = {}
    for node in gm.graph.nodes:
        m = gm.get_submodule(node.target) if node.op == "call_module" else None
        if type(m) is IFNeuron and node.target in quantizers:
            probes[node.target] = _ScaleSearch(m, tuple(scales))
            set_module(gm, node.target, probes[node.target])  # same name: the QANN's quantizer it came from
    seen: dict[str, torch.Tensor] = {}
    hooks = [quantizers[n].register_forward_hook(
        lambda mod, args, out, n=n: seen.__setitem__(n, out / mod.broadcast_threshold(out.dim())))
        for n in probes]
    try:
        model(x_calib)
    finally:
        for h in hooks:
            h.remove()
    for name, p in probes.items():
        p.target = seen[name]
    run_steps(gm, x_calib, T)
    tuned = _keep_attrs(model, copy.deepcopy(model))
    tq = dict(qcfs_modules(tuned))
    factors = {}
    for name, p in probes.items():
        factors[name] = float(p.scales[int(p.errors.argmin())])
        _scale_threshold(tq[name], factors[name])
    q = model(x_calib)
    shape = input_shape or tuple(x_calib.shape[1:])
    score = []
    for m in (model, tuned):  # (agreement with the QANN's predictions, −logit MSE): higher is better
        out = readout(run_steps(convert(m, T=T, input_shape=shape).graph_module, x_calib, T))[-1]
        score.append((float((out.argmax(-1) == q.argmax(-1)).float().mean()), -float(((out - q) ** 2).mean())))
    if score[1] <= score[0]:
        return _keep_attrs(model, copy.deepcopy(model)), {name: 1.0 for name in factors}
    return tuned, factors


def apply_ttrbr(model: nn.Module, x: torch.Tensor, y: torch.Tensor | None, T: int,
                config: TTRBRConfig = TTRBRConfig(), *, seed: int = 0) -> tuple[nn.Module, dict]:
    """TTRBR on the QANN ``model`` for T steps: restructure the residual blocks and fine-tune on ``(x, y)`` (labelled
    calibration images), then tune the thresholds on the first ``config.tune_samples`` of ``x``.

    Returns ``(QANN, info)``: convert it as any QANN. ``info`` names the inserted quantizers and the factors.

    Examples:
        >>> q2, info = apply_ttrbr(qann, data.x_train[:2048], data.y_train[:2048], T=2)
        >>> snn = ann2snn.convert(q2, T=2)
    """
    info: dict = {"inserted": [], "factors": {}}
    if config.restructure:
        model, info["inserted"] = restructure_residuals(model)
        if config.finetune_epochs:
            if y is None:
                raise Ann2SnnError("restructured residual blocks are fine-tuned on labelled calibration images")
            finetune(model, x, y, epochs=config.finetune_epochs, lr=config.lr, batch_size=config.batch_size,
                     seed=seed)
    if config.tune:
        model, info["factors"] = tune_thresholds(model, x[:config.tune_samples], T, scales=config.scales)
    return model, info


def restructured_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, batch_size: int = 256) -> float:
    """Top-1 accuracy of a (restructured) QANN on ``(x, y)``."""
    with torch.no_grad():
        correct = sum(int((model(xb).argmax(-1) == yb).sum()) for xb, yb in batches(x, y, batch_size))
    return correct / max(1, len(y))
