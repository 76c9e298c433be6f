"""Lineage: `derive` makes a new volume as a CoW clone of a snapshot of another one, and
records the edge. Core, not a feature: the volume is the workspace's like any other,
its link is made by the workspace's own code (Workspace.link), and the snapshot it
comes from is protected from gc (the edge is only worth something while its source
exists), whether or not a feature is loaded. The registry reads the edges (upstream,
lineage tree, du).
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from typing import NamedTuple

from . import journal, names
from .config import CONFIG_NAME, VolumeState, with_volume, write_as_owner
from .errors import NotFound, SnapverError

class Edge(NamedTuple):
    volume: str
    source_volume: str
    source_snapshot: str
    message: str | None
    created: str


def edges(ws) -> list[Edge]:
    return [Edge(*r) for r in ws.catalog.lineage(ws.project)]


def sources(ws) -> dict[tuple[str, str], str]:
    """(volume, snapshot) gc must keep because a derived volume was made from it (the first
    volume derived from it names the reason)."""
    keep: dict[tuple[str, str], str] = {}
    for volume, sv, ss, *_ in ws.catalog.lineage(ws.project):  # oldest first
        keep.setdefault((sv, ss), f"source of derived volume {volume}")
    return keep


def split_source(text: str) -> tuple[str, str]:
    """'models@HEAD~1' -> ('models', 'HEAD~1'); the first '@' splits (volume names have none)."""
    volume, at, rev = text.partition("@")
    if not at or not volume or not rev:
        raise SnapverError(f"{text!r}: give VOLUME@REV, e.g. models@HEAD or models@release:prod")
    return names.check_volume(volume), rev


def derive(ws, source: str, volume: str, message: str | None = None) -> Edge:
    """A new volume as a CoW clone of a snapshot of another volume, added to the project."""
    src_volume, rev = split_source(source)
    names.check_volume(volume)
    link = ws.git.toplevel / volume
    if volume in ws.volumes:
        raise SnapverError(f"volume {volume} exists already: derive makes a new volume, choose another name")
    if os.path.lexists(link):
        raise SnapverError(f"{link} already exists: move it away or choose another name")
    if ws.backend.volume_exists(ws.project, ws.id, volume):
        raise SnapverError(f"the lake already has a volume {volume} in this workspace: choose another name")
    if ws.catalog.derived(ws.project, volume):
        raise SnapverError(f"volume {volume} was derived already in another clone: pull its snapver.toml instead")
    if src_volume not in ws.volumes:
        raise NotFound(f"no volume {src_volume!r} here: the volumes are {', '.join(ws.volumes)}")
    snap = ws.resolve(rev, [src_volume])[0][src_volume]
    toml_path = ws.git.toplevel / CONFIG_NAME
    new_toml = with_volume(ws.git.toplevel, volume)  # checked now, written once the volume exists

    # Input is checked; from here on things change on disk.
    with ws.lock():
        intent = {"volume": volume, "source_volume": src_volume, "source": snap.name, "message": message}
        with journal.operation(ws, "derive", intent) as op:
            ws.backend.clone_volume(snap, ws.id, volume)
            op.step("cloned")
            write_as_owner(toml_path, new_toml)
            ws.config.volumes.append(volume)
            op.step("configured")
            _settle(ws, volume)
            op.step("recorded")
            return _record_lineage(ws, volume, src_volume, snap.name, message)


def _settle(ws, volume: str) -> None:
    """The parts of a derived volume outside the lake: state, link, catalog (idempotent)."""
    if ws.state.volume(volume).mark is None:
        ws.state.volumes[volume] = VolumeState(base=None, mark=ws.backend.mark(ws.project, ws.id, volume))
        ws.state.save()
    ws.link(volume)
    ws.git.keep_out([volume])  # also when a repair finds the link made but the exclusion not


def _record_lineage(ws, volume: str, src_volume: str, source: str, message: str | None) -> Edge:
    created = datetime.now(timezone.utc).isoformat()
    ws.catalog.add_lineage(ws.project, volume, src_volume, source, message, created)
    return Edge(volume, src_volume, source, message, created)


def finish_derive(ws, op) -> str:
    """doctor --repair of an interrupted derive: finish it once its volume exists (every later
    step is idempotent), and there is nothing to undo before (it is the first change)."""
    i = op.intent
    volume = i["volume"]
    if not ws.backend.volume_exists(ws.project, ws.id, volume):
        return f"derive of {volume} had changed nothing yet: dropped"
    toml_path = ws.git.toplevel / CONFIG_NAME
    if volume not in ws.config.volumes:
        write_as_owner(toml_path, with_volume(ws.git.toplevel, volume))
        ws.config.volumes.append(volume)
    _settle(ws, volume)
    _record_lineage(ws, volume, i["source_volume"], i["source"], i.get("message"))
    return f"derive of {volume} from {i['source_volume']}@{names.short(i['source'])} finished: commit snapver.toml"
