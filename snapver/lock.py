"""One writer per workspace: hooks, CLI and daemon take the same lock.

flock(2) is released by the kernel when its holder dies, so a crashed
snapver never leaves a stale lock behind; the holder's PID and command are
written into the lock file only so that a waiting user can be told who it is.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import sys
import time
from pathlib import Path

from .errors import SnapverError

class NoRoom(SnapverError):
    """The lock file does not exist and a full filesystem cannot make it (so nobody holds it)."""


WAIT_SECONDS = float(os.environ.get("SNAPVER_LOCK_WAIT", "30"))


def command() -> str:
    """This process as a person would name it: `snapver checkout main`, not `__main__.py ...`."""
    first = os.path.basename(sys.argv[0]) if sys.argv else ""
    name = {"__main__.py": "snapver", "cli.py": "snapver", "githooks.py": "snapver git hook",
            "-c": "python -c"}.get(first, first)
    return " ".join([name, *sys.argv[1:]])[:200]


@contextlib.contextmanager
def held(path: Path, wait: float = WAIT_SECONDS, what: str = "the workspace"):
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        # O_NOFOLLOW: the lock lives in a user's .git, where the root daemon takes it too;
        # a planted symlink must not make root truncate and write the file it points to.
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o600)
    except OSError as e:
        if e.errno in (errno.ENOSPC, errno.EDQUOT):
            raise NoRoom(f"the filesystem holding {path} is full: free space (delete files, or "
                         "`snapver gc`) and try again") from None
        if e.errno != errno.ELOOP:
            raise
        raise SnapverError(f"{path} is a symbolic link: remove it (snapver makes its own lock file)") from None
    try:
        deadline = time.monotonic() + wait
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
                    raise SnapverError(
                        f"{what} is busy, held by {holder}; try again when it finishes"
                    ) from None
                time.sleep(0.05)
        try:
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"PID {os.getpid()} ({command()})".encode(), 0)
        except OSError as e:
            # Who holds it is only for a waiting user's message: a full filesystem (or quota)
            # must not stop the commands that free space, gc and doctor.
            if e.errno not in (errno.ENOSPC, errno.EDQUOT):
                raise
        yield
    finally:
        os.close(fd)  # closing releases the flock
