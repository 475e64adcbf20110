"""Writing files: atomic, never replacing without force, modes from the umask, one-line errors, no temp file left
behind by an error or by SIGTERM."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from ann2snn.errors import CheckpointError
from ann2snn.files import atomic_write, atomic_write_all, check_writable, file_mode, text_writer

ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_modes_follow_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        assert file_mode() == 0o666 & ~umask
        path = atomic_write(tmp_path / "a.json", text_writer("{}"))
        with open(tmp_path / "plain.txt", "w") as f:  # what any program gets
            f.write("x")
    finally:
        os.umask(old)
    assert path.stat().st_mode & 0o777 == (tmp_path / "plain.txt").stat().st_mode & 0o777 == 0o666 & ~umask


def test_existing_file_is_kept_without_force_even_if_it_appears_during_the_write(tmp_path):
    target = tmp_path / "out.txt"

    def racing_writer(tmp):
        Path(tmp).write_text("new")
        target.write_text("someone else's")  # appears after the up-front check

    with pytest.raises(CheckpointError, match="already exists"):
        atomic_write(target, racing_writer)
    assert target.read_text() == "someone else's"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.txt"]
    atomic_write(target, text_writer("new"), force=True)
    assert target.read_text() == "new"


@pytest.mark.parametrize("case", ["parent-is-file", "is-directory", "read-only-dir"])
def test_unwritable_targets_are_one_line_errors(tmp_path, case):
    if case == "read-only-dir" and ROOT:
        pytest.skip("root writes into read-only directories")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    ro = tmp_path / "ro"
    ro.mkdir()
    target = {"parent-is-file": blocker / "out.json", "is-directory": ro, "read-only-dir": ro / "out.json"}[case]
    ro.chmod(0o500)
    try:
        with pytest.raises(CheckpointError) as e:
            atomic_write(target, text_writer("{}"))
        assert "\n" not in str(e.value) and str(target.name) in str(e.value)
        with pytest.raises(CheckpointError):
            check_writable(target)
    finally:
        ro.chmod(0o700)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "ro"] and not list(ro.iterdir())


def test_write_errors_are_one_line_and_leave_no_temp_file(tmp_path):
    def fails(tmp):
        Path(tmp).write_text("half")
        raise OSError(28, "No space left on device")

    with pytest.raises(CheckpointError, match="cannot write .*No space left on device"):
        atomic_write(tmp_path / "x.bin", fails)
    assert list(tmp_path.iterdir()) == []


def test_a_set_of_files_is_written_whole_or_not_at_all(tmp_path):
    (tmp_path / "b.json").write_text("old")
    with pytest.raises(CheckpointError, match="already exists"):
        atomic_write_all([(tmp_path / "a.onnx", text_writer("a")), (tmp_path / "b.json", text_writer("b"))])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b.json"]  # checked before the first write


def test_sigterm_during_a_write_leaves_no_temp_file(tmp_path):
    """The CLI turns SIGTERM into an exception, so atomic_write's cleanup runs (the default would kill the process
    with a hidden .NAME.*.tmp file left beside the output). `report` writes a text file and imports no torch."""
    from ann2snn.runs import write_record

    write_record("train", config={}, metrics={"test_accuracy": 0.5}, directory=tmp_path / "runs")
    (tmp_path / "out").mkdir()
    out = tmp_path / "out" / "report.html"
    script = textwrap.dedent(f"""
        import pathlib, time
        import ann2snn.files as files
        def slow_writer(text):
            def write(tmp):
                pathlib.Path(tmp).write_text(text[:100])
                print("writing", flush=True)
                time.sleep(60)
            return write
        files.text_writer = slow_writer
        from ann2snn.cli.main import main
        main(["report", "-o", {str(out)!r}, "--dir", {str(tmp_path / "runs")!r}, "--no-images"])
    """)
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert p.stdout.readline().startswith("writing"), p.stderr.read()
        assert any(q.name.startswith(".report.html.") for q in out.parent.iterdir())  # the temporary file exists
        p.send_signal(signal.SIGTERM)
        _, err = p.communicate(timeout=60)
    finally:
        p.kill()
    assert p.returncode == 143
    assert [ln for ln in err.splitlines() if ln.strip()] == ["terminated (SIGTERM)"]
    assert list(out.parent.iterdir()) == []
