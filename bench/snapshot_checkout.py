#!/usr/bin/env python3
"""Benchmark: are snapver's snapshot and checkout O(1) in lake size on a real Btrfs?

For each lake size, on a fresh loop-mounted Btrfs image:

1. a fresh Git repo gets a lake (Workspace.init, Python API) and is filled
   with real random data: ~60% small files (~50 KB, 1000 per folder) in data/,
   a few ~200 MB shards in data/shards, checkpoints in models/, logs in logs/;
2. `snapshot`: git commit --allow-empty (untimed), then ws.snapshot() (timed);
3. `checkout`: ws.checkout(<first commit>) and back to HEAD's commit, each
   timed; every other round a file is changed first, so that checkout has to
   keep a wip snapshot (the safety path);
4. the same through the CLI (`snapver snapshot --wip`, `snapver checkout REV`)
   as subprocesses: Python start-up and imports included, which is what users feel.

It prints a Markdown table (median, p10, p90 in ms per size, and the ratio of
the medians of the largest and smallest size: ~1.0 when the cost does not grow
with the data) and writes it, with the raw samples as JSON, to bench/results/.

Needs root (mkfs, loop mount). The image is always unmounted and deleted,
also on Ctrl-C. Never part of the test suite.

    .venv/bin/python bench/snapshot_checkout.py [--sizes 1G,8G] [--repeat 15]
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
from datetime import datetime, timezone
from pathlib import Path

from snapver import ops  # noqa: F401  (plugs the registry into the core, as every entry point does)
from snapver.lake import Workspace, parse_size

from common import (DEFAULT_WORKDIR, SMALL_FILE, MiB, SNAPVER, btrfs_image, fill_lake, human,
                    machine, require_root, run, run_dir, settle, summary, timed, write_results)


# ------------------------------------------------------------------ the data
def touch_one_file(repo: Path, round_: int) -> None:
    """A small change: rewrite one small sample in place (what a fix-up of one label does)."""
    with open(repo / "data" / "part-00000" / "sample-0000000.bin", "r+b") as f:
        f.write(os.urandom(SMALL_FILE))
        f.write(f"round {round_}".encode())


# ------------------------------------------------------------------ timing
def bench_size(workdir: Path, size: int, repeat: int) -> dict:
    label = f"lake-{size // MiB}M"
    # Room for the data, Btrfs' DUP metadata and the small changes, kept sparse.
    image_size = int(size * 1.3) + 2 * 1024**3
    samples: dict[str, list[float]] = {
        # The first of each after the data was written is kept apart (n=1):
        # it is the one that meets the freshly written files in the page cache.
        "first snapshot after writing (API)": [],
        "first checkout after writing (API)": [],
        "snapshot (API)": [],
        "checkout, clean (API)": [],
        "checkout, pending changes (API)": [],
        "CLI start-up (snapver --version)": [],
        "snapshot --wip (CLI)": [],
        "checkout (CLI)": [],
    }
    checkouts: list[dict] = []  # every API checkout, with what it did: anomalies show here
    anomalies: list[str] = []
    with btrfs_image(workdir, image_size, label) as mnt:
        repo = workdir / f"{label}.repo"
        repo.mkdir()
        ws = None
        try:
            run(["git", "init", "-q", "-b", "main", str(repo)])
            lake = mnt / "lake"
            lake.mkdir()
            ws = Workspace.init(repo, lake=str(lake))

            print(f"[{label}] writing {human(size)} of random data ...", flush=True)
            write_ms, written = timed(fill_lake, repo, size)
            # Flush now, so that write-back does not land inside a timed call
            # (a Btrfs snapshot waits for the dirty data of its subvolume).
            sync_ms, _ = timed(settle, workdir / f"{label}.img")
            total = sum(w["bytes"] for w in written.values())
            print(f"[{label}] wrote {human(total)} in {write_ms / 1000:.1f} s, "
                  f"synced in {sync_ms / 1000:.1f} s", flush=True)

            run(["git", "add", "snapver.toml"], cwd=repo)
            run(["git", "commit", "-q", "-m", "data v0"], cwd=repo)
            ms, _ = timed(ws.snapshot)
            samples["first snapshot after writing (API)"].append(ms)
            first = ws.git.head()

            # (a) snapshot: one per new commit, as the post-commit hook does.
            for i in range(repeat):
                run(["git", "commit", "-q", "--allow-empty", "-m", f"round {i}"], cwd=repo)
                ms, _ = timed(ws.snapshot)
                samples["snapshot (API)"].append(ms)
            last = ws.git.head()

            # (b) checkout back and forth between the first and the last commit.
            # Every other round changes a file first: that checkout must keep it
            # as a wip snapshot before swapping the volumes.
            for i in range(repeat):
                for target, change in ((first, i % 2 == 1), (last, False)):
                    if change:
                        touch_one_file(repo, i)
                    ms, result = timed(ws.checkout, target)
                    kind = "checkout, pending changes (API)" if change else "checkout, clean (API)"
                    if i == 0 and target == first:
                        kind = "first checkout after writing (API)"
                    samples[kind].append(ms)
                    checkouts.append({"round": i, "to": target, "changed_first": change, "ms": ms,
                                      "kept": [s.name for s in result.kept][:1],
                                      "switched": result.switched})
                    if bool(result.kept) != change:
                        anomalies.append(
                            f"{label} round {i}: checkout {target[:10]} with changed_first={change} "
                            f"kept {len(result.kept)} wip snapshot(s)")
            project = ws.project
            ws.catalog.close()  # the CLI opens its own
            ws = None
            settle(workdir / f"{label}.img")  # the same quiet start as the API rounds

            # (c) the CLI, as a user types it. The first commit is a full ID, the
            # last a short one (rev-parse), both common.
            for i in range(repeat):
                ms, _ = timed(run, [SNAPVER, "--version"], cwd=repo)
                samples["CLI start-up (snapver --version)"].append(ms)
                ms, _ = timed(run, [SNAPVER, "snapshot", "--wip"], cwd=repo)
                samples["snapshot --wip (CLI)"].append(ms)
                for target in (first, last[:10]):
                    ms, _ = timed(run, [SNAPVER, "checkout", target], cwd=repo)
                    samples["checkout (CLI)"].append(ms)
            snapshot_count = sum(1 for _ in (lake / project / "snapshots").glob("*/*"))
        finally:
            if ws is not None and ws._catalog is not None:
                ws._catalog.close()  # an open database would keep the image busy
            shutil.rmtree(repo, ignore_errors=True)
    return {
        "label": label,
        "size": size,
        "image_size": image_size,
        "written": written,
        "written_bytes": total,
        "written_files": sum(w["files"] for w in written.values()),
        "write_seconds": write_ms / 1000,
        "sync_seconds": sync_ms / 1000,
        "snapshots_at_end": snapshot_count,
        "samples_ms": samples,
        "api_checkouts": checkouts,
        "anomalies": anomalies,
    }


# ------------------------------------------------------------------ reporting
def markdown(report: dict) -> str:
    sizes = report["sizes"]
    m = report["machine"]
    lines = [
        "# snapver: snapshot and checkout time vs lake size (Btrfs)",
        "",
        f"{report['date']}, `bench/snapshot_checkout.py --sizes {report['args']['sizes']} "
        f"--repeat {report['args']['repeat']}`",
        "",
        f"Machine: {m['cpu']}, {m['nproc']} CPUs, {m['memory']} RAM, kernel {m['kernel']}, "
        f"{m['btrfs_progs']}, Python {m['python']}, snapver {m['snapver']}"
        + (f" (commit {m['snapver_commit']}" if m["snapver_commit"] else " (")
        + f", source sha256 {m['snapver_source_sha256']}); "
        f"load average at the end {' '.join(m['loadavg_at_end'])}.",
        "Lake on a sparse Btrfs image file, loop-mounted `-o loop,noatime,user_subvol_rm_allowed`,"
        " a fresh one per size; Btrfs page cache warm (data just written, then synced),"
        " host cache of the image file dropped.",
        "",
        "Times in ms: median (p10-p90) over n samples. Ratio: median at the largest size / "
        "median at the smallest (~1.0 when the cost does not grow with the data).",
        "",
    ]
    header = "| operation | " + " | ".join(f"{human(s['size'])} lake" for s in sizes)
    header += " | ratio |" if len(sizes) > 1 else " |"
    lines += [header, "|" + " --- |" * (len(sizes) + 1 + (len(sizes) > 1))]
    for op in sizes[0]["samples_ms"]:
        stats = [summary(s["samples_ms"][op]) for s in sizes]
        cells = [f"{st['median']:.1f} ({st['p10']:.1f}-{st['p90']:.1f}) n={st['n']}" for st in stats]
        ratio = [f"{stats[-1]['median'] / stats[0]['median']:.2f}"] if len(sizes) > 1 else []
        lines.append(f"| {op} | " + " | ".join(cells + ratio) + " |")
    lines += ["", "Data written per lake (random bytes, no holes):", "",
              "| lake | files | bytes | small files in data/ | data/shards | models | logs | write | sync |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for s in sizes:
        w = s["written"]
        kinds = [f"{w[k]['files']} x {human(w[k]['bytes'] // w[k]['files'])}"
                 for k in ("data (small files)", "data/shards", "models", "logs")]
        lines.append(f"| {human(s['size'])} | {s['written_files']:,} | {s['written_bytes']:,} | "
                     + " | ".join(kinds) + f" | {s['write_seconds']:.0f} s | {s['sync_seconds']:.0f} s |")
    anomalies = [a for s in sizes for a in s["anomalies"]]
    if len(sizes) > 1:
        for op in sizes[0]["samples_ms"]:
            first, last = (statistics.median(s["samples_ms"][op]) for s in (sizes[0], sizes[-1]))
            if last / first > 1.5:  # well beyond the noise of a shared machine
                anomalies.append(f"{op} grows with the lake: {first:.0f} ms -> {last:.0f} ms")
    lines += ["", "Anomalies: " + ("; ".join(anomalies) if anomalies else
                                    "none (every checkout after a change kept a wip snapshot, "
                                    "no clean one did)."), ""]
    return "\n".join(lines)


# ------------------------------------------------------------------ main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1G,8G", help="lake sizes, comma-separated (default 1G,8G)")
    parser.add_argument("--repeat", type=int, default=15, help="samples per operation (default 15)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                        help="where the image files go; needs free space for the largest size")
    args = parser.parse_args()
    sizes = sorted(parse_size(s) for s in args.sizes.split(","))
    if args.repeat < 2:
        parser.error("--repeat must be at least 2")

    if not require_root("snapshot_checkout.py"):
        return 2

    results = []
    with run_dir(args.workdir) as workdir:
        for size in sizes:
            results.append(bench_size(workdir, size, args.repeat))

    report = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "args": {"sizes": args.sizes, "repeat": args.repeat},
        "machine": machine(),
        "sizes": results,
    }
    write_results("snapshot_checkout", markdown(report), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
