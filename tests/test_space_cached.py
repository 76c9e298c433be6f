"""Space accounting without walking every time (issue 19): ZFS reads properties; Btrfs walks a
snapshot once and remembers (backends/btrfsspace.py). The answers equal a fresh walk's, also
after the lake changed under the cache."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path


from snapver.backends import btrfsspace
from snapver.backends.base import Space
from snapver.backends.btrfs import subvol_info

P, W = "proj", "ws1"
SHA_A, SHA_B, SHA_C = "a" * 40, "b" * 40, "c" * 40


def put(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(os.urandom(size))
        os.fsync(f.fileno())


def walked(backend, path: Path):
    from snapver.backends.btrfs import _du

    return _du(path)


def test_space_is_remembered_and_stays_true(backend):
    live = backend.create_volume(P, W, "data")
    put(live / "big.bin", 1 << 20)
    put(live / "small.bin", 4096)
    a = backend.snapshot(P, W, ["data"], SHA_A)[0]
    put(live / "big.bin", 1 << 20)  # rewritten: a alone holds the old MiB now
    b = backend.snapshot(P, W, ["data"], SHA_B)[0]
    a, b = backend.find(P, "data", a.name), backend.find(P, "data", b.name)
    first = backend.space(a)
    assert first.referenced >= (1 << 20) + 4096 and first.exclusive >= 1 << 20
    assert backend.space(a) == first
    if backend.name != "btrfs":
        assert backend.live_space(P, W, "data").referenced >= 1 << 20
        return
    assert first == walked(backend, a.path)
    # a has a sibling (b): measured from their send stream, and what that needs remembered.
    assert (backend.root / btrfsspace.DELTA / f"{subvol_info(a.path).uuid}.json").exists(), "remembered"
    # The live volume, not written since b was taken of it: b's bytes, none of its own; asked
    # again, b's referenced bytes are the ones remembered (btrfsspace.known_referenced).
    assert backend.live_space(P, W, "data") == walked(backend, live)
    assert btrfsspace.known_referenced(backend.root, b.path, subvol_info(b.path).uuid, subvol_info) == walked(backend, b.path).referenced
    assert backend.live_space(P, W, "data") == walked(backend, live)
    # small.bin's blocks are a's, b's and live's; rewritten in live and b gone, a alone
    # holds them: a's exclusive bytes grow, and the cache must follow.
    put(live / "small.bin", 4096)
    backend.destroy(b)
    subprocess.run(["btrfs", "subvolume", "sync", str(backend.root)], check=True)  # b's blocks dropped
    os.sync()
    assert backend.space(a) == walked(backend, a.path) and backend.space(a).exclusive > first.exclusive
    assert backend.live_space(P, W, "data") == walked(backend, live)
    put(live / "more.bin", 8192)  # written again: measured again
    assert backend.live_space(P, W, "data") == walked(backend, live)
    assert backend.live_space(P, W, "data").referenced >= first.referenced + 8192
    c = backend.snapshot(P, W, ["data"], SHA_C)[0]
    c = backend.find(P, "data", c.name)
    assert backend.space(c) == walked(backend, c.path)
    fp = backend.footprint(P)
    assert fp == backend.footprint(P) and fp.on_disk <= fp.full_copies


def test_space_from_streams_equals_the_walk(backend):
    """Btrfs: a snapshot's space from the send stream to a sibling (O(changes)) is the walk's,
    for rewrites, deletions, a renamed folder, inline files, hard links and symlinks, also once
    the sibling it was measured against is gone; ZFS: its properties, as `zfs get` gives them."""
    live = backend.create_volume(P, W, "data")
    put(live / "a.bin", 1 << 20)
    put(live / "b.bin", 8192)
    put(live / "tiny", 64)  # inline in the metadata
    put(live / "d" / "one.bin", 16384)
    put(live / "d" / "sub" / "two.bin", 4096)
    os.link(live / "b.bin", live / "b-link")
    os.symlink("a.bin", live / "to-a")
    shas = [c * 40 for c in "1234"]
    snaps = [backend.snapshot(P, W, ["data"], shas[0])[0]]
    put(live / "a.bin", 1 << 20)  # rewritten: the first snapshot alone holds the old MiB
    (live / "b.bin").unlink()
    put(live / "tiny", 100)
    os.rename(live / "d", live / "d2")
    put(live / "e.bin", 65536)
    put(live / "new\nline.bin", 8192)  # `btrfs filesystem du` prints its name over two lines
    snaps.append(backend.snapshot(P, W, ["data"], shas[1])[0])
    snaps.append(backend.snapshot(P, W, ["data"], shas[2])[0])  # nothing changed
    with open(live / "e.bin", "r+b") as f:  # a part of e rewritten
        f.write(os.urandom(4096))
        os.fsync(f.fileno())
    snaps.append(backend.snapshot(P, W, ["data"], shas[3])[0])
    snaps = [backend.find(P, "data", s.name) for s in snaps]
    os.sync()

    def truth(snap):
        if backend.name == "btrfs":
            return walked(backend, snap.path)
        full = backend._zsnap(snap).full
        out = subprocess.run(["zfs", "get", "-Hp", "-o", "value", "used,referenced", full],
                             capture_output=True, text=True, check=True).stdout.split()
        return Space(referenced=int(out[1]), exclusive=int(out[0]))

    # Newest first, as the Space page asks: the first is walked, the others from streams.
    for snap in snaps[::-1]:
        assert backend.space(snap) == truth(snap), snap.name
    for snap in snaps:
        assert backend.space(snap) == truth(snap), snap.name  # again, from what was kept
    assert backend.spaces(snaps) == [truth(s) for s in snaps]  # a page at once (one du on Btrfs)
    assert backend.space(snaps[0]).exclusive >= 1 << 20
    if backend.name != "btrfs":
        return
    kept = {p.stem: json.loads(p.read_text()) for p in (backend.root / btrfsspace.DELTA).glob("*.json")}
    bases = [kept[subvol_info(s.path).uuid].get("base") for s in snaps if subvol_info(s.path).uuid in kept]
    assert sum(1 for b in bases if b) >= 3, "measured from streams, not walked"
    # Writes in the live volume and a sibling gone: what the others hold alone changes.
    before = backend.space(snaps[3]).exclusive  # its rewritten block is live's too
    put(live / "e.bin", 65536)
    backend.destroy(snaps[2])
    subprocess.run(["btrfs", "subvolume", "sync", str(backend.root)], check=True)
    os.sync()
    for snap in (snaps[0], snaps[1], snaps[3]):
        assert backend.space(snap) == walked(backend, snap.path), snap.name
    assert backend.space(snaps[3]).exclusive >= before + 4096  # live's new e.bin no longer shares it


# ------------------------------------------------------------------ issues 16, 19: no walk left
# on the paths a user waits for: the live volume, the lake's footprint, a volume's first snapshot

def subvolume_ids(mnt: Path) -> set[str]:
    """Every subvolume of the filesystem (a temporary snapshot left anywhere shows here)."""
    out = subprocess.run(["btrfs", "subvolume", "list", str(mnt)], capture_output=True, text=True, check=True).stdout
    return {line.split()[1] for line in out.splitlines()}


def fs_root(path: Path) -> Path:
    from snapver import linux

    return linux.mount_of(path).mountpoint


def test_a_written_live_volume_from_a_snapshot_of_it_equals_the_walk(backend):
    """A written live volume: measured from the stream to its newest snapshot through a
    read-only snapshot of it that is gone before the answer (none is ever left), equal to the
    walk byte for byte; asked again with nothing written, no snapshot is taken (its generation,
    which a snapshot bumps, stays). ZFS: its properties."""
    live = backend.create_volume(P, W, "data")
    put(live / "a.bin", 1 << 20)
    put(live / "tiny", 64)
    put(live / "d" / "one.bin", 16384)
    os.symlink("a.bin", live / "to-a")
    backend.snapshot(P, W, ["data"], SHA_A)
    if backend.name != "btrfs":
        put(live / "a.bin", 1 << 20)
        out = subprocess.run(["zfs", "get", "-Hp", "-o", "value", "referenced,usedbydataset",
                              backend._live(P, W, "data")], capture_output=True, text=True, check=True).stdout.split()
        assert backend.live_space(P, W, "data") == Space(referenced=int(out[0]), exclusive=int(out[1]))
        return
    mnt = fs_root(live)
    before = subvolume_ids(mnt)
    for step, change in enumerate([
        lambda: put(live / "a.bin", 1 << 20),  # rewritten: the live volume alone holds the new MiB
        lambda: (put(live / "tiny", 100), put(live / "e.bin", 65536)),  # inline, and a new file
        lambda: os.rename(live / "d", live / "d2"),  # a folder moved (every file below named)
        lambda: (live / "e.bin").unlink(),
    ]):
        change()
        os.sync()
        got = backend.live_space(P, W, "data")
        assert got == walked(backend, live), step
        assert subvolume_ids(mnt) == before, "no temporary snapshot left"
        assert list((live.parent / ".trash").glob("*/*")) == []
    generation = subvol_info(live).generation
    assert backend.live_space(P, W, "data") == walked(backend, live)
    assert subvol_info(live).generation == generation, "nothing written: no snapshot taken again"
    # Its figures are what it holds: the first MiB's rewrite is its own, not the snapshot's.
    assert backend.live_space(P, W, "data").exclusive >= 1 << 20
    # A hard link among the named files: walked (its other names are unknown), still no leftover.
    os.link(live / "to-a", live / "link-to-link", follow_symlinks=False)
    put(live / "d2" / "one.bin", 4096)
    os.link(live / "d2" / "one.bin", live / "one-again")
    os.sync()
    assert backend.live_space(P, W, "data") == walked(backend, live)
    assert subvolume_ids(mnt) == before


CHILD = """
import faulthandler, os, signal, sys, time
from pathlib import Path
from snapver.backends import open_backend
faulthandler.register(signal.SIGUSR1)  # the test asks for its stack if it does not end
# As a terminal's Ctrl-C finds it: a suite started in a script's background (`.ci/run &`)
# hands its children SIGINT ignored, and snapver rightly keeps it ignored (the diary in CI:
# the handler heard the signal, then put back SIG_IGN, and measuring went on).
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGTERM, signal.SIG_DFL)
# A diary on stderr, which a failure shows: each measure's start and end, and every handler
# set and run, so that a child that outlives its signal says whether the signal was heard.
def note(*words):  # CLOCK_MONOTONIC, as the test's own time.monotonic()
    print(f"{time.monotonic():.2f}", *words, file=sys.stderr, flush=True)
set_handler = signal.signal
def noted_signal(sig, handler):
    if callable(handler) and handler is not signal.default_int_handler:
        held = handler
        def handler(signum, frame):
            note("handler ran for signal", signum)
            held(signum, frame)
    note("handler set for signal", int(sig), getattr(handler, "__qualname__", handler))
    return set_handler(sig, handler)
signal.signal = noted_signal
backend = open_backend("btrfs", sys.argv[1])
live = backend.volume_path("proj", "ws1", "data")
(live / "new").mkdir(exist_ok=True)
for i in range(1500):  # named by every stream to the snapshot: the temporary one lives a while
    (live / "new" / str(i)).write_bytes(os.urandom(3000))
backend.live_space("proj", "ws1", "data")
print("ready", flush=True)
i = 0
while True:
    i += 1
    with open(live / "w.bin", "wb") as f:
        f.write(os.urandom(4096 * (1 + i % 7)))
    note("measure", i)
    backend.live_space("proj", "ws1", "data")
    note("measured", i)
"""


def test_a_live_volume_measure_leaves_nothing_when_interrupted():
    """Ctrl-C or a kill at any moment of a live volume's measure: its temporary snapshot is
    gone all the same, and the signal still ends the process. On a filesystem of its own:
    the measure waits for the cleaner to drop its temporary snapshot, and there no lake
    earlier tests deleted is queued before it. (A child that outlived its 300 s in CI had
    inherited SIGINT ignored, as everything started in a script's background does (the CI runs
    it failed in were started with `&`), and kept it ignored, as it should: CHILD now starts as
    under a terminal.)"""
    from tests.fixtures.btrfs import btrfs_image

    with btrfs_image("1G") as mnt:
        _interrupt_measures(mnt)


def _interrupt_measures(btrfs_lake: Path) -> None:
    import signal
    import sys
    import time

    from snapver.backends import open_backend

    backend = open_backend("btrfs", str(btrfs_lake))
    live = backend.create_volume(P, W, "data")
    for i in range(300):
        put(live / "many" / f"{i}.bin", 8192)
    backend.snapshot(P, W, ["data"], SHA_A)
    mnt = fs_root(live)
    before = subvolume_ids(mnt)
    for sig, delay in [(signal.SIGINT, 0.3), (signal.SIGTERM, 0.5), (signal.SIGINT, 0.9), (signal.SIGTERM, 1.3),
                       (signal.SIGINT, 1.7), (signal.SIGTERM, 0.2), (signal.SIGINT, 0.6), (signal.SIGTERM, 1.1)]:
        child = subprocess.Popen([sys.executable, "-c", CHILD, str(btrfs_lake)], stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        assert child.stdout is not None and child.stderr is not None
        assert child.stdout.readline() == "ready\n", child.stderr.read()
        time.sleep(delay)
        child.send_signal(sig)
        sent = time.monotonic()
        # A held signal waits for the end of the measure, `btrfs subvolume sync` included, which
        # waits for the cleaner: in CI, under the whole suite's load, once more than 60 s.
        try:
            _, err = child.communicate(timeout=300)
        except subprocess.TimeoutExpired:
            # What it was waiting on (it and the tools it ran), for the failure to say.
            tree = subprocess.run(["ps", "-e", "-o", "pid,ppid,stat,wchan:32,etimes,args"], capture_output=True,
                                  text=True).stdout
            status = Path(f"/proc/{child.pid}/status").read_text()
            child.send_signal(signal.SIGUSR1)
            time.sleep(2)
            child.kill()
            _, err = child.communicate()
            mine = [line for line in tree.splitlines()[1:] if line.split()[1] == str(child.pid)
                    or line.split()[0] == str(child.pid) or "btrfs-" in line]
            raise AssertionError(f"{sig!r} sent at {sent:.2f} ({delay} s after ready): still running after 300 s:\n"
                                 f"{status}\n{tree.splitlines()[0]}\n" + "\n".join(mine) + f"\n{err}") from None
        if sig == signal.SIGINT:
            assert child.returncode != 0 and "KeyboardInterrupt" in err, err
        else:
            assert child.returncode == -signal.SIGTERM, err
        assert subvolume_ids(mnt) == before, f"{sig!r} after {delay} s left a snapshot"
        assert list((live.parent / ".trash").glob("*/*")) == []


def test_footprint_of_a_lake_that_is_its_own_filesystem(tmp_path):
    """The embedded default: the lake is the image's whole filesystem, and on disk is the
    filesystem's data (and its metadata apart), as `btrfs filesystem usage` says; full copies is
    the walk's Total of the project, now the sum of what each snapshot and live volume shows.
    A second project in the lake: its footprint is walked again, as before."""
    from snapver.backends import open_backend
    from tests.fixtures.btrfs import btrfs_image

    with btrfs_image("1G") as mnt:
        backend = open_backend("btrfs", str(mnt))
        live = backend.create_volume(P, W, "data")
        put(live / "a.bin", 1 << 20)
        put(live / "small", 100)
        backend.snapshot(P, W, ["data"], SHA_A)
        put(live / "a.bin", 1 << 20)
        put(live / "b.bin", 65536)
        backend.snapshot(P, W, ["data"], SHA_B)
        put(live / "b.bin", 8192)  # the live volume written since
        os.sync()

        def usage() -> tuple[int, int]:
            out = subprocess.run(["btrfs", "filesystem", "usage", "-b", str(mnt)], capture_output=True,
                                 text=True, check=True).stdout
            used = {line.split(",")[0]: int(line.split("Used:")[1].split()[0])
                    for line in out.splitlines() if "Used:" in line and line[:1].isalpha()}
            return used["Data"], used["Metadata"]

        walk_total = int(subprocess.run(["btrfs", "filesystem", "du", "-s", "--raw", str(mnt / P)],
                                        capture_output=True, text=True, check=True).stdout.splitlines()[-1].split()[0])
        fp = backend.footprint(P)
        os.sync()
        assert (fp.on_disk, fp.metadata) == usage()
        assert fp.full_copies == walk_total
        # Both a.bin, both b.bin, each once: a shared block is not counted twice.
        assert (2 << 20) + 65536 + 8192 <= fp.on_disk < fp.full_copies

        other = open_backend("btrfs", str(mnt))
        other.create_volume("other", W, "data")
        put(other.volume_path("other", W, "data") / "x.bin", 8192)
        os.sync()
        walked_fp = backend.footprint(P)
        out = subprocess.run(["btrfs", "filesystem", "du", "-s", "--raw", str(mnt / P)], capture_output=True,
                             text=True, check=True).stdout.splitlines()[-1].split()
        assert walked_fp.metadata is None
        assert (walked_fp.full_copies, walked_fp.on_disk) == (int(out[0]), int(out[1]) + int(out[2]))


def test_footprint_of_a_lake_folder_is_walked_and_equal(backend):
    """A lake folder on a larger filesystem (and ZFS): as before, on disk each extent once
    (the walk's), full copies the sum of the volumes' referenced bytes."""
    live = backend.create_volume(P, W, "data")
    put(live / "a.bin", 1 << 20)
    backend.snapshot(P, W, ["data"], SHA_A)
    put(live / "a.bin", 1 << 20)
    backend.snapshot(P, W, ["data"], SHA_B)
    put(live / "c.bin", 4096)
    os.sync()
    fp = backend.footprint(P)
    assert fp.metadata is None
    if backend.name != "btrfs":
        assert fp.on_disk <= fp.full_copies
        return
    out = subprocess.run(["btrfs", "filesystem", "du", "-s", "--raw", str(backend.root / P)], capture_output=True,
                         text=True, check=True).stdout.splitlines()[-1].split()
    assert (fp.full_copies, fp.on_disk) == (int(out[0]), int(out[1]) + int(out[2]))
    assert backend.footprint(P) == fp


def test_the_first_snapshot_is_measured_after_the_commit(repo, btrfs_lake):
    """A volume's first snapshot: a process started after the commit walks it once, so that
    `show --space` and `du` find its bytes kept and measure the next ones from streams; each
    figure equal to the walk."""
    import time

    from tests.fixtures.git import committed, git, snapver, write

    start = {"SNAPVER_TEST_NO_SPACE_PROCESS": "0"}
    snapver(repo, "init", "--lake", str(btrfs_lake), "--volume", "data")
    for i in range(50):
        write(repo / "data" / f"f{i}.bin", os.urandom(5000))
    git(repo, "add", "snapver.toml")
    first, _ = committed(repo, "v1", **start)
    project = next(p for p in btrfs_lake.iterdir() if (p / "snapshots").is_dir())
    marker = btrfs_lake / "space-cache.d" / f"known-{project.name}-data"
    deadline = time.monotonic() + 60
    while not marker.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert marker.exists(), "the first snapshot was measured after the commit"
    snap = project / "snapshots" / "data" / first
    assert btrfsspace.SpaceCache(btrfs_lake).referenced(subvol_info(snap).uuid) == _du_of(snap).referenced

    write(repo / "data" / "f1.bin", os.urandom(7000))
    second, _ = committed(repo, "v2", **start)  # its volume has known bytes: no process
    shown = snapver(repo, "show", "HEAD", "--space", "--json").json["volumes"]["data"]
    snap2 = project / "snapshots" / "data" / second
    assert (shown["referenced"], shown["exclusive"]) == tuple(_du_of(snap2))
    entry = json.loads((btrfs_lake / "space-cache.d" / f"{subvol_info(snap2).uuid}.json").read_text())
    assert entry["base"] == subvol_info(snap).uuid and entry["new"] == ["f1.bin"], "from the stream to v1"
    report = snapver(repo, "du", "--json").json
    rows = {r["snapshot"]: r for v in report["volumes"] for r in v["rows"]}
    assert (rows[first]["referenced"], rows[first]["exclusive"]) == tuple(_du_of(snap))
    assert (rows[None]["referenced"], rows[None]["exclusive"]) == tuple(_du_of(repo / "data"))


def _du_of(path: Path) -> Space:
    from snapver.backends.btrfs import _du

    return _du(Path(os.path.realpath(path)))
