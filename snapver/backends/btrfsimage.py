"""The embedded default's image file: a sparse Btrfs image, loop-mounted beside it.

For machines with no copy-on-write filesystem: everything lives in one file, which the
next `snapver` run as root mounts again (BtrfsBackend.provision_image, ensure_mounted).
"""

from __future__ import annotations

import os
from pathlib import Path

from .. import linux
from ..errors import SnapverError
from ..proc import run
from .base import create_image_file

MIN_IMAGE_SIZE = 256 * 1024**2


def provision_image(image: Path, size: int | None, mountpoint: Path) -> Path:
    """Make (or reuse) a sparse Btrfs image file and loop-mount it; return the mountpoint.

    The embedded default for machines with no CoW filesystem: everything
    lives in one file, which the next `snapver` run as root mounts again.
    """
    if os.geteuid() != 0:
        raise SnapverError("making and mounting a Btrfs image needs root: run this with sudo")
    mountpoint = Path(mountpoint)
    if image.exists():
        if is_mountpoint(mountpoint):
            return mountpoint
    else:
        create_image_file(image, size, MIN_IMAGE_SIZE, ["mkfs.btrfs", "-q"])
    mount_image(image, mountpoint)
    return mountpoint


def is_mountpoint(path: Path) -> bool:
    return path.is_dir() and linux.mount_of(path).mountpoint == path.resolve()


def mount_image(image: Path, mountpoint: Path) -> None:
    mountpoint.mkdir(parents=True, exist_ok=True)
    # noatime: reading a file must not count as changing the volume.
    # user_subvol_rm_allowed lets owners of a workspace delete its subvolumes
    # without root, so checkout works for the user who owns the clone.
    run(["mount", "-o", "loop,noatime,user_subvol_rm_allowed", str(image), str(mountpoint)])


def image_mountpoint(image: Path) -> Path:
    """lake.img mounts at lake/, beside it."""
    return image.with_suffix("") if image.suffix else image.with_name(image.name + ".d")
