"""Where a snapshot stands in the commit graph: the order in which its ancestors make
good bases for an incremental send (the parent first, then up the first-parent line,
then the rest of the history breadth first), never the newest snapshot by time."""

from __future__ import annotations

from collections import deque

from . import names
from .errors import SnapverError
from .received import unknown


def parent_map(git, shas) -> dict[str, list[str]]:
    """commit -> its parents, for every commit the given ones reach (one `git rev-list`)."""
    shas = sorted(set(shas))
    if not shas:
        return {}
    out = git.git("rev-list", "--parents", *shas, "--")
    return {line.split()[0]: line.split()[1:] for line in out.splitlines() if line}


def ancestors(parents: dict[str, list[str]], name: str):
    """The commits a snapshot descends from, nearest first: the first-parent line, then the
    rest of the graph breadth first (a wip's own commit comes before everything)."""
    parsed = names.parse_snapshot_name(name)
    if not parsed:
        return
    commit, kind = parsed[0], parsed[1]
    seen: set[str] = set()
    line = [commit] if kind == "wip" else list(parents.get(commit, [])[:1])
    rest = deque([] if kind == "wip" else parents.get(commit, [])[1:])
    while line:
        c = line.pop()
        if c in seen:
            continue
        seen.add(c)
        yield c
        ps = parents.get(c, [])
        line.extend(ps[:1])
        rest.extend(ps[1:])
    while rest:
        c = rest.popleft()
        if c in seen:
            continue
        seen.add(c)
        yield c
        rest.extend(parents.get(c, []))


def parents_of(ws, keys) -> dict[str, list[str]]:
    """The commit graph above the snapshots being sent (for choosing their bases)."""
    shas = _known(ws, {parsed[0] for _, n in keys if (parsed := names.parse_snapshot_name(n))})
    try:
        return parent_map(ws.git, shas)
    except SnapverError:
        return {}


def _known(ws, shas: set[str]) -> set[str]:
    return shas - unknown([ws.git.toplevel], shas)
