"""The wheel (issue 20, item 5): built from the source tree as a user's pip would (setuptools
from [build-system], setup.py's build step), installed with pipx into a fresh venv, and run
as installed: `snapver --version`, `snapver hooks install` (hooks/ must be in the wheel:
there is no source tree next to it), and `snapver service install` (systemd/ likewise, and
ExecStart is the pipx command). Needs PyPI, as pipx does; about a minute."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

from snapver.hookfiles import HOOKS

from tests.fixtures.git import git

ROOT = Path(__file__).resolve().parent.parent


def run(argv, **kw) -> str:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=600, **kw)
    assert done.returncode == 0, f"{' '.join(map(str, argv))}: {done.stderr[-2000:]}{done.stdout[-2000:]}"
    return done.stdout


def test_the_wheel_installs_with_pipx_and_carries_hooks_and_units(tmp_path, repo):
    # A copy of the tree (what git has and would have): the build writes build/ into it.
    src = tmp_path / "src"
    for rel in run(["git", "ls-files", "-co", "--exclude-standard"], cwd=ROOT).splitlines():
        if (ROOT / rel).is_file() or (ROOT / rel).is_symlink():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel, follow_symlinks=False)
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", tmp_path / "dist", src])
    wheel = next((tmp_path / "dist").glob("snapver-*.whl"))

    env = {**os.environ, "PIPX_HOME": str(tmp_path / "pipx"), "PIPX_BIN_DIR": str(tmp_path / "bin")}
    env.pop("PYTHONPATH", None)
    run(["pipx", "install", wheel], env=env)
    command = tmp_path / "bin" / "snapver"
    assert run([command, "--version"], env=env).startswith("snapver, version ")

    python = tmp_path / "pipx" / "venvs" / "snapver" / "bin" / "python"
    run([command, "hooks", "install"], cwd=repo, env=env)
    for name in HOOKS:
        installed = (repo / ".git" / "hooks" / name).read_text()
        assert installed == (ROOT / "hooks" / name).read_text().replace("@PYTHON@", str(python)), name

    root = tmp_path / "root"
    root.mkdir()
    run([command, "service", "install", "--root", root], cwd=repo, env=env)
    unit = (root / "etc/systemd/system/snapverd.service").read_text()
    assert f"ExecStart={command} daemon --config /etc/snapver/snapverd.toml" in unit.splitlines()
    git(repo, "status")  # the repository is still fine
