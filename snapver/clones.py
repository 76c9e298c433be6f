"""The clones and worktrees of a project that share its lake, and what their refs reach.

gc may destroy a commit snapshot only when it knows that nothing reaches the
commit, and only the clones of the project can say. So every clone that ever
opened the lake is remembered (the `clones` table of the catalog; older lakes
also named worktrees in the `volumes` table) by its identity: the working
tree's path, its Git directory and its workspace id. At gc time each is read:

- present: the path still holds that Git directory with that workspace; its
  branches, tags, remote-tracking refs, reflogs and HEAD count as reachable;
- missing, replaced (another repository or workspace is at the path now),
  shallow (history beyond the cut is unknown) or unreadable: gc cannot know
  what it reaches, so it keeps every unreachable commit snapshot and says why.

Nothing but `snapver clones forget PATH` drops a remembered clone.
"""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import time
from pathlib import Path
from typing import NamedTuple

from .config import LocalState
from .errors import SnapverError
from .gitrepo import git_as_owner

PRESENT = "present"


class Clone(NamedTuple):
    worktree: Path
    git_dir: Path | None  # None for a worktree an older lake named only by path
    workspace: str


class Seen(NamedTuple):
    clone: Clone
    state: str  # present, missing, replaced, shallow, unreadable
    detail: str  # why, for a state other than present
    commits: frozenset[str] | None = None  # what it reaches (when asked and present)


class Reach(NamedTuple):
    commits: set[str]
    doubts: list[str]  # one line per clone that could not be read completely


def this_clone(ws) -> Clone:
    return Clone(ws.git.toplevel, ws.git.git_dir, ws.id)


def note(ws) -> None:
    """Remember this working tree (the hooks pay one indexed lookup; a write only when new)."""
    me = this_clone(ws)
    try:
        ws.catalog.remember_clone(ws.project, str(me.worktree), str(me.git_dir), me.workspace,
                                  time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
    except (sqlite3.Error, SnapverError):
        pass  # a catalog this user cannot write: the next command that can will remember it


def known(ws) -> list[Clone]:
    """Every remembered clone of ws's project, this one included."""
    found = {Clone(Path(r["worktree"]), Path(r["git_dir"]), r["workspace"])
             for r in ws.catalog.clones(ws.project)}
    ids = {(c.worktree, c.workspace) for c in found}
    for r in ws.catalog.volume_worktrees(ws.project):
        if (Path(r["worktree"]), r["workspace"]) not in ids:
            found.add(Clone(Path(r["worktree"]), None, r["workspace"]))
    me = this_clone(ws)
    if not any(c.worktree == me.worktree and c.workspace == me.workspace for c in found):
        found.add(me)
    return sorted(found, key=lambda c: (str(c.worktree), str(c.git_dir), c.workspace))


def inspect(clone: Clone, walk: bool = False) -> Seen:
    """Where that clone stands now; with walk=True also every commit it reaches."""
    tree = clone.worktree
    if not tree.is_dir() or (clone.git_dir is not None and not clone.git_dir.exists()):
        return Seen(clone, "missing", f"{tree} is missing (moved or deleted?)")
    done = git_in(clone, ["rev-parse", "--path-format=absolute", "--git-dir", "--is-shallow-repository"])
    if done.returncode != 0:
        return Seen(clone, "unreadable", f"{tree} cannot be read by git ({_last(done.stderr)})")
    git_dir, shallow = (done.stdout.splitlines() + ["", ""])[:2]
    if clone.git_dir is not None and Path(git_dir) != clone.git_dir:
        return Seen(clone, "replaced", f"{tree} is another repository now (its Git directory is {git_dir})")
    workspace = _workspace_of(Path(git_dir))
    if workspace != clone.workspace:
        now = f"workspace {workspace}" if workspace else "no snapver workspace"
        return Seen(clone, "replaced", f"{tree} has {now}, not {clone.workspace} it had")
    if shallow == "true":
        return Seen(clone, "shallow", f"{tree} is a shallow clone (history beyond its depth is unknown)")
    if not walk:
        return Seen(clone, PRESENT, "")
    done = git_in(clone, ["rev-list", "--branches", "--tags", "--remotes", "--reflog",
                        "--ignore-missing", "HEAD", "--"])
    if done.returncode != 0:
        return Seen(clone, "unreadable", f"{tree}: git rev-list failed ({_last(done.stderr)})")
    return Seen(clone, PRESENT, "", frozenset(done.stdout.split()))


def reachability(ws) -> Reach:
    """What every known clone reaches, and a line for each one that could not be read."""
    commits: set[str] = set()
    doubts = []
    for clone in known(ws):
        seen = inspect(clone, walk=True)
        if seen.state == PRESENT and seen.commits is not None:
            commits |= seen.commits
        else:
            doubts.append(seen.detail)
    return Reach(commits, doubts)


def listing(ws) -> list[Seen]:
    return [inspect(c) for c in known(ws)]


def forget(ws, path: str) -> list[Clone]:
    """Drop the remembered clones at path. A clone of the project that is there now is
    refused: gc must count its refs while it exists (delete it first)."""
    where = {Path(os.path.abspath(path)), Path(os.path.realpath(path))}
    at = [c for c in known(ws) if c.worktree in where]
    if not at:
        raise SnapverError(f"no known clone of this project at {path}: `snapver clones` lists them")
    gone = [c for c in at if inspect(c).state in ("missing", "replaced")]
    if not gone:
        raise SnapverError(
            f"{at[0].worktree} is a clone of this project and is still there: gc counts what its "
            "branches reach; delete it first (its unsnapshotted work with it), then forget it"
        )
    with ws.catalog.batch():
        for c in gone:
            ws.catalog.forget_clone(ws.project, str(c.worktree), c.workspace)
    return gone


def _workspace_of(git_dir: Path) -> str | None:
    try:
        return json.loads((LocalState.dir(git_dir) / LocalState.FILE).read_text()).get("workspace")
    except (OSError, ValueError, AttributeError):
        return None


def git_in(clone: Clone, args: list[str], input: str | None = None) -> subprocess.CompletedProcess:
    """git in that clone, as its owner when run as root (gitrepo.git_as_owner)."""
    return git_as_owner(clone.worktree, args, input, owner_of=clone.git_dir or clone.worktree)


def _last(stderr: str) -> str:
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    return lines[-1] if lines else "no message"
