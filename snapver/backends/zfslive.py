"""ZFS live volumes: where each is mounted, the link that names it, and the verbs that replace
or retire one (ZfsLive, mixed into ZfsBackend: checkout, clone, retire, tidy).

A checkout replaces a live dataset by a clone. Over NFS the old one cannot be unmounted:
the server holds a filesystem its clients have crossed into (their open files and
delegations), and `zfs rename` failed "dataset is busy" for as long as a node had read
the volume (tests/test_vm_nfs_lake.py: the server's checkout failed, the node went on
reading the old version). So the old dataset stays mounted where it is (`zfs rename -u`),
and the clone is mounted at a path no dataset had before,

    <workspace folder>/.mounts/<volume>.<stamp>

while <workspace folder>/<volume>, the path working trees link to, is a relative symbolic
link, replaced by rename() once the clone is mounted. A node that looks the volume up
again (lookupcache=none) reads the new link and crosses into a name it has never seen.
Readers on the server never find the volume missing either, and a job still reading the
old dataset keeps its version until gc or snapverd's reap destroys it.

Lakes made before this had each live dataset mounted at <workspace folder>/<volume>
itself (its mountpoint inherited); a volume's first checkout turns that folder into the
link, and until then it works as it did.
"""

from __future__ import annotations

import contextlib
import errno
import os
from datetime import datetime, timezone
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import faults
from ..errors import SnapverError
from ..names import is_snapshot_name
from ..proc import ask, run
from . import zfsfuse
from .base import Snapshot
from .zfsnode import COPIES, RECV, View, ZfsNode

MOUNTS = ".mounts"
STAMP = "%Y%m%dT%H%M%S%fZ"  # UTC, in the names of mountpoints and of former live datasets; reap reads it back


def fresh_mountpoint(ws_dir: Path, volume: str) -> Path:
    stamp = datetime.now(timezone.utc).strftime(STAMP)
    return ws_dir / MOUNTS / f"{volume}.{stamp}"


def is_placed(mountpoint: str) -> bool:
    """Whether a dataset's mountpoint is one fresh_mountpoint gave (else inherited, or none)."""
    return Path(mountpoint).parent.name == MOUNTS


def link_target(ws_dir: Path, volume: str) -> str | None:
    """What <workspace folder>/<volume> names; None if it is not a link (the old layout's
    mountpoint folder) or not there."""
    try:
        return os.readlink(ws_dir / volume)
    except (FileNotFoundError, NotADirectoryError):
        return None
    except OSError as e:
        if e.errno == errno.EINVAL:  # not a symbolic link
            return None
        raise


def linked(ws_dir: Path, volume: str, mountpoint: str) -> bool:
    return link_target(ws_dir, volume) == os.path.relpath(mountpoint, ws_dir)


def point_link(ws_dir: Path, volume: str, mountpoint: str) -> None:
    """Make <workspace folder>/<volume> name mountpoint, by one rename(), durably."""
    if linked(ws_dir, volume, mountpoint):
        return
    link = ws_dir / volume
    if link.is_dir() and not link.is_symlink():
        # The old layout's mountpoint: its dataset was renamed away (the checkout did that
        # before coming here), so it is an empty folder now, unless something was written
        # into it since; then it is kept and the checkout says so.
        try:
            link.rmdir()
        except OSError:
            raise SnapverError(f"{link} is a folder that is not empty (written into while the volume was away?): "
                               f"the volume is mounted at {mountpoint}, and this path cannot name it until "
                               "that folder is moved aside; then `snapver doctor --repair`") from None
    tmp = ws_dir / f".{volume}.link-{os.getpid()}"
    tmp.unlink(missing_ok=True)
    os.symlink(os.path.relpath(mountpoint, ws_dir), tmp)
    os.replace(tmp, link)
    _sync_dir(ws_dir)


def drop_link(ws_dir: Path, volume: str, mountpoint: str) -> None:
    """Remove <workspace folder>/<volume> if it names mountpoint (its dataset went away)."""
    if linked(ws_dir, volume, mountpoint):
        (ws_dir / volume).unlink()
        _sync_dir(ws_dir)


def remove_mount_dir(mountpoint: str) -> None:
    """The empty folder an unmounted dataset leaves under .mounts; a folder still mounted on,
    or written into, stays (rmdir refuses both)."""
    if is_placed(mountpoint):
        try:
            os.rmdir(mountpoint)
        except OSError:
            pass


def _sync_dir(path: Path) -> None:
    # The link is what a working tree reads through: after a power cut it must name the
    # dataset the workspace state says is live, not the one before it.
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class ZfsLive:
    """Mixed into ZfsBackend: the verbs of base.Backend that make, replace and retire live volumes."""

    _node: ZfsNode
    _lake: str
    _root: Path
    _lzc: Any
    _snapdir: bool

    if TYPE_CHECKING:  # ZfsBackend's, which this is mixed into
        def _live(self, project: str, workspace: str, volume: str) -> str: ...
        def _lzc_call(self, fn, *args): ...
        def _zsnap(self, snap: Snapshot, view: View | None = None): ...
        def changed_since(self, project: str, workspace: str, volume: str, mark: str | None,
                          view: View | None = None) -> bool: ...

    def _ws_dir(self, project: str, workspace: str) -> Path:
        """Where the workspace's dataset is mounted (inherited from the lake)."""
        return self._root / project / "workspaces" / workspace

    def volume_path(self, project: str, workspace: str, volume: str) -> Path:
        # The link to wherever the live dataset is mounted now (or, in a lake from before
        # the link, its mountpoint): the same path whichever version is checked out.
        self._live(project, workspace, volume)  # checks the names
        return self._ws_dir(project, workspace) / volume

    def create_volume(self, project: str, workspace: str, volume: str) -> Path:
        live = self._live(project, workspace, volume)
        ws_dir = self._ws_dir(project, workspace)
        mountpoint = str(fresh_mountpoint(ws_dir, volume))
        # atime off: reading a file would otherwise change the dataset, and
        # changed_since would call every read a change.
        self._node.run(["zfs", "create", "-p", "-o", "atime=off", "-o", f"mountpoint={mountpoint}", live], project)
        point_link(ws_dir, volume, mountpoint)
        return self.volume_path(project, workspace, volume)

    def clone_into_place(self, snap: Snapshot, workspace: str) -> str:
        """The live volume becomes a clone of snap: two renames of datasets, then one of the link.

        ZFS has no exchange, so: clone to incoming, rename live away, rename incoming into
        place and mount it at a fresh path, point the volume's link there (the module's
        docstring says why). Until that last rename the link names the old dataset, still
        mounted, so a reader never finds the volume missing. A crash between the dataset
        renames leaves no live dataset and a complete incoming, which the next checkout (or
        doctor) renames in; one before the link's rename, a link the next checkout (or
        doctor) points.
        The old live is renamed into history, never unmounted on OpenZFS (_rename says why):
        read-only there, its snapshots stay findable; one with no snapshot is destroyed
        unless something still holds it.
        `zfs rollback` is never used: it is only safe when the target is the
        newest snapshot and nothing changed since, and then it is a no-op.
        """
        project, volume = snap.project, snap.volume
        live = self._live(project, workspace, volume)
        incoming = f"{self._lake}/{project}/incoming/{workspace}/{volume}"
        node = self._node
        view = node.view(project)
        if self._finish_interrupted(live, incoming, view):
            view = node.view(project)
        full = self._zsnap(snap, view).full
        ds = view.dataset(live)
        if (
            full.partition("@")[0] == live
            and ds is not None and ds.own()[-1:] == [snap.name]
            and not self.changed_since(project, workspace, volume, snap.name, view)
        ):
            return snap.name
        # Not mounted until it is in place: zfs-fuse will not rename the old live dataset
        # while a clone of one of its snapshots is mounted (and canmount=noauto still mounts).
        node.changed(project)
        if self._lzc:
            run(["zfs", "create", "-p", incoming.rpartition("/")[0]])
            # libzfs_core hands properties to the kernel as they are: an on/off property
            # is a number there (the zfs command converts "off" for us, lzc does not).
            self._lzc_call(self._lzc.lzc_clone, incoming.encode(), full.encode(),
                           {b"atime": 0, b"mountpoint": b"none"})
        else:
            run(["zfs", "clone", "-p", "-o", "atime=off", "-o", "mountpoint=none", full, incoming])
        faults.point("checkout-cloned")
        old: str | None = None
        try:
            if ds is not None:
                old = self._history_name(project, workspace, volume)
                with zfsfuse.clones_aside([] if self._snapdir else zfsfuse.mounted_clones(view, live)):
                    self._rename(live, old, ds.mountpoint, view)
                    faults.point("checkout-swapped")  # no live dataset; the link names the old one
            zfsfuse.rename(node, incoming, live)
        except BaseException:
            if old and ds is not None and not node.exists(live):
                self._rename(old, live, ds.mountpoint, view)
            if node.exists(incoming):
                zfsfuse.destroy(node, incoming)
            raise
        self._mount_and_link(project, workspace, volume)
        if old and ds is not None:
            self._put_away(old, bool(ds.own()), ds.mountpoint)
        faults.point("checkout-placed")
        return snap.name

    def _history_name(self, project: str, workspace: str, volume: str) -> str:
        stamp = datetime.now(timezone.utc).strftime(STAMP)
        return f"{self._lake}/{project}/history/{workspace}/{volume}.{stamp}"

    def _rename(self, dataset: str, new: str, mountpoint: str, view: View) -> None:
        """Rename a live dataset mounted at mountpoint, and leave it mounted there.

        On OpenZFS with `zfs rename -u`: no unmount at all. An NFS server holds a filesystem
        its clients have crossed into (their open files, delegations), so unmounting the
        replaced volume failed "dataset is busy" for as long as a node had read it. It stays
        mounted where the link named it, read-only, until gc or snapverd's reap destroys it
        (reap), and a job still reading it keeps its version. zfs-fuse cannot rename a
        mounted dataset (zfsfuse.rename unmounts and mounts it again); nor can a lake from
        before the link, whose live dataset's mountpoint is inherited and must move."""
        if not (self._snapdir and is_placed(mountpoint)):
            zfsfuse.rename(self._node, dataset, new)
            return
        parent = new.rpartition("/")[0]
        if view.dataset(parent) is None:
            run(["zfs", "create", "-p", parent])
        self._node.changed()
        run(["zfs", "rename", "-u", dataset, new])

    def _mount_and_link(self, project: str, workspace: str, volume: str) -> None:
        """Mount the live dataset (just renamed in: mountpoint none) at a fresh path, and
        point the volume's link at it."""
        live, ws_dir = self._live(project, workspace, volume), self._ws_dir(project, workspace)
        mountpoint = str(fresh_mountpoint(ws_dir, volume))
        run(["zfs", "set", f"mountpoint={mountpoint}", live])
        self._node.mount(live)
        faults.point("checkout-mounted")
        point_link(ws_dir, volume, mountpoint)

    def _put_away(self, old: str, keep: bool, mountpoint: str) -> None:
        """The replaced live dataset, renamed into history: read-only, its snapshots read
        where it stays mounted; one that holds no snapshot is destroyed now if nothing holds
        it (OpenZFS: one try; busy, it waits for reap), else kept read-only till then."""
        if not keep and self._destroy_retired(old, mountpoint):
            return
        run(["zfs", "set", "readonly=on", old])

    def _destroy_retired(self, dataset: str, mountpoint: str) -> bool:
        """Destroy a former live dataset without snapshots (probes at most); False if it is busy."""
        self._node.changed()
        if self._snapdir:
            if ask(["zfs", "destroy", "-r", dataset]) is None:
                # An NFS client or a shell still in it: snapverd's reap looks again.
                with contextlib.suppress(OSError):
                    self._reap_due(dataset[len(self._lake) + 1:].split("/")[0]).touch()
                return False
        else:
            zfsfuse.destroy(self._node, dataset, recursive=True)  # its "busy" passes: it retries
        remove_mount_dir(mountpoint)
        return True

    def reap(self, project: str, workspace: str, quiet_for: float = 0.0) -> list[str]:
        """Destroy former live datasets that hold no snapshot (what a checkout could not
        destroy while it was busy), those of workspace, or of all ("") retired at least
        quiet_for seconds ago; any still busy waits for the next time."""
        due = self._reap_due(project)
        if not workspace and not due.exists():
            return []  # snapverd's poll, every few seconds: no `zfs get -r` unless a checkout left one
        view = self._node.view(project)
        top = f"{self._lake}/{project}/history/"
        now = datetime.now(timezone.utc)
        said, left = [], False
        for d in list(view.datasets.values()):
            rest = d.name[len(top):].split("/") if d.name.startswith(top) else []
            if len(rest) != 2 or rest[0] in (COPIES, RECV) or (workspace and rest[0] != workspace) or d.own():
                continue
            try:
                retired = datetime.strptime(rest[1].rpartition(".")[2], STAMP).replace(tzinfo=timezone.utc)
            except ValueError:
                continue  # not a name this module gives
            if (now - retired).total_seconds() >= quiet_for and self._destroy_retired(d.name, d.mountpoint):
                said.append(f"deleted {rest[1]}, a former live volume with no snapshot")
            else:
                left = True
        if not left and not workspace:
            due.unlink(missing_ok=True)
        return said

    def _reap_due(self, project: str) -> Path:
        """The file that tells snapverd's reap a former live volume of project waits."""
        return self._root / project / "history" / ".reap-due"

    def _finish_interrupted(self, live: str, incoming: str, view: View) -> bool:
        """Finish or drop what an interrupted checkout left; whether anything was done."""
        done = False
        if view.dataset(incoming):
            done = True
            if view.dataset(live):
                zfsfuse.destroy(self._node, incoming)  # the swap never started
            else:
                zfsfuse.rename(self._node, incoming, live)  # it stopped halfway: finish
                self._mount_and_link(*self._names_of(live))
        old = view.dataset(f"{incoming}.old")
        if old is not None and not old.own():
            done = True
            zfsfuse.destroy(self._node, old.name, recursive=True)
        ds = view.dataset(live)
        if not done and ds is not None and ds.mountpoint == "none":
            done = True  # renamed in, not yet mounted
            self._mount_and_link(*self._names_of(live))
        elif not done and ds is not None and is_placed(ds.mountpoint):
            project, workspace, volume = self._names_of(live)
            ws_dir = self._ws_dir(project, workspace)
            if not linked(ws_dir, volume, ds.mountpoint):
                done = True  # mounted, the link not yet pointed at it
                self._node.mount(live, ds.mounted)
                point_link(ws_dir, volume, ds.mountpoint)
        return done

    def _names_of(self, live: str) -> tuple[str, str, str]:
        """(project, workspace, volume) of a live dataset's name."""
        project, _, workspace, volume = live[len(self._lake) + 1:].split("/")
        return project, workspace, volume

    def tidy(self, project: str, workspace: str, volumes: list[str], repair: bool = False) -> list[str]:
        found = []
        top = f"{self._lake}/{project}"
        view = self._node.view(project)
        for volume in volumes:
            live = self._live(project, workspace, volume)
            incoming = f"{top}/incoming/{workspace}/{volume}"
            here = view.dataset(incoming) is not None
            old = view.dataset(f"{incoming}.old") is not None
            if here and view.dataset(live) is None:
                found.append(f"{volume}: no live volume; the clone of an interrupted checkout waits at {incoming}")
            elif here:
                found.append(f"{volume}: the clone of an interrupted checkout is left at {incoming}")
            if old:
                found.append(f"{volume}: the volume an interrupted checkout replaced is left at {incoming}.old")
            ds = view.dataset(live)
            mountpoint = ds.mountpoint if ds is not None else ""
            ws_dir = self._ws_dir(project, workspace)
            unlinked = is_placed(mountpoint) and not linked(ws_dir, volume, mountpoint)
            if unlinked:
                found.append(f"{volume}: {ws_dir / volume} does not name the live volume, mounted at {mountpoint}")
            if mountpoint == "none":
                found.append(f"{volume}: the live volume of an interrupted checkout is not mounted")
            if repair and (here or old or unlinked or mountpoint == "none"):
                self._finish_interrupted(live, incoming, view)
                view = self._node.view(project)
        if not self._snapdir:
            down = zfsfuse.unmounted_clones(view)
            if down:
                found.append(f"{len(down)} snapshot view(s) or live volume(s) left unmounted")
                for v in down if repair else []:
                    run(["zfs", "mount", v])
        return found

    def live_origin(self, project: str, workspace: str, volume: str) -> tuple[str, str] | None:
        live = self._live(project, workspace, volume)
        props = self._node.get(live, ["origin"], missing_ok=True).get(live)
        name = props["origin"].partition("@")[2] if props else ""
        return (name, name) if is_snapshot_name(name) else None

    def clone_volume(self, snap: Snapshot, workspace: str, volume: str) -> Path:
        live = self._live(snap.project, workspace, volume)
        if self._node.exists(live):
            raise SnapverError(f"volume {volume} of workspace {workspace} exists already")
        ws_dir = self._ws_dir(snap.project, workspace)
        mountpoint = str(fresh_mountpoint(ws_dir, volume))
        self._node.run(["zfs", "clone", "-p", "-o", "atime=off", "-o", f"mountpoint={mountpoint}",
                        self._zsnap(snap).full, live], snap.project)
        self._node.mount(live)
        point_link(ws_dir, volume, mountpoint)
        return self.volume_path(snap.project, workspace, volume)

    def retire_volume(self, project: str, workspace: str, volume: str) -> None:
        live = self._live(project, workspace, volume)
        view = self._node.view(project)
        ds = view.dataset(live)
        if ds is None:
            return
        views_root = f"{self._lake}/{project}/snapshots/"
        for name in ds.own():
            clones = [c for c in view.clones_of(f"{live}@{name}") if not c.startswith(views_root)]
            if len(clones) == 1:
                # A live volume was made from this snapshot (a build swapped in): it takes the
                # snapshot over, as if it had been taken of it, and this one no longer holds it.
                # (zfs-fuse would not rename this dataset while that clone is mounted.)
                self._node.run(["zfs", "promote", clones[0]], project)
                view = self._node.view(project)
        ds = view.dataset(live)
        if ds is None:
            return
        drop_link(self._ws_dir(project, workspace), volume, ds.mountpoint)
        if not ds.own():
            if not self._destroy_retired(live, ds.mountpoint):  # busy: out of the way, for reap
                history = self._history_name(project, workspace, volume)
                self._rename(live, history, ds.mountpoint, view)
                run(["zfs", "set", "readonly=on", history])
        else:
            # Snapshots nothing was made from yet (a build killed before its swap): kept,
            # read-only and findable, where clone_into_place puts a replaced live volume.
            history = self._history_name(project, workspace, volume)
            with zfsfuse.clones_aside([] if self._snapdir else zfsfuse.mounted_clones(view, live)):
                self._rename(live, history, ds.mountpoint, view)
            self._put_away(history, True, ds.mountpoint)
        self._node.changed(project)
