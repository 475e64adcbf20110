"""Accuracy of a QANN and of its SNN at every T from one run, with firing rates and operation counts.

The SNN runs once for ``T_max = max(Ts)`` steps; its logits at T = t are the running mean of the first t
per-step outputs (:meth:`SpikingNetwork.simulate`), so every T in the list costs nothing extra.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Sequence

import torch
from torch import nn

from ann2snn.data import Dataset, batches
from ann2snn.energy import ActivityMonitor, EnergyModel
from ann2snn.errors import Ann2SnnError

__all__ = ["DEFAULT_TS", "parse_ts", "evaluate", "plot_eval"]

DEFAULT_TS = (1, 2, 4, 8, 16, 32, 64)


def parse_ts(value: str | Sequence[int]) -> list[int]:
    """``"1,2,4"`` (or a sequence of ints) → sorted unique positive step counts; one-line error otherwise."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        if not value.strip() or any(not p.isdigit() for p in parts):
            raise Ann2SnnError(f"T list must be comma-separated positive integers like 1,2,4,8, got {value!r}")
        value = [int(p) for p in parts]
    ts = list(value)
    if not ts or any(isinstance(t, bool) or not isinstance(t, int) or t <= 0 for t in ts):
        raise Ann2SnnError(f"T list must be positive integers like 1,2,4,8, got {ts!r}")
    if max(ts) > 4096:
        raise Ann2SnnError(f"T = {max(ts)} is too many time steps for evaluation; use T <= 4096")
    return sorted(set(ts))


@torch.no_grad()
def evaluate(model: nn.Module, data: Dataset | tuple[torch.Tensor, torch.Tensor], Ts: Sequence[int] = DEFAULT_TS,
             *, batch_size: int = 256, limit: int | None = None, energy: EnergyModel | None = None,
             snn=None, backend: str = "torch", provider: str = "auto",
             progress: Callable[[int], None] | None = None) -> dict[str, Any]:
    """Evaluate ``model`` (a QANN) and its SNN on ``data``'s test split at every T in ``Ts``.

    Args:
        model: the QANN (QCFS activations), in eval mode.
        data: a :class:`~ann2snn.data.Dataset` (its test split is used) or ``(x, y)`` tensors.
        Ts: time steps to report; the SNN runs once for ``max(Ts)`` steps.
        batch_size / limit: mini-batch size; evaluate only the first ``limit`` samples.
        energy: energy constants (:class:`~ann2snn.energy.EnergyModel`, defaults E_MAC 4.6 pJ, E_AC 0.9 pJ).
        snn: an already converted :class:`SpikingNetwork` of ``model`` (converted here when None).
        backend: ``"torch"`` (the reference simulator) or ``"onnx"``: the SNN exported as an unrolled ONNX graph
            for ``max(Ts)`` steps and run on onnxruntime (``provider`` ``auto`` / ``cuda`` / ``cpu``); accuracies
            then come from its ``logits_per_step`` output, while firing rates and operation counts still come
            from the reference simulator run on the same batches (``backend_max_abs_diff`` compares the two).
        progress: called with the number of samples done after each batch.

    Returns:
        A JSON-ready dict: ``qann_accuracy``, ``per_T`` (``T, snn_accuracy, agreement, delta_pp``), ``curve``
        (SNN accuracy at every t = 1..T_max), ``firing_rates`` (per neuron layer, one rate per T),
        ``energy`` (per-layer MACs / SOPs and the SNN/ANN energy ratio per T), ``levels``, ``best_T``.

    Example:
        >>> res = evaluate(qann, load_dataset("digits"), [1, 2, 4, 8])
        >>> [(r["T"], r["snn_accuracy"]) for r in res["per_T"]]
    """
    from ann2snn.network import convert
    from ann2snn.simulator import run_steps, running_mean

    Ts = parse_ts(Ts)
    T_max = max(Ts)
    if backend not in ("torch", "onnx"):
        raise Ann2SnnError(f"backend must be 'torch' or 'onnx', got {backend!r}")
    name = data.name if isinstance(data, Dataset) else "tensors"
    x, y = (data.x_test, data.y_test) if isinstance(data, Dataset) else data
    if limit is not None:
        if limit <= 0:
            raise Ann2SnnError(f"limit must be a positive number of samples, got {limit}")
        x, y = x[:limit], y[:limit]
    if len(y) == 0:
        raise Ann2SnnError(f"dataset {name!r} has no test samples to evaluate; check the data directory")
    if batch_size <= 0:
        raise Ann2SnnError(f"batch size must be positive, got {batch_size}")
    model = model.eval()
    expected = getattr(model, "input_shape", None)
    if expected is not None and tuple(x.shape[1:]) != tuple(expected):
        raise Ann2SnnError(f"the data's samples have shape {tuple(x.shape[1:])} but the model takes "
                           f"{tuple(expected)}; pass the dataset the model was trained on (--data)")
    if snn is None:
        snn = convert(model, T=T_max, input_shape=tuple(x.shape[1:]))
    gm = snn.graph_module
    session, provider_used, max_diff = None, None, 0.0
    if backend == "onnx":
        from ann2snn.exporters.onnx_unrolled import build_unrolled
        from ann2snn.runtime import make_session

        session, provider_used = make_session(build_unrolled(snn, T=T_max).SerializeToString(), provider=provider)
    n = len(y)
    qann_correct = 0
    snn_correct = torch.zeros(T_max, dtype=torch.float64)
    agree = torch.zeros(T_max, dtype=torch.float64)
    done = 0
    mon = ActivityMonitor(gm, T_max, energy=energy)
    for xb, yb in batches(x, y, batch_size):
        q_pred = model(xb).argmax(-1)
        per_t = running_mean(run_steps(gm, xb, T_max, observer=mon))  # [T, B, K]
        if session is not None:
            ort_t = torch.from_numpy(session.run(["logits_per_step"], {"input": xb.numpy()})[0])
            max_diff = max(max_diff, float((ort_t - per_t).abs().max()))
            per_t = ort_t
        s_pred = per_t.argmax(-1)
        mon.add_samples(len(yb))
        qann_correct += int((q_pred == yb).sum())
        snn_correct += (s_pred == yb).sum(1, dtype=torch.float64)
        agree += (s_pred == q_pred).sum(1, dtype=torch.float64)
        done += len(yb)
        if progress is not None:
            progress(done)
    qacc = qann_correct / n
    curve = (snn_correct / n).tolist()
    per_T = [{"T": t, "snn_accuracy": curve[t - 1], "agreement": float(agree[t - 1]) / n,
              "delta_pp": round((curve[t - 1] - qacc) * 100, 4)} for t in Ts]
    levels = snn.info.get("levels", [])
    best = max(per_T, key=lambda r: (r["snn_accuracy"], -r["T"]))
    return {
        "dataset": name, "samples": n, "T_list": Ts, "levels": levels,
        "backend": backend if session is None else f"onnx ({provider_used})",
        **({"backend_max_abs_diff": max_diff} if session is not None else {}),
        "qann_accuracy": qacc, "per_T": per_T, "best_T": best["T"],
        "curve": {"T": list(range(1, T_max + 1)), "snn_accuracy": curve,
                  "agreement": (agree / n).tolist()},
        "firing_rates": mon.firing_rates(Ts),
        "energy": mon.summary(Ts),
        "conversion": snn.report.counts() if snn.report is not None else {},
    }


def plot_eval(result: dict[str, Any], path: str | os.PathLike | None = None):
    """Accuracy vs T (SNN curve, QANN line, T = L marked), firing rates and the SNN/ANN energy ratio.

    ``result`` comes from :func:`evaluate`. Writes a PNG when ``path`` is given; returns the figure.
    """
    from ann2snn.report import pyplot

    plt = pyplot()
    fig, (ax1, ax2, ax3) = plt.subplots(1, 3, figsize=(14, 3.8))
    c = result["curve"]
    ax1.plot(c["T"], [a * 100 for a in c["snn_accuracy"]], "-", color="#4477aa", label="SNN")
    ax1.plot([r["T"] for r in result["per_T"]], [r["snn_accuracy"] * 100 for r in result["per_T"]], "o",
             color="#4477aa")
    ax1.axhline(result["qann_accuracy"] * 100, color="#cc3311", ls="--", label="QANN")
    for L in result.get("levels", []):
        ax1.axvline(L, color="grey", lw=0.8, ls=":")
        ax1.text(L, ax1.get_ylim()[0], f" T=L={L}", fontsize=8, color="grey", va="bottom")
    ax1.set_xscale("log", base=2)
    ax1.set_xlabel("T (time steps)")
    ax1.set_ylabel("accuracy (%)")
    ax1.set_title(f"{result['dataset']}: accuracy vs T ({result['samples']} samples)", fontsize=10)
    ax1.legend(fontsize=8)
    Ts = result["T_list"]
    for fr in result["firing_rates"]:
        ax2.plot(Ts, fr["rates"], "o-", label=fr["name"], ms=3)
    ax2.set_xscale("log", base=2)
    ax2.set_xlabel("T")
    ax2.set_ylabel("spikes / neuron / step")
    ax2.set_title("firing rate per neuron layer", fontsize=10)
    ax2.legend(fontsize=7)
    e = result["energy"]["per_T"]
    ax3.plot([r["T"] for r in e], [r["ratio"] for r in e], "o-", color="#228833")
    ax3.axhline(1.0, color="grey", lw=0.8, ls="--")
    ax3.set_xscale("log", base=2)
    ax3.set_xlabel("T")
    ax3.set_ylabel("E_SNN / E_ANN")
    const = result["energy"]["constants"]
    ax3.set_title(f"energy ratio (E_MAC={const['e_mac_pj']} pJ, E_AC={const['e_ac_pj']} pJ)", fontsize=10)
    for ax in (ax1, ax2, ax3):
        ticks = [t for t in Ts if t <= max(c["T"])]
        ax.set_xticks(ticks, [str(t) for t in ticks])
        ax.minorticks_off()
    fig.tight_layout()
    if path is not None:
        fig.savefig(path, dpi=110)
        plt.close(fig)
    return fig
