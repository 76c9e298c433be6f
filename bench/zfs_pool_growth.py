#!/usr/bin/env python3
"""Benchmark: does zfs-fuse slow down as a pool keeps more lakes? (Why a ZFS test destroys its lake.)

A ZFS test's teardown destroys its lake (`zfs destroy -R`, tests/fixtures/zfs.py), which
costs zfs-fuse 0.5-0.75 s of CPU per test (bench/zfs_reads.py). Leaving the lakes, with
their mounts detached, for the pool's own destroy at the end of the session would save
that, if everything else stayed as fast. This measures whether it does: a fixed round of
zfs work on one probe lake, timed (wall and zfs-fuse CPU) first on a fresh pool, then after
N lakes were made and destroyed, then with N lakes made and kept (mounts detached, as the
teardown does), for growing N. A lake here is what a short test leaves: a project with
three volumes, two snapshots each, and a mounted clone (a checkout's).

The round: a snapshot of each volume, one read of the project (`zfs get -r`, as snapver
reads it), a clone of one snapshot (mounted) and its destroy, and the destroy of the
snapshots. Needs root and a ZFS (zfs-fuse is started if need be, as the tests do); the pool
is always destroyed. Never part of the tests.

    .venv/bin/python bench/zfs_pool_growth.py [--lakes 25,50,100] [--rounds 5]
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from common import require_root, run
from zfs_processes import pool
from zfs_reads import zfs_fuse_cpu

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
VOLUMES = ("data", "models", "logs")
READ = ["zfs", "get", "-H", "-p", "-o", "name,property,value", "-r", "type,origin,userrefs,mountpoint"]


def make_lake(lake: str) -> None:
    """What a short test leaves in its lake: three volumes, two snapshots each, a mounted clone."""
    run(["zfs", "create", "-o", "atime=off", lake])
    for v in VOLUMES:
        run(["zfs", "create", "-p", f"{lake}/project/ws/{v}"])
        for s in ("c1", "c2"):
            run(["zfs", "snapshot", f"{lake}/project/ws/{v}@{s}"])
    run(["zfs", "clone", f"{lake}/project/ws/data@c1", f"{lake}/project/view-c1"])


def one_round(probe: str, n: int) -> tuple[float, float]:
    """(wall s, zfs-fuse CPU s) of the round of work on the probe lake. The clone is destroyed
    as a test's lake is (its mount detached, then retried while zfs-fuse says busy)."""
    from tests.fixtures.zfs import destroy_dataset

    cpu0, t0 = zfs_fuse_cpu(), time.monotonic()
    for v in VOLUMES:
        run(["zfs", "snapshot", f"{probe}/project/ws/{v}@r{n}"])
    run(READ + [f"{probe}/project"])
    run(["zfs", "clone", f"{probe}/project/ws/data@r{n}", f"{probe}/project/view-r{n}"])
    destroy_dataset(f"{probe}/project/view-r{n}")
    for v in VOLUMES:
        run(["zfs", "destroy", f"{probe}/project/ws/{v}@r{n}"])
    wall, cpu1 = time.monotonic() - t0, zfs_fuse_cpu()
    return wall, (cpu1 - cpu0) if cpu0 is not None and cpu1 is not None else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--lakes", default="25,50,100", help="numbers of lakes kept, in increasing order")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of work timed at each point (default 5)")
    ap.add_argument("--pool-prefix", default="benchzg", help="name prefix of the pool made")
    args = ap.parse_args()
    try:
        levels = [int(n) for n in args.lakes.split(",")]
    except ValueError:
        levels = []
    if not levels or levels != sorted(levels) or levels[0] < 1:
        print(
            f"zfs_pool_growth.py: --lakes {args.lakes}: give whole numbers in increasing order, e.g. 25,50,100",
            file=sys.stderr,
        )
        return 2
    if not require_root("zfs_pool_growth.py", "zpool create"):
        return 1
    from tests.fixtures.zfs import destroy_dataset, detach_mounts, zfs_running

    rows = []
    with ExitStack() as stack:
        stack.enter_context(zfs_running())
        workdir = Path(tempfile.mkdtemp(prefix="snapver-zfsgrowth-"))
        stack.callback(shutil.rmtree, workdir, True)
        here = stack.enter_context(pool(workdir, "g", args.pool_prefix))
        probe = f"{here}/probe"
        make_lake(probe)
        n = 0

        def measure(label: str) -> None:
            nonlocal n
            walls, cpus = [], []
            for _ in range(args.rounds):
                n += 1
                wall, cpu = one_round(probe, n)
                walls.append(wall)
                cpus.append(cpu)
            rows.append((label, sum(walls) / len(walls) * 1000, sum(cpus) / len(cpus) * 1000))

        measure("fresh pool")
        made = 0
        for i in range(levels[-1]):  # as many lakes as the most kept, each destroyed at once
            make_lake(f"{here}/gone{i}")
            destroy_dataset(f"{here}/gone{i}")
        measure(f"after {levels[-1]} lakes made and destroyed")
        for level in levels:
            while made < level:
                make_lake(f"{here}/kept{made}")
                detach_mounts(f"{here}/kept{made}")
                made += 1
            measure(f"{level} lakes kept, mounts detached")
    print("| pool | round of work: wall ms | zfs-fuse CPU ms |")
    print("|---|---|---|")
    for label, wall, cpu in rows:
        print(f"| {label} | {wall:.0f} | {cpu:.0f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
