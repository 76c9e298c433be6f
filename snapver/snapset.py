"""A snapshot set is all or none: finishing or undoing one that a kill cut between volumes
(and the other short operations a kill must not leave for the next snapshot: a restore, a
plain folder's move into its volume, links.finish_move).

Workspace._take journals the intent (name and volumes) before the first
volume is snapshotted and deletes the row with the snapshots' catalog rows.
A row that outlives its process is finished here, by the next command that
takes the workspace lock (Workspace.lock) or by `snapver doctor --repair`:

- every volume was taken: only the catalog rows and the workspace state are
  written;
- some were not, and each of those is provably unchanged since the kill (its
  live data still matches its last snapshot, or on Btrfs its generation is no
  newer than the transaction the set's first snapshots were taken in): they are
  taken now, and the set is the same point in time it would have been;
- otherwise no snapshot of them can be that point in time any more: the set is
  undone. The partial snapshots were made by this operation alone and nothing
  records them yet, but they are destroyed only if nothing reaches them (no
  release, no derived volume's source, no workspace's base or live clone);
  if something does, they are kept and the report says so. The live data is
  never touched.

The journal lives in the catalog, which may be lost or rebuilt (reindex). So doctor also
finds a cut set from the filesystem alone (`half_made`): a commit on HEAD's recent
first-parent line whose snapshot some of the workspace's volumes have and others, which
have older snapshots, have not. `doctor --repair` finishes it only if the lake is
provably still at that commit (HEAD is it, the lake had followed its parent, each taken
volume is unchanged since its snapshot of it and each missing one since its last
snapshot); otherwise what exists is kept, never destroyed, and the report says so.

Also the commits a race left without a snapshot (two commits finishing together):
`missing_commits` is bounded and cheap (one `git rev-list`, one listing).
"""

from __future__ import annotations

import os
import sqlite3
from typing import Any
from pathlib import Path
from typing import NamedTuple

from . import journal, names
from .names import short as _label
from .errors import SnapverError
from .proc import ask

MISSING_LOOKBACK = 50  # first-parent commits doctor looks at for a missing snapshot


def finish_snapshot(ws, op) -> str:
    name = op.intent.get("name", "")
    message = op.intent.get("message")
    vols = [v for v in op.intent.get("volumes", []) if v in ws.volumes]
    found = {v: ws.backend.find(ws.project, v, name) for v in vols}
    taken = [s for s in found.values() if s is not None]
    missing = [v for v in vols if found[v] is None and ws.backend.volume_exists(ws.project, ws.id, v)]
    what = f"snapshot {_label(name)}"
    if not taken:
        return f"{what} had not taken any volume: nothing to finish or undo"
    if not missing:
        ws._record(taken, message, kept=bool(op.intent.get("kept")))
        return f"{what} finished: every volume had been taken ({', '.join(vols)}); now recorded"
    if all(_unchanged_since(ws, v, taken) for v in missing):
        made = ws.backend.snapshot(ws.project, ws.id, missing, name)
        ws._record(taken + made, message, kept=bool(op.intent.get("kept")))
        return (f"{what} finished: {', '.join(missing)} taken now (unchanged since the interruption, "
                "so the set is one point in time)")
    reached = _reached(ws, taken)
    if reached:
        return (f"{what} is incomplete ({', '.join(missing)} missing) and kept as it is: {reached}; "
                "`snapver snapshot` takes the missing volumes as they are now")
    for s in taken:
        ws.backend.destroy(s)
        ws.catalog.forget_snapshot(ws.project, s.volume, s.name)
    return (f"{what} undone: its partial snapshots of {', '.join(s.volume for s in taken)} destroyed "
            f"({', '.join(missing)} changed since, so no snapshot of them can be of the same moment); "
            "the live data is as it was: `snapver snapshot` snapshots the commit as it is now")


def _unchanged_since(ws, volume: str, taken) -> bool:
    """The live volume holds exactly what it held when the set was cut."""
    b = ws.backend
    if not b.changed_since(ws.project, ws.id, volume, ws.state.volume(volume).mark):
        return True  # unchanged since its last snapshot, which came before the set
    if not b.comparable_marks:
        return False  # a ZFS mark is a snapshot of the volume itself: nothing more to prove
    # Btrfs marks are transaction IDs of one filesystem: a live volume no newer than the
    # transaction a snapshot of the set was taken in was not written after it.
    return any(not b.changed_since(ws.project, ws.id, volume, s.mark) for s in taken)


def _reached(ws, taken) -> str:
    """What, if anything, reaches these snapshots (so they must not be destroyed)."""
    try:
        kept = ws.protected()
    except sqlite3.Error:
        return "the catalog cannot say whether a release uses them"
    except SnapverError as e:
        return f"what protects them cannot be known ({e})"
    for s in taken:
        if (s.volume, s.name) in kept:
            return f"{s.volume}@{_label(s.name)} is the {kept[(s.volume, s.name)]}"
        if ws.state.volume(s.volume).base == s.name:
            return f"{s.volume}@{_label(s.name)} is this workspace's base"
    for other in ws.catalog.workspaces(ws.project):
        for s in taken:
            if not ws.backend.volume_exists(ws.project, other, s.volume):
                continue
            origin = ws.backend.live_origin(ws.project, other, s.volume)
            if origin and origin[0] == s.name:
                return f"{s.volume}@{_label(s.name)} is the origin of workspace {other}'s live volume"
    return ""


def finish_restore(ws, op) -> str:
    """A restore killed midway: its copy of the snapshot's files goes, the user's data stays.

    The journal names the temporary copy and the place the old folder is moved to while
    the copy is renamed over it, so nothing is searched for. The old folder is put back
    if the copy had not taken its place yet; if it had, the restore was done but for
    deleting the old folder (whose data the snapshot taken before the restore keeps), and
    that is finished."""
    import shutil  # stdlib, but ~2 ms of every hook's start-up for a rare path

    dest, tmp, old = (Path(op.intent.get(k, "")) for k in ("dest", "tmp", "old"))
    if not (tmp.name.startswith(f".{dest.name}.snapver-restore-") and old.name.startswith(
            f".{dest.name}.snapver-old-") and tmp.parent == dest.parent == old.parent):
        return f"restore of {dest} left as it is: its journal entry names unexpected paths ({tmp}, {old})"
    said = []
    if os.path.lexists(old):
        if not os.path.lexists(dest) and os.path.lexists(tmp):
            os.rename(old, dest)
            said.append(f"{dest} put back as it was")
        elif os.path.lexists(dest):
            _remove(old, shutil)
            said.append(f"the folder {dest} replaced was removed, as the restore was about to")
        else:
            os.rename(old, dest)  # no copy and no dest: the old one is all there is
            said.append(f"{dest} put back as it was")
    if os.path.lexists(tmp):
        _remove(tmp, shutil)
        said.append(f"its partial copy {tmp.name} removed")
    return f"restore of {dest} undone: " + ("; ".join(said) if said else "nothing had been left")


def _remove(path: Path, shutil) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def _finish_move(ws, op) -> str:
    from .links import finish_move

    return finish_move(ws, op)


FINISH = {"snapshot": finish_snapshot, "restore": finish_restore, "move": _finish_move}


def finish_interrupted(ws) -> list[str]:
    """With the workspace lock held: finish or undo the snapshot sets and restores a kill cut
    (one indexed lookup when there are none, which is always but after a crash), so that the
    next snapshot is neither half made nor takes a restore's temporary copy into history."""
    try:
        ops = [o for o in journal.open_operations(ws.catalog, ws.id) if o.kind in FINISH]
    except (SnapverError, sqlite3.Error):
        return []  # no catalog to read: the command says so if it needs one
    done = []
    for op in ops:
        said = FINISH[op.kind](ws, op)
        journal.close(ws, op)
        done.append(said)
        if journal.announce:
            journal.announce(f"interrupted: {said}")
    return done


def fired_for(ws, commit: str) -> bool:
    """May the live volumes be snapshotted as `commit`, the commit a hook fired for?

    Yes while HEAD is still that commit, or HEAD moved on to a commit whose own hook has
    not snapshotted it yet: the live data is then still what it was when `commit` was
    made (as far as anything can tell), and the later commit's hook takes its own. No
    once HEAD's commit has its snapshot (its hook ran first, or a checkout moved the lake):
    the live data is that commit's, not this one's, and naming it after this one would be
    a lie. The commit is then left without a snapshot, which is said and logged here and
    listed by `snapver doctor`; it resolves to its nearest snapshotted ancestor."""
    head = ws.git.head_quick()
    if head == commit or head is None:
        return True
    if not all(ws.backend.find(ws.project, v, head) for v in ws.volumes):
        # Only a commit HEAD still builds on: any other (the socket takes this argument
        # from users) is not what the working tree holds.
        if ask(["git", "merge-base", "--is-ancestor", commit, head], cwd=ws.git.toplevel) is not None:
            return True
    if journal.announce:
        journal.announce(f"commit {_label(commit)} has no snapshot of its own: HEAD moved on to "
                         f"{_label(head)} before its hook ran (two commits at once, or a checkout), "
                         "and the lake holds that commit's data now, not this one's")
    return False


def check_parent(ws, info) -> None:
    """A post-commit hook: the commit before this one should have its snapshot. If the lake
    did not follow it (lake-at is not the parent) and it has none, a race or a hook that did
    not run left it without one: said and logged now, listed by `snapver doctor`."""
    parent = info.parents[0] if info.parents else None
    if not parent or parent == ws.lake_at() or not journal.announce:
        return
    if ws.backend.find(ws.project, ws.volumes[0], parent) is None:
        journal.announce(f"commit {_label(parent)} (the parent of {_label(info.sha)}) has no snapshot: "
                         "its hook did not run or lost a race; `snapver doctor` lists such commits")


def missing_commits(ws, limit: int = MISSING_LOOKBACK) -> list[str]:
    """Commits on HEAD's first-parent line, newer than the oldest snapshotted one among the
    last `limit`, that have no commit snapshot: a race (or a hook that did not run) left them."""
    try:
        out = ws.git.git("rev-list", "--first-parent", f"--max-count={limit}", "HEAD", "--")
    except Exception:
        return []
    line = out.split()
    have = {s.name for s in ws.backend.snapshots(ws.project, ws.volumes[0])} if ws.volumes else set()
    snapped = [i for i, sha in enumerate(line) if sha in have]
    if not snapped:
        return []
    return [sha for sha in line[:snapped[-1]] if sha not in have and names.SHA.fullmatch(sha)]


class HalfSet(NamedTuple):
    name: str  # the commit
    taken: list  # its Snapshots, of some volumes
    missing: list[str]  # the volumes without one (which have older snapshots)
    why_not: str  # why the live lake cannot finish it ("" if it can)

    def line(self) -> str:
        have = ", ".join(s.volume for s in self.taken)
        said = (f"commit {_label(self.name)} has snapshots of {have} but not of {', '.join(self.missing)} "
                "(a snapshot set cut between volumes)")
        if self.why_not:
            return (f"{said}: kept as it is, as the lake is no longer provably at that commit ({self.why_not}); "
                    "it resolves to its nearest complete ancestor")
        return said + ": `snapver doctor --repair` finishes it from the live volumes"


def half_made(ws, limit: int = MISSING_LOOKBACK) -> list[HalfSet]:
    """Commit snapshot sets a kill cut between volumes, from the filesystem alone (one `git
    rev-list`, one listing): for when the catalog, and with it the journal, was lost. A set
    the journal still has is left to finish_snapshot. A volume without a snapshot older than
    the set (derived later) does not make a set half made."""
    vols = [v for v in ws.volumes if ws.backend.volume_exists(ws.project, ws.id, v)]
    if len(vols) < 2:
        return []
    try:
        line = ws.git.git("rev-list", "--first-parent", f"--max-count={limit}", "HEAD", "--").split()
    except Exception:
        return []
    snaps: dict[str, dict[str, Any]] = {v: {} for v in vols}
    for s in ws.backend.snapshots(ws.project):
        if s.volume in snaps:
            snaps[s.volume][s.name] = s
    oldest = {v: min((s.age_key for s in snaps[v].values()), default=None) for v in vols}
    try:
        journaled = {o.intent.get("name") for o in journal.open_operations(ws.catalog, ws.id) if o.kind == "snapshot"}
    except (SnapverError, sqlite3.Error):
        journaled = set()
    found = []
    for sha in line:
        taken = [snaps[v][sha] for v in vols if sha in snaps[v]]
        if not taken or len(taken) == len(vols) or sha in journaled:
            continue
        first = min(s.age_key for s in taken)
        missing = [v for v in vols if sha not in snaps[v] and oldest[v] is not None and oldest[v] < first]
        if missing:
            found.append(HalfSet(sha, taken, missing, _not_at(ws, sha, taken, missing)))
    return found


def _not_at(ws, sha: str, taken, missing: list[str]) -> str:
    """Why the live volumes are not provably the data of commit sha ("" if they are)."""
    head = ws.git.head_quick()
    if head != sha:
        return f"HEAD is {_label(head) if head else 'nothing'} now"
    parents = ws.git.commit(sha).parents
    if ws.lake_at() not in (sha, *parents):
        return "the lake followed another commit since"
    b = ws.backend
    for s in taken:
        # ZFS: a snapshot that is not an ancestor of this workspace's live volume counts as changed.
        if b.changed_since(ws.project, ws.id, s.volume, s.mark):
            return f"{s.volume} changed since its snapshot of that commit"
    for v in missing:
        if not _unchanged_since(ws, v, taken):
            return f"{v} changed since"
    return ""


def finish_half_made(ws, half: HalfSet) -> str:
    """doctor --repair, with the workspace lock held: take the missing volumes of a cut set if
    the lake is provably still at its commit; else keep what exists (and say so)."""
    if half.why_not:
        return half.line()
    made = ws.backend.snapshot(ws.project, ws.id, half.missing, half.name)
    try:
        ws._record(half.taken + made, None)
    except SnapverError as e:  # the snapshots stand; reindex brings their rows back
        return (f"snapshot {_label(half.name)} finished: {', '.join(half.missing)} taken now from the live "
                f"volumes, unchanged since the cut; not recorded in the catalog ({e})")
    ws._record_at(half.name)
    return (f"snapshot {_label(half.name)} finished: {', '.join(half.missing)} taken now from the live volumes, "
            "which are provably still at that commit")
