"""The ZFS lake itself: its name (pool/dataset), the file-backed pool `snapver init --image`
makes or imports again after a reboot, and the lake mounted at a path. Split out of zfs.py,
whose subject is the volumes and snapshots inside a lake."""

from __future__ import annotations

import os
import re
from pathlib import Path

from ..errors import CommandFailed, SnapverError
from ..proc import ask, run
from .base import create_image_file

# ZFS accepts alphanumerics and _ - . : in a component; the first character
# is narrowed so nothing can be read as an option or as "." / "..".
_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]*")
_POOL = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]*")
# Room below ZFS's 255-byte limit for "/<project>/history/<ws>/<volume>.<t>@<name>".
MAX_LAKE_NAME = 40
MIN_POOL_SIZE = 64 * 1024**2  # the smallest vdev ZFS accepts


def check_lake_name(name: str) -> str:
    parts = name.split("/") if isinstance(name, str) else [""]
    if (
        len(name) > MAX_LAKE_NAME
        or not _POOL.fullmatch(parts[0])
        or not all(_COMPONENT.fullmatch(p) for p in parts[1:])
    ):
        raise SnapverError(
            f"{name!r} is not a valid ZFS dataset name for a lake: use pool/dataset "
            f"(at most {MAX_LAKE_NAME} characters; letters, digits, '_', '-', '.', ':')"
        )
    return name


def dataset_mounted_at(path: Path) -> str | None:
    """The ZFS filesystem mounted at path, if any (for lakes named by a path)."""
    try:
        out = run(["zfs", "list", "-H", "-o", "name,mountpoint", "-t", "filesystem"])
    except CommandFailed:
        return None  # no ZFS here
    want = str(Path(path).resolve())
    return next((n for n, _, m in (l.partition("\t") for l in out.splitlines()) if m == want), None)


def _exists(dataset: str) -> bool:
    return ask(["zfs", "list", "-H", "-o", "name", dataset]) is not None


def provision_pool(image: Path, size: int | None, pool: str, mountpoint: Path | None = None) -> str:
    """Make (or reuse) a sparse file-backed pool with a lake dataset in it; return the lake spec.

    The ZFS twin of btrfs.provision_image, for machines with ZFS but no spare disk.
    """
    check_lake_name(pool)
    if "/" in pool:
        raise SnapverError(f"{pool!r} is a dataset, not a pool name")
    lake = f"{pool}/snapver"
    if _pool_imported(pool) and _exists(lake):
        return lake  # nothing to do, and so nothing that needs root
    if os.geteuid() != 0:
        raise SnapverError("making or importing a ZFS pool needs root: run this with sudo")
    image = Path(image).absolute()
    if not _pool_imported(pool):
        if image.exists():
            # A file vdev is found by scanning its directory.
            run(["zpool", "import", "-d", str(image.parent), pool])
        else:
            argv = ["zpool", "create", *(["-m", str(mountpoint)] if mountpoint else []), pool]
            create_image_file(image, size, MIN_POOL_SIZE, argv)
    if not _exists(lake):
        run(["zfs", "create", "-o", "atime=off", lake])
    return lake


def _pool_imported(pool: str) -> bool:
    return ask(["zpool", "list", "-H", "-o", "name", pool]) is not None


def pool_name(image: Path) -> str:
    """lake.img holds the ZFS pool `lake`."""
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in image.stem) or "snapver"
