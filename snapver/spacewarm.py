"""A volume's first snapshot measured right after it is taken, off the user's path (issue 19).

A snapshot's space on Btrfs comes from the send stream to a sibling whose referenced bytes
are known (backends/btrfsspace.py): O(changes). The first snapshot of a volume has no such
sibling, and its bytes are only known by walking its files (nothing in the filesystem adds
them up short of qgroups, which the README says why not). So when a snapshot is taken of a
volume none of whose snapshots has known bytes (one stat per volume, on the hook's path:
Backend.space_owed), a process of its own, in a new session like the model scan's
(scan.start_detached), measures the volume's newest snapshot: the walk, once, while the user
goes on, and every later one is O(changes). A command asking meanwhile waits for that walk
rather than walking the same files too (btrfsspace.walk_lock), and says so on a terminal.
"""

from __future__ import annotations

import os

from . import proc, seams

NO_SPACE_PROCESS = "SNAPVER_TEST_NO_SPACE_PROCESS"  # the test suite's default: no process left running


def after_snapshot(ws, snaps) -> None:
    """Start the measure where a volume of snaps has no snapshot of known bytes; never raises."""
    if not snaps or os.environ.get(NO_SPACE_PROCESS) == "1":
        return
    try:
        owed = any(ws.backend.space_owed(s.project, s.volume) for s in snaps)
        toplevel = ws.git.toplevel if owed else None
    except Exception:  # noqa: BLE001 - the snapshot is taken; a measure not started is the walk later
        return
    if toplevel is None:
        return
    proc.start_hook_job("space-pending", toplevel)


def measure_pending(ws) -> list[dict]:
    """Measure the newest snapshot of each volume whose space is owed (the process above):
    [{volume, snapshot, referenced}]."""
    done = []
    for volume in ws.volumes:
        if not ws.backend.space_owed(ws.project, volume):
            continue
        snaps = sorted(ws.backend.snapshots(ws.project, volume), key=lambda s: s.age_key)
        if snaps:
            space = ws.backend.space(snaps[-1])
            done.append({"volume": volume, "snapshot": snaps[-1].name, "referenced": space.referenced})
    return done


seams.plug(taken=after_snapshot)
