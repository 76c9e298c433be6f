"""push, pull and clone between real lakes: two more Btrfs images or zfs-fuse pools, and sshd on loopback.

Every test runs on both backends. The lake of the `lake` fixture is "here"; the far
lake sits on a filesystem of its own, and a second clone's lake on a third, so that
every stream really crosses from one filesystem to another.
"""

from __future__ import annotations

import fcntl
import json
import pty
import os
import socket
import sqlite3
import struct
import subprocess
import sys
import termios
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from snapver.transfer import open_lake
from tests.fixtures.btrfs import btrfs_image, need_root_and
from tests.fixtures.git import commit, env, git, snapver, tree_digest, write
from tests.fixtures.zfs import destroy_dataset, zfs_file_pool


@dataclass
class FarLake:
    backend: str
    spec: str  # as `snapver init --lake` takes it
    url: str  # as `snapver remote add` takes it

    @property
    def init_args(self) -> list[str]:
        return ["--lake", self.spec] + (["--backend", "zfs"] if self.backend == "zfs" else [])


@pytest.fixture(scope="module")
def far_filesystems(request):
    """Two more filesystems of each kind, made on first use, for this module."""
    made: dict[str, list] = {}
    stack = []

    def get(kind: str) -> list:
        if kind not in made:
            import contextlib

            es = contextlib.ExitStack()
            stack.append(es)
            if kind == "btrfs":
                made[kind] = [es.enter_context(btrfs_image("2G")) for _ in range(2)]
            else:
                request.getfixturevalue("zfs_pool")  # zfs-fuse running, for the session
                made[kind] = [es.enter_context(zfs_file_pool("512M")) for _ in range(2)]
        return made[kind]

    yield get
    for es in reversed(stack):
        es.close()


def _lake_on(kind: str, fs, label: str) -> FarLake:
    name = f"{label}{os.urandom(3).hex()}"
    if kind == "btrfs":
        path = Path(fs) / name
        path.mkdir()
        return FarLake(kind, str(path), f"file://{path}")
    dataset = f"{fs}/{name}"
    subprocess.run(["zfs", "create", "-o", "atime=off", dataset], check=True, capture_output=True)
    return FarLake(kind, dataset, f"file:///{dataset}")


def _empty_lake(lake, far_filesystems, which: int, label: str):
    other = _lake_on(lake.backend, far_filesystems(lake.backend)[which], label)
    yield other
    if other.backend == "zfs":
        destroy_dataset(other.spec)


@pytest.fixture
def far(lake, far_filesystems):
    """An empty lake on a second filesystem of the same kind as `lake`."""
    yield from _empty_lake(lake, far_filesystems, 0, "far")


@pytest.fixture
def third(lake, far_filesystems):
    """An empty lake on a third filesystem, for a second clone."""
    yield from _empty_lake(lake, far_filesystems, 1, "third")


def held(far: FarLake, project: str) -> dict[tuple[str, str], str]:
    backend = open_lake(far.spec if far.backend == "btrfs" else far.spec)
    return {(s.volume, s.name): backend.identity(s) for s in backend.snapshots(project)}


def project_of(repo: Path) -> str:
    import tomllib

    return tomllib.loads((repo / "snapver.toml").read_text())["project"]["id"]


def lake_digest(repo: Path) -> dict:
    return {v: tree_digest(repo / v) for v in ("data", "models", "logs")}


# ------------------------------------------------------------------ push, clone, push back, pull

def test_push_clone_push_back_and_pull(lake_repo, far, third, tmp_path):
    a = lake_repo
    c0 = git(a, "rev-parse", "HEAD")  # the commit of snapver.toml
    write(a / "data" / "shard0.bin", os.urandom(3 << 20))
    write(a / "models" / "model.pt", b"weights v1")
    c1 = commit(a, "v1")
    write(a / "models" / "model.pt", b"weights v2")
    c2 = commit(a, "v2")
    write(a / "data" / "shard1.bin", os.urandom(1 << 20))
    c3 = commit(a, "v3")
    at_c3 = lake_digest(a)

    snapver(a, "remote", "add", "far", far.url)
    assert snapver(a, "remote", "list", "--json").json == [{"name": "far", "url": far.url}]
    sent = snapver(a, "push", "far", "--json").json["result"]
    # Oldest first; the first commit goes whole, every later one as an increment on the one before.
    assert [(t["name"], t["base"]) for t in sent] == [
        (c, base) for c, base in ((c0, None), (c1, c0), (c2, c1), (c3, c2)) for _ in range(3)]
    assert {(t["volume"], t["name"]) for t in sent} == {
        (v, c) for c in (c0, c1, c2, c3) for v in ("data", "models", "logs")}
    data = {t["name"]: t["bytes"] for t in sent if t["volume"] == "data"}
    assert data[c1] > 3 << 20 and (1 << 20) < data[c3] < (1 << 20) + (256 << 10)
    assert data[c2] < 64 << 10  # nothing in data changed: the stream is metadata only
    project = project_of(a)
    mine = {(s["volume"], s["name"]) for s in snapver(a, "log", "--json").per_volume}
    assert set(held(far, project)) == mine
    assert snapver(a, "push", "far", "--json").json["result"] == []  # all there already

    # The catalog rows travelled with the data.
    far_root = open_lake(far.spec).root
    with sqlite3.connect(far_root / "catalog.db") as db:
        subjects = dict(db.execute("SELECT sha, subject FROM commits WHERE project = ?", [project]))
        rows = db.execute("SELECT count(*) FROM snapshots WHERE project = ?", [project]).fetchone()[0]
    assert subjects == {c0: "snapver", c1: "v1", c2: "v2", c3: "v3"} and rows == 12

    # A second clone, on a third filesystem, gets the lake at HEAD by CoW from what it pulled.
    b = tmp_path / "b"
    out = snapver(tmp_path, "clone", str(a), str(b), "--from", far.url, *third.init_args[:2], "-q").out
    assert "cloned into" in out
    assert lake_digest(b) == at_c3
    assert {e["name"] for e in snapver(b, "log", "--json").json} == {c0, c1, c2, c3}
    assert snapver(b, "log", "--json").json[0]["subject"] == "v3"

    # Its new commit goes back to the far lake as an increment, and from there to the first clone.
    write(b / "models" / "model.pt", b"weights v4, fine-tuned in clone b")
    c4 = commit(b, "v4")
    back = snapver(b, "push", "--json").json["result"]  # the clone's remote is its default
    assert {(t["volume"], t["name"], t["base"]) for t in back} == {(v, c4, c3) for v in ("data", "models", "logs")}
    git(a, "pull", "-q", str(b), "main")
    got = snapver(a, "pull", "far", "--json").json["result"]
    assert {(t["volume"], t["name"], t["base"]) for t in got} == {(v, c4, c3) for v in ("data", "models", "logs")}
    snapver(a, "checkout", "HEAD")
    assert lake_digest(a) == lake_digest(b)
    assert (a / "models" / "model.pt").read_bytes() == b"weights v4, fine-tuned in clone b"

    # Every copy of a snapshot is the same snapshot to the filesystem (identity), on all three lakes.
    assert held(far, project)[("models", c4)] == held(FarLake(third.backend, third.spec, ""), project)[("models", c4)]


def test_push_of_one_revision_and_its_history_only(lake_repo, far):
    a = lake_repo
    write(a / "data" / "x", b"1")
    c1 = commit(a, "one")
    git(a, "checkout", "-q", "-b", "side")
    write(a / "data" / "x", b"2")
    side = commit(a, "side")
    git(a, "checkout", "-q", "main")
    write(a / "data" / "x", b"3")
    commit(a, "main")
    snapver(a, "remote", "add", "far", far.url)
    sent = snapver(a, "push", "far", "side", "--json").json["result"]
    assert {t["name"] for t in sent} >= {c1, side}
    names = {t["name"] for t in sent}
    assert git(a, "rev-parse", "HEAD") not in names  # main's tip is not side's history


# ------------------------------------------------------------------ interrupted transfers

@pytest.mark.parametrize("direction", ["push", "pull"])
def test_interrupted_transfer_leaves_no_snapshot_and_a_retry_completes(lake_repo, far, third, tmp_path, direction):
    a = lake_repo
    snapver(a, "remote", "add", "far", far.url)
    write(a / "data" / "base.bin", os.urandom(64 << 10))
    commit(a, "small")
    snapver(a, "push", "far", "-q")
    write(a / "data" / "big.bin", os.urandom(16 << 20))  # several chunks: cut after the second
    big = commit(a, "big")
    project = project_of(a)
    env = {**os.environ, "SNAPVER_FAULT": f"{direction}-mid-stream"}

    if direction == "push":
        here, there = a, far
        cut = subprocess.run([*_cli(), "push", "far", "-q"], cwd=a, env=env, capture_output=True, text=True)
    else:
        snapver(a, "push", "far", "-q")
        b = tmp_path / "b"
        git(tmp_path, "clone", "-q", str(a), str(b))
        git(b, "checkout", "-q", "HEAD~1")
        snapver(b, "init", *third.init_args)
        snapver(b, "remote", "add", "far", far.url)
        snapver(b, "pull", "far", "-q")  # the small commit, whole
        git(b, "checkout", "-q", "main")
        here, there = b, third
        cut = subprocess.run([*_cli(), "pull", "far", "-q"], cwd=b, env=env, capture_output=True, text=True)
    assert cut.returncode == -9, cut.stderr  # killed mid-stream, as a power cut would
    _settle()
    assert ("data", big) not in held(there, project)
    # Retrying sends it again and it arrives whole; where ZFS can resume, it resumes.
    again = snapver(here, direction, "far", "-q", "--json").json["result"]
    assert ("data", big) in held(there, project)
    if open_lake(there.spec).resumable() is not None:
        assert [t["resumed"] for t in again if t["volume"] == "data"] == [True]
    if direction == "pull":
        snapver(here, "checkout", "HEAD")
        assert (here / "data" / "big.bin").read_bytes() == (a / "data" / "big.bin").read_bytes()


def _cli() -> list[str]:
    import sys

    return [sys.executable, "-m", "snapver"]


def _settle() -> None:
    """The far end notices the cut stream (EOF, or its parent's death) and cleans up."""
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        busy = subprocess.run(["pgrep", "-f", "snapver serve|btrfs receive|zfs receive"], capture_output=True)
        if busy.returncode != 0:
            return
        time.sleep(0.2)


def test_snapshots_both_lakes_took_on_their_own_are_reported_not_sent(lake_repo, far, tmp_path):
    a = lake_repo
    write(a / "data" / "d.bin", b"taken here")
    c1 = commit(a, "v1")
    b = tmp_path / "b"  # a clone whose lake is the far one, snapshotting the same commit itself
    git(tmp_path, "clone", "-q", str(a), str(b))
    snapver(b, "init", *far.init_args)
    write(b / "data" / "d.bin", b"taken there")
    snapver(b, "snapshot")
    snapver(a, "remote", "add", "far", far.url)
    theirs = held(far, project_of(a))[("data", c1)]

    pushed = snapver(a, "push", "far", "-q")
    assert f"remote far holds a data@{c1[:10]} of its own" in pushed.err, pushed.err
    assert held(far, project_of(a))[("data", c1)] == theirs, "theirs is left as it is"
    pulled = snapver(a, "pull", "far", "-q")
    assert f"this lake holds a data@{c1[:10]} of its own" in pulled.err, pulled.err
    assert not any(snapver(a, "diff", c1, "--json").json.values()), "ours is left as it is"


# ------------------------------------------------------------------ crash at every step of a receive

RECEIVE_POINTS = ["receive-begin", "receive-started", "pull-mid-stream", "receive-received", "receive-end"]


def _cut(cwd: Path, *args: str, fault: str) -> subprocess.CompletedProcess:
    done = subprocess.run([*_cli(), *args], cwd=cwd, env={**os.environ, "SNAPVER_FAULT": fault},
                          capture_output=True, text=True)
    assert done.returncode == -9, f"{fault} was not reached: {done.stderr}"
    _settle()
    return done


def _snapshot_digests(repo: Path) -> dict[tuple[str, str], dict]:
    return {(e["volume"], e["name"]): tree_digest(Path(e["path"])) for e in snapver(repo, "log", "--json").per_volume}


@pytest.mark.parametrize("point", RECEIVE_POINTS)
def test_pull_killed_at_every_step_of_a_receive(lake_repo, far, third, tmp_path, point):
    """Killed anywhere in a receive: every snapshot it lists is whole, the live volumes are
    untouched, doctor finds the receive and --repair leaves the workspace clean; a retry
    completes."""
    a = lake_repo
    write(a / "data" / "big.bin", os.urandom(16 << 20))  # several chunks, for pull-mid-stream
    write(a / "models" / "m.pt", b"model")
    commit(a, "v1")
    snapver(a, "remote", "add", "far", far.url)
    snapver(a, "push", "far", "-q")
    source = _snapshot_digests(a)
    b = tmp_path / "b"
    git(tmp_path, "clone", "-q", str(a), str(b))
    snapver(b, "init", *third.init_args)
    snapver(b, "remote", "add", "far", far.url)
    live_before = lake_digest(b)

    _cut(b, "pull", "far", "-q", fault=point)
    for key, digest in _snapshot_digests(b).items():
        assert digest == source[key], f"{key} is listed as a snapshot but is not whole"
    assert lake_digest(b) == live_before, "a receive never touches the live volumes"

    found = snapver(b, "doctor", "--json", ok=False)
    assert found.code == 1, found.out + found.err
    report = json.loads(found.out)
    assert [o["kind"] for o in report["interrupted"]] == ["receive"]
    assert "snapver doctor" in snapver(b, "status").err, "a command that finds it says so"
    fixed = snapver(b, "doctor", "--repair", "--json")
    assert json.loads(fixed.out)["clean"], fixed.out
    assert snapver(b, "doctor").code == 0

    snapver(b, "pull", "far", "-q")
    assert _snapshot_digests(b) == source
    snapver(b, "checkout", "HEAD")
    assert lake_digest(b) == lake_digest(a)
    rows = sqlite3.connect(open_lake(third.spec).catalog_path).execute(
        "SELECT count(*) FROM commits WHERE subject = 'v1'").fetchone()
    assert rows == (1,), "the catalog rows came with the snapshot, also the one the crash caught"


def test_far_end_killed_after_a_stream_is_finished_by_the_next_push(lake_repo, far):
    """The far end of a push has no workspace to run doctor in: the next receive into the
    project finishes what the journal says was interrupted there."""
    a = lake_repo
    write(a / "data" / "d.bin", b"data")
    c1 = commit(a, "v1")
    snapver(a, "remote", "add", "far", far.url)
    cut = subprocess.run([*_cli(), "push", "far", "-q"], cwd=a, capture_output=True, text=True,
                         env={**os.environ, "SNAPVER_FAULT": "receive-received#2"})
    assert cut.returncode != 0 and "Traceback" not in cut.stderr, cut.stderr
    assert cut.stderr.strip().count("\n") == 0, cut.stderr
    _settle()
    project = project_of(a)
    catalog = open_lake(far.spec).catalog_path
    first = sqlite3.connect(catalog).execute("SELECT count(*) FROM snapshots").fetchone()[0]
    snapver(a, "push", "far", "-q")
    assert set(held(far, project)) == {(v, n) for v, n in _snapshot_digests(a)}
    with sqlite3.connect(catalog) as db:
        assert db.execute("SELECT count(*) FROM operations").fetchone() == (0,)
        rows = db.execute("SELECT volume, name FROM snapshots WHERE project = ?", (project,)).fetchall()
    assert set(rows) == set(held(far, project)), f"every snapshot has its row ({first} before the retry)"
    assert ("data", c1) in set(rows)


# ------------------------------------------------------------------ over ssh

@pytest.fixture(scope="module")
def sshd(tmp_path_factory):
    """A real sshd on 127.0.0.1 only, with a throwaway host key and client key."""
    need_root_and("sshd", "ssh", "ssh-keygen")
    home = tmp_path_factory.mktemp("sshd")
    for key in ("host", "client"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(home / key)], check=True)
    (home / "authorized_keys").write_text((home / "client.pub").read_text())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    config = home / "sshd_config"
    config.write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {home / 'host'}",
        f"AuthorizedKeysFile {home / 'authorized_keys'}", "PermitRootLogin prohibit-password",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no",
        f"PidFile {home / 'sshd.pid'}", "",
    ]))
    Path("/run/sshd").mkdir(exist_ok=True)  # its privilege-separation directory
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(config)], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"sshd did not start: {proc.stderr.read().decode()}")
                time.sleep(0.1)
        yield port, (f"ssh -i {home / 'client'} -o StrictHostKeyChecking=no -o UserKnownHostsFile=/dev/null "
                     "-o BatchMode=yes -o LogLevel=ERROR")
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_push_and_pull_over_ssh(lake_repo, far, third, sshd, tmp_path, monkeypatch):
    port, ssh = sshd
    monkeypatch.setenv("SNAPVER_SSH", ssh)
    a = lake_repo
    remote_snapver = str(Path(_cli()[0]).with_name("snapver"))
    lake_part = far.spec if far.backend == "btrfs" else "/" + far.spec
    url = f"ssh://root@127.0.0.1:{port}{lake_part}"
    snapver(a, "remote", "add", "far", url, "--command", remote_snapver)
    c0 = git(a, "rev-parse", "HEAD")
    write(a / "data" / "d.bin", os.urandom(1 << 20))
    c1 = commit(a, "one")
    write(a / "data" / "d.bin", os.urandom(1 << 20))
    c2 = commit(a, "two")
    sent = snapver(a, "push", "far", "--json").json["result"]
    assert [(t["name"], t["base"]) for t in sent if t["volume"] == "data"] == [(c0, None), (c1, c0), (c2, c1)]

    b = tmp_path / "b"
    snapver(tmp_path, "clone", str(a), str(b), "--from", url, "--command", remote_snapver,
            *third.init_args[:2], "-q")
    assert lake_digest(b) == lake_digest(a)


def test_progress_bar_shows_bytes_and_rate(lake_repo, far):
    """On a terminal, tqdm's bar on stderr; in a log (stderr not a terminal), or with -q, none."""
    a = lake_repo
    write(a / "data" / "d.bin", os.urandom(2 << 20))
    commit(a, "one")
    snapver(a, "remote", "add", "far", far.url)
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 120, 0, 0))  # a terminal's width
    with subprocess.Popen([sys.executable, "-m", "snapver", "push", "far"], cwd=a, env=env(),
                          stdout=subprocess.DEVNULL, stderr=slave) as proc:
        os.close(slave)
        err = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the push closed its end
                break
            if not chunk:
                break
            err += chunk
        assert proc.wait(timeout=600) == 0, err
    os.close(master)
    assert b"data@" in err and b"B/s" in err, err
    write(a / "data" / "d.bin", os.urandom(1 << 20))
    commit(a, "two")
    logged = snapver(a, "push", "far").err
    assert "data@" not in logged and "\x1b[" not in logged, logged
    assert snapver(a, "push", "far", "-q").err == ""


# ------------------------------------------------------------------ Git integration

@pytest.mark.parametrize("opt_in", [
    '\n[remote]\nname = "far"\npush = true\nfetch = true\n',
    # Quoted keys are the same keys in TOML: the hook shim's grep once missed them.
    '\n[remote]\n"name" = "far"\n"push" = true\n\'fetch\' = true\n',
], ids=["bare keys", "quoted keys"])
def test_git_push_and_pull_carry_the_snapshots(lake_repo, far, third, tmp_path, opt_in):
    a = lake_repo
    origin = tmp_path / "origin.git"
    git(tmp_path, "init", "-q", "--bare", "-b", "main", str(origin))
    with open(a / "snapver.toml", "a") as f:
        f.write(opt_in)
    git(a, "add", "snapver.toml")
    write(a / "data" / "d.bin", b"first")
    c1 = commit(a, "opt in to push and fetch")
    git(a, "remote", "add", "origin", str(origin))
    snapver(a, "remote", "add", "far", far.url)
    git(a, "push", "-q", "origin", "main")
    assert ("data", c1) in held(far, project_of(a))

    b = tmp_path / "b"
    snapver(tmp_path, "clone", str(origin), str(b), "--from", far.url, *third.init_args[:2], "-q")
    assert (b / "data" / "d.bin").read_bytes() == b"first"
    write(a / "data" / "d.bin", b"second")
    c2 = commit(a, "second")
    git(a, "push", "-q", "origin", "main")
    assert ("data", c2) in held(far, project_of(a))
    done = subprocess.run(["git", "pull", "-q", "origin", "main"], cwd=b, capture_output=True, text=True,
                          env={**os.environ, "GIT_CONFIG_NOSYSTEM": "1"})
    assert done.returncode == 0, done.stderr
    assert "pulled 3 snapshot(s)" in done.stderr
    assert git(b, "rev-parse", "HEAD") == c2
    assert (b / "data" / "d.bin").read_bytes() == b"second"


# ------------------------------------------------------------------ bad input

@pytest.mark.parametrize("url", [
    "ssh://-oProxyCommand=touch%20/tmp/pwned/lake", "ssh://host/../etc", "file://host/lake",
    "ftp://host/lake", "ssh://user:secret@host/lake", "file:///a;rm -rf /", "lake", "ssh://host/-x",
    "file:///tank//lake", "ssh://ho st/lake",
])
def test_bad_remote_urls_are_refused_and_nothing_is_written(lake_repo, url):
    before = (lake_repo / ".git" / "config").read_bytes()
    err = snapver(lake_repo, "remote", "add", "x", url, ok=False).err
    assert err.count("\n") == 1 and "Traceback" not in err
    assert (lake_repo / ".git" / "config").read_bytes() == before


def test_remote_mistakes_get_one_line(lake_repo, far):
    a = lake_repo
    for args in (["push"], ["pull"], ["push", "nowhere"], ["remote", "remove", "nowhere"],
                 ["remote", "add", "bad name", far.url]):
        err = snapver(a, *args, ok=False).err
        assert err.count("\n") == 1 and "Traceback" not in err, (args, err)
    snapver(a, "remote", "add", "far", far.url)
    assert "exists already" in snapver(a, "remote", "add", "far", far.url, ok=False).err
    snapver(a, "remote", "remove", "far")
    assert snapver(a, "remote", "list", "--json").json == []


def test_a_lake_of_the_other_kind_is_refused(lake_repo, far_filesystems, lake):
    other = "zfs" if lake.backend == "btrfs" else "btrfs"
    far = _lake_on(other, far_filesystems(other)[0], "other")
    write(lake_repo / "data" / "x", b"1")
    commit(lake_repo, "one")
    snapver(lake_repo, "remote", "add", "other", far.url)
    err = snapver(lake_repo, "push", "other", ok=False).err
    assert "do not cross filesystems" in err
    if far.backend == "zfs":
        destroy_dataset(far.spec)
