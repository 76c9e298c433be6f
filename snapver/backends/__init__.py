"""The filesystems behind a lake, and the one place that picks one (base.py imports none).

Nothing outside this package imports a backend module or branches on a backend's
name: it asks the factory here for a class or a lake, and the lake for the rest.
"""

from __future__ import annotations

import stat
from pathlib import Path

from .. import linux
from ..errors import NotFound, SnapverError
from .base import Backend
from .btrfs import BtrfsBackend
from .zfs import ZfsBackend

BACKENDS: dict[str, type[Backend]] = {"btrfs": BtrfsBackend, "zfs": ZfsBackend}


def backend_class(kind: str) -> type[Backend]:
    try:
        return BACKENDS[kind]
    except KeyError:
        raise SnapverError(f"unknown backend {kind!r}: use one of {', '.join(BACKENDS)}") from None


def open_backend(kind: str, spec: str) -> Backend:
    """The backend for a lake recorded as (kind, spec)."""
    return backend_class(kind)(spec)  # type: ignore[call-arg]  # each takes its own spec


def open_lake(spec: str) -> Backend:
    """The backend of a lake named as a remote URL names it: a folder (a lake's root on
    whichever filesystem has it) or a name (a ZFS dataset)."""
    path = Path(spec)
    if path.is_dir():
        for cls in BACKENDS.values():
            found = cls.at_path(path)
            if found is not None:
                return found
        raise SnapverError(f"the folder {spec} is on {linux.mount_of(path).fstype}, neither on Btrfs nor "
                           "a ZFS dataset's mountpoint: a lake needs one of them")
    if path.exists() or path.is_symlink():
        raise SnapverError(f"{spec} is {_kind_of(path)}, not a lake: give a folder on Btrfs or a ZFS dataset")
    for cls in BACKENDS.values():
        found = cls.named(spec)
        if found is not None:
            return found
    dataset = spec.strip("/")
    raise NotFound(f"there is no folder {spec} on this host, and no ZFS pool {dataset.split('/')[0]} "
                   f"for a dataset {dataset}")


def _kind_of(path: Path) -> str:
    mode = path.lstat().st_mode
    return ("a symbolic link" if stat.S_ISLNK(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode)
            else "a file" if stat.S_ISREG(mode) else "a special file")
