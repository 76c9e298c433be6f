"""Nothing lost across lakes (issue 22): a receiving lake keeps what it received, pins
travel, push and pull say only what happened, and an increment starts from the parent.

Every test runs on Btrfs and zfs-fuse (the `lake` fixture), with file:// remotes on
filesystems of their own (the fixtures of test_transfer).
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path


from snapver.retention import UNKNOWN
from snapver.transfer import open_lake
from tests.fixtures.git import git, snapver
from tests.test_transfer import commit, far, far_filesystems, held, project_of, third, write  # noqa: F401


def _receiver(tmp_path: Path, a: Path, far, retention: str, name: str = "r") -> Path:
    """R: a clone of a's main branch only, whose workspace is on the far lake."""
    r = tmp_path / name
    git(tmp_path, "clone", "-q", "--no-local", "--single-branch", "-b", "main", str(a), str(r))
    snapver(r, "init", *far.init_args)
    with open(r / "snapver.toml", "a") as f:
        f.write(f"\n[retention]\n{retention}\n")
    return r


def _decisions(repo: Path, *args: str) -> dict[tuple[str, str], tuple[bool, str]]:
    return {(d["volume"], d["name"]): (d["keep"], d["reason"])
            for d in snapver(repo, "gc", "--json", *args).json["result"]["decisions"]}


def _branch_exp(a: Path, data: bytes = b"experiment") -> str:
    git(a, "checkout", "-q", "-b", "exp")
    write(a / "data" / "exp.bin", data)
    x = commit(a, "exp")
    git(a, "checkout", "-q", "main")
    return x


# ------------------------------------------------------------------ 1. unknown commits are kept

def test_gc_on_a_receiving_lake_keeps_commits_its_clones_never_fetched(lake_repo, far, tmp_path):
    a = lake_repo
    x = _branch_exp(a)
    snapver(a, "remote", "add", "far", far.url)
    snapver(a, "push", "far", "exp", "-q")
    r = _receiver(tmp_path, a, far, 'unreachable = "1s"')
    assert subprocess.run(["git", "cat-file", "-e", x], cwd=r).returncode != 0, "R never fetched exp"
    time.sleep(1.5)  # past the grace period

    out = snapver(r, "gc").out
    assert "kept 3 snapshot(s) of unknown commits" in out, out
    decided = _decisions(r)
    assert all(decided[(v, x)] == (True, UNKNOWN) for v in ("data", "models", "logs")), decided
    assert {("data", x), ("models", x), ("logs", x)} <= set(held(far, project_of(a)))

    # Once R knows the commit and nothing reaches it, the usual rule applies.
    git(r, "fetch", "-q", str(a), "exp")
    assert _decisions(r, "--dry-run")[("data", x)] == (False, "unreachable commit, older than 0:00:01")

    # The explicit way out, for a commit no clone here will ever know.
    git(r, "reflog", "expire", "--expire=now", "--all")
    git(r, "gc", "-q", "--prune=now")
    assert subprocess.run(["git", "cat-file", "-e", x], cwd=r).returncode != 0
    assert "removed data@" not in snapver(r, "gc", "--forget-unknown", "1h").out, "it arrived less than 1h ago"
    assert ("data", x) in held(far, project_of(a))
    out = snapver(r, "gc", "--forget-unknown", "1s").out
    assert f"removed data@{x[:10]}" in out, out
    assert ("data", x) not in held(far, project_of(a))


# ------------------------------------------------------------------ 2. age counts from arrival

def test_a_received_snapshot_ages_from_its_arrival_not_its_creation(lake_repo, far, tmp_path):
    grace = 15  # seconds: room for a slow zfs-fuse between the push and the gc
    a = lake_repo
    x = _branch_exp(a)
    r = _receiver(tmp_path, a, far, f'unreachable = "{grace}s"')
    git(r, "fetch", "-q", str(a), "exp")  # R knows X, and nothing of R reaches it
    time.sleep(grace + 1)  # X was taken longer ago than the grace period on R...
    snapver(a, "remote", "add", "far", far.url)
    started = time.time()
    snapver(a, "push", "far", "exp", "-q")
    # ...but it arrived on R's lake just now, and its age there counts from then.
    arrived = open_lake(far.spec).find(project_of(a), "data", x).created.timestamp()
    assert started - 1 <= arrived <= time.time() + 1, (started, arrived)
    assert _decisions(r)[("data", x)] == (True, "unreachable, within its grace period")
    assert ("data", x) in held(far, project_of(a))
    time.sleep(max(0.0, arrived + grace + 1.5 - time.time()))
    assert _decisions(r)[("data", x)][0] is False
    assert ("data", x) not in held(far, project_of(a))


# ------------------------------------------------------------------ 3. pins travel

def test_a_release_travels_with_push_and_pull_and_pins_on_the_receiver(lake_repo, far, third, tmp_path):
    a = lake_repo
    x = _branch_exp(a)
    snapver(a, "remote", "add", "far", far.url)
    snapver(a, "push", "far", "exp", "-q")
    snapver(a, "release", "create", "prod", x)  # released after the push: the next one carries it
    assert snapver(a, "push", "far", "exp", "--json").json["result"] == []
    r = _receiver(tmp_path, a, far, 'unreachable = "1s"')
    git(r, "fetch", "-q", str(a), "exp")  # known to R, reached by nothing of R
    time.sleep(1.5)
    decided = _decisions(r)
    # The release itself travelled (registrysync), not only its pin: it is a release there.
    assert all(decided[(v, x)] == (True, "release prod") for v in ("data", "models", "logs")), decided
    assert [(rel["name"], rel["snapshot"]) for rel in snapver(r, "release", "list", "--json").json] == [("prod", x)]
    assert ("data", x) in held(far, project_of(a))

    # And on from there by pull, to a third lake.
    c = _receiver(tmp_path, a, third, 'unreachable = "1s"', name="c")
    git(c, "fetch", "-q", str(a), "exp")
    snapver(c, "remote", "add", "far", far.url)
    snapver(c, "pull", "far", x, "-q")
    time.sleep(1.5)
    assert _decisions(c)[("models", x)] == (True, "release prod")
    assert ("models", x) in held(third, project_of(a))


# ------------------------------------------------------------------ 4. no success that did not happen

def test_push_and_pull_of_a_revision_without_snapshots_is_an_error_naming_it(lake_repo, far):
    a = lake_repo
    write(a / "data" / "d", b"1")
    commit(a, "one")
    snapver(a, "remote", "add", "far", far.url)
    snapver(a, "push", "far", "-q")
    bare = git(a, "commit-tree", "HEAD^{tree}", "-p", "HEAD", "-m", "no hook ran: no snapshot")
    pulled = snapver(a, "pull", "far", bare, ok=False)
    assert pulled.code == 1 and f"remote far has no snapshot of {bare[:10]}" in pulled.err, pulled.err
    assert pulled.err.count("\n") == 1 and "Traceback" not in pulled.err
    pushed = snapver(a, "push", "far", bare, ok=False)
    assert pushed.code == 1 and f"this lake has no snapshot of {bare[:10]}" in pushed.err, pushed.err
    before = set(held(far, project_of(a)))
    assert snapver(a, "pull", "far", "HEAD", "--json").json["result"] == [], "what is here already is no error"
    assert set(held(far, project_of(a))) == before


def test_push_and_pull_of_a_full_commit_id_carry_its_history(lake_repo, far, third, tmp_path):
    """A commit's full ID is also the name of its snapshot: it asks, as a branch or a short ID
    does, for the snapshots of its whole history, not only its own. Found by the model-based
    test (a push of a commit ID said it succeeded, and the far lake lacked its parent)."""
    a = lake_repo
    write(a / "data" / "d", b"1")
    c1 = commit(a, "one")
    write(a / "data" / "d", b"2")
    c2 = commit(a, "two")
    snapver(a, "remote", "add", "far", far.url)
    sent = snapver(a, "push", "far", c2, "--json").json["result"]
    assert {(t["volume"], t["name"]) for t in sent} >= {(v, c) for c in (c1, c2) for v in ("data", "models", "logs")}
    assert {("data", c1), ("data", c2)} <= set(held(far, project_of(a)))

    c = _receiver(tmp_path, a, third, 'unreachable = "30d"', name="c")
    git(c, "fetch", "-q", str(a), "main")
    snapver(c, "remote", "add", "far", far.url)
    got = snapver(c, "pull", "far", c2, "--json").json["result"]
    assert {("data", c1), ("data", c2)} <= {(t["volume"], t["name"]) for t in got}, got
    assert {("data", c1), ("data", c2)} <= set(held(third, project_of(a)))


# ------------------------------------------------------------------ 8. the increment starts from the parent

def _stream_size(argv: list[str]) -> int:
    done = subprocess.run(argv, capture_output=True, check=True)
    return len(done.stdout)


def test_the_base_is_the_parent_not_a_newer_sibling(lake_repo, lake, far, third, tmp_path):
    a = lake_repo
    write(a / "data" / "big.bin", os.urandom(4 << 20))
    c1 = commit(a, "c1")
    git(a, "checkout", "-q", "-b", "side")
    write(a / "data" / "big.bin", os.urandom(4 << 20))  # the sibling rewrites every block
    commit(a, "c2 on side")
    git(a, "checkout", "-q", "main")
    write(a / "data" / "small.bin", os.urandom(64 << 10))
    c3 = commit(a, "c3 on main, after c2 in time")
    snapver(a, "remote", "add", "far", far.url)
    snapver(a, "push", "far", "side", "-q")

    sent = snapver(a, "push", "far", "main", "--json").json["result"]
    data = [t for t in sent if t["volume"] == "data"]
    assert [(t["name"], t["base"]) for t in data] == [(c3, c1)], data

    # The figure: bytes sent against the filesystem's own stream of the parent's delta.
    backend = open_lake(lake.spec)
    project = project_of(a)
    snap1, snap3 = backend.find(project, "data", c1), backend.find(project, "data", c3)
    parent_delta = _stream_size(backend.send_argv(snap3, snap1))
    sibling = backend.find(project, "data", git(a, "rev-parse", "side"))
    sibling_delta = _stream_size(backend.send_argv(snap3, sibling)) if lake.backend == "btrfs" else None
    print(f"\n[{lake.backend}] push c3: {data[0]['bytes']} bytes sent, parent's delta {parent_delta}, "
          f"from the sibling {sibling_delta}")
    assert data[0]["bytes"] <= parent_delta * 1.05 + 4096 and data[0]["bytes"] < 1 << 20

    # Pull: the far end chooses, from what the puller says are c3's nearest ancestors.
    b = _receiver(tmp_path, a, third, 'unreachable = "30d"', name="b")
    git(b, "fetch", "-q", str(a), "side:side")
    snapver(b, "remote", "add", "far", far.url)
    snapver(b, "pull", "far", "side", "-q")
    got = [t for t in snapver(b, "pull", "far", "main", "--json").json["result"] if t["volume"] == "data"]
    assert [(t["name"], t["base"]) for t in got] == [(c3, c1)], got
    print(f"[{lake.backend}] pull c3: {got[0]['bytes']} bytes received, parent's delta {parent_delta}")
    assert got[0]["bytes"] <= parent_delta * 1.05 + 4096


# ------------------------------------------------------------------ 4-7. what is not a lake, and a failed clone

def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


def test_a_folder_that_is_not_a_lake_is_refused_unless_empty_or_init(lake_repo, far, third):
    a = lake_repo
    write(a / "data" / "d", b"1")
    commit(a, "one")
    mine = open_lake(far.spec).root
    (mine / "thesis.tex").write_text("a user's files, in a mistyped folder")
    before = _listing(mine)
    snapver(a, "remote", "add", "mistyped", far.url)
    err = snapver(a, "push", "mistyped", "-q", ok=False).err
    assert "has files in it and is not a snapver lake" in err and err.count("\n") == 1, err
    assert ("the folder" if far.backend == "btrfs" else "the ZFS dataset") in err, err
    assert _listing(mine) == before, "nothing was written there"
    assert "not a snapver lake" in snapver(a, "pull", "mistyped", "-q", ok=False).err

    # An empty one becomes a lake, and push says so; pulling from an empty one is refused.
    snapver(a, "remote", "add", "empty", third.url)
    pulled = snapver(a, "pull", "empty", "-q", ok=False)
    assert pulled.code == 1 and "is empty: there is nothing to pull" in pulled.err, pulled.err
    assert _listing(open_lake(third.spec).root) == []
    assert "it is a snapver lake now" in snapver(a, "push", "empty", "-q").err
    assert snapver(a, "push", "mistyped", "-q", "--init").code == 0
    assert (mine / "thesis.tex").read_text().startswith("a user's files")
    assert ("data", git(a, "rev-parse", "HEAD")) in held(far, project_of(a))


def test_bad_paths_are_named_for_what_they_are(lake_repo):
    a = lake_repo
    snapver(a, "remote", "add", "missing", "file:///nonexistent-snapver/some/path")
    err = snapver(a, "push", "missing", "-q", ok=False).err
    assert "there is no folder /nonexistent-snapver/some/path on this host" in err, err
    assert "no ZFS pool nonexistent-snapver" in err and err.count("\n") == 1, err
    snapver(a, "remote", "add", "null", "file:///dev/null")
    err = snapver(a, "pull", "null", "-q", ok=False).err
    assert "/dev/null is a device, not a lake" in err and err.count("\n") == 1, err


def test_a_failed_clone_removes_what_it_made_or_says_what_it_left(lake_repo, lake, far, third, tmp_path):
    a = lake_repo
    b = tmp_path / "b"
    missing = "/nonexistent-snapver/lake" if lake.backend == "btrfs" else f"{third.spec}/no/such/dataset"
    failed = snapver(tmp_path, "clone", str(a), str(b), "--from", far.url, "--lake", missing, "-q", ok=False)
    assert f"the Git clone in {b} was removed" in failed.err and failed.err.count("\n") == 1, failed.err
    assert "--image" not in failed.err, "no Btrfs hint for a ZFS dataset, nor on clone"
    assert not b.exists()

    # The lake is made, then the pull finds nothing there: what is left is said, and kept.
    failed = snapver(tmp_path, "clone", str(a), str(b), "--from", far.url, "--lake", third.spec, "-q", ok=False)
    assert "is empty: there is nothing to pull" in failed.err, failed.err
    assert f"left the clone in {b} and its volumes on lake" in failed.err, failed.err
    assert (b / ".git").is_dir()


def test_a_push_after_an_amend_sends_an_increment(lake_repo, lake, far):
    # The far lake received v1 and then v2 on top of it; the amended commit goes from v1, its
    # parent (issue 22's base rule), though v1 is no longer the newest of what it received
    # there: on ZFS the far end gives v1 a received chain of its own first.
    a = lake_repo
    write(a / "data" / "big.bin", os.urandom(2 << 20))
    v1 = commit(a, "v1")
    write(a / "data" / "small.bin", os.urandom(16 << 10))
    commit(a, "v2")
    snapver(a, "remote", "add", "far", far.url)
    snapver(a, "push", "far", "-q")
    write(a / "data" / "small.bin", os.urandom(16 << 10))
    git(a, "commit", "-q", "--amend", "--allow-empty", "-m", "v2, amended")
    amended = git(a, "rev-parse", "HEAD")
    sent = [t for t in snapver(a, "push", "far", "--json").json["result"] if t["volume"] == "data"]
    # From the parent, which the far lake holds: the change, not the whole volume again.
    assert [(t["name"], t["base"]) for t in sent] == [(amended, v1)], sent
    assert sent[0]["bytes"] < 1 << 20, sent
