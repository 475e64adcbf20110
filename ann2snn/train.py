"""Training QANNs: a small seeded loop (:func:`fit`) and the full one behind ``ann2snn train`` (:func:`train`).

The straight-through QCFS gradient does the rest. :func:`train` adds two-stage CS-QCFS, checkpoints (best and
last, atomic), resume, run records and DistributedDataParallel under ``torchrun``.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn

from ann2snn.data import Dataset, batches
from ann2snn.errors import Ann2SnnError

__all__ = ["fit", "accuracy", "train", "train_epoch", "make_optimizer", "decay_groups", "TrainConfig", "TrainResult",
           "family_defaults"]


@torch.no_grad()
def accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, batch_size: int = 512) -> float:
    """Top-1 accuracy of ``model`` in eval mode."""
    was = model.training
    model.eval()
    correct = sum(int((model(xb).argmax(1) == yb).sum()) for xb, yb in batches(x, y, batch_size))
    model.train(was)
    return correct / len(y)


def make_optimizer(params, optimizer: str, *, lr: float, weight_decay: float, steps: int, warmup_steps: int = 0):
    """Adam, AdamW or SGD with momentum 0.9, and a cosine schedule over ``steps`` batches.

    With ``warmup_steps`` the rate first rises linearly from ``lr / warmup_steps`` to ``lr``, then follows the
    cosine over the remaining steps. ``params`` may be parameter groups with their own weight decay
    (:func:`decay_groups`).
    """
    if optimizer == "adam":
        opt = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
    elif optimizer == "adamw":
        opt = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=weight_decay)
    if warmup_steps <= 0:
        return opt, torch.optim.lr_scheduler.CosineAnnealingLR(opt, max(1, steps))
    warm, rest = int(warmup_steps), max(1, steps - int(warmup_steps))

    def factor(step: int) -> float:
        if step < warm:
            return (step + 1) / warm
        return 0.5 * (1.0 + math.cos(math.pi * min(1.0, (step - warm) / rest)))

    return opt, torch.optim.lr_scheduler.LambdaLR(opt, factor)


#: Parameter names (last component) that weight decay leaves alone besides every vector (norms, biases, QCFS λ):
#: position embeddings, class tokens and relative-position tables are learned constants, not weights.
NO_DECAY_NAMES = ("pos", "token", "table")


def decay_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Parameter groups: weight decay on weight matrices and kernels only, none on vectors (biases, norm scales,
    QCFS λ: decay would pull thresholds towards Softplus(0)) or :data:`NO_DECAY_NAMES`."""
    decay, keep = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (keep if p.ndim <= 1 or name.rsplit(".", 1)[-1] in NO_DECAY_NAMES else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": keep, "weight_decay": 0.0}]


def train_epoch(net: nn.Module, x: torch.Tensor, y: torch.Tensor, idx: torch.Tensor, batch_size: int, opt, sched, *,
                transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
                on_batch: Callable[[int, float], None] | None = None) -> tuple[float, int, int]:
    """One epoch of cross-entropy training over ``x[idx]`` in order; returns (loss sum, correct, samples)."""
    net.train()
    loss_fn = nn.CrossEntropyLoss()
    loss_sum, correct, n = 0.0, 0, 0
    for step, i in enumerate(range(0, len(idx), batch_size)):
        j = idx[i:i + batch_size]
        xb, yb = x[j], y[j]
        if transform is not None:
            xb = transform(xb)
        opt.zero_grad(set_to_none=True)
        out = net(xb)
        loss = loss_fn(out, yb)
        loss.backward()
        opt.step()
        sched.step()
        loss_sum += float(loss.detach()) * len(yb)
        correct += int((out.detach().argmax(1) == yb).sum())
        n += len(yb)
        if on_batch is not None:
            on_batch(step, float(loss.detach()))
    return loss_sum, correct, n


def fit(model: nn.Module, data: Dataset, *, epochs: int = 10, lr: float = 1e-2, batch_size: int = 64,
        optimizer: str = "adam", weight_decay: float = 0.0, seed: int = 0,
        on_epoch: Callable[[int, float, float], None] | None = None) -> dict[str, float]:
    """Train ``model`` on ``data`` with cross-entropy and a cosine schedule; returns the final metrics.

    ``on_epoch(epoch, loss, test_accuracy)`` is called after every epoch (progress display).
    """
    torch.manual_seed(seed)
    g = torch.Generator().manual_seed(seed)
    steps = epochs * ((len(data.y_train) + batch_size - 1) // batch_size)
    opt, sched = make_optimizer(model.parameters(), optimizer, lr=lr, weight_decay=weight_decay, steps=steps)
    loss_avg = float("nan")
    for epoch in range(epochs):
        idx = torch.randperm(len(data.y_train), generator=g)
        total, _, n = train_epoch(model, data.x_train, data.y_train, idx, batch_size, opt, sched)
        loss_avg = total / n
        if on_epoch is not None:
            on_epoch(epoch, loss_avg, accuracy(model, data.x_test, data.y_test))
    model.eval()
    return {"loss": loss_avg, "test_accuracy": accuracy(model, data.x_test, data.y_test),
            "train_accuracy": accuracy(model, data.x_train, data.y_train)}


# ------------------------------------------------------------------------------------------------------------
# QANN training for the CLI: stages, checkpoints, resume, run records, torch.distributed.

OPTIMIZERS = ("sgd", "adam", "adamw")

#: Defaults per architecture family for options left at ``None``: ``(optimizer, lr, weight decay, warmup epochs)``.
#: Transformers (:class:`ann2snn.models.common.ZooTransformer`) train with AdamW, decoupled weight decay 0.05 on
#: weight matrices only, and a linear warmup of one epoch (at most a tenth of a stage) before the cosine.
FAMILY_DEFAULTS = {"cnn": ("adam", 2e-3, 0.0, 0.0), "transformer": ("adamw", 2e-3, 0.05, 1.0)}
_LR_DEFAULTS = {"adam": 2e-3, "adamw": 2e-3, "sgd": 0.1}
_WD_DEFAULTS = {"adam": 0.0, "adamw": 0.05, "sgd": 5e-4}


@dataclass(frozen=True)
class TrainConfig:
    """What ``ann2snn train`` does; every field has a CLI option of the same name.

    ``two_stage=(E1, E2)`` trains E1 epochs with layer-wise thresholds, then copies each layer's threshold into
    every channel (:func:`ann2snn.layers.to_channelwise`) and fine-tunes E2 epochs at ``granularity``
    (``"channel"`` unless given) with learning rate ``stage2_lr`` (default ``lr / 10``): CS-QCFS.
    ``batch_size`` is per process; under ``torchrun`` the global batch is ``batch_size × world size``.
    The best (highest test accuracy in the last stage) model goes to ``output``, the last one, with the
    optimizer state for ``resume``, to ``output`` with suffix ``.last.pt``.
    ``act``: ``"qcfs"`` (QANN), ``"relu"`` (plain ANN), ``"signed"`` (SignedQCFS QANN with θ_n = ``alpha``·θ_p, or
    θ_n learned with ``learn_negative``) or ``"leaky"`` (plain ``LeakyReLU(alpha)`` ANN, for ``prepare``).
    ``optimizer``, ``lr``, ``weight_decay`` and ``warmup`` (epochs of linear warmup before the cosine) left at
    ``None`` take the architecture family's defaults (:data:`FAMILY_DEFAULTS`; see :func:`family_defaults`).
    Transformers take ``granularity`` ``"head"``, ``"neuron"`` or ``"head-neuron"`` (HN-QCFS); a two-stage run
    of one makes each quantizer head- or neuron-wise as its ``threshold_plan`` says.
    """

    arch: str | None = None
    data: str = "digits"
    levels: int = 4
    granularity: str = "layer"
    softplus: bool = True
    init_threshold: float = 2.0
    act: str = "qcfs"
    alpha: float = 0.1
    learn_negative: bool = False
    arch_kwargs: dict[str, Any] = field(default_factory=dict)
    epochs: int = 10
    batch_size: int = 128
    lr: float | None = None
    optimizer: str | None = None
    weight_decay: float | None = None
    warmup: float | None = None
    seed: int = 0
    two_stage: tuple[int, int] | None = None
    stage2_lr: float | None = None
    from_ann: str | None = None
    calibration_samples: int = 2048
    percentile: float = 99.9
    resume: str | None = None
    output: str | None = None
    force: bool = False
    augment: bool | None = None
    device: str = "auto"
    runs_dir: str | None = None
    record: bool = True


@dataclass
class TrainResult:
    """What :func:`train` returns (on every rank; only rank 0 wrote files)."""

    model: nn.Module
    best_path: Path | None
    last_path: Path | None
    record_path: Path | None
    metrics: dict[str, Any]


#: ``act`` values: QANNs (QCFS, SignedQCFS) and the plain ANNs (ReLU, LeakyReLU) that ``prepare`` turns into them.
_ACTS = ("qcfs", "relu", "signed", "leaky")
_PLAIN_ACTS = ("relu", "leaky")


def _check_config(cfg: TrainConfig) -> None:
    def bad(msg):
        raise Ann2SnnError(msg)

    if cfg.arch is None and cfg.from_ann is None and cfg.resume is None:
        bad("no architecture: pass --arch NAME (see `ann2snn models`), --from-ann ANN.pt or --resume CKPT")
    if isinstance(cfg.levels, bool) or not isinstance(cfg.levels, int) or cfg.levels <= 0:
        bad(f"--levels must be a positive integer (QCFS quantization levels L), got {cfg.levels!r}")
    if cfg.granularity not in GRANULARITY_CHOICES:
        bad(f"--granularity must be one of {', '.join(GRANULARITY_CHOICES)}, got {cfg.granularity!r}")
    if cfg.act not in _ACTS:
        bad(f"--act must be one of {', '.join(_ACTS)}, got {cfg.act!r}")
    if isinstance(cfg.alpha, bool) or not isinstance(cfg.alpha, (int, float)) or not 0 < cfg.alpha < math.inf:
        bad(f"--alpha (the LeakyReLU slope, θ_n/θ_p of a signed QCFS) must be a number > 0, got {cfg.alpha!r}")
    if cfg.learn_negative and cfg.act != "signed":
        bad(f"--learn-negative learns the negative threshold of a signed QCFS; it needs --act signed, not {cfg.act}")
    if cfg.optimizer is not None and cfg.optimizer not in OPTIMIZERS:
        bad(f"--optimizer must be one of {', '.join(OPTIMIZERS)}, got {cfg.optimizer!r}")
    if cfg.epochs <= 0 and cfg.two_stage is None:
        bad(f"--epochs must be a positive integer, got {cfg.epochs}")
    if cfg.batch_size <= 0:
        bad(f"--batch-size must be a positive integer, got {cfg.batch_size}")
    if (cfg.lr is not None and not 0 < cfg.lr < math.inf) or (cfg.stage2_lr is not None
                                                             and not 0 < cfg.stage2_lr < math.inf):
        bad(f"--lr must be a finite number > 0, got {cfg.lr if cfg.lr is not None else cfg.stage2_lr}")
    if cfg.weight_decay is not None and not 0 <= cfg.weight_decay < math.inf:
        bad(f"--weight-decay must be a finite number >= 0, got {cfg.weight_decay}")
    if cfg.warmup is not None and not 0 <= cfg.warmup < math.inf:
        bad(f"--warmup must be a number of epochs >= 0, got {cfg.warmup}")
    if not 0 < cfg.init_threshold < math.inf:  # also refuses nan
        bad(f"--init-threshold must be a finite number > 0, got {cfg.init_threshold}")
    if cfg.two_stage is not None:
        if len(cfg.two_stage) != 2 or any((not isinstance(e, int)) or e <= 0 for e in cfg.two_stage):
            bad(f"--two-stage takes two positive epoch counts E1,E2, got {cfg.two_stage!r}")
        if cfg.act in _PLAIN_ACTS:
            bad(f"--two-stage trains QCFS thresholds; it does not apply to --act {cfg.act}")
    if cfg.device not in ("auto", "cpu", "cuda") and not cfg.device.startswith("cuda:"):
        bad(f"--device must be auto, cpu or cuda[:N], got {cfg.device!r}")


#: ``--granularity`` values: CNN (layer, channel, neuron) and transformer (head, neuron, head-neuron) thresholds.
GRANULARITY_CHOICES = ("layer", "channel", "neuron", "head", "head-neuron")


def _stages(cfg: TrainConfig, *, transformer: bool = False) -> list[tuple[str, int, float]]:
    """``[(granularity, epochs, lr)]`` (``cfg.lr`` resolved)."""
    if cfg.two_stage is None:
        return [(cfg.granularity, cfg.epochs, cfg.lr)]
    g2 = cfg.granularity if cfg.granularity != "layer" else ("head-neuron" if transformer else "channel")
    return [("layer", cfg.two_stage[0], cfg.lr), (g2, cfg.two_stage[1], cfg.stage2_lr or cfg.lr / 10)]


def _is_transformer(model: nn.Module) -> bool:
    from ann2snn.models.common import ZooTransformer

    return isinstance(model, ZooTransformer)


def family_defaults(cfg: TrainConfig, model: nn.Module) -> TrainConfig:
    """``cfg`` with ``optimizer``, ``lr``, ``weight_decay`` and ``warmup`` filled in where ``None``: from the
    optimizer when one is named (lr 2e-3 Adam or AdamW, 0.1 SGD; decay 0, 0.05, 5e-4), else from ``model``'s
    family (:data:`FAMILY_DEFAULTS`)."""
    from dataclasses import replace

    opt, lr, wd, warmup = FAMILY_DEFAULTS["transformer" if _is_transformer(model) else "cnn"]
    opt = cfg.optimizer or opt
    return replace(cfg, optimizer=opt, lr=cfg.lr if cfg.lr is not None else _LR_DEFAULTS[opt],
                   weight_decay=cfg.weight_decay if cfg.weight_decay is not None else _WD_DEFAULTS[opt],
                   warmup=cfg.warmup if cfg.warmup is not None else warmup)


class _Dist:
    """The torch.distributed context: a no-op single process unless launched by torchrun (WORLD_SIZE > 1)."""

    def __init__(self, device: str) -> None:
        import torch.distributed as dist

        self.dist = dist
        self.world = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        local = int(os.environ.get("LOCAL_RANK", "0"))
        use_cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
        if use_cuda and not torch.cuda.is_available():
            raise Ann2SnnError("--device cuda was asked for but no CUDA GPU is visible; use --device cpu")
        if use_cuda:
            self.device = torch.device(device if ":" in device else f"cuda:{local % torch.cuda.device_count()}")
            torch.cuda.set_device(self.device)
        else:
            self.device = torch.device("cpu")
        self.owned = False
        if self.world > 1 and not dist.is_initialized():
            dist.init_process_group(backend="nccl" if use_cuda else "gloo")
            self.owned = True

    @property
    def main(self) -> bool:
        return self.rank == 0

    def sum(self, *values: float) -> list[float]:
        t = torch.tensor(values, dtype=torch.float64, device=self.device)
        if self.world > 1:
            self.dist.all_reduce(t)
        return t.tolist()

    def sync_buffers(self, model: nn.Module) -> None:
        """Rank 0's BatchNorm statistics everywhere (each rank updated its own from its shard)."""
        if self.world > 1:
            for b in model.buffers():
                self.dist.broadcast(b, 0)

    def barrier(self) -> None:
        if self.world > 1:
            self.dist.barrier()

    def close(self) -> None:
        if self.owned:
            self.dist.destroy_process_group()


def _build_model(cfg: TrainConfig, data, *, granularity: str) -> tuple[nn.Module, dict[str, Any] | None]:
    """The model to train and, when resuming, the saved training state."""
    import inspect

    from ann2snn import models
    from ann2snn.checkpoint import load_qann
    from ann2snn.layers import qcfs_modules

    if cfg.resume:
        model = load_qann(cfg.resume)
        state = (getattr(model, "checkpoint_meta", {}) or {}).get("train_state")
        if state is None:
            raise Ann2SnnError(f"{cfg.resume!r} has no training state to resume from; resume from the "
                               "'.last.pt' checkpoint ann2snn train writes")
        return model, state
    if cfg.from_ann:
        from ann2snn.prepare import prepare

        model = load_qann(cfg.from_ann)
        if cfg.arch is not None and getattr(model, "arch_name", None) not in (None, cfg.arch):
            raise Ann2SnnError(f"--from-ann {cfg.from_ann!r} is a {model.arch_name!r}, not --arch {cfg.arch!r}")
        if cfg.act not in _PLAIN_ACTS and not qcfs_modules(model):  # ReLU -> QCFS, LeakyReLU -> SignedQCFS
            model = prepare(model, data.x_train[:cfg.calibration_samples], levels=cfg.levels,
                            granularity=granularity if granularity != "neuron" else "channel",
                            positive="softplus" if cfg.softplus else "none", percentile=cfg.percentile,
                            learn_negative=cfg.learn_negative)
        return model, None
    builder = models.available().get(cfg.arch)
    kw = dict(cfg.arch_kwargs)
    if builder is not None:
        params = inspect.signature(builder).parameters
        if "num_classes" in params:
            kw.setdefault("num_classes", data.num_classes)
        if "in_channels" in params:
            kw.setdefault("in_channels", data.input_shape[0])
        if "image_size" in params:  # the transformers size their token grid and position embedding by it
            kw.setdefault("image_size", data.input_shape[-1])
    if cfg.act != "qcfs":
        kw["act"] = cfg.act
    if cfg.act in ("signed", "leaky"):
        kw["alpha"] = cfg.alpha
    if cfg.act not in _PLAIN_ACTS:
        kw.update(levels=cfg.levels, granularity=granularity, positive="softplus" if cfg.softplus else "none",
                  init_threshold=cfg.init_threshold)
        if cfg.learn_negative:
            kw["learn_negative"] = True
    return models.create(cfg.arch, **kw), None


def _check_input(model: nn.Module, data, spec: str) -> None:
    shape = tuple(getattr(model, "input_shape", ()) or ())
    if shape == data.input_shape:
        return
    try:
        with torch.no_grad():
            model.eval()(data.x_test[:2].to(next(model.parameters()).device))
    except Exception as exc:
        name = getattr(model, "arch_name", type(model).__name__)
        raise Ann2SnnError(f"architecture {name!r} takes inputs {shape} but dataset {spec!r} has {data.input_shape} "
                           f"({type(exc).__name__}); pick an architecture for this dataset (see `ann2snn models`)"
                           ) from None
    model.input_shape = data.input_shape  # e.g. a ResNet (global pooling) on 28×28 images


def _make_optimizer(cfg: TrainConfig, model: nn.Module, lr: float, steps: int, steps_per_epoch: int):
    """The stage's optimizer and schedule (``cfg`` resolved by :func:`family_defaults`); AdamW decays only weight
    matrices (:func:`decay_groups`), warmup is ``cfg.warmup`` epochs capped at a tenth of the stage."""
    params = decay_groups(model, cfg.weight_decay) if cfg.optimizer == "adamw" else model.parameters()
    warmup = min(int(round(cfg.warmup * steps_per_epoch)), steps // 10)
    return make_optimizer(params, cfg.optimizer, lr=lr, weight_decay=cfg.weight_decay, steps=steps,
                          warmup_steps=warmup)


def _paths(cfg: TrainConfig, arch: str) -> tuple[Path, Path]:
    if cfg.output:
        best = Path(cfg.output)
    elif cfg.resume:
        best = Path(str(cfg.resume).removesuffix(".last.pt") + ".pt")
    else:
        best = Path(f"{arch}-{cfg.data.partition(':')[0]}.pt")
    return best, best.with_name(best.name.removesuffix(".pt") + ".last.pt")


def _stage1_path(best: Path) -> Path:
    return best.with_name(best.name.removesuffix(".pt") + ".stage1.pt")


def _check_outputs(cfg: TrainConfig, arch: str, best: Path, last: Path) -> None:
    """Before any epoch: every file this run writes can be written, and none exists unless ``force`` — except,
    when resuming, the files of the run being resumed (its ``.last.pt`` and the best/stage-1 files beside it)."""
    from dataclasses import replace

    from ann2snn.files import check_writable

    paths = [best, last] + ([_stage1_path(best)] if cfg.two_stage else [])
    own: set[Path] = set()
    if cfg.resume:
        b, la = _paths(replace(cfg, output=None), arch)
        own = {p.resolve() for p in (b, la, _stage1_path(b))}
    for p in paths:
        check_writable(p, force=True)
        if p.exists() and not cfg.force and p.resolve() not in own:
            raise Ann2SnnError(f"{p} already exists; pass --force to overwrite it or -o to write elsewhere")


def _record_preprocessing(model: nn.Module, data, cfg: TrainConfig) -> None:
    """The model's files record the preprocessing of the data it is trained on; a model that records another one
    (``--from-ann`` / ``--resume``) is not fine-tuned on differently preprocessed images."""
    recorded, now = getattr(model, "preprocessing", None), data.preprocessing
    if recorded is not None and (recorded.mean, recorded.std) != (now.mean, now.std):
        raise Ann2SnnError(f"{cfg.from_ann or cfg.resume!r} was trained on inputs made as '{recorded.describe()}' but "
                           f"--data {cfg.data} gives '{now.describe()}'; train on the data it was trained on")
    model.preprocessing = now


def _shard(n: int, perm: torch.Tensor, rank: int, world: int) -> torch.Tensor:
    """This rank's share of ``perm``, padded by wrapping so every rank runs the same number of steps."""
    per = -(-n // world)
    if per * world > n:
        perm = torch.cat([perm, perm[: per * world - n]])
    return perm[rank::world]


@torch.no_grad()
def _evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, dist: _Dist, batch_size: int) -> float:
    model.eval()
    idx = torch.arange(len(y))[dist.rank::dist.world]
    correct = 0
    for i in range(0, len(idx), batch_size):
        j = idx[i:i + batch_size]
        correct += int((model(x[j]).argmax(1) == y[j]).sum())
    c, n = dist.sum(correct, len(idx))
    return c / max(1, n)


def train(cfg: TrainConfig, *, progress: Callable[..., None] | None = None) -> TrainResult:
    """Train a QANN (or, with ``act="relu"``, a plain ANN) as :class:`TrainConfig` says; see ``ann2snn train``.

    ``progress(event, **info)`` is called with ``"stage"`` (stage, granularity, epochs, model), ``"batch"``
    (epoch, step, steps, loss) and ``"epoch"`` (epoch, stage, loss, train_accuracy, test_accuracy, seconds, best)
    events, on rank 0 only. Under ``torchrun`` every process runs this; only rank 0 writes files.

    Examples:
        >>> res = train(TrainConfig(arch="mnist-cnn", data="mnist", epochs=2, levels=4, output="mnist.pt"))
        >>> res.metrics["test_accuracy"]
    """
    import time

    import ann2snn
    from ann2snn.data import augment as augment_batch
    from ann2snn.data import load_dataset
    from ann2snn.layers import qcfs_modules, to_channelwise
    from ann2snn.runs import write_record

    _check_config(cfg)
    dist = _Dist(cfg.device)
    say = progress if (progress is not None and dist.main) else (lambda *a, **k: None)
    try:
        data = load_dataset(cfg.data)
        torch.manual_seed(cfg.seed)
        model, state = _build_model(cfg, data, granularity="layer" if cfg.two_stage else cfg.granularity)
        cfg = family_defaults(cfg, model)
        stages = _stages(cfg, transformer=_is_transformer(model))
        model.to(dist.device)
        _check_input(model, data, cfg.data)
        arch = getattr(model, "arch_name", None) or cfg.arch or "model"
        best_path, last_path = _paths(cfg, arch)
        if dist.main:
            _check_outputs(cfg, arch, best_path, last_path)
        _record_preprocessing(model, data, cfg)
        dist.barrier()
        xtr, ytr = data.x_train.to(dist.device), data.y_train.to(dist.device)
        xte, yte = data.x_test.to(dist.device), data.y_test.to(dist.device)
        use_aug = (data.augment is not None) if cfg.augment is None else cfg.augment
        done = int(state["epoch"]) if state else 0
        best = float(state["best"]) if state else -1.0
        history = list(state["history"]) if state else []
        stage_ends = [sum(e for _, e, _ in stages[:i + 1]) for i in range(len(stages))]
        per_rank = -(-len(ytr) // dist.world)  # ceil division
        steps_per_epoch = -(-per_rank // cfg.batch_size)
        written = bool(state)
        t_start = time.perf_counter()
        test_acc = float(state["test_accuracy"]) if state else float("nan")
        for s, (gran, epochs, lr) in enumerate(stages):
            start = stage_ends[s] - epochs
            if done >= stage_ends[s]:
                continue
            transformer = _is_transformer(model) and cfg.act not in _PLAIN_ACTS
            # head-wise on attention, neuron-wise elsewhere for a transformer; the CNN zoo's thresholds lie on dim 1
            plan = model.threshold_plan(gran) if transformer and gran != "layer" else gran
            qs = dict(qcfs_modules(model))
            layerwise = any(q.granularity == "layer" for n, q in qs.items() if isinstance(plan, str) or n in plan)
            if cfg.act not in _PLAIN_ACTS and gran != "layer" and layerwise:
                if dist.main and s > 0:  # keep the layer-wise stage-1 result
                    ann2snn.save(model, _stage1_path(best_path),  # _check_outputs allowed it before training
                                 meta={"dataset": cfg.data, "stage": s, "test_accuracy": test_acc}, force=True)
                to_channelwise(model, xte[:2], granularity=plan, dim=None if transformer else 1)
                model.arch_kwargs = {**getattr(model, "arch_kwargs", {}), "granularity": gran}
                best = -1.0  # the best model of a two-stage run is a stage-2 model
            shown = gran if transformer else (next(iter(qs.values())).granularity if qs else "no (ReLU)")
            say("stage", stage=s, granularity=shown, epochs=epochs, model=model)
            net = model
            if dist.world > 1:
                net = nn.parallel.DistributedDataParallel(
                    model, device_ids=[dist.device.index] if dist.device.type == "cuda" else None)
            opt, sched = _make_optimizer(cfg, model, lr, epochs * steps_per_epoch, steps_per_epoch)
            if state and state.get("stage") == s and done > start:
                opt.load_state_dict(state["optimizer"])
                sched.load_state_dict(state["scheduler"])
            for epoch in range(max(done, start), stage_ends[s]):
                t0 = time.perf_counter()
                torch.manual_seed(cfg.seed * 1_000_003 + epoch)  # dropout etc., identical on resume
                g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
                g_aug = torch.Generator(dist.device).manual_seed(cfg.seed * 7_919 + epoch * 31 + dist.rank)
                idx = _shard(len(ytr), torch.randperm(len(ytr), generator=g), dist.rank, dist.world).to(dist.device)
                augment = ((lambda xb: augment_batch(xb, generator=g_aug, mean=data.mean, std=data.std))
                           if use_aug else None)
                loss_sum, correct, n = train_epoch(
                    net, xtr, ytr, idx, cfg.batch_size, opt, sched, transform=augment,
                    on_batch=lambda step, loss: say("batch", epoch=epoch, step=step + 1, steps=steps_per_epoch,
                                                    loss=loss))
                loss_sum, correct, n = dist.sum(loss_sum, correct, n)
                dist.sync_buffers(model)
                test_acc = _evaluate(model, xte, yte, dist, 1024)
                entry = {"epoch": epoch + 1, "stage": s + 1, "loss": loss_sum / n, "train_accuracy": correct / n,
                         "test_accuracy": test_acc, "lr": sched.get_last_lr()[0],
                         "seconds": time.perf_counter() - t0}
                history.append(entry)
                improved = test_acc > best
                best = max(best, test_acc)
                if dist.main:
                    meta = {"dataset": cfg.data, "epoch": epoch + 1, "stage": s + 1, "test_accuracy": test_acc,
                            "train_config": _config_dict(cfg)}
                    tstate = {"epoch": epoch + 1, "stage": s, "best": best, "test_accuracy": test_acc,
                              "history": history, "optimizer": opt.state_dict(), "scheduler": sched.state_dict()}
                    ann2snn.save(model, last_path, meta={**meta, "train_state": tstate}, force=cfg.force or written)
                    if improved:
                        ann2snn.save(model, best_path, meta=meta, force=cfg.force or written)
                    written = True
                say("epoch", **entry, best=best)
                dist.barrier()
            done = stage_ends[s]
            state = None
        model.eval()
        metrics = {"test_accuracy": test_acc, "best_test_accuracy": best, "epochs": done, "history": history,
                   "seconds": time.perf_counter() - t_start, "world_size": dist.world, "device": str(dist.device),
                   "test_samples": len(yte), "train_samples": len(ytr)}
        record = None
        if dist.main and cfg.record:
            inputs = [p for p in (cfg.from_ann, cfg.resume) if p]
            record = write_record("train", config={**_config_dict(cfg), "arch": arch}, metrics=metrics,
                                  inputs=inputs, outputs=[best_path, last_path], directory=cfg.runs_dir)
        dist.barrier()
        return TrainResult(model, best_path if dist.main else None, last_path if dist.main else None, record, metrics)
    finally:
        dist.close()


def _config_dict(cfg: TrainConfig) -> dict[str, Any]:
    from dataclasses import asdict

    d = asdict(cfg)
    d["two_stage"] = list(cfg.two_stage) if cfg.two_stage else None
    return d
