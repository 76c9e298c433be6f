"""The Python API for training code: snapshot with metrics, and paths of versions.

    import snapver
    snapver.snapshot(message="epoch 10", metrics={"accuracy": 0.93})
    weights = snapver.path("models", rev="release:prod") / "model.pt"
"""

from __future__ import annotations

from pathlib import Path

from . import registry, releases  # noqa: F401  also plugs them into the core (metrics files, release:)
from .errors import NotFound
from .lake import Workspace


def snapshot(message: str | None = None, metrics: dict | None = None, params: dict | None = None,
             wip: bool = True, cwd: Path | str = ".") -> dict[str, str]:
    """Snapshot every volume of the working tree at cwd (a wip snapshot unless wip=False, which
    takes HEAD's commit snapshot) and record metrics and params with it.

    Returns {volume: snapshot name}. Nested keys are flattened with dots.
    """
    ws = Workspace.open(cwd)
    snaps = ws.snapshot(wip=wip, message=message)
    if snaps and (metrics or params):
        registry.record_values(ws, snaps[0].name, {"metric": metrics or {}, "param": params or {}}, source="api")
    return {s.volume: s.name for s in snaps}


def path(volume: str, rev: str | None = "HEAD", cwd: Path | str = ".") -> Path:
    """Where the read-only files of volume at rev are (rev: a commit-ish, a snapshot name or
    release:NAME); rev=None gives the live, writable volume."""
    ws = Workspace.open(cwd)
    vol = ws._volumes([volume])[0]
    if rev is None:
        return ws.live_path(vol)
    snap = ws.resolve(rev, [vol])[0].get(vol)
    if snap is None:
        raise NotFound(f"{vol} did not exist at {rev}")
    return Path(snap.path)
