"""A lake on a storage server, compute nodes seeing it through a network mount (issue 18).

The server and two nodes are network namespaces on this host (tests/fixtures/netns.py): a
real sshd on the server's side, each node's key a forced command (`snapver serve
--restrict`), the lake (Btrfs, zfs-fuse) on the server, mounted on each node with sshfs
standing for NFS. Git and snapver run on the nodes; every operation on a workspace goes to
the server over ssh, and the node reads the result through its mount."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.fixtures.git import git

SNAPVER = [sys.executable, "-m", "snapver"]
SERVER_SNAPVER = str(Path(sys.executable).with_name("snapver"))


def serve(lab, lake, grants: dict[str, tuple[list[str], str]]) -> Path:
    """snapverd.toml with [serve] and a [[clients]] entry per key name; authorized_keys with
    the forced command for each node's key, and a plain sftp key each for its mount."""
    config = lab.home / "snapverd.toml"
    clients = "".join(f'\n[[clients]]\nkey = "{k}"\nprojects = {json.dumps(p)}\naccess = "{a}"\n'
                      for k, (p, a) in grants.items())
    config.write_text(f'[serve]\nworkspaces = "{lab.home / "workspaces"}"\nlakes = ["{lake.spec}"]\n{clients}')
    lines = []
    for n in lab.nodes:
        forced = f"{SERVER_SNAPVER} serve --restrict --key node{n.index} --config {config}"
        lines.append(f'command="{forced}",restrict {lab.public(n.key)}')
        lines.append(f"restrict {lab.public(n.mount_key)}")  # the mount (NFS in production)
    lab.authorize(lines)
    return config


def url(node, lake) -> str:
    return f"ssh://root@{node.server_ip}{lake.spec if lake.backend == 'btrfs' else '/' + lake.spec}"


def attach(node, lake, origin: Path, where: Path, ok: bool = True):
    """A node's clone of origin, set up on the server's lake through its mount."""
    subprocess.run(["git", "clone", "-q", str(origin), str(where)], check=True, capture_output=True)
    mnt = node.mount(lake.root, where.parent / f"mnt{node.index}")
    done = node.run([*SNAPVER, "init", "--lake", url(node, lake), "--mount", mnt,
                     *(["--backend", "zfs"] if lake.backend == "zfs" else [])], cwd=where, check=ok)
    return done


def commit(node, where: Path, message: str) -> tuple[str, str]:
    done = node.run(["git", "commit", "-q", "-a", "--allow-empty", "-m", message], cwd=where)
    return git(where, "rev-parse", "HEAD"), done.stderr


@pytest.fixture
def origin(repo, tmp_path) -> Path:
    bare = tmp_path / "origin.git"
    subprocess.run(["git", "clone", "-q", "--bare", str(repo), str(bare)], check=True)
    return bare


def test_two_nodes_commit_and_check_out_at_once_through_the_server(storage_lab, lake, origin, tmp_path):
    lab = storage_lab
    n1, n2 = lab.nodes
    serve(lab, lake, {"node1": (["*"], "read-write"), "node2": (["*"], "read-write")})
    w1 = tmp_path / "w1"
    attach(n1, lake, origin, w1)
    assert (w1 / "data").is_symlink() and str((w1 / "data").readlink()).startswith(str(tmp_path / "mnt1"))
    git(w1, "add", "snapver.toml")
    commit(n1, w1, "snapver")
    (w1 / "data" / "a.txt").write_text("v1")
    v1, said = commit(n1, w1, "v1")
    assert f"snapshot {v1[:7]}" in said
    git(w1, "push", "-q", "origin", "main")
    w2 = tmp_path / "w2"
    attach(n2, lake, origin, w2)
    assert (w2 / "data" / "a.txt").read_text() == "v1", "the second node joins at HEAD's snapshot"

    failures: list[str] = []

    def work(node, where: Path, text: str) -> None:
        try:
            (where / "data" / "a.txt").write_text(text)
            (where / "data" / f"only-{text}").write_text(text)
            mine, _ = commit(node, where, text)
            for _ in range(2):
                node.run(["git", "checkout", "-q", v1], cwd=where)
                # Read right after the command returned: the mount shows the server's swap
                # (names, attributes and contents: no cache of the mount's may lag behind).
                if (where / "data" / "a.txt").read_text() != "v1" or \
                        sorted(os.listdir(where / "data")) != ["a.txt"]:
                    failures.append(f"{text}: not v1 after checking out v1")
                node.run(["git", "checkout", "-q", "main"], cwd=where)
                if (where / "data" / "a.txt").read_text() != text or \
                        sorted(os.listdir(where / "data")) != ["a.txt", f"only-{text}"]:
                    failures.append(f"{text}: not its own commit's data after checking out main")
            log = json.loads(node.run([*SNAPVER, "log", "--json"], cwd=where).stdout)
            if not any(e["name"] == mine and "data" in e["volumes"] for e in log):
                failures.append(f"{text}: no snapshot of its commit in the log")
        except AssertionError as e:
            failures.append(str(e))

    threads = [threading.Thread(target=work, args=(n, w, t)) for n, w, t in ((n1, w1, "one"), (n2, w2, "two"))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures, failures

    # A read-only view of a snapshot for a long job: under the mount, v1's data, not writable.
    view = Path(n1.run([*SNAPVER, "path", v1, "data"], cwd=w1).stdout.strip())
    assert str(view).startswith(str(tmp_path / "mnt1")), view
    assert (view / "a.txt").read_text() == "v1"
    with pytest.raises(OSError):
        (view / "a.txt").write_text("changed")
    assert (view / "a.txt").read_text() == "v1"
    # A file put back from a snapshot, by the server, into the live volume the node sees.
    n1.run([*SNAPVER, "restore", v1, "data/a.txt"], cwd=w1)
    assert (w1 / "data" / "a.txt").read_text() == "v1"


def test_a_nodes_key_reaches_its_projects_only_and_runs_no_shell(storage_lab, lake, origin, tmp_path):
    lab = storage_lab
    n1, n2 = lab.nodes
    serve(lab, lake, {"node1": (["granted"], "read-write"), "node2": (["granted"], "read-only")})
    for words, expected in (((), "no shell"), (("sh", "-c", "id"), "runs `snapver serve` only"),
                            (("snapver", "serve", "--workspace", "other/x"), "may not reach project other")):
        done = n1.ssh(*words)
        assert done.returncode != 0 and expected in done.stderr, (words, done.stderr, done.stdout)
        assert "uid=" not in done.stdout
    # init of a project the key does not reach: refused in one line, nothing changed here.
    w1 = tmp_path / "w1"
    subprocess.run(["git", "clone", "-q", str(origin), str(w1)], check=True)
    (w1 / "snapver.toml").write_text('[project]\nid = "other"\nbackend = "%s"\nvolumes = ["data"]\n' % lake.backend)
    mnt = n1.mount(lake.root, tmp_path / "mnt1")
    done = n1.run([*SNAPVER, "init", "--lake", url(n1, lake), "--mount", mnt], cwd=w1, check=False)
    assert done.returncode != 0 and "may not reach project other" in done.stderr, done.stderr
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr
    assert not (w1 / "data").exists() and not (w1 / ".git" / "snapver" / "remote-lake.json").exists()
    assert not (lab.home / "workspaces" / "other").exists()
    # A read-only key: the project reached, but no init, snapshot or checkout.
    w2 = tmp_path / "w2"
    subprocess.run(["git", "clone", "-q", str(origin), str(w2)], check=True)
    (w2 / "snapver.toml").write_text('[project]\nid = "granted"\nbackend = "%s"\nvolumes = ["data"]\n' % lake.backend)
    done = n2.run([*SNAPVER, "init", "--lake", url(n2, lake), "--mount", n2.mount(lake.root, tmp_path / "mnt2")],
                  cwd=w2, check=False)
    assert done.returncode != 0 and "read-only" in done.stderr, done.stderr


def test_a_commit_while_the_server_is_away_gets_its_snapshot_when_it_is_back(storage_lab, lake, origin, tmp_path):
    lab = storage_lab
    n1 = lab.nodes[0]
    serve(lab, lake, {"node1": (["*"], "read-write"), "node2": (["*"], "read-write")})
    w1 = tmp_path / "w1"
    attach(n1, lake, origin, w1)
    git(w1, "add", "snapver.toml")
    commit(n1, w1, "snapver")
    (w1 / "data" / "a.txt").write_text("v1")
    commit(n1, w1, "v1")
    (w1 / "data" / "a.txt").write_text("v2")
    n1.link(False)  # the server goes away
    try:
        v2, said = commit(n1, w1, "v2")  # Git carries on: the commit is made
        lines = [x for x in said.splitlines() if x.strip()]
        assert len(lines) == 1 and "cannot reach the lake's server" in lines[0] and v2[:10] in lines[0], said
        assert "(Git carried on)" in lines[0]
        pending = (w1 / ".git" / "snapver" / "pending").read_text()
        assert v2 in pending
    finally:
        n1.link(True)  # and comes back
    done = n1.run([*SNAPVER, "status"], cwd=w1)
    assert "made while the server was unreachable: snapshotted now" in done.stderr, done.stderr
    assert not (w1 / ".git" / "snapver" / "pending").exists()
    log = json.loads(n1.run([*SNAPVER, "log", "--json"], cwd=w1).stdout)
    assert any(e["name"] == v2 and "data" in e["volumes"] for e in log)
    view = Path(n1.run([*SNAPVER, "path", v2, "data"], cwd=w1).stdout.strip())
    assert (view / "a.txt").read_text() == "v2"
