#!/usr/bin/env python3
"""Benchmark: what Btrfs qgroups would cost snapver's commits, before choosing them for space
accounting (issue 19; README Performance says what was chosen instead, and why).

On a fresh sparse Btrfs image: a volume of FILES files of 4 KiB, then N commits as the hooks
make them (10 files rewritten, a read-only snapshot, a filesystem sync), each timed; the
median and max of the last 30 are printed, then of three checkouts (a writable snapshot of
an older snapshot, the retired volume deleted and its drop waited for: the cleaner runs at
transaction commits, every 30 s, which bounds that figure with or without quotas). Run once
with `none` and once with `quota` (qgroups enabled on the empty filesystem: no rescan).

Needs root (mkfs, loop mount). The image is always unmounted and deleted.

    python3 bench/btrfs_qgroups.py N FILES none|quota [--workdir DIR]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import time
from pathlib import Path


def run(*argv: str) -> str:
    return subprocess.run(list(argv), check=True, capture_output=True, text=True).stdout


def timed(f) -> float:
    start = time.perf_counter()
    f()
    return (time.perf_counter() - start) * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("n", type=int)
    ap.add_argument("files", type=int)
    ap.add_argument("mode", choices=["none", "quota"])
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp"))
    args = ap.parse_args()
    work = args.workdir / f"btrfs-qgroups-{args.mode}-{os.getpid()}"
    work.mkdir(parents=True)
    img, mnt = work / "img", work / "mnt"
    mnt.mkdir()
    with open(img, "wb") as fh:
        fh.truncate(8 << 30)
    run("mkfs.btrfs", "-q", str(img))
    run("mount", "-o", "loop", str(img), str(mnt))
    try:
        if args.mode == "quota":
            run("btrfs", "quota", "enable", str(mnt))
        live, snaps = mnt / "live", mnt / "snaps"
        run("btrfs", "subvolume", "create", str(live))
        snaps.mkdir()
        folders = max(args.files // 1000, 1)
        for d in range(folders):
            (live / f"d{d}").mkdir()
            for i in range(min(1000, args.files)):
                (live / f"d{d}" / f"f{i}").write_bytes(os.urandom(4096))
        os.sync()
        k = 0

        def commit() -> None:
            nonlocal k
            for _ in range(10):
                k += 1
                (live / f"d{k % folders}" / f"f{k % 1000}").write_bytes(os.urandom(4096))
            run("btrfs", "subvolume", "snapshot", "-r", str(live), str(snaps / f"s{k:07d}"))
            run("btrfs", "filesystem", "sync", str(mnt))

        def checkout() -> None:
            older = sorted(snaps.iterdir())
            os.rename(live, mnt / "retired")
            run("btrfs", "subvolume", "snapshot", str(older[len(older) // 2]), str(live))
            run("btrfs", "subvolume", "delete", str(mnt / "retired"))
            run("btrfs", "subvolume", "sync", str(mnt))
            run("btrfs", "filesystem", "sync", str(mnt))

        last = []
        for i in range(args.n):
            ms = timed(commit)
            last = (last + [ms])[-30:]
            if i % 100 == 99:
                print(f"{i + 1} snapshots, last commit {ms:.0f} ms", flush=True)
        print(f"commit at {args.n} snapshots ({args.mode}): median {statistics.median(last):.0f} ms, "
              f"max {max(last):.0f} ms (last {len(last)})", flush=True)
        co = [timed(checkout) for _ in range(3)]
        print(f"checkout + drop of the retired volume: median {statistics.median(co):.0f} ms, max {max(co):.0f} ms")
        if args.mode == "quota":
            print(f"qgroup show --raw: {timed(lambda: run('btrfs', 'qgroup', 'show', '--raw', str(mnt))):.0f} ms")
    finally:
        subprocess.run(["umount", str(mnt)])
        img.unlink(missing_ok=True)
        mnt.rmdir()
        work.rmdir()


if __name__ == "__main__":
    main()
