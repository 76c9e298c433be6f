"""What a lake keeps of what it was sent: unknown commits, and pins that travelled.

A lake that receives snapshots (push, pull) may hold commits that no clone of
the project on it has ever fetched: gc cannot call those unreachable, it has no
Git history to decide by. They are *unknown*, and gc keeps them until
`snapver gc --forget-unknown AGE` lets them go (their age counts from their
arrival on this lake: the Btrfs received subvolume's own creation time, the
ZFS property snapver:received).

A release (or any pin) on the lake a snapshot came from travels with it: the
receiving lake records it here, in its catalog, and gc keeps what it pins, also
when the release itself is never copied into this lake's registry.
"""

from __future__ import annotations

import subprocess
from pathlib import Path


def unknown(trees: list[Path], shas: set[str]) -> set[str]:
    """Of shas, the commits no tree's object database has: one `git cat-file --batch-check`
    per tree, fed only these shas. A tree Git cannot read knows nothing (so: keep)."""
    left = set(shas)
    for tree in trees:
        if not left:
            break
        ask = "".join(f"{sha}\n" for sha in sorted(left))
        done = subprocess.run(["git", "cat-file", "--batch-check=%(objectname) %(objecttype)"], cwd=tree,
                              input=ask, capture_output=True, text=True)
        if done.returncode != 0:
            continue
        for line in done.stdout.splitlines():
            sha, _, kind = line.partition(" ")
            if kind == "commit":
                left.discard(sha)
    return left


# ------------------------------------------------------------------ pins that travel

def pins(catalog, project: str) -> list[list[str]]:
    """[volume, snapshot, pin] of every pin this lake knows: its own releases, and the
    pins that came with what it received (so they travel on from here too)."""
    found = {(v, n, p) for v, n, p in catalog.received_pins(project)}
    for r in catalog.releases(project):
        found.update((v, r["snapshot"], f"release {r['name']}") for v in r["volumes"].split())
    return sorted([v, n, p] for v, n, p in found)


def record_pins(catalog, project: str, given: list, present: set[tuple[str, str]]) -> int:
    """Record the pins that came from the other lake, for the snapshots this lake holds."""
    rows = [(project, v, n, p) for v, n, p in given
            if (v, n) in present and isinstance(p, str) and 0 < len(p) <= 200 and p.isprintable()]
    if rows:
        catalog.add_received_pins(rows)
    return len(rows)


def pinned(catalog, project: str) -> dict[tuple[str, str], str]:
    """(volume, snapshot) -> why gc keeps it: a pin it arrived with."""
    keep: dict[tuple[str, str], str] = {}
    for v, n, p in catalog.received_pins(project):
        keep.setdefault((v, n), f"{p} on a lake it came from")
    return keep
