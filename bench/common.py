"""What the benchmarks share: a loop-mounted Btrfs image, real random data, timing,
statistics, the machine they ran on, and where results go.

Imported as `common` by the scripts next to it (run as `python bench/<script>.py`,
so this folder is first on sys.path). Never part of the test suite.
"""

from __future__ import annotations

import json
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
# The CLI users run: the venv's entry point, next to the interpreter running us.
SNAPVER = str(Path(sys.executable).with_name("snapver"))
DEFAULT_WORKDIR = Path("/var/tmp/snapver-bench")  # not tmpfs: the data has to hit a disk

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
# A SNAPVER_SKIP left in the caller's shell would silently turn the hooks off.
GIT_ENV.pop("SNAPVER_SKIP", None)


def run(argv: list[str], cwd: Path | None = None, env: dict | None = None) -> str:
    done = subprocess.run(argv, cwd=cwd, env=env or GIT_ENV, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


def human(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


# ------------------------------------------------------------------ set-up and clean-up
def require_root(script: str, why: str = "mkfs.btrfs, loop mount") -> bool:
    if os.geteuid() != 0:
        print(f"{script} needs root ({why}): run it as root", file=sys.stderr)
        return False
    return True


@contextmanager
def run_dir(workdir: Path):
    """Our own folder inside workdir: the only thing deleted at the end, also on
    Ctrl-C and SIGTERM (which takes the same way out, through the finally blocks)."""
    signal.signal(signal.SIGTERM, signal.default_int_handler)
    workdir.mkdir(parents=True, exist_ok=True)
    path = Path(tempfile.mkdtemp(prefix="run-", dir=workdir))
    try:
        yield path
    finally:
        # Never walk into a filesystem that failed to unmount: say so instead.
        busy = [line.split()[1] for line in open("/proc/self/mounts") if str(path) in line]
        if busy:
            print(f"warning: still mounted, left in place: {', '.join(busy)}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)
        try:
            workdir.rmdir()  # only if nothing else is in it
        except OSError:
            pass


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
def write_file(path: Path, size: int, rng: random.Random | None = None) -> None:
    # Fresh random bytes, never zeros or holes: nothing compresses, dedups or
    # stays sparse, so the filesystem holds as many blocks as the size says.
    # A seeded rng writes the same bytes every time (compare.py gives each tool the same lake).
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, CHUNK)
            f.write(rng.randbytes(n) if rng else os.urandom(n))
            left -= n


def split(budget: int, target: int) -> list[int]:
    """budget bytes as files of about target bytes each (at least one)."""
    count = max(1, round(budget / target))
    return [budget // count] * count


def fill_lake(repo: Path, size: int, rng: random.Random | None = None) -> dict:
    """Write the lake's data through the volume links in repo; return what was written.
    With a seeded rng, the same size gives the same files and bytes every time."""
    written: dict[str, dict[str, int]] = {}

    def add(kind: str, path: Path, nbytes: int) -> None:
        write_file(path, nbytes, rng)
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


# ------------------------------------------------------------------ timing and statistics
def timed(fn, *args, **kwargs):
    start = time.perf_counter()
    result = fn(*args, **kwargs)
    return (time.perf_counter() - start) * 1000, result


def summary(values: list[float]) -> dict:
    # Inclusive quantiles: with 15 samples, p10/p90 stay inside the observed range.
    q = statistics.quantiles(values, n=10, method="inclusive") if len(values) > 1 else values * 9
    return {"n": len(values), "median": statistics.median(values), "p10": q[0], "p90": q[8]}


def cell(values: list[float], digits: int = 1) -> str:
    """A table cell: median (p10-p90) n=..."""
    st = summary(values)
    return f"{st['median']:.{digits}f} ({st['p10']:.{digits}f}-{st['p90']:.{digits}f}) n={st['n']}"


def loadavg() -> list[str]:
    return open("/proc/loadavg").read().split()[:3]


# ------------------------------------------------------------------ the machine and the results
def source_digest(package: Path | None = None) -> str:
    import hashlib
    import snapver

    digest = hashlib.sha256()
    for path in sorted((package or Path(snapver.__file__).parent).rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def freeze_source(dest: Path) -> Path:
    """Copy snapver's package, as it is now, to dest/snapver and make every subprocess
    (the CLI, the Git hooks, the daemon) import that copy: other engineers edit the
    working tree while a benchmark runs, and a run must measure one version of the code.
    PYTHONPATH wins over the venv's editable-install finder. Returns the copy."""
    import compileall
    import snapver

    package = dest / "snapver"
    shutil.copytree(Path(snapver.__file__).parent, package, ignore=shutil.ignore_patterns("__pycache__"))
    # What the installed command reads beside the package (shipped.py: the hook shims, the
    # units): without them the copy cannot `snapver init` (no hooks/ folder).
    for folder in ("hooks", "systemd"):
        source = Path(snapver.__file__).resolve().parent.parent / folder
        if source.is_dir():
            shutil.copytree(source, dest / folder)
    compileall.compile_dir(package, quiet=1)  # the first hook must not pay for compiling
    GIT_ENV["PYTHONPATH"] = str(dest)
    return package


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
        "loadavg_at_end": loadavg(),
        "memory": human(mem_kib * 1024),
        "kernel": platform.release(),
        "btrfs_progs": first_line(["btrfs", "--version"]),
        "git": first_line(["git", "--version"]),
        "cpu": cpu,
        "python": platform.python_version(),
        "snapver": snapver_version,
        "snapver_commit": first_line(["git", "-C", str(HERE.parent), "rev-parse", "--short", "HEAD"]),
        # The tree may hold uncommitted work: this says which code was measured.
        "snapver_source_sha256": source_digest(),
    }


def machine_line(m: dict) -> str:
    """One Markdown line saying what ran where (the load average is the caller's business)."""
    return (f"Machine: {m['cpu']}, {m['nproc']} CPUs, {m['memory']} RAM, kernel {m['kernel']}, "
            f"{m['btrfs_progs']}, {m.get('git') or 'git ?'}, Python {m['python']}, snapver {m['snapver']}"
            + (f" (commit {m['snapver_commit']}" if m["snapver_commit"] else " (")
            + f", source sha256 {m['snapver_source_sha256']})")


def write_results(name: str, text: str, report: dict) -> None:
    """The Markdown table on stdout and in results/<name>.md, everything raw in results/<name>.json."""
    print(text)
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / f"{name}.md").write_text(text)
    (RESULTS / f"{name}.json").write_text(json.dumps(report, indent=2, default=str) + "\n")
