#!/usr/bin/env python3
"""Benchmark: an incremental `snapver push` against the bare send | receive pipe.

The goal (issue): pushing a 1% change of a ~8 GB lake reaches at least 90% of
the throughput of `btrfs send -p | btrfs receive` (and `zfs send -i | zfs
receive`) on the same snapshots. For each backend:

1. two fresh filesystems (Btrfs: loop images; ZFS: zfs-fuse file pools), a Git
   repo whose lake is on the first, real random data (the mix of
   snapshot_checkout.py), commit v1; `snapver push` of v1 to a lake on the
   second, and the bare pipe of v1 into a folder (dataset) of its own there;
2. 1% of the lake's bytes rewritten (small files), commit v2;
3. rounds, alternating which goes first: the incremental of v2 by the bare
   pipe, volume by volume, and by `snapver push` (one command, every volume,
   start-up and catalog rows included); after each round v2 is deleted again
   on the far side, the page cache dropped, so every round reads cold.

Throughput = stream bytes / wall seconds; the ratio is snapver's over the pipe's.
Needs root. Filesystems are always unmounted and deleted. Never part of the tests.

    .venv/bin/python bench/transfer.py [--size 8G] [--zfs-size 1G] [--rounds 5]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import subprocess
import sys
import time
from contextlib import ExitStack, contextmanager
from datetime import datetime, timezone
from pathlib import Path

from snapver.lake import parse_size

from common import (DEFAULT_WORKDIR, SNAPVER, btrfs_image, cell, fill_lake, freeze_source, human,
                    loadavg, machine, machine_line, require_root, run, run_dir, settle, summary, write_results)

GOAL = 0.90
VOLUMES = ("data", "models", "logs")


def drop_caches() -> None:
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


@contextmanager
def zfs_pool(workdir: Path, size: int, label: str):
    image = workdir / f"{label}.pool"
    with open(image, "xb") as f:
        f.truncate(size)
    pool = f"bench{label}{os.urandom(2).hex()}"
    run(["zpool", "create", "-m", str(workdir / f"{label}.mnt"), pool, str(image)])
    try:
        yield pool
    finally:
        for _ in range(40):
            if subprocess.run(["zpool", "destroy", "-f", pool], capture_output=True).returncode == 0:
                break
            time.sleep(0.25)
        image.unlink(missing_ok=True)


class Side:
    """One backend's two filesystems and how to name, send and delete things on them."""

    def __init__(self, kind: str, here: str, there: str):
        self.kind, self.here, self.there = kind, here, there

    def lake_args(self) -> list[str]:
        if self.kind == "btrfs":
            Path(self.here, "lake").mkdir()
            return ["--lake", f"{self.here}/lake"]
        run(["zfs", "create", "-o", "atime=off", f"{self.here}/lake"])
        return ["--lake", f"{self.here}/lake", "--backend", "zfs"]

    def far_url(self) -> str:
        if self.kind == "btrfs":
            Path(self.there, "far").mkdir()
            return f"file://{self.there}/far"
        run(["zfs", "create", f"{self.there}/far"])
        return f"file:///{self.there}/far"

    def snapshot(self, volume: str, name: str) -> str:
        """Where snapshot `name` of volume is: a path (Btrfs) or a ZFS snapshot name."""
        if self.kind == "btrfs":
            return next(str(p) for p in Path(self.here, "lake").glob(f"*/snapshots/{volume}/{name}"))
        out = run(["zfs", "list", "-H", "-o", "name", "-t", "snapshot", "-r", f"{self.here}/lake"])
        return next(l for l in out.splitlines() if l.endswith(f"/{volume}@{name}") and "/workspaces/" in l)

    def send(self, volume: str, name: str, base: str | None) -> list[str]:
        if self.kind == "btrfs":
            return ["btrfs", "send", "-q", *(["-p", self.snapshot(volume, base)] if base else []),
                    self.snapshot(volume, name)]
        return ["zfs", "send", *(["-i", self.snapshot(volume, base)] if base else []), self.snapshot(volume, name)]

    def bare(self, volume: str, name: str, base: str | None) -> None:
        """The bare pipe of one volume's snapshot into bare/<volume> on the far side."""
        send = self.send(volume, name, base)
        if self.kind == "btrfs":
            target = Path(self.there, "bare", volume)
            target.mkdir(parents=True, exist_ok=True)
            receive = ["btrfs", "receive", "-e", str(target)]
        else:
            receive = ["zfs", "receive", f"{self.there}/bare{volume}"]
        # The pipe exactly as a shell builds it: two processes, one kernel pipe between them.
        sender = subprocess.Popen(send, stdout=subprocess.PIPE)
        receiver = subprocess.Popen(receive, stdin=sender.stdout, stdout=subprocess.DEVNULL)
        sender.stdout.close()
        if receiver.wait() or sender.wait():
            raise RuntimeError(f"{' '.join(send)} | {' '.join(receive)} failed")

    def forget(self, name: str, base: str) -> None:
        """Delete snapshot name on the far side, in both the bare and the snapver places,
        so that the next round receives it again on top of base."""
        if self.kind == "btrfs":
            for path in Path(self.there).glob(f"**/{name}"):
                run(["btrfs", "subvolume", "delete", str(path)])
            return
        out = run(["zfs", "list", "-H", "-o", "name", "-t", "snapshot", "-r", self.there])
        views = run(["zfs", "list", "-H", "-o", "name", "-r", self.there]).split()
        for view in (v for v in views if "/snapshots/" in v):  # zfs-fuse's read-only views:
            subprocess.run(["zfs", "unmount", view], capture_output=True)  # mounted ones are busy
        for snap in (l for l in out.splitlines() if l.endswith(f"@{name}")):
            # A receive moved the dataset itself on to name: back to base, as before the round
            # (-R: with the views of name).
            run(["zfs", "rollback", "-R", f"{snap.partition('@')[0]}@{base}"])


_sizes: dict[tuple, int] = {}


def stream_bytes(send: list[str]) -> int:
    """The size of a stream, by sending it once more into a counter (untimed, cached)."""
    key = tuple(send)
    if key not in _sizes:
        proc = subprocess.Popen(send, stdout=subprocess.PIPE)
        n = 0
        while chunk := proc.stdout.read(1 << 20):
            n += len(chunk)
        proc.wait()
        _sizes[key] = n
    return _sizes[key]


def rewrite_one_percent(repo: Path, size: int, seed: int = 1) -> int:
    files = sorted((repo / "data").glob("part-*/sample-*.bin"))
    rng = random.Random(seed)
    chosen, written = [], 0
    for f in rng.sample(files, len(files)):
        if written >= size // 100:
            break
        chosen.append(f)
        written += f.stat().st_size
    for f in chosen:
        f.write_bytes(os.urandom(f.stat().st_size))
    return written


def bench_backend(kind: str, size: int, rounds: int, workdir: Path) -> dict:
    with ExitStack() as stack:
        # The far side holds two copies: snapver's and the bare pipe's (the images are sparse).
        room = {1: int(size * 1.6) + (256 << 20), 2: int(size * 3) + (512 << 20)}
        if kind == "btrfs":
            here, there = (str(stack.enter_context(btrfs_image(workdir, room[i], f"{kind}{i}"))) for i in (1, 2))
        else:
            here, there = (stack.enter_context(zfs_pool(workdir, room[i], f"z{i}")) for i in (1, 2))
        side = Side(kind, here, there)
        repo = workdir / f"repo-{kind}"
        repo.mkdir()
        run(["git", "init", "-q", "-b", "main", str(repo)])
        run([SNAPVER, "init", *side.lake_args()], cwd=repo)
        run(["git", "add", "snapver.toml"], cwd=repo)
        run(["git", "commit", "-q", "-m", "snapver"], cwd=repo)
        written = fill_lake(repo, size)
        run(["git", "commit", "-q", "--allow-empty", "-m", "v1"], cwd=repo)
        v1 = run(["git", "rev-parse", "HEAD"], cwd=repo).strip()
        run([SNAPVER, "remote", "add", "far", side.far_url()], cwd=repo)
        first = json.loads(run([SNAPVER, "push", "far", "-q", "--json"], cwd=repo))["result"]
        for v in VOLUMES:
            side.bare(v, v1, None)
        changed = rewrite_one_percent(repo, size)
        run(["git", "commit", "-q", "--allow-empty", "-m", "v2"], cwd=repo)
        v2 = run(["git", "rev-parse", "HEAD"], cwd=repo).strip()
        samples = {"bare": [], "snapver": [], "snapver streams": []}
        stream = sum(stream_bytes(side.send(v, v2, v1)) for v in VOLUMES)
        for r in range(rounds):
            for who in (("bare", "snapver") if r % 2 == 0 else ("snapver", "bare")):
                if kind == "btrfs":
                    settle(Path(workdir / f"{kind}1.img"))
                drop_caches()
                start = time.perf_counter()
                if who == "bare":
                    for v in VOLUMES:
                        side.bare(v, v2, v1)
                else:
                    done = json.loads(run([SNAPVER, "push", "far", "-q", "--json"], cwd=repo))["result"]
                    assert {t["base"] for t in done} == {v1}, done
                    # From each request to its answer: the streams alone, without start-up.
                    samples["snapver streams"].append(sum(t["seconds"] for t in done))
                samples[who].append(time.perf_counter() - start)
            side.forget(v2, v1)
        report = {
            "kind": kind, "size": size, "written": written, "changed_bytes": changed,
            "first_push": first, "stream_bytes": stream, "seconds": samples,
        }
        med = {w: summary(v)["median"] for w, v in samples.items()}
        report["ratio"] = med["bare"] / med["snapver"]  # throughput ratio, snapver / pipe
        report["stream_ratio"] = med["bare"] / med["snapver streams"]
        return report


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="8G", help="Btrfs lake size (default 8G; 0 to skip)")
    ap.add_argument("--zfs-size", default="1G", help="ZFS lake size, on zfs-fuse (default 1G; 0 to skip)")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    args = ap.parse_args()
    if not require_root("transfer.py"):
        return 1
    reports = []
    start_load = loadavg()
    with run_dir(args.workdir) as workdir:
        freeze_source(workdir / "src")
        # A run of one backend alone keeps its own results file, so it replaces no other figure.
        name = "transfer" if args.size != "0" else "transfer-zfs"
        if args.size != "0":
            reports.append(bench_backend("btrfs", parse_size(args.size), args.rounds, workdir))
            report(reports, start_load, name)  # kept even if the ZFS part fails
        if args.zfs_size != "0" and shutil.which("zpool"):
            reports.append(bench_backend("zfs", parse_size(args.zfs_size), args.rounds, workdir))
            report(reports, start_load, name)
    return 0


def report(reports: list[dict], start_load: list[str], name: str) -> None:
    m = machine()
    lines = [
        "# Incremental push of a 1% change: snapver versus the bare send | receive pipe",
        "",
        f"Run {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC. {machine_line(m)}.",
        f"Load average at start {' '.join(start_load)}, at end {' '.join(m['loadavg_at_end'])}.",
        "",
        "| backend | lake | changed | stream | bare pipe s | snapver push s | of which streams s "
        "| bare MB/s | snapver MB/s (whole / streams) | ratio whole | ratio streams | goal (streams) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in reports:
        mb = {w: r["stream_bytes"] / summary(v)["median"] / 1e6 for w, v in r["seconds"].items()}
        lines.append(
            f"| {r['kind']} | {human(r['size'])} | {human(r['changed_bytes'])} | {human(r['stream_bytes'])} | "
            f"{cell(r['seconds']['bare'], 2)} | {cell(r['seconds']['snapver'], 2)} | "
            f"{cell(r['seconds']['snapver streams'], 2)} | {mb['bare']:.0f} | {mb['snapver']:.0f} / "
            f"{mb['snapver streams']:.0f} | {r['ratio']:.2f} | {r['stream_ratio']:.2f} | "
            f"{'met' if r['stream_ratio'] >= GOAL else 'missed'} (>= {GOAL}) |")
    lines += ["", "Seconds: median (p10-p90) n=rounds, cold cache each round. `snapver push` is one command for "
              "all three volumes: whole = the command's wall time (interpreter start-up, `snapver serve` at the "
              "far end, listing both lakes, catalog rows); streams = the time from each volume's request to its "
              "answer, summed (what `--json` reports per snapshot). The bare pipe is one `send | receive` per "
              "volume. Ratio = snapver throughput / bare pipe throughput.", ""]
    write_results(name, "\n".join(lines), {"machine": m, "load_at_start": start_load, "runs": reports})


if __name__ == "__main__":
    sys.exit(main())
