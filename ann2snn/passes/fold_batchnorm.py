"""Fold BatchNorm into the preceding conv / linear; a BN that cannot fold becomes a per-channel Affine."""

from __future__ import annotations

from torch import fx

from ann2snn.layers import Affine
from ann2snn.ops import record_for
from ann2snn.passes.graph import PassResult, finish, modules_of, set_module, shape_of


def fold_batchnorm(gm: fx.GraphModule, *, patterns=None) -> PassResult:
    """Fold every op whose record has an ``affine_form`` (BatchNorm) into its producer when the producer feeds
    only it, the ``(producer, op)`` classes are one of ``patterns`` (default: the record's ``fuses_after``) and
    the producer's scale rule can take the per-channel scale on its output.

    Any other BN (after an add, at the input, after an activation, after a linear on a sequence) is replaced by
    an :class:`Affine` with the BN's eval-mode scale and shift: still exact, just not free. Both are counted.
    """
    folded, kept = [], []
    modules = modules_of(gm)
    for node in list(gm.graph.nodes):
        rec = record_for(node, modules)
        if rec is None or rec.affine_form is None:
            continue
        bn = modules[node.target]
        scale, shift = rec.affine_form(bn)
        ndim = len(shape_of(node))
        shape = [1, -1] + [1] * (ndim - 2)
        src = node.args[0]
        prod = modules.get(src.target) if isinstance(src, fx.Node) and src.op == "call_module" else None
        prec = record_for(src, modules) if prod is not None else None
        pairs = rec.fuses_after if patterns is None else patterns
        if prec is not None and prec.scale is not None and len(src.users) == 1 and any(
            isinstance(prod, p) and isinstance(bn, b) for p, b in pairs
        ) and prec.scale.scale_output(prod, scale.reshape(shape), shape_of(src)):
            prec.scale.add_bias(prod, shift)
            node.replace_all_uses_with(src)
            gm.graph.erase_node(node)
            folded.append(f"{node.target} -> {src.target}")
            continue
        set_module(gm, node.target, Affine(scale.reshape(shape), shift.reshape(shape)))
        kept.append(node.target)
    return PassResult(finish(gm), {"folded": folded, "kept_as_affine": kept},
                      {"batchnorm_folded": len(folded), "batchnorm_kept_as_affine": len(kept)})
