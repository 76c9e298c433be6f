"""ZFS: volumes are datasets, snapshots are ZFS snapshots of them.

Layout under the lake dataset L (the logical layout of base.py, in datasets):

    L/<project>/workspaces/<ws>/<volume>     live volume, mounted at <ws folder>/.mounts/<volume>.<t>
                                             and named by the link <ws folder>/<volume> (zfslive.py)
    L/<project>/history/<ws>/<volume>.<t>    a former live volume kept for its snapshots, mounted
                                             where it was (OpenZFS: never unmounted by a checkout)
    L/<project>/incoming/<ws>/<volume>       transient: the clone a checkout swaps in
    L/<project>/snapshots/<volume>/<name>    read-only clone of a snapshot (zfs-fuse only)
    L/<project>/history/_copies/<volume>.<name>  holds snapshot <name>, a copy of another
                                             snapshot given to a rewritten commit (copy_snapshot)

A ZFS snapshot hangs off the dataset it was taken of, and a checkout replaces
a live dataset with a clone of some snapshot, so one project's history is
spread over several live and history datasets: every lookup searches the
whole project. Clones tie datasets together (a clone needs its origin
snapshot), which is why a replaced live volume with snapshots is renamed
into history rather than destroyed, and why destroy() may promote.

Two ways in: OpenZFS's libzfs_core (pyzfs) where it imports and /dev/zfs
exists, for the calls that must be atomic or fast (snapshot a list in one
txg, clone, destroy); the zfs CLI, argv lists only, for everything else and
everywhere else (zfs-fuse ships no libzfs_core). `via` says which one ran.

Measured on zfs-fuse 0.7.0 (pool version 23), where tests run:
- no `written` property, no `zfs diff`, no `zfs list -p`, no .zfs snapdir,
  `zfs holds` is broken (the userrefs property works), `zfs snapshot`
  takes one name (but -r is atomic across descendants, and -o works),
  `canmount=noauto` at clone time still mounts, and rename/destroy of a
  mounted dataset, or rename of one whose snapshots have a mounted clone,
  fails "dataset is busy". Every workaround for these is in zfsfuse.py.

The objects: zfsnode.py (the node that runs zfs commands, and a project's datasets and
snapshots read in one `zfs get -r`), zfssend.py (push and pull), zfsfuse.py (zfs-fuse),
zfspool.py (the lake's name, its file-backed pool, the lake mounted at a path), zfslive.py
(live volumes: where each is mounted, the link naming it, a checkout's swap).
"""

from __future__ import annotations

import os
from pathlib import Path

from .. import faults, linux
from ..errors import FULL, CommandFailed, FullCommandFailed, InUse, NotFound, SnapverError
from ..names import check_project, check_volume, check_workspace, is_snapshot_name, parse_snapshot_name
from ..proc import ask, run
from . import zfsfuse
from .base import Backend, Change, Footprint, Snapshot, Space, walk_diff
from .zfspool import _pool_imported, check_lake_name, dataset_mounted_at, pool_name, provision_pool
from .zfslive import ZfsLive
from .zfsnode import COPIES, PROBE, RECEIVED, View, ZfsNode, ZSnap
from .zfssend import ZfsStreams


def _load_libzfs_core():
    # pyzfs imports fine on a machine without the kernel module; /dev/zfs
    # is what says the ioctls behind it will answer.
    if not os.path.exists("/dev/zfs"):
        return None
    try:
        import libzfs_core  # type: ignore[import-not-found]
    except ImportError:
        return None
    return libzfs_core


class ZfsBackend(ZfsLive, ZfsStreams, Backend):
    name = "zfs"

    def __init__(self, spec: str):
        self._lake = check_lake_name(spec)
        self._node = ZfsNode(self._lake)
        try:
            props = self._node.get(self._lake, ["type", "mountpoint", "mounted"])[self._lake]
        except CommandFailed as e:
            if os.geteuid() != 0 and ("Permission denied" in str(e) or "failed to initialize ZFS library" in str(e)):
                # /dev/zfs (zfs-fuse: its socket) is root's: not a missing dataset (the caller
                # says what to do instead). zfs-fuse's last line is "failed to initialize ZFS library".
                raise PermissionError(13, "the zfs command needs root", "/dev/zfs") from None
            raise SnapverError(
                f"the ZFS dataset {self._lake} does not exist (is its pool imported?): "
                f"create it (`zfs create -p {self._lake}`), or give a dataset that exists"
            ) from None
        if props["type"] != "filesystem" or props["mounted"] != "yes":
            raise SnapverError(f"the ZFS dataset {self._lake} is not a mounted filesystem")
        self._root = Path(props["mountpoint"])
        self._lzc = _load_libzfs_core()
        self.via = "libzfs_core" if self._lzc else "cli"
        # OpenZFS shows every snapshot under <mountpoint>/.zfs/snapshot (even
        # when snapdir=hidden hides .zfs from readdir); zfs-fuse has no such
        # directory, so there a snapshot is read through a read-only clone (zfsfuse.ensure_view).
        self._snapdir = (self._root / ".zfs" / "snapshot").is_dir()
        self.snapshot_paths_move = self._snapdir  # zfs-fuse's views stay where they are

    @property
    def root(self) -> Path:
        return self._root

    def spec(self) -> str:
        return self._lake

    def steady(self):
        return self._node.steady()

    # dataset names
    def _live(self, project: str, workspace: str, volume: str) -> str:
        check_project(project), check_workspace(workspace), check_volume(volume)
        return f"{self._lake}/{project}/workspaces/{workspace}/{volume}"

    # live volumes
    def volume_exists(self, project: str, workspace: str, volume: str) -> bool:
        return self._node.exists(self._live(project, workspace, volume))

    def mark(self, project: str, workspace: str, volume: str) -> str:
        # The mark is the name of a snapshot the live volume is identical to:
        # its newest own snapshot or, for a fresh clone, its origin.
        live = self._live(project, workspace, volume)
        view = self._node.view(project)
        ds = view.dataset(live)
        if ds is None:
            raise NotFound(f"volume {volume} of workspace {workspace} does not exist")
        own = [n for n in ds.own() if is_snapshot_name(n)]
        base = own[-1] if own else ds.origin.partition("@")[2]
        if is_snapshot_name(base) and not self.changed_since(project, workspace, volume, base, view):
            return base
        return ""  # dirty: unknown, so changed_since says True

    def changed_since(self, project: str, workspace: str, volume: str, mark: str | None,
                      view: View | None = None) -> bool:
        """Compare the live volume with snapshot `mark` block by block, in O(changes seen).

        An incremental send stream from the mark to a fresh snapshot of the live volume is
        BEGIN+END when no block was born in between, and gets an OBJECT/FREE record for any
        change, even a chmod (zfsfuse.same_blocks says why not `written@`). The send prunes
        by birth txg, so an unchanged volume costs a snapshot, 624 bytes and a destroy; a
        changed one is cut off after 625 bytes. A mark that is not an ancestor of the live
        volume fails the send: changed.
        """
        if not mark or not is_snapshot_name(mark):
            return True
        live = self._live(project, workspace, volume)
        view = view or self._node.view(project)
        base, ds = view.find(volume, mark), view.dataset(live)
        if base is None or ds is None:
            return True
        # Pages written through mmap sit in the kernel until flushed to the
        # daemon; the probe snapshot then commits everything in one txg. A dataset that is
        # not mounted (mountpoint "none", or a cascade or checkout swapping it meanwhile)
        # has nothing to flush.
        if ds.mounted and ds.mountpoint.startswith("/"):
            try:
                linux.syncfs(Path(ds.mountpoint))
            except FileNotFoundError:
                pass  # unmounted since the view was read: nothing to flush either
        probe = f"{live}@{PROBE}-{os.getpid()}-{os.urandom(3).hex()}"
        # The probe is made and destroyed here, and a View leaves probes out: what the node
        # read of the project is as true after as before, so it is kept (one read of the
        # project serves a whole status or checkout, inside steady()).
        try:
            if self._lzc:
                self._lzc_call(self._lzc.lzc_snapshot, [probe.encode()], {})
            else:
                run(["zfs", "snapshot", probe])
        except SnapverError:
            return True  # e.g. a full pool: cannot prove anything
        try:
            return not zfsfuse.same_blocks(base.full, probe)
        finally:
            self._destroy_probe(probe)

    # snapshots
    def snapshot(self, project: str, workspace: str, volumes: list[str], name: str) -> list[Snapshot]:
        parsed = parse_snapshot_name(name)
        if parsed is None:
            raise SnapverError(f"{name!r} is not a snapver snapshot name")
        lives = [self._live(project, workspace, v) for v in volumes]
        view = self._node.view(project)
        for volume, live in zip(volumes, lives):
            if view.dataset(live) is None:
                raise NotFound(f"volume {volume} of workspace {workspace} does not exist")
            if view.find(volume, name):
                raise SnapverError(f"snapshot {name} of volume {volume} already exists")
        props = {"snapver:kind": parsed[1], "snapver:commit": parsed[0], "snapver:workspace": workspace}
        self._snapshot_all([f"{live}@{name}" for live in lives], props)
        view = self._node.view(project)
        return [self._with_path(self._row(project, v, view.snaps[f"{live}@{name}"]), view)
                for v, live in zip(volumes, lives)]

    def _snapshot_all(self, full_names: list[str], props: dict[str, str]) -> None:
        """Take every snapshot in one transaction group, or none."""
        self._node.changed()
        if self._lzc:
            self._lzc_call(
                self._lzc.lzc_snapshot,
                [n.encode() for n in full_names],
                {k.encode(): v.encode() for k, v in props.items()},
            )
            faults.point("snapshot-volume")
            return
        zfsfuse.snapshot_cli(self._node, full_names, props, faults.point)

    def _destroy_probe(self, probe: str) -> None:
        """Destroy changed_since's probe snapshot, keeping what the node read (a View leaves
        probes out, so it is as true after as before)."""
        if self._lzc:
            self._lzc_call(self._lzc.lzc_destroy_snaps, [probe.encode()], False)
        else:
            run(["zfs", "destroy", probe])

    def _lzc_call(self, fn, *args):
        try:
            return fn(*args)
        except self._lzc.exceptions.ZFSError as e:
            detail = "; ".join(str(x) for x in getattr(e, "errors", []) or []) or str(e)
            error = CommandFailed
            if getattr(e, "errno", None) == 28:  # ENOSPC
                detail, error = FULL, FullCommandFailed
            raise error(f"libzfs_core {fn.__name__} failed: {detail}") from None

    @staticmethod
    def _row(project: str, volume: str, zs) -> Snapshot:
        """The snapshot without a readable path (`path` holds its ZFS name)."""
        return Snapshot(project, volume, zs.name, Path(zs.full), zs.created, zs.name, zs.txg)

    def _rows(self, project: str, volume: str | None, view: View | None = None) -> list[Snapshot]:
        """Snapshots of the project's live and history datasets, oldest first, without paths."""
        view = view or self._node.view(project)
        return [self._row(project, v, zs) for v, zs in view.versions(volume)]

    def _with_path(self, row: Snapshot, view: View) -> Snapshot:
        """Snapshot with `path` where its files can be read (row.path holds the ZFS name)."""
        full = str(row.path)
        if self._snapdir:
            dataset = full.partition("@")[0]
            ds = view.dataset(dataset)
            mountpoint = ds.mountpoint if ds else self._node.get(dataset, ["mountpoint"])[dataset]["mountpoint"]
            path = Path(mountpoint) / ".zfs" / "snapshot" / row.name
        else:
            path = zfsfuse.ensure_view(self._node, view, row.project, row.volume, full)
        return row._replace(path=path)

    def snapshots(self, project: str | None = None, volume: str | None = None,
                  readable: bool = True) -> list[Snapshot]:
        if project:
            projects = [check_project(project)]
        else:
            prefix = f"{self._lake}/"
            projects = [c[len(prefix):] for c in self._node.children(self._lake)]
        found = []
        for p in projects:
            view = self._node.view(p)
            rows = self._rows(p, volume, view)
            found += [self._with_path(r, view) for r in rows] if readable else rows
        return found

    def find(self, project: str, volume: str, name: str) -> Snapshot | None:
        view = self._node.view(check_project(project))
        zs = view.find(check_volume(volume), name)
        return self._with_path(self._row(project, volume, zs), view) if zs else None

    def destroy(self, snap: Snapshot) -> None:
        view = self._node.view(snap.project)
        zs = self._zsnap(snap, view)
        full, dataset = zs.full, zs.dataset
        what = f"snapshot {snap.name} of volume {snap.volume}"
        if zs.held:
            raise InUse(f"{what} is held by a release: release it before destroying it")
        views_root = f"{self._lake}/{snap.project}/snapshots/"
        clones = view.clones_of(full)
        views = [c for c in clones if c.startswith(views_root)]
        others = [c for c in clones if not c.startswith(views_root)]
        history = self._is_history(snap.project, dataset)
        held = view.dataset(dataset)
        own = held.own() if held is not None else []
        promote = None
        if others:
            # A clone needs its origin snapshot. The one way to free it: the
            # history dataset holding it has nothing after it, so the single
            # clone can be promoted (taking this and all older snapshots with
            # it) and the history dataset, now holding no snapshot, dropped.
            later = own[own.index(snap.name) + 1:] if snap.name in own else own
            if len(others) > 1 or not history or later:
                users = ", ".join(self._describe(snap.project, c) for c in others)
                raise InUse(f"{what} cannot be destroyed: {users} is a clone of it")
            promote = others[0]
        for v in views:
            zfsfuse.destroy(self._node, v)
        if promote:
            self._node.run(["zfs", "promote", promote])
            zfsfuse.destroy(self._node, dataset, recursive=True)  # only probes could be left under it
            full = f"{promote}@{snap.name}"
        self._node.run(["zfs", "destroy", full])
        if history and not promote and not [n for n in own if n != snap.name]:
            zfsfuse.destroy(self._node, dataset, recursive=True)  # a history dataset kept for nothing now

    def copy_snapshot(self, snap: Snapshot, name: str) -> Snapshot:
        """A ZFS snapshot cannot be duplicated in place (a new snapshot of its dataset holds
        the dataset's state now, not snap's), and send/receive copies data. What is O(1) on
        zfs-fuse (pool version 23) and OpenZFS alike: clone snap into a read-only history
        dataset of its own, and snapshot that clone as `name` (its snapver properties set).
        The clone ties snap to it as its origin, as a checkout's clone does: destroy() frees
        snap only where it can promote, and otherwise refuses and keeps it, which costs no
        space (the copy holds the same blocks). A crash between the clone and its snapshot
        leaves a dataset without snapshots, which the next copy of that name replaces."""
        parsed = parse_snapshot_name(name)
        if parsed is None:
            raise SnapverError(f"{name!r} is not a snapver snapshot name")
        view = self._node.view(snap.project)
        if view.find(snap.volume, name):
            raise SnapverError(f"snapshot {name} of volume {snap.volume} already exists")
        full = self._zsnap(snap, view).full
        copy = f"{self._lake}/{snap.project}/history/{COPIES}/{check_volume(snap.volume)}.{name}"
        if view.dataset(copy):
            zfsfuse.destroy(self._node, copy, recursive=True)  # a copy a crash cut off before its snapshot
        self._node.run(["zfs", "clone", "-p", "-o", "readonly=on", "-o", "atime=off", full, copy])
        props = {"snapver:kind": parsed[1], "snapver:commit": parsed[0]}
        try:
            self._snapshot_all([f"{copy}@{name}"], props)
        except BaseException:
            zfsfuse.destroy(self._node, copy, recursive=True)
            raise
        p = self._node.get(f"{copy}@{name}", ["creation", "createtxg", RECEIVED])
        return self._row(snap.project, snap.volume, ZSnap(f"{copy}@{name}", p[f"{copy}@{name}"]))  # no view yet

    def _describe(self, project: str, dataset: str) -> str:
        rest = dataset[len(f"{self._lake}/{project}/"):].split("/")
        if rest[0] == "workspaces" and len(rest) == 3:
            return f"the live volume {rest[2]} of workspace {rest[1]}"
        if rest[0] == "history" and len(rest) == 3 and rest[1] == COPIES:
            return f"the snapshot {rest[2].partition('.')[2]} (a rewritten commit's copy)"
        return f"the dataset {dataset} (older history)"

    def _is_history(self, project: str, dataset: str) -> bool:
        return dataset.startswith(f"{self._lake}/{project}/history/")

    def _own_snapshots(self, dataset: str) -> list[str]:
        """Snapshot names of one dataset in creation order (probes left out), read now."""
        out = run(["zfs", "list", "-H", "-o", "name", "-t", "snapshot", "-r", "-d", "1", dataset])
        names = [l.partition("@")[2] for l in out.splitlines() if l.startswith(dataset + "@")]
        return [n for n in names if not n.startswith(PROBE)]

    def space(self, snap: Snapshot) -> Space:
        return self.spaces([snap])[0]

    def spaces(self, snaps: list[Snapshot]) -> list[Space]:
        # One listing per project and one `zfs get` per 500 snapshots, not two processes each.
        views = {p: self._node.view(p) for p in {s.project for s in snaps}}
        fulls = [self._zsnap(s, views[s.project]).full for s in snaps]
        props: dict[str, dict[str, str]] = {}
        for i in range(0, len(fulls), 500):
            props.update(self._node.get(fulls[i:i + 500], ["used", "referenced"]))
        return [Space(referenced=int(props[f]["referenced"]), exclusive=int(props[f]["used"])) for f in fulls]

    def hold(self, snap: Snapshot, tag: str) -> None:
        # A user hold makes ZFS itself refuse `zfs destroy` (and destroy() above
        # checks userrefs first, to say why).
        # A hold changes one property of one snapshot: the View read is updated to match
        # instead of read again (a release pins every volume, one `zfs get -r` for all).
        zs = self._zsnap(snap)
        run(["zfs", "hold", tag, zs.full])
        zs.props["userrefs"] = str(zs.refs + 1)

    def unhold(self, snap: Snapshot, tag: str) -> None:
        zs = self._zsnap(snap)
        if not zs.held:
            return  # zfs-fuse's `zfs holds` is broken, so userrefs says whether to try
        try:
            run(["zfs", "release", tag, zs.full])
        except CommandFailed as e:
            self._node.changed(snap.project)  # what it holds now is to be read again
            if "no such tag" not in str(e):
                raise
            return
        zs.props["userrefs"] = str(zs.refs - 1)

    def same_data(self, old: Snapshot, new: Snapshot) -> bool:
        if (old.project, old.volume) != (new.project, new.volume):
            return False
        if old.name == new.name:
            return True
        view = self._node.view(old.project)
        a, b = view.find(old.volume, old.name), view.find(new.volume, new.name)
        # An empty incremental stream from the older to the newer (its origin chain must hold
        # the older one, or the send fails: not proven, so not the same).
        return bool(a and b and a.txg <= b.txg and zfsfuse.same_blocks(a.full, b.full))

    def live_space(self, project: str, workspace: str, volume: str) -> Space:
        live = self._live(project, workspace, volume)
        props = self._node.get(live, ["referenced", "usedbydataset"])[live]
        # usedbydataset: the blocks only the live state holds (not its snapshots',
        # not its origin's), the counterpart of a snapshot's `used`.
        return Space(referenced=int(props["referenced"]), exclusive=int(props["usedbydataset"]))

    def footprint(self, project: str) -> Footprint:
        top = f"{self._lake}/{check_project(project)}"
        props = self._node.get(top, ["type", "used", "referenced"], recursive=True)
        views = f"{top}/snapshots/"
        names = View(top, {})

        def counted(name: str, p: dict) -> bool:
            # Snapshots and live/history volumes; views (zfs-fuse's read-only
            # clones) would count their snapshot twice, probes are transient.
            if name.startswith(views) or PROBE in name:
                return False
            dataset = name.partition("@")[0]
            return names.volume_of(dataset) is not None and (
                p["type"] == "snapshot" or dataset.startswith(f"{top}/workspaces/"))

        full = sum(int(p["referenced"]) for d, p in props.items() if counted(d, p))
        return Footprint(full_copies=full, on_disk=int(props[top]["used"]))

    def diff(self, old: Path, new: Path) -> list[Change]:
        # OpenZFS: from `zfs diff`, O(changes); zfs-fuse has none, and where it refuses: the walk.
        if self._snapdir:
            from . import zfsdiff  # here: not on the hook's path

            found = zfsdiff.diff(old, new)
            if found is not None:
                return found
        return walk_diff(old, new)

    # -- the lake itself (Backend's class methods)
    @classmethod
    def provision_image(cls, image: Path, size: int | None) -> str:
        return provision_pool(image, size, pool_name(image))

    @classmethod
    def ensure_mounted(cls, spec: str, image: Path) -> None:
        pool = pool_name(image)
        if os.geteuid() != 0 and not _pool_imported(pool):
            raise SnapverError(
                f"the ZFS pool {pool} in {image} is not imported (a reboot?), so the volume links point nowhere: "
                "`sudo snapver service mount` (or any snapver command as root) imports it, "
                "and `sudo snapver service install --enable` at every boot"
            )
        provision_pool(image, None, pool)  # imports the pool if it is not

    @classmethod
    def at_path(cls, path: Path) -> ZfsBackend | None:
        dataset = dataset_mounted_at(path)
        return cls(dataset) if dataset else None

    @classmethod
    def named(cls, spec: str) -> ZfsBackend | None:
        dataset = spec.strip("/")
        try:
            there = ask(["zfs", "list", "-H", "-o", "name", "--", dataset.split("/")[0]]) is not None
        except CommandFailed:
            return None  # no ZFS on this host
        return cls(dataset) if there else None

    def describe(self) -> str:
        return f"the ZFS dataset {self.spec()}"


def _rename(old: str, new: str) -> None:
    """Rename a filesystem the way the backend does (zfsfuse.rename); tests use it."""
    zfsfuse.rename(ZfsNode(old.partition("/")[0]), old, new)
