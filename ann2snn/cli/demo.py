"""``ann2snn demo``: the embedded default, end to end on scikit-learn's digits."""

from __future__ import annotations

import click

from ann2snn.cli.common import console, print_json, table

DEMO_TS = (1, 2, 4, 8, 16, 32)


def run_demo(*, levels: int = 4, epochs: int = 15, seed: int = 0, progress=None) -> dict:
    """Train a digits QANN, convert it, and measure QANN vs SNN accuracy at every T in :data:`DEMO_TS` (rate mode),
    and, in exact mode, its accuracy and the step from which its logits equal the QANN's."""
    import torch

    import ann2snn
    from ann2snn.data import load_digits
    from ann2snn.evaluate import exact_logits_mask, first_stable_step, step_stats
    from ann2snn.train import fit

    torch.manual_seed(seed)
    data = load_digits(seed=seed)
    qann = ann2snn.models.create("digits-cnn", levels=levels, init_threshold=2.0)
    metrics = fit(qann, data, epochs=epochs, lr=5e-3, seed=seed, on_epoch=progress)
    snn = ann2snn.convert(qann, T=levels)
    exact = ann2snn.convert(qann, T=levels, convention="exact")
    with torch.no_grad():
        qann_logits = qann(data.x_test)
        per_t = snn.simulate(data.x_test, max(DEMO_TS))
        per_t_exact = exact.simulate(data.x_test, max(DEMO_TS))
    qann_pred = qann_logits.argmax(1)
    rows = []
    for t in DEMO_TS:
        pred = per_t[t - 1].argmax(1)
        rows.append({"T": t, "snn_accuracy": float((pred == data.y_test).float().mean()),
                     "agreement_with_qann": float((pred == qann_pred).float().mean()),
                     "exact_mode_accuracy": float((per_t_exact[t - 1].argmax(1) == data.y_test).float().mean())})
    settled = step_stats(first_stable_step(exact_logits_mask(per_t_exact, qann_logits)), max(DEMO_TS))
    return {"dataset": "digits", "arch": "digits-cnn", "levels": levels, "epochs": epochs, "seed": seed,
            "qann_accuracy": metrics["test_accuracy"], "test_samples": len(data.y_test), "per_T": rows,
            "exact_logits": settled, "report": snn.report.counts()}


@click.command("demo")
@click.option("--levels", "-L", type=click.IntRange(min=1), default=4, show_default=True, help="QCFS levels L.")
@click.option("--epochs", type=click.IntRange(min=1), default=15, show_default=True)
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def demo_cmd(levels, epochs, seed, as_json):
    """Train a small QANN on scikit-learn's digits, convert it, and compare QANN and SNN accuracy at every T.

    The SNN is most accurate at T = L: longer runs tend to the unquantized clip, not to the QANN. The last line is
    the same QANN in exact mode (convert/eval --mode exact), whose logits settle exactly on the QANN's.
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
    ex, last = result["exact_logits"], result["per_T"][-1]
    settled = (f"equal to the QANN's logits from step {ex['step_all']} (median {ex['median']})" if ex["never"] == 0
               else f"{ex['never']} images not equal to the QANN's logits by then")
    console.print(f"exact mode: {last['exact_mode_accuracy']:.2%} at T = {last['T']}, {settled}", highlight=False)
    c = result["report"]
    console.print(f"conversion: {c['batchnorm_folded']} BN folded, {c['thresholds_folded']} thresholds folded, "
                  f"{c['if_neurons']} IF neurons, {c['explicit_scales']} explicit scales", highlight=False)
