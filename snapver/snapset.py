"""A snapshot set is all or none: finishing or undoing one that a kill cut between volumes
(and the other short operation a kill must not leave for the next snapshot: a restore).

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

Also the commits a race left without a snapshot (two commits finishing together):
`missing_commits` is bounded and cheap (one `git rev-list`, one listing).
"""

from __future__ import annotations

import os
import sqlite3
import subprocess
from pathlib import Path

from . import journal, names
from .errors import SnapverError

MISSING_LOOKBACK = 50  # first-parent commits doctor looks at for a missing snapshot


def _label(name: str) -> str:
    return name[:10] + name[40:]


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
    if ws.state.backend != "btrfs":
        return False  # a ZFS mark is a snapshot of the volume itself: nothing more to prove
    # Btrfs marks are transaction IDs of one filesystem: a live volume no newer than the
    # transaction a snapshot of the set was taken in was not written after it.
    return any(not b.changed_since(ws.project, ws.id, volume, s.mark) for s in taken)


def _reached(ws, taken) -> str:
    """What, if anything, reaches these snapshots (so they must not be destroyed)."""
    from . import registry

    try:
        kept = registry.protected(ws)
    except sqlite3.Error:
        return "the catalog cannot say whether a release uses them"
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
    import shutil

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


FINISH = {"snapshot": finish_snapshot, "restore": finish_restore}


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
        if subprocess.run(["git", "merge-base", "--is-ancestor", commit, head], cwd=ws.git.toplevel,
                          capture_output=True).returncode == 0:
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
