"""Inspect a QANN: its QCFS thresholds layer by layer, and what conversion does to its graph.

Threshold spread within one QCFS layer (over its thresholds θ_1..θ_n, one per channel / head / neuron,
after Softplus where the layer uses it):

- ``MaxDiff = max_c θ_c − min_c θ_c``: the largest difference between any two thresholds of the layer;
- ``AvgDiff = 1/(n(n−1)) · Σ_{c≠c'} |θ_c − θ_c'|``: the mean absolute difference over all ordered pairs
  of distinct thresholds (Gini's mean difference). Both are 0 for a layer-wise QCFS (n = 1).

``raw_nonpositive`` counts raw parameters λ ≤ 0: with ``positive="none"`` these are thresholds θ = λ ≤ 0
that no IF neuron can have (conversion refuses them); with Softplus they are thresholds θ ≤ ln 2 that plain
QCFS would have driven negative. ``theta_nonpositive`` counts θ ≤ 0, the ones that block conversion.
``mean_abs_deviation`` is ``1/n · Σ_c |θ_c − mean θ|`` (the spread around the mean rather than between pairs).
See ``docs/metrics.md``.

For a transformer (the zoo's ViT / Swin), :func:`spread_tables` lays the head-wise and neuron-wise spreads out as
the seed's tables 4-5: one row per quantizer (q, k, v, softmax, attn·V; LN outputs, MLP hidden), one column per
block.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ann2snn.errors import Ann2SnnError
from ann2snn.layers import qcfs_modules
from ann2snn.plots import plot_threshold_histogram  # re-exported: it lives with the other plots

__all__ = ["threshold_spread", "threshold_stats", "inspect_thresholds", "plot_threshold_histogram",
           "inspect_graph", "spread_tables", "QUANTIZER_ROLES"]

#: Display names of a zoo transformer's quantizers (module name within its block → the seed's row label).
QUANTIZER_ROLES = {"quant_norm1": "LN1 out", "quant_q": "q", "quant_k": "k", "quant_v": "v",
                   "quant_attn": "softmax", "quant_out": "attn·V", "quant_norm2": "LN2 out", "act": "MLP hidden"}


def threshold_spread(theta: torch.Tensor) -> tuple[float, float]:
    """``(MaxDiff, AvgDiff)`` of a threshold vector (see the module docstring); ``(0, 0)`` for one value.

    AvgDiff is computed in O(n log n): for sorted x, ``Σ_{i<j} (x_j − x_i) = Σ_j x_j · (2j − n + 1)``.

    Examples:
        >>> threshold_spread(torch.tensor([1.0, 2.0, 4.0]))   # pairs: 1, 3, 2
        (3.0, 2.0)
    """
    x = torch.as_tensor(theta, dtype=torch.float64).detach().reshape(-1)
    n = x.numel()
    if n == 0:
        raise Ann2SnnError("threshold_spread needs at least one threshold, got an empty tensor")
    if n == 1:
        return 0.0, 0.0
    xs, _ = torch.sort(x)
    j = torch.arange(n, dtype=torch.float64)
    pair_sum = float((xs * (2 * j - n + 1)).sum())  # Σ over unordered pairs
    return float(xs[-1] - xs[0]), pair_sum / (n * (n - 1) / 2)


def threshold_stats(theta: torch.Tensor) -> dict[str, float | int]:
    """count, min, mean, max, MaxDiff, AvgDiff, mean absolute deviation and ``theta_nonpositive`` of a threshold
    vector."""
    x = torch.as_tensor(theta, dtype=torch.float64).detach().reshape(-1)
    max_diff, avg_diff = threshold_spread(x)
    return {"count": x.numel(), "min": float(x.min()), "mean": float(x.mean()), "max": float(x.max()),
            "max_diff": max_diff, "avg_diff": avg_diff, "mean_abs_deviation": float((x - x.mean()).abs().mean()),
            "theta_nonpositive": int((x <= 0).sum())}


def inspect_thresholds(model: nn.Module) -> list[dict[str, Any]]:
    """One row per QCFS layer of ``model``: granularity, dim, L, φ, θ statistics and negative-λ counts.

    Each row: ``name, granularity, dim, positive, levels, shift, count, min, mean, max, max_diff, avg_diff,
    mean_abs_deviation, raw_nonpositive, theta_nonpositive, thresholds`` (the θ values as a list, for plots) and
    ``block`` (the transformer block holding the quantizer, ``None`` outside one).

    Examples:
        >>> rows = inspect_thresholds(ann2snn.load("digits.pt"))
        >>> rows[0]["max_diff"]
    """
    layers = qcfs_modules(model)
    if not layers:
        raise Ann2SnnError(f"{type(model).__name__} has no QCFS layer to inspect; pass a QANN built with QCFS "
                           "activations (e.g. ann2snn.models.create(..., levels=L)), not a ReLU net or an SNN")
    blocks = _transformer_blocks(model)
    rows = []
    for name, q in layers:
        theta = q.threshold.detach().double().reshape(-1)
        rows.append({
            "name": name, "granularity": q.granularity, "dim": q.dim, "positive": q.positive,
            "levels": q.levels, "shift": q.shift, **threshold_stats(theta),
            "raw_nonpositive": int((q.lam.detach() <= 0).sum()),
            "thresholds": [float(v) for v in theta],
            "block": next((b for b in blocks if name.startswith(b + ".")), None),
        })
    return rows


def _transformer_blocks(model: nn.Module) -> list[str]:
    """Qualified names of the modules holding an attention (``attn`` with ``head_dim_axis``): the blocks."""
    return [name for name, m in model.named_modules()
            if name and hasattr(getattr(m, "attn", None), "head_dim_axis")]


def spread_tables(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Head-wise and neuron-wise threshold spreads laid out as the seed's tables 4-5.

    ``rows`` come from :func:`inspect_thresholds`. For ``"head"`` and ``"neuron"`` (the granularities present
    among quantizers inside transformer blocks): ``blocks`` (block names in order) and ``rows``: one per quantizer
    kind (:data:`QUANTIZER_ROLES` label), each ``{"quantizer", "count", "max_diff", "avg_diff"}`` with one entry
    per block (``None`` where that block has no such quantizer at this granularity).

    Examples:
        >>> spread_tables(inspect_thresholds(vit))["head"]["rows"][0]["quantizer"]
        'q'
    """
    out: dict[str, dict[str, Any]] = {}
    for gran in ("head", "neuron"):
        mine = [r for r in rows if r["granularity"] == gran and r["block"] is not None]
        if not mine:
            continue
        blocks = list(dict.fromkeys(r["block"] for r in mine))
        roles: dict[str, dict[str, list]] = {}
        for r in mine:
            key = r["name"].rsplit(".", 1)[-1]
            role = roles.setdefault(QUANTIZER_ROLES.get(key, key), {k: [None] * len(blocks) for k in
                                                                    ("count", "max_diff", "avg_diff")})
            i = blocks.index(r["block"])
            for k in role:
                role[k][i] = r[k]
        out[gran] = {"blocks": blocks, "rows": [{"quantizer": k, **v} for k, v in roles.items()]}
    return out


def inspect_graph(model: nn.Module, *, example_input: torch.Tensor | None = None,
                  input_shape: tuple[int, ...] | None = None, maxpool: str = "spiking") -> dict[str, Any]:
    """What conversion does to ``model``: node counts, BNs folded / kept, thresholds folded / kept as scales,
    and every neuron with its threshold and state shape.

    Examples:
        >>> g = inspect_graph(qann)
        >>> g["nodes_before"], g["nodes_after"], len(g["neurons"])
    """
    from ann2snn.network import convert

    snn = convert(model, example_input=example_input, input_shape=input_shape, maxpool=maxpool)
    report = snn.report
    trace = report.passes[0]
    bn = report.get("fold_batchnorm")
    th = report.get("fold_thresholds")
    orig = {t["node"]: t for t in th.get("thresholds", [])}
    neurons = []
    for n in report.get("to_spiking").get("neurons", []):
        o = orig.get(n["node"], {})
        neurons.append({**n, "original_min": o.get("min"), "original_max": o.get("max"),
                        "granularity": o.get("granularity"), "count": o.get("count")})
    return {
        "nodes_before": trace.nodes_after,
        "nodes_after": report.passes[-1].nodes_after,
        "batchnorm_folded": list(bn.get("folded", [])),
        "batchnorm_kept_as_affine": list(bn.get("kept_as_affine", [])),
        "thresholds_folded": list(th.get("thresholds", [])),
        "rescaled_producers": list(th.get("rescaled_producers", [])),
        "explicit_scales": list(th.get("explicit_scales", [])),
        "neurons": neurons,
        "stateful": [{"name": name, "kind": m.kind} for name, m in snn.stateful()],
        "counts": report.counts(),
        "report": report.to_dict(),
    }

