"""Where features plug into the core. The core never imports a feature; a feature (the
registry today, cascades later) adds, when it is imported, what the core calls here.

The operations layer (ops.py) and the API import the features, so every entry point
(CLI, hooks, daemon, API) has them plugged in before it opens a workspace. A core used
without any feature loaded still keeps what it must: gc refuses to run when no
protector is plugged in (Workspace.protected), rather than miss a release.

- snapshot_taken: fn(ws, snaps) after a snapshot set is recorded (metrics, provenance,
  model scan); it must not raise: the snapshot is taken.
- gc_protectors: fn(ws) -> {(volume, snapshot name): why}: what gc must keep and a cut
  snapshot set must not be undone over (releases).
- rev_prefixes: {"release:": fn(ws, rest, volumes) -> ({volume: Snapshot}, commit)}, a
  revision naming something a feature keeps.
- repairs: {kind: fn(ws, op) -> line}: doctor --repair of a feature's interrupted operation.
- leftovers: fn(ws, repair) -> [line]: what a feature's killed work left in the lake (a build's
  clone), found from the filesystem alone; with repair=True removed.
- paths_moved: fn(ws) after a checkout, build or gc on a lake whose snapshot paths move
  (Backend.snapshot_paths_move): links a feature keeps into snapshots (releases' stable
  paths) are pointed again; it must not raise: the checkout is done.
"""

from __future__ import annotations

from collections.abc import Callable

# Set by the Git hooks (githooks.main): what a snapshot_taken callback would do that is slow
# (reading a changed model to scan it) is left to a process of its own, off `git commit`'s path.
on_commit_path = False

snapshot_taken: list[Callable] = []
gc_protectors: list[Callable] = []
rev_prefixes: dict[str, Callable] = {}
repairs: dict[str, Callable] = {}
leftovers: list[Callable] = []
paths_moved: list[Callable] = []


def plug(*, taken: Callable | None = None, protector: Callable | None = None,
         prefixes: dict[str, Callable] | None = None, repair: dict[str, Callable] | None = None,
         leftover: Callable | None = None, moved: Callable | None = None) -> None:
    """Add a feature's callbacks; plugging the same one twice (a re-import) adds it once."""
    for seam, fn in ((snapshot_taken, taken), (gc_protectors, protector), (leftovers, leftover),
                     (paths_moved, moved)):
        if fn is not None and fn not in seam:
            seam.append(fn)
    rev_prefixes.update(prefixes or {})
    repairs.update(repair or {})
