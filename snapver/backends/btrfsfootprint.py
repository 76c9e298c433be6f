"""A project's footprint on Btrfs, `snapver du`'s last line: (full copies, on disk) (issues 16, 19).

- full copies: what every snapshot and live volume of the project would take as copies of
  their own: the sum of their referenced bytes (the walk's Total). Each comes from what
  btrfsspace keeps (a snapshot's never changes) or its O(changes) measure, not from a walk of
  the project. Volumes a checkout retired and has not yet deleted (gc deletes them; space
  accounting first deletes those settled) and the live volumes' temporary snapshots are no
  volumes of the project, and are not counted; the walk of the folder counted the former.
- on disk: where the lake is its own filesystem (the embedded default, a loop-mounted image:
  the lake is the filesystem's top-level subvolume, mounted at its root, and holds no other
  project), the filesystem's own account of its data: the `used` bytes of its data block
  groups (`btrfs filesystem df -b`, logical bytes, before RAID/DUP copies), read at once.
  Its metadata (trees, and files small enough to be inlined there, which the walk does not
  count either) is given apart. This differs from the walk's "each extent counted once" by
  the lake's own files (the catalog), the unreferenced rest of partly overwritten extents
  (the filesystem still holds them), compression (the bytes on disk, not the file's), and
  deletions the cleaner has not finished: what the disk really holds.
  Elsewhere (a lake folder on a larger filesystem) the walk of the project folder stays,
  remembered until a subvolume of the project comes, goes or is written, behind a progress
  line on a terminal.
"""

from __future__ import annotations

import os
from pathlib import Path

from .. import linux
from ..errors import SnapverError
from ..proc import run
from .base import Space
from .btrfslive import live_space
from .btrfsspace import DELTA, SpaceCache, _Store, delta_space, key, siblings, snapshot_space, subvolumes, walk


def full_copies(root: Path, project_dir: Path, du, info, take) -> int:
    """The sum of the referenced bytes of every snapshot and live volume of the project."""
    store, total = _Store(root), 0
    snapshots = project_dir / "snapshots"
    for folder in _subfolders(snapshots):
        for name, v in sorted(siblings(store, folder, info).items()):
            if len(v) > 2:
                total += int(v[2])
                continue
            ref = SpaceCache(root).referenced(v[0])
            if ref is None:
                path = folder / name
                found = delta_space(root, path, du, info) or snapshot_space(
                    root, project_dir, path, f"snapshot {folder.name}@{name}", du, info)
                ref = found.referenced
            total += ref
    for workspace in _subfolders(project_dir / "workspaces"):
        for live in _subfolders(workspace):
            if not live.name.startswith(".") and _is_subvolume(live):
                total += live_space(root, project_dir, live, snapshots / live.name, du, info, take).referenced
    return total


def filesystem_bytes(root: Path, project_dir: Path, subvol_id) -> tuple[int, int] | None:
    """(data, metadata) bytes the filesystem uses, where the lake is the whole filesystem and
    this project its only one; None elsewhere."""
    real = Path(os.path.realpath(root))
    try:
        if linux.mount_of(real).mountpoint != real or os.stat(real).st_ino != 256 or subvol_id(real) != 5:
            return None
        for entry in os.scandir(real):
            # The project, the space caches; other files are the lake's own (the catalog, locks).
            if entry.name not in (project_dir.name, DELTA) and entry.is_dir(follow_symlinks=False):
                return None
    except (OSError, SnapverError):
        return None
    linux.syncfs(real)  # what was written so far (the caches' files too) in the figures
    data = metadata = 0
    for line in run(["btrfs", "filesystem", "df", "-b", str(real)]).splitlines():
        kind, _, rest = line.partition(",")
        used = [f.split("=", 1)[1] for f in rest.replace(",", " ").split() if f.startswith("used=")]
        if used and kind.strip() == "Data":
            data += int(used[0])
        elif used and kind.strip() == "Metadata":
            metadata += int(used[0])
    return data, metadata


def walked_on_disk(root: Path, project_dir: Path, info) -> int:
    """The walk's on-disk bytes of the project folder (each extent once: Exclusive + Set
    shared), remembered until a subvolume of it comes, goes or is written."""
    cache, name = SpaceCache(root), f"footprint:{project_dir.name}"
    k = key(subvolumes(project_dir, info))
    hit = cache.get(name, k)
    if hit is None:
        def measure(path: Path) -> Space:
            out = run(["btrfs", "filesystem", "du", "-s", "--raw", str(path)])
            total, exclusive, shared = out.splitlines()[-1].split()[:3]
            return Space(referenced=int(total), exclusive=int(exclusive) + int(shared))

        hit = walk(root, project_dir, f"project {project_dir.name}", measure,
                   lambda: SpaceCache(root).get(name, k), lock=f"footprint-{project_dir.name}")
        SpaceCache(root).put(name, k, hit)
    return hit.exclusive


def _subfolders(folder: Path) -> list[Path]:
    try:
        return [folder / n for n in sorted(os.listdir(folder)) if (folder / n).is_dir()]
    except OSError:
        return []


def _is_subvolume(path: Path) -> bool:
    try:
        return not path.is_symlink() and path.stat().st_ino == 256
    except OSError:
        return False
