"""`snapver cascade [VOLUME|release:NAME] [-j N] [--dry-run]`: rebuild what derives from a change.

The graph is the recipes' (recipes.py): an edge from each input volume to the volume its
recipe builds. Nodes are taken in topological order; a node is rebuilt only if what its
inputs resolve to now is not what its last successful build used (snapshot names compared,
and where they differ the backend's O(1) proof of same data, Backend.same_data: a commit of
an unchanged volume makes no rebuild; nothing hashed), or it was never built, or its
command changed. A built volume at HEAD is its newest build point of HEAD (build.resolve_input). A node is
looked at only once every upstream node of the selection is done, so a rebuilt base makes
its fine-tunes stale by the time they are looked at. Up to -j builds run at once (their
commands; the short prepare and finish steps take the workspace lock one at a time). A
failed build stops its subtree (marked skipped) while siblings go on.
"""

from __future__ import annotations

import sqlite3
import time
from typing import NamedTuple

from . import build, recipes
from .errors import NotFound, SnapverError


class Node(NamedTuple):
    volume: str
    action: str  # built, failed, skipped, up-to-date, rebuild (dry run)
    reason: str
    result: build.Result | None = None

    def as_dict(self) -> dict:
        return {"volume": self.volume, "action": self.action, "reason": self.reason,
                "result": self.result.as_dict() if self.result else None}


def order(every: dict[str, recipes.Recipe]) -> list[str]:
    """The recipe volumes, each after every recipe volume it reads (Kahn; a cycle is an error)."""
    deps = {v: [i for i, _ in r.inputs if i in every] for v, r in every.items()}
    done: list[str] = []
    left = sorted(every)
    while left:
        ready = [v for v in left if all(d in done for d in deps[v])]
        if not ready:
            raise SnapverError(f"the recipes of {', '.join(left)} read each other in a circle: break it")
        done += ready
        left = [v for v in left if v not in ready]
    return done


def downstream(every: dict[str, recipes.Recipe], roots: set[str]) -> set[str]:
    found = set(roots)
    grew = True
    while grew:
        more = {v for v, r in every.items() if v not in found and any(i in found for i, _ in r.inputs)}
        found |= more
        grew = bool(more)
    return found


def select(ws, every: dict[str, recipes.Recipe], target: str | None) -> list[str]:
    """The nodes a cascade looks at, in build order: all of them; VOLUME and what derives from
    it; or, for release:NAME, the volumes that read that release and what derives from them."""
    if target is None:
        chosen = set(every)
    elif target.startswith("release:"):
        roots = {v for v, r in every.items() if any(rev == target for _, rev in r.inputs)}
        if not roots:
            raise NotFound(f"no recipe reads {target}")
        chosen = downstream(every, roots)
    else:
        if target not in ws.volumes and target not in every:
            raise NotFound(f"no volume {target!r} here: the volumes are {', '.join(ws.volumes)}")
        chosen = downstream(every, {target}) - ({target} if target not in every else set())
        if not chosen:
            raise NotFound(f"nothing is built from {target}: no recipe reads it")
    return [v for v in order(every) if v in chosen]


def staleness(ws, recipe: recipes.Recipe, now: dict | None = None) -> str | None:
    """Why recipe's volume must be rebuilt now, or None if it is up to date. now: its
    inputs resolved (build.resolve_inputs), if the caller has them."""
    last = build.last_build(ws, recipe.volume)
    if last is None:
        return "never built"
    if last["command"] != recipe.run:
        return "its command changed"
    with ws.backend.steady():  # it only reads: one look at the lake for every input
        now = now if now is not None else build.resolve_inputs(ws, recipe)
        used = last["inputs"]
        if set(now) != set(used):
            return "its inputs changed: " + ", ".join(sorted(set(now) ^ set(used)))
        moved = [f"{v} {used[v][:10]}{used[v][40:]} -> {now[v].name[:10]}{now[v].name[40:]}"
                 for v in now if not build.unchanged(ws, v, used[v], now[v])]
    return ("input " + "; ".join(moved)) if moved else None


def stale(ws) -> dict[str, str]:
    """volume -> why it is stale, for every recipe volume (status, lineage); an input that does
    not resolve says so as the reason."""
    found: dict[str, str] = {}
    try:
        every = recipes.every(ws)
    except (SnapverError, sqlite3.Error):
        return found  # no readable catalog (status still answers; its own commands say why)
    for volume, recipe in every.items():
        try:
            why = staleness(ws, recipe)
        except (SnapverError, sqlite3.Error) as e:
            why = str(e)
        if why:
            found[volume] = why
    return found


def marks(ws) -> dict[str, dict]:
    """What `lineage --dot` draws of the recipes: for each recipe volume, the snapshot each
    input was at when its last good build read it (None: never built), and why it is stale."""
    why = stale(ws)
    try:
        every = recipes.every(ws)
    except (SnapverError, sqlite3.Error):
        return {}
    out = {}
    for volume, recipe in every.items():
        last = build.last_build(ws, volume)
        used = last["inputs"] if last else {}
        out[volume] = {"inputs": {v: used.get(v) for v, _ in recipe.inputs}, "stale": why.get(volume)}
    return out


def cascade(ws, target: str | None = None, jobs: int = 1, dry_run: bool = False, progress=None,
            run_as: build.RunAs | None = None) -> list[Node]:
    """Rebuild what is stale among the selected nodes, upstream first, up to `jobs` at once.
    run_as: whom the commands run as (snapverd's trigger: the working tree's owner)."""
    if jobs < 1:
        raise SnapverError("-j must be at least 1")
    every = recipes.every(ws)
    chosen = select(ws, every, target)
    pending = list(chosen)
    deps = {v: [i for i, _ in every[v].inputs if i in every] for v in pending}
    outcome: dict[str, Node] = {}
    running: dict[str, build.Job] = {}

    def settle(node: Node) -> None:
        outcome[node.volume] = node
        if progress:
            progress(node)

    while pending or running:
        for volume in list(pending):
            if len(running) >= jobs:
                break
            if any(d in running or d in pending for d in deps[volume]):
                continue  # an upstream node is not done yet
            pending.remove(volume)
            bad = [d for d in deps[volume] if d in outcome and outcome[d].action in ("failed", "skipped")]
            if bad:
                settle(Node(volume, "skipped", f"upstream {bad[0]} {outcome[bad[0]].action}"))
                continue
            rebuilt = [d for d in deps[volume] if d in outcome and outcome[d].action == "rebuild"]
            try:
                now = None if rebuilt else build.resolve_inputs(ws, every[volume])
                why = f"upstream {rebuilt[0]} is rebuilt first" if rebuilt else staleness(ws, every[volume], now)
            except SnapverError as e:
                settle(Node(volume, "failed", str(e)))
                continue
            if why is None:
                settle(Node(volume, "up-to-date", "inputs unchanged since its last build"))
                continue
            if dry_run:
                settle(Node(volume, "rebuild", why))
                continue
            try:
                job = build.prepare(ws, volume, now, run_as)
                build.start(job)
            except SnapverError as e:
                settle(Node(volume, "failed", str(e)))
                continue
            job.reason = why
            running[volume] = job
        finished = [v for v, j in running.items() if build.poll(j) is not None]
        for volume in finished:
            job = running.pop(volume)
            try:
                result = build.finish(job)
            except SnapverError as e:
                settle(Node(volume, "failed", str(e)))
                continue
            action = "built" if result.ok else "failed"
            reason = job.reason if result.ok else f"exit code {result.exit_code}, log {result.log}"
            settle(Node(volume, action, reason, result))
        if running and not finished:
            time.sleep(0.01)
    return [outcome[v] for v in chosen]
