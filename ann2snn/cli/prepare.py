"""``ann2snn prepare``: a trained ReLU / LeakyReLU ANN file -> a QANN file (QCFS / SignedQCFS, calibrated)."""

from __future__ import annotations

from pathlib import Path

import click

from ann2snn.cli.common import (
    FiniteFloat,
    check_input,
    console,
    esc,
    model_options,
    normalize_option,
    print_json,
    resolve_preprocessing,
    table,
)


@click.command("prepare")
@click.argument("model", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-o", "--output", type=click.Path(dir_okay=False, path_type=Path), default=None,
              help="Output QANN file (default: MODEL with suffix .qann.pt).")
@click.option("--levels", "-L", type=int, default=4, show_default=True, help="QCFS quantization levels L.")
@click.option("--granularity", type=click.Choice(["layer", "channel"]), default="layer", show_default=True)
@click.option("--softplus/--no-softplus", default=True, show_default=True, help="θ = Softplus(λ) keeps thresholds > 0.")
@click.option("--data", "data", default=None, metavar="SPEC",
              help="Calibration data (digits, mnist[:DIR], cifar10:DIR, ...): thresholds from its training images.")
@click.option("--samples", type=click.IntRange(1, 1 << 20), default=2048, show_default=True,
              help="Calibration images.")
@click.option("--method", type=click.Choice(["percentile", "max"]), default="percentile", show_default=True)
@click.option("--percentile", type=FiniteFloat(0, 100, min_open=True), default=99.9, show_default=True)
@click.option("--init-threshold", type=FiniteFloat(0, min_open=True), default=None,
              help="θ without calibration data (default 8; ReLU6: 6).")
@click.option("--maxpool", type=click.Choice(["avg", "keep"]), default="avg", show_default=True,
              help="Swap max-pooling for average pooling, or keep it for the spiking max-pool.")
@click.option("--learn-negative", is_flag=True,
              help="LeakyReLU layers learn θ_n (starting at slope·θ_p) instead of keeping θ_n = slope·θ_p.")
@click.option("--force", is_flag=True, help="Overwrite an existing output file.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
@normalize_option
@model_options
def prepare_cmd(model, output, levels, granularity, softplus, data, samples, method, percentile, init_threshold,
                maxpool, learn_negative, force, as_json, normalize, trust_pickle, arch, arch_kwargs, arch_module):
    """Turn a trained ReLU / LeakyReLU ANN MODEL into a QANN: every ReLU (module or functional) and ReLU6 becomes
    a QCFS, every LeakyReLU a signed QCFS (output in [−θ_n, θ_p], θ_n = slope·θ_p; for bipolar neurons).

    Thresholds start at the chosen percentile (or max) of each activation on --data's training images (for a
    LeakyReLU: of its positive side); the weights are kept. Fine-tune the result with
    `ann2snn train --from-ann OUTPUT --data ...`, then `ann2snn convert` it.
    (`ann2snn train --from-ann RELU.pt` does both steps at once.)

    The calibration images are preprocessed as the ANN file records (or as --normalize states), and the QANN
    file records the same preprocessing.

    Example: ann2snn prepare mnist-relu.pt --data mnist --levels 4 --granularity channel
    """
    import ann2snn
    from ann2snn.data import load_dataset_for
    from ann2snn.errors import Ann2SnnError
    from ann2snn.files import check_writable
    from ann2snn.prepare import prepare

    out = output or model.with_name(model.name.removesuffix(".pt") + ".qann.pt")
    check_writable(out, force=force)
    ann = ann2snn.checkpoint.load_qann(model, trust_pickle=trust_pickle, arch=arch, arch_kwargs=arch_kwargs,
                                       arch_module=arch_module)
    pre = resolve_preprocessing(ann, normalize, data, model_path=model)
    calib = None
    if data is not None:
        calib = load_dataset_for(data, pre).x_train[:samples]
        check_input(ann, calib[:2], f"calibration data {data!r}")
    qann = prepare(ann, calib, levels=levels, granularity=granularity, positive="softplus" if softplus else "none",
                   init_threshold=init_threshold, method=method, percentile=percentile, maxpool=maxpool,
                   learn_negative=learn_negative)
    qann.preprocessing = pre
    rep = qann.prepare_report
    if getattr(qann, "arch_name", None) is None:
        raise Ann2SnnError(f"the prepared model cannot be saved as a registered architecture: "
                           f"{rep['not_rebuilt_because']}")
    ann2snn.save(qann, out, meta={"prepared_from": str(model), "prepare": rep}, force=force)
    if as_json:
        print_json({"output": str(out), **rep})
        return
    signed = sum(a["alpha"] is not None for a in rep["activations"])
    what = "QCFS" if not signed else f"QCFS ({signed} signed, θ_n = α·θ_p)"
    console.print(table(f"{model.name}: {len(rep['activations'])} activations → {what} (L = {levels})",
                        ["name", "replaced", "thresholds", "θ min", "θ mean", "θ max", "α"],
                        [[a["name"], a["replaced"], a["channels"], f"{a['threshold_min']:.3f}",
                          f"{a['threshold_mean']:.3f}", f"{a['threshold_max']:.3f}",
                          "" if a["alpha"] is None else f"{a['alpha']:g}"] for a in rep["activations"]],
                        justify_right_from=2))
    for s in rep["maxpool_swapped"]:
        console.print(f"max-pool swapped: {esc(s)}", highlight=False)
    console.print(f"wrote [bold]{esc(out)}[/] (architecture {esc(qann.arch_name)}); fine-tune it with "
                  f"`ann2snn train --from-ann {esc(out)} --data ...`, then `ann2snn convert`", highlight=False)
