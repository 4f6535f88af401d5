"""The repo layout keeps Python's own ``ssl`` module importable."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_no_ssl_package_init():
    assert not (ROOT / "ssl" / "__init__.py").exists()


def test_import_ssl_from_repo_root_is_stdlib():
    # Run from the repo root, where a directory named ssl/ sits on sys.path[0].
    code = ("import ssl, sys; print(ssl.__file__); assert hasattr(ssl, 'create_default_context'); "
            "ssl.create_default_context()")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "ssl/__init__.py" not in out.stdout and out.stdout.strip().endswith("ssl.py")


def test_selfsup_imports_from_source_root():
    code = "import selfsup.config, ssl; assert hasattr(ssl, 'SSLContext')"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         env={"PYTHONPATH": str(ROOT / "ssl"), "PATH": ""})
    assert out.returncode == 0, out.stderr
