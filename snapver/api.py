"""The Python API for training code: snapshot with metrics, and paths of versions.

    import snapver
    snapver.log_metrics({"loss": 0.4}, step=120)                          # kept as the run's history
    snapver.snapshot(message="epoch 10", metrics={"accuracy": 0.93}, step=10)
    weights = snapver.path("models", rev="release:prod") / "model.pt"
"""

from __future__ import annotations

import os
from datetime import datetime, timezone
from pathlib import Path

from . import ops

_run: str | None = None


def current_run() -> str:
    """This process's run: SNAPVER_RUN if set (to continue a run across processes, or name it),
    else the UTC time of the first metric it logged. One training process is one run, so that a
    second run on the same commit does not overwrite the first one's steps."""
    global _run
    if _run is None:
        _run = os.environ.get("SNAPVER_RUN") or datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return _run


def snapshot(message: str | None = None, metrics: dict | None = None, params: dict | None = None,
             wip: bool = True, cwd: Path | str = ".", step: int | None = None,
             run: str | None = None) -> dict[str, str]:
    """Snapshot every volume of the working tree at cwd (a wip snapshot unless wip=False, which
    takes HEAD's commit snapshot) and record metrics and params with it.

    The metrics are also a step of the run's history (as log_metrics: step None is the run's
    next one), which stays when gc thins the wip away. Routed as `snapver snapshot` is (the
    operations table): through snapverd for a user who is not root, where one listens.
    Returns {volume: snapshot name}. Nested keys are flattened with dots.
    """
    snaps = ops.call("snapshot", {"wip": wip, "message": message, "metrics": metrics or {},
                                  "params": params or {}, "source": "api", "step": step,
                                  "run": run or current_run()}, path=cwd)
    return {s["volume"]: s["name"] for s in snaps}


def log_metrics(metrics: dict, step: int | None = None, run: str | None = None, cwd: Path | str = ".") -> dict:
    """Record one step of metrics (no snapshot) in the history of this run, on the line of work
    HEAD is on: `snapver metrics history KEY` shows them. step None: the run's next step (0
    first); a step logged again replaces it. run: default this process's (current_run()).
    Returns {commit, workspace, run, step, keys}."""
    return ops.call("log-metrics", {"metrics": metrics, "step": step, "run": run or current_run()}, path=cwd)


def path(volume: str, rev: str | None = "HEAD", cwd: Path | str = ".") -> Path:
    """Where the read-only files of volume at rev are (rev: a commit-ish, a snapshot name or
    release:NAME); rev=None gives the live, writable volume."""
    return Path(ops.call("path", {"volume": volume, "rev": rev}, path=cwd))
