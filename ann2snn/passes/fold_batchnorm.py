"""Fold BatchNorm into the preceding conv / linear; a BN that cannot fold becomes a per-channel Affine."""

from __future__ import annotations

import torch
from torch import fx, nn

from ann2snn.layers import Affine
from ann2snn.passes.graph import BN_FOLD_PATTERNS, BN_MODULES, finish, modules_of, set_module, shape_of


def fold_batchnorm(gm: fx.GraphModule, *, patterns=BN_FOLD_PATTERNS, record: dict | None = None) -> fx.GraphModule:
    """Fold every ``producer -> BN`` pair of ``patterns`` whose producer feeds only that BN.

    Any other BN (after an add, at the input, after an activation) is replaced by an :class:`Affine` with the
    BN's eval-mode scale and shift: still exact, just not free. Both are counted in ``record``.
    """
    rec = record if record is not None else {}
    rec.update(folded=[], kept_as_affine=[])
    modules = modules_of(gm)
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules[node.target], BN_MODULES):
            continue
        bn = modules[node.target]
        src = node.args[0]
        prod = modules.get(src.target) if isinstance(src, fx.Node) and src.op == "call_module" else None
        linear_on_sequence = isinstance(prod, nn.Linear) and len(shape_of(src)) != 2
        if prod is not None and len(src.users) == 1 and not linear_on_sequence and any(
            isinstance(prod, p) and isinstance(bn, b) for p, b in patterns
        ):
            _fold_into(prod, bn)
            node.replace_all_uses_with(src)
            gm.graph.erase_node(node)
            rec["folded"].append(f"{node.target} -> {src.target}")
            continue
        scale, shift = _bn_scale_shift(bn)
        ndim = len(shape_of(node))
        shape = [1, -1] + [1] * (ndim - 2)
        set_module(gm, node.target, Affine(scale.reshape(shape), shift.reshape(shape)))
        rec["kept_as_affine"].append(node.target)
    return finish(gm)


def _bn_scale_shift(bn: nn.Module) -> tuple[torch.Tensor, torch.Tensor]:
    if bn.running_var is None:
        raise ValueError(f"BatchNorm {bn} has no running statistics (track_running_stats=False)")
    scale = bn.running_var.add(bn.eps).rsqrt()
    if bn.weight is not None:
        scale = scale * bn.weight.detach()
    shift = -bn.running_mean * scale
    if bn.bias is not None:
        shift = shift + bn.bias.detach()
    return scale.detach(), shift.detach()


@torch.no_grad()
def _fold_into(prod: nn.Module, bn: nn.Module) -> None:
    scale, shift = _bn_scale_shift(bn)
    w = prod.weight
    w.mul_(scale.reshape([-1] + [1] * (w.dim() - 1)))
    bias = prod.bias.detach() * scale + shift if prod.bias is not None else shift
    prod.bias = nn.Parameter(bias.clone())
