"""Candidates for shell completion (`snapver completion bash|zsh|fish`): revisions, snapshot
names, releases and volumes of the working tree the shell is in.

Run at every TAB, so cheap: Git's ref list (one process), snapver.toml, and read-only queries
of the catalog (opened `mode=ro`: never a write, a migration or a lock, never a walk of the
lake). Whatever fails gives no candidates: a completion must not print errors into a prompt.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

from .config import Config, LocalState
from .gitrepo import GitRepo
from .proc import ask


def _repo(cwd: Path | str) -> GitRepo | None:
    try:
        return GitRepo.find(cwd)
    except Exception:  # noqa: BLE001 - not a repository, no git: nothing to offer
        return None


def volumes(cwd: Path | str = ".") -> list[str]:
    git = _repo(cwd)
    try:
        return list(Config.load(git.toplevel).volumes) if git else []
    except Exception:  # noqa: BLE001 - no or broken snapver.toml: the commands say why
        return []


def _catalog_rows(cwd: Path | str, sql: str) -> list[str]:
    """One column of a read-only query on this project's catalog; [] if anything is missing."""
    git = _repo(cwd)
    if git is None:
        return []
    try:
        from .backends import open_backend

        project = Config.load(git.toplevel).project
        state = LocalState.load(git.git_dir)
        path = open_backend(state.backend, state.lake).catalog_path
        with sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1) as db:
            return [r[0] for r in db.execute(sql, (project,))]
    except Exception:  # noqa: BLE001 - not set up, lake unmounted, an old catalog: no candidates
        return []


def snapshots(cwd: Path | str = ".") -> list[str]:
    """Snapshot names, newest first (wip ones included: `checkout` takes them whole)."""
    return _catalog_rows(cwd, "SELECT name FROM snapshots WHERE project = ? GROUP BY name ORDER BY max(created) DESC")


def releases(cwd: Path | str = ".") -> list[str]:
    return _catalog_rows(cwd, "SELECT name FROM releases WHERE project = ? ORDER BY name")


def refs(cwd: Path | str = ".") -> list[str]:
    """Branches, tags and remote branches, as `git checkout` completes them."""
    out = ask(["git", "for-each-ref", "--format=%(refname:short)", "refs/heads", "refs/tags", "refs/remotes"],
              cwd=cwd)
    return out.split() if out else []


def revisions(incomplete: str, cwd: Path | str = ".") -> list[str]:
    """What a REV argument takes: HEAD, refs, release:NAME, snapshot names (whole, or the short
    commit ID that `snapver log` prints once the user has typed hex)."""
    if _repo(cwd) is None:
        return []
    if incomplete.startswith("release:"):
        return [f"release:{r}" for r in releases(cwd) if f"release:{r}".startswith(incomplete)]
    found = ["HEAD", *refs(cwd)]
    found += [f"release:{r}" for r in releases(cwd)]
    if incomplete and all(c in "0123456789abcdef" for c in incomplete):
        found += snapshots(cwd)  # hex typed: the snapshots it may start
    return [c for c in dict.fromkeys(found) if c.startswith(incomplete)]
