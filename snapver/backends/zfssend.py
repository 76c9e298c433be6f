"""ZFS push and pull: zfs send / receive, the part of ZfsBackend that moves snapshots.

Received snapshots live in history datasets of their own, L/<project>/history/_recv/<volume>.<first
name>: a stream is received on top of its base only where the base is the newest snapshot
of such a dataset (never into a live volume), and a clone stream (from a clone's origin)
becomes a new clone of it. A received snapshot that is not the newest of its chain is made
the newest of a dataset of its own first (zfsfuse.head_of_chain), so any received snapshot
can be the base of a plain increment: an amended commit goes from its parent, as the
incremental base rule says (ancestry.py), not whole.

Sending costs one `zfs send` per snapshot: everything else is read from the node's View
(zfsnode.py), once per push inside Backend.steady().
"""

from __future__ import annotations

import re
import struct
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING

from ..errors import CommandFailed, NotFound, SnapverError
from ..names import check_project, check_volume, is_snapshot_name, parse_snapshot_name
from ..proc import ask, run
from . import zfsfuse
from .base import Receive, Snapshot
from .zfsnode import RECEIVED, RECV, View, ZfsNode


class ZfsStreams:
    """Mixed into ZfsBackend: the send and receive verbs of base.Backend."""

    _node: ZfsNode
    _lake: str

    if TYPE_CHECKING:  # ZfsBackend's, which this is mixed into
        def _rows(self, project: str, volume: str | None, view: View | None = None) -> list[Snapshot]: ...
        def _own_snapshots(self, dataset: str) -> list[str]: ...

    def _zsnap(self, snap: Snapshot, view: View | None = None):
        found = (view or self._node.view(snap.project)).find(snap.volume, snap.name)
        if found is None:
            raise NotFound(f"snapshot {snap.name} of volume {snap.volume} does not exist")
        return found

    def identity(self, snap: Snapshot) -> str:
        return self._zsnap(snap).guid

    def identities(self, project: str) -> dict[tuple[str, str], str]:
        view = self._node.view(check_project(project))
        return {(v, s.name): s.guid for v, s in view.versions()}

    def _received(self, project: str) -> str:
        return f"{self._lake}/{check_project(project)}/history/{RECV}"

    def send_bases(self, snap: Snapshot) -> list[tuple[Snapshot, bool]]:
        view = self._node.view(snap.project)
        dataset = view.dataset(self._zsnap(snap, view).dataset)
        if dataset is None:  # the view found the snapshot, so its dataset is in it
            raise NotFound(f"the dataset of {snap.volume}@{snap.name} is gone")
        rows = {s.name: s for s in self._rows(snap.project, snap.volume, view)}
        own = dataset.own()
        earlier = own[:own.index(snap.name)] if snap.name in own else []
        bases = [(rows[n], False) for n in reversed(earlier) if n in rows]
        origin = dataset.origin.partition("@")[2]
        if origin in rows:
            bases.append((rows[origin], True))
        return bases

    def appendable(self, project: str) -> set[tuple[str, str]]:
        # Every received snapshot: the newest of its chain as it is, any other once
        # receive() has made it the newest of a dataset of its own.
        top = self._received(project) + "/"
        return {(v, s.name) for v, s in self._node.view(project).versions() if s.dataset.startswith(top)}

    def _received_chains(self, view: View, project: str) -> dict[str, str]:
        """Each received chain (a dataset in history/_recv) -> the name of its newest snapshot,
        the only one a plain incremental stream may be appended to as it is."""
        top = self._received(project) + "/"
        newest: dict[str, str] = {}
        for ds in view.datasets.values():
            own = [s.name for s in ds.snapshots if is_snapshot_name(s.name)]
            if ds.name.startswith(top) and own:
                newest[ds.name] = own[-1]
        return newest

    def send_argv(self, snap: Snapshot, base: Snapshot | None) -> list[str]:
        view = self._node.view(snap.project)
        return ["zfs", "send", *(["-i", self._zsnap(base, view).full] if base else []), self._zsnap(snap, view).full]

    def estimate(self, snap: Snapshot, base: Snapshot | None) -> int | None:
        return zfsfuse.estimate(self._lake, self.send_argv(snap, base))

    def stream_complete(self, tail: bytes) -> bool:
        # The receiving zfs holds its own stdin open (see base.Receive), so it needs the
        # END record to stop; a stream without one was cut short.
        if len(tail) < zfsfuse.RECORD:
            return False
        kind = tail[-zfsfuse.RECORD:][:4]
        return kind in (struct.pack("<I", zfsfuse.DRR_END), struct.pack(">I", zfsfuse.DRR_END))

    def _can_resume(self) -> bool:
        return self._node.resumes()

    def resumable(self) -> dict[tuple[str, str], str] | None:
        if not self._can_resume():
            return None
        found = {}
        for project in (c.rpartition("/")[2] for c in self._node.children(self._lake)):
            found.update({key: token for key, (_, token) in self._partials(project).items()})
        return found

    def _partials(self, project: str, view: View | None = None) -> dict[tuple[str, str], tuple[str, str]]:
        """(volume, name) -> (dataset, token) of every receive that stopped half-way: a
        whole stream leaves it in its new dataset, an appended one in the dataset it was
        appended to, which says which snapshot it was (snapver:receiving)."""
        top = self._received(project)
        found = {}
        for ds in (view or self._node.view(project, resume=True)).datasets.values():
            token = ds.props.get("receive_resume_token", "-")
            if token != "-" and ds.name.startswith(top + "/"):
                volume, _, name = ds.name.rpartition("/")[2].partition(".")
                receiving = ds.props.get("snapver:receiving", "-")
                found[(volume, receiving if receiving != "-" else name)] = (ds.name, token)
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
        # of one commit is a receive per volume (bench/zfs_processes.py).
        node = self._node
        node.changed(project)
        resume = self._can_resume()
        view = node.view(project, resume=True)
        if view.find(volume, name):
            raise SnapverError(f"snapshot {name} of volume {volume} exists already")
        top = self._received(project)
        clones: list[str] = []
        if resuming:
            partial = self._partials(project, view).get((volume, name)) if resume else None
            if partial is None:
                raise SnapverError(f"there is no half-received {volume}@{name} here to resume")
            # A resumed stream goes where the cut one left its state, whatever its base.
            target = partial[0]
            new = target.rpartition("/")[2] == f"{volume}.{name}"
            clones = [] if new else zfsfuse.mounted_clones(view, target)
        elif base and not clone:
            found = view.find(volume, base)
            chains = self._received_chains(view, project)
            target = found.dataset if found else ""
            if found is None or not target.startswith(top + "/"):
                raise SnapverError(f"{volume}@{name} cannot be received on top of {base} here; send it whole")
            new = False
            if chains.get(target) != base:
                # The base is followed by other snapshots in its chain: give it a chain of its own.
                head = f"{top}/{volume}.{name}"
                left = view.dataset(head)
                if left is not None and not left.own():
                    zfsfuse.destroy(node, head, recursive=True)  # a half-received stream nobody resumes
                target = zfsfuse.head_of_chain(node, found.full, head)
                view = node.view(project, resume=True)
            elif resume:
                # A half-received stream that is not being resumed (its sender moved on)
                # would block this one; it was never a snapshot, so it is let go.
                held = view.dataset(target)
                if held is not None and held.props.get("receive_resume_token", "-") != "-":
                    run(["zfs", "receive", "-A", target])
            if resume:
                # The partial state sits in the target: say which snapshot it is.
                run(["zfs", "set", f"snapver:receiving={name}", target])
            clones = zfsfuse.mounted_clones(view, target)
        else:
            target, new = f"{top}/{volume}.{name}", True
            if view.dataset(top) is None:
                run(["zfs", "create", "-p", top])
            left = view.dataset(target)
            if left is not None and not left.own():
                zfsfuse.destroy(node, target, recursive=True)  # a half-received stream nobody resumes
        for c in clones:  # zfs-fuse receives into no dataset whose snapshots have a mounted clone
            run(["zfs", "unmount", c])

        def done() -> Snapshot:
            full = f"{target}@{name}"
            node.changed(project)
            try:
                p = node.get(full, ["creation", "createtxg"])[full]
            except CommandFailed:
                raise CommandFailed(f"zfs receive of {volume}@{name} ended without the snapshot") from None
            arrived = self._seal(full, dataset=new)
            created = datetime.fromtimestamp(arrived, timezone.utc)
            return Snapshot(project, volume, name, _path(full), created, name, int(p["createtxg"]))

        def undo() -> None:
            node.changed(project)
            if resume and node.get(target, ["receive_resume_token"], missing_ok=True).get(
                    target, {}).get("receive_resume_token", "-") != "-":
                return  # kept: the next push or pull of it resumes from here
            if new and node.exists(target) and not self._own_snapshots(target):
                zfsfuse.destroy(node, target, recursive=True)

        def remount() -> None:
            for c in clones:
                ask(["zfs", "mount", c])  # already mounted: fine

        return Receive(["zfs", "receive", *(["-s"] if resume else []), target], done, undo, remount)

    def _seal(self, full: str, dataset: bool = True) -> int:
        """What makes a received snapshot one of ours: its snapver properties (reindex reads
        them), and (dataset) a received dataset nobody writes to. Idempotent. Returns the
        time of its arrival here: its age on this lake counts from then, not from the
        sender's creation time (which zfs receive keeps); gc and `log` read it."""
        parsed = parse_snapshot_name(full.partition("@")[2])
        if parsed is None:
            raise SnapverError(f"{full} is not a snapshot snapver made")
        commit, kind = parsed[:2]
        arrived = int(time.time())
        zfsfuse.set_each(self._node, full, {"snapver:commit": commit, "snapver:kind": kind, RECEIVED: str(arrived)})
        if dataset:
            zfsfuse.set_each(self._node, full.partition("@")[0], {"readonly": "on"})
        return arrived

    def seal_received(self, project: str, volume: str, name: str) -> None:
        found = self._node.view(project).find(volume, name)
        if found and found.full.startswith(self._received(project) + "/"):
            self._seal(found.full)

    def half_received(self, project: str, volumes: list[str], repair: bool = False) -> list[str]:
        top = self._received(project)
        view = self._node.view(project, resume=True)
        found = []
        for ds in list(view.datasets.values()):
            volume, _, name = ds.name.rpartition("/")[2].partition(".")
            if not ds.name.startswith(top + "/") or ds.props.get("type") != "filesystem" or volume not in volumes:
                continue
            unsealed = [s.full for s in ds.snapshots if is_snapshot_name(s.name)
                        and s.props.get("snapver:kind", "-") == "-"]
            if ds.props.get("receive_resume_token", "-") != "-":
                found.append(f"{volume}: a half-received snapshot is in {ds.name} (the next push or pull of it "
                             "resumes it; a repair discards it)")
                if repair and ds.snapshots:  # appended to a received chain: only the partial state goes
                    self._node.run(["zfs", "receive", "-A", ds.name])
                elif repair:
                    zfsfuse.destroy(self._node, ds.name, recursive=True)
            elif not ds.snapshots:
                found.append(f"{volume}: half-received snapshot {name} is left at {ds.name}")
                if repair:
                    zfsfuse.destroy(self._node, ds.name, recursive=True)
            elif unsealed:  # (not readonly: zfs-fuse reports it off whatever was set)
                found.append(f"{volume}: received snapshot(s) in {ds.name} lack their snapver properties")
                for full in unsealed if repair else []:
                    self._seal(full)
        return found


def _path(full: str):
    from pathlib import Path

    return Path(full)
