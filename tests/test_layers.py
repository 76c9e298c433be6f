"""The layering of pyproject.toml's [tool.importlinter] holds: entry points > operations >
features > core > store and backends > leaves, no module importing upward (inside a
function too), no backend module imported outside backends/, and no import circle.
`lint-imports` checks it; its report is the failure."""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
LINT = Path(sys.executable).parent / "lint-imports"


def lint(root: Path) -> subprocess.CompletedProcess:
    # The package found first on the path is root's (a copy, below), not the installed one.
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run([str(LINT), "--no-cache", "--config", str(root / "pyproject.toml")],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)


def test_the_package_keeps_its_layers():
    done = lint(REPO)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "0 broken" in done.stdout


@pytest.mark.parametrize("module, added, broken", [
    # The core reaching up to a feature, as lake.py once did for `release:`.
    ("lake.py", "\n\ndef _upward():\n    from . import registry\n", "entry points > operations > features > core > store and backends > leaves"),
    # A backend module imported outside backends/, as transfer.open_lake once did.
    ("transfer.py", "\n\ndef _backend():\n    from .backends.zfs import dataset_mounted_at\n",
     "only the factory in backends/__init__.py imports a backend module"),
    # A leaf reaching into the core: a circle (journal imports lock) as well as upward.
    ("lock.py", "\n\ndef _circle():\n    from . import journal\n", "no import circles"),
])
def test_an_upward_import_or_a_circle_breaks_the_contract(tmp_path, module, added, broken):
    shutil.copytree(REPO / "snapver", tmp_path / "snapver", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    assert lint(tmp_path).returncode == 0  # the copy as it is keeps the contracts
    with open(tmp_path / "snapver" / module, "a") as f:
        f.write(added)
    done = lint(tmp_path)
    assert done.returncode != 0
    assert f"{broken} BROKEN" in done.stdout, done.stdout
