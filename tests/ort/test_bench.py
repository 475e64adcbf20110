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


def test_contenders_take_turns_call_by_call_and_both_clocks_are_kept():
    from ann2snn.bench import measure

    calls = []
    times = measure({"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}, warmup=1, repeats=3)
    assert calls == ["a", "b"] + ["a", "b"] * 3  # warm-up, then A B A B A B
    assert {k: (len(v["wall"]), len(v["cpu"])) for k, v in times.items()} == {"a": (3, 3), "b": (3, 3)}


def test_every_contender_gets_the_threads_asked_for(monkeypatch):
    import torch

    from ann2snn import bench, runtime

    seen = []
    make = runtime.make_session

    def spy(model, **kw):
        seen.append((kw.get("threads"), kw.get("spinning")))
        return make(model, **kw)

    monkeypatch.setattr(runtime, "make_session", spy)
    before = torch.get_num_threads()
    res = bench.benchmark(make_qann("digits"), Ts=[2], batches=[2], repeats=2, warmup=0, threads=1, spinning=False)
    assert seen and set(seen) == {(1, False)} and torch.get_num_threads() == before
    row = res["rows"][0]
    for name in ("ann", "unrolled", "stateful", "torch"):
        assert row[f"{name}_ms_min"] <= row[f"{name}_ms"] <= row[f"{name}_ms_max"]
        assert row[f"{name}_cpu_ms_min"] <= row[f"{name}_cpu_ms"] <= row[f"{name}_cpu_ms_max"]
    assert row["unrolled_ratio_min"] <= row["unrolled_ratio"] <= row["unrolled_ratio_max"]
    assert row["unrolled_cpu_ratio"] > 0 and res["threads"] == 1
