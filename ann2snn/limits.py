"""Limits every entry point shares (library and CLI): one place, one reason each. No heavy imports here."""

from __future__ import annotations

#: The most time steps ann2snn runs or exports. Time and memory grow linearly with T (the unrolled ONNX graph holds T
#: copies of every per-step operation, the simulator keeps [T, B, K] logits), so a typo such as T = 1000000 would run
#: for hours or exhaust memory instead of failing; useful T are far below it (rate coding peaks near T = L, exact
#: mode settles a few steps after L). The stateful ONNX graph runs any number of steps.
MAX_T = 4096
#: The largest batch a command accepts: far above any useful benchmark or evaluation batch, small enough to fail
#: in one line instead of allocating gigabytes and being killed.
MAX_BATCH = 65536


def steps_error(T, name: str = "T") -> str | None:
    """Why ``T`` is not a usable number of time steps (None when it is)."""
    if isinstance(T, bool) or not isinstance(T, int) or T <= 0:
        return f"{name} must be a positive number of time steps, got {T!r}"
    if T > MAX_T:
        return (f"{name} {T} is above the limit of {MAX_T} time steps (time and memory grow linearly with T; useful "
                "T are near L, exact mode settles a few steps after L)")
    return None
