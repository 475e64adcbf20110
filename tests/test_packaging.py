"""Packaging: one onnxruntime build per environment, chosen by an extra; the wheel; the Makefile's setup; LICENSE.

The full install check (a wheel built in isolation, installed into a fresh venv, run there) is in .ci/run; what
can be checked offline in seconds is here.
"""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from ann2snn import runtime
from ann2snn.errors import Ann2SnnError

ROOT = Path(__file__).resolve().parents[1]
tomllib = pytest.importorskip("tomllib")  # Python >= 3.11 (the suite runs on 3.11)

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
EXTRAS = PROJECT["optional-dependencies"]
PEERS = ("spikingjelly", "sinabs", "snntorch", "norse", "lava")


def _name(req: str) -> str:
    """The normalized distribution name of a requirement string (``mkdocstrings[python]>=0.25`` → ``mkdocstrings``)."""
    return re.sub(r"[-_.]+", "-", re.match(r"\s*([A-Za-z0-9._-]+)", req).group(1)).lower()


def _is_ort(req: str) -> bool:
    return _name(req) in runtime.ORT_BUILDS or _name(req).startswith("onnxruntime")


def test_no_onnxruntime_build_in_the_base_requirements():
    assert not [r for r in PROJECT["dependencies"] if _is_ort(r)]


def test_cpu_and_gpu_extras_each_hold_one_build_and_no_other_extra_holds_any():
    assert [_name(r) for r in EXTRAS["cpu"]] == ["onnxruntime"]
    assert [_name(r) for r in EXTRAS["gpu"]] == ["onnxruntime-gpu"]
    others = {k: [r for r in v if _is_ort(r)] for k, v in EXTRAS.items() if k not in ("cpu", "gpu")}
    assert not any(others.values()), f"an extra besides cpu/gpu installs an onnxruntime build: {others}"


def test_agreed_extras_and_dev_holds_the_test_tools():
    assert {"cpu", "gpu", "nir", "docs", "dev"} <= set(EXTRAS)
    assert {_name(r) for r in EXTRAS["nir"]} >= {"nir", "nirtorch"}
    assert {_name(r) for r in EXTRAS["docs"]} >= {"mkdocs", "mkdocstrings"}
    assert {_name(r) for r in EXTRAS["dev"]} >= {"pytest", "hypothesis", "ruff", "matplotlib", "nir", "nirtorch"}


def test_torch_is_a_plain_requirement_and_peers_stay_out_of_runtime_deps():
    deps = PROJECT["dependencies"]
    assert [r for r in deps if _name(r) == "torch"] == ["torch>=2.4"]  # no pin, no index: the user's own torch
    assert not [r for r in deps if _name(r) in PEERS]
    assert "torch==" in (ROOT / "constraints.txt").read_text()  # the CPU pin lives in the constraints for make


def _test_imports() -> dict[str, str | None]:
    """Top-level modules the test suite asks for with ``pytest.importorskip``, each with its ``minversion``."""
    found: dict[str, str | None] = {}
    for path in (ROOT / "tests").rglob("*.py"):
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "importorskip" and node.args
                    and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
                module = node.args[0].value.split(".")[0]
                minv = next((k.value.value for k in node.keywords if k.arg == "minversion"
                             and isinstance(k.value, ast.Constant)), None)
                if module not in sys.stdlib_module_names and module != "ann2snn":
                    found[module] = minv if found.get(module) is None else found[module]
    return found


def _lower_bound(req: str) -> str | None:
    m = re.search(r">=\s*([0-9][0-9A-Za-z.]*)", req)
    return m.group(1) if m else None


def test_every_optional_package_the_tests_import_is_installed_by_make_setup():
    """A test that skips without a package must not skip in CI: the package, at the version the test asks for, is a
    requirement of .[cpu,dev] (or of the base)."""
    from importlib import metadata

    from packaging.version import Version

    listed = {_name(r): r for r in PROJECT["dependencies"] + EXTRAS["cpu"] + EXTRAS["gpu"] + EXTRAS["dev"]}
    dists = metadata.packages_distributions()
    missing, too_low = {}, {}
    for module, minv in _test_imports().items():
        names = ({_name(d) for d in dists.get(module, [])} | {_name(module)}) & set(listed)
        if not names:
            missing[module] = sorted({_name(d) for d in dists.get(module, [module])})
            continue
        bound = _lower_bound(listed[min(names)])
        if minv is not None and (bound is None or Version(bound) < Version(minv)):
            too_low[module] = (listed[min(names)], minv)
    assert not missing, f"add these to the dev extra in pyproject.toml: {missing}"
    assert not too_low, f"raise these requirements to the tests' minversion: {too_low}"


def test_license_file_is_mit_and_named_in_the_metadata():
    text = (ROOT / "LICENSE").read_text()
    assert text.startswith("MIT License") and "Copyright (c) 2026 ann2snn contributors" in text
    assert PROJECT["license"] == "MIT" and "LICENSE" in PROJECT["license-files"]


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
@pytest.mark.parametrize("ort,wanted,other", [("cpu", "onnxruntime", "onnxruntime-gpu"),
                                              ("gpu", "onnxruntime-gpu", "onnxruntime")])
def test_make_setup_installs_one_build_and_removes_the_other_first(tmp_path, ort, wanted, other):
    venv = tmp_path / "venv"  # never created: -n only prints the commands
    res = subprocess.run(["make", "-n", "-C", str(ROOT), "setup", f"ORT={ort}", f"VENV={venv}"],
                         capture_output=True, text=True, check=True)
    lines = res.stdout.replace("\\\n", " ").splitlines()
    install = [i for i, s in enumerate(lines) if f"-e '.[{ort},dev]'" in s]
    removal = [i for i, s in enumerate(lines) if f"pip show -q {other} " in s and "uninstall" in s]
    assert install and removal and removal[0] < install[0], res.stdout
    assert all("-c constraints.txt" in s for s in lines if "pip install" in s)
    bad = subprocess.run(["make", "-n", "-C", str(ROOT), "setup", "ORT=both", f"VENV={venv}"],
                         capture_output=True, text=True)
    assert bad.returncode != 0 and "ORT must be cpu or gpu" in bad.stderr


def test_this_environment_holds_at_most_one_onnxruntime_build():
    assert len(runtime.installed_ort_builds()) <= 1, runtime.installed_ort_builds()


def test_missing_onnxruntime_is_one_line_naming_the_install(monkeypatch):
    monkeypatch.setattr(runtime, "installed_ort_builds", lambda: ())
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import onnxruntime -> ModuleNotFoundError
    with pytest.raises(Ann2SnnError) as err:
        runtime.make_session(b"", provider="cpu")
    msg = str(err.value)
    assert "onnxruntime is not installed" in msg and "pip install onnxruntime" in msg and "\n" not in msg


def test_two_builds_in_one_environment_are_refused(monkeypatch):
    monkeypatch.setattr(runtime, "installed_ort_builds", lambda: ("onnxruntime", "onnxruntime-gpu"))
    with pytest.raises(Ann2SnnError, match=r"pip uninstall -y onnxruntime onnxruntime-gpu, then install one build"):
        runtime.make_session(b"", provider="cpu")


def _identity_model() -> bytes:
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "id",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = min(model.ir_version, 10)
    return model.SerializeToString()


@pytest.fixture
def cpu_only_ort(monkeypatch):
    """onnxruntime as the CPU build (package onnxruntime) shows itself: no CUDA provider listed."""
    ort = pytest.importorskip("onnxruntime")
    if runtime.installed_ort_builds() != ("onnxruntime",):  # the GPU build here: hide its CUDA provider
        monkeypatch.setattr(ort, "get_available_providers", lambda: ["CPUExecutionProvider"])
    assert "CUDAExecutionProvider" not in ort.get_available_providers()
    runtime.cuda_usable.cache_clear()
    yield ort
    runtime.cuda_usable.cache_clear()


def test_cpu_build_auto_is_cpu_quietly(cpu_only_ort, capfd):
    assert runtime.cuda_usable() is False
    sess, used = runtime.make_session(_identity_model(), provider="auto")
    assert used == "cpu" and sess.get_providers() == ["CPUExecutionProvider"]
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_cpu_build_cuda_is_one_line(cpu_only_ort):
    with pytest.raises(Ann2SnnError) as err:
        runtime.make_session(_identity_model(), provider="cuda")
    msg = str(err.value)
    assert "no CUDA provider" in msg and "--provider cpu" in msg and "onnxruntime-gpu" in msg and "\n" not in msg


def test_wheel_metadata_and_contents(tmp_path):
    """The wheel as pip builds it (no isolation, so offline): requirements, extras, licence, every module."""
    pytest.importorskip("setuptools")
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(ROOT / name, src / name)
    shutil.copytree(ROOT / "ann2snn", src / "ann2snn", ignore=shutil.ignore_patterns("__pycache__"))
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation", "-w",
                    str(tmp_path / "dist"), str(src)], check=True, capture_output=True, text=True)
    (wheel,) = (tmp_path / "dist").glob("ann2snn-*.whl")
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = next(n.rsplit("/", 1)[0] for n in names if n.endswith(".dist-info/METADATA"))
        meta = zf.read(f"{info}/METADATA").decode()
        entry = zf.read(f"{info}/entry_points.txt").decode()
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines() if line.startswith("Requires-Dist:")]
    assert not [r for r in requires if _is_ort(r) and "extra ==" not in r]
    assert any(_name(r) == "onnxruntime" and "extra == \"cpu\"" in r for r in requires)
    assert any(_name(r) == "onnxruntime-gpu" and "extra == \"gpu\"" in r for r in requires)
    assert {"cpu", "gpu", "nir", "docs", "dev"} <= {line.split(":", 1)[1].strip() for line in meta.splitlines()
                                                    if line.startswith("Provides-Extra:")}
    assert "License-Expression: MIT" in meta and f"{info}/licenses/LICENSE" in names
    assert "ann2snn = ann2snn.cli.main:main" in entry
    modules = {p.relative_to(ROOT).as_posix() for p in (ROOT / "ann2snn").rglob("*.py") if "__pycache__" not in p.parts}
    assert modules - names == set(), "modules missing from the wheel (a package without __init__.py?)"
    assert not [n for n in names if n.startswith(("tests/", "bench/", "examples/", "docs/"))]
