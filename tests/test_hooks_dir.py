"""hooks/ is the source of the Git hook shims (issue 20, item 4), and .pre-commit-hooks.yaml
runs them for teams that manage hooks with pre-commit. Pure file checks, plus one real
install into a repository: no filesystem lake needed."""

from __future__ import annotations

import importlib
import os
import subprocess
import sys
from pathlib import Path

import yaml

from snapver.hookfiles import HOOKS, shim_text
from snapver.precommit import ARGS

from tests.fixtures.git import lake_repo, snapver  # noqa: F401

ROOT = Path(__file__).resolve().parent.parent
HOOKS_DIR = ROOT / "hooks"
# pre-commit's own names for the stages a hook may run at (its clientlib's STAGES).
PRE_COMMIT_STAGES = {"commit-msg", "post-checkout", "post-commit", "post-merge", "post-rewrite", "pre-commit",
                     "pre-merge-commit", "pre-push", "pre-rebase", "prepare-commit-msg", "manual"}


def test_installed_hooks_are_hooks_dir_with_this_interpreter(repo):
    assert sorted(p.name for p in HOOKS_DIR.iterdir() if p.name != "snapver-hook.sh") == sorted(HOOKS)
    subprocess.run(["git", "config", "core.hooksPath", ".git/hooks"], cwd=repo, check=True)
    snapver(repo, "hooks", "install")
    for name in HOOKS:
        installed = (repo / ".git" / "hooks" / name).read_text()
        source = (HOOKS_DIR / name).read_text()
        assert installed == source.replace("@PYTHON@", sys.executable), name
        assert installed == shim_text(HOOKS_DIR / name)
        assert os.access(repo / ".git" / "hooks" / name, os.X_OK)
    assert "@PYTHON@" in (HOOKS_DIR / "snapver-hook.sh").read_text()


def test_pre_commit_manifest_is_valid_and_names_existing_entry_points():
    manifest = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert isinstance(manifest, list) and manifest
    ids = [h["id"] for h in manifest]
    assert len(ids) == len(set(ids))
    stages = set()
    for h in manifest:
        assert {"id", "name", "entry", "language"} <= set(h), h  # pre-commit's required keys
        assert set(h) <= {"id", "name", "entry", "language", "stages", "always_run", "pass_filenames",
                          "description"}, h
        assert h["language"] == "python" and h["pass_filenames"] is False and h["always_run"] is True
        assert set(h["stages"]) <= PRE_COMMIT_STAGES and len(h["stages"]) == 1, h
        stage = h["stages"][0]
        stages.add(stage)
        # The entry: `python -m <module> <hook>`, a module that imports, for a hook it runs,
        # whose shim is in hooks/.
        python, dash_m, module, hook = h["entry"].split()
        assert (python, dash_m, hook) == ("python", "-m", stage), h
        assert hasattr(importlib.import_module(module), "main")
        assert hook in ARGS and hook in HOOKS and (HOOKS_DIR / hook).is_file()
    assert stages == {"post-commit", "post-checkout", "post-merge", "post-rewrite", "pre-push"}


def test_the_pre_commit_entry_runs_the_shim_with_gits_arguments(lake_repo):
    """As pre-commit runs it: a commit made with snapver's own hooks skipped gets its snapshot
    from `python -m snapver.precommit post-commit`; and post-checkout's arguments, which
    pre-commit passes only as PRE_COMMIT_* variables, reach the shim (a branch checkout of
    the commit the lake is at: nothing to do, exit 0)."""
    from tests.fixtures.git import git

    (lake_repo / "data" / "rows.csv").write_text("1\n")
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "rows"], cwd=lake_repo, check=True,
                   env={**os.environ, "SNAPVER_SKIP": "1"})
    head = git(lake_repo, "rev-parse", "HEAD")
    snapver(lake_repo, "show", head, ok=False)  # no snapshot yet: the hooks were skipped
    env = {k: v for k, v in os.environ.items() if k != "SNAPVER_SKIP"}
    done = subprocess.run([sys.executable, "-m", "snapver.precommit", "post-commit"], cwd=lake_repo, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert snapver(lake_repo, "show", head, "--json").json["commit"] == head
    env.update(PRE_COMMIT_FROM_REF=head, PRE_COMMIT_TO_REF=head, PRE_COMMIT_CHECKOUT_TYPE="1")
    done = subprocess.run([sys.executable, "-m", "snapver.precommit", "post-checkout"], cwd=lake_repo, env=env,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    done = subprocess.run([sys.executable, "-m", "snapver.precommit", "pre-commit"], cwd=lake_repo,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 2 and "HOOK one of" in done.stderr
