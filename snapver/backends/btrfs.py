"""Btrfs: volumes are subvolumes, snapshots read-only subvolumes.

Creating, deleting and measuring go through btrfs-progs (argv lists): it is
the reference implementation and is on every machine that has Btrfs. PyPI's
libbtrfsutil binding does not import on Debian 12 and the pure-Python `btrfs`
package cannot create snapshots. The two calls on the Git-hook path are
direct ioctls instead, because a fork per volume per commit is most of a
hook's cost: BTRFS_IOC_SNAP_CREATE_V2 (allowed to the subvolume's owner) and
BTRFS_IOC_GET_SUBVOL_INFO (allowed to anyone).
"""

from __future__ import annotations

import errno
import fcntl
import os
import struct
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

from .. import linux
from ..errors import CommandFailed, SnapverError
from ..names import is_snapshot_name
from ..proc import run
from .base import Backend, Footprint, Snapshot, Space, create_image_file

# _IOR(0x94, 60, struct btrfs_ioctl_get_subvol_info_args), 504 bytes
_SUBVOL_INFO_SIZE = 504
_IOC_GET_SUBVOL_INFO = (2 << 30) | (_SUBVOL_INFO_SIZE << 16) | (0x94 << 8) | 60
# _IOW(0x94, 23, struct btrfs_ioctl_vol_args_v2), 4096 bytes: fd, transid, flags,
# 32 bytes of qgroup/unused union, then the new name (at most 4039 bytes + NUL).
_VOL_ARGS_V2_SIZE = 4096
_IOC_SNAP_CREATE_V2 = (1 << 30) | (_VOL_ARGS_V2_SIZE << 16) | (0x94 << 8) | 23
_RDONLY = 1 << 1


class SubvolInfo(NamedTuple):
    uuid: str  # hex
    parent_uuid: str
    generation: int  # last transaction that changed this subvolume
    otransid: int  # transaction that created it
    readonly: bool
    created: datetime


def subvol_info(path: Path) -> SubvolInfo:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        buf = bytearray(_SUBVOL_INFO_SIZE)
        fcntl.ioctl(fd, _IOC_GET_SUBVOL_INFO, buf)
    except OSError as e:
        raise SnapverError(f"{path} is not a Btrfs subvolume ({e.strerror})") from None
    finally:
        os.close(fd)
    generation, flags = struct.unpack_from("<2Q", buf, 280)
    otransid = struct.unpack_from("<Q", buf, 352)[0]
    osec, onsec = struct.unpack_from("<QI", buf, 392)
    return SubvolInfo(
        uuid=bytes(buf[296:312]).hex(),
        parent_uuid=bytes(buf[312:328]).hex(),
        generation=generation,
        otransid=otransid,
        readonly=bool(flags & _RDONLY),
        created=datetime.fromtimestamp(osec + onsec / 1e9, timezone.utc),
    )


def snapshot_subvolume(source: Path, target: Path, readonly: bool = True) -> None:
    """A snapshot of the subvolume source at target (read-only or writable): one ioctl, no fork."""
    try:
        src = os.open(source, os.O_RDONLY | os.O_DIRECTORY)
    except OSError as e:
        raise SnapverError(f"cannot snapshot {source}: {e.strerror} (is the volume there?)") from None
    try:
        dst = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            # A bytearray: fcntl passes mutable buffers of any size straight through.
            flags = _RDONLY if readonly else 0
            args = bytearray(struct.pack("<qQQ32s4040s", src, 0, flags, b"", os.fsencode(target.name)))
            fcntl.ioctl(dst, _IOC_SNAP_CREATE_V2, args)
        except OSError as e:
            raise CommandFailed(f"snapshot of {source} as {target} failed: {_why(e)}") from None
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _why(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return "the filesystem is full; free space (or grow it) and try again"
    if e.errno == errno.EEXIST:
        return "a snapshot of that name exists already"
    return e.strerror or str(e)


def is_subvolume(path: Path) -> bool:
    # The root of every subvolume has inode number 256 on Btrfs.
    try:
        return path.is_dir() and not path.is_symlink() and path.stat().st_ino == 256
    except OSError:
        return False


class BtrfsBackend(Backend):
    name = "btrfs"

    def __init__(self, root: Path):
        self._root = Path(root)
        self._retired: list[Path] = []  # swapped-out volumes, deleted after the checkout
        if not self._root.is_dir():
            raise SnapverError(f"the lake {self._root} does not exist or is not mounted")
        if linux.fs_magic(self._root) != linux.BTRFS_MAGIC:
            fstype = linux.mount_of(self._root).fstype
            raise SnapverError(
                f"the lake {self._root} is on {fstype}, not Btrfs: "
                "mount its image or pass --image to make one"
            )

    @property
    def root(self) -> Path:
        return self._root

    def spec(self) -> str:
        return str(self._root)

    # paths
    def _snapshot_dir(self, project: str, volume: str) -> Path:
        return self._root / project / "snapshots" / volume

    def volume_path(self, project: str, workspace: str, volume: str) -> Path:
        return self._root / project / "workspaces" / workspace / volume

    def volume_exists(self, project: str, workspace: str, volume: str) -> bool:
        return is_subvolume(self.volume_path(project, workspace, volume))

    # live volumes
    def create_volume(self, project: str, workspace: str, volume: str) -> Path:
        path = self.volume_path(project, workspace, volume)
        path.parent.mkdir(parents=True, exist_ok=True)
        run(["btrfs", "subvolume", "create", str(path)])
        return path

    def mark(self, project: str, workspace: str, volume: str) -> str:
        path = self.volume_path(project, workspace, volume)
        linux.syncfs(path)
        return str(subvol_info(path).generation)

    def changed_since(self, project: str, workspace: str, volume: str, mark: str | None) -> bool:
        if not mark or not mark.isdigit():
            return True
        path = self.volume_path(project, workspace, volume)
        # Dirty pages are not in the generation until their transaction commits.
        linux.syncfs(path)
        return subvol_info(path).generation > int(mark)

    # snapshots
    def snapshot(self, project: str, workspace: str, volumes: list[str], name: str) -> list[Snapshot]:
        made: list[Snapshot] = []
        try:
            for volume in volumes:
                target = self._snapshot_dir(project, volume) / name
                target.parent.mkdir(parents=True, exist_ok=True)
                snapshot_subvolume(self.volume_path(project, workspace, volume), target)
                made.append(self._snapshot_at(project, volume, target))
        except BaseException:
            # Btrfs cannot snapshot several subvolumes in one transaction, so
            # all-or-none is done by hand: a half-taken commit is undone.
            for snap in made:
                self.destroy(snap)
            raise
        return made

    def _snapshot_at(self, project: str, volume: str, path: Path) -> Snapshot:
        info = subvol_info(path)
        # A snapshot's generation is the transid it was taken in; the live
        # volume it was taken from is clean as long as it stays at that one.
        return Snapshot(project, volume, path.name, path, info.created, str(info.otransid), info.otransid)

    def snapshots(self, project: str | None = None, volume: str | None = None) -> list[Snapshot]:
        found = []
        projects = [project] if project else _listdir(self._root)
        for p in projects:
            volumes = [volume] if volume else _listdir(self._root / p / "snapshots")
            for v in volumes:
                for name in _listdir(self._snapshot_dir(p, v)):
                    if is_snapshot_name(name):
                        found.append(self._snapshot_at(p, v, self._snapshot_dir(p, v) / name))
        return found

    def find(self, project: str, volume: str, name: str) -> Snapshot | None:
        path = self._snapshot_dir(project, volume) / name
        return self._snapshot_at(project, volume, path) if is_subvolume(path) else None

    def destroy(self, snap: Snapshot) -> None:
        run(["btrfs", "subvolume", "delete", str(snap.path)])

    def after_checkout(self) -> None:
        # Deleting a subvolume holds the filesystem's subvolume lock while it evicts the
        # pages, so a deletion started mid-checkout would stall the next volume's snapshot.
        # One process deletes them all: each fork of the hook's Python costs ~3 ms.
        if self._retired:
            delete_later(*self._retired)
        self._retired.clear()

    def rename(self, snap: Snapshot, name: str) -> Snapshot:
        target = snap.path.with_name(name)
        if os.path.lexists(target):
            raise SnapverError(f"cannot rename {snap.volume}@{snap.name}: {name} exists already")
        os.rename(snap.path, target)  # a read-only subvolume can still be renamed in its parent
        return self._snapshot_at(snap.project, snap.volume, target)

    def clone_into_place(self, snap: Snapshot, workspace: str) -> str:
        live = self.volume_path(snap.project, workspace, snap.volume)
        incoming = live.with_name(f".{snap.volume}.incoming")
        if is_subvolume(incoming):  # left by an interrupted checkout
            run(["btrfs", "subvolume", "delete", str(incoming)])
        live.parent.mkdir(parents=True, exist_ok=True)
        snapshot_subvolume(snap.path, incoming, readonly=False)
        mark = str(subvol_info(incoming).otransid)
        if is_subvolume(live):
            linux.exchange(incoming, live)
            # Deleting a subvolume evicts its cached pages first (about 0.3 s per cached
            # GiB), which would make checkout O(data read or written). The outgoing
            # volume is already captured, so it is retired and deleted in the background.
            # Each retired volume gets a folder of its own: a deletion locks the folder the
            # subvolume is in until its pages are evicted, and the next rename must not wait.
            retired = live.parent / ".trash" / os.urandom(6).hex()
            retired.mkdir(parents=True)
            os.rename(incoming, retired / snap.volume)
            self._retired.append(retired / snap.volume)
            tidy_trash(live.parent / ".trash")
        else:
            os.rename(incoming, live)
        return mark

    def space(self, snap: Snapshot) -> Space:
        return _du(snap.path)

    # Btrfs has no holds: a release is protected by the releases table, from
    # which gc's `protected` set is filled, and gc is the only thing that
    # destroys snapshots. So hold and unhold have nothing to do here.
    def hold(self, snap: Snapshot, tag: str) -> None:
        pass

    def unhold(self, snap: Snapshot, tag: str) -> None:
        pass

    def clone_volume(self, snap: Snapshot, workspace: str, volume: str) -> Path:
        live = self.volume_path(snap.project, workspace, volume)
        if os.path.lexists(live):
            raise SnapverError(f"volume {volume} of workspace {workspace} exists already")
        live.parent.mkdir(parents=True, exist_ok=True)
        # A writable snapshot of the read-only one: shares every extent with it.
        snapshot_subvolume(snap.path, live, readonly=False)
        return live

    def live_space(self, project: str, workspace: str, volume: str) -> Space:
        return _du(self.volume_path(project, workspace, volume))

    def footprint(self, project: str) -> Footprint:
        # One `du` over the project folder: Total counts every subvolume in full,
        # Exclusive + Set shared counts each extent of the whole set once.
        out = run(["btrfs", "filesystem", "du", "-s", "--raw", str(self._root / project)])
        total, exclusive, shared = out.splitlines()[-1].split()[:3]
        return Footprint(full_copies=int(total), on_disk=int(exclusive) + int(shared))


def _du(path: Path) -> Space:
    """Walks the tree (FIEMAP per file): O(files), so only show --space and du use it."""
    out = run(["btrfs", "filesystem", "du", "-s", "--raw", str(path)])
    total, exclusive = out.splitlines()[-1].split()[:2]
    return Space(referenced=int(total), exclusive=int(exclusive))


def delete_later(*subvolumes: Path) -> None:
    """Delete retired subvolumes from a detached process that outlives this one (btrfs goes
    on to the next one if one fails; tidy_trash retries what is left).

    Deleting evicts the subvolume's cached pages first (about 0.3 s per cached GiB), which
    is why no checkout waits for it."""
    subprocess.Popen(
        ["btrfs", "subvolume", "delete", *map(str, subvolumes)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


STALE_TRASH = 600  # seconds: a retired volume still there this long lost its deletion (a crash)


def tidy_trash(trash: Path) -> None:
    """Remove the folders of finished deletions; restart deletions a crash interrupted.

    A deletion locks the folder it deletes in until the pages are evicted, so nothing
    here reads a folder that may be busy: an empty Btrfs directory has size 0, and
    stat() never waits for that lock.
    """
    now = time.time()
    for folder in _listdir(trash):
        path = trash / folder
        try:
            st = path.stat()
            if st.st_size == 0:
                os.rmdir(path)
            elif now - st.st_mtime > STALE_TRASH:
                for name in _listdir(path):
                    delete_later(path / name)
                os.utime(path)  # and not again for another while
        except OSError:
            pass  # gone meanwhile, or not empty after all: the next checkout looks again


def _listdir(path: Path) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except FileNotFoundError:
        return []


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

