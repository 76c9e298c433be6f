"""A live volume's space on Btrfs in O(changes) (issues 16, 19).

A live volume not written since it was cloned from, or snapshotted as, a snapshot shows that
snapshot's bytes and holds none of its own: no walk. A written one is measured like any
snapshot (btrfsspace's delta, from a send stream), against a snapshot of its folder, nearest
first: the newest taken of it, else the one it was cloned from, else the newest. Send needs a
read-only subvolume, so a read-only snapshot of the live volume is taken for it (one ioctl,
as diff does for the live volume) and dropped at once:

- it lives in <workspace>/.trash/<random>.measure/, never in the snapshots folder: not a
  folder gc reaps (`.later`: that would delete it under a measure that takes long), but one a
  crash leaves to the checkouts' tidying of the trash (btrfsretire.tidy_trash, after
  STALE_TRASH);
- it is deleted in a `finally` with SIGINT held off (a Ctrl-C lands after the deletion),
  and its deletion is waited for (`btrfs subvolume sync` of its ID, the cleaner thread
  dropping its tree) before the live volume's exclusive bytes are read, since until then
  it shares every block of the live volume and FIEMAP would call them shared;
- what the stream named and the referenced bytes are kept by the live volume's UUID and
  generation (read after the snapshot, which bumps it): asked again with nothing written,
  no snapshot is taken; the exclusive bytes are read each time, over the named files only.

Referenced: the base's plus what the named files take in the live volume minus what they took
in the base (the walk's Total, file by file); exclusive: the walk's Exclusive over the named
files (a file the stream does not name holds the base's extents: shared). Where this cannot
answer (no snapshot, send or the deletion's wait refused, hard-linked files named), the
caller walks, once per generation (btrfsspace.snapshot_space).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import signal
import struct
import subprocess
import threading
import time
from pathlib import Path

from .. import linux
from ..errors import SnapverError
from .base import Space
from .btrfsspace import _Store, changed_files, delta_space, file_totals, known_referenced, siblings, snapshot_space


def live_space(root: Path, project_dir: Path, live: Path, snapshots: Path, du, info, take) -> Space:
    """A live volume's Space (see the module's docstring). take: (snapshot_subvolume,
    subvol_id) of backends.btrfs, for the read-only snapshot of it."""
    linux.syncfs(live)  # its generation counts the writes made so far
    me = info(live)
    index = siblings(_Store(root), snapshots, info)
    # Its twin: its origin, not written since, or a snapshot taken of it since it was written.
    for name in sorted(n for n, v in index.items() if v[0] == me.parent_uuid or v[1] >= me.generation):
        path = snapshots / name
        try:
            s = info(path)
        except (OSError, SnapverError):
            continue
        cloned_unwritten = me.parent_uuid == s.uuid and me.generation <= me.otransid
        snapshotted_since = s.parent_uuid == me.uuid and s.otransid >= me.generation
        if cloned_unwritten or snapshotted_since:
            # Only the twin's referenced bytes, which never change: remembered, or measured once.
            ref = known_referenced(root, path, s.uuid, info)
            if ref is None:
                ref = _snapshot(root, project_dir, path, du, info).referenced
            return Space(referenced=ref, exclusive=0)
    found = None
    base = _base(index, me, snapshots, info)
    if base is not None:
        try:
            found = _delta(root, project_dir, live, snapshots / base, me, du, info, take)
        except SnapverError:
            found = None  # a file named by the stream gone meanwhile (it is being written): walk
    if found is not None:
        return found
    # Its own generation is in the key: remembered until it is written again.
    return snapshot_space(root, project_dir, live, f"live volume {live.name}", du, info)


def _snapshot(root: Path, project_dir: Path, path: Path, du, info) -> Space:
    return (delta_space(root, path, du, info)
            or snapshot_space(root, project_dir, path, f"snapshot {path.name}", du, info))


def _base(index: dict[str, list], me, snapshots: Path, info) -> str | None:
    """The snapshot to measure against: the newest taken of this live volume, else its
    origin, else the folder's newest (any works; the nearest streams the least)."""
    if not index:
        return None
    # Taken since it was made, newest first: of it, or of another workspace's live volume.
    for _, name in sorted(((v[1], n) for n, v in index.items() if v[1] >= me.otransid), reverse=True):
        try:
            if info(snapshots / name).parent_uuid == me.uuid:
                return name
        except (OSError, SnapverError):
            continue
    origin = [n for n, v in index.items() if v[0] == me.parent_uuid]
    return origin[0] if origin else max(index.items(), key=lambda x: x[1][1])[0]


def _delta(root: Path, project_dir: Path, live: Path, base: Path, me, du, info, take) -> Space | None:
    store = _Store(root)
    base_uuid = info(base).uuid
    # One entry per live volume's place (a checkout's swap makes a new volume there).
    name = f"live-{project_dir.name}-{live.parent.name}-{live.name}"
    entry = store.read(name)
    if (entry.get("uuid"), entry.get("gen"), entry.get("base")) != (me.uuid, me.generation, base_uuid):
        base_ref = _snapshot(root, project_dir, base, du, info).referenced
        taken = _through_snapshot(live, base, info, take)
        if taken is None:
            return None
        gen, old, new, new_total = taken
        entry = {"uuid": me.uuid, "gen": gen, "base": base_uuid, "old": old, "new": new,
                 "ref": base_ref + new_total - file_totals(base, old)[0]}
        store.write(name, entry)
    exclusive = file_totals(live, entry["new"])[1] if entry["new"] else 0
    return Space(referenced=int(entry["ref"]), exclusive=exclusive)


def _through_snapshot(live: Path, base: Path, info, take) -> tuple[int, list[str], list[str], int] | None:
    """(live's generation, base's named files, live's named files, their Total) from the
    stream base -> a read-only snapshot of live taken for it and dropped before returning;
    None where that cannot be done or hard-linked files are named (the caller walks)."""
    snapshot_subvolume, subvol_id = take
    folder = live.parent / ".trash" / (os.urandom(6).hex() + ".measure")
    now = folder / live.name
    with _signals_held():  # from before the snapshot is made until it is gone
        try:
            folder.mkdir(parents=True)
        except OSError:
            return None
        answer = None
        try:
            snapshot_subvolume(live, now, readonly=True)
            gen = info(live).generation  # the snapshot itself bumps it: read after
            found = changed_files(base, now)
            # A hard link's other names are unknown here: walked (as delta_space does).
            if found is not None and not any(r.endswith("\0") for r in found[0] + found[1]):
                answer = gen, found[0], found[1], file_totals(now, found[1])[0]
        except SnapverError:
            answer = None
        finally:
            dropped = _drop(now, folder, subvol_id)
    return answer if dropped else None  # still there, its blocks would read as shared: walk


def _drop(now: Path, folder: Path, subvol_id) -> bool:
    """Delete the temporary snapshot and wait until its tree is dropped. True once it is gone
    (or was never made)."""
    gone = True
    if now.is_dir() and not now.is_symlink():
        try:
            ident = subvol_id(now)
        except SnapverError:
            ident = None
        done = subprocess.run(["btrfs", "subvolume", "delete", "--commit-after", str(now)],
                              capture_output=True, stdin=subprocess.DEVNULL)
        gone = done.returncode == 0 and ident is not None
        if gone:
            gone = _wait_dropped(folder.parent, ident)
    with contextlib.suppress(OSError):
        folder.rmdir()
    return gone


# _IOWR(0x94, 17, struct btrfs_ioctl_search_args): a 104-byte search key, then room for results.
_IOC_TREE_SEARCH = (3 << 30) | (4096 << 16) | (0x94 << 8) | 17
_ROOT_TREE, _ROOT_ITEM_KEY = 1, 132
_ALL = 2**64 - 1


def _wait_dropped(where: Path, ident: int) -> bool:
    """Wait until the cleaner has dropped deleted subvolume ident (its root item is gone from
    the root tree), as `btrfs subvolume sync` does, but looking every few milliseconds: that
    tool sleeps a whole second between looks, which was most of a first `du` (1.1 s of 1.2 s
    at 20,000 files). The search needs root; elsewhere the tool waits."""
    # Only ident's root item, at most one: the kernel writes the number found over nr_items.
    key = struct.pack("<7Q4I4Q", _ROOT_TREE, ident, ident, 0, _ALL, 0, _ALL,
                      _ROOT_ITEM_KEY, _ROOT_ITEM_KEY, 1, 0, 0, 0, 0, 0).ljust(4096, b"\0")
    fd = os.open(where, os.O_RDONLY | os.O_DIRECTORY)
    try:
        pause = 0.005
        while True:
            args = bytearray(key)
            try:
                fcntl.ioctl(fd, _IOC_TREE_SEARCH, args)
            except OSError as e:
                if e.errno not in (errno.EPERM, errno.EACCES, errno.ENOTTY):
                    return False
                waited = subprocess.run(["btrfs", "subvolume", "sync", str(where), str(ident)],
                                        capture_output=True, stdin=subprocess.DEVNULL)
                return waited.returncode == 0
            if struct.unpack_from("<I", args, 64)[0] == 0:  # the key's nr_items: no root item left
                return True
            time.sleep(pause)
            pause = min(pause * 2, 0.1)
    finally:
        os.close(fd)


@contextlib.contextmanager
def _signals_held():
    """SIGINT and SIGTERM wait until the block is left, then act as they would have (a
    Ctrl-C raises KeyboardInterrupt, a kill ends the process): nothing the block made is
    left behind by them. The tools it runs get them from the terminal and stop, so a Ctrl-C
    is not long held. Only the main thread can (a thread of `snapver ui` is not signalled)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    got: list[int] = []
    before = {sig: signal.signal(sig, lambda signum, frame: got.append(signum))
              for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in before.items():
            signal.signal(sig, handler)
        for sig in dict.fromkeys(got):
            signal.raise_signal(sig)
