"""Verification at export: each ONNX graph on onnxruntime against the PyTorch simulator, operator by operator.

**Criterion** (stated in every report). onnxruntime runs the graph with one extra output per stateful operator
(its output after every step: spike counts for IF neurons). The simulator then recomputes every stateful operator
*from onnxruntime's own values of the operators before it* (teacher forcing) and, for every sample, compares:

- each stateful operator's output after every step: equal (within ``VALUE_RTOL``; counts are integers), except at
  elements whose decision lies within float32 rounding of a threshold (*ties*, below);
- the logits after every step, from onnxruntime's values of the last stateful operators through the read-out:
  ``|ort − ref| ≤ LOGIT_RTOL · m`` per logit, ``m`` the magnitude of the terms that make that logit (the read-out
  with ``|weights|`` on ``|values|``). A tolerance of each logit's own terms: huge logits in another sample, another
  class or from a big bias never widen it, and a changed weight or bias is seen at any scale.

**Why operator by operator.** PyTorch (oneDNN) and onnxruntime (MLAS) sum in different orders, so a membrane within
a few float32 ulps of a threshold can fire in one and not in the other. Compared end to end, such a flip propagates
through every later layer: in a ResNet-50 (~3 M neurons × T decisions per image) every sample had one, so an
end-to-end check had no sample left to compare strictly. Recomputed from onnxruntime's own inputs, a flip stays
where it happened — the next operator sees onnxruntime's (flipped) spikes — and every other element of every sample
is still compared strictly, however deep the network. A wrong graph (a weight, a bias, a threshold, an operator)
moves decisions far from any threshold, or the logits, and the error names the operator.

**Ties.** A differing element is accepted only if its decision moves once every threshold of that operator is moved
by ``(1 ± TIE_EPS)`` (:meth:`~ann2snn.neurons.StatefulModule.tie_probe`), or else by ``(1 ± w)`` with
``w = TIE_ULPS · 2⁻²⁴ · m / θ``, ``m`` the magnitude of the terms of that element's accumulated input (the graph with
``|parameters|`` on ``|values|``): two float32 sums of the same terms in different orders differ by up to ~20 ulps
of ``m`` (measured against float64 on ResNet-50 and VGG-16: at most 10.7 ulps for PyTorch). Such elements are
counted (``tie_flips``); nothing else may differ.

Operators that make no decisions (a compensated operator, the spiking max of counts: ``tie_probe`` gives None) are
compared as float values, per sample: ``|ort − ref| ≤ CONTINUOUS_RTOL · (|ref| + max |ref| of the sample)``.

**Cost.** One onnxruntime run and one simulator pass per graph; with both graphs, samples on which the stateful
graph's every operator output equals the unrolled graph's reuse its results (:func:`verify_graphs`). The probe
outputs are fetched for a few samples at a time (:data:`CHUNK_BYTES`), and the default batch is 16 samples or fewer
for a large network (:func:`default_batch`): every neuron decision of every sample is compared, so two samples of a
ResNet-50 check more decisions than sixteen of a ResNet-20. Rejected alternatives: a float64 reference (onnxruntime
itself computes in float32, so its flips remain and still propagate); comparing integer spike counts end to end
(the same propagation); drawing samples until enough are free of ties (in a ResNet-50 none is).

A failure raises :class:`~ann2snn.errors.VerificationError`. :func:`reference`, :func:`tie_sensitive` and the
end-to-end comparison are kept for the NIR export (a PyTorch run with no intermediate outputs to force from).
"""

from __future__ import annotations

import copy
import math
import time
from typing import Any, Callable

import numpy as np
import torch
from torch import fx

from ann2snn.errors import VerificationError
from ann2snn.exporters.contract import INPUT, LOGITS, LOGITS_PER_STEP, LOGITS_T, PROBE_PREFIX
from ann2snn.neurons import StatefulModule
from ann2snn.simulator import _MultiStep, readout, run_steps

__all__ = ["GraphVerifier", "verify_graphs", "verify_unrolled", "verify_stateful", "strip_probes", "default_batch",
           "reference", "tie_sensitive", "example_batch", "RTOL", "ATOL", "TIE_EPS", "TIE_ULPS", "VALUE_RTOL",
           "CONTINUOUS_RTOL", "LOGIT_RTOL", "VERIFY_DECISIONS", "SHARE_BYTES"]

RTOL = 1e-4  # end-to-end comparison (NIR)
ATOL = 1e-4  # times max(1, max|ref|) of each sample (NIR)
TIE_EPS = 1e-6
TIE_ULPS = 128
VALUE_RTOL = 1e-5
CONTINUOUS_RTOL = 1e-4  # outputs of operators that make no decisions, of |value| + the sample's largest |value|
LOGIT_RTOL = 2.0 ** -16  # ~1.5e-5: 256 ulps of the magnitude of a logit's terms
_U = 2.0 ** -24  # float32 unit roundoff
#: onnxruntime's probe outputs are fetched for this many bytes of them per run at most (the batch is split)
CHUNK_BYTES = 1 << 27
#: the default verification batch: 16 samples, fewer (never under 2) when they would exceed this many neuron
#: decisions (stateful outputs × T × samples) per graph — every one of them is compared, so a few samples of a
#: large network check more than 16 of a small one (ResNet-20, T = 4: 16 samples, 12 M decisions; ResNet-50: 2
#: samples, 24 M)
VERIFY_DECISIONS = 1 << 25
#: the first verified graph's outputs are kept for the next (:class:`GraphVerifier`) up to this many bytes
SHARE_BYTES = 1 << 28


def example_batch(snn, *, batch: int = 16, seed: int = 0, T: int | None = None, encoding: str = "direct"):
    """A seeded verification input: uniform [0, 1) images (or Bernoulli spikes ``[T, B, ...]`` when encoded)."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, *snn.input_shape, generator=g)
    if encoding == "sequence":
        T = snn.T if T is None else T
        x = (torch.rand(T, *x.shape, generator=g) < x).float()
    return x


def strip_probes(model):
    """``model`` (``onnx.ModelProto``, changed in place and returned) without its verification outputs
    (``count.<module>``) and the nodes that only made them: the graph the export writes.

    The rest of the graph is left exactly as built and verified (same nodes, names, order and initializers).
    """
    g = model.graph
    probes = {o.name for o in g.output if o.name.startswith(PROBE_PREFIX)}
    kept = [o for o in g.output if o.name not in probes]
    del g.output[:]
    g.output.extend(kept)
    needed = {o.name for o in kept}
    keep_nodes = []
    for node in reversed(g.node):  # the graph is topologically sorted: walk back from the outputs
        if any(o in needed for o in node.output):
            keep_nodes.append(node)
            needed.update(i for i in node.input if i)
    dropped = len(g.node) - len(keep_nodes)
    if dropped:
        keep_nodes.reverse()
        del g.node[:]
        g.node.extend(keep_nodes)
        used = {i for n in g.node for i in n.input}
        inits = [t for t in g.initializer if t.name in used]
        del g.initializer[:]
        g.initializer.extend(inits)
        vis = [v for v in g.value_info if v.name in used]
        del g.value_info[:]
        g.value_info.extend(vis)
    return model


# ---------------------------------------------------------------------------------------------------------
# the end-to-end comparison (NIR)


@torch.no_grad()
def reference(snn, x: torch.Tensor, T: int, *, encoding: str = "direct") -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """The simulator's per-step logits ``[T, B, K]`` and each stateful operator's output summed over T."""
    totals: dict[str, np.ndarray] = {}

    def observe(node, inputs, output):
        if node.op == "call_module" and isinstance(snn.graph_module.get_submodule(node.target), StatefulModule):
            totals[node.target] = output.sum(0).numpy()

    out = run_steps(snn.graph_module, x, T, encoding=encoding, observer=observe, schedule=snn.schedule)
    return readout(out, snn.schedule).numpy(), totals


@torch.no_grad()
def tie_sensitive(snn, x: torch.Tensor, T: int, ref_logits: np.ndarray, *, encoding: str = "direct",
                  eps: float = TIE_EPS, ref_counts: dict[str, np.ndarray] | None = None) -> np.ndarray:
    """``[B]`` bool: samples whose simulated logits (or, given ``ref_counts``, any operator's output summed over T)
    change when every neuron decides at ``(1 ± eps)·θ`` (each stateful operator's own
    :meth:`~ann2snn.neurons.StatefulModule.tie_probe`)."""
    from ann2snn.passes.graph import set_module

    sensitive = np.zeros(ref_logits.shape[1], dtype=bool)
    for factor in (1.0 + eps, 1.0 - eps):
        gm = copy.deepcopy(snn.graph_module)
        for name, m in list(gm.named_modules()):
            probe = m.tie_probe(factor) if isinstance(m, StatefulModule) else None
            if probe is not None:
                set_module(gm, name, probe)
        totals: dict[str, torch.Tensor] = {}

        def observe(node, inputs, output, gm=gm, totals=totals):
            if node.op == "call_module" and isinstance(gm.get_submodule(node.target), StatefulModule):
                totals[node.target] = output.sum(0)

        out = readout(run_steps(gm, x, T, encoding=encoding, schedule=snn.schedule,
                                observer=observe if ref_counts else None), snn.schedule).numpy()
        sensitive |= ~_close(out, ref_logits)
        for name, ref in (ref_counts or {}).items():
            moved = np.abs(totals[name].numpy() - ref) > 1e-3 * np.maximum(1.0, np.abs(ref))
            sensitive |= moved.reshape(moved.shape[0], -1).any(1)
    return sensitive


def _sample_atol(ref: np.ndarray) -> np.ndarray:
    """``[B]``: ``ATOL · max(1, max|ref|)`` of each sample (over steps and classes), never of the whole batch."""
    scale = np.abs(ref).reshape(ref.shape[0], ref.shape[1], -1).max(axis=(0, 2), initial=0.0)
    return ATOL * np.maximum(1.0, scale)


def _close(a: np.ndarray, ref: np.ndarray) -> np.ndarray:
    """``[B]`` bool: per sample, all per-step logits within the stated tolerance."""
    atol = _sample_atol(ref).reshape(1, -1, *([1] * (ref.ndim - 2)))
    bad = (np.abs(a - ref) > atol + RTOL * np.abs(ref)).reshape(ref.shape[0], ref.shape[1], -1).any(axis=(0, 2))
    return ~bad


def _compare(ort_logits: np.ndarray, ref: np.ndarray, what: str, sensitive=None,
             also_bad: np.ndarray | None = None) -> dict[str, Any]:
    """End-to-end: compare per-step logits (and ``also_bad``: samples failing another check);
    ``sensitive()`` (computed only when something differs) marks the tie-sensitive samples."""
    if ort_logits.shape != ref.shape:
        raise VerificationError(f"{what}: gives logits of shape {ort_logits.shape}, the simulator "
                                f"{ref.shape}; the export is wrong, please report it")
    atol = float(_sample_atol(ref).max(initial=ATOL))
    err = np.abs(ort_logits - ref)
    bad = ~_close(ort_logits, ref)
    if also_bad is not None:
        bad |= also_bad
    agree = float((ort_logits[-1].argmax(-1) == ref[-1].argmax(-1)).mean())
    rep = {"max_abs_error": float(err.max(initial=0.0)), "rtol": RTOL, "atol": atol,
           "samples": int(ref.shape[1]), "mismatched_samples": int(bad.sum()), "argmax_agreement": agree,
           "tie_sensitive_samples": 0, "tie_eps": TIE_EPS}
    if bad.any():
        tie = sensitive() if sensitive is not None else np.zeros_like(bad)
        rep["tie_sensitive_samples"] = int(tie.sum())
        unexplained = bad & ~tie
        if unexplained.any() or tie.all():
            raise VerificationError(
                f"{what} does not match the simulator: {int(unexplained.sum())}/{ref.shape[1]} samples differ beyond "
                f"atol={atol:.2g} (per sample), rtol={RTOL:g} or in spike counts (max logit error "
                f"{rep['max_abs_error']:.3g}), besides {int(tie.sum())} tie-sensitive ones; the export is wrong — "
                "rerun with --verbose and report it, or pass --no-verify to write it anyway")
        rep["max_abs_error_strict"] = float(err[:, ~tie].max(initial=0.0))
    return rep


# ---------------------------------------------------------------------------------------------------------
# operator by operator (ONNX)


class _Forced(_MultiStep):
    """The simulator's multi-step run in which every stateful operator's output is onnxruntime's.

    ``given``: node name → onnxruntime's accumulated output ``[T, B, ...]`` (after steps 1..t). At a stateful node
    ``on_op(node, module, inputs)`` sees the inputs recomputed from the forced values before it (``[T, B, ...]``);
    downstream gets onnxruntime's per-step messages (``abs_messages``: their absolute values, for magnitudes).
    ``needed``: node names to compute (None: all); the others are skipped.
    """

    def __init__(self, gm: fx.GraphModule, T: int, *, static_input: bool, schedule, given: dict[str, torch.Tensor],
                 on_op: Callable | None = None, needed: set[str] | None = None, abs_messages: bool = False) -> None:
        super().__init__(gm, T, static_input=static_input, schedule=schedule)
        self.given, self.on_op, self.needed, self.abs_messages = given, on_op, needed, abs_messages

    def run_node(self, n: fx.Node):
        if self.needed is not None and n.op != "placeholder" and n.name not in self.needed:
            return None
        return super().run_node(n)

    def _run_node(self, n: fx.Node):
        if n.op == "call_module":
            m = self.fetch_attr(n.target)
            if isinstance(m, StatefulModule):
                if self.on_op is not None and all(a in self.env for a in n.all_input_nodes):
                    self.on_op(n, m, [self.as_sequence(a) for a in n.args])
                acc = self.given[n.target]
                msg = torch.diff(acc, dim=0, prepend=torch.zeros_like(acc[:1]))
                return (msg.abs() if self.abs_messages else msg).flatten(0, 1)
        return super()._run_node(n)


class _Magnitudes:
    """The spiking graph with ``|parameters|``, for the magnitude of the terms each value is summed from: run on
    ``|x|`` with ``|messages|`` forced in, its affine operators give ``Σ|wᵢ·xᵢ| + |b|`` — what float32 rounding
    scales with. One per verification; an operator is copied (and made absolute) only when a run needs it, the
    rest is shared with the network."""

    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = fx.GraphModule(gm, copy.deepcopy(gm.graph))  # its own graph; submodules shared until replaced
        self.done: set[str] = set()

    def graph_for(self, needed: set[str]) -> fx.GraphModule:
        from ann2snn.passes.graph import set_module

        gm = self.gm
        for n in gm.graph.nodes:
            if n.name not in needed or n.name in self.done or n.op not in ("call_module", "get_attr"):
                continue
            self.done.add(n.name)
            owner, _, attr = n.target.rpartition(".")
            value = gm.get_submodule(n.target) if n.op == "call_module" else getattr(
                gm.get_submodule(owner) if owner else gm, attr)
            if isinstance(value, StatefulModule):
                continue  # forced, never run
            value = copy.deepcopy(value)
            with torch.no_grad():
                for t in ([value] if isinstance(value, torch.Tensor) else [*value.parameters(), *value.buffers()]):
                    if t.is_floating_point():
                        t.abs_()
            if n.op == "call_module":
                set_module(gm, n.target, value)
            else:
                setattr(gm.get_submodule(owner) if owner else gm, attr, value)
        return gm


def _slice(gm: fx.GraphModule, targets: list[fx.Node]) -> set[str]:
    """Names of ``targets`` and every node they depend on, stopping at stateful operators (kept as boundary)."""
    modules = dict(gm.named_modules())
    seen: set[str] = set()
    stack = list(targets)
    while stack:
        n = stack.pop()
        if n.name in seen:
            continue
        seen.add(n.name)
        if n in targets or not (n.op == "call_module" and isinstance(modules.get(n.target), StatefulModule)):
            stack.extend(n.all_input_nodes)
    return seen


def _tail(gm: fx.GraphModule) -> set[str]:
    """The read-out: the output and what it depends on back to the last stateful operators (:func:`_slice`)."""
    out = next(n for n in gm.graph.nodes if n.op == "output")
    return _slice(gm, [out])


class _Tally:
    """What the operator-by-operator check found, per sample of one batch (chunks fill in their samples)."""

    def __init__(self, batch: int) -> None:
        self.batch = batch
        self.equal: dict[str, np.ndarray] = {}  # operator -> per sample: output elements equal
        self.total: dict[str, np.ndarray] = {}  # operator -> per sample: output elements
        self.unexplained: dict[str, np.ndarray] = {}  # operator -> per sample: elements differing beyond ties
        self.flips = np.zeros(batch, dtype=np.int64)  # elements differing at ties
        self.logit_bad = np.zeros(batch, dtype=bool)
        self.agree = np.zeros(batch, dtype=bool)
        self.logit_error = np.zeros(batch)
        self.logit_ratio = np.zeros(batch)  # error / magnitude of the terms
        self.reused = np.zeros(batch, dtype=bool)

    def _per_sample(self, table: dict[str, np.ndarray], name: str) -> np.ndarray:
        if name not in table:
            table[name] = np.zeros(self.batch, dtype=np.int64)
        return table[name]

    def op(self, name: str, bad: torch.Tensor, samples: np.ndarray) -> None:
        """``bad`` ``[b, ...]``: where operator ``name``'s output differs, for the batch's ``samples``."""
        per = bad.flatten(1)
        self._per_sample(self.total, name)[samples] += per.shape[1]
        self._per_sample(self.equal, name)[samples] += per.shape[1] - per.sum(1).numpy()

    def flipped(self, flips: torch.Tensor, samples: np.ndarray) -> None:
        np.add.at(self.flips, samples, flips.flatten(1).sum(1).numpy())

    def wrong(self, name: str, still: torch.Tensor, samples: np.ndarray) -> None:
        np.add.at(self._per_sample(self.unexplained, name), samples, still.flatten(1).sum(1).numpy())

    def reuse(self, other: "_Tally", samples: np.ndarray) -> None:
        """Take ``other``'s operator results for ``samples`` (whose every operator output is the same here)."""
        for mine, theirs in ((self.equal, other.equal), (self.total, other.total),
                             (self.unexplained, other.unexplained)):
            for name, values in theirs.items():
                self._per_sample(mine, name)[samples] = values[samples]
        self.flips[samples] = other.flips[samples]
        self.reused[samples] = True

    def report(self, T: int) -> dict[str, Any]:
        equal = sum(int(v.sum()) for v in self.equal.values())
        total = sum(int(v.sum()) for v in self.total.values())
        bad = self.logit_bad.copy()
        for v in self.unexplained.values():
            bad |= v > 0
        return {"criterion": "operator by operator: each stateful operator recomputed from onnxruntime's own inputs",
                "max_abs_error": float(self.logit_error.max(initial=0.0)),
                "max_error_over_magnitude": float(self.logit_ratio.max(initial=0.0)),
                "rtol": LOGIT_RTOL, "atol": 0.0, "samples": self.batch, "mismatched_samples": int(bad.sum()),
                "argmax_agreement": float(self.agree.mean()) if self.batch else 1.0,
                "tie_sensitive_samples": int((self.flips > 0).sum()), "tie_flips": int(self.flips.sum()),
                "tie_eps": TIE_EPS, "tie_ulps": TIE_ULPS, "operators_checked": len(self.total),
                "decisions_checked": total * T, "spike_count_agreement": equal / max(total, 1),
                "spike_counts_compared": total,
                "spike_count_agreement_min_op": min((int(self.equal[k].sum()) / max(int(v.sum()), 1)
                                                     for k, v in self.total.items()), default=1.0),
                "samples_shared_with_unrolled": int(self.reused.sum())}


class _Checker:
    """Checks chunks of samples: the forced run, each stateful operator, the logits."""

    def __init__(self, snn, T: int, encoding: str, tally: _Tally, magnitudes: "_Magnitudes") -> None:
        self.snn, self.T, self.encoding, self.tally = snn, T, encoding, tally
        self.gm = snn.graph_module
        self.magnitudes = magnitudes
        self.tail = _tail(self.magnitudes.gm)

    def _run(self, gm, x, given, **kw):
        direct = self.encoding == "direct"
        run = _Forced(gm, self.T, static_input=direct, schedule=self.snn.schedule, given=given, **kw)
        out = run.run(x if direct else x.flatten(0, 1))
        return None if out is None else out.unflatten(0, (self.T, -1))

    @torch.no_grad()
    def check(self, x: torch.Tensor, given: dict[str, torch.Tensor], ort_per_step: np.ndarray,
              samples: np.ndarray) -> tuple[torch.Tensor, np.ndarray]:
        """``x``: some samples of the batch (their indices ``samples``); ``given``: onnxruntime's accumulated
        outputs per stateful operator; ``ort_per_step``: its logits after every step ``[T, b, K]``. Returns the
        reference logits and the magnitude of their terms (for :meth:`logits`)."""
        pending: list[tuple] = []
        tally = self.tally

        def on_op(node, m, xs):
            ref = m.multi_step(*xs).cumsum(0)
            ort = given[node.target]
            if ort.shape != ref.shape:
                raise VerificationError(f"the ONNX graph gives {node.target} an output of shape {tuple(ort.shape)}, "
                                        f"the simulator {tuple(ref.shape)}; the export is wrong, please report it")
            decides = m.tie_probe(1.0) is not None
            if decides:  # spike counts (integers, times θ)
                tol = VALUE_RTOL * ref.abs().clamp(min=1.0)
            else:  # no decisions (a compensated operator, the max of counts): float values, per sample
                scale = ref.abs().flatten(2).amax(dim=(0, 2)).clamp(min=1.0)
                tol = CONTINUOUS_RTOL * (ref.abs() + scale.reshape(1, -1, *([1] * (ref.dim() - 2))))
            bad = ((ort - ref).abs() > tol).any(0)  # [b, ...]
            tally.op(node.target, bad, samples)
            if not bad.any():
                return
            if not decides:
                tally.wrong(node.target, bad, samples)
                return
            rows = bad.flatten(1).any(1).nonzero().flatten()
            sub = [a[:, rows] for a in xs]
            tie = _sensitive(m, sub, ref[:, rows], TIE_EPS)
            tally.flipped(bad[rows] & tie, samples[rows.numpy()])
            left = bad[rows] & ~tie
            if left.any():
                pending.append((node, m, sub, ref[:, rows], left, rows))

        out = self._run(self.gm, x, given, on_op=on_op)
        ref = readout(out, self.snn.schedule)
        if pending:
            self._resolve(x, given, pending, samples)
        gm_abs = self.magnitudes.graph_for(self.tail)
        mag = readout(self._run(gm_abs, x.abs(), given, needed=self.tail, abs_messages=True),
                      self.snn.schedule).numpy()  # Σ|terms| / N(t)
        self.logits(ref, mag, ort_per_step, samples)
        return ref, mag

    def _resolve(self, x, given, pending, samples: np.ndarray) -> None:
        """Differences not explained at ``TIE_EPS``: test each against the float32 rounding of its own input's terms
        (a second, absolute-valued forced run on the samples concerned)."""
        rows = torch.unique(torch.cat([p[5] for p in pending]))
        sub_x = x[rows] if self.encoding == "direct" else x[:, rows]
        sub_given = {k: v[:, rows] for k, v in given.items()}
        mags: dict[str, torch.Tensor] = {}
        targets = [p[0] for p in pending]
        nodes = {n.name: n for n in self.magnitudes.gm.graph.nodes}
        needed = _slice(self.magnitudes.gm, [nodes[t.name] for t in targets])
        gm_abs = self.magnitudes.graph_for(needed)
        by_name = {t.name for t in targets}

        def on_op(node, m, xs):
            if node.name in by_name:
                mags[node.name] = sum(a.cumsum(0).amax(0) for a in xs)

        self._run(gm_abs, sub_x.abs(), sub_given, on_op=on_op, needed=needed, abs_messages=True)
        where = {r: i for i, r in enumerate(rows.tolist())}
        for node, m, xs, ref, left, prow in pending:
            idx = torch.tensor([where[r] for r in prow.tolist()])
            theta = getattr(m, "threshold", None)
            theta = torch.ones(()) if not isinstance(theta, torch.Tensor) else theta.abs()
            w = TIE_ULPS * _U * mags[node.name][idx] / theta  # [b', ...] window per element, relative to θ
            explained = torch.zeros_like(left)
            buckets = torch.exp2(torch.ceil(torch.log2(w.clamp(min=TIE_EPS))))
            for b in torch.unique(buckets[left]).tolist():
                sens = _sensitive(m, xs, ref, b)
                explained |= left & sens & (buckets >= b)  # within its own window
            at = samples[prow.numpy()]
            self.tally.flipped(explained, at)
            still = left & ~explained
            if still.any():
                self.tally.wrong(node.target, still, at)

    def logits(self, ref: torch.Tensor, mag: np.ndarray, ort: np.ndarray, samples: np.ndarray) -> None:
        """onnxruntime's logits against the read-out of its own last stateful outputs (``ref``), each within
        ``LOGIT_RTOL`` of the magnitude ``mag`` of its terms."""
        if tuple(ort.shape) != tuple(ref.shape):
            raise VerificationError(f"the ONNX graph gives logits of shape {tuple(ort.shape)}, the simulator "
                                    f"{tuple(ref.shape)}; the export is wrong, please report it")
        ref = ref.numpy()
        err = np.abs(ort - ref).reshape(ref.shape[0], ref.shape[1], -1)
        mag = mag.reshape(err.shape)
        t = self.tally
        t.logit_bad[samples] = (err > LOGIT_RTOL * mag).any(axis=(0, 2))
        t.logit_error[samples] = err.max(axis=(0, 2), initial=0.0)
        t.logit_ratio[samples] = (err / np.maximum(mag, np.finfo(np.float32).tiny)).max(axis=(0, 2), initial=0.0)
        t.agree[samples] = ort[-1].argmax(-1) == ref[-1].argmax(-1)


def _sensitive(m: StatefulModule, xs: list[torch.Tensor], ref: torch.Tensor, eps: float) -> torch.Tensor:
    """``[b, ...]`` bool: elements whose accumulated output moves when ``m`` decides at ``(1 ± eps)·θ``."""
    out = torch.zeros(ref.shape[1:], dtype=torch.bool)
    for factor in (1.0 + eps, 1.0 - eps):
        probe = m.tie_probe(factor)
        if probe is None:
            continue
        moved = (probe.multi_step(*xs).cumsum(0) - ref).abs() > VALUE_RTOL * ref.abs().clamp(min=1.0)
        out |= moved.any(0)
    return out


def _raise_if_failed(tally: _Tally, what: str) -> None:
    if tally.unexplained:
        name, counts = max(tally.unexplained.items(), key=lambda kv: int(kv[1].sum()))
        others = sum(1 for v in tally.unexplained.values() if v.any()) - 1
        if counts.any():
            raise VerificationError(
                f"{what} does not match the simulator at {name}: {int(counts.sum())} outputs of "
                f"{int((counts > 0).sum())}/{tally.batch} samples differ away from any threshold tie, recomputed from "
                "onnxruntime's own inputs to that operator" + (f" (and at {others} other operators)" if others else "")
                + "; the export is wrong — rerun with --verbose and report it, or pass --no-verify to write it anyway")
    if tally.logit_bad.any():
        raise VerificationError(
            f"{what} does not match the simulator: the logits of {int(tally.logit_bad.sum())}/{tally.batch} samples "
            f"differ from the read-out of its own last spikes by up to {tally.logit_ratio.max():.3g} of their terms' "
            f"magnitude (allowed {LOGIT_RTOL:.2g}, max |error| {tally.logit_error.max():.3g}); the export is wrong — "
            "rerun with --verbose and report it, or pass --no-verify to write it anyway")


def default_batch(snn, T: int, shapes: dict | None = None) -> int:
    """The verification batch when none is given: 16, or fewer for a large network (:data:`VERIFY_DECISIONS`)."""
    per_sample = _stateful_numel(snn, shapes) * T
    return int(min(16, max(2, VERIFY_DECISIONS // max(per_sample, 1))))


def _stateful_numel(snn, shapes: dict | None) -> int:
    """Elements of all stateful operators' outputs, per sample and step."""
    from ann2snn.exporters.common import node_shapes

    gm = snn.graph_module
    shapes = node_shapes(gm, snn.input_shape) if shapes is None else shapes
    modules = dict(gm.named_modules())
    return sum(math.prod(shapes[n]) for n in gm.graph.nodes
               if n.op == "call_module" and isinstance(modules.get(n.target), StatefulModule))


def _chunks(snn, shapes: dict | None, x: torch.Tensor, T: int, encoding: str) -> int:
    """Samples per onnxruntime run: the probe outputs of one run stay under :data:`CHUNK_BYTES`."""
    numel = _stateful_numel(snn, shapes)
    batch = x.shape[1] if encoding == "sequence" else x.shape[0]
    per_sample = max(1, numel * T * 4 * 4)  # onnxruntime's outputs (both graphs), the simulator's and its sum
    return max(1, min(batch, CHUNK_BYTES // per_sample))


def _batch_slices(x: torch.Tensor, encoding: str, size: int):
    batch = x.shape[1] if encoding == "sequence" else x.shape[0]
    for i in range(0, batch, size):
        yield i, (x[i:i + size] if encoding == "direct" else x[:, i:i + size])


_WHAT = {"unrolled": "the unrolled ONNX graph", "stateful": "the stateful ONNX graph driven T times"}


class GraphVerifier:
    """Checks the graphs of one export, one at a time, on one batch (module docstring).

    Graphs are verified one after the other so that only one onnxruntime session exists at a time. The first graph's
    results per sample (its operators' outputs, the reference logits and their magnitudes: at most about
    :data:`VERIFY_DECISIONS` values for the default batch) are kept for the next: a sample on which the next graph's
    every operator output equals the first's, bit for bit at every step, gets the first graph's operator results —
    the recomputed inputs, hence the reference outputs and their ties, are then the same; its logits are still
    compared, and the other samples are checked on their own.
    """

    def __init__(self, snn, *, T: int, encoding: str = "direct", x: torch.Tensor | None = None,
                 provider: str = "cpu", shapes: dict | None = None) -> None:
        self.snn, self.T, self.encoding, self.provider, self.shapes = snn, T, encoding, provider, shapes
        self.x = example_batch(snn, T=T, encoding=encoding) if x is None else x
        self.batch = self.x.shape[1] if encoding == "sequence" else self.x.shape[0]
        self.magnitudes = _Magnitudes(snn.graph_module)
        self.first: tuple[_Tally, list] | None = None  # the first graph's tally and per-chunk results

    def verify(self, fmt: str, model) -> dict[str, Any]:
        """Check ``model`` (``onnx.ModelProto`` or bytes, built with probes) of format ``fmt`` (``"unrolled"`` or
        ``"stateful"``); returns its report, raises :class:`VerificationError` on a mismatch. The model's bytes
        exist only while its session is made."""
        if fmt not in _WHAT:
            raise VerificationError(f"cannot verify a graph of format {fmt!r}; formats: {', '.join(_WHAT)}")
        t0 = time.perf_counter()
        run, used = self._runner(fmt, model)
        tally = _Tally(self.batch)
        checker = _Checker(self.snn, self.T, self.encoding, tally, self.magnitudes)
        keep: list | None = [] if self.first is None else None
        shared = self.first[1] if self.first is not None else []
        kept_bytes = 0
        chunks = _batch_slices(self.x, self.encoding, _chunks(self.snn, self.shapes, self.x, self.T, self.encoding))
        for i, (offset, xb) in enumerate(chunks):
            samples = np.arange(offset, offset + (xb.shape[1] if self.encoding == "sequence" else xb.shape[0]))
            given, per_step = run(xb)
            if not given:
                raise VerificationError(f"{_WHAT[fmt]} to verify has no probe outputs; build it with probes=True")
            first = shared[i] if i < len(shared) else None
            same = _same_outputs(given, first[0]) if first else torch.zeros(len(samples), dtype=torch.bool)
            rows = same.nonzero().flatten().numpy()
            if len(rows):
                _, ref, mag = first
                tally.reuse(self.first[0], samples[rows])
                checker.logits(ref[:, rows], mag[:, rows], per_step[:, rows], samples[rows])
            rest = (~same).nonzero().flatten()
            if len(rest) == len(samples):
                ref, mag = checker.check(xb, given, per_step, samples)
                if keep is not None:
                    kept_bytes += sum(v.numel() * v.element_size() for v in given.values())
                    keep.append((given, ref, mag) if kept_bytes <= SHARE_BYTES else None)
            elif len(rest):
                sub = xb[rest] if self.encoding == "direct" else xb[:, rest]
                checker.check(sub, {n: v[:, rest] for n, v in given.items()}, per_step[:, rest.numpy()],
                              samples[rest.numpy()])
        _raise_if_failed(tally, _WHAT[fmt])
        if keep is not None:
            self.first = (tally, keep)
        rep = tally.report(self.T)
        rep.update(provider=used, seconds=time.perf_counter() - t0)
        return rep

    def _runner(self, fmt: str, model) -> tuple[Callable, str]:
        """``(run, provider used)``: ``run(x)`` gives onnxruntime's accumulated output per stateful operator and the
        logits after every step."""
        from ann2snn.exporters.contract import readout_counts
        from ann2snn.runtime import StatefulRunner, make_session

        data = model if isinstance(model, bytes) else model.SerializeToString()
        if fmt == "unrolled":
            sess, used = make_session(data, provider=self.provider, memory_pattern=False)  # half the memory
            del data
            names = [o.name for o in sess.get_outputs()]
            ops = [n for n in names if n.startswith(PROBE_PREFIX)]

            def run(xb):
                outs = dict(zip(names, sess.run(None, {INPUT: xb.numpy()})))
                if not np.allclose(outs[LOGITS], outs[LOGITS_PER_STEP][-1]):
                    raise VerificationError("the unrolled ONNX graph's logits differ from its last per-step logits; "
                                            "the export is wrong, please report it")
                return {n[len(PROBE_PREFIX):]: torch.from_numpy(outs[n]) for n in ops}, outs[LOGITS_PER_STEP]

            return run, used
        runner = StatefulRunner(data, provider=self.provider)
        del data
        ops = [o.name for o in runner.session.get_outputs() if o.name.startswith(PROBE_PREFIX)]
        n_t = np.asarray(readout_counts(self.T, runner.convention, runner.schedule_length), dtype=np.float32)

        def run(xb):
            outs = runner.run_outputs(xb.numpy(), self.T, extra=ops)
            per_step = np.cumsum(outs[LOGITS_T], 0) / n_t.reshape(-1, *([1] * (outs[LOGITS_T].ndim - 1)))
            return {n[len(PROBE_PREFIX):]: torch.from_numpy(np.cumsum(outs[n], 0)) for n in ops}, per_step

        return run, runner.provider


def _same_outputs(given: dict[str, torch.Tensor], other: dict[str, torch.Tensor]) -> torch.Tensor:
    """``[b]`` bool: samples on which every operator output of ``given`` equals ``other``'s, bit for bit."""
    b = next(iter(given.values())).shape[1]
    if set(given) != set(other):
        return torch.zeros(b, dtype=torch.bool)
    same = torch.ones(b, dtype=torch.bool)
    for name, v in given.items():
        if v.shape != other[name].shape:
            return torch.zeros(b, dtype=torch.bool)
        same &= (v == other[name]).transpose(0, 1).flatten(1).all(1)
    return same


def verify_graphs(snn, models: dict[str, Any], *, T: int, encoding: str = "direct", x: torch.Tensor | None = None,
                  provider: str = "cpu", shapes: dict | None = None) -> dict[str, dict[str, Any]]:
    """Check graphs built with probes (``{"unrolled": model, "stateful": model}``, either or both; each
    ``onnx.ModelProto`` or its bytes) with one :class:`GraphVerifier`; returns a report per graph."""
    v = GraphVerifier(snn, T=T, encoding=encoding, x=x, provider=provider, shapes=shapes)
    return {fmt: v.verify(fmt, model) for fmt, model in models.items()}


def verify_unrolled(snn, model_bytes: bytes, *, T: int, encoding: str = "direct", x: torch.Tensor | None = None,
                    provider: str = "cpu", shapes: dict | None = None) -> dict[str, Any]:
    """Check an unrolled graph built with probes (``build_unrolled(..., probes=True)``): :func:`verify_graphs`."""
    return verify_graphs(snn, {"unrolled": model_bytes}, T=T, encoding=encoding, x=x, provider=provider,
                         shapes=shapes)["unrolled"]


def verify_stateful(snn, model_bytes: bytes, *, T: int, encoding: str = "direct", x: torch.Tensor | None = None,
                    provider: str = "cpu", shapes: dict | None = None) -> dict[str, Any]:
    """Drive a one-step graph built with probes (``build_stateful(..., probes=True)``) T times with
    :class:`ann2snn.runtime.StatefulRunner` and check it: :func:`verify_graphs`."""
    return verify_graphs(snn, {"stateful": model_bytes}, T=T, encoding=encoding, x=x, provider=provider,
                         shapes=shapes)["stateful"]
