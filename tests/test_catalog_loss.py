"""The catalog deleted, truncated, overwritten or made read-only: every command works or says
what to do, no snapshot is touched, and `snapver reindex` brings every snapshot row back."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.git import env, git, snapver


def damage(catalog: Path, how: str) -> None:
    if how == "deleted":  # `rm catalog.db`: its -wal and -shm stay behind
        catalog.unlink()
    elif how == "deleted-with-journal":
        for p in catalog.parent.glob(catalog.name + "*"):
            p.unlink()
    elif how == "emptied":
        os.truncate(catalog, 0)
    elif how == "truncated":
        os.truncate(catalog, catalog.stat().st_size // 2)
    elif how == "garbage":
        size = catalog.stat().st_size
        catalog.write_bytes(os.urandom(size))
    elif how == "read-only":
        # Root ignores file modes; a read-only bind mount of the file stops root too, on any fs.
        subprocess.run(["mount", "--bind", str(catalog), str(catalog)], check=True)
        subprocess.run(["mount", "-o", "remount,ro,bind", str(catalog)], check=True)
    else:
        raise AssertionError(how)


def repair(catalog: Path, how: str) -> None:
    if how == "read-only":
        subprocess.run(["umount", str(catalog)], check=True)


def rows(catalog: Path) -> set[tuple[str, str]]:
    with contextlib.closing(sqlite3.connect(catalog)) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return {(v, n) for v, n in db.execute("SELECT volume, name FROM snapshots")}


def answered(result, *, why: str) -> None:
    """Worked, or failed with one line that says what to do; never a traceback."""
    if result.code == 0:
        return
    lines = result.err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.err, result.err
    assert why in lines[0], lines[0]


DAMAGE = ["deleted", "deleted-with-journal", "emptied", "truncated", "garbage", "read-only"]
# The catalog is the same SQLite file on both; ZFS (slow zfs-fuse) repeats the two worst cases.
CASES = [("btrfs", how) for how in DAMAGE] + [("zfs", "garbage"), ("zfs", "read-only")]


@pytest.mark.parametrize("lake, how", CASES, indirect=["lake"])
def test_every_command_survives_a_damaged_catalog(lake_repo, lake, how):
    (lake_repo / "models" / "m.pt").write_text("v1")
    git(lake_repo, "commit", "-q", "--allow-empty", "-m", "v1")
    first = git(lake_repo, "rev-parse", "HEAD")
    (lake_repo / "models" / "m.pt").write_text("v2")
    snapver(lake_repo, "snapshot", "--wip", "-m", "mid-training")
    git(lake_repo, "commit", "-q", "--allow-empty", "-m", "v2")
    snapver(lake_repo, "release", "prod", first)
    catalog = lake.root / "catalog.db"
    before = {(e["volume"], e["name"]) for e in snapver(lake_repo, "log", "--all", "--json").per_volume}
    assert rows(catalog) == before

    damage(catalog, how)
    fix = "writable" if how == "read-only" else "reindex"
    try:
        # Reading: the snapshots are on the filesystem, whatever the catalog says.
        log = snapver(lake_repo, "log", "--all", "--json", ok=None)
        answered(log, why=fix)
        if log.code == 0:
            assert {(e["volume"], e["name"]) for e in log.per_volume} == before
        for args in (["status"], ["show", first], ["diff", first], ["release", "list"],
                     ["gc", "--dry-run"], ["path", first, "models"]):
            answered(snapver(lake_repo, *args, ok=None), why=fix)
        # Writing: the snapshot is taken on the filesystem even if its row cannot be written.
        (lake_repo / "models" / "m.pt").write_text("v3")
        answered(snapver(lake_repo, "snapshot", "--wip", ok=None), why=fix)
        commit = subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "v3"], cwd=lake_repo,
                                env=env(), capture_output=True, text=True)
        assert commit.returncode == 0 and "Traceback" not in commit.stderr, commit.stderr
        third = git(lake_repo, "rev-parse", "HEAD")
        answered(snapver(lake_repo, "checkout", first, ok=None), why=fix)
        answered(snapver(lake_repo, "restore", third, "models/m.pt", ok=None), why=fix)
        reindex = snapver(lake_repo, "reindex", ok=None)
        answered(reindex, why=fix)
    finally:
        repair(catalog, how)

    snapver(lake_repo, "reindex")
    after = {(e["volume"], e["name"]) for e in snapver(lake_repo, "log", "--all", "--json").per_volume}
    assert before <= after, "a snapshot was lost"
    assert rows(catalog) == after, "reindex restores a row for every snapshot on the filesystem"
    assert all((v, third) in after for v in ("data", "models", "logs")), "the commit made meanwhile"
    # Commands work normally again.
    snapver(lake_repo, "checkout", third)
    assert (lake_repo / "models" / "m.pt").read_text() == "v3"


def settled(catalog: Path) -> str:
    """The catalog's bytes once its WAL is checkpointed in (what any later reader sees)."""
    import hashlib

    with contextlib.closing(sqlite3.connect(catalog)) as db:
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return hashlib.sha256(catalog.read_bytes()).hexdigest()


@pytest.mark.parametrize("lake", ["btrfs", "zfs"], indirect=True)
def test_a_newer_snapvers_catalog_is_refused_and_left_alone(lake_repo, lake):
    """A clone on an older snapver meets a catalog a newer one wrote (schema 99): every command
    refuses in one line, the commit hook too, and neither the catalog nor the lake changes."""
    (lake_repo / "models" / "m.pt").write_text("v1")
    git(lake_repo, "commit", "-q", "--allow-empty", "-m", "v1")
    first = git(lake_repo, "rev-parse", "HEAD")
    (lake_repo / "models" / "m.pt").write_text("v2")
    git(lake_repo, "commit", "-q", "--allow-empty", "-m", "v2")
    catalog = lake.root / "catalog.db"
    before = {(e["volume"], e["name"]) for e in snapver(lake_repo, "log", "--all", "--json").per_volume}
    with contextlib.closing(sqlite3.connect(catalog)) as db:
        db.execute("PRAGMA user_version = 99")
    bytes_before = settled(catalog)
    try:
        # (`status` reads only the filesystem and Git, and works.)
        for args in (["log"], ["snapshot", "--wip"], ["gc", "--dry-run"], ["reindex"], ["checkout", first],
                     ["release", "list"]):
            done = snapver(lake_repo, *args, ok=None)
            assert done.code != 0, args
            answered(done, why="was written by a newer snapver (schema 99")
            assert "upgrade snapver" in done.err
        (lake_repo / "models" / "m.pt").write_text("v3")
        commit = subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "v3"], cwd=lake_repo,
                                env=env(), capture_output=True, text=True)
        assert commit.returncode == 0 and "Traceback" not in commit.stderr, commit.stderr
        assert "newer snapver (schema 99" in commit.stderr, commit.stderr
        assert settled(catalog) == bytes_before, "the catalog was written"
        assert not list(catalog.parent.glob("catalog.db.damaged-*")), "a newer catalog is not damaged"
    finally:
        with contextlib.closing(sqlite3.connect(catalog)) as db:
            db.execute("PRAGMA user_version = 1")
    after = {(e["volume"], e["name"]) for e in snapver(lake_repo, "log", "--all", "--json").per_volume}
    assert after == before, "no snapshot was taken or destroyed"
    assert (lake_repo / "models" / "m.pt").read_text() == "v3", "the lake was not checked out"
