"""Every checkout flat (issue 19): the volume a checkout swaps out waits for gc instead of being
deleted while the next command runs, and gc (or doctor --repair) deletes it, losing nothing."""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

from snapver.backends import btrfsretire

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
