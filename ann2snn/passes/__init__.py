"""Graph passes over a traced QANN, one per file, run in order by :func:`run_pipeline`.

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

from ann2snn.errors import Ann2SnnError, ConversionError
from ann2snn.passes.convert_maxpool import convert_maxpool
from ann2snn.passes.fold_batchnorm import fold_batchnorm
from ann2snn.passes.fold_thresholds import fold_thresholds
from ann2snn.passes.normalize import normalize
from ann2snn.passes.replace_qcfs import replace_qcfs_with_if
from ann2snn.passes.trace import trace

__all__ = ["trace", "normalize", "fold_batchnorm", "fold_thresholds", "replace_qcfs_with_if", "convert_maxpool",
           "run_pipeline", "ConversionReport", "PassRecord", "DEFAULT_PASSES"]


@dataclass
class PassRecord:
    """What one pass did: its counters and lists, node counts before and after, and its run time."""

    name: str
    changes: dict[str, Any]
    nodes_before: int
    nodes_after: int
    seconds: float


@dataclass
class ConversionReport:
    """The pipeline's account of a conversion; ``convert`` prints it and writes it as JSON."""

    passes: list[PassRecord] = field(default_factory=list)

    def get(self, name: str) -> dict[str, Any]:
        for p in self.passes:
            if p.name == name:
                return p.changes
        return {}

    def counts(self) -> dict[str, int]:
        """The headline numbers: what was folded, kept, replaced."""
        bn = self.get("fold_batchnorm")
        th = self.get("fold_thresholds")
        return {
            "batchnorm_folded": len(bn.get("folded", [])),
            "batchnorm_kept_as_affine": len(bn.get("kept_as_affine", [])),
            "qcfs_found": len(th.get("thresholds", [])),
            "thresholds_folded": len(th.get("thresholds", [])),
            "producers_rescaled": len(th.get("rescaled_producers", [])),
            "explicit_scales": len(th.get("explicit_scales", [])),
            "if_neurons": len(self.get("replace_qcfs_with_if").get("neurons", [])),
            "spiking_maxpools": len(self.get("convert_maxpool").get("spiking_maxpools", [])),
            "relus_removed": self.get("normalize").get("relus_removed", 0),
            "identities_removed": self.get("normalize").get("identities_removed", 0),
        }

    def to_dict(self) -> dict[str, Any]:
        return {"counts": self.counts(), "passes": [p.__dict__ for p in self.passes]}

    def summary(self) -> str:
        return ", ".join(f"{k}={v}" for k, v in self.counts().items())


def _count(gm: fx.GraphModule) -> int:
    return sum(1 for _ in gm.graph.nodes)


#: The pipeline: (name, pass). Each pass takes ``(gm, *, record, **options)`` and returns the GraphModule.
DEFAULT_PASSES: tuple[tuple[str, Callable[..., fx.GraphModule]], ...] = (
    ("normalize", normalize),
    ("fold_batchnorm", fold_batchnorm),
    ("fold_thresholds", fold_thresholds),
    ("replace_qcfs_with_if", replace_qcfs_with_if),
    ("convert_maxpool", convert_maxpool),
)


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
        passes: ``(name, fn)`` pairs; stop early (e.g. before ``replace_qcfs_with_if``) to get the folded QANN.
        options: per-pass keyword options, e.g. ``{"convert_maxpool": {"mode": "error"}}``.

    Returns:
        The spiking GraphModule (in eval mode) and the report.
    """
    options = options or {}
    report = ConversionReport()
    work = copy.deepcopy(model).eval()
    t0 = time.perf_counter()
    gm = trace(work, example_input=example_input)
    report.passes.append(PassRecord("trace", {"nodes": _count(gm)}, 0, _count(gm), time.perf_counter() - t0))
    done = ["trace"]
    for name, fn in passes:
        before = _count(gm)
        rec: dict[str, Any] = {}
        t0 = time.perf_counter()
        try:
            with torch.no_grad():
                gm = fn(gm, record=rec, **options.get(name, {}))
        except Ann2SnnError:
            raise
        except Exception as exc:
            raise ConversionError(f"pass {name} failed after [{', '.join(done)}]: {type(exc).__name__}: {exc}") from exc
        report.passes.append(PassRecord(name, rec, before, _count(gm), time.perf_counter() - t0))
        done.append(name)
    return gm.eval(), report
