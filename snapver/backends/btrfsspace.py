"""Space on Btrfs (du, show --space) without walking a snapshot's files more than once (issue 19).

What the kernel offers was weighed first: simple quotas need btrfs-progs 6.7+ (Debian 12 has
6.2) and count a block against the subvolume that wrote it, not what a snapshot shows or
would free; qgroups give exactly that, but have the kernel trace shared trees when a
snapshot or retired volume is deleted (or mark themselves inconsistent until a rescan of
the whole filesystem), which is the very work checkouts keep off their path (not measured
here yet). So Btrfs keeps its walk (`btrfs filesystem du`, FIEMAP per file), and this
module remembers its answers in <lake>/space-cache.json:

- a snapshot's referenced bytes never change (it is read-only): kept by its UUID forever;
- its exclusive bytes (what deleting it frees) change whenever a subvolume that shares
  blocks with it comes or goes or is written: kept with a key made of every subvolume of
  the project (UUID and generation), so any such change measures again. Blocks shared by
  reflink with files outside the project are not in the key: there exclusive may be
  overstated until something in the project changes;
- a live volume not written since it was cloned from, or snapshotted as, a snapshot shows
  that snapshot's bytes and holds none of its own: no walk; a written one is walked and
  kept like a snapshot's exclusive bytes (its generation is in the key).

A walk says so on stderr when stderr is a terminal (what it measures: one line, rewritten).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

from .. import linux
from ..errors import SnapverError
from .base import Space

CACHE = "space-cache.json"


class SpaceCache:
    def __init__(self, root: Path):
        self._path = root / CACHE
        try:
            self._doc = json.loads(self._path.read_text())
            if not isinstance(self._doc, dict):
                raise ValueError
        except (OSError, ValueError):
            self._doc = {}

    def get(self, uuid: str, key: str) -> Space | None:
        hit = self._doc.get(uuid)
        if isinstance(hit, list) and len(hit) == 3 and hit[2] == key:
            return Space(referenced=int(hit[0]), exclusive=int(hit[1]))
        return None

    def referenced(self, uuid: str) -> int | None:
        hit = self._doc.get(uuid)
        return int(hit[0]) if isinstance(hit, list) and len(hit) == 3 else None

    def put(self, uuid: str, key: str, space: Space, alive: set[str] | None = None) -> None:
        self._doc[uuid] = [space.referenced, space.exclusive, key]
        if alive is not None:  # forget what is gone
            self._doc = {u: v for u, v in self._doc.items() if u in alive or u.startswith("footprint:")}
        tmp = self._path.with_name(f"{CACHE}.{os.getpid()}")
        try:
            # 0644 whatever the umask: only who owns the lake may teach it sizes.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "w") as f:
                os.fchmod(fd, 0o644)
                f.write(json.dumps(self._doc))
            os.replace(tmp, self._path)
        except OSError:
            tmp.unlink(missing_ok=True)  # a lake the caller may not write: no cache, same answers


def key(infos: list[tuple[str, int]]) -> str:
    """What exclusive bytes depend on: every subvolume of the project, as (uuid, generation)."""
    return hashlib.sha256(repr(sorted(infos)).encode()).hexdigest()[:32]


def progress(what: str) -> None:
    if sys.stderr.isatty():
        sys.stderr.write(f"\rmeasuring {what} (walks its files once; remembered after)\x1b[K")
        sys.stderr.flush()


def done() -> None:
    if sys.stderr.isatty():
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()


def subvolumes(project_dir: Path, info) -> list[tuple[str, int]]:
    """(uuid, generation) of every subvolume snapver keeps in a project folder: snapshots,
    live volumes, volumes waiting in a workspace's trash. `info` is btrfs.subvol_info."""
    # Writes reach a subvolume's generation when their transaction commits (as in btrfs.mark).
    linux.syncfs(project_dir)
    found = []
    for pattern in ("snapshots/*/*", "workspaces/*/*", "workspaces/*/.*", "workspaces/*/.trash/*/*"):
        for path in sorted(project_dir.glob(pattern)):
            try:
                if path.is_dir() and not path.is_symlink() and path.stat().st_ino == 256:
                    i = info(path)
                    found.append((i.uuid, i.generation))
            except (OSError, SnapverError):
                continue  # deleted meanwhile
    return found


def snapshot_space(root: Path, project_dir: Path, path: Path, what: str, du, info) -> Space:
    """A snapshot's (or a live volume's) Space, walked (du) only when the cache cannot answer."""
    cache = SpaceCache(root)
    mine = info(path).uuid
    subs = subvolumes(project_dir, info)
    k = key(subs)
    hit = cache.get(mine, k)
    if hit is None:
        progress(what)
        try:
            hit = du(path)
        finally:
            done()
        cache.put(mine, k, hit, alive={u for u, _ in subs})
    return hit


def live_space(root: Path, project_dir: Path, live: Path, snapshots: Path, du, info) -> Space:
    """A live volume's Space: its twin snapshot's bytes, none of its own, where it was not
    written since it was cloned from one or snapshotted as one; else walked."""
    me = info(live)
    for path in sorted(snapshots.glob("*")):
        try:
            s = info(path)
        except (OSError, SnapverError):
            continue
        cloned_unwritten = me.parent_uuid == s.uuid and me.generation <= me.otransid
        snapshotted_since = s.parent_uuid == me.uuid and s.otransid >= me.generation
        if cloned_unwritten or snapshotted_since:
            twin = snapshot_space(root, project_dir, path, f"snapshot {path.name}", du, info)
            return Space(referenced=twin.referenced, exclusive=0)
    # Its own generation is in the key: remembered until it is written again.
    return snapshot_space(root, project_dir, live, f"live volume {live.name}", du, info)


def footprint(root: Path, project_dir: Path, measure, info) -> tuple[int, int]:
    """(full copies, on disk) of a project, walked (measure) only when any subvolume of it
    came, went or was written since the last time."""
    cache = SpaceCache(root)
    name, k = f"footprint:{project_dir.name}", key(subvolumes(project_dir, info))
    hit = cache.get(name, k)
    if hit is None:
        progress(f"project {project_dir.name}")
        try:
            hit = Space(*measure())
        finally:
            done()
        cache.put(name, k, hit)
    return hit.referenced, hit.exclusive
