"""The root daemon and a user who is not root: what that user can and cannot make it do.

The threat model is SECURITY.md's: a user owns their working tree (so everything in it and
in its .git, symlinks included) and may talk to snapverd's socket; they must not act on
anyone else's workspace, nor make root read, write, snapshot or delete outside their own.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import stat
import subprocess
import tempfile
from pathlib import Path

import pytest

from snapver import client
from tests.fixtures.daemon import NOBODY, Snapverd, as_user
from tests.fixtures.git import env, git, snapver

SECRET = "root's secret, 424242"


@pytest.fixture
def victim():
    """A file only root may read or write, in a folder anyone may pass through."""
    folder = Path(tempfile.mkdtemp(prefix="snapver-victim-"))
    folder.chmod(0o755)
    secret = folder / "creds.json"
    secret.write_text('{"api_key": 424242, "note": "%s"}' % SECRET)
    secret.chmod(0o600)
    yield secret
    shutil.rmtree(folder, ignore_errors=True)


def ask(socket: Path, op: str, workspace: Path | str, **args):
    return lambda: client.request({"op": op, "workspace": str(workspace), **args}, path=socket, timeout=120)


def test_the_socket_refuses_other_users_workspaces(lake_repo, nobody_repo, daemon_dir, tmp_path):
    d = Snapverd(daemon_dir, [lake_repo, nobody_repo]).start()
    try:
        ok, answer = as_user(NOBODY, ask(d.socket, "snapshot", nobody_repo, wip=True))
        assert ok, answer  # their own workspace: served
        link = nobody_repo.parent / "innocent"  # a path of theirs that leads to root's repo
        os.symlink(lake_repo, link)
        for path in (lake_repo, link, f"{nobody_repo}/../../{lake_repo.parent.name}/{lake_repo.name}",
                     f"{lake_repo}/.", f"{lake_repo}/data"):
            for op, args in (("snapshot", {"wip": True}), ("checkout", {"rev": "HEAD"}), ("log", {}),
                             ("rewrite", {"pairs": []}), ("status", {})):
                ok, answer = as_user(NOBODY, ask(d.socket, op, path, **args))
                assert not ok and ("may not act on" in answer or "does not watch" in answer), (path, op, answer)
        ok, status = as_user(NOBODY, lambda: client.request({"op": "daemon-status"}, path=d.socket))
        assert ok and [w["workspace"] for w in status] == [str(nobody_repo)], "root's workspace is not shown"
        assert not [e for e in snapver(lake_repo, "log", "--all", "--json").per_volume if e["kind"] == "wip"]
    finally:
        d.stop()


@pytest.mark.parametrize("planted", [".workspace.json.tmp", ".lake-at.tmp", "lock"])
def test_a_symlink_planted_in_git_dir_is_not_followed_by_root(nobody_repo, daemon_dir, victim, planted):
    state = nobody_repo / ".git" / "snapver"
    d = Snapverd(daemon_dir, [nobody_repo]).start()
    try:
        def plant_and_ask():
            path = state / planted
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
            os.symlink(victim, path)
            (nobody_repo / "models" / "m.pt").write_text("weights")
            return ask(d.socket, "snapshot", nobody_repo)()

        ok, answer = as_user(NOBODY, plant_and_ask)
        assert victim.read_text().endswith(f'"{SECRET}"}}'), "root wrote through the user's symlink"
        assert stat.S_IMODE(victim.stat().st_mode) == 0o600 and victim.stat().st_uid == 0
        if planted == "lock":
            assert not ok and "is a symbolic link" in answer, answer
        else:
            assert ok, answer
            assert {s["volume"] for s in answer} == {"data", "models", "logs"}
            owner = nobody_repo.stat().st_uid
            assert all((state / f).stat().st_uid == owner for f in ("workspace.json", "lake-at"))
    finally:
        d.stop()


def test_metrics_behind_a_symlink_are_not_read_by_root(nobody_repo, lake, daemon_dir, victim):
    toml = nobody_repo / "snapver.toml"
    toml.write_text(toml.read_text() + '\n[registry]\nmetrics = ["models/metrics.json"]\n'
                    'params = ["conf/creds.json"]\n')
    d = Snapverd(daemon_dir, [nobody_repo]).start()
    try:
        def plant_and_ask():
            os.symlink(victim, nobody_repo / "models" / "metrics.json")  # inside a volume
            os.symlink(victim.parent, nobody_repo / "conf")  # in the working tree, untracked
            return ask(d.socket, "snapshot", nobody_repo)()

        ok, answer = as_user(NOBODY, plant_and_ask)
        assert ok, answer
    finally:
        d.stop()
    with contextlib.closing(sqlite3.connect(lake.root / "catalog.db")) as db:
        dump = "\n".join(db.iterdump())
    assert "424242" not in dump and SECRET not in dump, "root recorded the file behind the symlink"
    assert "not read" in d.log.read_text()


def test_restore_does_not_follow_a_symlink_out_of_the_snapshot(lake_repo, victim):
    os.symlink(victim.parent, lake_repo / "models" / "elsewhere")
    git(lake_repo, "commit", "-q", "--allow-empty", "-m", "with a symlink in models")
    (lake_repo / "models" / "elsewhere").unlink()
    for path in ("models/elsewhere/creds.json", "models/elsewhere"):
        result = snapver(lake_repo, "restore", "HEAD", path, ok=None)
        if result.code == 0:  # the link itself may come back, as a link: never the file behind it
            assert (lake_repo / path).is_symlink() or not (lake_repo / path).exists()
        else:
            assert "outside the volume" in result.err and len(result.err.strip().splitlines()) == 1
    assert not any(SECRET in p.read_text() for p in (lake_repo / "models").rglob("*")
                   if p.is_file() and not p.is_symlink())


def test_files_are_created_with_tight_modes_whatever_the_umask(repo, lake, daemon_dir):
    """A root shell with umask 000 must not leave the lake or the state writable by others:
    a world-writable folder in the lake is where a user would plant a symlink for root."""
    done = subprocess.run(["sh", "-c", 'umask 000 && exec "$@"', "sh",
                           *_snapver_argv("init", *lake.init_args)], cwd=repo, env=env(),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    git(repo, "add", "snapver.toml")
    subprocess.run(["sh", "-c", 'umask 000 && exec git commit -q -m snapver'], cwd=repo, env=env(), check=True)
    subprocess.run(["sh", "-c", 'umask 000 && exec "$@"', "sh", *_snapver_argv("snapshot", "--wip")],
                   cwd=repo, env=env(), check=True, capture_output=True)
    state = repo / ".git" / "snapver"
    checked = [lake.root / "catalog.db", state / "workspace.json", state / "lake-at", state / "lock"]
    if lake.backend == "btrfs":  # ZFS datasets' folders are the pool's, not made by snapver
        checked += [p for p in lake.root.rglob("*") if p.is_dir() and not p.is_symlink()
                    and not _inside_volume(p, lake.root)]
    loose = [f"{p} {oct(stat.S_IMODE(p.stat().st_mode))}" for p in checked if p.stat().st_mode & 0o022]
    assert not loose, f"writable by group or others: {loose}"
    assert stat.S_IMODE((state / "lock").stat().st_mode) == 0o600
    # The socket is meant for everyone (each request is checked by SO_PEERCRED), so its folder
    # must not let anyone replace it.
    d = Snapverd(daemon_dir, [repo])
    d.proc = subprocess.Popen(["sh", "-c", 'umask 000 && exec "$@"', "sh",
                               *_snapver_argv("daemon", "--config", str(d.config))],
                              env={**env(), "SNAPVER_SOCKET": str(d.socket)},
                              stdout=open(d.log, "ab"), stderr=subprocess.STDOUT)
    try:
        from tests.fixtures.daemon import wait_for

        assert wait_for(d.answers, 20), d.log.read_text()
        assert stat.S_ISSOCK(d.socket.stat().st_mode) and d.socket.stat().st_uid == 0
        assert not d.socket.parent.stat().st_mode & 0o022
    finally:
        d.stop()


def _snapver_argv(*args: str) -> list[str]:
    import sys

    return [sys.executable, "-m", "snapver", *args]


def _inside_volume(path: Path, root: Path) -> bool:
    """Folders inside a volume or a snapshot are the user's own data, not snapver's."""
    parts = path.relative_to(root).parts
    return len(parts) > 3 and parts[1] in ("snapshots", "workspaces") or ".trash" in parts


def _forge(repo: Path, **fields) -> None:
    import json

    path = repo / ".git" / "snapver" / "workspace.json"
    doc = json.loads(path.read_text())
    doc.update(fields)
    path.write_text(json.dumps(doc))


def test_a_user_cannot_name_someone_elses_workspace_or_lake(lake_repo, nobody_repo, lake, daemon_dir):
    """workspace.json and snapver.toml are the user's to edit: root's workspace named there,
    or a lake of the user's own, is refused before anything is touched."""
    import json

    theirs = json.loads((lake_repo / ".git" / "snapver" / "workspace.json").read_text())
    root_project = (lake_repo / "snapver.toml").read_text()
    before = {(e["volume"], e["name"]) for e in snapver(lake_repo, "log", "--all", "--json").per_volume}
    (lake_repo / "models" / "m.pt").write_text("root's unsnapshotted work")
    fake_lake = lake.root / f"users-own-{os.urandom(3).hex()}"  # on the same filesystem
    fake_lake.mkdir()
    shutil.chown(fake_lake, "nobody", "nogroup")
    d = Snapverd(daemon_dir, [nobody_repo]).start()
    try:
        def forge_and_ask(**fields):
            def go():
                _forge(nobody_repo, **fields)
                (nobody_repo / "snapver.toml").write_text(root_project)  # root's project id too
                return [as_op() for as_op in (ask(d.socket, "snapshot", nobody_repo, wip=True),
                                              ask(d.socket, "checkout", nobody_repo, rev="HEAD"))]
            return go

        ok, answer = as_user(NOBODY, forge_and_ask(workspace=theirs["workspace"]))
        assert not ok and "is not" in answer and "own" in answer, answer
        if lake.backend == "btrfs":
            ok, answer = as_user(NOBODY, forge_and_ask(lake=str(fake_lake)))
            assert not ok and "only root may change" in answer, answer
    finally:
        d.stop()
    after = {(e["volume"], e["name"]) for e in snapver(lake_repo, "log", "--all", "--json").per_volume}
    assert after == before, "root's workspace was snapshotted for another user"
    assert (lake_repo / "models" / "m.pt").read_text() == "root's unsnapshotted work"
