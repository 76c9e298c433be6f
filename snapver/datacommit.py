"""`snapver commit`: a commit when only the data or a model changed.

After training, the code is often unchanged and `git commit -am` says "nothing to commit",
so the new model gets no commit and no commit snapshot. `snapver commit -m MSG [-a]` makes
the commit Git would make if there is anything for Git, and an empty one (`--allow-empty`)
if only the volumes changed; either way the post-commit hook snapshots it as every commit.
Git itself makes the commit, as the user who runs it (never the daemon: a commit is the
user's, and its objects must be theirs), with the user's hooks and configuration.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from .errors import SnapverError


def _differs(toplevel: Path, *argv: str) -> bool:
    """Whether `git diff --quiet ...` finds a difference (exit 1); an error is Git's, in one line."""
    done = subprocess.run(["git", "diff", "--quiet", *argv], cwd=toplevel, capture_output=True, text=True)
    if done.returncode > 1:
        raise SnapverError(f"git diff failed: {done.stderr.strip() or done.returncode}")
    return done.returncode == 1


def volumes_changed(status: list[dict], head: str | None) -> list[str]:
    """The volumes whose content is not HEAD's commit snapshot: changed since their last
    snapshot, or last snapshotted by a wip (the daemon's, during training) and not by HEAD."""
    return [r["volume"] for r in status if r["changed"] or not head or r["base"] != head]


def argv(toplevel: Path, message: str, all_tracked: bool, changed: list[str]) -> list[str]:
    """The `git commit` to run: with Git's changes if there are any (staged, or with -a the
    tracked files' too), an empty one if only the volumes changed; nothing to commit at all
    is an error, as it is for Git."""
    if not message.strip():
        raise SnapverError("give a commit message with -m MSG")
    flags = ["-a"] if all_tracked else []
    if _differs(toplevel, "--cached") or (all_tracked and _differs(toplevel)):
        return ["git", "commit", *flags, "-m", message]
    if changed:
        return ["git", "commit", "--allow-empty", "-m", message]
    hint = "" if all_tracked or not _differs(toplevel) else " (modified files are not staged: add them, or -a)"
    raise SnapverError(f"nothing to commit: neither Git's files nor the volumes changed since HEAD{hint}")
