"""Releases: a name pinned to one snapshot of every volume, that moves, with its history.

- `release:NAME` is a REV everywhere (seams.rev_prefixes); gc keeps what a release pins
  (seams.gc_protectors); on ZFS each pinned snapshot is held (`zfs hold
  snapver-release:NAME`), so ZFS itself refuses to destroy it.
- A move (`release set`, and create / remove) is one catalog transaction that rewrites the
  release's row and appends a row to release_moves: `release:NAME` resolves before and
  after, never to nothing, and two moves at once are put in an order by the catalog's write
  lock, each recorded from where the other left it (the last one wins, both are recorded).
- A stable path per release, `<lake>/<project>/releases/<NAME>/<volume>`, is a symlink to the
  read-only snapshot, replaced by rename(2) after each move: a serving config that reads it
  sees the old snapshot or the new one, never a missing file.
- On ZFS the hold follows the move: the new snapshots are held before the catalog moves,
  the old ones let go after, so a crash between leaves one held too many (kept), never a
  release whose snapshot is not held.

Moves of a project's releases are serialised by <lake>/<project>/releases/.lock, so the
symlinks and holds end up where the catalog's last move says.
"""

from __future__ import annotations

import getpass
import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

from . import registry, seams
from .errors import NotFound, SnapverError
from .proc import ask
from .names import short
from .registry import snapshots_at
from .releaselake import (  # noqa: F401  (in a module of their own: the far end of a push moves releases too)
    HOLD_TAG, _hold, _lock, _point, _unhold, _unhold_old, _unpoint, check_release_name, stable_dir,
)

RELEASE_PREFIX = "release:"


class Release(NamedTuple):
    name: str
    snapshot: str
    commit: str
    volumes: list[str]
    created: str
    message: str | None
    forced: bool


class Move(NamedTuple):
    """One row of a release's history: created (no from), moved, removed (no to)."""
    when: str
    who: str | None
    from_snapshot: str | None
    to_snapshot: str | None
    volumes: list[str]
    message: str | None


def _release(row) -> Release:
    return Release(row["name"], row["snapshot"], row["commit_sha"], row["volumes"].split(),
                   row["created"], row["message"], bool(row["forced"]))


def get_release(ws, name: str) -> Release:
    check_release_name(name)
    row = ws.catalog.release(ws.project, name)
    if row is None:
        known = [r.name for r in list_releases(ws)]
        raise NotFound(f"there is no release {name!r}" + (f": the releases are {', '.join(known)}" if known else ""))
    return _release(row)


def list_releases(ws) -> list[Release]:
    return [_release(r) for r in ws.catalog.releases(ws.project)]


def history(ws, name: str) -> list[Move]:
    """Every move of release NAME, oldest first; also of a release since removed."""
    check_release_name(name)
    rows = ws.catalog.release_moves(ws.project, name)
    if not rows:
        get_release(ws, name)  # says which releases there are
    return [Move(r["moved"], r["who"], r["from_snapshot"], r["to_snapshot"], (r["volumes"] or "").split(),
                 r["message"]) for r in rows]


def resolve_release(ws, name: str, volumes: list[str]) -> tuple[dict, str]:
    """{volume: snapshot} and commit of release NAME (release:NAME, for Workspace.resolve)."""
    rel = get_release(ws, name)
    missing = [v for v in volumes if v not in rel.volumes]
    if missing:
        raise NotFound(f"release {name} has no snapshot of {', '.join(missing)} (it pins {', '.join(rel.volumes)})")
    found = {v: ws.backend.find(ws.project, v, rel.snapshot) for v in volumes}
    gone = [v for v, s in found.items() if s is None]
    if gone:
        raise NotFound(f"the snapshot {short(rel.snapshot)} of {', '.join(gone)} pinned by release {name} is gone")
    return found, rel.commit


def who(ws) -> str:
    """Who moves it: Git's committer name and email in this repository, else the login."""
    ident = (ask(["git", "var", "GIT_COMMITTER_IDENT"], cwd=ws.git.toplevel) or "").strip()
    if ident:
        return ident.rsplit(" ", 2)[0]  # without the timestamp and zone
    try:
        return getpass.getuser()
    except (KeyError, OSError):
        return f"uid {os.getuid()}"


def stable_targets(ws) -> dict[tuple[str, str], str]:
    """(volume, snapshot) every stable path leads to: gc keeps them even if a crash left a
    link behind its release's row."""
    root = Path(ws.backend.root) / ws.project / "releases"
    keep: dict[tuple[str, str], str] = {}
    try:
        names = os.listdir(root)
    except FileNotFoundError:
        return keep
    for name in names:
        if name.startswith(".") or not (root / name).is_dir() or (root / name).is_symlink():
            continue
        for volume in os.listdir(root / name):
            link = root / name / volume
            if not volume.startswith(".") and link.is_symlink():
                keep[(volume, os.path.basename(os.readlink(link)))] = f"stable path of release {name}"
    return keep


# ------------------------------------------------------------------ moves

def _target(ws, rev: str, force: bool, conditions: list[str]) -> tuple[dict, str, str, bool]:
    """The snapshots a release would pin at rev, checked: the model scan, the --if gate."""
    parsed = [registry.parse_condition(c) for c in conditions]  # a bad one fails before anything
    snaps, commit = snapshots_at(ws, rev)
    snapshot = next(iter(snaps.values())).name
    if parsed:
        v = registry.values(ws, [snapshot]).get(snapshot, {})
        unmet = [f"{c.key}={registry.lookup(v, c.key) if registry.lookup(v, c.key) is not None else 'none'}"
                 for c in parsed if not c.test(registry.lookup(v, c.key))]
        if unmet:
            raise SnapverError(f"{rev} ({short(snapshot)}) does not meet {' '.join(conditions)} "
                               f"({', '.join(unmet)}): nothing was changed")
    bad = registry.flagged(ws, snaps)
    if bad and not force:
        raise SnapverError(f"{rev} has model files that run code when loaded: {'; '.join(bad)}; "
                           "release it anyway with --force")
    return snaps, snapshot, commit, bool(bad)


def create_release(ws, name: str, rev: str = "HEAD", message: str | None = None, force: bool = False) -> Release:
    check_release_name(name)
    existing = ws.catalog.release(ws.project, name)
    if existing:
        raise SnapverError(f"release {name} exists already (at {short(existing['snapshot'])}): "
                           f"move it with `snapver release set {name} REV`, or choose another name")
    snaps, snapshot, commit, forced = _target(ws, rev, force, [])
    with ws.lock(), _lock(ws, name):
        if ws.catalog.release(ws.project, name):
            raise SnapverError(f"release {name} was made meanwhile: move it with `snapver release set {name} REV`")
        held_now = _hold(ws, snaps, name)
        try:
            ws.catalog.add_release(ws.project, name, snapshot, commit, list(snaps),
                                   datetime.now(timezone.utc).isoformat(), message, forced, who(ws))
        except BaseException:
            _unhold(ws, held_now, name)
            raise
        _point(ws, name, snaps)
    return get_release(ws, name)


def set_release(ws, name: str, rev: str, message: str | None = None, force: bool = False,
                conditions: list[str] | None = None) -> tuple[Release, str | None]:
    """Point release NAME (made if new) at rev's snapshots; (the release, where it was)."""
    check_release_name(name)
    snaps, snapshot, commit, forced = _target(ws, rev, force, conditions or [])
    with ws.lock(), _lock(ws, name):
        current = ws.catalog.release(ws.project, name)
        # Holding a snapshot twice under one tag fails on ZFS: only what is not pinned yet.
        held_now = _hold(ws, snaps, name) if current is None or current["snapshot"] != snapshot else []
        try:
            old = ws.catalog.move_release(ws.project, name, snapshot, commit, list(snaps),
                                          datetime.now(timezone.utc).isoformat(), message, forced, who(ws))
        except BaseException:
            _unhold(ws, held_now, name)
            raise
        _point(ws, name, snaps)
        _unhold_old(ws, name, old, snapshot)
    return get_release(ws, name), old and old["snapshot"]


def remove_release(ws, name: str) -> Release:
    rel = get_release(ws, name)
    with ws.lock(), _lock(ws, name):
        _unpoint(ws, name)
        for v in rel.volumes:
            snap = ws.backend.find(ws.project, v, rel.snapshot)
            if snap is not None:
                ws.backend.unhold(snap, HOLD_TAG + name)
        ws.catalog.remove_release(ws.project, name, datetime.now(timezone.utc).isoformat(), who(ws))
    return rel


def protected(ws) -> dict[tuple[str, str], str]:
    """(volume, snapshot) gc must keep, with why: releases and their stable paths (the core
    adds derive sources)."""
    keep = stable_targets(ws)
    for r in reversed(ws.catalog.releases(ws.project)):  # oldest first: the newest release names it
        for v in r["volumes"].split():
            keep[(v, r["snapshot"])] = f"release {r['name']}"
    return keep


def releases_from_tags(ws, lines: list[str]) -> list[str]:
    """reference-transaction input: release every tag just created whose commit has snapshots."""
    if not registry.settings(ws).from_tags:
        return []
    said = []
    for line in lines:
        parts = line.split()
        if len(parts) != 3 or not parts[2].startswith("refs/tags/") or set(parts[0]) != {"0"}:
            continue  # only created tags: a moved or deleted tag leaves its release alone
        tag = parts[2][len("refs/tags/"):]
        if set(parts[1]) == {"0"}:
            continue
        try:
            check_release_name(tag)
            sha = ws.git.resolve(parts[1])
            if not all(ws.backend.find(ws.project, v, sha) for v in ws.volumes):
                continue  # a tag on a commit the lake never saw: nothing to pin
            existing = ws.catalog.release(ws.project, tag)
            if existing and existing["snapshot"] == sha:
                continue  # another clone of the project released it already
            create_release(ws, tag, sha, message=f"git tag {tag}")
            said.append(f"release {tag} pins {short(sha)}")
        except SnapverError as e:
            said.append(f"tag {tag} was not made a release: {e}")
    return said


def repoint(ws) -> None:
    """Point every release's stable paths at where its snapshots are now (seams.paths_moved:
    on OpenZFS a checkout or gc moves snapshots with their datasets). Never raises: the
    checkout is done, and the next one or the next `release set` tries again."""
    try:
        releases = list_releases(ws)
    except (SnapverError, sqlite3.Error) as e:
        registry.warn("release paths not checked after the checkout: %s", e)
        return
    for rel in releases:
        try:
            with _lock(ws, rel.name):
                snaps = {v: ws.backend.find(ws.project, v, rel.snapshot) for v in rel.volumes}
                gone = [v for v, s in snaps.items() if s is None]
                if gone:  # pinned, so not destroyed: leave the links as they are and say so
                    raise SnapverError(f"{', '.join(gone)} at {short(rel.snapshot)} not found")
                _point(ws, rel.name, snaps)
        except (SnapverError, OSError) as e:
            registry.warn("the stable path of release %s was not pointed again: %s", rel.name, e)


seams.plug(protector=protected, prefixes={RELEASE_PREFIX: resolve_release}, moved=repoint)
