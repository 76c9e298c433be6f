"""ZFS: volumes are datasets, snapshots are ZFS snapshots of them.

Layout under the lake dataset L (the logical layout of base.py, in datasets):

    L/<project>/workspaces/<ws>/<volume>     live volume (mounted where it inherits)
    L/<project>/history/<ws>/<volume>.<t>    a former live volume kept for its snapshots
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
  fails "dataset is busy" (see _unmounted and clone_into_place).
"""

from __future__ import annotations

import os
import re
import struct
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path

from .. import faults, linux
from ..errors import FULL, CommandFailed, FullCommandFailed, InUse, NotFound, SnapverError
from ..names import check_project, check_volume, check_workspace, is_snapshot_name, parse_snapshot_name
from ..proc import run
from .base import Backend, Footprint, Receive, Snapshot, Space, create_image_file

# ZFS accepts alphanumerics and _ - . : in a component; the first character
# is narrowed so nothing can be read as an option or as "." / "..".
_COMPONENT = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.:-]*")
_POOL = re.compile(r"[A-Za-z][A-Za-z0-9_.:-]*")
# Room below ZFS's 255-byte limit for "/<project>/history/<ws>/<volume>.<t>@<name>".
MAX_LAKE_NAME = 40
COPIES = "_copies"  # history/_copies: the datasets copy_snapshot makes (no workspace id starts with _)
PROBE = "snapver-probe"  # temporary snapshots changed_since takes and drops
MIN_POOL_SIZE = 64 * 1024**2  # the smallest vdev ZFS accepts

# zfs send stream: 312-byte records; an incremental stream between two
# identical snapshots is exactly BEGIN then END.
_RECORD = 312
_DRR_BEGIN, _DRR_END = 0, 5


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


class ZfsBackend(Backend):
    name = "zfs"

    def __init__(self, spec: str):
        self._lake = check_lake_name(spec)
        try:
            props = _get(self._lake, ["type", "mountpoint", "mounted"])[self._lake]
        except CommandFailed:
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
        # directory, so there a snapshot is read through a read-only clone.
        self._snapdir = (self._root / ".zfs" / "snapshot").is_dir()

    @property
    def root(self) -> Path:
        return self._root

    def spec(self) -> str:
        return self._lake

    # dataset names
    def _live(self, project: str, workspace: str, volume: str) -> str:
        check_project(project), check_workspace(workspace), check_volume(volume)
        return f"{self._lake}/{project}/workspaces/{workspace}/{volume}"

    def _volume_of(self, project: str, dataset: str) -> str | None:
        """The volume a live or history dataset of project holds, None for anything else."""
        rest = dataset[len(f"{self._lake}/{project}/"):].split("/")
        if len(rest) == 3 and rest[0] == "workspaces":
            return rest[2]
        if len(rest) == 3 and rest[0] == "history":
            return rest[2].split(".")[0]
        return None

    def _view(self, snap: Snapshot) -> str:
        return f"{self._lake}/{snap.project}/snapshots/{snap.volume}/{snap.name}"

    # live volumes
    def volume_path(self, project: str, workspace: str, volume: str) -> Path:
        live = self._live(project, workspace, volume)
        props = _get(live, ["mountpoint"], missing_ok=True).get(live)
        if props:
            return Path(props["mountpoint"])
        # Not there yet: where it will inherit its mountpoint.
        return self._root / project / "workspaces" / workspace / volume

    def volume_exists(self, project: str, workspace: str, volume: str) -> bool:
        return _exists(self._live(project, workspace, volume))

    def create_volume(self, project: str, workspace: str, volume: str) -> Path:
        live = self._live(project, workspace, volume)
        # atime off: reading a file would otherwise change the dataset, and
        # changed_since would call every read a change.
        run(["zfs", "create", "-p", "-o", "atime=off", live])
        return self.volume_path(project, workspace, volume)

    def mark(self, project: str, workspace: str, volume: str) -> str:
        # The mark is the name of a snapshot the live volume is identical to:
        # its newest own snapshot or, for a fresh clone, its origin.
        live = self._live(project, workspace, volume)
        own = [n for n in self._own_snapshots(live) if is_snapshot_name(n)]
        origin = _get(live, ["origin"])[live]["origin"]
        base = own[-1] if own else origin.partition("@")[2]
        if is_snapshot_name(base) and not self.changed_since(project, workspace, volume, base):
            return base
        return ""  # dirty: unknown, so changed_since says True

    def changed_since(self, project: str, workspace: str, volume: str, mark: str | None) -> bool:
        """Compare the live volume with snapshot `mark` block by block, in O(changes seen).

        zfs-fuse has no `written@snap`, and space accounting cannot prove
        "unchanged" (a same-size overwrite of a clone's block moves no
        counter). What is exact: an incremental send stream from the mark to
        a fresh snapshot of the live volume is BEGIN+END when no block was
        born in between, and gets an OBJECT/FREE record for any change, even
        a chmod. The send prunes by birth txg, so an unchanged volume costs a
        snapshot, 624 bytes and a destroy; a changed one is cut off after
        625 bytes. A mark that is not an ancestor of the live volume fails
        the send: changed.
        """
        if not mark or not is_snapshot_name(mark):
            return True
        live = self._live(project, workspace, volume)
        base = self._locate(project, volume, mark)
        if base is None or not _exists(live):
            return True
        # Pages written through mmap sit in the kernel until flushed to the
        # daemon; the probe snapshot then commits everything in one txg.
        linux.syncfs(self.volume_path(project, workspace, volume))
        probe = f"{live}@{PROBE}-{os.getpid()}-{os.urandom(3).hex()}"
        try:
            self._snapshot_all([probe], {})
        except SnapverError:
            return True  # e.g. a full pool: cannot prove anything
        try:
            return not _same_blocks(base, probe)
        finally:
            self._destroy_snapshots([probe])

    # snapshots
    def snapshot(self, project: str, workspace: str, volumes: list[str], name: str) -> list[Snapshot]:
        parsed = parse_snapshot_name(name)
        if parsed is None:
            raise SnapverError(f"{name!r} is not a snapver snapshot name")
        lives = [self._live(project, workspace, v) for v in volumes]
        existing = {(s.volume, s.name) for s in self._rows(project, None)}
        for volume, live in zip(volumes, lives):
            if not _exists(live):
                raise NotFound(f"volume {volume} of workspace {workspace} does not exist")
            if (volume, name) in existing:
                raise SnapverError(f"snapshot {name} of volume {volume} already exists")
        props = {"snapver:kind": parsed[1], "snapver:commit": parsed[0], "snapver:workspace": workspace}
        self._snapshot_all([f"{live}@{name}" for live in lives], props)
        return [self._snapshot(project, v, f"{live}@{name}") for v, live in zip(volumes, lives)]

    def _snapshot_all(self, full_names: list[str], props: dict[str, str]) -> None:
        """Take every snapshot in one transaction group, or none."""
        if self._lzc:
            self._lzc_call(
                self._lzc.lzc_snapshot,
                [n.encode() for n in full_names],
                {k.encode(): v.encode() for k, v in props.items()},
            )
            faults.point("snapshot-volume")
            return
        options = [a for k, v in props.items() for a in ("-o", f"{k}={v}")]
        parents = {n.rpartition("/")[0] for n in full_names}
        name = full_names[0].partition("@")[2]
        if len(full_names) > 1 and len(parents) == 1:
            parent = parents.pop()
            children = set(_children(parent))
            if children == {n.partition("@")[0] for n in full_names}:
                # The old CLI takes one snapshot name, but -r snapshots a
                # dataset and all its descendants in one txg: the workspace
                # dataset's volumes are exactly those descendants.
                run(["zfs", "snapshot", "-r", *options, f"{parent}@{name}"])
                run(["zfs", "destroy", f"{parent}@{name}"])
                faults.point("snapshot-volume")  # all at once: a kill here leaves the whole set
                return
        made: list[str] = []
        try:  # a subset of the volumes: one at a time, undone on failure
            for full in full_names:
                run(["zfs", "snapshot", *options, full])
                made.append(full)
                faults.point("snapshot-volume")
        except BaseException:
            self._destroy_snapshots(made)
            raise

    def _destroy_snapshots(self, full_names: list[str]) -> None:
        if not full_names:
            return
        if self._lzc:
            self._lzc_call(self._lzc.lzc_destroy_snaps, [n.encode() for n in full_names], False)
            return
        for full in full_names:
            run(["zfs", "destroy", full])

    def _lzc_call(self, fn, *args):
        try:
            return fn(*args)
        except self._lzc.exceptions.ZFSError as e:
            detail = "; ".join(str(x) for x in getattr(e, "errors", []) or []) or str(e)
            error = CommandFailed
            if getattr(e, "errno", None) == 28:  # ENOSPC
                detail, error = FULL, FullCommandFailed
            raise error(f"libzfs_core {fn.__name__} failed: {detail}") from None

    def _project_props(self, project: str, extra: list[str] = []) -> dict[str, dict[str, str]]:
        """Every dataset and snapshot of the project with the properties _rows needs (and
        extra), in one `zfs get`; empty for a project the lake does not have yet."""
        return _get(f"{self._lake}/{project}", ["type", "creation", "createtxg", RECEIVED, *extra],
                    recursive=True, missing_ok=True)

    def _rows(self, project: str, volume: str | None,
              props: dict[str, dict[str, str]] | None = None) -> list[Snapshot]:
        """Snapshots of the project's live and history datasets, oldest first, without paths."""
        props = self._project_props(project) if props is None else props
        found = []
        for full, p in props.items():
            dataset, _, name = full.partition("@")
            if p["type"] != "snapshot" or not is_snapshot_name(name):
                continue
            vol = self._volume_of(project, dataset)
            if vol is None or (volume and vol != volume):
                continue
            created = _created(p)
            found.append(Snapshot(project, vol, name, Path(full), created, name, int(p["createtxg"])))
        return found

    def _locate(self, project: str, volume: str, name: str) -> str | None:
        """The full ZFS name of a snapshot now (promote and checkout move them)."""
        for row in self._rows(project, volume):
            if row.name == name:
                return str(row.path)
        return None

    def _row(self, project: str, volume: str, full: str) -> Snapshot:
        """The snapshot without a readable path (`path` holds its ZFS name), as _rows gives."""
        p = _get(full, ["creation", "createtxg", RECEIVED])[full]
        name = full.partition("@")[2]
        return Snapshot(project, volume, name, Path(full), _created(p), name, int(p["createtxg"]))

    def _snapshot(self, project: str, volume: str, full: str) -> Snapshot:
        return self._with_path(self._row(project, volume, full))

    def _with_path(self, row: Snapshot) -> Snapshot:
        """Snapshot with `path` where its files can be read (row.path holds the ZFS name)."""
        full = str(row.path)
        if self._snapdir:
            dataset = full.partition("@")[0]
            path = Path(_get(dataset, ["mountpoint"])[dataset]["mountpoint"]) / ".zfs" / "snapshot" / row.name
        else:
            path = self._ensure_view(row, full)
        return Snapshot(row.project, row.volume, row.name, path, row.created, row.mark, row.seq)

    def _ensure_view(self, row: Snapshot, full: str) -> Path:
        # A read-only clone: O(1) to make, mounted by ZFS itself, and destroy()
        # removes it before the snapshot it depends on.
        view = self._view(row)
        if not _exists(view):
            run(["zfs", "create", "-p", f"{self._lake}/{row.project}/snapshots/{row.volume}"])
            try:
                run(["zfs", "clone", "-o", "readonly=on", "-o", "atime=off", full, view])
            except CommandFailed:
                if not _exists(view):  # else another process made it first
                    raise
        props = _get(view, ["mountpoint", "mounted"])[view]
        if props["mounted"] != "yes":
            # A checkout killed while its views stepped aside for a rename (zfs-fuse): an
            # unmounted view would show an empty directory where the snapshot's files are.
            subprocess.run(["zfs", "mount", view], capture_output=True)
        return Path(props["mountpoint"])

    def snapshots(self, project: str | None = None, volume: str | None = None,
                  readable: bool = True) -> list[Snapshot]:
        if project:
            projects = [check_project(project)]
        else:
            prefix = f"{self._lake}/"
            projects = [c[len(prefix):] for c in _children(self._lake)]
        rows = [r for p in projects for r in self._rows(p, volume)]
        return [self._with_path(r) for r in rows] if readable else rows

    def identities(self, project: str) -> dict[tuple[str, str], str]:
        top = f"{self._lake}/{check_project(project)}"
        found = {}
        for full, p in _get(top, ["type", "guid"], recursive=True, missing_ok=True).items():
            dataset, _, name = full.partition("@")
            volume = self._volume_of(project, dataset) if p["type"] == "snapshot" else None
            if volume and is_snapshot_name(name):
                found[(volume, name)] = p["guid"]
        return found

    def find(self, project: str, volume: str, name: str) -> Snapshot | None:
        for row in self._rows(check_project(project), check_volume(volume)):
            if row.name == name:
                return self._with_path(row)
        return None

    def _full(self, snap: Snapshot) -> str:
        full = self._locate(snap.project, snap.volume, snap.name)
        if full is None:
            raise NotFound(f"snapshot {snap.name} of volume {snap.volume} does not exist")
        return full

    def destroy(self, snap: Snapshot) -> None:
        full = self._full(snap)
        dataset = full.partition("@")[0]
        what = f"snapshot {snap.name} of volume {snap.volume}"
        if int(_get(full, ["userrefs"])[full]["userrefs"]) > 0:
            raise InUse(f"{what} is held by a release: release it before destroying it")
        project_props = _get(f"{self._lake}/{snap.project}", ["origin"], recursive=True)
        views_root = f"{self._lake}/{snap.project}/snapshots/"
        clones = [d for d, p in project_props.items() if p.get("origin") == full]
        views = [c for c in clones if c.startswith(views_root)]
        others = [c for c in clones if not c.startswith(views_root)]
        history = self._is_history(snap.project, dataset)
        promote = None
        if others:
            # A clone needs its origin snapshot. The one way to free it: the
            # history dataset holding it has nothing after it, so the single
            # clone can be promoted (taking this and all older snapshots with
            # it) and the history dataset, now holding no snapshot, dropped.
            later = self._own_snapshots(dataset, after=snap.name)
            if len(others) > 1 or not history or later:
                users = ", ".join(self._describe(snap.project, c) for c in others)
                raise InUse(f"{what} cannot be destroyed: {users} is a clone of it")
            promote = others[0]
        for view in views:
            _destroy(view)
        if promote:
            run(["zfs", "promote", promote])
            _destroy(dataset, recursive=True)  # only probes could be left under it
            full = f"{promote}@{snap.name}"
        run(["zfs", "destroy", full])
        if history and not promote and not self._own_snapshots(dataset):
            _destroy(dataset, recursive=True)  # a history dataset kept for nothing now

    def rename(self, snap: Snapshot, name: str) -> Snapshot:
        parsed = parse_snapshot_name(name)
        if parsed is None:
            raise SnapverError(f"{name!r} is not a snapver snapshot name")
        full = self._full(snap)
        if self._locate(snap.project, snap.volume, name):
            raise SnapverError(f"cannot rename {snap.volume}@{snap.name}: {name} exists already")
        view = self._view(snap)
        if _exists(view):  # named after the old name; made again on demand
            _destroy(view)
        new = f"{full.partition('@')[0]}@{name}"
        run(["zfs", "rename", full, new])
        run(["zfs", "set", f"snapver:commit={parsed[0]}", new])
        run(["zfs", "set", f"snapver:kind={parsed[1]}", new])
        return self._snapshot(snap.project, snap.volume, new)

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
        if self._locate(snap.project, snap.volume, name):
            raise SnapverError(f"snapshot {name} of volume {snap.volume} already exists")
        full = self._full(snap)
        copy = f"{self._lake}/{snap.project}/history/{COPIES}/{check_volume(snap.volume)}.{name}"
        if _exists(copy):
            _destroy(copy, recursive=True)  # a copy a crash cut off before its snapshot
        run(["zfs", "clone", "-p", "-o", "readonly=on", "-o", "atime=off", full, copy])
        props = {"snapver:kind": parsed[1], "snapver:commit": parsed[0]}
        try:
            self._snapshot_all([f"{copy}@{name}"], props)
        except BaseException:
            _destroy(copy, recursive=True)
            raise
        return self._row(snap.project, snap.volume, f"{copy}@{name}")  # no view mounted for it yet

    def _describe(self, project: str, dataset: str) -> str:
        rest = dataset[len(f"{self._lake}/{project}/"):].split("/")
        if rest[0] == "workspaces" and len(rest) == 3:
            return f"the live volume {rest[2]} of workspace {rest[1]}"
        if rest[0] == "history" and len(rest) == 3 and rest[1] == COPIES:
            return f"the snapshot {rest[2].partition('.')[2]} (a rewritten commit's copy)"
        return f"the dataset {dataset} (older history)"

    def _is_history(self, project: str, dataset: str) -> bool:
        return dataset.startswith(f"{self._lake}/{project}/history/")

    def _own_snapshots(self, dataset: str, after: str | None = None) -> list[str]:
        """Snapshot names of one dataset in creation order (probes left out)."""
        out = run(["zfs", "list", "-H", "-o", "name", "-t", "snapshot", "-r", "-d", "1", dataset])
        names = [l.partition("@")[2] for l in out.splitlines() if l.startswith(dataset + "@")]
        names = [n for n in names if not n.startswith(PROBE)]
        return names[names.index(after) + 1:] if after in names else names

    def clone_into_place(self, snap: Snapshot, workspace: str) -> str:
        """The live volume becomes a clone of snap, by two renames.

        ZFS has no exchange, so: clone to incoming, rename live away, rename
        incoming into place. A crash between the renames leaves no live and a
        complete incoming, which the next checkout (or doctor) renames in.
        The old live is destroyed only when it has no snapshots; otherwise it
        moves to history, read-only, where its snapshots stay findable.
        `zfs rollback` is never used: it is only safe when the target is the
        newest snapshot and nothing changed since, and then it is a no-op.
        """
        project, volume = snap.project, snap.volume
        live = self._live(project, workspace, volume)
        incoming = f"{self._lake}/{project}/incoming/{workspace}/{volume}"
        full = self._full(snap)
        self._finish_interrupted(live, incoming)
        if (
            full.partition("@")[0] == live
            and self._own_snapshots(live)[-1:] == [snap.name]
            and not self.changed_since(project, workspace, volume, snap.name)
        ):
            return snap.name
        # Not mounted until it is in place: zfs-fuse will not rename the old
        # live dataset while a clone of one of its snapshots is mounted.
        if self._lzc:
            run(["zfs", "create", "-p", incoming.rpartition("/")[0]])
            # libzfs_core hands properties to the kernel as they are: an on/off property
            # is a number there (the zfs command converts "off" for us, lzc does not).
            self._lzc_call(self._lzc.lzc_clone, incoming.encode(), full.encode(),
                           {b"atime": 0, b"mountpoint": b"none"})
        else:
            run(["zfs", "clone", "-p", "-o", "atime=off", "-o", "mountpoint=none", full, incoming])
        faults.point("checkout-cloned")
        old = keep = None
        try:
            if _exists(live):
                keep = any(not n.startswith(PROBE) for n in self._own_snapshots(live))
                stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
                history = f"{self._lake}/{project}/history/{workspace}/{volume}.{stamp}"
                old = history if keep else f"{incoming}.old"
                # zfs-fuse will not rename a dataset while a clone of one of
                # its snapshots is mounted: our views step aside meanwhile.
                views = self._views_of(project, live)
                for view in views:
                    run(["zfs", "unmount", view])
                try:
                    _rename(live, old)
                    faults.point("checkout-swapped")  # the worst moment: no live volume
                finally:
                    for view in views:
                        run(["zfs", "mount", view])
            _rename(incoming, live)
        except BaseException:
            if old and not _exists(live):
                _rename(old, live)
            if _exists(incoming):
                _destroy(incoming)
            raise
        run(["zfs", "inherit", "mountpoint", live])
        if _get(live, ["mounted"])[live]["mounted"] != "yes":
            run(["zfs", "mount", live])
        if keep:
            run(["zfs", "set", "readonly=on", old])
        elif old:
            _destroy(old, recursive=True)  # no snapshots but leftover probes
        faults.point("checkout-placed")
        return snap.name

    def _views_of(self, project: str, dataset: str, props: dict[str, dict[str, str]] | None = None) -> list[str]:
        """The mounted views of dataset's snapshots; props: `origin` and `mounted` of the
        project's datasets, if the caller has them already."""
        views = f"{self._lake}/{project}/snapshots/"
        if props is None and not self._snapdir:
            props = _get(views.rstrip("/"), ["origin", "mounted"], recursive=True, missing_ok=True)
        return [] if self._snapdir else [
            v for v, p in props.items() if v.startswith(views)
            and p.get("origin", "").partition("@")[0] == dataset and p.get("mounted") == "yes"]

    def _finish_interrupted(self, live: str, incoming: str) -> None:
        if _exists(incoming):
            if _exists(live):
                _destroy(incoming)  # the swap never started
            else:
                _rename(incoming, live)  # it stopped halfway: finish
                run(["zfs", "inherit", "mountpoint", live])
                if _get(live, ["mounted"])[live]["mounted"] != "yes":
                    run(["zfs", "mount", live])
        old = f"{incoming}.old"
        if _exists(old) and not self._own_snapshots(old):
            _destroy(old, recursive=True)

    def tidy(self, project: str, workspace: str, volumes: list[str], repair: bool = False) -> list[str]:
        found = []
        top = f"{self._lake}/{project}"
        left = set(_get(f"{top}/incoming/{workspace}", ["type"], recursive=True, missing_ok=True))
        for volume in volumes:
            live = self._live(project, workspace, volume)
            incoming = f"{top}/incoming/{workspace}/{volume}"
            here = incoming in left
            old = f"{incoming}.old" in left
            if here and not _exists(live):
                found.append(f"{volume}: no live volume; the clone of an interrupted checkout waits at {incoming}")
            elif here:
                found.append(f"{volume}: the clone of an interrupted checkout is left at {incoming}")
            if old:
                found.append(f"{volume}: the volume an interrupted checkout replaced is left at {incoming}.old")
            if repair and (here or old):
                self._finish_interrupted(live, incoming)
        # zfs-fuse: snapshot views unmounted for a rename that was killed before it mounted them again.
        views = f"{top}/snapshots"
        if not self._snapdir and _exists(views):
            props = _get(views, ["origin", "mounted"], recursive=True)
            down = [v for v, p in props.items() if p.get("origin", "-") != "-" and p.get("mounted") != "yes"]
            if down:
                found.append(f"{len(down)} snapshot view(s) left unmounted")
                for view in down if repair else []:
                    run(["zfs", "mount", view])
        return found

    def live_origin(self, project: str, workspace: str, volume: str) -> tuple[str, str] | None:
        live = self._live(project, workspace, volume)
        props = _get(live, ["origin"], missing_ok=True).get(live)
        name = props["origin"].partition("@")[2] if props else ""
        return (name, name) if is_snapshot_name(name) else None

    def space(self, snap: Snapshot) -> Space:
        full = self._full(snap)
        props = _get(full, ["used", "referenced"])[full]
        return Space(referenced=int(props["referenced"]), exclusive=int(props["used"]))

    def hold(self, snap: Snapshot, tag: str) -> None:
        # A user hold makes ZFS itself refuse `zfs destroy` (and destroy() above
        # checks userrefs first, to say why).
        run(["zfs", "hold", tag, self._full(snap)])

    def unhold(self, snap: Snapshot, tag: str) -> None:
        full = self._full(snap)
        if int(_get(full, ["userrefs"])[full]["userrefs"]) == 0:
            return  # zfs-fuse's `zfs holds` is broken, so userrefs says whether to try
        try:
            run(["zfs", "release", tag, full])
        except CommandFailed as e:
            if "no such tag" not in str(e):
                raise

    def clone_volume(self, snap: Snapshot, workspace: str, volume: str) -> Path:
        live = self._live(snap.project, workspace, volume)
        if _exists(live):
            raise SnapverError(f"volume {volume} of workspace {workspace} exists already")
        run(["zfs", "clone", "-p", "-o", "atime=off", self._full(snap), live])
        if _get(live, ["mounted"])[live]["mounted"] != "yes":
            run(["zfs", "mount", live])
        return self.volume_path(snap.project, workspace, volume)

    def live_space(self, project: str, workspace: str, volume: str) -> Space:
        live = self._live(project, workspace, volume)
        props = _get(live, ["referenced", "usedbydataset"])[live]
        # usedbydataset: the blocks only the live state holds (not its snapshots',
        # not its origin's), the counterpart of a snapshot's `used`.
        return Space(referenced=int(props["referenced"]), exclusive=int(props["usedbydataset"]))

    def footprint(self, project: str) -> Footprint:
        top = f"{self._lake}/{check_project(project)}"
        props = _get(top, ["type", "used", "referenced"], recursive=True)
        views = f"{top}/snapshots/"

        def counted(name: str, p: dict) -> bool:
            # Snapshots and live/history volumes; views (zfs-fuse's read-only
            # clones) would count their snapshot twice, probes are transient.
            if name.startswith(views) or PROBE in name:
                return False
            dataset = name.partition("@")[0]
            return self._volume_of(project, dataset) is not None and (
                p["type"] == "snapshot" or dataset.startswith(f"{top}/workspaces/"))

        full = sum(int(p["referenced"]) for d, p in props.items() if counted(d, p))
        return Footprint(full_copies=full, on_disk=int(props[top]["used"]))

    # push and pull: zfs send / receive. Received snapshots live in history
    # datasets of their own, L/<project>/history/_recv/<volume>.<first name>:
    # a stream is received on top of its base only where the base is the
    # newest snapshot of such a dataset (never into a live volume), and a
    # clone stream (from a clone's origin) becomes a new clone of it.
    def identity(self, snap: Snapshot) -> str:
        full = self._full(snap)
        return _get(full, ["guid"])[full]["guid"]

    def _received(self, project: str) -> str:
        return f"{self._lake}/{check_project(project)}/history/_recv"

    def send_bases(self, snap: Snapshot) -> list[tuple[Snapshot, bool]]:
        full = self._full(snap)
        dataset = full.partition("@")[0]
        rows = {(r.name): r for r in self._rows(snap.project, snap.volume)}
        own = self._own_snapshots(dataset)
        earlier = own[:own.index(snap.name)] if snap.name in own else []
        bases = [(rows[n], False) for n in reversed(earlier) if n in rows]
        origin = _get(dataset, ["origin"])[dataset]["origin"].partition("@")[2]
        if origin in rows:
            bases.append((rows[origin], True))
        return bases

    def appendable(self, project: str) -> set[tuple[str, str]]:
        newest = self._received_chains(project, self._project_props(project))
        return {(d.rpartition("/")[2].split(".")[0], n) for d, n in newest.items()}

    def _received_chains(self, project: str, props: dict[str, dict[str, str]]) -> dict[str, str]:
        """Each received chain (a dataset in history/_recv) -> the name of its newest snapshot,
        the only one a plain incremental stream may be appended to; from _project_props."""
        top = self._received(project) + "/"
        snaps = sorted((int(p["createtxg"]), full) for full, p in props.items()
                       if p["type"] == "snapshot" and full.startswith(top))
        newest: dict[str, str] = {}
        for _, full in snaps:
            dataset, _, name = full.partition("@")
            if is_snapshot_name(name):
                newest[dataset] = name
        return newest

    def send_argv(self, snap: Snapshot, base: Snapshot | None) -> list[str]:
        return ["zfs", "send", *(["-i", self._full(base)] if base else []), self._full(snap)]

    def estimate(self, snap: Snapshot, base: Snapshot | None) -> int | None:
        argv = self.send_argv(snap, base)
        done = subprocess.run([*argv[:2], "-nP", *argv[2:]], capture_output=True, text=True)
        for line in done.stdout.splitlines() if done.returncode == 0 else []:
            if line.startswith("size"):
                return int(line.split()[-1])
        return None  # zfs-fuse has no dry run

    def stream_complete(self, tail: bytes) -> bool:
        # The receiving zfs holds its own stdin open (see base.Receive), so it needs the
        # END record to stop; a stream without one was cut short.
        if len(tail) < _RECORD:
            return False
        kind = tail[-_RECORD:][:4]
        return kind in (struct.pack("<I", _DRR_END), struct.pack(">I", _DRR_END))

    def _can_resume(self) -> bool:
        # OpenZFS 0.7 and later (`receive -s`); zfs-fuse does not know the property.
        if not hasattr(self, "_resume"):
            self._resume = subprocess.run(["zfs", "get", "-H", "receive_resume_token", self._lake],
                                          capture_output=True).returncode == 0
        return self._resume

    def resumable(self) -> dict[tuple[str, str], str] | None:
        if not self._can_resume():
            return None
        found = {}
        for project in (c.rpartition("/")[2] for c in _children(self._lake)):
            found.update({key: token for key, (_, token) in self._partials(project).items()})
        return found

    def _partials(self, project: str) -> dict[tuple[str, str], tuple[str, str]]:
        """(volume, name) -> (dataset, token) of every receive that stopped half-way: a
        whole stream leaves it in its new dataset, an appended one in the dataset it was
        appended to, which says which snapshot it was (snapver:receiving)."""
        top = self._received(project)
        if not _exists(top):
            return {}
        found = {}
        for dataset, p in _get(top, ["receive_resume_token", "snapver:receiving"], recursive=True).items():
            token = p.get("receive_resume_token", "-")
            if token != "-" and dataset != top:
                volume, _, name = dataset.rpartition("/")[2].partition(".")
                receiving = p.get("snapver:receiving", "-")
                found[(volume, receiving if receiving != "-" else name)] = (dataset, token)
        return found

    def resume_argv(self, token: str) -> list[str]:
        if not re.fullmatch(r"[0-9a-zA-Z-]+", token):
            raise SnapverError("that is not a ZFS receive resume token")
        return ["zfs", "send", "-t", token]

    def receive(self, project: str, volume: str, name: str, base: str | None, clone: bool,
                resuming: bool = False) -> Receive:
        check_volume(volume)
        if not is_snapshot_name(name) or (base and not is_snapshot_name(base)):
            raise SnapverError(f"{name!r} is not a snapver snapshot name")
        # Every zfs command counts here: on zfs-fuse each is tens of milliseconds, and a push
        # of one commit is a receive per volume (bench/transfer.py).
        props = self._project_props(project, ["origin", "mounted"])
        held = {r.name: str(r.path) for r in self._rows(project, volume, props)}
        if name in held:
            raise SnapverError(f"snapshot {name} of volume {volume} exists already")
        top = self._received(project)
        resume = self._can_resume()
        if resuming:
            partial = self._partials(project).get((volume, name)) if resume else None
            if partial is None:
                raise SnapverError(f"there is no half-received {volume}@{name} here to resume")
            # A resumed stream goes where the cut one left its state, whatever its base.
            target = partial[0]
            new = target.rpartition("/")[2] == f"{volume}.{name}"
            views = [] if new else self._views_of(project, target, props)
            for view in views:
                run(["zfs", "unmount", view])
        elif base and not clone:
            target = held.get(base, "").partition("@")[0]
            if self._received_chains(project, props).get(target) != base:
                raise SnapverError(f"{volume}@{name} cannot be received on top of {base} here; "
                                   "send it whole")
            new = False
            if resume:
                # A half-received stream that is not being resumed (its sender moved on)
                # would block this one; it was never a snapshot, so it is let go.
                if _get(target, ["receive_resume_token"])[target]["receive_resume_token"] != "-":
                    run(["zfs", "receive", "-A", target])
                # The partial state sits in the target: say which snapshot it is.
                run(["zfs", "set", f"snapver:receiving={name}", target])
            # zfs-fuse will not receive into a dataset while a clone of one of its
            # snapshots is mounted: our views step aside meanwhile.
            views = self._views_of(project, target, props)
            for view in views:
                run(["zfs", "unmount", view])
        else:
            target, new, views = f"{top}/{volume}.{name}", True, []
            run(["zfs", "create", "-p", top])
            if _exists(target) and not self._own_snapshots(target):
                _destroy(target, recursive=True)  # a half-received stream nobody resumes

        def done() -> Snapshot:
            full = f"{target}@{name}"
            try:
                row = self._row(project, volume, full)  # no view yet: made when it is first read
            except CommandFailed:
                raise CommandFailed(f"zfs receive of {volume}@{name} ended without the snapshot") from None
            self._seal(full, dataset=new)
            return row._replace(created=datetime.fromtimestamp(int(self._arrived), timezone.utc))

        def undo() -> None:
            if resume and _get(target, ["receive_resume_token"], missing_ok=True).get(
                    target, {}).get("receive_resume_token", "-") != "-":
                return  # kept: the next push or pull of it resumes from here
            if new and _exists(target) and not self._own_snapshots(target):
                _destroy(target, recursive=True)

        def remount() -> None:
            for view in views:
                subprocess.run(["zfs", "mount", view], capture_output=True)

        return Receive(["zfs", "receive", *(["-s"] if resume else []), target], done, undo, remount)

    def _seal(self, full: str, dataset: bool = True) -> None:
        """What makes a received snapshot one of ours: its snapver properties (reindex reads
        them), and (dataset) a received dataset nobody writes to. Idempotent."""
        commit, kind = parse_snapshot_name(full.partition("@")[2])[:2]
        run(["zfs", "set", f"snapver:commit={commit}", full])  # one each: zfs-fuse sets one per call
        run(["zfs", "set", f"snapver:kind={kind}", full])
        # Its age on this lake counts from its arrival here, not from the sender's creation
        # time (which zfs receive keeps): gc and `log` read this (_created).
        self._arrived = int(time.time())
        run(["zfs", "set", f"{RECEIVED}={self._arrived}", full])
        if dataset:
            run(["zfs", "set", "readonly=on", full.partition("@")[0]])

    def seal_received(self, project: str, volume: str, name: str) -> None:
        full = self._locate(project, volume, name)
        if full and full.startswith(self._received(project) + "/"):
            self._seal(full)

    def half_received(self, project: str, volumes: list[str], repair: bool = False) -> list[str]:
        top = self._received(project)
        if not _exists(top):
            return []
        wanted = ["type", "snapver:kind", *(["receive_resume_token"] if self._can_resume() else [])]
        props = _get(top, wanted, recursive=True)
        found = []
        for dataset, p in props.items():
            volume, _, name = dataset.rpartition("/")[2].partition(".")
            if p["type"] != "filesystem" or dataset == top or volume not in volumes:
                continue
            snaps = [s for s in props if s.startswith(dataset + "@")]
            unsealed = [s for s in snaps if is_snapshot_name(s.partition("@")[2])
                        and props[s].get("snapver:kind", "-") == "-"]
            if p.get("receive_resume_token", "-") != "-":
                found.append(f"{volume}: a half-received snapshot is in {dataset} (the next push or pull of it "
                             "resumes it; a repair discards it)")
                if repair and snaps:  # appended to a received chain: only the partial state goes
                    run(["zfs", "receive", "-A", dataset])
                elif repair:
                    _destroy(dataset, recursive=True)
            elif not snaps:
                found.append(f"{volume}: half-received snapshot {name} is left at {dataset}")
                if repair:
                    _destroy(dataset, recursive=True)
            elif unsealed:  # (not readonly: zfs-fuse reports it off whatever was set)
                found.append(f"{volume}: received snapshot(s) in {dataset} lack their snapver properties")
                for full in unsealed if repair else []:
                    self._seal(full)
        return found

    # diff: base.walk_diff over the two snapshots' paths. `zfs diff` would be
    # O(changes), but zfs-fuse lacks it, and diff() gets paths, not snapshots.

    # -- the lake itself (Backend's class methods)
    @classmethod
    def provision_image(cls, image: Path, size: int | None) -> str:
        return provision_pool(image, size, pool_name(image))

    @classmethod
    def ensure_mounted(cls, spec: str, image: Path) -> None:
        provision_pool(image, None, pool_name(image))  # imports the pool if it is not

    @classmethod
    def at_path(cls, path: Path) -> ZfsBackend | None:
        dataset = dataset_mounted_at(path)
        return cls(dataset) if dataset else None

    @classmethod
    def named(cls, spec: str) -> ZfsBackend | None:
        dataset = spec.strip("/")
        try:
            there = subprocess.run(["zfs", "list", "-H", "-o", "name", "--", dataset.split("/")[0]],
                                   capture_output=True).returncode == 0
        except FileNotFoundError:
            return None  # no ZFS on this host
        return cls(dataset) if there else None

    def describe(self) -> str:
        return f"the ZFS dataset {self.spec()}"


RECEIVED = "snapver:received"  # on a received snapshot: when it arrived on this lake (Unix seconds)


def _created(p: dict[str, str]) -> datetime:
    """A snapshot's time on this lake: its arrival where it was received, else its creation."""
    arrived = p.get(RECEIVED, "-")
    return datetime.fromtimestamp(int(arrived if arrived.isdigit() else p["creation"]), timezone.utc)


def _get(target: str, props: list[str], *, recursive: bool = False,
         missing_ok: bool = False) -> dict[str, dict[str, str]]:
    """{dataset: {property: value}} from `zfs get -Hp` (zfs-fuse has no `zfs list -p`)."""
    argv = ["zfs", "get", "-H", "-p", "-o", "name,property,value"]
    argv += ["-r"] if recursive else []
    try:
        out = run([*argv, ",".join(props), target])
    except CommandFailed:
        if missing_ok:
            return {}
        raise
    result: dict[str, dict[str, str]] = {}
    for line in out.splitlines():
        name, prop, value = line.split("\t", 2)
        result.setdefault(name, {})[prop] = value
    return result


def _unmounted(argv: list[str], dataset: str) -> str:
    """Rename or destroy a filesystem that may be mounted.

    zfs-fuse unmounts inside `zfs rename`/`zfs destroy` but lets go of the
    dataset a moment after the FUSE unmount returns, so the operation fails
    "dataset is busy" (measured: most of the time). Unmounting first and
    retrying for about 6 s makes it reliable; a dataset that stays busy
    (a shell inside it) still fails with ZFS's words.
    """
    subprocess.run(["zfs", "unmount", dataset], capture_output=True)  # not mounted: fine
    for delay in (0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, None):
        try:
            return run(argv)
        except CommandFailed as e:
            if "busy" not in str(e) or delay is None:
                raise
            time.sleep(delay)
    raise AssertionError("unreachable")


def _rename(old: str, new: str) -> None:
    _unmounted(["zfs", "rename", "-p", old, new], old)
    props = _get(new, ["mounted", "mountpoint"])[new]
    if props["mounted"] != "yes" and props["mountpoint"] != "none":
        run(["zfs", "mount", new])


def _destroy(dataset: str, recursive: bool = False) -> None:
    _unmounted(["zfs", "destroy", *(["-r"] if recursive else []), dataset], dataset)


def dataset_mounted_at(path: Path) -> str | None:
    """The ZFS filesystem mounted at path, if any (for lakes named by a path)."""
    try:
        out = run(["zfs", "list", "-H", "-o", "name,mountpoint", "-t", "filesystem"])
    except CommandFailed:
        return None  # no ZFS here
    want = str(Path(path).resolve())
    return next((n for n, _, m in (l.partition("\t") for l in out.splitlines()) if m == want), None)


def _exists(dataset: str) -> bool:
    return subprocess.run(["zfs", "list", "-H", "-o", "name", dataset],
                          capture_output=True).returncode == 0


def _children(dataset: str) -> list[str]:
    out = run(["zfs", "list", "-H", "-o", "name", "-t", "filesystem", "-r", "-d", "1", dataset])
    return [l for l in out.splitlines() if l != dataset]


def _same_blocks(base: str, probe: str) -> bool:
    """Whether the incremental stream base -> probe is empty (BEGIN then END)."""
    proc = subprocess.Popen(["zfs", "send", "-i", base, probe],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        head = proc.stdout.read(2 * _RECORD + 1)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    if len(head) != 2 * _RECORD:
        return False
    types = struct.unpack_from("<I", head, 0)[0], struct.unpack_from("<I", head, _RECORD)[0]
    return types == (_DRR_BEGIN, _DRR_END)


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
    return subprocess.run(["zpool", "list", "-H", "-o", "name", pool],
                          capture_output=True).returncode == 0


def pool_name(image: Path) -> str:
    """lake.img holds the ZFS pool `lake`."""
    return "".join(c if c.isalnum() or c in "_-" else "_" for c in image.stem) or "snapver"
