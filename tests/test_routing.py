"""One path for every operation: the CLI, the Python API and snapverd's socket all run
through the operations table (snapver/ops.py), so a user who may not touch the lake,
served by snapverd, gets the same JSON as root's own direct call."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from snapver import api, endpoint, ops
from snapver.errors import SnapverError
from tests.fixtures.daemon import NOBODY, Snapverd, as_user
from tests.fixtures.git import env


def cli(repo: Path, *args: str, socket: Path, user: str | None = None, ok: bool = True):
    """`snapver ARGS` in repo, as root or as user; root may read the user's repository."""
    e = {**env(), "SNAPVER_SOCKET": str(socket), "GIT_CONFIG_COUNT": "1",
         "GIT_CONFIG_KEY_0": "safe.directory", "GIT_CONFIG_VALUE_0": str(repo)}
    e.pop("SNAPVER_DIRECT", None)
    argv = [sys.executable, "-m", "snapver", *args]
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
    done = subprocess.run(argv, cwd=repo, env=e, capture_output=True, text=True, timeout=120)
    assert (done.returncode == 0) == ok, f"snapver {' '.join(args)} as {user or 'root'}: {done.stderr}{done.stdout}"
    return json.loads(done.stdout) if ok else done.stderr


def test_a_user_through_snapverd_gets_what_root_gets_directly(nobody_repo, daemon_dir):
    d = Snapverd(daemon_dir, [nobody_repo]).start()
    try:
        def train():
            endpoint.SOCKET = d.socket  # the child's own copy of the module: where snapverd listens
            api.snapshot(wip=False, cwd=nobody_repo)  # HEAD's commit snapshot
            (nobody_repo / "models" / "model.pt").write_text("weights after epoch 1")
            return api.snapshot(message="epoch 1", metrics={"accuracy": 0.93}, cwd=nobody_repo)

        ok, taken = as_user(NOBODY, train)
        assert ok, taken
        asked = d.log.read_text()
        assert "asks snapshot" in asked, "api.snapshot did not go through snapverd as `snapver snapshot` does"

        for args in (["show", "HEAD", "--json"], ["show", taken["models"], "--json"],
                     ["log", "--all", "--metric", "accuracy", "--json"], ["gc", "--dry-run", "--json"]):
            served = cli(nobody_repo, *args, socket=d.socket, user="nobody")
            direct = cli(nobody_repo, *args, socket=d.socket)
            assert served == direct, args
            assert f"asks {args[0]} on {nobody_repo}" in d.log.read_text(), f"{args[0]} did not go through snapverd"

        logged = cli(nobody_repo, "log", "--all", "--metric", "accuracy", "--json", socket=d.socket, user="nobody")
        assert [(e["metrics"], set(e["volumes"])) for e in logged if e["name"] == taken["models"]] == \
            [({"accuracy": 0.93}, set(taken))]
        shown = cli(nobody_repo, "show", taken["models"], "--json", socket=d.socket, user="nobody")
        assert shown["metrics"] == {"accuracy": 0.93} and shown["volumes"]["models"]["name"] == taken["models"]

        # What would remove snapshots is root's or the owner's call: refused in one line, nothing gone.
        before = cli(nobody_repo, "log", "--all", "--json", socket=d.socket)
        err = cli(nobody_repo, "gc", socket=d.socket, user="nobody", ok=False)
        assert "--dry-run" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
        assert cli(nobody_repo, "log", "--all", "--json", socket=d.socket) == before
    finally:
        d.stop()


def test_snapverd_runs_for_a_user_only_what_the_table_serves():
    """What changes what only the lake's owner decides, writes where the caller says, walks
    every file or sends streams as root is refused before any workspace is touched."""
    refused = {name for name, entry in ops.OPS.items() if not entry.served}
    assert {"restore", "push", "pull", "derive", "release-create", "reindex", "clones-forget", "init"} <= refused
    for name in sorted(refused):
        with pytest.raises(SnapverError, match=f"does not run {name} for a user"):
            ops.perform(None, name, {}, served=True)
    with pytest.raises(SnapverError, match="unknown operation"):
        ops.perform(None, "daemon-reload", {}, served=True)
