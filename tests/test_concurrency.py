"""Two clones committing at once on one lake while snapverd snapshots both: nothing lost.

Each round, each clone writes its own files into its volumes and commits with
the real Git hooks; snapverd watches both working trees and takes wip snapshots
of the writes as they come. Afterwards every commit has a snapshot of every
volume holding exactly what was written before it, every snapshot on the
filesystem has its catalog row (and no row lacks its snapshot), the catalog
passes `PRAGMA integrity_check`, and no hook or daemon reported an error.

SNAPVER_CONCURRENCY_ROUNDS sets the rounds on Btrfs (default 200, one to three minutes
on a 2-core machine); ZFS (zfs-fuse, much slower per snapshot) runs a tenth of them (at least 20). Hooks wait
for the workspace lock as long as they do for users (30 s), not the suite's shorter 5 s.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
import threading
import time
from pathlib import Path

import pytest

from snapver.names import SHA, is_snapshot_name
from tests.fixtures.daemon import Snapverd, wait_for
from tests.fixtures.git import env, git, snapver

ROUNDS = int(os.environ.get("SNAPVER_CONCURRENCY_ROUNDS", "200"))
VOLUMES = ("data", "models", "logs")


def rounds_for(backend: str) -> int:
    return ROUNDS if backend == "btrfs" else max(20, ROUNDS // 10)


def commit_rounds(repo: Path, who: str, rounds: int, made: dict, errors: list) -> None:
    """Write, commit (the post-commit hook snapshots), remember what each commit must hold."""
    try:
        for i in range(rounds):
            (repo / "data" / f"{who}-{i}.csv").write_text(f"{who},{i}\n")
            (repo / "models" / "model.pt").write_text(f"{who} weights after round {i}")
            with open(repo / "logs" / "train.log", "a") as f:
                f.write(f"{who} round {i}\n")
            done = subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", f"{who} round {i}"],
                                  cwd=repo, env={**env(), "SNAPVER_LOCK_WAIT": "30"},
                                  capture_output=True, text=True, timeout=120)
            if done.returncode != 0 or "Git carried on" in done.stderr:
                errors.append(f"{who} round {i}: {done.stderr.strip()}")
                return
            sha = git(repo, "rev-parse", "HEAD")
            made[sha] = (who, i)
    except BaseException as e:  # noqa: BLE001 - reported by the main thread
        errors.append(f"{who}: {e.__class__.__name__}: {e}")


def catalog_rows(lake_root: Path) -> set[tuple[str, str]]:
    with contextlib.closing(sqlite3.connect(lake_root / "catalog.db")) as db:
        assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        return {(v, n) for v, n in db.execute("SELECT volume, name FROM snapshots")}


def test_two_clones_and_the_daemon_lose_nothing(lake_repo, lake, daemon_dir, tmp_path, record_property):
    rounds = rounds_for(lake.backend)
    other = tmp_path / "other"
    git(tmp_path, "clone", "-q", str(lake_repo), str(other))
    snapver(other, "init", *lake.init_args)
    daemon = Snapverd(daemon_dir, [lake_repo, other], max_delay="2s").start(SNAPVER_LOCK_WAIT="30")
    made: dict[str, tuple[str, int]] = {}
    errors: list[str] = []
    started = time.monotonic()
    try:
        threads = [threading.Thread(target=commit_rounds, args=(repo, who, rounds, made, errors))
                   for repo, who in ((lake_repo, "a"), (other, "b"))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=rounds * 10 + 60)
        assert not any(t.is_alive() for t in threads), "a clone's commits hung: deadlock"
        assert daemon.answers(), "snapverd stopped answering"
    finally:
        code = daemon.stop()
    elapsed = time.monotonic() - started
    assert errors == []
    assert code == 0
    assert len(made) == 2 * rounds

    for repo in (lake_repo, other):
        log = repo / ".git" / "snapver" / "hook.log"
        assert not log.exists(), log.read_text()
    daemon_log = daemon.log.read_text()
    assert "ERROR" not in daemon_log and "Traceback" not in daemon_log, daemon_log

    entries = snapver(lake_repo, "log", "--all", "--json").per_volume
    on_disk = {(e["volume"], e["name"]) for e in entries}
    assert all(is_snapshot_name(n) for _, n in on_disk)
    # Every commit of both clones has its snapshot of every volume, holding that round's files.
    for sha, (who, i) in made.items():
        for v in VOLUMES:
            assert (v, sha) in on_disk, f"{who} round {i}: no {v} snapshot of {sha}"
    by_key = {(e["volume"], e["name"]): e for e in entries}
    sample = list(made.items()) if lake.backend == "btrfs" else list(made.items())[-6:]
    for sha, (who, i) in sample:
        data = Path(by_key[("data", sha)]["path"]) if lake.backend == "btrfs" else \
            Path(snapver(lake_repo, "path", sha, "data").out.strip())
        assert (data / f"{who}-{i}.csv").read_text() == f"{who},{i}\n"
        assert not (data / f"{who}-{i + 1}.csv").exists(), "a snapshot holds a later round's write"
    # The daemon did snapshot between the commits, and its wips are whole.
    wips = {n for _, n in on_disk if not SHA.fullmatch(n)}
    assert wips, "snapverd took no wip snapshot during the run"
    # Catalog and filesystem agree exactly, and the catalog is sound.
    assert catalog_rows(lake.root) == on_disk
    for repo in (lake_repo, other):
        assert {r["volume"] for r in snapver(repo, "status", "--json").json} == set(VOLUMES)
    record_property("rounds", rounds)
    record_property("commits", len(made))
    record_property("wip_snapshots", len(wips))
    print(f"\n{lake.backend}: {rounds} rounds x 2 clones = {len(made)} commits, "
          f"{len(on_disk)} snapshots ({len(wips)} wip names) in {elapsed:.0f} s: nothing lost")


@pytest.mark.parametrize("lake", ["btrfs"], indirect=True)  # the daemon's logic, not the fs's
def test_a_capture_that_finds_the_workspace_busy_is_retried(lake_repo, daemon_dir):
    """Writes the daemon could not capture because a hook or checkout held the lock are not
    forgotten: the capture is tried again once the lock is free."""
    from snapver import lock

    daemon = Snapverd(daemon_dir, [lake_repo]).start(SNAPVER_LOCK_WAIT="1")
    try:
        with lock.held(lake_repo / ".git" / "snapver" / "lock"):
            (lake_repo / "models" / "ckpt.pt").write_text("epoch 3")
            assert wait_for(lambda: "capture failed" in daemon.log.read_text(), 15)
        taken = wait_for(lambda: [e for e in snapver(lake_repo, "log", "--all", "--json").per_volume
                                  if e["kind"] == "wip" and e["volume"] == "models"], 15)
        assert taken, "the busy capture was dropped, not retried"
        assert (Path(taken[0]["path"]) / "ckpt.pt").read_text() == "epoch 3"
    finally:
        assert daemon.stop() == 0
