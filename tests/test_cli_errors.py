"""Every CLI path with bad input: one line on stderr, a non-zero exit, no traceback, no file changed.

One parametrized matrix over the categories of issue 12 (non-finite numbers, T and batch bounds, damaged and
malformed model files, bare state dicts, unwritable outputs, wrong shapes, damaged data, --arch-module errors,
overwrites without --force, unrecorded preprocessing), run in-process against shared fixture files; then the cases
that need their own process (Ctrl-C at start-up) or their own assertions (markup-safe names, records).
"""

from __future__ import annotations

import gzip
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

import ann2snn
from ann2snn.cli.main import main
from ann2snn.data import Preprocessing
from tests.test_cli import run_cli


def _idx(data: bytes, magic: int, dims: list[int]) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(d.to_bytes(4, "big") for d in dims)
    return gzip.compress(header + data)


def _fake_mnist(d: Path, n: int = 4) -> Path:
    """Valid MNIST IDX files with ``n`` 28×28 images (a shape no digits model takes)."""
    d.mkdir()
    g = torch.Generator().manual_seed(0)
    for split in ("train", "t10k"):
        images = torch.randint(0, 256, (n, 28, 28), generator=g, dtype=torch.uint8).numpy().tobytes()
        (d / f"{split}-images-idx3-ubyte.gz").write_bytes(_idx(images, 0x803, [n, 28, 28]))
        (d / f"{split}-labels-idx1-ubyte.gz").write_bytes(_idx(bytes(range(n)), 0x801, [n]))
    return d


def _flip_weight_bytes(path: Path) -> None:
    import zipfile

    with zipfile.ZipFile(path) as z:
        info = max((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size)
    data = bytearray(path.read_bytes())
    off = info.header_offset
    start = off + 30 + int.from_bytes(data[off + 26:off + 28], "little") + int.from_bytes(data[off + 28:off + 30],
                                                                                          "little")
    data[start + info.file_size // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    """Model, data and module files for the matrix, built once."""
    d = tmp_path_factory.mktemp("cli-errors")
    torch.manual_seed(0)
    qann = ann2snn.models.create("digits-cnn", levels=2, channels=4)
    qann.preprocessing = Preprocessing(16.0, None, None, "digits")
    good = ann2snn.save(qann, d / "good.pt")
    ann2snn.save(ann2snn.models.create("digits-cnn", levels=2, channels=4), d / "plain.pt")  # no preprocessing
    relu = ann2snn.models.create("digits-cnn", act="relu", channels=4)
    relu.preprocessing = qann.preprocessing
    ann2snn.save(relu, d / "relu.pt")
    payload = torch.load(good, weights_only=True)

    def variant(name, **changes):
        p = dict(payload, **changes)
        torch.save(p, d / name)

    sd = {k: v.clone() for k, v in payload["state_dict"].items()}
    sd["0.weight"].view(-1)[0] = float("inf")
    variant("inf.pt", state_dict=sd)
    sd = {k: v.clone() for k, v in payload["state_dict"].items()}
    lam = next(k for k in sd if k.endswith("lam"))
    sd[lam].view(-1)[0] = float("nan")
    variant("nan_theta.pt", state_dict=sd)
    variant("bad_arch.pt", arch=["digits-cnn"])
    variant("bad_kwargs.pt", kwargs="levels=2")
    variant("bad_kwarg_value.pt", kwargs={"levels": 2, "channels": "four"})
    (d / "crc.pt").write_bytes(good.read_bytes())
    _flip_weight_bytes(d / "crc.pt")
    (d / "text.pt").write_text("this is a text file, not a model\n")
    torch.save(payload["state_dict"], d / "legacy.pt", _use_new_zipfile_serialization=False)
    torch.save(payload["state_dict"], d / "bare.pt")
    ann2snn.save(qann, d / "r.last.pt", meta={"train_state": {"epoch": 1}})
    for name in ("taken.pt", "x-digits.stage1.pt"):
        (d / name).write_text("an existing file")
    (d / "blocker").write_text("a file where a directory is expected")
    _fake_mnist(d / "mnist28")
    (d / "badgz").mkdir()
    for name in ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", "t10k-images-idx3-ubyte.gz",
                 "t10k-labels-idx1-ubyte.gz"):
        (d / "badgz" / name).write_bytes(b"\x1f\x8b\x08\x00\x00\x00\x00\x00\x00\x03garbage, not deflate")
    (d / "syntax_error.py").write_text("def broken(:\n    pass\n")
    (d / "raises.py").write_text("raise RuntimeError('this module fails on import')\n")
    return d


#: (case id, argv with {d} = the fixture directory, what the one error line must contain)
CASES = [
    # 1. finiteness: tensors checked at load by every command; train refuses non-finite and absurd numbers
    ("inf-weight-convert", "convert {d}/inf.pt", "tensor '0.weight' has 1 NaN or infinite"),
    ("inf-weight-eval", "eval {d}/inf.pt --T 1 --limit 4", "tensor '0.weight' has 1 NaN or infinite"),
    ("inf-weight-bench", "bench {d}/inf.pt --T 1 --batch 1", "tensor '0.weight' has 1 NaN or infinite"),
    ("inf-weight-inspect", "inspect graph {d}/inf.pt", "tensor '0.weight' has 1 NaN or infinite"),
    ("nan-threshold", "inspect thresholds {d}/nan_theta.pt", "lam' has 1 NaN or infinite"),
    ("train-nan-theta", "train --arch digits-cnn --init-threshold nan", "--init-threshold must be a finite number"),
    ("train-inf-lr", "train --arch digits-cnn --lr inf", "--lr must be a finite number > 0"),
    ("train-epochs-0", "train --arch digits-cnn --epochs 0", "--epochs must be a positive integer, got 0"),
    ("train-neg-decay", "train --arch digits-cnn --weight-decay -1", "--weight-decay must be a finite number"),
    ("eval-inf-energy", "eval {d}/good.pt --e-mac inf", "is not a finite number"),
    ("prepare-nan-percentile", "prepare {d}/relu.pt --percentile nan", "is not a finite number"),
    ("T-convert", "convert {d}/good.pt --T 5000", "above the limit of 4096 time steps"),
    ("T-eval", "eval {d}/good.pt --T 1,5000", "limit of 4096"),
    ("T-bench", "bench {d}/good.pt --T 5000", "above the limit of 4096 time steps"),
    ("T-zero", "convert {d}/good.pt --T 0", "positive number of time steps"),
    # 2. integrity: corrupted bytes, not a model file, legacy pickle
    ("crc", "convert {d}/crc.pt", "corrupt file"),
    ("text-as-pt", "convert {d}/text.pt", "not a readable PyTorch file (it starts with text"),
    ("legacy-pickle", "convert {d}/legacy.pt --arch digits-cnn --arch-kwargs {{}}", "legacy pickle file"),
    ("missing", "eval {d}/nope.pt", "does not exist"),
    # malformed architecture records
    ("bad-arch", "convert {d}/bad_arch.pt", "architecture name is ['digits-cnn']"),
    ("bad-kwargs", "inspect thresholds {d}/bad_kwargs.pt", "not a dict of names"),
    ("bad-kwarg-value", "convert {d}/bad_kwarg_value.pt", "bad_kwarg_value.pt"),
    # 3. bare state_dict: the architecture's arguments are required, and must be JSON
    ("bare-no-kwargs", "convert {d}/bare.pt --arch digits-cnn", "--arch-kwargs"),
    ("bare-bad-json", "convert {d}/bare.pt --arch digits-cnn --arch-kwargs {{levels:2}}", "not JSON"),
    ("bare-wrong-kwargs", "convert {d}/bare.pt --arch digits-cnn --arch-kwargs {{\"levels\":2}}", "do not fit"),
    ("unrecorded-normalization", "eval {d}/plain.pt --data mnist:{d}/mnist28", "does not record how its inputs"),
    ("bad-normalize", "eval {d}/plain.pt --data mnist:{d}/mnist28 --normalize 0.1", "--normalize '0.1' is not"),
    ("normalize-disagrees", "eval {d}/good.pt --normalize 0.5/0.5", "--normalize 0.5/0.5 disagrees"),
    # 4. outputs that cannot be written (every writer), overwrites without --force
    ("ro-convert", "convert {d}/good.pt -o {d}/blocker/x.snn.onnx", "is not a directory"),
    ("ro-convert-torch", "convert {d}/good.pt --format torch -o {d}/blocker/x.pt", "is not a directory"),
    ("ro-eval-plot", "eval {d}/good.pt --plot {d}/blocker/a.png", "is not a directory"),
    ("ro-eval-record", "eval {d}/good.pt --runs-dir {d}/blocker/runs", "cannot write run records"),
    ("ro-inspect-plot", "inspect thresholds {d}/good.pt --plot {d}/blocker/t.png", "is not a directory"),
    ("ro-bench", "bench {d}/good.pt -o {d}/blocker/b.json", "is not a directory"),
    ("ro-report", "report -o {d}/blocker/r.html", "is not a directory"),
    ("ro-prepare", "prepare {d}/relu.pt -o {d}/blocker/q.pt", "is not a directory"),
    ("ro-train", "train --arch digits-cnn -o {d}/blocker/t.pt", "is not a directory"),
    ("output-is-dir", "convert {d}/good.pt --format torch -o {d}/mnist28", "is a directory"),
    ("exists-convert", "convert {d}/good.pt --format torch -o {d}/taken.pt", "already exists; pass --force"),
    ("exists-two-stage", "train --arch digits-cnn --two-stage 1,1 -o {d}/x-digits.pt",
     "x-digits.stage1.pt already exists"),
    ("exists-resume-o", "train --resume {d}/r.last.pt -o {d}/taken.pt", "taken.pt already exists"),
    # wrong shapes and sizes
    ("input-shape-convert", "convert {d}/good.pt --input-shape 3,32,32", "does not run on --input-shape 3,32,32"),
    ("input-shape-inspect", "inspect graph {d}/good.pt --input-shape 1,28,28", "does not run on --input-shape"),
    ("input-shape-junk", "convert {d}/good.pt --input-shape 1,x", "--input-shape must be"),
    ("input-shape-huge", "convert {d}/good.pt --input-shape 1,100000,100000", "not the shape of one sample"),
    ("eval-wrong-data", "eval {d}/good.pt --data mnist:{d}/mnist28", "does not run on dataset"),
    ("calibration-wrong-shape", "prepare {d}/relu.pt --data mnist:{d}/mnist28", "does not run on calibration data"),
    ("bench-batch", "bench {d}/good.pt --batch 1000000000", "above the limit of 65536"),
    ("eval-batch", "eval {d}/good.pt --batch-size 1000000000", "1<=x<=65536"),
    ("bench-repeats", "bench {d}/good.pt --repeats -1", "--repeats"),
    # damaged data, user modules
    ("corrupt-gzip", "eval {d}/plain.pt --data mnist:{d}/badgz --normalize dataset", "corrupt gzip file"),
    ("arch-module-syntax", "convert {d}/good.pt --arch-module {d}/syntax_error.py", "syntax error at line 1"),
    ("arch-module-raises", "models --arch-module {d}/raises.py", "failed while it ran (RuntimeError"),
    ("arch-module-missing", "convert {d}/good.pt --arch-module {d}/nope.py", "does not exist"),
    ("arch-module-dotted", "convert {d}/good.pt --arch-module no_such_package_xyz", "cannot import"),
]


def _snapshot(*dirs: Path) -> dict[str, tuple[int, int]]:
    return {str(p): (p.stat().st_size, p.stat().st_mtime_ns) for d in dirs if d.exists() for p in d.rglob("*")}


@pytest.mark.parametrize("case,argv,expect", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_nonzero_and_changes_nothing(files, case, argv, expect, capsys, tmp_path):
    args = [a.format(d=files) for a in argv.split(" ")]
    runs = Path(os.environ["ANN2SNN_RUNS"])
    before = _snapshot(files, runs, Path.cwd() / "runs")
    cwd = os.getcwd()
    os.chdir(tmp_path)  # anything a command would write by default lands here
    try:
        code, _, err = run_cli(args, capsys)
    finally:
        os.chdir(cwd)
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert code != 0, err
    assert len(lines) == 1 and lines[0].startswith("error: ") and expect in lines[0], err
    assert "Traceback" not in err
    assert _snapshot(files, runs, Path.cwd() / "runs") == before
    assert list(tmp_path.iterdir()) == []


def test_a_bad_record_does_not_break_runs(tmp_path, capsys):
    from ann2snn.runs import write_record

    runs = tmp_path / "runs"
    write_record("train", config={"model": "a.pt"}, metrics={"test_accuracy": 0.5}, directory=runs)
    (runs / "broken.json").write_text("{ not json")
    (runs / "foreign.json").write_text(json.dumps({"kind": "eval", "id": 3}))
    (runs / "odd-eval.json").write_text(json.dumps({"id": "odd", "kind": "eval", "config": {}, "metrics":
                                                    {"per_T": "not a list"}}))
    code, out, err = run_cli(["runs", "--dir", str(runs)], capsys)
    assert code == 0 and "a.pt" in out and "odd" in out and "Traceback" not in out + err
    assert "skipped broken.json" in err and "skipped foreign.json" in err
    code, out, err = run_cli(["report", "--dir", str(runs), "--no-images", "-o", str(tmp_path / "r.html")], capsys)
    assert code == 0 and (tmp_path / "r.html").exists() and "skipped" in err
    code, _, err = run_cli(["report", "odd", "--dir", str(runs), "--no-images", "-o", str(tmp_path / "s.html")],
                           capsys)
    assert code == 1 and err.startswith("error: run record 'odd' cannot be rendered") and len(err.splitlines()) == 1


def test_user_file_names_print_literally(files, tmp_path, capsys):
    odd = tmp_path / "m[red]x.pt"
    odd.write_bytes((files / "good.pt").read_bytes())
    code, out, _ = run_cli(["convert", str(odd), "--format", "torch"], capsys)
    assert code == 0 and "m[red]x.snn.pt" in out.replace("\n", "")
    code, _, err = run_cli(["convert", str(tmp_path / "[bold]gone.pt")], capsys)
    assert code == 1 and "[bold]gone.pt" in err


def test_arch_module_does_not_shadow_installed_modules(tmp_path):
    import json as real_json

    (tmp_path / "json.py").write_text("SHADOW = True\n")
    ann2snn.models.import_arch_module(str(tmp_path / "json.py"))
    assert sys.modules["json"] is real_json and not hasattr(sys.modules["json"], "SHADOW")
    assert any(getattr(m, "SHADOW", False) for n, m in list(sys.modules.items()) if n.startswith("_ann2snn_arch"))


def test_arch_module_help_says_it_runs_code(capsys):
    code, out, _ = run_cli(["convert", "--help"], capsys)
    assert code == 0 and "RUNS the module's code" in out.replace("\n", " ")


def test_verbose_shows_the_traceback_of_a_bad_input(files):
    with pytest.raises(ann2snn.CheckpointError, match="corrupt file"):
        main(["--verbose", "convert", str(files / "crc.pt")])


def test_ctrl_c_at_start_up_is_one_line(tmp_path):
    """Ctrl-C while the command starts (importing torch: `import ann2snn` no longer does) or runs: no traceback,
    exit 130. (Before main() only the interpreter's own start-up and `import click` remain.)"""
    env = {**os.environ, "ANN2SNN_RUNS": str(tmp_path / "runs")}
    p = subprocess.Popen([sys.executable, "-c", "from ann2snn.cli.main import main; print('up', flush=True); "
                          "main(['models'])"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    assert p.stdout.readline().strip() == "up"
    time.sleep(0.2)  # inside the command, while torch and the zoo load
    p.send_signal(signal.SIGINT)
    out, err = p.communicate(timeout=120)
    assert p.returncode in (0, 130), err  # 0: the machine was fast enough to finish first
    assert "Traceback" not in err
    if p.returncode == 130:
        assert [ln for ln in err.splitlines() if ln.strip()][-1].startswith("aborted")
