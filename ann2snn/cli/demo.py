"""``ann2snn demo``: the embedded default, end to end on scikit-learn's digits."""

from __future__ import annotations

import click

from ann2snn.cli.common import console, print_json, table

DEMO_TS = (1, 2, 4, 8, 16, 32)


def run_demo(*, levels: int = 4, epochs: int = 15, seed: int = 0, progress=None) -> dict:
    """Train a digits QANN, convert it, and measure QANN vs SNN accuracy at every T in :data:`DEMO_TS`."""
    import torch

    import ann2snn
    from ann2snn.data import load_digits
    from ann2snn.train import fit

    torch.manual_seed(seed)
    data = load_digits(seed=seed)
    qann = ann2snn.models.create("digits-cnn", levels=levels, init_threshold=2.0)
    metrics = fit(qann, data, epochs=epochs, lr=5e-3, seed=seed, on_epoch=progress)
    snn = ann2snn.convert(qann, T=levels)
    with torch.no_grad():
        qann_pred = qann(data.x_test).argmax(1)
        per_t = snn.simulate(data.x_test, max(DEMO_TS))
    rows = []
    for t in DEMO_TS:
        pred = per_t[t - 1].argmax(1)
        rows.append({"T": t, "snn_accuracy": float((pred == data.y_test).float().mean()),
                     "agreement_with_qann": float((pred == qann_pred).float().mean())})
    return {"dataset": "digits", "arch": "digits-cnn", "levels": levels, "epochs": epochs, "seed": seed,
            "qann_accuracy": metrics["test_accuracy"], "test_samples": len(data.y_test), "per_T": rows,
            "report": snn.report.counts()}


@click.command("demo")
@click.option("--levels", "-L", type=click.IntRange(min=1), default=4, show_default=True, help="QCFS levels L.")
@click.option("--epochs", type=click.IntRange(min=1), default=15, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def demo_cmd(levels, epochs, seed, as_json):
    """Train a small QANN on scikit-learn's digits, convert it, and compare QANN and SNN accuracy at every T.

    The SNN is most accurate at T = L: longer runs tend to the unquantized clip, not to the QANN.
    """
    from rich.progress import Progress

    if as_json:
        print_json(run_demo(levels=levels, epochs=epochs, seed=seed))
        return
    with Progress(console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("training digits QANN", total=epochs)
        result = run_demo(levels=levels, epochs=epochs, seed=seed,
                          progress=lambda e, loss, acc: bar.update(task, advance=1,
                                                                   description=f"epoch {e + 1}: loss {loss:.3f}"))
    qacc = result["qann_accuracy"]
    rows = [["QANN", "-", f"{qacc:.2%}", "-", "-"]]
    for r in result["per_T"]:
        mark = "  ← T = L" if r["T"] == levels else ""
        delta = round((r["snn_accuracy"] - qacc) * 100, 2) + 0.0  # + 0.0 turns -0.0 into 0.0
        rows.append([f"SNN{mark}", r["T"], f"{r['snn_accuracy']:.2%}", f"{delta:+.2f} pp",
                     f"{r['agreement_with_qann']:.2%}"])
    console.print(table(f"digits-cnn, L = {levels}, {result['test_samples']} test images",
                        ["model", "T", "accuracy", "vs QANN", "same prediction as QANN"], rows))
    c = result["report"]
    console.print(f"conversion: {c['batchnorm_folded']} BN folded, {c['thresholds_folded']} thresholds folded, "
                  f"{c['if_neurons']} IF neurons, {c['explicit_scales']} explicit scales", highlight=False)
