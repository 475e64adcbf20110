"""Line charts as inline SVG (no matplotlib, no JavaScript): accuracy vs T of several runs overlaid.

The x axis is log2 for time steps (T = 1, 2, 4, ... evenly spaced, as in the report's plots) or linear for
epochs; constant lines (a QANN's accuracy) are drawn dotted across the whole range.
"""

from __future__ import annotations

import html
import math
from dataclasses import dataclass
from typing import Any, Sequence

__all__ = ["Series", "line_chart", "PALETTE", "DASHED", "DOTTED", "accuracy_series", "epoch_series"]

#: Paul Tol's bright scheme: distinguishable, also for colour-blind readers
PALETTE = ("#4477aa", "#ee6677", "#228833", "#ccbb44", "#66ccee", "#aa3377", "#bbbbbb", "#000000")


@dataclass(frozen=True)
class Series:
    """One line; ``x`` empty and one ``y`` means a constant drawn across the chart."""

    label: str
    x: tuple[float, ...]
    y: tuple[float, ...]
    color: str
    dash: str = ""  # an SVG stroke-dasharray: "" solid, "6 4" dashed, "2 3" dotted
    markers: tuple[float, ...] = ()  # x values that get a dot (the T list of an eval)


DASHED, DOTTED = "6 4", "2 3"


def _nice_step(span: float, n: int = 6) -> float:
    raw = span / max(1, n)
    mag = 10 ** math.floor(math.log10(raw)) if raw > 0 else 1.0
    return next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)


def _fmt(v: float) -> str:
    return f"{v:g}"


def line_chart(series: Sequence[Series], *, title: str, x_label: str, y_label: str, log2_x: bool = False,
               y_range: tuple[float, float] | None = None, width: int = 900, height: int = 340) -> str:
    """An ``<svg>`` element (a string) with axes, grid, the lines and a legend on the right."""
    if not series:
        return ""
    xs = [x for s in series for x in s.x] or [1.0]
    ys = [y for s in series for y in s.y]
    x0, x1 = min(xs), max(xs)
    if x0 == x1:
        x0, x1 = (x0 / 2, x1 * 2) if log2_x else (x0 - 1, x1 + 1)
    lo, hi = y_range or (min(ys), max(ys))
    if y_range is None:
        pad = max(0.5, (hi - lo) * 0.08)
        lo, hi = lo - pad, hi + pad
    legend_w, left, top, bottom = 250, 56, 30, 44
    pw, ph = width - legend_w - left - 12, height - top - bottom

    def tx(x: float) -> float:
        if log2_x:
            return left + pw * (math.log2(x) - math.log2(x0)) / (math.log2(x1) - math.log2(x0))
        return left + pw * (x - x0) / (x1 - x0)

    def ty(y: float) -> float:
        return top + ph * (1 - (y - lo) / (hi - lo))

    out = [f'<svg class="chart" xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" '
           f'width="{width}" height="{height}" role="img" aria-label="{html.escape(title)}">',
           f'<text x="{left}" y="18" class="ct">{html.escape(title)}</text>']
    step = _nice_step(hi - lo)
    y = math.ceil(lo / step) * step
    while y <= hi + 1e-9:
        out.append(f'<line x1="{left}" x2="{left + pw}" y1="{ty(y):.1f}" y2="{ty(y):.1f}" class="grid"/>'
                   f'<text x="{left - 6}" y="{ty(y) + 4:.1f}" class="yt">{_fmt(round(y, 6))}</text>')
        y += step
    for x in _x_ticks(xs, x0, x1, log2_x):
        out.append(f'<line x1="{tx(x):.1f}" x2="{tx(x):.1f}" y1="{top}" y2="{top + ph}" class="grid"/>'
                   f'<text x="{tx(x):.1f}" y="{top + ph + 16}" class="xt">{_fmt(x)}</text>')
    out.append(f'<rect x="{left}" y="{top}" width="{pw}" height="{ph}" class="frame"/>'
               f'<text x="{left + pw / 2:.1f}" y="{height - 6}" class="xl">{html.escape(x_label)}</text>'
               f'<text transform="translate(14 {top + ph / 2:.1f}) rotate(-90)" class="yl">'
               f'{html.escape(y_label)}</text>')
    for i, s in enumerate(series):
        dash = f' stroke-dasharray="{s.dash}"' if s.dash else ""
        pts = list(zip(s.x, s.y)) if s.x else [(x0, s.y[0]), (x1, s.y[0])]
        path = " ".join(f"{tx(x):.1f},{ty(y):.1f}" for x, y in pts)
        out.append(f'<g><title>{html.escape(s.label)}</title><polyline points="{path}" fill="none" '
                   f'stroke="{s.color}" stroke-width="2"{dash}/>')
        marks = set(s.markers)
        out += [f'<circle cx="{tx(x):.1f}" cy="{ty(y):.1f}" r="3" fill="{s.color}"/>' for x, y in pts if x in marks]
        out.append("</g>")
        ly = top + 8 + 18 * i
        label = s.label if len(s.label) <= 36 else s.label[:35] + "…"
        out.append(f'<line x1="{width - legend_w + 4}" x2="{width - legend_w + 28}" y1="{ly}" y2="{ly}" '
                   f'stroke="{s.color}" stroke-width="2"{dash}/><text x="{width - legend_w + 34}" y="{ly + 4}" '
                   f'class="lg"><title>{html.escape(s.label)}</title>{html.escape(label)}</text>')
    out.append("</svg>")
    return "".join(out)


def _x_ticks(xs: list[float], x0: float, x1: float, log2_x: bool) -> list[float]:
    if log2_x:
        return [float(2 ** k) for k in range(math.ceil(math.log2(x0) - 1e-9), math.floor(math.log2(x1) + 1e-9) + 1)]
    step = max(1, math.ceil((x1 - x0) / 10))
    return [float(x) for x in range(math.ceil(x0), math.floor(x1) + 1, step)]


def accuracy_series(runs: Sequence[tuple[str, dict[str, Any]]]) -> list[Series]:
    """Accuracy (%) vs T of every eval run and mode (exact mode dashed), each run's QANN dotted; a train run adds
    the test accuracy of its saved checkpoint.

    ``runs`` are ``(label, record)`` pairs; a run keeps one colour across its modes and its QANN line.
    """
    from ann2snn.plots import mode_results

    out = []
    for i, (label, rec) in enumerate(runs):
        color, m = PALETTE[i % len(PALETTE)], rec.get("metrics") or {}
        if rec.get("kind") == "eval" and "per_T" in m:
            modes = mode_results(m)
            for j, (mode, r) in enumerate(modes.items()):
                curve = r.get("curve") or {}
                xs = tuple(float(t) for t in curve.get("T", [row["T"] for row in r["per_T"]]))
                ys = tuple(100 * a for a in curve.get("snn_accuracy", [row["snn_accuracy"] for row in r["per_T"]]))
                out.append(Series(f"{label} SNN {mode}", xs, ys, color, dash=DASHED if j > 0 else "",
                                  markers=tuple(float(row["T"]) for row in r["per_T"])))
            if m.get("qann_accuracy") is not None:
                out.append(Series(f"{label} QANN", (), (100 * m["qann_accuracy"],), color, dash=DOTTED))
        elif rec.get("kind") == "train":  # the saved (best) checkpoint's accuracy: what an SNN test of it starts from
            acc = m.get("best_test_accuracy", m.get("test_accuracy"))
            if acc is not None:
                out.append(Series(f"{label} QANN (trained)", (), (100 * acc,), color, dash=DOTTED))
    return out


def epoch_series(runs: Sequence[tuple[str, dict[str, Any]]]) -> list[Series]:
    """Test accuracy (%) per epoch of every train run with more than one epoch."""
    out = []
    for i, (label, rec) in enumerate(runs):
        hist = (rec.get("metrics") or {}).get("history") or []
        pts = [(float(h["epoch"]), 100 * h["test_accuracy"]) for h in hist
               if isinstance(h, dict) and "epoch" in h and h.get("test_accuracy") is not None]
        if rec.get("kind") == "train" and len(pts) > 1:
            out.append(Series(f"{label} test", tuple(p[0] for p in pts), tuple(p[1] for p in pts),
                              PALETTE[i % len(PALETTE)], markers=tuple(p[0] for p in pts)))
    return out
