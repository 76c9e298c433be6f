"""Restoring: one file or folder copied back from a snapshot into place, never half a file.

Split out of lake.py (Workspace.restore calls it). A kill at any point leaves either the
old or the new content at the path, and the temporary names in the journal for doctor.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from pathlib import Path, PurePosixPath

from . import faults, journal
from .backends.base import Snapshot
from .errors import NotFound, SnapverError
from .proc import run
from .safeio import inside


def restore(ws, rev: str, path: str, to: str | None = None, cwd: Path | None = None) -> tuple[Path, Snapshot]:
    """Copy one file or folder back from rev's snapshot, leaving the rest as it is."""
    volume, inner = split_volume_path(ws, path, cwd or Path.cwd())
    snap = ws.resolve(rev, [volume])[0].get(volume)
    if snap is None:
        raise NotFound(f"{volume} did not exist at {rev}")
    source = _inside(snap.path, inner, f"{path} is not in the snapshot of {volume} at {rev}")
    if to is None:
        dest = _inside(ws.live_path(volume), inner, f"{path} leaves the volume", must_exist=False)
    else:
        dest = (cwd or Path.cwd()) / to
        if os.path.lexists(dest):
            raise SnapverError(f"{to} already exists: remove it or choose another --to")
    with ws.lock():
        if to is None and os.path.lexists(dest):
            ws._keep_changes([volume], f"kept before restore of {path} from {rev}")
        tag = os.urandom(4).hex()
        tmp = dest.with_name(f".{dest.name}.snapver-restore-{tag}")
        old = dest.with_name(f".{dest.name}.snapver-old-{tag}")
        # Journaled, so that a kill leaves doctor the temporary names (no walk to find them)
        # and the next snapshot does not take a half-made copy into history.
        op = ws._journal("restore", {"dest": str(dest), "tmp": str(tmp), "old": str(old)})
        try:
            copy_into_place(source, dest, tmp, old)
        except BaseException:
            if op is None or os.path.lexists(tmp) or os.path.lexists(old):
                raise  # left for doctor, which knows the names from the journal
            with contextlib.suppress(sqlite3.Error):
                journal.close(ws, op)
            raise
        if op is not None:
            with contextlib.suppress(sqlite3.Error):
                journal.close(ws, op)
    return dest, snap


def split_volume_path(ws, path: str, cwd: Path) -> tuple[str, PurePosixPath]:
    if not path or "\0" in path:
        raise SnapverError("give the path of a file or folder inside a volume, e.g. models/model.pt")
    if os.path.isabs(path):
        raise SnapverError(
            f"{path} is absolute: give it relative to the repository, e.g. models/model.pt"
        )
    here = os.path.relpath(os.path.abspath(cwd), ws.git.toplevel)
    rel = PurePosixPath(os.path.normpath(os.path.join(here, path)))
    if not rel.parts or rel.parts[0] == ".." or rel.parts[0] not in ws.volumes:
        raise SnapverError(
            f"{path!r} is not inside a volume: paths start with one of {', '.join(ws.volumes)}"
        )
    return rel.parts[0], PurePosixPath(*rel.parts[1:])


def _inside(root: Path, inner: PurePosixPath, what: str, must_exist: bool = True) -> Path:
    """root/inner, refusing anything that would leave root, through '..' or a symlink."""
    target = inside(root, Path(root, inner))
    if target is None:
        if os.path.realpath(os.path.join(root, inner)) == os.path.realpath(root):
            raise SnapverError(f"{what}: name a file or folder inside the volume, not the whole volume")
        raise SnapverError(f"{what}: it leads outside the volume (through a symlink or '..')")
    if must_exist and not os.path.lexists(target):
        raise NotFound(what)
    return target


def copy_into_place(source: Path, dest: Path, tmp: Path, old: Path) -> None:
    """Reflink-copy source next to dest (as tmp), then rename it over dest: never half a file.
    A folder is swapped with two renames, the old one going to `old` and then away."""
    import shutil  # stdlib, but ~2 ms of every hook's start-up for a rare path

    dest.parent.mkdir(parents=True, exist_ok=True)
    run(["cp", "-a", "--reflink=auto", "--no-target-directory", "--", str(source), str(tmp)])
    faults.point("restore-copied")
    try:
        if dest.is_dir() and not dest.is_symlink():
            os.rename(dest, old)
            faults.point("restore-moved")
            os.rename(tmp, dest)
            shutil.rmtree(old)
        else:
            os.replace(tmp, dest)
    except BaseException:
        if os.path.lexists(tmp):
            shutil.rmtree(tmp) if tmp.is_dir() else tmp.unlink()
        raise
