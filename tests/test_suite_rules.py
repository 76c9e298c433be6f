"""The suite's own rule holds in a parallel run too: with SNAPVER_REQUIRE_ALL=1 (scripts/test.sh,
so CI), a skipped test fails the run, whether pytest runs serially or spreads the tests over
pytest-xdist workers (there the verdict is the controller's, from the workers' reports)."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

SKIPS = {
    "in a test": "import pytest\n\ndef test_skipped():\n    pytest.skip('no fs here')\n\ndef test_ran():\n    pass\n",
    "a whole module": "import pytest\n\npytest.skip('no fs here', allow_module_level=True)\n\ndef test_x():\n    pass\n",
}


def run_pytest(folder: Path, *args: str, require_all: bool = True) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}  # not this run's worker
    env.update(PYTHONPATH=str(REPO), SNAPVER_REQUIRE_ALL="1" if require_all else "0")
    # -p tests.conftest: the suite's conftest (the rule lives there) for a test file outside the suite.
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "tests.conftest", "-p", "no:cacheprovider",
                           "--rootdir", str(folder), *args, str(folder)],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("where", SKIPS)
def test_a_skip_fails_a_parallel_run(tmp_path, where):
    workers = ("-n", "2")
    (tmp_path / "test_skipping.py").write_text(SKIPS[where])
    (tmp_path / "test_other.py").write_text("def test_fine():\n    pass\n")  # as the suite: others pass
    done = run_pytest(tmp_path, *workers)
    assert done.returncode == 1, done.stdout + done.stderr
    assert "skipped under SNAPVER_REQUIRE_ALL=1" in done.stdout, done.stdout
    if where == "in a test":  # the same files without the rule pass: the failure above is the rule's
        assert run_pytest(tmp_path, *workers, require_all=False).returncode == 0


def test_a_run_without_skips_passes_in_parallel(tmp_path):
    (tmp_path / "test_fine.py").write_text("def test_a():\n    pass\n\ndef test_b():\n    pass\n")
    done = run_pytest(tmp_path, "-n", "2")
    assert done.returncode == 0, done.stdout + done.stderr
    assert "2 passed" in done.stdout
