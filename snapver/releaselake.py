"""A release on the lake itself: its name, its stable paths and its ZFS holds, apart from
the workspace that moves it (releases.py), so that the far end of a push, which has only the
lake, moves a release it is sent (registrysync.py) the same way.

Each function takes `ws`: anything with `.backend` and `.project` (a Workspace, or
registrysync's Lakeside).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from .errors import CommandFailed, SnapverError
from .lock import held

HOLD_TAG = "snapver-release:"
_RELEASE_NAME = re.compile(r"[A-Za-z0-9._][A-Za-z0-9._-]{0,62}")


def check_release_name(name: str) -> str:
    if not isinstance(name, str) or not _RELEASE_NAME.fullmatch(name) or set(name) <= {"."}:
        raise SnapverError(
            f"{name!r} is not a valid release name: use 1-63 letters, digits, '.', '_' or '-', "
            "not starting with '-'"
        )
    return name


# ------------------------------------------------------------------ stable paths

def stable_dir(ws, name: str) -> Path:
    return Path(ws.backend.root) / ws.project / "releases" / check_release_name(name)


def _lock(ws, name: str):
    """One mover of the project's releases at a time (moves are rare and quick): so that the
    stable paths and holds end where the catalog's last move says."""
    return held(stable_dir(ws, name).parent / ".lock", what=f"the releases of {ws.project}")


def _point(ws, name: str, snaps: dict) -> None:
    """Make <lake>/<project>/releases/NAME/<volume> lead to snaps[volume], each by one rename
    over the old link; links of volumes the release no longer pins go."""
    folder = stable_dir(ws, name)
    folder.mkdir(parents=True, exist_ok=True)
    for volume, snap in snaps.items():
        link, new = folder / volume, folder / f".{volume}.new-{os.getpid()}"
        if os.path.lexists(new):
            os.unlink(new)
        # Relative: the link stays right wherever the lake is mounted.
        os.symlink(os.path.relpath(snap.path, folder), new)
        os.rename(new, link)
    for entry in os.listdir(folder):
        if not entry.startswith(".") and entry not in snaps and os.path.islink(folder / entry):
            os.unlink(folder / entry)
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)  # the renames survive a crash
    finally:
        os.close(fd)


def _unpoint(ws, name: str) -> None:
    folder = stable_dir(ws, name)
    if not folder.is_dir():
        return
    for entry in os.listdir(folder):
        if os.path.islink(folder / entry):
            os.unlink(folder / entry)
    try:
        os.rmdir(folder)
    except OSError:
        pass  # something else was put there: not ours to remove


# ------------------------------------------------------------------ holds

def _hold(ws, snaps: dict, name: str) -> list:
    with ws.backend.steady():  # the lock is held: one read of the lake for every volume
        return _hold_each(ws, snaps, name)


def _hold_each(ws, snaps: dict, name: str) -> list:
    held_now = []
    try:
        for snap in snaps.values():
            try:
                ws.backend.hold(snap, HOLD_TAG + name)
            except CommandFailed as e:
                if "tag already exists" not in str(e):
                    raise
                continue  # held by an earlier move that a crash cut short: already as wanted
            held_now.append(snap)
    except BaseException:
        _unhold(ws, held_now, name)
        raise
    return held_now


def _unhold(ws, snaps, name: str) -> None:
    with ws.backend.steady():
        for snap in snaps:
            ws.backend.unhold(snap, HOLD_TAG + name)


def _unhold_old(ws, name: str, old, keep: str | None) -> None:
    """Let go of the snapshots release NAME pinned before (old: its former row)."""
    if old is None or old["snapshot"] == keep:
        return
    with ws.backend.steady():
        for v in old["volumes"].split():
            snap = ws.backend.find(ws.project, v, old["snapshot"])
            if snap is not None:
                ws.backend.unhold(snap, HOLD_TAG + name)
