"""Checking out: making the live volumes a revision's snapshots, and the lake following Git's HEAD.

Split out of lake.py (the Workspace keeps its public methods, which call these). Every
function takes the Workspace, whose lock, state and backend it works with; the order is
lake.py's: check input, take the lock, keep unsnapshotted work as a wip snapshot, then act.
"""

from __future__ import annotations

from . import journal
from .backends.base import Snapshot
from .config import VolumeState
from .errors import NotFound, SnapverError
from .names import short


class CheckoutResult:
    def __init__(self, target: dict[str, Snapshot], warnings: list[str] | None = None):
        self.target = target
        self.kept: list[Snapshot] = []  # the safety wip snapshot, if one was needed
        self.switched: list[str] = []  # volumes that were replaced
        self.warnings = warnings if warnings is not None else []
        self.links: dict[str, str] = {}  # volume -> how its link was put back (links.mend)
        self.broken: dict[str, str] = {}  # volume -> what is still wrong with its link


def checkout(ws, rev: str, volumes: list[str] | None = None, nearest: bool = False,
             hook: bool = False) -> CheckoutResult:
    """Make the live volumes the snapshot of rev, keeping unsnapshotted work first; a
    broken volume link is put back first (hook: only a missing one), so "already at"
    is said only of a volume the working tree really reaches."""
    vols = ws._volumes(volumes)
    target, _, warnings = ws.resolve(rev, vols, nearest)
    with ws.lock():
        result = CheckoutResult(target, warnings=warnings)
        ws._mend_links(vols, result, hook)
        todo = [
            v for v in target
            if ws.state.volume(v).base != target[v].name
            # What a plain folder held stays live, also when its move stopped partway.
            or (ws._changed(v) and v not in result.links and v not in result.broken)
        ]
        if not todo:
            return result  # the live volumes are those snapshots already: nothing to swap
        intent = {"rev": rev, "volumes": vols, "target": {v: target[v].name for v in todo},
                  "from": {v: ws.state.volume(v).base for v in todo}}
        with journal.operation(ws, "checkout", intent) as op:
            switch(ws, {v: target[v] for v in todo}, vols, f"kept before checkout of {rev}", result, op)
        return result


def switch(ws, target: dict[str, Snapshot], vols: list[str], why: str,
           result: CheckoutResult, op=None) -> None:
    """The steps of a checkout (and of doctor finishing one): keep, then swap each volume."""
    result.kept = ws._keep_changes(vols, why)
    if result.kept and op:
        op.step("kept", changed=False, snapshot=result.kept[0].name)
    for v, snap in target.items():
        mark = ws.backend.clone_into_place(snap, ws.id)
        ws.state.volumes[v] = VolumeState(base=snap.name, mark=mark)
        ws.state.save()  # after each volume, so a crash leaves the truth recorded
        ws.link(v)  # a volume derived in another clone is new here
        result.switched.append(v)
        if op:
            op.step("switched", volume=v)
    ws.backend.after_checkout()
    ws.snapshot_paths_may_have_moved()


def finish_checkout(ws, op) -> str:
    """doctor --repair: bring every volume an interrupted checkout was moving to its target.

    Works from the filesystem: the backend first finishes or drops a half-made swap, a
    volume whose live data is already a clone of its target only has its state
    recorded, and the others are checked out as the checkout would have (their
    unsnapshotted changes kept first).
    """
    target: dict[str, Snapshot] = {}
    gone = []
    for v, name in op.intent.get("target", {}).items():
        snap = ws.backend.find(ws.project, v, name) if v in ws.volumes else None
        if snap is None:
            gone.append(f"{v}@{short(name)}")
        else:
            target[v] = snap
    ws.backend.tidy(ws.project, ws.id, ws.volumes, repair=True)
    for v, snap in target.items():
        origin = ws.backend.live_origin(ws.project, ws.id, v)
        if origin and origin[0] == snap.name and ws.state.volume(v).base != snap.name:
            # Swapped in before the crash, but the state was not saved.
            ws.state.volumes[v] = VolumeState(base=snap.name, mark=origin[1])
            ws.state.save()
    todo = {v: s for v, s in target.items()
            if ws.state.volume(v).base != s.name or ws._changed(v)}
    result = CheckoutResult(target)
    switch(ws, todo, list(target) or ws.volumes, f"kept before finishing checkout of {op.intent.get('rev')}",
           result)
    said = f"checkout of {op.intent.get('rev')} finished: {', '.join(target) or 'no volume'} at its target"
    if result.kept:
        said += f" (unsnapshotted changes kept as {result.kept[0].name})"
    if gone:
        said += f"; {', '.join(gone)} no longer exist(s), left as they are"
    return said


def follow_head(ws) -> CheckoutResult | None:
    """After Git moved HEAD and rewrote the working tree: the lake follows (the hooks)."""
    head = ws.git.head()
    if head is None:
        return None
    made = made_here(ws, head)
    if made == "merge":
        ws.snapshot()  # a new commit, made from the live lake: it stays
        return None
    if made == "pick":
        return None  # the live lake is this new commit's data: post-commit, run next, snapshots it
    try:
        result = checkout(ws, head, nearest=True, hook=True)
    except NotFound as e:
        ws._record_at(head)  # nothing to follow; do not ask again for this commit
        raise SnapverError(f"{e}; the lake stays as it is") from None
    ws._record_at(head)
    return result


def made_here(ws, head: str) -> str | None:
    """Whether HEAD's move made a new commit from the live lake, so that the lake must not be
    moved back to an ancestor's snapshot (which post-commit, or follow_head for a merge, would
    then snapshot as the new commit's data): "merge", "pick" or None (a checkout).

    A commit that has its snapshots already is a checkout (the same commit made again: same
    parent, tree and second). A merge commit is made here when the lake is its first parent's,
    or the reflog says `git merge` just made it here (the lake need not have followed HEAD's
    last move: reset --soft and --mixed keep it). cherry-pick and revert rewrite the working
    tree, then commit on top of HEAD: the reflog names that move ("pick", which post-commit,
    run next, snapshots)."""
    with ws.backend.steady():  # one read of the lake for every volume
        if all(ws.backend.find(ws.project, v, head) for v in ws.volumes):
            return None
    parents = ws.git.commit(head).parents
    if not parents:
        return None
    how = ws.git.made_on(head, parents[0])
    if len(parents) > 1 and (parents[0] == ws.lake_at() or how == "merge"):
        return "merge"
    return "pick" if how == "pick" else None
