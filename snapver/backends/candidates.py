"""Paths a filesystem's change tracking names, judged by the walk's own rules.

Both O(changes) diffs (btrfsdiff from a send stream, zfsdiff from `zfs diff`) only learn
*where* something may have changed. Those names are candidates, not the answer: the answer
comes from base.walk_entry applied to them, so the result is the walk's, path for path and
in the walk's order. A candidate is either an entry (compare that entry, and for a folder
only the candidates below it) or a whole subtree (compare everything below, as the walk
would: a rename moves a subtree without naming what is in it).

One thing neither names for sure: every name of a file with several hard links. A write to
the file is reported under one of its names (maybe a new one), and the walk calls each old
name changed too. So a changed or added file that has more than one link in the new tree
sends the whole diff back to the walk (judge: None); hard links are rare in a data lake.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .base import Change, walk_entry


class Candidates:
    """A tree of the paths a stream named: node -> {name: node}, and which are whole."""

    def __init__(self) -> None:
        self.children: dict[str, Candidates] = {}
        self.whole = False
        self.listing = False  # a folder whose names may differ beyond its named children

    def add(self, path: str, whole: bool, listing: bool = False) -> None:
        node = self
        for part in path.split("/"):
            if part:
                node = node.children.setdefault(part, Candidates())
        node.whole = node.whole or whole
        node.listing = node.listing or listing


def judge(old: Path, new: Path, found: Candidates) -> list[Change] | None:
    """The walk's changes from old to new, looking at found's candidates only; None where a
    changed file has other names the candidates may not hold (the caller walks)."""
    changes: list[Change] = []
    compare(old, new, "", found, changes)
    for change in changes:
        if change.change != "deleted" and not change.path.endswith("/"):
            st = _lstat(new / change.path)
            if st is not None and stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                return None
    return changes


def compare(old: Path, new: Path, rel: str, node: Candidates, changes: list[Change]) -> None:
    """The walk's answer for the folder rel, looking only at node's candidates in it (and, in
    a folder whose listing changed, at every name that is on one side only)."""
    children = node.children
    if node.listing:
        children = dict(children)
        for name in _names(old / rel) ^ _names(new / rel):
            children.setdefault(name, Candidates()).whole = True
    for name in sorted(children):
        child = children[name]
        path = f"{rel}/{name}" if rel else name
        sa, sb = _lstat(old / path), _lstat(new / path)
        if child.whole or sa is None or sb is None:
            walk_entry(old, new, path, sa, sb, changes)
        elif stat.S_ISDIR(sa.st_mode) and stat.S_ISDIR(sb.st_mode):
            compare(old, new, path, child, changes)
        else:
            walk_entry(old, new, path, sa, sb, changes)


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _names(folder: Path) -> set[str]:
    try:
        return set(os.listdir(folder))
    except (FileNotFoundError, NotADirectoryError):
        return set()
