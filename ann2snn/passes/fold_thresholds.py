"""Fold QCFS thresholds into weights, so every neuron has threshold 1 and emits binary spikes.

Every value in the graph is tracked as ``actual = scale ⊙ stored``, with ``scale`` a tensor broadcastable to
one sample (``[1, C, 1, 1]``, ``[1, F]``, or ``None`` for 1). What each node does with scales is its operator
record's :class:`~ann2snn.ops.Fold` role:

- a quantizer (QCFS, signed QCFS) with threshold θ wants its input stored in threshold units (``z / θ``) and
  produces values of scale θ (θ_p for a signed one: its negative side keeps θ_n/θ_p in the unit quantizer);
- an *absorbing* op (conv / linear / Affine) takes its input's scale into its weight columns
  (``W[:, c] *= s_c``) and can rescale its output by its rows (``W[o, :] /= t_o``, ``b[o] /= t_o``) when it
  feeds only the op asking;
- pooling *commutes* with a per-channel scale, flatten *reshapes* it, ``+`` and ``cat`` *join* two scales;
  requests pass back through them to their producers;
- where no producer can be rescaled (an identity shortcut carrying another neuron's θ, the network input) an
  explicit per-channel :class:`Affine` scale is inserted on that edge and counted.

The QANN's function does not change: each quantizer is swapped for its unit-threshold form (``q.to_unit()``)
that reads threshold units, which ``to_spiking`` turns into a neuron with threshold 1.
"""

from __future__ import annotations

import torch
from torch import fx

from ann2snn.errors import ConversionError
from ann2snn.layers import QCFS, Affine
from ann2snn.ops import Fold, OpRecord, Spiking, record_for
from ann2snn.ops.graph import apply_node, index_map
from ann2snn.ops.scales import Scale, compact, full, only_along, same
from ann2snn.passes.graph import PassResult, finish, modules_of, set_module, shape_of, tensor_inputs, unique_name


def fold_thresholds(gm: fx.GraphModule) -> PassResult:
    """Fold every quantizer threshold of ``gm`` into its neighbours (in place); see the module docstring."""
    folder = _Folder(gm)
    for node in list(gm.graph.nodes):
        folder.visit(node)
    ch = folder.changes
    return PassResult(finish(gm), ch, {
        "qcfs_found": len(ch["thresholds"]), "thresholds_folded": len(ch["thresholds"]),
        "producers_rescaled": len(ch["rescaled_producers"]), "explicit_scales": len(ch["explicit_scales"])})


def unit_qcfs(q: QCFS) -> QCFS:
    """The unit quantizer as built before ``QCFS.to_unit`` existed; unused by the pass, kept only while
    tests/test_layers.py compares ``to_unit`` against it (remove both together)."""
    unit = QCFS(q.levels, shift=q.shift, granularity="layer", positive="none", init_threshold=1.0)
    unit.lam.requires_grad_(False)
    return unit


def _check_positive(node: fx.Node, what: str, theta: torch.Tensor) -> None:
    bad = int((theta <= 0).sum())
    if bad:
        raise ConversionError(
            f"QCFS {node.target!r} has {bad} {what}(s) <= 0 (min {float(theta.min()):.4g}); a spiking neuron "
            "needs θ > 0: train with positive='softplus' (S-/CS-QCFS) or clamp the thresholds"
        )


def _keeps_channels(node: fx.Node) -> bool:
    """Whether a pooling / mean node keeps dim 1 (the channels) where it was, each output channel made of its own
    input channel only: a per-channel scale then commutes with it. A mean over dim 1 does not, even when another
    dim of its output happens to have as many entries (``[B, C, H, W] -> [B, H, W]`` with ``H == C``)."""
    out_shape, in_shape = shape_of(node), shape_of(node.args[0])
    if len(out_shape) < 2 or out_shape[1] != in_shape[1]:
        return False
    if node.op == "call_module":
        return True  # pooling modules: [B, C, ...] -> [B, C, ...]
    dims = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim")
    dims = [dims] if isinstance(dims, int) else list(dims or ())
    return bool(dims) and all(d % len(in_shape) >= 2 for d in dims)


class _Folder:
    def __init__(self, gm: fx.GraphModule) -> None:
        self.gm = gm
        self.changes: dict = {"thresholds": [], "rescaled_producers": [], "explicit_scales": []}
        self.modules = modules_of(gm)
        self.scale: dict[fx.Node, Scale] = {}
        self.records: dict[fx.Node, OpRecord | None] = {n: record_for(n, self.modules) for n in gm.graph.nodes}
        self._visit = {
            Fold.SOURCE: self._source, Fold.ABSORB: self._absorb, Fold.QUANTIZER: self._quantizer,
            Fold.COMMUTE: self._commute, Fold.RESHAPE: self._reshape, Fold.JOIN_ADD: self._join_add,
            Fold.JOIN_CAT: self._join_cat, Fold.SINK: self._sink, Fold.BARRIER: self._barrier,
            Fold.OPAQUE: self._opaque,
        }

    def role(self, node: fx.Node) -> Fold | None:
        rec = self.records.get(node)
        return rec.fold if rec is not None else None

    # --- forward propagation -----------------------------------------------------------------------
    def visit(self, node: fx.Node) -> None:
        rec = self.records[node]
        if rec is None:
            raise ConversionError(f"fold_thresholds met an unsupported node ({node.format_node()}); run normalize "
                                  "first")
        self._visit[rec.fold](node)

    def _source(self, node: fx.Node) -> None:
        self.scale[node] = None

    def _sink(self, node: fx.Node) -> None:
        for src in tensor_inputs(node):
            self.request(src, None, node)

    def _opaque(self, node: fx.Node) -> None:
        for src in tensor_inputs(node):
            self.request(src, None, node)
        self.scale[node] = None

    def _barrier(self, node: fx.Node) -> None:
        rec = self.records[node]
        if rec.spiking is Spiking.STATEFUL:
            raise ConversionError(f"node {node.name} is already a spiking operator; convert the QANN, not an SNN")
        raise ConversionError(f"fold_thresholds met a {rec.kind} node ({node.format_node()}); run normalize and "
                              "fold_batchnorm first")

    def _absorb(self, node: fx.Node) -> None:
        src = node.args[0]
        s = self.scale[src]
        rule = self.records[node].scale
        if s is not None and not rule.absorb_input(self.modules[node.target], s, shape_of(src)):
            self.request(src, None, node)  # varies along a dim the weights cannot absorb: bring it to 1 first
        self.scale[node] = None

    def _quantizer(self, node: fx.Node) -> None:
        q = self.modules[node.target]
        ndim = len(shape_of(node))
        theta = q.broadcast_threshold(ndim).detach().clone()
        _check_positive(node, "threshold", theta)
        signed = bool(getattr(q, "signed", False))
        if signed:
            _check_positive(node, "negative threshold", q.broadcast_neg_threshold(ndim).detach())
        self.request(node.args[0], theta, node)
        set_module(self.gm, node.target, q.to_unit())
        self.modules[node.target] = self.gm.get_submodule(node.target)
        self.scale[node] = compact(theta)
        th = q.threshold.detach()
        self.changes["thresholds"].append({
            "node": node.target, "granularity": q.granularity, "count": th.numel(),
            "min": float(th.min()), "max": float(th.max()), "levels": q.levels, "shift": q.shift, "signed": signed,
        })

    def _commute(self, node: fx.Node) -> None:
        src = node.args[0]
        s = self.scale[src]
        if s is None:
            self.scale[node] = None
            return
        vec = only_along(s, len(shape_of(src)), 1)
        out_ndim = len(shape_of(node))
        if vec is None or (vec.numel() > 1 and not _keeps_channels(node)):
            self.request(src, None, node)  # pooling mixes positions with different scales: make them 1
            self.scale[node] = None
            return
        self.scale[node] = vec.reshape([1, -1] + [1] * (out_ndim - 2)) if vec.numel() > 1 else vec.reshape(
            [1] * out_ndim)

    def _reshape(self, node: fx.Node) -> None:
        src = node.args[0]
        s = self.scale[src]
        self.scale[node] = None if s is None else compact(self._apply(node, full(s, shape_of(src))))

    def _apply(self, node: fx.Node, value: torch.Tensor) -> torch.Tensor:
        """``node``'s own op on ``value`` in place of its first input (a scale moves as the values do)."""
        return apply_node(node, value, self.modules)

    def _join_add(self, node: fx.Node) -> None:
        a, b = node.args[0], node.args[1]
        shape = shape_of(node)
        sa, sb = self.scale[a], self.scale[b]
        if not same(sa, sb, shape):
            if self._rescalable(b, node):
                self.request(b, sa, node)
            elif self._rescalable(a, node):
                self.request(a, sb, node)
            else:
                self.request(b, sa, node)
        self.scale[node] = self.scale[node.args[0]]  # an explicit scale inserted on `a` is args[0] now

    def _join_cat(self, node: fx.Node) -> None:
        srcs = list(node.args[0])
        dim = node.args[1] if len(node.args) > 1 else node.kwargs.get("dim", 0)
        scales = [self.scale[s] for s in srcs]
        if all(s is None for s in scales):
            self.scale[node] = None
            return
        if dim % len(shape_of(node)) == 0:
            for s in srcs:
                self.request(s, None, node)
            self.scale[node] = None
            return
        self.scale[node] = compact(torch.cat([full(sc, shape_of(s)) for sc, s in zip(scales, srcs)], dim))

    # --- backward requests -------------------------------------------------------------------------
    def _rescalable(self, node: fx.Node, user: fx.Node) -> bool:
        if len(node.users) != 1 or user not in node.users:
            return False
        role = self.role(node)
        if role is Fold.ABSORB:
            return True
        if role in (Fold.COMMUTE, Fold.RESHAPE):
            return self._rescalable(node.args[0], node)
        if role is Fold.JOIN_ADD:
            return all(self._rescalable(x, node) for x in node.args[:2])
        return False

    def request(self, node: fx.Node, target: Scale, user: fx.Node) -> None:
        """Make the value ``node`` sends to ``user`` have scale ``target``."""
        shape = shape_of(node)
        cur = self.scale[node]
        if same(cur, target, shape):
            return
        single = len(node.users) == 1 and user in node.users
        role = self.role(node)
        ratio = compact(full(cur, shape) / full(target, shape))  # new weights = old · ratio
        if single and role is Fold.ABSORB:
            if self.records[node].scale.scale_output(self.modules[node.target], ratio, shape):
                self.scale[node] = target
                self.changes["rescaled_producers"].append(node.target)
                return
        elif single and role in (Fold.COMMUTE, Fold.RESHAPE) and self._rescalable(node, user):
            t_in = self._target_before(node, target)
            if t_in is not False:
                self.request(node.args[0], t_in, node)
                self.scale[node] = target
                return
        elif single and role is Fold.JOIN_ADD:
            for x in node.args[:2]:
                self.request(x, target, node)
            self.scale[node] = target
            return
        self._insert_scale(node, ratio, target, user)

    def _target_before(self, node: fx.Node, target: Scale):
        """The scale ``node``'s input must have for ``node`` to output ``target``; False if none exists."""
        src_shape = shape_of(node.args[0])
        if target is None:
            return None
        if self.role(node) is Fold.RESHAPE:
            return self._layout_target_before(node, target)
        vec = only_along(target, len(shape_of(node)), 1)
        if vec is None or (vec.numel() > 1 and not _keeps_channels(node)):
            return False
        return vec.reshape([1, -1] + [1] * (len(src_shape) - 2)) if vec.numel() > 1 else vec.reshape(
            [1] * len(src_shape))

    def _layout_target_before(self, node: fx.Node, target: Scale):
        """The input scale that a layout op moves onto ``target``: each output element's scale goes back to the
        input element it came from (its index map); False when one input element would need two scales."""
        src_shape = tuple(shape_of(node.args[0])[1:])
        idx = index_map(node, src_shape, self.modules)
        want = full(target, shape_of(node)).reshape(-1)
        before = torch.ones(int(torch.Size(src_shape).numel()))
        before[idx] = want
        if not bool(torch.equal(before[idx], want)):
            return False
        return compact(before.reshape(1, *src_shape))

    def _insert_scale(self, node: fx.Node, ratio: Scale, target: Scale, user: fx.Node) -> None:
        name = unique_name(self.gm, f"scale_{node.name}")
        weight = ratio if ratio is not None else torch.ones(1)
        set_module(self.gm, name, Affine(weight))
        self.modules[name] = self.gm.get_submodule(name)
        with self.gm.graph.inserting_before(user):
            new = self.gm.graph.call_module(name, (node,))
        new.meta = dict(node.meta)
        user.replace_input_with(node, new)
        self.records[new] = record_for(new, self.modules)
        self.scale[new] = target
        self.changes["explicit_scales"].append({"name": name, "between": [node.name, user.name],
                                                "shape": list(weight.shape)})
