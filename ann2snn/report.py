"""One self-contained HTML page from run records: tables and plots, images embedded as base64, no server.

>>> from ann2snn.runs import read_record
>>> write_report([read_record("20250101-120000-eval-abc123")], "report.html")
"""

from __future__ import annotations

import base64
import html
import json
import os
from pathlib import Path
from typing import Any, Iterable

from ann2snn.errors import Ann2SnnError
from ann2snn.plots import figure_png, mode_results, plot_eval, plot_noise, plot_threshold_histogram, pyplot

# pyplot and figure_png live in ann2snn.plots (shared with evaluate and inspect); importable from here as before

__all__ = ["pyplot", "figure_png", "render_html", "write_report", "headline"]


# --- HTML pieces ----------------------------------------------------------------------------------------
_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:24px auto;max-width:1200px;color:#222}
h1{font-size:22px;margin-bottom:4px} h2{font-size:18px;border-bottom:1px solid #ccc;padding-bottom:4px;margin-top:32px}
h3{font-size:15px;margin:18px 0 6px} .meta{color:#666;font-size:13px}
table{border-collapse:collapse;margin:6px 0 12px;font-size:13px} th,td{border:1px solid #ddd;padding:3px 8px}
th{background:#f3f5f8;text-align:left} td.n{text-align:right;font-variant-numeric:tabular-nums}
tr.hl td{background:#fff7d6} img{max-width:100%;border:1px solid #eee;margin:6px 0}
.tw{overflow-x:auto;max-width:100%} code{background:#f3f3f3;padding:1px 4px;border-radius:3px} details{margin:6px 0}
"""


def _esc(v: Any) -> str:
    return html.escape(str(v))


def _fmt(v: Any) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, float):
        if v != v:
            return "nan"
        if abs(v) >= 1e12:
            return f"{v:.3e}"
        if abs(v) >= 1000:
            return f"{v:,.0f}"
        return f"{v:.4g}" if abs(v) < 1 else f"{v:,.2f}".rstrip("0").rstrip(".")
    if isinstance(v, int):
        return f"{v:,}"
    if isinstance(v, (list, tuple)) and len(v) > 8:
        return _esc(f"[{len(v)} values]")
    return _esc(v)


def _table(columns: list[str], rows: list[list[Any]], *, highlight: Iterable[int] = ()) -> str:
    hl = set(highlight)
    head = "".join(f"<th>{_esc(c)}</th>" for c in columns)
    body = []
    for i, r in enumerate(rows):
        cells = "".join(f'<td class="n">{_fmt(v)}</td>' if isinstance(v, (int, float)) and not isinstance(v, bool)
                        else f"<td>{_fmt(v)}</td>" for v in r)
        body.append(f'<tr{" class=hl" if i in hl else ""}>{cells}</tr>')
    return f"<div class=tw><table><tr>{head}</tr>{''.join(body)}</table></div>"


def _img(png: bytes, alt: str) -> str:
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode("ascii")}">'


def _pct(v: float | None) -> str:
    return "-" if v is None else f"{v * 100:.2f}%"


def _kv(d: dict[str, Any]) -> str:
    rows = [[k, json.dumps(v, default=str) if isinstance(v, (dict, list)) else v] for k, v in d.items()]
    return _table(["key", "value"], rows)


# --- per-kind sections ----------------------------------------------------------------------------------
def _eval_section(m: dict[str, Any], *, images: bool) -> str:
    modes = mode_results(m)
    out = [_mode_section(m, mode, r) for mode, r in modes.items()]
    tol = m.get("exact_tolerance")
    if tol:
        out.append(f"<p class=meta>Exact logits: {_esc(tol['rule'])}, rtol = {_esc(tol['rtol'])} — equal up to float "
                   "rounding and ties on a quantization boundary.</p>")
    out.append(_activity_tables(modes, m.get("T_list", [])))
    th = m.get("thresholds")
    if th:
        out.append("<h3>QCFS thresholds</h3>")
        out.append(_threshold_table(th))
    if images:
        out.append(_img(figure_png(plot_eval(m)), "accuracy, agreement, exact logits, firing rates and energy vs T"))
        if th:
            out.append(_img(figure_png(plot_threshold_histogram(th)), "threshold histograms"))
    if m.get("methods_comparison"):
        out.append(_methods_section(m["methods_comparison"], images=images))
    return "".join(out)


def _methods_section(c: dict[str, Any], *, images: bool) -> str:
    """``eval --encoding rate --max-spikes D --cos --srp τ --lif-readout γ --stdp --ttrbr --noise ...``: every method
    beside the plain conversion (accuracy and energy by T), then the noise curve ANN vs SNN."""
    Ts = c["T_list"]
    acc = [["QANN", *[_pct(c["qann_accuracy"])] * len(Ts)]]
    energy = []
    for name, r in c["methods"].items():
        acc.append([name, *[_pct(x["snn_accuracy"]) for x in r["per_T"]]])
        energy.append([name, *[x["energy_ratio"] for x in r["per_T"]]])
    out = [f"<h3>Methods vs plain conversion ({_esc(c['samples'])} samples, rate convention)</h3>",
           _table(["method", *[f"T={t}" for t in Ts]], acc, highlight=[1]),
           "<p class=meta>Energy E_SNN / E_ANN by T (SRP counts its pre-run).</p>",
           _table(["method", *[f"T={t}" for t in Ts]], energy)]
    n = c.get("noise") or {}
    if len(n.get("levels", [])) > 1 or any(p > 0 for p in n.get("levels", [])):
        rows = [["ANN (QANN)", *[_pct(a) for a in n["qann_accuracy"]]]]
        rows += [[f"SNN {name}, T={t}", *[_pct(a) for a in tab[j]]] for name, tab in n["methods"].items()
                 for j, t in enumerate(Ts)]
        out.append(f"<h3>{_esc(n['kind'])} noise, ANN vs SNN (SNN noise on steps {_esc(n['steps'])})</h3>")
        out.append(_table(["model", *[f"{p * 100:g}%" for p in n["levels"]]], rows))
        if images:
            out.append(_img(figure_png(plot_noise(c)), "accuracy vs noise level, ANN vs SNN"))
    return "".join(out)


def _activity_tables(modes: dict[str, dict[str, Any]], Ts: list[int]) -> str:
    """Firing rates and operations per layer, one row per layer and mode (a mode column when there are several)."""
    many = len(modes) > 1

    def tag(mode: str) -> list[str]:
        return [mode] if many else []

    out = []
    fr = [(mode, f) for mode, r in modes.items() for f in r.get("firing_rates", [])]
    if fr:
        out.append("<h3>Firing rates (spikes per neuron per step)</h3>")
        out.append(_table(tag("mode") + ["layer", "kind", "neurons"] + [f"T={t}" for t in Ts],
                          [tag(mode) + [f["name"], f["kind"], f["neurons"]] + [round(v, 4) for v in f["rates"]]
                           for mode, f in fr]))
    en = [(mode, r["energy"]) for mode, r in modes.items() if r.get("energy")]
    if en:
        first = en[0][1]
        c = first.get("constants", {})
        out.append(f"<h3>Operations per sample (E_MAC = {c.get('e_mac_pj')} pJ, E_AC = {c.get('e_ac_pj')} pJ; "
                   f"ANN: {_fmt(first.get('ann_macs'))} MACs = {_fmt(first.get('ann_energy_pj', 0) / 1e6)} µJ)</h3>")
        rows = []
        for mode, e in en:
            for r in e["layers"]:
                analog = r["analog_input"]
                how = "values (MACs every step)" if r.get("dense") else \
                    "analog (MACs each step with input)" if analog else "spikes"
                rows.append(tag(mode) + [r["name"], r["kind"], how, r["macs"]]
                            + [(mac if analog else sop) for mac, sop in zip(r["snn_macs"], r["sops"])])
        out.append(_table(tag("mode") + ["layer", "kind", "input", "ANN MACs"] + [f"SNN ops T={t}" for t in Ts],
                          rows))
    return "".join(out)


def _mode_section(m: dict[str, Any], mode: str, r: dict[str, Any]) -> str:
    """One time convention's accuracy table and the steps from which agreement / exact logits hold."""
    levels = m.get("levels", [])
    e_rows = {e["T"]: e for e in r.get("energy", {}).get("per_T", [])}
    rows, hl = [["QANN", "-", _pct(m.get("qann_accuracy")), "-", "-", "-", "-", "-"]], []
    for i, row in enumerate(r.get("per_T", [])):
        e = e_rows.get(row["T"], {})
        rows.append(["SNN" + (" (T = L)" if row["T"] in levels else ""), row["T"], _pct(row["snn_accuracy"]),
                     f"{row['delta_pp']:+.2f} pp", _pct(row["agreement"]), _pct(row.get("exact_logits")),
                     e.get("sops", "-"), e.get("ratio", "-")])
        if row["T"] in levels:
            hl.append(i + 1)
    out = [f"<h3>Accuracy at every T, {_esc(mode)} mode ({_esc(m.get('dataset'))}, {_fmt(m.get('samples'))} samples, "
           f"L = {_esc(', '.join(map(str, levels)))})</h3>",
           _table(["model", "T", "accuracy", "vs QANN", "same prediction as QANN", "exact logits", "SOPs / sample",
                   "E_SNN / E_ANN"], rows, highlight=hl)]
    ex = r.get("exactness")
    if ex:
        T_max = len(r["curve"]["T"])
        out.append(_table(["stays from step (per sample)", "every sample from", "median", "max",
                           f"samples not there by T = {T_max}"],
                          [[what, _step(s["step_all"]), "> T_max" if s["median"] is None else _fmt(s["median"]),
                            _step(s["max"]), s["never"]]
                           for what, s in (("exact logits", ex["exact_logits"]),
                                           ("same prediction as QANN", ex["agreement"]))]))
    return "".join(out)


def _step(v: Any) -> str:
    return "not reached" if v is None else _fmt(v)


def _threshold_table(rows: list[dict[str, Any]]) -> str:
    return _table(["layer", "granularity", "count", "min θ", "mean θ", "max θ", "MaxDiff", "AvgDiff", "λ ≤ 0",
                   "L", "φ"],
                  [[r["name"], r["granularity"], r["count"], r["min"], r["mean"], r["max"], r["max_diff"],
                    r["avg_diff"], r["raw_nonpositive"], r["levels"], r["shift"]] for r in rows],
                  highlight=[i for i, r in enumerate(rows) if r["raw_nonpositive"]])


def _generic_metrics(m: dict[str, Any]) -> str:
    """Scalars (and short lists of them) as a key/value table; lists of dicts and dicts of dicts as tables."""
    def scalar(v):
        return not isinstance(v, (dict, list)) or (isinstance(v, list) and not any(isinstance(x, (dict, list))
                                                                                   for x in v))

    scalars = {k: (", ".join(map(str, v)) if isinstance(v, list) else v) for k, v in m.items() if scalar(v)}
    out = [_kv(scalars)] if scalars else []
    for k, v in m.items():
        if isinstance(v, list) and v and all(isinstance(r, dict) for r in v):
            cols = list(dict.fromkeys(c for r in v for c in r))
            out.append(f"<h3>{_esc(k)}</h3>" + _table(cols, [[r.get(c, "") for c in cols] for r in v]))
        elif isinstance(v, dict) and v and all(isinstance(r, dict) for r in v.values()):
            cols = list(dict.fromkeys(c for r in v.values() for c in r))
            out.append(f"<h3>{_esc(k)}</h3>" + _table([""] + cols, [[name] + [r.get(c, "") for c in cols]
                                                                      for name, r in v.items()]))
        elif isinstance(v, dict) and v:
            out.append(f"<h3>{_esc(k)}</h3>" + _kv(v))
    return "".join(out)


def record_section(rec: dict[str, Any], *, images: bool) -> str:
    kind = rec.get("kind", "?")
    out = [f'<h2 id="{_esc(rec.get("id"))}">{_esc(kind)} — <code>{_esc(rec.get("id"))}</code></h2>',
           f'<div class="meta">{_esc(rec.get("time", ""))}</div>']
    m = rec.get("metrics", {}) or {}
    out.append("<h3>Metrics</h3>")
    if kind == "eval" and "per_T" in m:
        out.append(_eval_section(m, images=images))
    else:
        out.append(_generic_metrics(m))
    if images and kind != "eval":  # an eval's plots are redrawn above from its metrics
        for p in rec.get("outputs", []):
            if str(p).lower().endswith(".png") and Path(p).is_file():
                out.append(f"<h3>{_esc(p)}</h3>" + _img(Path(p).read_bytes(), str(p)))
    out.append("<details><summary>configuration, versions, input hashes</summary>")
    out.append(_kv(rec.get("config", {}) or {}))
    out.append(_kv(rec.get("versions", {}) or {}))
    if rec.get("inputs"):
        out.append(_table(["input file", "sha256"], [[k, v] for k, v in rec["inputs"].items()]))
    out.append("</details>")
    return "".join(out)


def render_html(records: list[dict[str, Any]], *, title: str = "ann2snn report", images: bool = True) -> str:
    """One HTML page for ``records`` (from :mod:`ann2snn.runs`): an index table, then one section per run.

    Eval runs get their accuracy / firing-rate / operation tables and plots (PNG, base64-embedded); other runs
    get their metrics as tables. ``images=False`` skips matplotlib entirely.
    """
    if not records:
        raise Ann2SnnError("no run records to report; run `ann2snn eval ...` first or name runs from `ann2snn runs`")
    index = _table(["run", "kind", "time", "headline"],
                   [[f'{r.get("id")}', r.get("kind"), r.get("time"), headline(r)] for r in records])
    body = "".join(record_section(r, images=images) for r in records)
    return (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{_esc(title)}</title>"
            f"<style>{_CSS}</style></head><body><h1>{_esc(title)}</h1>"
            f"<div class='meta'>{len(records)} run(s)</div><h2>Runs</h2>{index}{body}</body></html>")


def headline(rec: dict[str, Any]) -> str:
    """A one-line summary of a record's metrics (used by ``ann2snn runs`` and the report index)."""
    m = rec.get("metrics", {}) or {}
    if rec.get("kind") == "eval" and "per_T" in m:
        modes = mode_results(m)
        best = {mode: max(r["per_T"], key=lambda row: row["snn_accuracy"]) for mode, r in modes.items()}
        named = len(modes) > 1 or "rate" not in modes
        snn = ", ".join(f"{mode + ' ' if named else ''}{_pct(b['snn_accuracy'])} at T={b['T']}"
                        for mode, b in best.items())
        steps = {mode: (r.get("exactness") or {}).get("exact_logits", {}).get("step_all") for mode, r in modes.items()}
        steps = {mode: s for mode, s in steps.items() if s is not None}
        exact = "".join(f"; exact logits from t={s}" + (f" ({mode})" if len(steps) > 1 else "")
                        for mode, s in steps.items())
        return f"QANN {_pct(m.get('qann_accuracy'))}, SNN best {snn}{exact} ({m.get('dataset')})"
    parts = []
    for k in ("test_accuracy", "qann_accuracy", "accuracy", "T", "if_neurons", "latency_ms", "throughput"):
        v = m.get(k)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            parts.append(f"{k}={_pct(v) if 'accuracy' in k else _fmt(v)}")
    return ", ".join(parts) or f"{len(m)} metrics"


def write_report(records: list[dict[str, Any]], path: str | os.PathLike, *, title: str = "ann2snn report",
                 force: bool = False, images: bool = True) -> Path:
    """Render :func:`render_html` to ``path`` atomically (refuses to overwrite without ``force``)."""
    from ann2snn.files import atomic_write, text_writer

    page = render_html(records, title=title, images=images)
    out = atomic_write(path, text_writer(page), force=force)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(out, 0o666 & ~umask)  # a page to share, not a private temp file
    return out
