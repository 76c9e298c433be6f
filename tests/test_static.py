"""Static checks, as CI runs them: mypy on the package and ruff's small rule set on package
and tests. They fail with the tools' own report, so the line to fix is in the test output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def run(*argv: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", *argv], cwd=ROOT, capture_output=True, text=True)


def test_mypy_is_clean_on_the_package():
    done = run("mypy", "snapver")
    assert done.returncode == 0, done.stdout + done.stderr


def test_ruff_is_clean():
    done = run("ruff", "check", "snapver", "tests", "bench")
    assert done.returncode == 0, done.stdout + done.stderr
