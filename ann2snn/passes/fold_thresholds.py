"""Fold QCFS thresholds into weights, so every neuron has threshold 1 and emits binary spikes.

Every value in the graph is tracked as ``actual = scale ⊙ stored``, with ``scale`` a tensor broadcastable to
one sample (``[1, C, 1, 1]``, ``[1, F]``, or ``None`` for 1). A QCFS with threshold θ wants its input stored
in threshold units (``z / θ``) and produces values of scale θ. Scales move through the graph as follows:

- a conv / linear / Affine *absorbs* its input's scale into its weight columns (``W[:, c] *= s_c``);
- a value whose consumer wants scale ``t`` is *rescaled at its producer* when that producer is a
  conv / linear / Affine used only there (``W[o, :] /= t_o``, ``b[o] /= t_o``), or through pooling, flatten
  and ``+`` to their own producers;
- where that is impossible (an identity shortcut carrying another neuron's θ, the network input) an
  explicit per-channel :class:`Affine` scale is inserted on that edge and counted.

The QANN's function does not change: each QCFS is swapped for a unit-threshold QCFS that reads
threshold units, which the next pass turns into an IF neuron with threshold 1.
"""

from __future__ import annotations

import torch
from torch import fx, nn

from ann2snn.errors import ConversionError
from ann2snn.layers import QCFS, Affine
from ann2snn.passes.graph import classify, finish, modules_of, set_module, shape_of, tensor_inputs, unique_name

Scale = torch.Tensor | None  # None means 1 everywhere


def fold_thresholds(gm: fx.GraphModule, *, record: dict | None = None) -> fx.GraphModule:
    """Fold every QCFS threshold of ``gm`` into its neighbours (in place); see the module docstring."""
    rec = record if record is not None else {}
    rec.update(thresholds=[], rescaled_producers=[], explicit_scales=[])
    folder = _Folder(gm, rec)
    for node in list(gm.graph.nodes):
        folder.visit(node)
    return finish(gm)


def unit_qcfs(q: QCFS) -> QCFS:
    """A QCFS with θ = 1 and ``q``'s levels and shift: ``q`` read in threshold units."""
    unit = QCFS(q.levels, shift=q.shift, granularity="layer", positive="none", init_threshold=1.0)
    unit.lam.requires_grad_(False)
    return unit


def compact(t: torch.Tensor) -> Scale:
    """Shrink every dim along which ``t`` is constant to size 1; ``None`` if ``t`` is all ones."""
    for d in range(t.dim()):
        if t.size(d) > 1 and bool(torch.all(t == t.narrow(d, 0, 1))):
            t = t.narrow(d, 0, 1)
    return None if bool(torch.all(t == 1)) else t.contiguous()


def _full(s: Scale, shape) -> torch.Tensor:
    """``s`` broadcast to one sample of ``shape`` (batch dim 1)."""
    sample = (1, *shape[1:])
    return torch.ones(sample) if s is None else torch.broadcast_to(s, sample)


def _same(a: Scale, b: Scale, shape) -> bool:
    if a is None and b is None:
        return True
    return bool(torch.equal(_full(a, shape), _full(b, shape)))


def _only_along(s: Scale, ndim: int, dim: int | None) -> torch.Tensor | None:
    """``s`` as a vector along ``dim`` (or a scalar) if it is constant along every other dim, else None."""
    if s is None:
        return torch.ones(1)
    s = s.reshape([1] * (ndim - s.dim()) + list(s.shape)) if s.dim() < ndim else s
    others = [d for d in range(ndim) if d != (dim % ndim if dim is not None else None)]
    if any(s.size(d) != 1 for d in others):
        return None
    return s.reshape(-1)


class _Folder:
    def __init__(self, gm: fx.GraphModule, rec: dict) -> None:
        self.gm = gm
        self.rec = rec
        self.modules = modules_of(gm)
        self.scale: dict[fx.Node, Scale] = {}
        self.kind = {n: classify(n, self.modules) for n in gm.graph.nodes}

    # --- forward propagation -----------------------------------------------------------------------
    def visit(self, node: fx.Node) -> None:
        kind = self.kind[node]
        if kind in ("input", "size"):
            self.scale[node] = None
        elif kind == "linear":
            self._absorb_linear(node)
        elif kind == "affine":
            self._absorb_affine(node)
        elif kind == "qcfs":
            self._fold_qcfs(node)
        elif kind in ("pool", "maxpool"):
            self.scale[node] = self._through_pool(node)
        elif kind == "flatten":
            src = node.args[0]
            s = self.scale[src]
            self.scale[node] = None if s is None else compact(
                torch.flatten(_full(s, shape_of(src)), *node.args[1:], **node.kwargs)
                if node.op != "call_module" else self.modules[node.target](_full(s, shape_of(src))))
        elif kind == "add":
            self._join_add(node)
        elif kind == "cat":
            self._join_cat(node)
        elif kind == "output":
            for src in tensor_inputs(node):
                self.request(src, None, node)
        elif kind == "stateful":
            raise ConversionError(f"node {node.name} is already a spiking operator; convert the QANN, not an SNN")
        else:  # bn and the rest are gone after normalize / fold_batchnorm
            raise ConversionError(f"fold_thresholds met a {kind} node ({node.format_node()}); run normalize and "
                                  "fold_batchnorm first")

    def _absorb_linear(self, node: fx.Node) -> None:
        m = self.modules[node.target]
        src = node.args[0]
        s = self.scale[src]
        if s is not None:
            ndim = len(shape_of(src))
            vec = _only_along(s, ndim, 1 if not isinstance(m, nn.Linear) else -1)
            if vec is None:  # varies along a dim the weights cannot absorb: bring it to 1 first
                self.request(src, None, node)
            else:
                self._scale_columns(m, vec)
        self.scale[node] = None

    def _absorb_affine(self, node: fx.Node) -> None:
        m = self.modules[node.target]
        s = self.scale[node.args[0]]
        if s is not None:
            m.weight = m.weight * s
        self.scale[node] = None

    def _fold_qcfs(self, node: fx.Node) -> None:
        q = self.modules[node.target]
        ndim = len(shape_of(node))
        theta = q.broadcast_threshold(ndim).detach().clone()
        bad = int((theta <= 0).sum())
        if bad:
            raise ConversionError(
                f"QCFS {node.target!r} has {bad} threshold(s) <= 0 (min {float(theta.min()):.4g}); an IF neuron "
                "needs θ > 0: train with positive='softplus' (S-/CS-QCFS) or clamp the thresholds"
            )
        producer = node.args[0]
        self.request(producer, theta, node)
        set_module(self.gm, node.target, unit_qcfs(q))
        self.scale[node] = compact(theta)
        th = q.threshold.detach()
        self.rec["thresholds"].append({
            "node": node.target, "granularity": q.granularity, "count": th.numel(),
            "min": float(th.min()), "max": float(th.max()), "levels": q.levels, "shift": q.shift,
        })

    def _through_pool(self, node: fx.Node) -> Scale:
        src = node.args[0]
        s = self.scale[src]
        if s is None:
            return None
        vec = _only_along(s, len(shape_of(src)), 1)
        out_ndim = len(shape_of(node))
        if vec is None or (vec.numel() > 1 and (out_ndim < 2 or shape_of(node)[1] != vec.numel())):
            self.request(src, None, node)  # pooling mixes positions with different scales: make them 1
            return None
        return vec.reshape([1, -1] + [1] * (out_ndim - 2)) if vec.numel() > 1 else vec.reshape([1] * out_ndim)

    def _join_add(self, node: fx.Node) -> None:
        a, b = node.args[0], node.args[1]
        shape = shape_of(node)
        sa, sb = self.scale[a], self.scale[b]
        if not _same(sa, sb, shape):
            if self._rescalable(b, node):
                self.request(b, sa, node)
            elif self._rescalable(a, node):
                self.request(a, sb, node)
            else:
                self.request(b, sa, node)
        self.scale[node] = self.scale[a]

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
        self.scale[node] = compact(torch.cat([_full(sc, shape_of(s)) for sc, s in zip(scales, srcs)], dim))

    # --- backward requests -------------------------------------------------------------------------
    def _rescalable(self, node: fx.Node, user: fx.Node) -> bool:
        if len(node.users) != 1 or user not in node.users:
            return False
        kind = self.kind.get(node)
        if kind in ("linear", "affine"):
            return True
        if kind in ("pool", "maxpool", "flatten"):
            return self._rescalable(node.args[0], node)
        if kind == "add":
            return all(self._rescalable(x, node) for x in node.args[:2])
        return False

    def request(self, node: fx.Node, target: Scale, user: fx.Node) -> None:
        """Make the value ``node`` sends to ``user`` have scale ``target``."""
        shape = shape_of(node)
        cur = self.scale[node]
        if _same(cur, target, shape):
            return
        single = len(node.users) == 1 and user in node.users
        kind = self.kind.get(node)
        ratio = compact(_full(cur, shape) / _full(target, shape))  # new weights = old · ratio
        if single and kind == "linear":
            m = self.modules[node.target]
            vec = _only_along(ratio, len(shape), 1 if not isinstance(m, nn.Linear) else -1)
            if vec is not None:
                self._scale_rows(m, vec)
                self.scale[node] = target
                self.rec["rescaled_producers"].append(node.target)
                return
        elif single and kind == "affine":
            m = self.modules[node.target]
            if ratio is not None:
                m.weight = m.weight * ratio
                if m.bias is not None:
                    m.bias = m.bias * ratio
            self.scale[node] = target
            self.rec["rescaled_producers"].append(node.target)
            return
        elif single and kind in ("pool", "maxpool", "flatten") and self._rescalable(node, user):
            t_in = self._target_before(node, target)
            if t_in is not False:
                self.request(node.args[0], t_in, node)
                self.scale[node] = target
                return
        elif single and kind == "add":
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
        if self.kind[node] == "flatten":
            return compact(_full(target, shape_of(node)).reshape((1, *src_shape[1:])))
        vec = _only_along(target, len(shape_of(node)), 1)
        if vec is None:
            return False
        return vec.reshape([1, -1] + [1] * (len(src_shape) - 2)) if vec.numel() > 1 else vec.reshape(
            [1] * len(src_shape))

    def _insert_scale(self, node: fx.Node, ratio: Scale, target: Scale, user: fx.Node) -> None:
        name = unique_name(self.gm, f"scale_{node.name}")
        weight = ratio if ratio is not None else torch.ones(1)
        set_module(self.gm, name, Affine(weight))
        self.modules[name] = self.gm.get_submodule(name)
        with self.gm.graph.inserting_before(user):
            new = self.gm.graph.call_module(name, (node,))
        new.meta = dict(node.meta)
        user.replace_input_with(node, new)
        self.kind[new] = "affine"
        self.scale[new] = target
        self.rec["explicit_scales"].append({"name": name, "between": [node.name, user.name],
                                            "shape": list(weight.shape)})

    # --- weight edits --------------------------------------------------------------------------------
    @staticmethod
    @torch.no_grad()
    def _scale_columns(m: nn.Module, vec: torch.Tensor) -> None:
        w = m.weight
        if vec.numel() == 1:
            w.mul_(vec.item())
        elif isinstance(m, nn.Linear):
            w.mul_(vec.reshape(1, -1))
        else:
            g = m.groups
            cin_g = w.shape[1]
            w.view(g, w.shape[0] // g, cin_g, *w.shape[2:]).mul_(vec.reshape(g, 1, cin_g, *([1] * (w.dim() - 2))))

    @staticmethod
    @torch.no_grad()
    def _scale_rows(m: nn.Module, vec: torch.Tensor) -> None:
        w = m.weight
        if vec.numel() == 1:
            w.mul_(vec.item())
            if m.bias is not None:
                m.bias.mul_(vec.item())
            return
        w.mul_(vec.reshape([-1] + [1] * (w.dim() - 1)))
        if m.bias is not None:
            m.bias.mul_(vec)
