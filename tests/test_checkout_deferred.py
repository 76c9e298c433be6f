"""Every checkout flat (issue 19): the volume a checkout swaps out waits for gc instead of being
deleted while the next command runs, and gc (or doctor --repair) deletes it, losing nothing."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from snapver.backends import btrfsretire

from tests.fixtures.daemon import Snapverd, wait_for
from tests.fixtures.git import commit, git, snapver, tree_digest, write


def lake_of(repo: Path) -> dict:
    return {v: tree_digest(repo / v) for v in ("data", "models", "logs")}


def waiting(root: Path) -> list[Path]:
    return sorted(root.glob(f"*/workspaces/*/.trash/*{btrfsretire.LATER}/*"))


def test_checkouts_leave_the_old_volumes_to_gc(lake, lake_repo):
    repo = lake_repo
    states = []
    for i in range(2):
        write(repo / "data" / f"part{i}.csv", f"rows {i}\n" * 100)
        write(repo / "models" / "model.pt", f"weights v{i}")
        write(repo / "logs" / "train.log", f"epoch {i}\n")
        states.append((commit(repo, f"v{i}"), lake_of(repo)))
    for _ in range(2):
        for sha, digest in (states[0], states[1]):
            git(repo, "checkout", "-q", sha)
            assert lake_of(repo) == digest
    assert snapver(repo, "doctor", "--json").json["leftovers"] == [], "waiting for gc is no leftover"
    if lake.backend == "btrfs":
        # Four checkouts of three volumes: twelve retired volumes, none deleted yet.
        retired = waiting(lake.root)
        assert len(retired) == 12 and all(p.stat().st_ino == 256 for p in retired), retired
    snapver(repo, "gc", "--dry-run")
    if lake.backend == "btrfs":
        assert len(waiting(lake.root)) == 12, "a dry run deletes nothing"
    snapver(repo, "gc")
    assert waiting(lake.root) == []
    assert lake_of(repo) == states[1][1]
    git(repo, "checkout", "-q", states[0][0])
    assert lake_of(repo) == states[0][1], "every snapshot is still there"
    assert snapver(repo, "doctor", "--json").json["leftovers"] == []
    if lake.backend == "btrfs":
        # du would count them as full copies: it deletes those gc could, as gc would.
        retired = waiting(lake.root)
        assert len(retired) == 3
        now = time.time()
        for p in retired:
            os.utime(p.parent, (now + 3600, now + 3600))  # made "just now", by another process
        snapver(repo, "du")
        assert waiting(lake.root) == retired, "a checkout's of the last seconds may be under way: kept"
        for p in retired:
            os.utime(p.parent, (1, 1))
        snapver(repo, "du")
        assert waiting(lake.root) == []
        assert lake_of(repo) == states[0][1]


def test_a_workspace_keeps_a_bounded_number_waiting(btrfs_lake):
    """Should gc never run, the oldest beyond KEEP go to a background deletion."""
    trash = btrfs_lake / "p" / "workspaces" / "w" / ".trash"
    source = btrfs_lake / "source"
    trash.mkdir(parents=True)
    for i in range(btrfsretire.KEEP + 2):
        subprocess.run(["btrfs", "subvolume", "create", str(source)], check=True, capture_output=True)
        folder = btrfsretire.retire(trash, source, "data").parent
        os.utime(folder, (i, i))  # oldest first
    handed = btrfsretire.overflow(trash)
    assert len(handed) == 2 and all(not p.parent.name.endswith(btrfsretire.LATER) for p in handed)
    assert len(btrfsretire.waiting(trash)) == btrfsretire.KEEP
    assert btrfsretire.reap(btrfs_lake / "p" / "workspaces", "w")
    for p in handed:
        subprocess.run(["btrfs", "subvolume", "delete", str(p)], check=True, capture_output=True)
        p.parent.rmdir()
    assert btrfsretire.waiting(trash) == [] and os.listdir(trash) == []


def test_reap_in_idle_time_spares_a_workspace_still_switching(btrfs_lake):
    """quiet_for (snapverd's reap): a workspace whose last checkout is younger is left alone,
    one whose last is older loses all its retired volumes, the young ones as old as SETTLED
    included."""
    workspaces = btrfs_lake / "p" / "workspaces"
    source = btrfs_lake / "source"
    now = time.time()
    for ws, ages in (("busy", [600, 30]), ("quiet", [600, 90])):
        trash = workspaces / ws / ".trash"
        trash.mkdir(parents=True)
        for age in ages:
            subprocess.run(["btrfs", "subvolume", "create", str(source)], check=True, capture_output=True)
            os.utime(btrfsretire.retire(trash, source, "data").parent, (now - age, now - age))
    done = btrfsretire.reap(workspaces, "", quiet_for=60)
    assert len(done) == 2 and all("/quiet/" in line for line in done), done
    assert len(btrfsretire.waiting(workspaces / "busy" / ".trash")) == 2
    assert btrfsretire.waiting(workspaces / "quiet" / ".trash") == []


@pytest.mark.parametrize("lake", ["btrfs"], indirect=True)  # ZFS retires nothing for later
def test_snapverd_deletes_them_once_the_workspace_is_quiet(lake, lake_repo, daemon_dir):
    """With snapverd running, what checkouts swapped out is gone `reap_after` after the last
    one, every snapshot still there: `show --space` and `du` find nothing to delete first."""
    repo = lake_repo
    states = []
    for i in range(2):
        write(repo / "data" / f"part{i}.csv", f"rows {i}\n" * 100)
        write(repo / "models" / "model.pt", f"weights v{i}")
        states.append((commit(repo, f"v{i}"), lake_of(repo)))
    d = Snapverd(daemon_dir, [repo], reap_after="3s").start()
    try:
        git(repo, "checkout", "-q", states[0][0])
        assert waiting(lake.root), "the checkout moved its volumes aside"
        assert wait_for(lambda: not waiting(lake.root), 60), (daemon_dir / "snapverd.log").read_text()
        assert "deleted retired volume" in (daemon_dir / "snapverd.log").read_text()
        assert lake_of(repo) == states[0][1]
        git(repo, "checkout", "-q", states[1][0])
        assert lake_of(repo) == states[1][1], "every snapshot is still there"
    finally:
        d.stop()
