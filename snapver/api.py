"""The Python API for training code: snapshot with metrics, and paths of versions.

    import snapver
    snapver.snapshot(message="epoch 10", metrics={"accuracy": 0.93})
    weights = snapver.path("models", rev="release:prod") / "model.pt"
"""

from __future__ import annotations

from pathlib import Path

from . import ops


def snapshot(message: str | None = None, metrics: dict | None = None, params: dict | None = None,
             wip: bool = True, cwd: Path | str = ".") -> dict[str, str]:
    """Snapshot every volume of the working tree at cwd (a wip snapshot unless wip=False, which
    takes HEAD's commit snapshot) and record metrics and params with it.

    Routed as `snapver snapshot` is (the operations table): through snapverd for a user who
    is not root, where one listens. Returns {volume: snapshot name}. Nested keys are
    flattened with dots.
    """
    snaps = ops.call("snapshot", {"wip": wip, "message": message, "metrics": metrics or {},
                                  "params": params or {}, "source": "api"}, path=cwd)
    return {s["volume"]: s["name"] for s in snaps}


def path(volume: str, rev: str | None = "HEAD", cwd: Path | str = ".") -> Path:
    """Where the read-only files of volume at rev are (rev: a commit-ish, a snapshot name or
    release:NAME); rev=None gives the live, writable volume."""
    return Path(ops.call("path", {"volume": volume, "rev": rev}, path=cwd))
