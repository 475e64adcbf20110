"""Graph passes over a traced QANN, one per file, run in order by :func:`run_pipeline`.

Each pass is ``fn(gm, **options) -> PassResult``: the graph module, what it changed, and the headline counters
it declares; the report sums those counters, so a new pass never edits :class:`ConversionReport`.

Examples:
    >>> gm, report = run_pipeline(qann, example_input=torch.zeros(1, 1, 8, 8))
    >>> print(report.summary())
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
from torch import fx, nn

from ann2snn.errors import Ann2SnnError, ConversionError, UnsupportedNodeError
from ann2snn.passes.fold_batchnorm import fold_batchnorm
from ann2snn.passes.fold_thresholds import fold_thresholds
from ann2snn.passes.graph import PassResult
from ann2snn.passes.normalize import normalize
from ann2snn.passes.to_spiking import to_spiking
from ann2snn.passes.trace import source_stack, trace

__all__ = ["trace", "normalize", "fold_batchnorm", "fold_thresholds", "to_spiking", "run_pipeline", "PassResult",
           "ConversionReport", "PassRecord", "DEFAULT_PASSES"]

@dataclass
class PassRecord:
    """What one pass did: its changes, its declared counters, node counts before and after, and its run time."""

    name: str
    changes: dict[str, Any]
    nodes_before: int
    nodes_after: int
    seconds: float
    counters: dict[str, int] = field(default_factory=dict)


@dataclass
class ConversionReport:
    """The pipeline's account of a conversion; ``convert`` prints it and writes it as JSON."""

    passes: list[PassRecord] = field(default_factory=list)

    def get(self, name: str) -> dict[str, Any]:
        """The changes of pass ``name`` (``{}`` when it did not run)."""
        for p in self.passes:
            if p.name == name:
                return p.changes
        return {}

    def counts(self) -> dict[str, int]:
        """The headline numbers (what was folded, kept, replaced): every pass's declared counters, summed."""
        out: dict[str, int] = {}
        for p in self.passes:
            for k, v in p.counters.items():
                out[k] = out.get(k, 0) + int(v)
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"counts": self.counts(), "passes": [p.__dict__ for p in self.passes]}

    def summary(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.counts().items())


def _count(gm: fx.GraphModule) -> int:
    return sum(1 for _ in gm.graph.nodes)


#: The pipeline: (name, pass). Each pass takes ``(gm, **options)`` and returns a :class:`PassResult`.
DEFAULT_PASSES: tuple[tuple[str, Callable[..., PassResult]], ...] = (
    ("normalize", normalize),
    ("fold_batchnorm", fold_batchnorm),
    ("fold_thresholds", fold_thresholds),
    ("to_spiking", to_spiking),
)


def _pass_options(options: dict[str, dict[str, Any]] | None, passes) -> dict[str, dict[str, Any]]:
    """Per-pass options; options for a pass that is not in the pipeline are an error (a typo must not pass)."""
    options = {k: dict(v) for k, v in (options or {}).items()}
    known = {name for name, _ in passes} | {name for name, _ in DEFAULT_PASSES}
    unknown = sorted(set(options) - known)
    if unknown:
        raise ConversionError(f"options given for unknown passes {unknown}; the passes are "
                              f"{', '.join(sorted(known))}")
    return options


def _with_source_line(exc: UnsupportedNodeError, model: nn.Module) -> UnsupportedNodeError:
    """``exc`` naming the user's source line of its node, found by tracing ``model`` again with stack traces (the
    first trace skips them: recording costs ~2 s of imports); ``exc`` itself when there is none."""
    node = exc.node
    if not isinstance(node, fx.Node) or node.meta.get("stack_trace"):
        return exc
    stack = source_stack(model, node.name)
    if not stack:
        return exc
    node.meta["stack_trace"] = stack
    return UnsupportedNodeError(node, exc.reason)


def run_pipeline(
    model: nn.Module,
    *,
    example_input: torch.Tensor,
    passes=DEFAULT_PASSES,
    options: dict[str, dict[str, Any]] | None = None,
) -> tuple[fx.GraphModule, ConversionReport]:
    """Copy ``model`` once, trace it, and run ``passes`` in order on the copy.

    Args:
        model: the QANN (left untouched).
        example_input: one batch the model accepts (shapes for the passes).
        passes: ``(name, fn)`` pairs; stop early (e.g. before ``to_spiking``) to get the folded QANN.
        options: per-pass keyword options, e.g. ``{"to_spiking": {"convention": "exact", "maxpool": "error"}}``.

    Returns:
        The spiking GraphModule (in eval mode) and the report.
    """
    options = _pass_options(options, passes)
    report = ConversionReport()
    work = copy.deepcopy(model).eval()
    t0 = time.perf_counter()
    gm = trace(work, example_input=example_input)
    report.passes.append(PassRecord("trace", {"nodes": _count(gm)}, 0, _count(gm), time.perf_counter() - t0))
    done = ["trace"]
    for name, fn in passes:
        before = _count(gm)
        t0 = time.perf_counter()
        try:
            with torch.no_grad():
                result = fn(gm, **options.get(name, {}))
        except UnsupportedNodeError as exc:
            raise _with_source_line(exc, model) from exc
        except Ann2SnnError:
            raise
        except Exception as exc:
            raise ConversionError(f"pass {name} failed after [{', '.join(done)}]: {type(exc).__name__}: {exc}") from exc
        if isinstance(result, fx.GraphModule):  # a plain fx pass: nothing declared
            result = PassResult(result)
        gm = result.gm
        report.passes.append(PassRecord(name, dict(result.changes), before, _count(gm), time.perf_counter() - t0,
                                        dict(result.counters)))
        done.append(name)
    return gm.eval(), report
