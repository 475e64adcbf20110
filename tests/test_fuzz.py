"""A seeded graph fuzzer: random tiny QANNs through ``convert`` (rate and exact), both ONNX exports and their
verification on onnxruntime.

Each case is a random program (inputs 1-2 × 6 × 6, export T ≤ 8) over conv (strides, padding, groups) / linear /
BatchNorm (folded or kept) / QCFS (layer, channel or neuron thresholds, Softplus or not, θ from 1e-3 to 1e3, signed
now and then, random L and φ, mixed L in some nets) / average and max pooling (modules with ceil_mode, padding,
divisor_override; functions; adaptive) / residual ``+`` / ``cat`` / ReLU after a quantizer or a sum (dropped, or
refused where the value may be negative) / dropout and identities / layout ops (transpose, permute, slicing, roll,
narrow) / ``x * c``, ``x / c``, ``x + P`` / a conv module called twice / the flatten spellings (``nn.Flatten``,
``x.view(x.size(0), -1)``, ``B, C, H, W = x.shape``, ...) / ``x.mean((2, 3))``. It must end in one of two ways:

- **verified**: the rate and the exact SNN export in both ONNX forms and verify on onnxruntime (only
  tie-sensitive samples may differ); the exact SNN's logits equal the QANN's once settled, for every sample not on a
  quantization tie (a sample whose QANN logits move when every pre-activation moves by ``TIE`` of a level); when
  they do not, the failure says whether the folded QANN (threshold folding alone) already differs;
- **refused**: an :class:`~ann2snn.errors.Ann2SnnError` stating the problem.

Anything else is a failure: a raw exception, an internal error wrapped as ``pass X failed after [...]``, a
``VerificationError`` (the exporter disagrees with the simulator), an exported graph onnxruntime cannot load, or a
verified SNN that computes something else. Failures are reported with the seed and the program of the case; rerun
one alone with ``ANN2SNN_FUZZ_SEED=<seed> ANN2SNN_FUZZ_CASES=1 pytest -s tests/test_fuzz.py -k random``.
``ANN2SNN_FUZZ_CASES=N`` runs more (default 250, ~0.3 s of CPU each). The bugs it found outside this file (a mean
over the channels, a ceil_mode max-pool whose last window starts in the padding, a signed layer of few levels under
the exact schedule) are fixed; each keeps a test of its construct alone at the end. The outcome counts print as one
summary line (``pytest -s``).
"""

from __future__ import annotations

import collections
import os
import random
import re
import time
from dataclasses import dataclass, field

import pytest
import torch
from torch import nn
from torch.nn import functional as F

import ann2snn
from ann2snn.errors import Ann2SnnError, ConversionError, VerificationError
from ann2snn.evaluate import exact_logits_mask
from ann2snn.layers import QCFS, SignedQCFS, inverse_softplus, qcfs_modules
from ann2snn.passes import DEFAULT_PASSES, run_pipeline

CASES = int(os.environ.get("ANN2SNN_FUZZ_CASES", "250"))
FIRST_SEED = int(os.environ.get("ANN2SNN_FUZZ_SEED", "0"))
SAMPLES = 16
#: a sample is on a quantization tie when its QANN logits change once every pre-activation moves by this fraction
#: of a level (plus the same fraction of its own size): float32 sums in another order stay far inside it
TIE = 1e-4
FLATTENS = ("module", "torch", "method", "size", "unpack", "shape", "sizes")
RELUS = ("module", "F", "torch", "method")
POOLS = ("avg", "max", "F.avg", "F.max", "adaptive", "F.adaptive")


@dataclass(frozen=True)
class Op:
    """One instruction: ``kind`` applied to the values ``src`` (indices; 0 is the input), ``arg`` its variant."""

    kind: str
    src: tuple[int, ...]
    arg: object = None


class FuzzNet(nn.Module):
    """A QANN running a program of :class:`Op`; its forward traces to one fx node per op (or a few, for the
    shape-reading flatten spellings)."""

    def __init__(self, program: list[Op], modules: dict[int, nn.Module], input_shape: tuple[int, ...],
                 constants: dict[int, torch.Tensor] | None = None) -> None:
        super().__init__()
        self.program = program
        self.layers = nn.ModuleDict({str(i): m for i, m in modules.items()})
        self.consts = nn.ParameterDict({str(i): nn.Parameter(c) for i, c in (constants or {}).items()})
        self.input_shape = input_shape

    def forward(self, x):
        values = [x]
        for i, op in enumerate(self.program):
            values.append(self._run(i, op, [values[j] for j in op.src]))
        return values[-1]

    def _run(self, i: int, op: Op, a: list):
        if str(i) in self.layers:
            return self.layers[str(i)](a[0])
        x = a[0]
        if op.kind == "relu":
            return {"F": F.relu, "torch": torch.relu, "method": lambda v: v.relu()}[op.arg](x)
        if op.kind == "pool":
            kind, size = op.arg
            return {"F.avg": F.avg_pool2d, "F.max": F.max_pool2d, "F.adaptive": F.adaptive_avg_pool2d}[kind](x, size)
        if op.kind == "identity":
            return x.contiguous()
        if op.kind == "shared":  # the module of an earlier op, called again
            return self.layers[str(op.arg)](x)
        if op.kind == "layout":
            y = {"transpose": lambda v: v.transpose(2, 3), "permute": lambda v: v.permute(0, 1, 3, 2),
                 "slice": lambda v: v[:, :, 1:, :], "roll": lambda v: torch.roll(v, 1, 3),
                 "narrow": lambda v: v.narrow(3, 0, v.size(3) - 1)}[op.arg](x)
            return y.contiguous()  # for the x.view(...) flattens
        if op.kind == "constant":
            if op.arg == "x * c":
                return x * 0.5
            if op.arg == "x / c":
                return x / 4
            return x + self.consts[str(i)]
        if op.kind == "add":
            return x + a[1]
        if op.kind == "cat":
            return torch.cat([x, a[1]], 1)
        if op.kind == "mean":
            if op.arg == "channels":
                return x.mean(1).flatten(1)
            return x.mean((2, 3)) if op.arg == "method" else torch.mean(x, dim=(2, 3))
        if op.kind == "flatten":
            return _flatten(x, op.arg)
        raise AssertionError(f"no forward for {op}")


def _flatten(x, how: str):
    if how == "torch":
        return torch.flatten(x, 1)
    if how == "method":
        return x.flatten(1)
    if how == "size":
        return x.view(x.size(0), -1)
    if how == "unpack":
        B, C, H, W = x.shape
        return x.view(B, -1)
    if how == "shape":
        return x.reshape(x.shape[0], -1)
    return x.reshape(-1, x.size(1) * x.size(2) * x.size(3))  # "sizes"


@dataclass
class Case:
    """A generated QANN, the T of each export, and a description for failure reports."""

    seed: int
    model: FuzzNet
    T: dict[str, int]
    text: str
    quantizers: int = 0


@dataclass
class _Builder:
    rng: random.Random
    program: list[Op] = field(default_factory=list)
    modules: dict[int, nn.Module] = field(default_factory=dict)
    constants: dict[int, torch.Tensor] = field(default_factory=dict)
    shapes: list[tuple[int, ...]] = field(default_factory=list)
    levels: int = 4
    mix_levels: bool = False
    quantizers: int = 0

    def emit(self, kind: str, src: tuple[int, ...], shape: tuple[int, ...], module: nn.Module | None = None,
             arg=None) -> int:
        if module is not None:
            self.modules[len(self.program)] = module
        self.program.append(Op(kind, src, arg))
        self.shapes.append(shape)
        return len(self.shapes) - 1

    # --- layers ---
    def conv(self, v: int, cout: int | None = None, *, same: bool = False) -> int:
        r = self.rng
        c, h, w = self.shapes[v]
        cout = cout or r.randint(1, 4)
        k = (1 if r.random() < 0.3 else 3) if same else r.choice([1, 3]) if min(h, w) >= 3 else 1
        stride = 1 if same or min(h, w) < 3 or r.random() < 0.7 else 2
        pad = k // 2 if same or r.random() < 0.8 else 0
        groups = next((g for g in (2, 3) if c % g == 0 and cout % g == 0), 1) if r.random() < 0.2 else 1
        m = nn.Conv2d(c, cout, k, stride=stride, padding=pad, groups=groups, bias=r.random() < 0.8)
        out = (cout, (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1)
        return self.emit("conv", (v,), out, m, f"{c}->{cout} k{k} s{stride} p{pad} g{groups}")

    def linear(self, v: int, out: int) -> int:
        return self.emit("linear", (v,), (out,), nn.Linear(self.shapes[v][0], out, bias=self.rng.random() < 0.9))

    def bn(self, v: int) -> int:
        shape = self.shapes[v]
        m = nn.BatchNorm2d(shape[0]) if len(shape) == 3 else nn.BatchNorm1d(shape[0])
        g = torch.Generator().manual_seed(self.rng.randrange(2**31))
        with torch.no_grad():
            m.running_mean.uniform_(-0.3, 0.3, generator=g)
            m.running_var.uniform_(0.3, 2.0, generator=g)
            m.weight.uniform_(0.5, 1.5, generator=g)
            m.bias.uniform_(-0.2, 0.4, generator=g)
        return self.emit("bn", (v,), shape, m.eval())

    def quantizer(self, v: int, *, signed: bool = False) -> int:
        r = self.rng
        shape = self.shapes[v]
        levels = self.levels if not self.mix_levels or r.random() < 0.6 else r.choice([1, 2, 3, 5, 8])
        spatial = len(shape) == 3
        granularity = r.choice(["layer", "channel", "neuron"] if spatial else ["layer", "neuron"])
        n = {"layer": 1, "channel": shape[0], "neuron": shape[-1]}[granularity]
        positive = r.choice(["softplus", "none"])
        kw = dict(shift=r.choice([0.5, 0.5, 0.5, 0.0, 0.25]), granularity=granularity,
                  num_channels=None if granularity == "layer" else n, positive=positive)
        q = SignedQCFS(levels, alpha=r.choice([0.25, 0.5, 1.0]), **kw) if signed else QCFS(levels, **kw)
        theta = torch.tensor([_threshold(r) for _ in range(n)])
        with torch.no_grad():
            q.lam.copy_(inverse_softplus(theta) if positive == "softplus" else theta)
        self.quantizers += 1
        return self.emit("q", (v,), shape, q, f"{'signed ' if signed else ''}L{levels} {granularity} {positive} "
                         f"θ∈[{float(theta.min()):.3g}, {float(theta.max()):.3g}]")

    def relu(self, v: int) -> int:
        how = self.rng.choice(RELUS)
        return self.emit("relu", (v,), self.shapes[v], nn.ReLU() if how == "module" else None, how)

    # --- blocks ---
    def activation(self, v: int) -> int:
        """A quantizer (sometimes signed, sometimes followed by a ReLU); rarely a bare ReLU (refused)."""
        r = self.rng.random()
        if r < 0.03:
            return self.relu(v)  # a ReLU that is not a QCFS: refused
        signed = self.rng.random() < 0.1
        v = self.quantizer(v, signed=signed)
        return self.relu(v) if self.rng.random() < 0.15 else v

    def conv_block(self, v: int, cout: int | None = None, *, same: bool = False) -> int:
        v = self.conv(v, cout, same=same)
        if self.rng.random() < 0.3:
            v = self.bn(v)
        return self.activation(v) if self.rng.random() < 0.9 else v

    def pool(self, v: int) -> int:
        r = self.rng
        c, h, w = self.shapes[v]
        kind = r.choice(POOLS)
        module = None
        if kind in ("avg", "max", "adaptive"):
            k = r.choice([k for k in (2, 3) if k <= min(h, w)])
            s, p, ceil = r.choice([k, 1, 2]), r.randint(0, k // 2), r.random() < 0.3
            module = {"avg": lambda: nn.AvgPool2d(k, s, p, ceil_mode=ceil, count_include_pad=r.random() < 0.5,
                                                  divisor_override=r.choice([None, None, None, k * k + 1])),
                      "max": lambda: nn.MaxPool2d(k, s, p, ceil_mode=ceil),
                      "adaptive": lambda: nn.AdaptiveAvgPool2d(r.randint(1, min(h, w)))}[kind]()
            arg = (kind, repr(module))
        else:
            size = r.randint(1, min(h, w)) if kind == "F.adaptive" else 2
            arg = (kind, size)
        out = module(torch.zeros(1, c, h, w)) if module is not None else self._functional_pool(kind, arg[1], c, h, w)
        return self.emit("pool", (v,), tuple(out.shape[1:]), module, arg)

    @staticmethod
    def _functional_pool(kind: str, size: int, c: int, h: int, w: int):
        return {"F.avg": F.avg_pool2d, "F.max": F.max_pool2d, "F.adaptive": F.adaptive_avg_pool2d}[kind](
            torch.zeros(1, c, h, w), size)

    def block(self, v: int) -> int:
        r = self.rng.random()
        h = min(self.shapes[v][1:])
        if r < 0.3:
            return self.conv_block(v)
        if r < 0.45 and h >= 2:
            return self.pool(v)
        if r < 0.6:  # residual: v + block(v), or the sum of two branches
            a = self.conv_block(v, self.shapes[v][0], same=True)
            b = v if self.rng.random() < 0.6 else self.conv_block(v, self.shapes[v][0], same=True)
            s = self.emit("add", (a, b), self.shapes[a])
            u = self.rng.random()
            return self.bn(s) if u < 0.15 else self.relu(s) if u < 0.25 else s  # ReLU: dropped if both are ≥ 0
        if r < 0.75:
            a = self.conv_block(v, same=True)
            b = v if self.rng.random() < 0.4 else self.conv_block(v, same=True)
            c = self.shapes[a][0] + self.shapes[b][0]
            return self.emit("cat", (a, b), (c, *self.shapes[a][1:]))
        if r < 0.9:
            return self.misc(v)
        if r < 0.95:
            return self.bn(v)
        module = self.rng.choice([nn.Dropout(0.5), nn.Dropout2d(0.3), nn.Identity(), None])  # identities in eval
        name = type(module).__name__ if module is not None else "contiguous"
        return self.emit("identity", (v,), self.shapes[v], module, name)

    def misc(self, v: int) -> int:
        """A layout op, a constant (x * c, x / c, x + P), or a conv module called a second time."""
        r = self.rng
        c, h, w = self.shapes[v]
        u = r.random()
        if u < 0.4:
            how = r.choice(["transpose", "permute", "slice", "roll", "narrow"] if h >= 2 and w >= 2 else ["roll"])
            shape = {"transpose": (c, w, h), "permute": (c, w, h), "slice": (c, h - 1, w), "roll": (c, h, w),
                     "narrow": (c, h, w - 1)}[how]
            return self.emit("layout", (v,), shape, None, how)
        if u < 0.7:
            how = r.choice(["x * c", "x / c", "x + P"])
            if how == "x + P":
                g = torch.Generator().manual_seed(r.randrange(2**31))
                self.constants[len(self.program)] = torch.rand(1, c, h, w, generator=g) * 0.4 - 0.1
            return self.emit("constant", (v,), (c, h, w), None, how)
        a = self.conv_block(v, c, same=True)  # then the same conv again on its own output
        first = next(i for i in range(len(self.program) - 1, -1, -1) if self.program[i].kind == "conv")
        return self.emit("shared", (a,), self.shapes[a], None, first)

    def head(self, v: int) -> int:
        c, h, w = self.shapes[v]
        u = self.rng.random()
        if u < 0.15:
            v = self.emit("mean", (v,), (c,), None, self.rng.choice(["method", "torch"]))
        elif u < 0.25:
            v = self.emit("mean", (v,), (h * w,), None, "channels")
        else:
            how = self.rng.choice(FLATTENS)
            v = self.emit("flatten", (v,), (c * h * w,), nn.Flatten() if how == "module" else None, how)
        for _ in range(self.rng.choice([0, 0, 1, 2])):
            v = self.linear(v, self.rng.randint(2, 8))
            if self.rng.random() < 0.2:
                v = self.bn(v)
            v = self.activation(v)
        return self.linear(v, 3)


def _last_window_in_padding(size: int, k: int, s: int, p: int) -> bool:
    """Under ceil_mode, ONNX keeps a last window that starts in the padding and PyTorch drops it."""
    return -(-(size + 2 * p - k) // s) * s >= size + p


def _threshold(r: random.Random) -> float:
    u = r.random()
    if u < 0.08:
        return 10 ** r.uniform(-3, -2)  # tiny: everything saturates
    if u < 0.16:
        return 10 ** r.uniform(2, 3)  # large: nothing fires
    return r.uniform(0.2, 2.0)


def make_case(seed: int) -> Case:
    """The QANN of case ``seed`` (weights seeded too), with its export T per convention."""
    r = random.Random(seed)
    torch.manual_seed(seed)
    b = _Builder(r, shapes=[(r.choice([1, 1, 2]), 6, 6)], levels=r.choice([1, 2, 3, 4, 4, 8]),
                 mix_levels=r.random() < 0.4)
    v = 0
    for _ in range(r.randint(1, 3)):
        v = b.block(v)
    if b.quantizers == 0 and r.random() < 0.9:
        v = b.quantizer(b.conv(v))
    b.head(v)
    model = FuzzNet(b.program, b.modules, b.shapes[0], b.constants).eval()
    lines = [f"{i + 1}: {op.kind}{op.src} {op.arg or ''} {type(b.modules[i]).__name__ if i in b.modules else ''} "
             f"-> {b.shapes[i + 1]}".rstrip() for i, op in enumerate(b.program)]
    text = f"input {b.shapes[0]}; " + "; ".join(lines)
    return Case(seed, model, {"rate": r.randint(1, 8), "exact": r.randint(1, 8)}, text, b.quantizers)


# --- checks -------------------------------------------------------------------------------------------------------


class WrongResult(AssertionError):
    """A conversion that went through but computes something else."""


@torch.no_grad()
def tie_sensitive(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """``[B]``: samples whose QANN logits change when every quantizer input moves by ``±TIE`` of a level (and of
    its own size): on such a sample float rounding may pick the other level, in the QANN or in the SNN."""
    ref = model(x)
    out = torch.zeros(x.shape[0], dtype=torch.bool)
    for sign in (1.0, -1.0):
        def nudge(q, inputs, sign=sign):
            z = inputs[0]
            step = q.broadcast_threshold(z.dim()) / q.levels
            return (z + sign * TIE * (z.abs() + step),)

        hooks = [q.register_forward_pre_hook(nudge) for _, q in qcfs_modules(model)]
        try:
            out |= ~exact_logits_mask(model(x)[None], ref)[0]
        finally:
            for h in hooks:
                h.remove()
    return out


def _check_equal(name: str, got: torch.Tensor, want: torch.Tensor, tie: torch.Tensor, stats: collections.Counter):
    bad = ~exact_logits_mask(got[None], want)[0]
    stats["samples_compared"] += int((~tie).sum())
    stats["tie_samples"] += int(tie.sum())
    if (bad & ~tie).any():
        i = int((bad & ~tie).nonzero()[0])
        raise WrongResult(f"{name}: {int((bad & ~tie).sum())}/{len(bad)} samples off the QANN (not ties), e.g. "
                          f"sample {i}: {got[i].tolist()} vs QANN {want[i].tolist()}")


@torch.no_grad()
def check_case(case: Case, tmp_path, stats: collections.Counter) -> None:
    """Run one case; raises what the case raises (a refusal or a failure)."""
    model = case.model
    x = torch.rand(SAMPLES, *model.input_shape, generator=torch.Generator().manual_seed(case.seed))
    want = model(x)
    tie = tie_sensitive(model, x)
    for convention in ("rate", "exact"):
        snn = ann2snn.convert(model, T=case.T[convention], convention=convention)
        res = ann2snn.export(snn, tmp_path / f"{convention}.onnx", format="both", force=True)
        if set(res.verification) != {"unrolled", "stateful"}:
            raise WrongResult(f"the {convention} export verified {sorted(res.verification)}, not both graphs")
        for rep in res.verification.values():  # onnxruntime against the simulator: only ties may differ
            if rep["mismatched_samples"] > rep["tie_sensitive_samples"]:
                raise WrongResult(f"the {convention} export reports {rep['mismatched_samples']} mismatched samples, "
                                  f"{rep['tie_sensitive_samples']} of them on a tie")
            stats["onnx_tie_samples"] += rep["tie_sensitive_samples"]
        if convention == "exact":  # settled after every layer had its 2L steps, whatever the export's T
            T = snn.info.schedule_length * (2 * case.quantizers + 2)
            try:
                _check_equal(f"the exact SNN at T={T}", snn.simulate(x, T)[-1], want, tie, stats)
            except WrongResult:  # say whether threshold folding already changed the function
                folded, _ = run_pipeline(model, example_input=x, passes=DEFAULT_PASSES[:3])
                _check_equal("the folded QANN", folded(x), want, tie, collections.Counter())
                raise


def classify(exc: BaseException) -> tuple[str, str]:
    """``("refused" | "failed", reason)``: a deliberate refusal, or an error that is a bug."""
    if isinstance(exc, WrongResult):
        return "failed", "wrong result"
    if isinstance(exc, VerificationError):
        return "failed", "verification error"
    if isinstance(exc, ConversionError) and re.match(r"pass \w+ failed after", str(exc)):
        return "failed", "internal error in a pass"
    if isinstance(exc, Ann2SnnError) and "onnxruntime cannot load" in str(exc):
        return "failed", "onnxruntime cannot load the exported graph"
    if isinstance(exc, Ann2SnnError):
        msg = getattr(exc, "reason", None) or str(exc)
        reason = re.split(r"[;:(]", msg)[0].strip()
        return "refused", re.sub(r"\d+(\.\d+)?", "#", reason)[:70]
    return "failed", f"raw {type(exc).__name__}"


def run_fuzz(seeds, tmp_path) -> tuple[collections.Counter, list[str], collections.Counter]:
    outcomes: collections.Counter = collections.Counter()
    stats: collections.Counter = collections.Counter()
    failures: list[str] = []
    for seed in seeds:
        case = make_case(seed)
        try:
            check_case(case, tmp_path, stats)
            outcomes["verified", ""] += 1
        except Exception as exc:  # noqa: BLE001 — the point: every exception is classified
            kind, reason = classify(exc)
            outcomes[kind, reason] += 1
            if kind == "failed":
                first = str(exc).strip().splitlines()[0][:400] if str(exc).strip() else ""
                failures.append(f"seed {seed} [{reason}] {type(exc).__name__}: {first}\n    {case.text}")
    return outcomes, failures, stats


def summary(outcomes: collections.Counter, stats: collections.Counter, seconds: float, cpu: float | None = None) -> str:
    total = sum(outcomes.values())
    verified = outcomes["verified", ""]
    refused = collections.Counter({r: n for (k, r), n in outcomes.items() if k == "refused"})
    failed = collections.Counter({r: n for (k, r), n in outcomes.items() if k == "failed"})
    cpu_text = f" ({cpu:.1f} s CPU)" if cpu is not None else ""
    parts = [f"fuzz: {total} cases in {seconds:.1f} s{cpu_text}: {verified} converted+exported+verified",
             f"{sum(refused.values())} refused ({'; '.join(f'{n}× {r}' for r, n in refused.most_common())})",
             f"{sum(failed.values())} failed ({'; '.join(f'{n}× {r}' for r, n in failed.most_common())})",
             f"exactness: {stats['samples_compared']} sample checks strict, {stats['tie_samples']} on a tie",
             f"onnxruntime vs simulator: {stats['onnx_tie_samples']} tie-sensitive samples excused"]
    return " | ".join(parts)


@pytest.fixture
def one_thread():
    """Tiny graphs: one thread is fastest, and oneDNN's 2-thread barriers cost ~25 ms per tiny conv on a busy
    machine (measured: 0.2 ms with one thread)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def test_random_qanns_convert_export_and_verify_or_are_refused(tmp_path, one_thread):
    t0, c0 = time.perf_counter(), time.process_time()
    outcomes, failures, stats = run_fuzz(range(FIRST_SEED, FIRST_SEED + CASES), tmp_path)
    print("\n" + summary(outcomes, stats, time.perf_counter() - t0, time.process_time() - c0))
    assert not failures, f"{len(failures)} fuzz failures:\n" + "\n".join(failures[:10])
    if CASES >= 50:  # the generator must mostly make convertible graphs, and ties must stay rare
        assert outcomes["verified", ""] >= 0.5 * CASES, outcomes
        assert stats["tie_samples"] <= 0.05 * (stats["tie_samples"] + stats["samples_compared"]), stats


def test_random_qanns_with_every_layer_time_stacked(tmp_path, one_thread, monkeypatch):
    """The unrolled graph's stacked form (a conv / linear run once over the T steps concatenated, chosen for layers
    with large weights, which the fuzzer's small nets never have) forced on every layer: the same outcomes."""
    from ann2snn.exporters import onnx_unrolled

    monkeypatch.setattr(onnx_unrolled, "STACK_WEIGHT_BYTES", 0)
    monkeypatch.setattr(onnx_unrolled, "STACK_WEIGHT_RATIO", 0)
    first = FIRST_SEED + 100_000
    outcomes, failures, stats = run_fuzz(range(first, first + max(CASES // 5, 1)), tmp_path)
    assert not failures, f"{len(failures)} fuzz failures (stacked):\n" + "\n".join(failures[:10])
    assert outcomes["verified", ""] > 0, outcomes


def test_the_generator_covers_every_construct():
    """Over the default run's seeds the generator emits every op kind and every flatten / pool / ReLU spelling."""
    seen = set()
    for seed in range(FIRST_SEED, FIRST_SEED + max(CASES, 150)):
        model = make_case(seed).model
        for i, op in enumerate(model.program):
            seen.add(op.kind)
            if op.kind in ("flatten", "relu", "mean"):
                seen.add((op.kind, op.arg))
            if op.kind == "pool":
                seen.add(("pool", op.arg[0]))
            if op.kind == "q":
                q = model.layers[str(i)]
                theta = q.threshold.detach()
                seen |= {("q", q.granularity), ("q", q.positive), ("q", type(q).__name__)}
                seen |= {("θ", "tiny")} if float(theta.min()) < 0.01 else set()
                seen |= {("θ", "large")} if float(theta.max()) > 100 else set()
    want = {"conv", "linear", "bn", "q", "relu", "pool", "add", "cat", "mean", "flatten", "identity", "layout",
            "constant", "shared"}
    want |= {("flatten", f) for f in FLATTENS} | {("relu", r) for r in RELUS} | {("pool", p) for p in POOLS}
    want |= {("mean", m) for m in ("method", "torch")} | {("θ", "tiny"), ("θ", "large")}
    want |= {("q", g) for g in ("layer", "channel", "neuron", "softplus", "none", "QCFS", "SignedQCFS")}
    assert want <= seen, want - seen


def test_a_wrong_result_is_caught():
    """The exactness check fails on one logit of one sample moved by 1e-3 (a check that cannot fail proves nothing),
    and excuses it on a tie."""
    case = make_case(FIRST_SEED)
    x = torch.rand(SAMPLES, *case.model.input_shape, generator=torch.Generator().manual_seed(0))
    want = case.model(x).detach()
    got = want.clone()
    got[3, 1] += 1e-3 * max(1.0, float(want[3].abs().max()))
    tie = torch.zeros(SAMPLES, dtype=torch.bool)
    with pytest.raises(WrongResult, match="1/16 samples"):
        _check_equal("tampered", got, want, tie, collections.Counter())
    tie[3] = True
    _check_equal("tampered", got, want, tie, collections.Counter())


# --- what the fuzzer found and this session fixed: one regression test each -------------------------------------


def _folds_exactly(model: nn.Module) -> None:
    x = torch.rand(SAMPLES, *model.input_shape, generator=torch.Generator().manual_seed(0))
    folded, _ = run_pipeline(model, example_input=x, passes=DEFAULT_PASSES[:3])
    _check_equal("the folded QANN", folded(x), model(x), tie_sensitive(model, x), collections.Counter())


def test_fixed_an_add_whose_first_operand_gets_an_explicit_scale_keeps_the_function():
    """fold_thresholds._join_add read the scale of ``a`` after an explicit scale had been inserted after it (the
    sum of a conv and a neuron-wise quantizer: the conv cannot take a scale varying along W)."""
    torch.manual_seed(0)
    q = QCFS(4, granularity="neuron", num_channels=6)
    with torch.no_grad():
        q.lam.copy_(inverse_softplus(torch.tensor([0.004, 0.3, 0.8, 1.5, 9.0, 110.0])))
    model = FuzzNet([Op("conv", (0,)), Op("q", (1,)), Op("conv", (2,)), Op("add", (3, 2)), Op("flatten", (4,), "size"),
                     Op("linear", (5,))], {0: nn.Conv2d(1, 2, 1), 1: q, 2: nn.Conv2d(2, 2, 3, padding=1),
                                           5: nn.Linear(72, 3)}, (1, 6, 6)).eval()
    _folds_exactly(model)


@pytest.mark.parametrize("pool", [nn.AvgPool2d(2, 2, 1, ceil_mode=True), nn.AvgPool2d(3, 1, 1, divisor_override=5),
                                  nn.AdaptiveAvgPool2d(3), nn.AdaptiveAvgPool2d((2, 4))], ids=repr)
def test_fixed_average_pools_that_onnx_averagepool_cannot_express_export(tmp_path, pool):
    """A window PyTorch drops under ceil_mode, divisor_override and adaptive windows of unequal sizes: exported
    as one MatMul by the pooling matrix (they were refused at export, or failed to load in onnxruntime)."""
    torch.manual_seed(0)
    out = pool(torch.zeros(1, 2, 5, 5)).numel()
    model = FuzzNet([Op("conv", (0,)), Op("q", (1,)), Op("pool", (2,), ("avg", "")), Op("flatten", (3,), "torch"),
                     Op("linear", (4,))], {0: nn.Conv2d(1, 2, 3, padding=1), 1: QCFS(4, init_threshold=1.0),
                                           2: pool, 4: nn.Linear(out, 3)}, (1, 5, 5)).eval()
    for convention in ("rate", "exact"):
        ann2snn.export(ann2snn.convert(model, T=4, convention=convention), tmp_path / "m.onnx", force=True)


@pytest.mark.parametrize("mean", ["x.mean()", "x.mean(0)", "torch.mean(x, dim=(0, 2))", "x.mean([])"])
def test_fixed_a_mean_over_the_batch_is_refused_at_conversion(mean):
    """It mixed the samples of a batch and failed at export with a raw error; now a one-line refusal up front."""
    fn = {"x.mean()": lambda x: x.mean(), "x.mean(0)": lambda x: x.mean(0).flatten(),
          "torch.mean(x, dim=(0, 2))": lambda x: torch.mean(x, dim=(0, 2)).flatten(),
          "x.mean([])": lambda x: x.mean([])}[mean]

    class Net(nn.Module):
        input_shape = (1, 6, 6)

        def __init__(self) -> None:
            super().__init__()
            self.conv, self.q = nn.Conv2d(1, 2, 3, padding=1), QCFS(4)

        def forward(self, x):
            return fn(self.q(self.conv(x)))

    with pytest.raises(Ann2SnnError, match="a mean over the batch dim") as err:
        ann2snn.convert(Net())
    assert "\n" not in str(err.value)


# --- the bugs the fuzzer found outside this file's reach, fixed since: each construct, alone --------------------


def _channel_thresholds(q: QCFS, values) -> QCFS:
    with torch.no_grad():
        q.lam.copy_(inverse_softplus(torch.tensor(values)))
    return q


def test_a_mean_over_the_channels_keeps_the_function(tmp_path):
    torch.manual_seed(0)
    q = _channel_thresholds(QCFS(4, granularity="channel", num_channels=6), [0.3, 0.6, 0.9, 1.5, 2.0, 3.0])
    model = FuzzNet([Op("conv", (0,)), Op("q", (1,)), Op("mean", (2,), "channels"), Op("linear", (3,))],
                    {0: nn.Conv2d(1, 6, 3, padding=1), 1: q, 3: nn.Linear(36, 3)}, (1, 6, 6)).eval()
    x = torch.rand(SAMPLES, 1, 6, 6, generator=torch.Generator().manual_seed(0))
    folded, _ = run_pipeline(model, example_input=x, passes=DEFAULT_PASSES[:3])
    _check_equal("the folded QANN", folded(x), model(x), tie_sensitive(model, x), collections.Counter())


def test_a_ceil_mode_max_pool_with_its_last_window_in_the_padding_exports(tmp_path):
    assert _last_window_in_padding(5, 2, 2, 1)
    torch.manual_seed(0)
    model = FuzzNet([Op("conv", (0,)), Op("q", (1,)), Op("pool", (2,), ("max", "")), Op("flatten", (3,), "torch"),
                     Op("linear", (4,))],
                    {0: nn.Conv2d(1, 2, 3, padding=1), 1: QCFS(4, init_threshold=1.0),
                     2: nn.MaxPool2d(2, 2, 1, ceil_mode=True), 4: nn.Linear(18, 3)}, (1, 5, 5)).eval()
    ann2snn.export(ann2snn.convert(model, T=4), tmp_path / "m.onnx", format="both")


def test_a_signed_layer_of_fewer_levels_exports_under_the_exact_schedule(tmp_path):
    torch.manual_seed(0)
    model = FuzzNet([Op("conv", (0,)), Op("q", (1,)), Op("flatten", (2,), "torch"), Op("linear", (3,)),
                     Op("q", (4,)), Op("linear", (5,))],
                    {0: nn.Conv2d(1, 2, 1), 1: SignedQCFS(2, alpha=0.5, init_threshold=0.5), 3: nn.Linear(72, 8),
                     4: QCFS(5, init_threshold=1.0), 5: nn.Linear(8, 3)}, (1, 6, 6)).eval()
    ann2snn.export(ann2snn.convert(model, T=4, convention="exact"), tmp_path / "m.onnx", format="unrolled")


def test_random_qanns_with_every_residual_neuron_in_the_blocked_form(tmp_path, one_thread, monkeypatch):
    """The blocked-layout forms chosen by channel count (a neuron after ``conv + shortcut`` summing the negated
    shortcut itself, a per-channel scale as a depthwise conv), which the fuzzer's 1–4 channels never reach, forced
    on every eligible node: the same outcomes, and the residual form does occur."""
    from ann2snn.exporters import common, onnx_unrolled

    monkeypatch.setattr(onnx_unrolled, "BLOCKED_CHANNELS", 1)
    monkeypatch.setattr(common, "AFFINE_AS_CONV_CHANNELS", 1)
    forms = collections.Counter()
    residual_if = onnx_unrolled._Unroller._residual_if

    def counting(self, node):
        forms[self.residual[node][2]] += 1
        return residual_if(self, node)

    monkeypatch.setattr(onnx_unrolled._Unroller, "_residual_if", counting)
    block = _Builder.block

    def residual_block(self, v: int) -> int:  # half the blocks: q(conv(v) [+ BN] + shortcut), a ResNet's sum
        if self.rng.random() < 0.5:
            return block(self, v)
        c = self.shapes[v][0]
        a = self.conv(v, c, same=True)
        a = self.bn(a) if self.rng.random() < 0.5 else a
        u = self.rng.random()
        b = v if u < 0.5 else self.conv(v, c, same=True) if u < 0.8 else self.quantizer(self.conv(v, c, same=True))
        return self.quantizer(self.emit("add", (a, b), self.shapes[a]))

    monkeypatch.setattr(_Builder, "block", residual_block)
    first, t0 = FIRST_SEED + 200_000, time.perf_counter()
    outcomes, failures, stats = run_fuzz(range(first, first + max(CASES // 5, 1)), tmp_path)
    print(f"\nresidual forms {dict(forms)}; " + summary(outcomes, stats, time.perf_counter() - t0))
    assert not failures, f"{len(failures)} fuzz failures (residual forms):\n" + "\n".join(failures[:10])
    assert outcomes["verified", ""] > 0, outcomes
    if CASES >= 50:
        assert forms["identity"] > 0 and forms["conv"] + forms["affine"] > 0, forms
