"""The few Linux calls the standard library lacks: renameat2, syncfs, mounts.

ctypes against libc rather than a dependency: each is one call, and the hook
path cannot afford an import that pulls in more.
"""

from __future__ import annotations

import ctypes
import os
from pathlib import Path
from typing import NamedTuple

# The running interpreter's own symbols include libc's; find_library would run ldconfig.
_libc = ctypes.CDLL(None, use_errno=True)

AT_FDCWD = -100
RENAME_NOREPLACE = 1 << 0
RENAME_EXCHANGE = 1 << 1


def _check(result: int, what: str) -> None:
    if result != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def exchange(a: Path, b: Path) -> None:
    """Swap two directory entries in one atomic step (renameat2 RENAME_EXCHANGE).

    Readers see either the old or the new entry at each name, never neither,
    which is what makes a checkout safe to interrupt.
    """
    _check(
        _libc.renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_EXCHANGE),
        f"exchange {a} and {b}",
    )


def rename_noreplace(a: Path, b: Path) -> None:
    """rename(2) that fails with EEXIST instead of replacing an (empty) directory at b."""
    _check(
        _libc.renameat2(AT_FDCWD, os.fsencode(a), AT_FDCWD, os.fsencode(b), RENAME_NOREPLACE),
        f"rename {a} to {b}",
    )


def syncfs(path: Path) -> None:
    """Flush one filesystem (not all of them, as os.sync would)."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        _check(_libc.syncfs(fd), f"syncfs {path}")
    finally:
        os.close(fd)


BTRFS_MAGIC = 0x9123683E


def fs_magic(path: Path) -> int:
    """statfs(2) f_type of the filesystem holding path: one call, whatever the mount count."""
    buf = ctypes.create_string_buffer(256)  # struct statfs is 120 bytes on x86_64; f_type first
    _check(_libc.statfs(os.fsencode(path), buf), f"statfs {path}")
    return ctypes.c_long.from_buffer(buf).value & 0xFFFFFFFF


class Mount(NamedTuple):
    mountpoint: Path
    fstype: str
    source: str
    options: str


def _unescape(field: str) -> str:
    # /proc/self/mountinfo writes space, tab, newline and backslash as \ooo.
    out, i = [], 0
    while i < len(field):
        if field[i] == "\\" and field[i + 1 : i + 4].isdigit():
            out.append(chr(int(field[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field[i])
            i += 1
    return "".join(out)


def mounts() -> list[Mount]:
    result = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            left, _, right = line.partition(" - ")
            fields, tail = left.split(), right.split()
            result.append(
                Mount(Path(_unescape(fields[4])), tail[0], _unescape(tail[1]), fields[5])
            )
    return result


def mount_of(path: Path) -> Mount:
    """The mount that holds path (the longest mountpoint prefix of its real path)."""
    real = Path(os.path.realpath(path))
    best = None
    for m in mounts():
        if real == m.mountpoint or m.mountpoint in real.parents:
            if best is None or len(m.mountpoint.parts) >= len(best.mountpoint.parts):
                best = m
    assert best is not None, "/ is always mounted"
    return best


def restrict_umask() -> None:
    """Nothing snapver makes is writable by group or others, whatever umask it was started
    with (a root shell with umask 000): a world-writable folder in the lake is where another
    user would plant a symlink for root to follow. Called by the entry points, not on import."""
    os.umask(os.umask(0o022) | 0o022)
