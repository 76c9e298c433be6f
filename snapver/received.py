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

Receives are locked and journaled at the lake (Receiving), and an interrupted one is
finished here (finish_receive): in the core, so that doctor repairs it without
importing transfer, which receives through it.
"""

from __future__ import annotations

from pathlib import Path

from .gitrepo import git_as_owner

from . import journal, lock

def unknown(where: list[Path], shas: set[str]) -> set[str]:
    """Of shas, the commits no working tree's object database has: one `git cat-file
    --batch-check` per tree (as its owner, as gc reads its refs), fed only these shas. A
    tree Git cannot read knows nothing (so: keep)."""
    left = set(shas)
    for tree in where:
        if not left:
            break
        ask = "".join(f"{sha}\n" for sha in sorted(left))
        done = git_as_owner(tree, ["cat-file", "--batch-check=%(objectname) %(objecttype)"], input=ask)
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


class Receiving:
    """Where the receives into one project of a lake are locked and journaled: at the lake,
    not in a workspace, because the far end of a push has none. One receive at a time per
    project; doctor, run in any workspace of the project on that lake, takes the same lock."""

    def __init__(self, backend, catalog, project: str):
        self.backend, self.catalog, self.project = backend, catalog, project
        self.id = journal.receiving_id(project)

    def lock(self):
        return lock.held(self.backend.root / f".receive-{self.project}.lock",
                         what=f"receiving into project {self.project}")


def finish_receive(end: Receiving, op) -> str:
    """The repair of an interrupted receive: finished if its snapshot arrived whole, else
    over (what the stream left is the backend's half_received, or the next receive's)."""
    volume, name = op.intent["volume"], op.intent["name"]
    snap = end.backend.find(end.project, volume, name)
    if snap is None:
        return f"the interrupted receive of {volume}@{name} is over; push or pull it again"
    end.backend.seal_received(end.project, volume, name)
    with end.catalog.batch():
        end.catalog.record_received(snap, op.intent.get("rows") or {})
    return f"the interrupted receive of {volume}@{name} is finished: the snapshot had arrived"
