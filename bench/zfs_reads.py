#!/usr/bin/env python3
"""Benchmark: how often an everyday command reads the whole project on ZFS, and what it costs.

snapver reads a project's datasets and snapshots with one `zfs get -r` (a View,
backends/zfsnode.py). On zfs-fuse each read costs the daemon about 2.5 ms of CPU per
dataset and snapshot, and zfs-fuse was a third of the host test suite's CPU (issue 20);
on OpenZFS each is a process and an O(snapshots) listing. This counts, per command, the
project reads (`zfs get -r`), every `zfs` process, the zfs-fuse daemon's CPU time (when
the ZFS is zfs-fuse) and the wall time, for:

  git commit        of a change to every volume (the post-commit hook snapshots)
  snapver status
  git checkout      of an older commit, and back (the hooks move the lake)
  snapver checkout  REV and back, with a change to keep first (a wip is taken)
  snapver release set prod REV, and back (holds on every volume's snapshot)

Figures are per command (a round trip counts as two). Last, what a ZFS test's teardown
costs for this lake: detaching its mounts, then `zfs destroy -R`.

A shim named `zfs` first on PATH logs each call, then execs the real one. A fresh
file-backed pool; the lake has three volumes and, by the time the commands are timed, 8
commits. Needs root and a ZFS (zfs-fuse is started if need be, as the tests do); the pool
is always destroyed. Never part of the tests. To compare two versions of snapver, run it
with PYTHONPATH set to each one's source tree (hooks and CLI then import that one).

    .venv/bin/python bench/zfs_reads.py [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from common import SNAPVER, require_root, run
from zfs_processes import pool, shimmed, zfs_repo

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
VOLUMES = ("data", "models", "logs")


def zfs_fuse_cpu() -> float | None:
    """Seconds of CPU the zfs-fuse daemons have used so far (None on kernel ZFS)."""
    total, found = 0.0, False
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            stat = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        if stat[stat.index("(") + 1:stat.rindex(")")] == "zfs-fuse":
            fields = stat[stat.rindex(")") + 2:].split()
            total += (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
            found = True
    return total if found else None


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--rounds", type=int, default=4, help="times each command is run (default 4)")
    ap.add_argument("--pool-prefix", default="benchzr", help="name prefix of the pool made")
    args = ap.parse_args()
    if not require_root("zfs_reads.py", "zpool create"):
        return 1
    from tests.fixtures.zfs import zfs_running  # starts zfs-fuse as the tests do, and stops it after

    rows = []
    with ExitStack() as stack:
        stack.enter_context(zfs_running())
        workdir = Path(tempfile.mkdtemp(prefix="snapver-zfsreads-"))
        stack.callback(shutil.rmtree, workdir, True)
        here = stack.enter_context(pool(workdir, "a", args.pool_prefix))
        env, log = shimmed(workdir)
        repo = zfs_repo(workdir, here)
        n = 0

        def change() -> None:
            nonlocal n
            n += 1
            for v in VOLUMES:
                (repo / v / f"f{n}.bin").write_bytes(os.urandom(16 << 10))

        def commit() -> None:
            change()
            run(["git", "commit", "-q", "--allow-empty", "-m", f"c{n}"], cwd=repo, env=env)

        for _ in range(8):
            commit()
        run([SNAPVER, "release", "prod", "HEAD~1"], cwd=repo)
        old = run(["git", "rev-parse", "HEAD~3"], cwd=repo).strip()

        def checkout() -> None:
            run(["git", "checkout", "-q", old], cwd=repo, env=env)
            run(["git", "checkout", "-q", "main"], cwd=repo, env=env)

        def cli_checkout() -> None:
            change()  # kept as a wip before the lake moves
            run([SNAPVER, "checkout", old], cwd=repo, env=env)
            run([SNAPVER, "checkout", "main"], cwd=repo, env=env)

        def release() -> None:
            run([SNAPVER, "release", "set", "prod", "HEAD~2"], cwd=repo, env=env)
            run([SNAPVER, "release", "set", "prod", "HEAD~1"], cwd=repo, env=env)

        # (label, what one round runs, how many commands that is)
        steps = [("git commit", commit, 1), ("snapver status", lambda: run([SNAPVER, "status"], cwd=repo, env=env), 1),
                 ("git checkout", checkout, 2),
                 ("snapver checkout (a wip kept first, every other one)", cli_checkout, 2),
                 ("snapver release set", release, 2)]
        for label, step, per in steps:
            reads = calls = 0
            cpu = wall = 0.0
            for _ in range(args.rounds):
                log.write_text("")
                cpu0, t0 = zfs_fuse_cpu(), time.monotonic()
                step()
                wall += time.monotonic() - t0
                cpu1 = zfs_fuse_cpu()
                if cpu0 is not None and cpu1 is not None:
                    cpu += cpu1 - cpu0
                lines = log.read_text().splitlines()
                calls += len(lines)
                reads += sum(1 for line in lines if line.partition("\t")[2].split()[:1] == ["get"]
                             and "-r" in line.partition("\t")[2].split())
            k = args.rounds * per
            rows.append((label, reads / k, calls / k, cpu / k * 1000, wall / k * 1000))
        # What a ZFS test's teardown costs (tests/fixtures/zfs.py, destroy_dataset): the
        # mounts detached, then `zfs destroy -R` of the whole lake. Issue 20: the destroy is
        # most of it, and could wait for the pool's own destroy at the end of the session.
        from tests.fixtures.zfs import detach_mounts, teardown_run

        entries = len(run(["zfs", "list", "-H", "-r", "-t", "all", "-o", "name", f"{here}/lake"]).splitlines())
        for label, step in (("teardown: detach every mount", lambda: detach_mounts(f"{here}/lake")),
                            ("teardown: zfs destroy -R, after", lambda: teardown_run(["zfs", "destroy", "-R", f"{here}/lake"]))):
            cpu0, t0 = zfs_fuse_cpu(), time.monotonic()
            step()
            wall, cpu1 = time.monotonic() - t0, zfs_fuse_cpu()
            cpu = (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else 0.0
            rows.append((f"{label} ({entries} datasets and snapshots)", 0, 0, cpu * 1000, wall * 1000))
    print(f"snapver from {subprocess.run([sys.executable, '-c', 'import snapver; print(snapver.__file__)'], capture_output=True, text=True).stdout.strip()}")
    print("| command (per run) | project reads (`zfs get -r`) | zfs processes | zfs-fuse CPU ms | wall ms |")
    print("|---|---|---|---|---|")
    for label, reads, calls, cpu, wall in rows:
        print(f"| {label} | {reads:.1f} | {calls:.1f} | {cpu:.0f} | {wall:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
