"""`snapver prune`: the live volumes of working trees that are gone, taken out of the lake.

A clone deleted with `rm -rf`, or a worktree `git worktree remove`d, leaves its live
volumes in the lake forever: nothing else ever opens that workspace again. prune finds
them among the clones the lake remembers (clones.py): a clone is gone when both its
working tree and its Git directory are (`missing`). A clone that was moved is that too
until it is opened once at its new place (any snapver command there remembers it again,
same workspace), so a workspace that any other remembered clone still has is left alone.

Nothing is lost: before a live volume goes, a change not in a snapshot is kept as a
wip snapshot of every volume of that workspace (one point in time, `kept`, so gc keeps it
for the retention's `kept` age like any safety wip), named after the commit the volume
was last checked out at. Unchanged volumes go without one: their data is in the snapshot
they were cloned from. The volumes are then retired as a checkout retires a replaced one
(ZFS keeps a volume that has snapshots read-only under history/).

The clone stays remembered (gc keeps what it cannot prove dead; `snapver clones forget`
is still the one way to drop it).
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass, field

from . import clones, names
from .errors import SnapverError


@dataclass
class Pruned:
    worktree: str
    workspace: str
    volumes: list[str]  # live volumes retired (or that would be, with dry_run)
    kept: list[str] = field(default_factory=list)  # the wip snapshot names taken first


def _changed(ws, workspace: str, volume: str) -> tuple[bool, str | None]:
    """(changed since the snapshot it was checked out from, that snapshot's commit)."""
    backend = ws.backend
    origin = backend.live_origin(ws.project, workspace, volume)
    if origin is None:
        return True, None  # made empty, or unknown: its data is nowhere else
    name, mark = origin
    parsed = names.parse_snapshot_name(name)
    commit = parsed[0] if parsed else None
    if backend.changed_since(ws.project, workspace, volume, mark):
        return True, commit
    # Unchanged, but only a snapshot that still exists holds the same data (gc may have thinned a wip).
    return backend.find(ws.project, volume, name) is None, commit


def gone(ws) -> list[tuple[clones.Clone, list[str]]]:
    """The remembered clones whose working tree and Git directory are both gone, with their
    live volumes still in the lake; never this one, nor a workspace another clone still has."""
    known = clones.known(ws)
    states = {c: clones.inspect(c).state for c in known}
    volumes = list(dict.fromkeys([*ws.volumes, *(v for v, _ in ws.catalog.snapshot_rows(ws.project))]))
    found: list[tuple[clones.Clone, list[str]]] = []
    for c in known:
        if c.workspace == ws.id or states[c] != "missing" or c.git_dir is None:
            continue
        if any(o.workspace == c.workspace and states[o] != "missing" for o in known):
            continue  # moved and opened at its new place: the same workspace, in use
        if any(f.workspace == c.workspace for f, _ in found):
            continue  # remembered at two paths, both gone: one workspace
        live = [v for v in volumes if ws.backend.volume_exists(ws.project, c.workspace, v)]
        if live:
            found.append((c, live))
    return found


def prune(ws, dry_run: bool = False) -> list[Pruned]:
    """Retire the live volumes of gone working trees, keeping what changed as a wip first."""
    done = []
    with ws.lock():
        for clone, live in gone(ws):
            result = Pruned(str(clone.worktree), clone.workspace, live)
            changed = {v: _changed(ws, clone.workspace, v) for v in live}
            if any(c for c, _ in changed.values()):
                commit = next((sha for _, sha in changed.values() if sha), None) or names.NO_COMMIT
                result.kept = [names.wip_snapshot_name(commit)]
            if not dry_run:
                if result.kept:
                    snaps = ws.backend.snapshot(ws.project, clone.workspace, live, result.kept[0])
                    # The filesystem is the truth: a catalog that cannot take the rows now gets
                    # them back from `snapver reindex`; the snapshots stand either way.
                    try:
                        with ws.catalog.batch():
                            ws.catalog.record_snapshots(
                                snaps, clone.workspace, f"kept by prune: {clone.worktree} was gone", True)
                    except (sqlite3.Error, SnapverError) as e:
                        raise SnapverError(f"the wip {result.kept[0]} of {clone.worktree} was taken but not "
                                           f"recorded ({e}): run `snapver reindex`, then prune again") from None
                for v in live:
                    ws.backend.retire_volume(ws.project, clone.workspace, v)
            done.append(result)
    return done
