"""The examples run on digits and show what they claim; the ONNX contract page names every constant of the contract;
the numpy + onnxruntime example reproduces ``ann2snn.evaluate`` without importing ann2snn or torch."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

import ann2snn
from ann2snn.data import NORMALIZATION, load_digits
from ann2snn.evaluate import evaluate
from ann2snn.exporters import contract as C
from ann2snn.neurons import StatefulModule
from ann2snn.train import fit

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
CONTRACT_DOC = ROOT / "docs" / "onnx-contract.md"
MIGRATION_DOC = ROOT / "docs" / "migrating-from-spikingjelly.md"


def run_example(name: str, *args: str, cwd: Path, flags: tuple[str, ...] = ()) -> tuple[subprocess.CompletedProcess,
                                                                                         dict]:
    """Run ``examples/<name>.py`` in a fresh interpreter; its ``--json`` result."""
    out = cwd / f"{name}.result.json"
    proc = subprocess.run([sys.executable, *flags, str(EXAMPLES / f"{name}.py"), *args, "--json", str(out)],
                          cwd=cwd, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{name} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return proc, json.loads(out.read_text())


# ------------------------------------------------------------------------------------------------ the contract doc


def _doc() -> str:
    return CONTRACT_DOC.read_text(encoding="utf-8")


def test_contract_doc_names_every_constant_of_the_contract():
    doc = _doc()
    for name in C.__all__:
        assert name in doc, f"docs/onnx-contract.md does not mention contract.{name}"
        value = getattr(C, name)
        values = value if isinstance(value, tuple) else (value,)
        for v in values:
            if isinstance(v, str):
                assert f"`{v}" in doc, f"docs/onnx-contract.md does not quote {name} = {v!r}"
    assert f"schema version {C.SIDECAR_VERSION}" in doc


def test_contract_doc_metadata_table_pairs_each_key_with_its_constant():
    rows = dict(re.findall(r"^\| `(ann2snn\.[a-z_A-Z]+)` \| `(META_[A-Z_]+)` \|", _doc(), flags=re.M))
    expected = {getattr(C, n): n for n in C.__all__ if n.startswith("META_")}
    assert rows == expected
    assert set(rows) == set(C.METADATA_KEYS)


def test_contract_doc_lists_every_sidecar_field_and_state_kind():
    doc = _doc()
    rows = set(re.findall(r"^\| `([A-Za-z0-9_]+)` \|", doc, flags=re.M))
    states = (C.StateSpec("m", "v", "if", (2,), fill=0.5),)
    meta = C.ModelMetadata(format="stateful", T=4, input_shape=(1, 8, 8), shift=0.5, neuron_kinds=("if",),
                           states=states)
    side = C.build_sidecar(meta, files={"unrolled": "m.onnx", "stateful": "m.step.onnx"}, verification={})
    assert set(side) <= rows, f"sidecar fields missing from the doc: {set(side) - rows}"
    assert set(states[0].to_json()) <= rows
    for key in side["stateful"]:
        assert f'"{key}"' in doc, f"the sidecar's stateful.{key} is not described"
    kinds = {(cls.kind, cls.state_names) for cls in _stateful_classes(StatefulModule)}
    assert {"if", "bipolar", "maxpool"} <= {k for k, _ in kinds}
    for kind, names in kinds | {(C.SCHEDULE_KIND, (C.SCHEDULE_STATE,))}:
        row = next((r for r in doc.splitlines() if r.startswith(f"| `{kind}`")), None)
        assert row is not None, f"state kind {kind!r} is not in the doc's table of kinds"
        assert all(f"`{n}`" in row for n in names), f"the doc's row of {kind!r} does not name its states {names}"


def _stateful_classes(base):
    for cls in base.__subclasses__():
        if cls.__module__.startswith("ann2snn.") and not cls.__name__.startswith("_"):
            yield cls
        yield from _stateful_classes(cls)


def test_contract_doc_states_the_training_normalization():
    doc = _doc()
    assert "not recorded" in doc
    for mean, std in NORMALIZATION.values():
        assert all(str(v) in doc for v in (*mean, *std))


def _load_ort_example():
    spec = importlib.util.spec_from_file_location("onnxruntime_only", EXAMPLES / "onnxruntime_only.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_onnxruntime_example_spells_the_contract_as_the_contract_does():
    ex = _load_ort_example()
    for name in ("INPUT", "LOGITS", "LOGITS_PER_STEP", "LOGITS_T", "META_FORMAT", "META_T", "META_ENCODING",
                 "META_INPUT_SHAPE", "META_STATES", "META_CONVENTION", "META_SCHEDULE_LENGTH", "SIDECAR_FORMAT",
                 "SIDECAR_VERSION"):
        assert getattr(ex, name) == getattr(C, name), name
    assert ex.FORMATS == C.ONNX_FORMATS
    assert ((ex.MNIST_MEAN,), (ex.MNIST_STD,)) == NORMALIZATION["mnist"]
    for conv, L in (("rate", None), ("exact", 3)):
        assert ex.readout_counts(7, conv, L).tolist() == C.readout_counts(7, conv, L)


def test_migration_doc_exists_and_states_the_measured_numbers():
    doc = MIGRATION_DOC.read_text(encoding="utf-8")
    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    for number in ("98.26%", "98.59%", "89.4%", "93.8%", "98.71%"):
        assert number in readme and number in doc, number
    assert "RateCodingRecipe" in doc and "ann2snn.prepare" in doc


# ---------------------------------------------------------------------------- the numpy + onnxruntime example


@dataclass
class Exported:
    qann: torch.nn.Module
    snn: dict
    sidecar: dict
    images: Path
    labels: Path
    x: torch.Tensor
    y: torch.Tensor


@pytest.fixture(scope="module")
def digits_exports(tmp_path_factory) -> Exported:
    """A digits QANN trained for two epochs, exported in rate and exact mode, and its raw test images as .npy."""
    tmp = tmp_path_factory.mktemp("ort_only")
    torch.manual_seed(0)
    data = load_digits()
    qann = ann2snn.models.create("digits-cnn", levels=4, channels=8, init_threshold=2.0)
    fit(qann, data, epochs=2, lr=5e-3, seed=0)
    qann.eval()
    snns, sidecars = {}, {}
    for mode in ("rate", "exact"):
        snns[mode] = ann2snn.convert(qann, convention=mode)  # T = L (rate), 4·L (exact)
        sidecars[mode] = ann2snn.export(snns[mode], tmp / f"digits_{mode}.snn.onnx", format="both").sidecar
    raw = torch.round(data.x_test[:, 0] * 16).to(torch.uint8).numpy()  # scikit-learn's raw pixels, 0..16
    assert np.array_equal(raw.astype(np.float32) / 16.0, data.x_test[:, 0].numpy())
    np.save(tmp / "x.npy", raw)
    np.save(tmp / "y.npy", data.y_test.numpy())
    return Exported(qann, snns, sidecars, tmp / "x.npy", tmp / "y.npy", data.x_test, data.y_test)


def _imported_modules(importtime_stderr: str) -> set[str]:
    return {line.rsplit("|", 1)[1].strip() for line in importtime_stderr.splitlines()
            if line.startswith("import time:") and "|" in line}


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["rate", "exact"])
def test_onnxruntime_only_example_reproduces_evaluate(digits_exports, tmp_path, mode):
    e = digits_exports
    proc, res = run_example("onnxruntime_only", str(e.sidecar[mode]), "--images", str(e.images), "--labels",
                            str(e.labels), "--preprocess", "digits", cwd=tmp_path, flags=("-I", "-X", "importtime"))
    imported = _imported_modules(proc.stderr)
    assert {"numpy", "onnxruntime"} <= imported
    assert not {m for m in imported if m.split(".")[0] in ("ann2snn", "torch")}, "the example imported ann2snn/torch"

    snn = e.snn[mode]
    T, n = snn.T, len(e.y)
    ev = evaluate(e.qann, (e.x, e.y), list(range(1, T + 1)), convention=mode)["modes"][mode]["per_T"]
    with torch.no_grad():
        predicted = snn.simulate(e.x)[-1].argmax(-1).tolist()
    assert set(res) == {"unrolled", "stateful"}
    for fmt, r in res.items():
        assert (r["format"], r["convention"], r["T"], r["images"]) == (fmt, mode, T, n)
        assert r["correct"] == round(ev[-1]["snn_accuracy"] * n), f"{fmt}: accuracy differs from evaluate's"
        assert [round(a * n) for a in r["accuracy_per_t"]] == [round(p["snn_accuracy"] * n) for p in ev]
        assert r["predictions"] == predicted
    assert f"accuracy {100 * ev[-1]['snn_accuracy']:.2f}%" in proc.stdout


@pytest.mark.slow
def test_onnxruntime_only_example_reads_one_onnx_file_and_runs_longer(digits_exports, tmp_path):
    e = digits_exports
    step_file = e.sidecar["exact"].with_name("digits_exact.snn.step.onnx")
    T = 2 * e.snn["exact"].T  # the stateful graph has no T of its own
    _, res = run_example("onnxruntime_only", str(step_file), "--images", str(e.images), "--labels", str(e.labels),
                         "--preprocess", "digits", "--T", str(T), cwd=tmp_path)
    with torch.no_grad():
        predicted = e.snn["exact"].simulate(e.x, T=T)[-1].argmax(-1).tolist()
    assert set(res) == {"stateful"} and res["stateful"]["T"] == T and res["stateful"]["predictions"] == predicted


@pytest.mark.slow
def test_onnxruntime_only_example_refuses_images_of_the_wrong_shape(digits_exports, tmp_path):
    e = digits_exports
    np.save(tmp_path / "wrong.npy", np.zeros((len(e.y), 7, 7), dtype=np.uint8))
    proc = subprocess.run([sys.executable, str(EXAMPLES / "onnxruntime_only.py"), str(e.sidecar["rate"]),
                           "--images", str(tmp_path / "wrong.npy"), "--labels", str(e.labels), "--preprocess",
                           "digits"], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0
    assert proc.stderr.strip().splitlines()[-1].startswith("error:") and "(1, 8, 8)" in proc.stderr


# ------------------------------------------------------------------------------------------ the other examples


def _verified(report: dict) -> None:
    for fmt, rep in report.items():
        assert rep["mismatched_samples"] == 0 and rep["argmax_agreement"] == 1.0, fmt
    assert report["unrolled"]["spike_count_agreement"] == 1.0


@pytest.mark.slow
def test_own_cnn_to_snn(tmp_path):
    _, r = run_example("own_cnn_to_snn", "--epochs", "1", "--out", str(tmp_path / "out"), cwd=tmp_path)
    T, acc = r["T"], r["snn_accuracy_per_t"]
    assert T == 4 and len(acc) == 2 * T
    _verified(r["verification"])
    assert r["onnx_unrolled_accuracy"] == r["onnx_stateful_accuracy"] == acc[T - 1]
    assert r["onnx_vs_simulator_max_abs"] < 1e-4
    assert r["qann_accuracy"] > 0.5 and abs(acc[T - 1] - r["qann_accuracy"]) < 0.05
    assert all(Path(f).is_file() for f in (*r["files"].values(), r["sidecar"], r["model_file"]))
    # the registered builder makes the saved file convertible from the command line
    cli = subprocess.run([sys.executable, "-m", "ann2snn", "convert", r["model_file"], "--arch-module",
                          str(EXAMPLES / "own_cnn_to_snn.py"), "-o", str(tmp_path / "cli.snn.onnx"), "--json"],
                         cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert cli.returncode == 0, cli.stderr[-2000:]
    assert (tmp_path / "cli.snn.onnx").is_file() and (tmp_path / "cli.snn.step.onnx").is_file()


@pytest.mark.slow
def test_relu_via_prepare(tmp_path):
    _, r = run_example("relu_via_prepare", "--epochs", "1", "--finetune", "1", "--out", str(tmp_path / "out"),
                       cwd=tmp_path)
    replaced = [s["replaced"] for s in r["prepare_report"]["activations"]]
    assert len(replaced) == 2 and any("module" in s for s in replaced) and any("function" in s for s in replaced)
    assert r["prepare_report"]["maxpool_swapped"]
    assert r["conversion"]["if_neurons"] == 2 and r["conversion"]["spiking_maxpools"] == 0
    _verified(r["verification"])
    T = r["T"]
    assert r["qann_accuracy"] > 0.5 and abs(r["snn_accuracy_per_t"][T - 1] - r["qann_accuracy"]) < 0.05


@pytest.mark.slow
def test_exact_mode(tmp_path):
    _, r = run_example("exact_mode", "--epochs", "1", "--out", str(tmp_path / "out"), cwd=tmp_path)
    T, n = r["T"], 359
    ex = r["exactness"]
    assert T == 16 and ex["never"] <= 1
    assert ex["never"] > 0 or ex["step_all"] <= T
    assert r["equal_fraction_per_t"][0] == 0.0 and r["equal_fraction_per_t"][-1] >= 1 - 1 / n
    settled = (ex["step_all"] or T) - 1
    assert len(set(r["exact_accuracy_per_t"][settled:])) == 1  # accuracy stops moving once the logits are the QANN's
    assert abs(r["exact_accuracy_per_t"][-1] - r["qann_accuracy"]) <= 1 / n + 1e-9
    _verified(r["verification"])
    assert r["onnx_stateful_accuracy"] == r["exact_accuracy_per_t"][-1]
    if ex["never"] == 0:
        assert r["onnx_stateful_vs_qann_max_abs"] < 1e-3


@pytest.mark.slow
def test_signed_leaky(tmp_path):
    _, r = run_example("signed_leaky", "--epochs", "1", "--finetune", "1", "--out", str(tmp_path / "out"),
                       cwd=tmp_path)
    assert r["prepared_as"] == "digits-cnn"
    qann = ann2snn.load(r["model_file"])
    assert sum(isinstance(m, ann2snn.SignedQCFS) for m in qann.modules()) == 2
    for mode in ("rate", "exact"):
        m = r["modes"][mode]
        assert m["neuron_kinds"] == ["bipolar"], mode
        _verified(m["verification"])
    exact = r["modes"]["exact"]
    assert exact["exact_logits"]["never"] <= 1
    assert abs(exact["accuracy_per_t"][-1] - r["qann_accuracy"]) <= 1 / 359 + 1e-9


@pytest.mark.slow
def test_nir_export(tmp_path):
    pytest.importorskip("nir")
    pytest.importorskip("nirtorch")
    from ann2snn.exporters import FORMATS

    if "nir" not in FORMATS:
        pytest.skip("this ann2snn has no format='nir' export yet")
    _, r = run_example("nir_export", "--epochs", "1", "--out", str(tmp_path / "out"), cwd=tmp_path)
    exact, approx = r["forms"]["integrator"], r["forms"]["if"]
    assert exact["max_abs_vs_simulator"] < 1e-4 and exact["accuracy"] == r["snn_accuracy"]
    assert not exact["approximations"] and {"I", "Threshold"} <= set(exact["node_types"])
    assert approx["approximations"] and "IF" in approx["node_types"]
    assert all(Path(f["file"]).is_file() and Path(f["sidecar"]).is_file() for f in r["forms"].values())
