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

    sudo /work/main/.venv/bin/python bench/snapshot_checkout.py [--sizes 1G,8G] [--repeat 15]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from snapver.lake import Workspace, parse_size

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
# The CLI users run: the venv's entry point, next to the interpreter running us.
SNAPVER = str(Path(sys.executable).with_name("snapver"))

MiB = 1024**2
SMALL_FILE = 50 * 1024  # ~50 KB: a typical image / sample
FILES_PER_DIR = 1000
SHARD = 200 * MiB
CHECKPOINT = 300 * MiB  # within the 100-500 MB checkpoint range
LOG_FILE = 4 * MiB
CHUNK = 8 * MiB  # large files are written in chunks: bounded memory

# Share of the lake size per kind of file (the rest of the brief's layout).
SHARE_SMALL, SHARE_SHARDS, SHARE_MODELS, SHARE_LOGS = 0.60, 0.15, 0.20, 0.05

GIT_ENV = {
    **os.environ,
    "GIT_AUTHOR_NAME": "bench", "GIT_AUTHOR_EMAIL": "bench@example.invalid",
    "GIT_COMMITTER_NAME": "bench", "GIT_COMMITTER_EMAIL": "bench@example.invalid",
}


def run(argv: list[str], cwd: Path | None = None) -> str:
    done = subprocess.run(argv, cwd=cwd, env=GIT_ENV, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


# ------------------------------------------------------------------ the image
@contextmanager
def btrfs_image(workdir: Path, size: int, label: str):
    """A sparse Btrfs image, loop-mounted; always unmounted and deleted on the way out."""
    image = workdir / f"{label}.img"
    mnt = workdir / f"{label}.mnt"
    mnt.mkdir()
    with open(image, "xb") as f:
        f.truncate(size)  # sparse: only what is written takes disk space
    mounted = False
    try:
        run(["mkfs.btrfs", "-q", str(image)])
        # The options snapver itself mounts its images with (backends/btrfs.py).
        run(["mount", "-o", "loop,noatime,user_subvol_rm_allowed", str(image), str(mnt)])
        mounted = True
        yield mnt
    finally:
        try:
            if mounted:
                unmount(mnt)
        finally:
            image.unlink(missing_ok=True)  # a still-attached loop device keeps it until detached
            mnt.rmdir()


def unmount(mnt: Path) -> None:
    try:
        run(["umount", str(mnt)])
    except RuntimeError as e:
        # Something still holds it (a stray process): detach it lazily rather
        # than leave it mounted; the loop device goes when the last user does.
        print(f"warning: {e}; detaching lazily", file=sys.stderr)
        run(["umount", "-l", str(mnt)])


# ------------------------------------------------------------------ the data
def write_file(path: Path, size: int) -> None:
    # Fresh random bytes, never zeros or holes: nothing compresses, dedups or
    # stays sparse, so the filesystem holds as many blocks as the size says.
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, CHUNK)
            f.write(os.urandom(n))
            left -= n


def split(budget: int, target: int) -> list[int]:
    """budget bytes as files of about target bytes each (at least one)."""
    count = max(1, round(budget / target))
    return [budget // count] * count


def fill_lake(repo: Path, size: int) -> dict:
    """Write the lake's data through the volume links in repo; return what was written."""
    written: dict[str, dict[str, int]] = {}

    def add(kind: str, path: Path, nbytes: int) -> None:
        write_file(path, nbytes)
        w = written.setdefault(kind, {"files": 0, "bytes": 0})
        w["files"] += 1
        w["bytes"] += nbytes

    small_count = int(size * SHARE_SMALL) // SMALL_FILE
    for i in range(small_count):
        folder = repo / "data" / f"part-{i // FILES_PER_DIR:05d}"
        if i % FILES_PER_DIR == 0:
            folder.mkdir()
        add("data (small files)", folder / f"sample-{i:07d}.bin", SMALL_FILE)
    (repo / "data" / "shards").mkdir()
    for i, n in enumerate(split(int(size * SHARE_SHARDS), SHARD)):
        add("data/shards", repo / "data" / "shards" / f"shard-{i:04d}.bin", n)
    for i, n in enumerate(split(int(size * SHARE_MODELS), CHECKPOINT)):
        add("models", repo / "models" / f"checkpoint-{i:03d}.pt", n)
    for i, n in enumerate(split(int(size * SHARE_LOGS), LOG_FILE)):
        add("logs", repo / "logs" / f"train-{i:04d}.log", n)
    return written


def touch_one_file(repo: Path, round_: int) -> None:
    """A small change: rewrite one small sample in place (what a fix-up of one label does)."""
    with open(repo / "data" / "part-00000" / "sample-0000000.bin", "r+b") as f:
        f.write(os.urandom(SMALL_FILE))
        f.write(f"round {round_}".encode())


def settle(image: Path, timeout: float = 120) -> None:
    """Flush everything written, wait until it is on disk, drop the image's host cache.

    os.sync alone is not enough on a loop device: flushing the Btrfs image
    dirties the backing file's pages on the host filesystem, and write-back of
    those would otherwise land inside the timed calls. Those pages are also a
    second copy of the lake in RAM (a real disk has none): 8 GB of it puts the
    machine under memory pressure that slows everything, so it is dropped.
    Btrfs' own cache of the lake stays warm.
    """
    deadline = time.monotonic() + timeout
    while True:
        os.sync()
        meminfo = {line.split(":")[0]: int(line.split()[1]) for line in open("/proc/meminfo")}
        if meminfo["Dirty"] + meminfo["Writeback"] < 64 * 1024 or time.monotonic() > deadline:
            break  # KiB; a little is other processes' business
        time.sleep(0.5)
    fd = os.open(image, os.O_RDONLY)
    try:
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)


# ------------------------------------------------------------------ timing
def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return (time.perf_counter() - start) * 1000, result


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
def summary(values: list[float]) -> dict:
    # Inclusive quantiles: with 15 samples, p10/p90 stay inside the observed range.
    q = statistics.quantiles(values, n=10, method="inclusive") if len(values) > 1 else values * 9
    return {"n": len(values), "median": statistics.median(values), "p10": q[0], "p90": q[8]}


def source_digest() -> str:
    import hashlib
    import snapver

    digest = hashlib.sha256()
    for path in sorted(Path(snapver.__file__).parent.rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def machine() -> dict:
    def first_line(argv):
        try:
            return run(argv).strip().splitlines()[0]
        except (RuntimeError, FileNotFoundError, IndexError):
            return None

    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                if line.startswith("model name")), platform.processor())
    mem_kib = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    try:
        from importlib.metadata import version
        snapver_version = version("snapver")
    except Exception:
        snapver_version = None
    return {
        "nproc": os.cpu_count(),
        "loadavg_at_end": open("/proc/loadavg").read().split()[:3],
        "memory": human(mem_kib * 1024),
        "kernel": platform.release(),
        "btrfs_progs": first_line(["btrfs", "--version"]),
        "cpu": cpu,
        "python": platform.python_version(),
        "snapver": snapver_version,
        "snapver_commit": first_line(["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"]),
        # The tree may hold uncommitted work: this says which code was measured.
        "snapver_source_sha256": source_digest(),
    }


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
    parser.add_argument("--workdir", type=Path, default=Path("/var/tmp/snapver-bench"),
                        help="where the image files go; needs free space for the largest size")
    args = parser.parse_args()
    sizes = sorted(parse_size(s) for s in args.sizes.split(","))
    if args.repeat < 2:
        parser.error("--repeat must be at least 2")

    if os.geteuid() != 0:
        print("snapshot_checkout.py needs root (mkfs.btrfs, loop mount): run it with sudo", file=sys.stderr)
        return 2

    # SIGTERM takes the same way out as Ctrl-C, through the finally blocks.
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    args.workdir.mkdir(parents=True, exist_ok=True)
    # Our own folder inside workdir: the only thing we delete at the end.
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=args.workdir))
    results = []
    try:
        for size in sizes:
            results.append(bench_size(run_dir, size, args.repeat))
    finally:
        # Never walk into a filesystem that failed to unmount: say so instead.
        busy = [line.split()[1] for line in open("/proc/self/mounts") if str(run_dir) in line]
        if busy:
            print(f"warning: still mounted, left in place: {', '.join(busy)}", file=sys.stderr)
        else:
            shutil.rmtree(run_dir, ignore_errors=True)
        try:
            args.workdir.rmdir()  # only if nothing else is in it
        except OSError:
            pass

    report = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "args": {"sizes": args.sizes, "repeat": args.repeat},
        "machine": machine(),
        "sizes": results,
    }
    text = markdown(report)
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "snapshot_checkout.md").write_text(text)
    (RESULTS / "snapshot_checkout.json").write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
