"""The zfs commands of one lake, and what they read of it: a node, datasets, snapshots.

The shape of zfs_autobackup's ZfsNode/ZfsDataset: the node runs every zfs command (through
proc.run, snapver's one way to run a tool, argv lists only), and a project's datasets and
snapshots are read with ONE `zfs get -r` into a View whose objects carry their properties.
A checkout, a promote or a receive moves snapshots between datasets, so a snapshot is found
by looking in the whole project; the View makes that a dict lookup instead of a listing.

A View is read again for every Backend verb, except inside ZfsNode.steady(), where the node
keeps it until the node itself changes the project: every command that changes a project
drops its View (changed()); a hold or release updates the one property it changed, and
changed_since's probe (made and destroyed within the call) leaves it as it was. steady() is
for one look at the lake: a push or the far end's listing, a read over every volume
(resolve, status), and the steps of one operation with the workspace lock held (a
snapshot's finds and its own check, the checks before a checkout keeps changes, a release's
holds): on zfs-fuse each `zfs get -r` costs ~2.5 ms of its CPU per dataset and snapshot,
and a checkout read the project 12 times before. Never across waiting for a lock: other
processes (hooks of other workspaces, the daemon) change the lake meanwhile.
"""

from __future__ import annotations

from contextlib import contextmanager
from datetime import datetime, timezone

from ..errors import CommandFailed
from ..names import is_snapshot_name
from ..proc import ask, run

RECEIVED = "snapver:received"  # on a received snapshot: when it arrived on this lake (Unix seconds)
PROBE = "snapver-probe"  # temporary snapshots changed_since takes and drops
COPIES = "_copies"  # history/_copies: the datasets copy_snapshot makes (no workspace id starts with _)
RECV = "_recv"  # history/_recv: the datasets received streams land in

# What a View reads of every dataset and snapshot of a project, in its one `zfs get -r`.
VIEW_PROPS = ["type", "creation", "createtxg", "guid", "origin", "mounted", "mountpoint", "userrefs",
              RECEIVED, "snapver:kind"]
RESUME_PROPS = ["receive_resume_token", "snapver:receiving"]  # where the pool has `receive -s`


class ZSnap:
    """One ZFS snapshot as the View read it."""

    __slots__ = ("full", "dataset", "name", "props")

    def __init__(self, full: str, props: dict[str, str]):
        self.full = full
        self.dataset, _, self.name = full.partition("@")
        self.props = props

    @property
    def txg(self) -> int:
        return int(self.props.get("createtxg", "0"))

    @property
    def guid(self) -> str:
        return self.props["guid"]

    @property
    def refs(self) -> int:
        """Its user holds (0 where the property reads as anything but a number)."""
        refs = self.props.get("userrefs", "0")
        return int(refs) if refs.isdigit() else 0

    @property
    def held(self) -> bool:
        return self.refs > 0

    @property
    def created(self) -> datetime:
        """Its time on this lake: its arrival where it was received, else its creation."""
        arrived = self.props.get(RECEIVED, "-")
        return datetime.fromtimestamp(int(arrived if arrived.isdigit() else self.props["creation"]), timezone.utc)


class Dataset:
    """One ZFS filesystem as the View read it, with its own snapshots oldest first."""

    __slots__ = ("name", "props", "snapshots")

    def __init__(self, name: str, props: dict[str, str]):
        self.name, self.props = name, props
        self.snapshots: list[ZSnap] = []

    @property
    def origin(self) -> str:
        """The full name of the snapshot it was cloned from, '' if none."""
        origin = self.props.get("origin", "-")
        return "" if origin == "-" else origin

    @property
    def mounted(self) -> bool:
        return self.props.get("mounted") == "yes"

    @property
    def mountpoint(self) -> str:
        return self.props.get("mountpoint", "")

    def own(self, after: str | None = None) -> list[str]:
        """Its snapshots' names in creation order, probes left out; after: only those after it."""
        names = [s.name for s in self.snapshots if not s.name.startswith(PROBE)]
        return names[names.index(after) + 1:] if after in names else names


class View:
    """Every dataset and snapshot of one project, from one `zfs get -r`."""

    def __init__(self, top: str, props: dict[str, dict[str, str]]):
        self.top = top
        self.resume = False  # whether it read RESUME_PROPS
        self.datasets: dict[str, Dataset] = {}
        self.snaps: dict[str, ZSnap] = {}
        for name, p in props.items():
            if "@" in name:
                self.snaps[name] = ZSnap(name, p)
            else:
                self.datasets[name] = Dataset(name, p)
        # Creation order within a dataset (the listing's own order breaks ties).
        for snap in sorted(self.snaps.values(), key=lambda s: s.txg):
            ds = self.datasets.get(snap.dataset)
            if ds is not None:
                ds.snapshots.append(snap)

    def dataset(self, name: str) -> Dataset | None:
        return self.datasets.get(name)

    def volume_of(self, dataset: str) -> str | None:
        """The volume a live or history dataset holds, None for anything else (views, incoming)."""
        rest = dataset[len(self.top) + 1:].split("/") if dataset.startswith(self.top + "/") else []
        if len(rest) == 3 and rest[0] == "workspaces":
            return rest[2]
        if len(rest) == 3 and rest[0] == "history":
            return rest[2].split(".")[0]
        return None

    def versions(self, volume: str | None = None) -> list[tuple[str, ZSnap]]:
        """(volume, snapshot) of every snapver snapshot of the project's volumes, oldest first."""
        found = []
        for snap in sorted(self.snaps.values(), key=lambda s: s.txg):
            if not is_snapshot_name(snap.name):
                continue
            vol = self.volume_of(snap.dataset)
            if vol is not None and (volume is None or vol == volume):
                found.append((vol, snap))
        return found

    def find(self, volume: str, name: str) -> ZSnap | None:
        """Where snapshot `name` of volume is now (promote and checkout move them)."""
        return next((s for v, s in self.versions(volume) if s.name == name), None)

    def clones_of(self, full: str) -> list[str]:
        return [d.name for d in self.datasets.values() if d.origin == full]


class ZfsNode:
    """Runs the zfs commands of one lake and keeps what it read (see the module's docstring)."""

    def __init__(self, lake: str):
        self.lake = lake
        self._views: dict[str, View] = {}
        self._steady = 0
        self.can_resume: bool | None = None  # see resumes()

    # ------------------------------------------------------------------ reading
    def get(self, target: str | list[str], props: list[str], *, recursive: bool = False,
            missing_ok: bool = False) -> dict[str, dict[str, str]]:
        """{dataset: {property: value}} from `zfs get -Hp` (zfs-fuse has no `zfs list -p`), of one
        target or of several in one call."""
        argv = ["zfs", "get", "-H", "-p", "-o", "name,property,value", *(["-r"] if recursive else [])]
        try:
            out = run([*argv, ",".join(props), *([target] if isinstance(target, str) else target)])
        except CommandFailed:
            if missing_ok:
                return {}
            raise
        result: dict[str, dict[str, str]] = {}
        for line in out.splitlines():
            name, prop, value = line.split("\t", 2)
            result.setdefault(name, {})[prop] = value
        return result

    def exists(self, dataset: str) -> bool:
        return ask(["zfs", "list", "-H", "-o", "name", dataset]) is not None

    def children(self, dataset: str) -> list[str]:
        out = run(["zfs", "list", "-H", "-o", "name", "-t", "filesystem", "-r", "-d", "1", dataset])
        return [l for l in out.splitlines() if l != dataset]

    def view(self, project: str, resume: bool = False) -> View:
        """The project as it is now (or as read earlier in this steady() run); resume: with
        the state of receives cut half-way, where the pool keeps it (asked only then, so
        that a hook does not pay for asking)."""
        top = f"{self.lake}/{project}"
        want = resume and self.resumes()
        cached = self._views.get(project)
        if cached is not None and (cached.resume or not want):
            return cached
        with_resume = bool(want or self.can_resume)
        view = View(top, self.get(top, VIEW_PROPS + (RESUME_PROPS if with_resume else []),
                                  recursive=True, missing_ok=True))
        view.resume = with_resume
        if self._steady:
            self._views[project] = view
        return view

    def resumes(self) -> bool:
        """Whether this pool has `receive -s` (asked once: zfs-fuse has not)."""
        if self.can_resume is None:  # OpenZFS 0.7 and later; zfs-fuse does not know the property
            self.can_resume = ask(["zfs", "get", "-H", "receive_resume_token", self.lake]) is not None
        return self.can_resume

    @contextmanager
    def steady(self):
        """Within it, a project is read once until the node changes it (a push, a listing)."""
        self._steady += 1
        try:
            yield
        finally:
            self._steady -= 1
            if not self._steady:
                self._views.clear()

    # ------------------------------------------------------------------ changing
    def changed(self, project: str | None = None) -> None:
        """Forget what was read of project (every project: None), because it changed."""
        if project is None:
            self._views.clear()
        else:
            self._views.pop(project, None)

    def run(self, argv: list[str], project: str | None = None) -> str:
        """Run a zfs command that changes the lake; what was read of it is forgotten."""
        self.changed(project)
        return run(argv)

    def mount(self, dataset: str, mounted: bool | None = None) -> None:
        """Mount if not mounted (the one place that asks); mounted: if the caller knows."""
        if mounted is None:
            mounted = self.get(dataset, ["mounted"])[dataset]["mounted"] == "yes"
        if not mounted:
            run(["zfs", "mount", dataset])
