"""What the pages show, computed from run records and jobs (no web framework here: plain data and HTML strings)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ann2snn.report import headline
from ann2snn.web.charts import accuracy_series, epoch_series, line_chart

__all__ = ["RunRow", "run_rows", "model_name", "SORTS", "record_html", "accuracy_chart", "epoch_chart",
           "compare_table", "downloads"]

SORTS = {"newest": "newest first", "oldest": "oldest first", "kind": "kind", "accuracy": "best accuracy"}


@dataclass(frozen=True)
class RunRow:
    """One line of the runs list."""

    id: str
    kind: str
    time: str
    model: str
    dataset: str
    headline: str
    accuracy: float | None
    job: str | None


def _best_accuracy(rec: dict[str, Any]) -> float | None:
    from ann2snn.plots import mode_results

    m = rec.get("metrics") or {}
    if rec.get("kind") == "eval" and "per_T" in m:
        return max(row["snn_accuracy"] for r in mode_results(m).values() for row in r["per_T"])
    for k in ("test_accuracy", "qann_accuracy", "accuracy"):
        if isinstance(m.get(k), (int, float)):
            return float(m[k])
    return None


def model_name(rec: dict[str, Any]) -> str:
    """The model file a run read (its name), or the architecture it trained."""
    cfg = rec.get("config") or {}
    if cfg.get("model"):
        return Path(str(cfg["model"])).name
    return str(cfg.get("arch") or "-")


def _dataset(rec: dict[str, Any]) -> str:
    m, cfg = rec.get("metrics") or {}, rec.get("config") or {}
    spec = str(m.get("dataset") or cfg.get("data") or "-")
    name, _, path = spec.partition(":")
    return f"{name}:{Path(path).name}" if path else name


def run_rows(records: list[dict[str, Any]], jobs_of: dict[str, str], *, kind: str = "", query: str = "",
             sort: str = "newest") -> list[RunRow]:
    """The runs list, filtered by ``kind`` and by ``query`` (words all found in the run's id, model, data,
    headline or configuration; case-insensitive), sorted by ``sort`` (a key of :data:`SORTS`)."""
    words = query.lower().split()
    rows = []
    for rec in records:
        if kind and rec.get("kind") != kind:
            continue
        rid = str(rec.get("id"))
        row = RunRow(rid, str(rec.get("kind")), str(rec.get("time", ""))[:19].replace("T", " "), model_name(rec),
                     _dataset(rec), headline(rec), _best_accuracy(rec), jobs_of.get(rid))
        text = " ".join([row.id, row.kind, row.model, row.dataset, row.headline,
                         json.dumps(rec.get("config") or {}, default=str)]).lower()
        if all(w in text for w in words):
            rows.append(row)
    if sort == "oldest":
        rows.sort(key=lambda r: r.id)
    elif sort == "kind":
        rows.sort(key=lambda r: (r.kind, r.id))
    elif sort == "accuracy":
        rows.sort(key=lambda r: (r.accuracy is None, -(r.accuracy or 0.0), r.id))
    else:
        rows.sort(key=lambda r: r.id, reverse=True)
    return rows


def record_html(rec: dict[str, Any], *, images: bool) -> str:
    """The HTML report's section for one run (tables, and its plots when matplotlib is installed)."""
    # ann2snn.report renders a whole page; its one-run section is the piece the web pages embed
    from ann2snn.report import record_section

    return record_section(rec, images=images)


def accuracy_chart(runs: list[tuple[str, dict[str, Any]]]) -> str:
    """Accuracy vs T of the runs overlaid (SVG), or '' when none of them has an accuracy."""
    series = accuracy_series(runs)
    if not any(s.x for s in series) and len(series) < 2:
        return ""
    return line_chart(series, title="accuracy vs T (solid: SNN rate mode, dashed: SNN exact mode, dotted: QANN)",
                      x_label="T (time steps)", y_label="accuracy (%)", log2_x=True)


def epoch_chart(runs: list[tuple[str, dict[str, Any]]]) -> str:
    """Test accuracy per epoch of the train runs (SVG), or ''."""
    series = epoch_series(runs)
    if not series:
        return ""
    return line_chart(series, title="training: test accuracy per epoch", x_label="epoch", y_label="accuracy (%)")


def _pct(v: Any) -> str:
    return "" if not isinstance(v, (int, float)) else f"{100 * v:.2f}%"


def _metrics(rec: dict[str, Any]) -> dict[str, str]:
    """The comparable numbers of one run, by row label."""
    from ann2snn.plots import mode_results

    m, cfg = rec.get("metrics") or {}, rec.get("config") or {}
    out = {"kind": str(rec.get("kind")), "time": str(rec.get("time", ""))[:19].replace("T", " "),
           "model": model_name(rec), "dataset": _dataset(rec)}
    if rec.get("kind") == "train":
        out.update({"L": str(cfg.get("levels")), "QCFS variant": f"{cfg.get('act')}, {cfg.get('granularity')}",
                    "epochs": str(m.get("epochs")), "test accuracy": _pct(m.get("test_accuracy")),
                    "best test accuracy": _pct(m.get("best_test_accuracy")),
                    "seconds": f"{m.get('seconds', 0):.1f}"})
    elif rec.get("kind") == "eval" and "per_T" in m:
        out["L"] = ", ".join(map(str, m.get("levels", [])))
        out["QANN accuracy"] = _pct(m.get("qann_accuracy"))
        out["samples"] = str(m.get("samples"))
        for mode, r in mode_results(m).items():
            for row in r["per_T"]:
                out[f"SNN T={row['T']} ({mode})"] = _pct(row["snn_accuracy"])
            step = ((r.get("exactness") or {}).get("exact_logits") or {}).get("step_all")
            if step is not None:
                out[f"exact logits from t ({mode})"] = str(step)
            energy = {e["T"]: e["ratio"] for e in (r.get("energy") or {}).get("per_T", [])}
            if energy:
                t = max(energy)
                out[f"E_SNN/E_ANN at T={t} ({mode})"] = f"{energy[t]:.3f}"
    else:
        for k, v in m.items():
            if isinstance(v, (int, float, str)) and not isinstance(v, bool):
                out[k] = _pct(v) if "accuracy" in k else (f"{v:.4g}" if isinstance(v, float) else str(v))
        for graph, v in (m.get("verification") or {}).items():
            if isinstance(v, dict) and "max_abs_error" in v:
                out[f"verified {graph}: max |err|"] = f"{v['max_abs_error']:.2e}"
    return out


def compare_table(records: list[dict[str, Any]]) -> tuple[list[str], list[list[str]]]:
    """``(row labels, one column of values per run)``: the runs' metrics side by side, rows in first-seen order."""
    cols = [_metrics(r) for r in records]
    labels = list(dict.fromkeys(k for c in cols for k in c))
    return labels, [[c.get(k, "") for c in cols] for k in labels]


def downloads(paths: list[str], runs: Path) -> list[tuple[str, str, int]]:
    """``(name, path relative to the runs directory, bytes)`` of the files among ``paths`` that lie inside it."""
    root, out = runs.resolve(), []
    for p in paths:
        path = Path(str(p)).resolve()
        if path.is_file() and path.is_relative_to(root):
            out.append((path.name, path.relative_to(root).as_posix(), path.stat().st_size))
    return out
