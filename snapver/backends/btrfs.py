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

import contextlib
import errno
import fcntl
import os
import struct
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

from .. import faults, linux
from ..errors import FULL, CommandFailed, FullCommandFailed, SnapverError
from ..names import check_project, check_volume, is_snapshot_name
from ..proc import ask, ask_bytes, run
from . import btrfsretire
from .btrfsretire import STALE_TRASH, delete_later, listdir as _listdir, tidy_trash
from .btrfsimage import image_mountpoint, is_mountpoint, mount_image, provision_image
from .base import KNOWN, Backend, Change, Footprint, Receive, Snapshot, Space, walk_diff

# _IOR(0x94, 60, struct btrfs_ioctl_get_subvol_info_args), 504 bytes
_SUBVOL_INFO_SIZE = 504
_IOC_GET_SUBVOL_INFO = (2 << 30) | (_SUBVOL_INFO_SIZE << 16) | (0x94 << 8) | 60
# _IOW(0x94, 23, struct btrfs_ioctl_vol_args_v2), 4096 bytes: fd, transid, flags,
# 32 bytes of qgroup/unused union, then the new name (at most 4039 bytes + NUL).
_VOL_ARGS_V2_SIZE = 4096
_IOC_SNAP_CREATE_V2 = (1 << 30) | (_VOL_ARGS_V2_SIZE << 16) | (0x94 << 8) | 23
_RDONLY = 1 << 1  # BTRFS_SUBVOL_RDONLY, for SNAP_CREATE_V2
_ROOT_SUBVOL_RDONLY = 1 << 0  # the root item's flag, as GET_SUBVOL_INFO reports it


class SubvolInfo(NamedTuple):
    uuid: str  # hex
    parent_uuid: str
    received_uuid: str  # the sent subvolume's, on a received one; zeros otherwise
    generation: int  # last transaction that changed this subvolume
    otransid: int  # transaction that created it
    readonly: bool
    created: datetime


def _subvol_info_raw(path: Path) -> bytearray:
    """BTRFS_IOC_GET_SUBVOL_INFO's answer for the subvolume at path, as the kernel wrote it."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        buf = bytearray(_SUBVOL_INFO_SIZE)
        fcntl.ioctl(fd, _IOC_GET_SUBVOL_INFO, buf)
    except OSError as e:
        raise SnapverError(f"{path} is not a Btrfs subvolume ({e.strerror})") from None
    finally:
        os.close(fd)
    return buf


def subvol_info(path: Path) -> SubvolInfo:
    buf = _subvol_info_raw(path)
    generation, flags = struct.unpack_from("<2Q", buf, 280)
    otransid = struct.unpack_from("<Q", buf, 352)[0]
    osec, onsec = struct.unpack_from("<QI", buf, 392)
    return SubvolInfo(
        uuid=bytes(buf[296:312]).hex(),
        parent_uuid=bytes(buf[312:328]).hex(),
        received_uuid=bytes(buf[328:344]).hex(),
        generation=generation,
        otransid=otransid,
        readonly=bool(flags & _ROOT_SUBVOL_RDONLY),
        created=datetime.fromtimestamp(osec + onsec / 1e9, timezone.utc),
    )


def _ctransid(path: Path) -> int:
    """The transaction that last changed the subvolume's files (kept apart from subvol_info,
    whose fields other code reads)."""
    return struct.unpack_from("<Q", _subvol_info_raw(path), 344)[0]


def subvol_id(path: Path) -> int:
    """The subvolume's tree ID (5: the filesystem's top level)."""
    return struct.unpack_from("<Q", _subvol_info_raw(path), 0)[0]


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
            error = FullCommandFailed if e.errno == errno.ENOSPC else CommandFailed
            raise error(f"snapshot of {source} as {target} failed: {_why(e)}") from None
        finally:
            os.close(dst)
    finally:
        os.close(src)


def _why(e: OSError) -> str:
    if e.errno == errno.ENOSPC:
        return FULL
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
            raise SnapverError(f"the lake {self._root} does not exist or is not mounted "
                               "(the volume links point into it): mount it again")
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
                faults.point("snapshot-volume")
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

    def snapshots(self, project: str | None = None, volume: str | None = None,
                  readable: bool = True) -> list[Snapshot]:
        found = []
        # Only project folders: the catalog (and its -wal, -shm) lives beside them.
        projects = [project] if project else [p for p in _listdir(self._root) if (self._root / p).is_dir()]
        for p in projects:
            volumes = [volume] if volume else _listdir(self._root / p / "snapshots")
            for v in volumes:
                for name in _listdir(self._snapshot_dir(p, v)):
                    snap = self.find(p, v, name) if is_snapshot_name(name) else None
                    if snap:
                        found.append(snap)
        return found

    def find(self, project: str, volume: str, name: str) -> Snapshot | None:
        path = self._snapshot_dir(project, volume) / name
        if not is_subvolume(path):
            return None
        info = subvol_info(path)
        if not info.readonly:
            return None  # a receive under way, or one that died: not a snapshot (yet)
        return Snapshot(project, volume, name, path, info.created, str(info.otransid), info.otransid)

    def destroy(self, snap: Snapshot) -> None:
        run(["btrfs", "subvolume", "delete", str(snap.path)])

    def after_checkout(self) -> None:
        # Deleting a subvolume holds the filesystem's subvolume lock while it evicts the
        # pages, so a deletion started mid-checkout would stall the next volume's snapshot.
        # One process deletes them all: each fork of the hook's Python costs ~3 ms.
        if self._retired:
            delete_later(*self._retired)
        self._retired.clear()

    def copy_snapshot(self, snap: Snapshot, name: str) -> Snapshot:
        # A read-only snapshot of a read-only snapshot: one ioctl, O(1), and independent of
        # its source (either can be deleted first). The ioctl makes it whole or not at all.
        if not is_snapshot_name(name):
            raise SnapverError(f"{name!r} is not a snapver snapshot name")
        target = self._snapshot_dir(snap.project, snap.volume) / name
        if os.path.lexists(target):
            raise SnapverError(f"snapshot {name} of volume {snap.volume} already exists")
        snapshot_subvolume(snap.path, target, readonly=True)
        return self._snapshot_at(snap.project, snap.volume, target)

    def clone_into_place(self, snap: Snapshot, workspace: str) -> str:
        live = self.volume_path(snap.project, workspace, snap.volume)
        incoming = live.with_name(f".{snap.volume}.incoming")
        if is_subvolume(incoming):  # left by an interrupted checkout
            run(["btrfs", "subvolume", "delete", str(incoming)])
        live.parent.mkdir(parents=True, exist_ok=True)
        snapshot_subvolume(snap.path, incoming, readonly=False)
        mark = str(subvol_info(incoming).otransid)
        faults.point("checkout-cloned")
        if is_subvolume(live):
            linux.exchange(incoming, live)
            faults.point("checkout-swapped")
            # Deleting a subvolume evicts its cached pages first (about 0.3 s per cached
            # GiB), which would make checkout O(data read or written). The outgoing
            # volume is already captured, so it is retired, to be deleted off this path.
            # Each retired volume gets a folder of its own: a deletion locks the folder the
            # subvolume is in until its pages are evicted, and the next rename must not wait.
            # It waits there for gc (btrfsretire.py says why), unless too many wait.
            btrfsretire.retire(live.parent / ".trash", incoming, snap.volume)
            self._retired += btrfsretire.overflow(live.parent / ".trash")
            tidy_trash(live.parent / ".trash")
        else:
            os.rename(incoming, live)
        faults.point("checkout-placed")
        return mark

    def tidy(self, project: str, workspace: str, volumes: list[str], repair: bool = False) -> list[str]:
        found = []
        for volume in volumes:
            live = self.volume_path(project, workspace, volume)
            incoming = live.with_name(f".{volume}.incoming")
            if not is_subvolume(incoming):
                continue
            if is_subvolume(live):
                # Either the clone a checkout made before its swap, or (swapped) the old live
                # volume, which checkout had kept by a snapshot before it swapped.
                found.append(f"{volume}: the other half of an interrupted swap is left at {incoming}")
                if repair:
                    run(["btrfs", "subvolume", "delete", str(incoming)])
            else:
                found.append(f"{volume}: no live volume; the clone of an interrupted checkout waits at {incoming}")
                if repair:
                    os.rename(incoming, live)
        trash = self.volume_path(project, workspace, "x").parent / ".trash"
        now = time.time()
        for folder in _listdir(trash):
            path = trash / folder
            try:
                retired = _listdir(path)
                stale = now - path.stat().st_mtime > STALE_TRASH
            except OSError:
                continue  # deleted meanwhile
            if retired and (stale and not folder.endswith(btrfsretire.LATER) or repair):
                found.append(f"retired volume {path / retired[0]} is still waiting to be deleted")
            if repair:
                for name in retired:  # one already being deleted refuses: fine, it goes anyway
                    ask(["btrfs", "subvolume", "delete", str(path / name)])
                with contextlib.suppress(OSError):
                    os.rmdir(path)
        return found

    def half_received(self, project: str, volumes: list[str], repair: bool = False) -> list[str]:
        found = []
        for volume in volumes:
            folder = self._snapshot_dir(project, volume)
            try:
                guard = os.open(folder / ".receiving", os.O_RDWR)
            except FileNotFoundError:
                continue  # nothing was ever received into this volume
            try:
                try:
                    fcntl.flock(guard, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # a receive is under way: what it has so far is its own
                for name in _listdir(folder):
                    path = folder / name
                    if is_snapshot_name(name) and is_subvolume(path) and not subvol_info(path).readonly:
                        found.append(f"{volume}: half-received snapshot {name} is left at {path}")
                        if repair:
                            run(["btrfs", "subvolume", "delete", str(path)])
            finally:
                os.close(guard)
        return found

    def live_origin(self, project: str, workspace: str, volume: str) -> tuple[str, str] | None:
        live = self.volume_path(project, workspace, volume)
        if not is_subvolume(live):
            return None
        info = subvol_info(live)
        folder = self._snapshot_dir(project, volume)
        for name in _listdir(folder):
            if is_snapshot_name(name) and subvol_info(folder / name).uuid == info.parent_uuid:
                return name, str(info.otransid)
        return None

    def space(self, snap: Snapshot) -> Space:
        return self.spaces([snap])[0]

    def spaces(self, snaps: list[Snapshot]) -> list[Space]:
        from . import btrfsspace  # here: not on the hook's path

        for project in dict.fromkeys(s.project for s in snaps):
            self._reap_settled(project)
        if snaps:
            linux.syncfs(snaps[0].path)  # sharing as of the last writes (their transaction committed)
        # From the send stream to a sibling snapshot, O(changes), the files it names measured
        # for all of them in one `btrfs filesystem du`; the walk (once, remembered) for a
        # volume's only snapshot or where send cannot run.
        plans = [btrfsspace.delta_plan(self._root, s.path, _du, subvol_info, sync=False) for s in snaps]
        measured = iter(btrfsspace.totals_many([(s.path, p[1]) for s, p in zip(snaps, plans) if p is not None]))
        found: list[Space] = []
        for snap, plan in zip(snaps, plans):
            if plan is not None:
                found.append(Space(referenced=plan[0], exclusive=next(measured)[1]))
            else:
                found.append(btrfsspace.snapshot_space(self._root, self._root / snap.project, snap.path,
                                                       f"{snap.volume}@{snap.name}", _du, subvol_info))
        return found

    def space_owed(self, project: str, volume: str) -> bool:
        # One stat: btrfsspace keeps this file while some snapshot of the folder has known bytes.
        return not os.path.exists(self._root / KNOWN.format(project=project, volume=volume))

    def _reap_settled(self, project: str) -> None:
        # Retired volumes share blocks with snapshots (their exclusive bytes look smaller) and
        # count as full copies: space accounting deletes those gc could (a checkout's of the
        # last seconds stay), so that the figures and the cache's key stop moving under it.
        btrfsretire.reap(self._root / check_project(project) / "workspaces", "")

    def reap(self, project: str, workspace: str, quiet_for: float = 0.0) -> list[str]:
        return btrfsretire.reap(self._root / check_project(project) / "workspaces", workspace, quiet_for)

    def diff(self, old: Path, new: Path) -> list[Change]:
        # Two snapshots of one volume: from their send stream, O(changes); else the walk.
        from . import btrfsdiff  # here: not on the hook's path

        found = None
        if is_subvolume(old) and is_subvolume(new) and subvol_info(old).readonly:
            if old.parent == new.parent and subvol_info(new).readonly:
                found = btrfsdiff.diff(old, new)
            elif (new.parent.parent.name == "workspaces" and old.name != new.name == old.parent.name
                  and new.parent.parent.parent == old.parent.parent.parent):  # that volume's live one
                found = btrfsdiff.diff_live(old, new, new.parent / ".trash", snapshot_subvolume)
        return walk_diff(old, new) if found is None else found

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

    def same_data(self, old: Snapshot, new: Snapshot) -> bool:
        # ctransid, the transaction that last changed a subvolume's files, is carried over by a
        # snapshot and by a writable clone: snapshots of a live volume nobody wrote in between,
        # and of a clone of one of them, have the same one. (Two volumes of one name written in
        # the same transaction in two workspaces would too: a risk of one missed rebuild that a
        # transaction's few seconds make small; said in the cascade's docs.)
        if (old.project, old.volume) != (new.project, new.volume):
            return False
        return old.name == new.name or _ctransid(old.path) == _ctransid(new.path)

    def retire_volume(self, project: str, workspace: str, volume: str) -> None:
        path = self.volume_path(project, workspace, volume)
        if is_subvolume(path):
            # Its snapshots are subvolumes of their own, independent of it.
            run(["btrfs", "subvolume", "delete", str(path)])

    def live_space(self, project: str, workspace: str, volume: str) -> Space:
        from . import btrfslive  # here: not on the hook's path

        self._reap_settled(project)
        return btrfslive.live_space(self._root, self._root / project, self.volume_path(project, workspace, volume),
                                    self._snapshot_dir(project, volume), _du, subvol_info,
                                    (snapshot_subvolume, subvol_id))

    def footprint(self, project: str) -> Footprint:
        # Without walking the project where the lake is its own filesystem (btrfsfootprint).
        from . import btrfsfootprint  # here: not on the hook's path

        self._reap_settled(project)
        project_dir = self._root / check_project(project)
        full = btrfsfootprint.full_copies(self._root, project_dir, _du, subvol_info, (snapshot_subvolume, subvol_id))
        fs = btrfsfootprint.filesystem_bytes(self._root, project_dir, subvol_id)
        if fs is not None:
            return Footprint(full_copies=full, on_disk=fs[0], metadata=fs[1])
        return Footprint(full_copies=full, on_disk=btrfsfootprint.walked_on_disk(self._root, project_dir, subvol_info))

    # push and pull: btrfs send / receive
    def identity(self, snap: Snapshot) -> str:
        # Send puts the received UUID (or, on the original, the UUID) in the stream, and
        # receive records it: every copy of a snapshot answers the same.
        info = subvol_info(snap.path)
        return info.received_uuid if int(info.received_uuid, 16) else info.uuid

    def send_bases(self, snap: Snapshot) -> list[tuple[Snapshot, bool]]:
        # Any read-only subvolume can be the parent of an incremental send; the one
        # taken last before snap most likely shares the most with it.
        others = [s for s in self.snapshots(snap.project, snap.volume) if s.name != snap.name]
        older = sorted((s for s in others if s.age_key < snap.age_key), key=lambda s: s.age_key, reverse=True)
        newer = sorted((s for s in others if s.age_key > snap.age_key), key=lambda s: s.age_key)
        return [(s, False) for s in older + newer]

    def send_argv(self, snap: Snapshot, base: Snapshot | None) -> list[str]:
        parent = ["-p", str(base.path)] if base else []
        return ["btrfs", "send", "-q", *parent, str(snap.path)]

    def estimate(self, snap: Snapshot, base: Snapshot | None) -> int | None:
        # A --no-data stream has every command but the file data, whose extents it
        # lists instead: the size of the real stream in one metadata pass.
        argv = self.send_argv(snap, base)
        out = ask_bytes([*argv[:3], "--no-data", *argv[3:]])
        return _stream_size(out) if out is not None else None

    def stream_complete(self, tail: bytes) -> bool:
        # btrfs receive takes EOF at a command boundary for the end of the stream (and
        # would keep a half snapshot): only the END command says the sender finished.
        return len(tail) >= 10 and tail[-10:-6] == b"\0\0\0\0" and tail[-6:-4] == _SEND_END

    def receive(self, project: str, volume: str, name: str, base: str | None, clone: bool,
                resuming: bool = False) -> Receive:
        check_project(project), check_volume(volume)
        if not is_snapshot_name(name):
            raise SnapverError(f"{name!r} is not a snapver snapshot name")
        if resuming:
            raise SnapverError("the btrfs backend cannot resume a transfer")
        # A received subvolume cannot be moved to another folder (its ".." is in a
        # read-only tree), so it is received in place; it stays writable, and so is not
        # listed as a snapshot, until receive has seen the whole stream.
        folder = self._snapshot_dir(project, volume)
        folder.mkdir(parents=True, exist_ok=True)
        guard = os.open(folder / ".receiving", os.O_RDWR | os.O_CREAT, 0o600)
        fcntl.flock(guard, fcntl.LOCK_EX)  # one receive per volume at a time
        target = folder / name
        try:
            if is_subvolume(target):
                if subvol_info(target).readonly:
                    raise SnapverError(f"snapshot {name} of volume {volume} exists already")
                run(["btrfs", "subvolume", "delete", str(target)])  # a receive that died half-way
        except BaseException:
            os.close(guard)
            raise

        def done() -> Snapshot:
            info = subvol_info(target)
            if not info.readonly or not int(info.received_uuid, 16):
                raise CommandFailed(f"btrfs receive of {volume}@{name} ended without a whole snapshot")
            return self._snapshot_at(project, volume, target)

        def undo() -> None:
            if is_subvolume(target) and not subvol_info(target).readonly:
                run(["btrfs", "subvolume", "delete", str(target)])

        return Receive(["btrfs", "receive", "-e", str(folder)], done, undo, lambda: os.close(guard))

    # -- the lake itself (Backend's class methods)
    comparable_marks = True  # transaction IDs of one filesystem

    @classmethod
    def provision_image(cls, image: Path, size: int | None) -> str:
        return str(provision_image(image, size, image_mountpoint(image)))

    @classmethod
    def lake_spec(cls, lake: str) -> str:
        return str(Path(lake).absolute())

    @classmethod
    def default_lake(cls, toplevel: Path) -> str | None:
        """<mountpoint>/.snapver, when the working tree is on Btrfs itself."""
        mount = linux.mount_of(toplevel)
        if mount.fstype != "btrfs":
            return None
        lake_dir = mount.mountpoint / ".snapver"
        lake_dir.mkdir(exist_ok=True)
        return str(lake_dir)

    @classmethod
    def ensure_mounted(cls, spec: str, image: Path) -> None:
        if is_mountpoint(Path(spec)):
            return
        if os.geteuid() != 0:
            raise SnapverError(
                f"the lake image {image} is not mounted (a reboot?), so the volume links point nowhere: "
                "`sudo snapver service mount` (or any snapver command as root) mounts it, "
                "and `sudo snapver service install --enable` at every boot"
            )
        mount_image(image, Path(spec))

    @classmethod
    def at_path(cls, path: Path) -> BtrfsBackend | None:
        return cls(path) if linux.fs_magic(path) == linux.BTRFS_MAGIC else None

    def check_served(self, tree: Path) -> None:
        lake = Path(self.spec())
        lst = lake.lstat()
        if os.path.realpath(lake) != str(lake) or lst.st_uid != 0 or lst.st_mode & 0o022:
            raise SnapverError(
                f"the lake {lake} of {tree} is reached through a symlink or may be changed by others "
                "than root: snapverd serves only lakes only root may change"
            )

    def describe(self) -> str:
        return f"the folder {self.root}"


_SEND_END = struct.pack("<H", 21)  # BTRFS_SEND_C_END
_SEND_UPDATE_EXTENT, _SEND_A_SIZE = 22, 4


def _stream_size(stream: bytes) -> int:
    """Bytes of a send stream, from its --no-data twin: the twin plus the extents it lists."""
    data, pos = 0, 17  # "btrfs-stream\0" and a u32 version
    while pos + 10 <= len(stream):
        length, cmd = struct.unpack_from("<IH", stream, pos)
        body, pos = pos + 10, pos + 10 + length
        if cmd == _SEND_UPDATE_EXTENT:
            at = body
            while at + 4 <= pos:
                kind, size = struct.unpack_from("<HH", stream, at)
                if kind == _SEND_A_SIZE and size == 8:
                    data += struct.unpack_from("<Q", stream, at + 4)[0]
                at += 4 + size
    return len(stream) + data


def _du(path: Path) -> Space:
    """Walks the tree (FIEMAP per file): O(files), so only show --space and du use it."""
    out = run(["btrfs", "filesystem", "du", "-s", "--raw", str(path)])
    total, exclusive = out.splitlines()[-1].split()[:2]
    return Space(referenced=int(total), exclusive=int(exclusive))
