"""diff in O(changes) on OpenZFS: `zfs diff` names the candidates, the walk's rules judge them.

`zfs diff -H -F FROM TO` reads which objects changed between two snapshots of one
filesystem (or a clone's and its origin's) from the blocks' birth times, so it names only
what changed: each path removed (-), created (+), modified (M) or renamed (R). Those names
are candidates (candidates.py): the answer is the walk's, path for path. It reports objects,
not names: a new hard link is its file "M (+1)" under one name and its folder "M", so a
modified folder's listing is compared too (O(its entries)), to find names on one side only.

Only on OpenZFS, where a snapshot is read at <mountpoint>/.zfs/snapshot/<name> and the
`zfs diff` ioctl exists; zfs-fuse has neither, and its snapshots are read through views
(read-only clones), so there, and wherever `zfs diff` refuses (the datasets not mounted,
not one lineage, no root or `zfs allow diff`), this returns None and the caller walks.
To the live volume, `zfs diff` itself takes and drops a just-in-time snapshot.
"""

from __future__ import annotations

import os
import re
import subprocess
from pathlib import Path

from .base import Change
from .candidates import Candidates, judge

_WHOLE = {b"+": True, b"-": True, b"R": True, b"M": False}
_ESCAPE = re.compile(rb"\\([0-7]{4})")  # libzfs writes a byte outside '!'..'~', and '\', as \0ooo


def diff(old: Path, new: Path) -> list[Change] | None:
    """Changes from snapshot old to new (a snapshot, or a live filesystem); None to walk."""
    if old == new:
        return []  # `zfs diff` refuses a snapshot against itself
    new = Path(os.path.realpath(new))  # a live volume's path is a link to its mount (zfslive.py)
    mounts = _zfs_mounts()
    frm, to = _name(old, mounts, snapshot_only=True), _name(new, mounts, snapshot_only=False)
    if frm is None or to is None:
        return None
    try:
        done = subprocess.run(["zfs", "diff", "-H", "-F", frm, to], stdin=subprocess.DEVNULL, capture_output=True)
    except OSError:
        return None
    if done.returncode != 0:
        return None
    # Paths come under the mountpoint of one of the two filesystems (the clone's, or its
    # origin's for a removed path); longest first, so that a nested mount wins.
    prefixes = sorted({_mountpoint(old), _mountpoint(new)}, key=len, reverse=True)
    try:
        found = parse(done.stdout, prefixes)
    except ValueError:
        return None
    return judge(old, new, found)


def parse(output: bytes, prefixes: list[str]) -> Candidates:
    """The candidates `zfs diff -H -F` output names, relative to the first prefix each path has.
    ValueError on a line it cannot read, so that the caller walks rather than trust half of it."""
    found = Candidates()
    roots = [p.encode() for p in prefixes]
    for line in output.splitlines():
        fields = line.split(b"\t")
        if len(fields) < 3 or fields[0] not in _WHOLE:
            raise ValueError(f"unexpected zfs diff line {line!r}")
        whole = _WHOLE[fields[0]]
        listing = fields[0] == b"M" and fields[1] == b"/"
        # fields: change, file type, path[, new path for R][, (+n) link count change]
        for path in (f for f in fields[2:] if f.startswith(b"/")):
            raw = _ESCAPE.sub(lambda m: bytes([int(m.group(1), 8)]), path)
            root = next((r for r in roots if raw == r or raw.startswith(r.rstrip(b"/") + b"/")), None)
            if root is None:
                raise ValueError(f"zfs diff named {raw!r}, outside {prefixes}")
            rel = raw[len(root.rstrip(b"/")):].strip(b"/")
            found.add(rel.decode("utf-8", "surrogateescape"), whole, listing)
    return found


def _name(path: Path, mounts: dict[str, str], snapshot_only: bool) -> str | None:
    """dataset@snapshot for <mountpoint>/.zfs/snapshot/<name>, or the dataset mounted at path."""
    dataset = mounts.get(_mountpoint(path))
    if _is_snapshot_dir(path):
        return f"{dataset}@{path.name}" if dataset else None
    return None if snapshot_only else dataset


def _is_snapshot_dir(path: Path) -> bool:
    return path.parent.name == "snapshot" and path.parent.parent.name == ".zfs"


def _mountpoint(path: Path) -> str:
    """The filesystem's mountpoint: <mountpoint>/.zfs/snapshot/<name>'s, or path itself."""
    return str(path.parent.parent.parent if _is_snapshot_dir(path) else path)


def _zfs_mounts() -> dict[str, str]:
    """mountpoint -> dataset of every mounted ZFS filesystem (the kernel's table: no zfs call)."""
    mounts: dict[str, str] = {}
    try:
        lines = Path("/proc/self/mountinfo").read_text().splitlines()
    except OSError:
        return mounts
    for line in lines:
        head, sep, tail = line.partition(" - ")
        fields, rest = head.split(), tail.split()
        if sep and len(fields) > 4 and len(rest) > 1 and rest[0] == "zfs":
            mounts[_unescape(fields[4])] = _unescape(rest[1])
    return mounts


def _unescape(field: str) -> str:
    # mountinfo writes space, tab, newline and backslash as \ooo
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)
