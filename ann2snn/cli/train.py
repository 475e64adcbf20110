"""``ann2snn train``: train a QANN (or a plain ReLU ANN) from the zoo, on one process or under torchrun."""

from __future__ import annotations

import os

import click

from ann2snn.cli.common import _parse_arch_kwargs, console, esc, parse_int_list, print_json, table


def _is_main() -> bool:
    return int(os.environ.get("RANK", "0")) == 0


@click.command("train")
@click.option("--arch", default=None, metavar="NAME", help="Architecture from the zoo (see `ann2snn models`).")
@click.option("--data", "data", default="digits", show_default=True, metavar="SPEC",
              help="digits, mnist[:DIR], cifar10:DIR or cifar100:DIR.")
@click.option("--levels", "-L", type=int, default=4, show_default=True, help="QCFS quantization levels L.")
@click.option("--granularity", type=click.Choice(["layer", "channel", "neuron", "head", "head-neuron"]),
              default="layer", show_default=True,
              help="One threshold per layer, per channel or per neuron; transformers: per head on attention (head), "
                   "per neuron elsewhere (neuron) or both (head-neuron, HN-QCFS). With --two-stage: the stage-2 "
                   "granularity.")
@click.option("--softplus/--no-softplus", default=True, show_default=True, help="θ = Softplus(λ) keeps thresholds > 0.")
@click.option("--init-threshold", type=float, default=2.0, show_default=True, help="Initial QCFS threshold θ.")
@click.option("--act", type=click.Choice(["qcfs", "relu", "signed", "leaky"]), default="qcfs", show_default=True,
              help="qcfs: QANN; relu: the plain ANN of the same architecture (for `ann2snn prepare`); signed: QANN "
                   "of signed (double-threshold) QCFS, a quantized LeakyReLU; leaky: the plain LeakyReLU ANN.")
@click.option("--alpha", type=float, default=0.1, show_default=True,
              help="Negative slope for --act signed (θ_n = α·θ_p) and --act leaky (LeakyReLU slope).")
@click.option("--learn-negative", is_flag=True,
              help="--act signed: learn θ_n (starting at α·θ_p) instead of keeping θ_n = α·θ_p; with --from-ann, "
                   "the prepared LeakyReLU layers learn it.")
@click.option("--epochs", type=int, default=None,
              help="Epochs, at least 1 (default 10; with --two-stage, E1+E2).")
@click.option("--batch-size", type=int, default=128, show_default=True, help="Per process.")
@click.option("--lr", type=float, default=None,
              help="Learning rate (default: 2e-3 for adam and adamw, 0.1 for sgd).")
@click.option("--optimizer", type=click.Choice(["adam", "adamw", "sgd"]), default=None,
              help="Default: adamw for transformers, adam otherwise.")
@click.option("--weight-decay", type=float, default=None,
              help="Default: 0 for adam, 0.05 for adamw (weight matrices only), 5e-4 for sgd.")
@click.option("--warmup", type=float, default=None, metavar="EPOCHS",
              help="Linear learning-rate warmup before the cosine (default: 1 epoch for transformers, at most a "
                   "tenth of a stage; 0 otherwise).")
@click.option("--arch-kwargs", default=None, metavar="JSON", callback=_parse_arch_kwargs,
              help="Keyword arguments of --arch as a JSON object, e.g. '{\"patch\": 4, \"norm\": \"bn\"}' (see "
                   "`ann2snn models`); the QCFS options come from their own flags.")
@click.option("--seed", type=int, default=0, show_default=True)
@click.option("--two-stage", default=None, metavar="E1,E2",
              help="CS-QCFS: E1 epochs layer-wise, then E2 epochs channel-wise starting from the stage-1 thresholds.")
@click.option("--from-ann", type=click.Path(dir_okay=False), default=None,
              help="Start from a trained ReLU ANN (prepared with calibrated thresholds) or a QANN file.")
@click.option("--resume", type=click.Path(dir_okay=False), default=None, help="Continue from a .last.pt checkpoint.")
@click.option("-o", "--output", type=click.Path(dir_okay=False), default=None,
              help="Best checkpoint (default ARCH-DATASET.pt); the last one goes beside it as .last.pt.")
@click.option("--augment/--no-augment", default=None, help="Crop+flip augmentation (default: on for CIFAR).")
@click.option("--device", default="auto", show_default=True, help="auto, cpu or cuda[:N].")
@click.option("--force", is_flag=True, help="Overwrite existing checkpoints.")
@click.option("--json", "as_json", is_flag=True, help="Print the final metrics as JSON.")
def train_cmd(arch, data, levels, granularity, softplus, init_threshold, act, alpha, learn_negative, epochs,
              batch_size, lr, optimizer, weight_decay, warmup, arch_kwargs, seed, two_stage, from_ann, resume, output,
              augment, device, force, as_json):
    """Train a QANN on digits, MNIST or CIFAR and write checkpoints in the ann2snn format plus a run record.

    Multi-GPU / multi-node: `torchrun --nproc_per_node N -m ann2snn train ...` runs DistributedDataParallel
    (NCCL on GPUs, gloo on CPU); only rank 0 writes files.

    Example: ann2snn train --arch mnist-cnn --data mnist:../shared/data/mnist --epochs 2

    Signed: ann2snn train --arch mnist-convnet --data mnist --act signed --alpha 0.1 (or --act leaky, then
    `ann2snn prepare`).

    Transformers: ann2snn train --arch vit-tiny --data mnist --granularity head-neuron (HN-QCFS; AdamW with
    warmup by default; --two-stage E1,E2 trains layer-wise θ first).
    """
    from ann2snn.errors import Ann2SnnError
    from ann2snn.train import TrainConfig, train

    stages = None
    if two_stage is not None:
        stages = tuple(parse_int_list(two_stage, name="--two-stage"))
        if len(stages) != 2:
            raise Ann2SnnError(f"--two-stage takes two epoch counts E1,E2, got {two_stage!r}")
        if epochs is not None and epochs != sum(stages):
            raise Ann2SnnError(f"--epochs {epochs} disagrees with --two-stage {two_stage} ({sum(stages)} epochs); "
                               "drop --epochs")
    if output is not None:  # a typo in -o fails now, not after the first epoch
        from ann2snn.files import check_writable

        check_writable(output, force=True)
    cfg = TrainConfig(arch=arch, data=data, levels=levels, granularity=granularity, softplus=softplus,
                      init_threshold=init_threshold, act=act, alpha=alpha, learn_negative=learn_negative,
                      arch_kwargs=arch_kwargs or {}, epochs=epochs if epochs is not None else 10,
                      batch_size=batch_size, lr=lr, optimizer=optimizer, weight_decay=weight_decay, warmup=warmup,
                      seed=seed, two_stage=stages, from_ann=from_ann, resume=resume,
                      output=output, force=force, augment=augment, device=device)
    main = _is_main()
    if as_json or not main:
        result = train(cfg)
    else:
        result = _train_with_progress(cfg, train)
    if not main:
        return
    m = result.metrics
    summary = {"best": str(result.best_path), "last": str(result.last_path), "record": str(result.record_path),
               "test_accuracy": m["test_accuracy"], "best_test_accuracy": m["best_test_accuracy"],
               "epochs": m["epochs"], "seconds": round(m["seconds"], 1), "world_size": m["world_size"]}
    if as_json:
        print_json({**summary, "history": m["history"]})
        return
    console.print(f"test accuracy {m['test_accuracy']:.2%} (best {m['best_test_accuracy']:.2%}) after {m['epochs']} "
                  f"epochs in {m['seconds']:.0f} s on {m['world_size']} × {m['device']}", highlight=False)
    console.print(f"wrote [bold]{esc(result.best_path)}[/] (best), {esc(result.last_path)} (last), run record "
                  f"{esc(result.record_path)}", highlight=False)


def _train_with_progress(cfg, train):
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    rows = []
    with Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  TimeRemainingColumn(), console=console, transient=True, disable=not console.is_terminal) as bar:
        task = bar.add_task("starting", total=None)

        def progress(event, **info):
            if event == "stage":
                console.print(f"stage {info['stage'] + 1}: {info['epochs']} epochs, {info['granularity']} thresholds",
                              highlight=False)
            elif event == "batch":
                bar.update(task, total=info["steps"], completed=info["step"],
                           description=f"epoch {info['epoch'] + 1} loss {info['loss']:.3f}")
            elif event == "epoch":
                rows.append(info)
                console.print(f"epoch {info['epoch']:>3} (stage {info['stage']}): loss {info['loss']:.4f}  "
                              f"train {info['train_accuracy']:.2%}  test {info['test_accuracy']:.2%}  "
                              f"lr {info['lr']:.2e}  {info['seconds']:.1f} s", highlight=False)

        result = train(cfg, progress=progress)
    if rows:
        console.print(table("training", ["epoch", "stage", "loss", "train acc", "test acc", "s"],
                            [[r["epoch"], r["stage"], f"{r['loss']:.4f}", f"{r['train_accuracy']:.2%}",
                              f"{r['test_accuracy']:.2%}", f"{r['seconds']:.1f}"] for r in rows]))
    return result
