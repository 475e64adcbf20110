"""The benchmark under both time conventions: the exact-mode SNN is the one timed, and files say their own mode."""

from __future__ import annotations

import pytest
from helpers import make_qann

import ann2snn
from ann2snn.bench import benchmark, benchmark_onnx


@pytest.mark.parametrize("convention", ["rate", "exact"])
def test_benchmark_times_the_network_of_the_convention(convention, tmp_path):
    qann = make_qann("digits")
    res = benchmark(qann, Ts=[6], batches=[2], repeats=1, warmup=0, include=("unrolled", "stateful"),
                    convention=convention)
    assert res["convention"] == convention and res["rows"][0]["T"] == 6
    assert res["rows"][0]["unrolled_ms"] > 0 and res["rows"][0]["stateful_ms"] > 0
    files = ann2snn.export(ann2snn.convert(qann, 6, convention=convention), tmp_path / "m.onnx", verify=False).files
    for path in files.values():
        assert benchmark_onnx(path, batches=[2], repeats=1, warmup=0)["convention"] == convention
