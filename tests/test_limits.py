"""Long runs: an ordinary network exports and verifies at T far above L (the unrolled graph keeps its precision:
counts are integer-valued floats, accumulated inputs are compared operator by operator), and a T above the shared
limit is refused in one line by the library, before any work."""

from __future__ import annotations

import pytest
import torch

import ann2snn
from ann2snn.errors import Ann2SnnError
from ann2snn.limits import MAX_T, steps_error
from tests.helpers import randomize


@pytest.fixture(scope="module")
def digits_qann():
    torch.manual_seed(0)
    return randomize(ann2snn.models.create("digits-cnn"), seed=1).eval()


def test_an_ordinary_network_exports_and_verifies_at_T_256(digits_qann, tmp_path):
    pytest.importorskip("onnxruntime")
    snn = ann2snn.convert(digits_qann, T=256)
    result = ann2snn.export(snn, tmp_path / "m.onnx", format="both")
    for fmt in ("unrolled", "stateful"):
        v = result.verification[fmt]
        assert v["mismatched_samples"] == 0 and v["argmax_agreement"] == 1.0, (fmt, v)
        assert v["max_error_over_magnitude"] < 1e-5, (fmt, v)
        # most spike counts agree outright; the rest are float ties, each decided within tolerance
        assert v["spike_count_agreement"] > 0.98, (fmt, v)


@pytest.mark.parametrize("T", [0, -3, MAX_T + 1, 10**9, 2.5, True])
def test_a_T_outside_the_limits_is_refused_in_one_line(digits_qann, T):
    with pytest.raises(Ann2SnnError) as err:
        ann2snn.convert(digits_qann, T=T)
    assert str(err.value) == steps_error(T) and "\n" not in str(err.value)
