#!/usr/bin/env python3
"""Benchmark: how many `zfs` processes a `snapver push` runs per snapshot, on each side.

On zfs-fuse every `zfs` command is a round trip to the daemon (tens of milliseconds), so
the count, not the stream, is most of what push adds to the bare `zfs send | zfs receive`
(issue 21 item 3; goal: at most 3 per pushed snapshot on the sending side).

A shim named `zfs` first on PATH logs each call with the command line of its parent, then
execs the real one; every `zfs` snapver runs is a direct child of either `snapver push`
(the sending side) or `snapver serve` (the far end, receiving: a file:// remote runs it
on this host). Two fresh file-backed pools; a lake on the first with three volumes; then:

1. commit c1, push it whole (3 snapshots);
2. commits c2..c4, each changing every volume, push them (9 snapshots, incremental);
3. commit c5, push it (3 snapshots, incremental).

Per push: zfs processes per snapshot on each side, and the marginal cost of one more
snapshot ((push 2 - push 3) / 6), which leaves out what a session costs once (listing the
lakes). The same shim counts libzfs_core nothing: zfs-fuse has none, so every call is a
process. Needs root and a ZFS (zfs-fuse is started if need be, as the tests do); the pools
are always destroyed. Never part of the tests.

    .venv/bin/python bench/zfs_processes.py [--breakdown]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from contextlib import ExitStack, contextmanager
from pathlib import Path

from common import GIT_ENV, SNAPVER, require_root, run

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
VOLUMES = ("data", "models", "logs")

SHIM = """#!/bin/sh
printf '%s\\t%s\\n' "$(tr '\\0' ' ' < /proc/$PPID/cmdline)" "$*" >> "$ZFS_COUNT_LOG"
exec {real} "$@"
"""


@contextmanager
def pool(workdir: Path, label: str, prefix: str):
    image = workdir / f"{label}.img"
    with open(image, "xb") as f:
        f.truncate(256 << 20)
    name = f"{prefix}{label}{os.urandom(2).hex()}"
    run(["zpool", "create", "-m", str(workdir / f"{label}.mnt"), name, str(image)])
    try:
        yield name
    finally:
        for _ in range(40):
            if subprocess.run(["zpool", "destroy", "-f", name], capture_output=True).returncode == 0:
                break
            time.sleep(0.25)
        image.unlink(missing_ok=True)


def shimmed(workdir: Path) -> tuple[dict, Path]:
    """An environment with the logging `zfs` shim first on PATH, and the log it writes."""
    shim = workdir / "shim"
    shim.mkdir()
    (shim / "zfs").write_text(SHIM.format(real=shutil.which("zfs")))
    (shim / "zfs").chmod(0o755)
    log = workdir / "calls.log"
    return {**GIT_ENV, "PATH": f"{shim}:{os.environ['PATH']}", "ZFS_COUNT_LOG": str(log)}, log


def zfs_repo(workdir: Path, pool_name: str) -> Path:
    """A Git repository whose lake is a new dataset of pool_name (snapver.toml added)."""
    repo = workdir / "repo"
    repo.mkdir()
    run(["zfs", "create", "-o", "atime=off", f"{pool_name}/lake"])
    run(["git", "init", "-q", "-b", "main", str(repo)])
    run([SNAPVER, "init", "--lake", f"{pool_name}/lake", "--backend", "zfs"], cwd=repo)
    run(["git", "add", "snapver.toml"], cwd=repo)
    return repo


def counted(argv: list[str], cwd: Path, env: dict, log: Path) -> tuple[str, list[tuple[str, str]]]:
    """Run argv with the shim on PATH; its output and the (side, zfs arguments) it ran."""
    log.write_text("")
    out = run(argv, cwd=cwd, env=env)
    calls = []
    for line in log.read_text().splitlines():
        parent, _, args = line.partition("\t")
        calls.append(("receiving" if "serve" in parent.split() else "sending", args))
    return out, calls


def kind(args: str) -> str:
    """`get -r`, `list`, `send`...: what a call was, without its names."""
    words = args.split()
    sub = words[0] if words else "?"
    flags = [w for w in words[1:] if w in ("-r", "-i", "-d", "-t")]
    return " ".join([sub, *flags])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--breakdown", action="store_true", help="list the calls of each push by kind")
    ap.add_argument("--pool-prefix", default="benchzp", help="name prefix of the two pools made")
    args = ap.parse_args()
    if not require_root("zfs_processes.py", "zpool create"):
        return 1
    from tests.fixtures.zfs import zfs_running  # starts zfs-fuse as the tests do, and stops it after

    results = []
    with ExitStack() as stack:
        stack.enter_context(zfs_running())
        workdir = Path(tempfile.mkdtemp(prefix="snapver-zfsprocs-"))
        stack.callback(shutil.rmtree, workdir, True)
        here = stack.enter_context(pool(workdir, "a", args.pool_prefix))
        there = stack.enter_context(pool(workdir, "b", args.pool_prefix))
        env, log = shimmed(workdir)
        repo = zfs_repo(workdir, here)
        run(["zfs", "create", f"{there}/far"])
        run([SNAPVER, "remote", "add", "far", f"file:///{there}/far"], cwd=repo)

        def commit(n: int) -> None:
            for v in VOLUMES:
                (repo / v / f"f{n}.bin").write_bytes(os.urandom(64 << 10))
            run(["git", "commit", "-q", "--allow-empty", "-m", f"c{n}"], cwd=repo)

        plan = [("c1, whole", [1]), ("c2..c4, incremental", [2, 3, 4]), ("c5, incremental", [5])]
        for label, commits in plan:
            for n in commits:
                commit(n)
            out, calls = counted([SNAPVER, "push", "far", "-q", "--json"], repo, env, log)
            sent = json.loads(out)["result"]
            assert len(sent) == 3 * len(commits), sent
            by_side = Counter(side for side, _ in calls)
            results.append({"push": label, "snapshots": len(sent),
                            "bases": sorted({t["base"][:10] if t["base"] else None for t in sent}, key=str),
                            "sending": by_side["sending"], "receiving": by_side["receiving"],
                            "calls": [list(c) for c in calls]})
    print("| push | snapshots | zfs sending | per snapshot | zfs receiving | per snapshot |")
    print("|---|---|---|---|---|---|")
    for r in results:
        n = r["snapshots"]
        print(f"| {r['push']} | {n} | {r['sending']} | {r['sending'] / n:.1f} | {r['receiving']} | "
              f"{r['receiving'] / n:.1f} |")
    many, one = results[1], results[2]
    for side in ("sending", "receiving"):
        print(f"marginal {side}: {(many[side] - one[side]) / (many['snapshots'] - one['snapshots']):.1f} "
              "zfs per snapshot")
    if args.breakdown:
        for r in results:
            print(f"\n{r['push']}:")
            for side in ("sending", "receiving"):
                kinds = Counter(kind(a) for s, a in r["calls"] if s == side)
                print(f"  {side}: " + ", ".join(f"{k} x{c}" for k, c in kinds.most_common()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
