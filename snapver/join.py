"""A clone joins its project by itself: `git clone` + `snapver init` on a lake that already
holds the project, even if snapver.toml was never committed.

A project is told by its history, not by a file: the lake's commit snapshots are named
after commit IDs, so a project whose snapshotted commits have this repository's root
commit(s) is this repository's project. Read from the filesystem (the source of truth,
also when the catalog was lost), one `git cat-file --batch-check` for all of them and one
`git rev-list --max-parents=0` per project; only at init.

The joining clone takes the snapver.toml of a clone of that project the catalog knows
(its registry, retention and remote settings with it), or, if none is there, one naming
the project, its volumes and the lake.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import NamedTuple

from .config import CONFIG_NAME, Config
from .errors import SnapverError


class Found(NamedTuple):
    config: Config
    text: str | None  # the snapver.toml of a clone of the project, to copy as it is
    said: str  # which project, and how it was found


def _roots(toplevel: Path, rev: str) -> set[str]:
    done = subprocess.run(["git", "rev-list", "--max-parents=0", rev], cwd=toplevel,
                          capture_output=True, text=True)
    return set(done.stdout.split()) if done.returncode == 0 else set()


def _present(toplevel: Path, shas: list[str]) -> set[str]:
    """Which of shas are commits in this repository (one process for all of them)."""
    if not shas:
        return set()
    done = subprocess.run(["git", "cat-file", "--batch-check=%(objectname) %(objecttype)"], cwd=toplevel,
                          input="".join(s + "\n" for s in shas), capture_output=True, text=True)
    return {parts[0] for parts in (line.split() for line in done.stdout.splitlines())
            if len(parts) == 2 and parts[1] == "commit"}


def find_project(git, backend, kind: str) -> Found | None:
    """The project in this lake whose history is this repository's, or None."""
    head = git.head()
    if head is None:
        return None
    ours = _roots(git.toplevel, head)
    by_project: dict[str, dict] = {}
    for snap in backend.snapshots(None, None, readable=False):
        p = by_project.setdefault(snap.project, {"commits": {}, "volumes": set(), "newest": snap.age_key})
        p["volumes"].add(snap.volume)
        p["newest"] = max(p["newest"], snap.age_key)
        if snap.kind == "commit":
            p["commits"][snap.commit] = snap.age_key
    present = _present(git.toplevel, [c for p in by_project.values() for c in p["commits"]])
    matches = []
    for project, p in by_project.items():
        mine = sorted((c for c in p["commits"] if c in present), key=lambda c: p["commits"][c], reverse=True)
        if mine and _roots(git.toplevel, mine[0]) & ours:
            matches.append((p["newest"], project, p))
    if not matches:
        return None
    matches.sort(reverse=True)
    _, project, p = matches[0]
    others = f" (also of this repository: {', '.join(m[1] for m in matches[1:])}; the newest was taken)" \
        if len(matches) > 1 else ""
    text, source = _clone_config(backend, project)
    if text is not None:
        config = Config.load(source) if source else None
        assert config is not None
        how = f"its snapver.toml copied from the clone at {source}"
    else:
        order = {v: i for i, v in enumerate(("data", "models", "logs"))}
        config = Config(project=project, volumes=sorted(p["volumes"], key=lambda v: (order.get(v, 3), v)),
                        backend=kind)
        how = "snapver.toml written for it"
    said = (f"joined project {project}, found in the lake by this repository's root commit "
            f"({CONFIG_NAME} was not committed): {how}{others}")
    return Found(config, text, said)


def _clone_config(backend, project: str) -> tuple[str | None, Path | None]:
    """The snapver.toml of a clone of project the lake's catalog knows, if one is readable."""
    from .catalog import Catalog

    path = backend.catalog_path
    if not Path(path).exists():
        return None, None
    catalog = Catalog(path)
    try:
        worktrees = [Path(r["worktree"]) for r in catalog.clones(project)]
    finally:
        catalog.close()
    for worktree in worktrees:
        try:
            text = (worktree / CONFIG_NAME).read_text()
            if Config.load(worktree).project == project:
                return text, worktree
        except (OSError, SnapverError):
            continue  # moved, deleted, unreadable or not this project's any more: the next
    return None, None


def adopt(git, backend, kind: str, volumes) -> Found | None:
    """The project on this lake that the repository belongs to, checked for joining: the
    volumes asked for are its own, and none is in the way in the working tree."""
    found = find_project(git, backend, kind)
    if found is None:
        return None
    if volumes and list(volumes) != found.config.volumes:
        raise SnapverError(f"{found.said}; it has the volumes {', '.join(found.config.volumes)}: pass no --volume")
    for v in found.config.volumes:
        if os.path.lexists(git.toplevel / v):
            raise SnapverError(f"{git.toplevel / v} already exists: move it away first "
                               f"(project {found.config.project} has a volume {v})")
    return found
