"""diff in O(changes) on Btrfs: the paths a send stream touches, then the walk's rules on those only.

`btrfs send --no-data -p OLD NEW` compares the two trees by their shared blocks (the
kernel skips every subtree both hold), so its stream names only what changed: every
path created, removed, renamed, linked, written, truncated, chmod/chown'ed, utimes'd
or given an xattr. Those names are candidates, not the answer: the answer comes from
base.walk_diff's own comparison applied to them, so the result is the walk's, path
for path and in the walk's order (a rename is a delete and an add, an xattr-only
change is no change, a rewrite with the same bytes and mtime is none).

A candidate is either an entry (the stream wrote or stamped it: compare that entry,
and for a folder only the candidates below it) or a whole subtree (the stream made,
removed, renamed or linked it: compare everything below, as the walk would, since a
rename moves a subtree without naming what is in it). Paths under the stream's
orphan names (o<ino>-<gen>-<n>) exist in neither tree and compare to nothing; what
an orphan later becomes is the destination of a rename, a whole subtree.

Only for two read-only snapshots of one volume (siblings in one folder: they share
blocks), or one and the volume's live subvolume (diff_live); anything else (a derived
clone's parent, no root to run send) returns None and the caller walks.
"""

from __future__ import annotations

import contextlib
import os
import struct
import subprocess
from pathlib import Path

from ..errors import SnapverError
from .base import Change
from .candidates import Candidates, judge

# btrfs send stream v1 (btrfs-progs send.h): commands that make, remove or move a name
_MKFILE, _MKDIR, _MKNOD, _MKFIFO, _MKSOCK, _SYMLINK, _RENAME, _LINK, _UNLINK, _RMDIR = range(3, 13)
_NAMING = {_MKFILE, _MKDIR, _MKNOD, _MKFIFO, _MKSOCK, _SYMLINK, _RENAME, _LINK, _UNLINK, _RMDIR}
_SNAPSHOT, _SUBVOL = 2, 1
_A_PATH, _A_PATH_TO, _A_PATH_LINK = 15, 16, 17
_HEADER = b"btrfs-stream\0"


def parse(stream: bytes) -> Candidates:
    """The candidates a (--no-data) send stream names. Raises ValueError on a stream it
    cannot read, so that the caller walks instead of trusting half an answer."""
    if not stream.startswith(_HEADER):
        raise ValueError("not a btrfs send stream")
    version = struct.unpack_from("<I", stream, len(_HEADER))[0]
    if version != 1:
        raise ValueError(f"send stream version {version}")
    found = Candidates()
    pos, ended = len(_HEADER) + 4, False
    while pos + 10 <= len(stream):
        length, cmd = struct.unpack_from("<IH", stream, pos)
        body, pos = pos + 10, pos + 10 + length
        if pos > len(stream):
            raise ValueError("send stream cut short")
        if cmd == 21:  # END
            ended = True
            break
        if cmd in (_SNAPSHOT, _SUBVOL):
            continue  # names the subvolume itself, not a path in it
        whole = cmd in _NAMING
        at = body
        while at + 4 <= pos:
            kind, size = struct.unpack_from("<HH", stream, at)
            value = stream[at + 4:at + 4 + size]
            at += 4 + size
            # A symlink's PATH_LINK is its target (any text), a link's is the file it links.
            if kind in (_A_PATH, _A_PATH_TO) or (kind == _A_PATH_LINK and cmd == _LINK):
                found.add(os.fsdecode(value), whole)
    if not ended:
        raise ValueError("send stream without its end")
    return found


def stream(old: Path, new: Path) -> bytes | None:
    """The --no-data send stream from old to new, or None where send cannot run."""
    try:
        done = subprocess.run(["btrfs", "send", "-q", "--no-data", "-p", str(old), str(new)],
                              stdin=subprocess.DEVNULL, capture_output=True)
    except OSError:
        return None
    return done.stdout if done.returncode == 0 else None


def diff(old: Path, new: Path) -> list[Change] | None:
    """Changes from snapshot old to snapshot new from their send stream; None to walk."""
    data = stream(old, new)
    if data is None:
        return None
    try:
        found = parse(data)
    except ValueError:
        return None
    return judge(old, new, found)


def diff_live(old: Path, live: Path, trash: Path, snapshot) -> list[Change] | None:
    """Changes from snapshot old to the live volume: from the stream to a read-only snapshot of
    it taken now (O(1); `snapshot` is btrfs.snapshot_subvolume), deleted again at once (it
    shares every block with the live volume, so that is quick too). It waits in the trash
    meanwhile, so that a crash leaves it to gc (btrfsretire). None to walk."""
    from .btrfsretire import LATER

    folder = trash / (os.urandom(6).hex() + LATER)
    now = folder / live.name
    try:
        folder.mkdir(parents=True)
        snapshot(live, now, readonly=True)
    except (OSError, SnapverError):
        with contextlib.suppress(OSError):
            folder.rmdir()
        return None
    try:
        return diff(old, now)
    finally:
        gone = subprocess.run(["btrfs", "subvolume", "delete", str(now)], capture_output=True,
                              stdin=subprocess.DEVNULL)
        if gone.returncode == 0:
            with contextlib.suppress(OSError):
                folder.rmdir()
