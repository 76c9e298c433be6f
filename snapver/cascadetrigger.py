"""snapverd starts cascades by itself: `[cascade] on_release = true` / `on_commit = true` (issue 17).

The seam is snapverd's poll of each workspace (every poll_interval), which calls
Trigger.poll after it has followed the commits. Nothing has to tell the daemon: a release
moved by `release set`, by a tag (the reference-transaction hook) or by a pull, and a commit
snapshot taken by a hook or by snapverd itself all end up in the lake and its catalog,
which the poll reads: the recipes, each one's last build, and what its inputs resolve to
now (O(1) per input, as `cascade --dry-run`). With no [cascade] table it returns at once.

An input is due when it resolves to a snapshot its volume's last good build did not use
(or the volume was never built): on_release looks at `VOLUME@release:NAME` inputs,
on_commit at every other one (`data@HEAD`: the commit snapshot the post-commit hook took).
Each due (volume, input, snapshot) is cascaded for once (a failed build is not retried in
a loop; the next move of its input, or `snapver cascade`, tries again), from the volumes
that read it, downstream. One cascade at a time per project, in a thread of its own (a
build takes minutes; the workspace's captures go on): a trigger meanwhile is queued, not
dropped, and a workspace's moves are looked at again once its cascade is done.

snapverd runs as root; the recipes are the user's commands: each runs as the owner of the
working tree (its uid and gid, no supplementary groups, a clean environment with that
user's HOME: build.RunAs). The lake work around it (clones, snapshots, the swap) is
snapverd's, as for every served operation.
"""

from __future__ import annotations

import logging
import pwd
import sqlite3
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Callable

from . import build, cascade, recipes
from .errors import SnapverError

log = logging.getLogger("snapverd")

RELEASE = "release:"
KEEP = 10  # finished cascades kept per workspace for `snapver daemon status`


def owner(tree: Path) -> build.RunAs:
    """Whom a cascade of tree runs its commands as: the uid and gid that own the working tree."""
    st = tree.stat()
    try:
        pw = pwd.getpwuid(st.st_uid)
        name, home = pw.pw_name, pw.pw_dir
    except KeyError:  # a uid with no passwd entry: still never root's
        name, home = str(st.st_uid), "/"
    return build.RunAs(st.st_uid, st.st_gid, name, home)


def due(ws) -> list[tuple[str, str, str]]:
    """(volume, input, snapshot) for each input [cascade] watches that moved since the volume's
    last good build, in build order."""
    on = ws.config.cascade
    every = recipes.every(ws)
    head = ws.git.head() if on.on_commit else None
    found = []
    for volume in cascade.order(every):
        watched = [(v, rev) for v, rev in every[volume].inputs
                   if (on.on_release if rev.startswith(RELEASE) else on.on_commit)]
        if not watched:
            continue
        last = build.last_build(ws, volume)
        used = last["inputs"] if last else {}
        for v, rev in watched:
            try:
                now = build.resolve_input(ws, v, rev, head)
            except SnapverError:
                continue  # a release not set yet, a volume not there: nothing to build from
            if v in used and build.unchanged(ws, v, used[v], now):
                continue
            found.append((volume, f"{v}@{rev}", now.name))
    return found


class Trigger:
    """snapverd's cascades: what is queued and running per project, and what each did."""

    def __init__(self, open_ws: Callable[[Path], object]):
        self.open_ws = open_ws  # snapverd's own _open: the same ownership checks as every job
        self.lock = threading.Lock()
        self.tried: dict[Path, set[tuple[str, str, str]]] = {}
        self.queues: dict[str, list[dict]] = {}  # project -> cascades waiting, the running one first
        self.threads: dict[str, threading.Thread] = {}
        self.done: dict[Path, list[dict]] = {}  # tree -> finished cascades, newest last

    def poll(self, ws, tree: Path) -> None:
        """From snapverd's poll of tree: queue a cascade if an input it watches moved."""
        on = ws.config.cascade
        if not (on.on_release or on.on_commit):
            return
        with self.lock:
            if any(c["tree"] == tree for q in self.queues.values() for c in q):
                return  # looked at again once that cascade is done: nothing is dropped
        try:
            now = due(ws)
        except (SnapverError, sqlite3.Error) as e:
            log.warning("%s: cascade trigger: %s", tree, e)
            return
        tried = self.tried.get(tree, set()) & set(now)  # what is built since is forgotten
        moved = [m for m in now if m not in tried]
        self.tried[tree] = tried | set(moved)
        if not moved:
            return
        roots = list(dict.fromkeys(v for v, _, _ in moved))
        why = "; ".join(f"{i} is now {snap}" for _, i, snap in moved)
        entry = {"tree": tree, "roots": roots, "trigger": why, "state": "queued",
                 "queued": _now(), "started": None, "finished": None, "nodes": []}
        with self.lock:
            queue = self.queues.setdefault(ws.project, [])
            queue.append(entry)
            if len(queue) == 1:
                t = threading.Thread(target=self._work, args=(ws.project,), name=f"cascade {ws.project}",
                                     daemon=True)
                self.threads[ws.project] = t
                t.start()
        log.info("%s: cascade of %s queued: %s", tree, ", ".join(roots), why)

    def _work(self, project: str) -> None:
        while True:
            with self.lock:
                queue = self.queues[project]
                if not queue:
                    del self.queues[project]
                    self.threads.pop(project, None)
                    return
                entry = queue[0]
                entry["state"], entry["started"] = "running", _now()
            try:
                self._run(entry)
                entry["state"] = "failed" if any(n["action"] == "failed" for n in entry["nodes"]) else "done"
            except Exception as e:  # never let one cascade take the daemon down
                log.exception("%s: cascade failed", entry["tree"])
                entry["state"], entry["error"] = "failed", f"{e.__class__.__name__}: {e}"
            entry["finished"] = _now()
            with self.lock:
                queue.pop(0)
                self.done.setdefault(entry["tree"], []).append(entry)
                del self.done[entry["tree"]][:-KEEP]

    def _run(self, entry: dict) -> None:
        tree = entry["tree"]
        ws = self.open_ws(tree)
        who = owner(tree)
        log.info("%s: cascade of %s as %s (uid %d): %s", tree, ", ".join(entry["roots"]), who.name, who.uid,
                 entry["trigger"])
        seen: set[str] = set()
        for root in entry["roots"]:
            if root in seen:
                continue  # downstream of an earlier root: looked at already
            for node in cascade.cascade(ws, root, run_as=who):
                seen.add(node.volume)
                r = node.result
                entry["nodes"].append({"volume": node.volume, "action": node.action, "reason": node.reason,
                                       "snapshot": r.snapshot if r else None, "log": r.log if r else None})
                log.info("%s: cascade: %s %s (%s)", tree, node.volume, node.action, node.reason)

    def status(self, tree: Path) -> dict:
        """What `snapver daemon status` shows of tree's cascades."""
        with self.lock:
            waiting = [c for q in self.queues.values() for c in q if c["tree"] == tree]
            return {"queued": [_shown(c) for c in waiting if c["state"] == "queued"],
                    "running": next((_shown(c) for c in waiting if c["state"] == "running"), None),
                    "last": _shown(self.done[tree][-1]) if self.done.get(tree) else None}

    def running(self) -> list[threading.Thread]:
        with self.lock:
            return list(self.threads.values())


def _shown(entry: dict) -> dict:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in entry.items() if k != "nodes"} | \
        {"nodes": list(entry["nodes"])}


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")

