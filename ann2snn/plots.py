"""Plots of evaluation results and thresholds (matplotlib, imported only when a plot is drawn).

This module imports neither :mod:`ann2snn.evaluate` nor :mod:`ann2snn.report` nor :mod:`ann2snn.inspect`:
they all import it, so it is where their shared plotting and result-reading helpers live.
"""

from __future__ import annotations

import io
import math
import os
from typing import Any

from ann2snn.errors import Ann2SnnError

__all__ = ["pyplot", "figure_png", "mode_results", "plot_eval", "plot_threshold_histogram", "plot_noise"]

#: one colour per time convention, the QANN in red
MODE_COLORS = {"rate": "#4477aa", "exact": "#ee7733"}
QANN_COLOR = "#cc3311"


def pyplot():
    """matplotlib.pyplot on the non-interactive Agg backend, or a one-line error saying how to install it."""
    try:
        import matplotlib
    except ImportError:
        raise Ann2SnnError("plots need matplotlib: pip install 'ann2snn[plot]' (or matplotlib)") from None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def figure_png(fig) -> bytes:
    """A matplotlib figure as PNG bytes (the figure is closed)."""
    plt = pyplot()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    return buf.getvalue()


def mode_results(result: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """``{convention: its results}`` of an :func:`ann2snn.evaluate.evaluate` result, in evaluation order.

    A result holds every mode under ``modes``; a record written before time conventions existed has only
    the top-level keys of one rate-mode run, which is returned as ``{"rate": result}``.
    """
    modes = result.get("modes")
    if modes:
        return dict(modes)
    return {result.get("convention", "rate"): result}


def _color(mode: str) -> str:
    return MODE_COLORS.get(mode, "#228833")


def plot_eval(result: dict[str, Any], path: str | os.PathLike | None = None):
    """Accuracy vs T for every time convention evaluated (QANN line, T = L marked), agreement with the QANN and
    the fraction of samples with exact QANN logits, firing rates and the SNN/ANN energy ratio.

    ``result`` comes from :func:`ann2snn.evaluate.evaluate`. Writes a PNG when ``path`` is given; returns the
    figure.
    """
    plt = pyplot()
    modes = mode_results(result)
    fig, axes = plt.subplots(2, 2, figsize=(13, 7.6))
    ax1, ax2, ax3, ax4 = axes.flat
    _plot_accuracy(ax1, result, modes)
    _plot_agreement(ax2, modes)
    _plot_firing_rates(ax3, result["T_list"], modes)
    _plot_energy(ax4, modes)
    T_max = max(len(m["curve"]["T"]) for m in modes.values())
    ticks = [t for t in result["T_list"] if t <= T_max]
    for ax in axes.flat:
        ax.set_xscale("log", base=2)
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
    for L in result.get("levels", []):
        for ax in (ax1, ax2):
            ax.axvline(L, color="grey", lw=0.8, ls=":")
        ax1.text(L, ax1.get_ylim()[0], f" T=L={L}", fontsize=8, color="grey", va="bottom")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig


def _plot_accuracy(ax, result: dict[str, Any], modes: dict[str, dict[str, Any]]) -> None:
    for mode, m in modes.items():
        c = m["curve"]
        ax.plot(c["T"], [a * 100 for a in c["snn_accuracy"]], "-", color=_color(mode), label=f"SNN ({mode})")
        ax.plot([r["T"] for r in m["per_T"]], [r["snn_accuracy"] * 100 for r in m["per_T"]], "o",
                color=_color(mode), ms=4)
    ax.axhline(result["qann_accuracy"] * 100, color=QANN_COLOR, ls="--", label="QANN")
    ax.set_xlabel("T (time steps)")
    ax.set_ylabel("accuracy (%)")
    ax.set_title(f"{result['dataset']}: accuracy vs T ({result['samples']} samples)", fontsize=10)
    ax.legend(fontsize=8)


def _plot_agreement(ax, modes: dict[str, dict[str, Any]]) -> None:
    for mode, m in modes.items():
        c = m["curve"]
        ax.plot(c["T"], [a * 100 for a in c["agreement"]], "-", color=_color(mode), label=f"agreement ({mode})")
        if "exact_logits" in c:
            ax.plot(c["T"], [a * 100 for a in c["exact_logits"]], "--", color=_color(mode),
                    label=f"exact logits ({mode})")
        step = (m.get("exactness") or {}).get("exact_logits", {}).get("step_all")
        if step is not None:
            ax.axvline(step, color=_color(mode), lw=0.8, ls="-.")
            ax.text(step, 2, f" all exact\n from t={step}", fontsize=7, color=_color(mode), va="bottom")
    ax.set_ylim(-2, 102)
    ax.set_xlabel("T (time steps)")
    ax.set_ylabel("% of samples")
    ax.set_title("same prediction as the QANN / logits equal to the QANN's", fontsize=10)
    ax.legend(fontsize=7, loc="center right")


def _plot_firing_rates(ax, Ts: list[int], modes: dict[str, dict[str, Any]]) -> None:
    styles = ("o-", "s--", "^:")
    for i, (mode, m) in enumerate(modes.items()):
        for j, fr in enumerate(m["firing_rates"]):
            label = fr["name"] if len(modes) == 1 else f"{fr['name']} ({mode})"
            # layer colours skip C0 / C1, the blue and orange of the two modes in the other panels
            ax.plot(Ts, fr["rates"], styles[i % len(styles)], color=f"C{(j + 2) % 10}", label=label, ms=3)
    ax.set_xlabel("T")
    ax.set_ylabel("spikes / neuron / step")
    ax.set_title("firing rate per neuron layer" + (" (solid: rate, dashed: exact)" if len(modes) > 1 else ""),
                 fontsize=10)
    if sum(len(m["firing_rates"]) for m in modes.values()) <= 16:
        ax.legend(fontsize=6, ncol=2 if len(modes) > 1 else 1)


def _plot_energy(ax, modes: dict[str, dict[str, Any]]) -> None:
    const = {}
    for mode, m in modes.items():
        e = m["energy"]["per_T"]
        ax.plot([r["T"] for r in e], [r["ratio"] for r in e], "o-", color=_color(mode), label=mode)
        const = m["energy"]["constants"]
    ax.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax.set_xlabel("T")
    ax.set_ylabel("E_SNN / E_ANN")
    ax.set_title(f"energy ratio (E_MAC={const.get('e_mac_pj')} pJ, E_AC={const.get('e_ac_pj')} pJ)", fontsize=10)
    if len(modes) > 1:
        ax.legend(fontsize=8)


def plot_threshold_histogram(rows: list[dict[str, Any]], path: str | os.PathLike | None = None, *,
                             bins: int = 30):
    """A histogram of θ per QCFS layer (one panel each; negative raw λ noted in the title).

    ``rows`` come from :func:`ann2snn.inspect.inspect_thresholds`. Writes a PNG to ``path`` when given;
    returns the figure. Needs matplotlib (``pip install ann2snn[plot]``).
    """
    plt = pyplot()
    if all(r["count"] == 1 for r in rows):  # all layer-wise: one bar per layer says more than n histograms
        fig, ax = plt.subplots(figsize=(max(5.0, 0.6 * len(rows) + 2), 3.2))
        colors = [QANN_COLOR if r["raw_nonpositive"] else MODE_COLORS["rate"] for r in rows]
        ax.bar(range(len(rows)), [r["mean"] for r in rows], color=colors)
        ax.set_xticks(range(len(rows)), [r["name"] for r in rows], rotation=45 if len(rows) > 8 else 0, fontsize=8)
        ax.set_ylabel("θ")
        ax.set_title("layer-wise QCFS thresholds (red: raw λ ≤ 0)", fontsize=10)
    else:
        n = len(rows)
        cols = min(3, n)
        nrows = math.ceil(n / cols)
        fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 2.8 * nrows), squeeze=False)
        for ax, r in zip(axes.flat, rows):
            vals = r["thresholds"]
            if len(vals) > 1:
                ax.hist(vals, bins=bins, color=MODE_COLORS["rate"], edgecolor="white")
            else:
                ax.axvline(vals[0], color=MODE_COLORS["rate"], lw=3)
            ax.axvline(r["mean"], color=QANN_COLOR, lw=1, ls="--")
            flag = f", {r['raw_nonpositive']} λ≤0" if r["raw_nonpositive"] else ""
            ax.set_title(f"{r['name']} ({r['granularity']}, n={r['count']}{flag}) MaxDiff={r['max_diff']:.3g}",
                         fontsize=8)
            ax.set_xlabel("θ")
        for ax in list(axes.flat)[n:]:
            ax.axis("off")
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig


def plot_noise(comparison: dict[str, Any], path: str | os.PathLike | None = None):
    """Accuracy vs salt-and-pepper noise level, ANN against SNN: every method at the largest T (left) and the
    plain conversion at every T (right). ``comparison`` comes from :func:`ann2snn.methods.compare_methods`."""
    plt = pyplot()
    noise = comparison["noise"]
    levels = [p * 100 for p in noise["levels"]]
    Ts = comparison["T_list"]
    fig, (left, right) = plt.subplots(1, 2, figsize=(13, 4.6))
    for ax in (left, right):
        ax.plot(levels, [a * 100 for a in noise["qann_accuracy"]], "o--", color="black", label="ANN (QANN)")
    for i, (name, table) in enumerate(noise["methods"].items()):
        left.plot(levels, [a * 100 for a in table[-1]], "o-", color=f"C{i}", label=f"SNN {name}")
    plain = noise["methods"].get("plain")
    if plain is not None:
        for j, (T, row) in enumerate(zip(Ts, plain)):
            right.plot(levels, [a * 100 for a in row], "s-", color=f"C{j}", label=f"SNN plain, T={T}", ms=3)
    steps = noise["steps"]
    where = "every step" if steps == "all" else f"the first {steps.replace('/', ' of every ')} steps"
    left.set_title(f"{comparison['dataset']}: ANN vs SNN at T={Ts[-1]} (SNN noise on {where})", fontsize=10)
    right.set_title("plain conversion at every T", fontsize=10)
    for ax in (left, right):
        ax.set_xlabel(f"{noise['kind']} noise (% of pixels)")
        ax.set_ylabel("accuracy (%)")
        ax.legend(fontsize=7)
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig
