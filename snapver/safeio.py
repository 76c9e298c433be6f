"""Opening files found inside volumes: regular files only, never through a symlink, never blocking.

A volume holds whatever a user or a training job put there: a FIFO named
model.pt would block open(2) until a writer comes (holding the workspace lock,
or the daemon's loop), a device would read forever, and a symlink may lead out
of the volume to a file of root's. Every read of volume contents goes through
open_regular: O_NONBLOCK (a FIFO opens at once), O_NOFOLLOW (a symlink fails),
then fstat on the descriptor itself, so what is read is what was checked.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

FLAGS = os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC


def open_regular(path, dir_fd: int | None = None):
    """A binary file object for path if it is a regular file (not a symlink), else None.
    OSErrors other than 'a symlink' (ELOOP) propagate."""
    try:
        fd = os.open(path, FLAGS, dir_fd=dir_fd)
    except OSError as e:
        import errno

        if e.errno in (errno.ELOOP, errno.ENXIO):  # a symlink; a socket
            return None
        raise
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            os.close(fd)
            return None
        os.set_blocking(fd, True)  # a regular file never blocks; reads are plain from here
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_regular(path) -> bytes | None:
    """The bytes of path if it is a regular file reached without a final symlink, else None."""
    f = open_regular(path)
    if f is None:
        return None
    with f:
        return f.read()


def inside(root, path) -> Path | None:
    """path with its symlinks followed, if that is inside root (not root itself); None if it
    leads elsewhere. A symlink in a volume must not make snapver (maybe as root, for a user)
    read or write a file outside it."""
    real_root, real = os.path.realpath(root), os.path.realpath(path)
    return Path(real) if real.startswith(real_root + os.sep) else None
