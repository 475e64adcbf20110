"""The public API: every exported name imports; `import ann2snn` stays free of CLI dependencies."""

from __future__ import annotations

import subprocess
import sys

import ann2snn


def test_every_public_name_imports():
    for name in ann2snn.__all__:
        assert getattr(ann2snn, name) is not None, name


def test_import_does_not_pull_cli_dependencies():
    code = ("import sys, ann2snn; bad = [m for m in ('click', 'rich', 'matplotlib') if m in sys.modules]; "
            "print(','.join(bad)); sys.exit(1 if bad else 0)")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, f"import ann2snn imported: {r.stdout.strip()} {r.stderr[-500:]}"


def test_version_has_one_home():
    from ann2snn import _version

    # package modules read the version from ann2snn._version (importing ann2snn from inside it is a cycle)
    assert ann2snn.__version__ == _version.__version__
