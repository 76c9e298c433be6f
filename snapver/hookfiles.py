"""The hook shims in a repository's hooks folder: installed, chained to a hook that was
there, and removed. Apart from githooks.py (what each hook does when it runs), so that the
operations table installs them without importing an entry point."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from .errors import SnapverError

HOOKS = (
    "post-commit",  # snapshot the new commit
    "post-checkout",  # branch checkouts and `git switch`: the lake follows HEAD
    "post-merge",  # `git merge`, `git pull`
    "post-rewrite",  # `commit --amend`, `rebase`: the new commits get snapshots too
    "post-index-change",  # marks commands that rewrite the working tree ...
    "reference-transaction",  # ... so the HEAD move of `reset --hard` can follow
    "pre-push",  # `git push`: the pushed commits' snapshots go too, where snapver.toml opts in
)
CHAINED = ".pre-snapver"  # where a hook that was already there is kept, and run first
MARK = "snapver git hook"  # how a shim recognises itself


def hooks_dir(git) -> Path:
    """Where Git looks for hooks: honours core.hooksPath."""
    path = Path(git.git("rev-parse", "--git-path", "hooks").strip())
    return path if path.is_absolute() else git.toplevel / path


def is_ours(path: Path) -> bool:
    try:
        return MARK in path.read_text(errors="replace")[:200]
    except (FileNotFoundError, IsADirectoryError):
        return False


def install(git) -> list[str]:
    """Install the shims; a hook that is already there is kept and chained, never overwritten."""
    from .shipped import shipped  # here: only installing reads hooks/, never the hook path

    source = shipped("hooks")
    shims = {name: shim_text(source / name) for name in HOOKS}
    directory = hooks_dir(git)
    for name in HOOKS:  # check everything before changing anything
        hook, chained = directory / name, directory / (name + CHAINED)
        if os.path.lexists(hook) and not is_ours(hook) and os.path.lexists(chained):
            raise SnapverError(
                f"both {hook} and {chained} exist: merge them by hand, then install again"
            )
    directory.mkdir(parents=True, exist_ok=True)
    installed = []
    for name in HOOKS:
        hook = directory / name
        if os.path.lexists(hook) and not is_ours(hook):
            os.rename(hook, directory / (name + CHAINED))
        tmp = hook.with_name(f".{name}.snapver-tmp")
        tmp.write_text(shims[name])
        tmp.chmod(0o755)
        os.replace(tmp, hook)
        installed.append(name)
    return installed


def shim_text(source: Path) -> str:
    """hooks/<name> of the source tree (or the package) as installed: with the interpreter
    of this snapver, quoted for the shim's single-quoted assignment."""
    return source.read_text().replace("@PYTHON@", sys.executable.replace("'", "'\\''"))


def uninstall(git) -> list[str]:
    """Remove the shims and put back, byte for byte, the hooks they chained to."""
    directory = hooks_dir(git)
    removed = []
    for name in HOOKS:
        hook, chained = directory / name, directory / (name + CHAINED)
        if is_ours(hook):
            hook.unlink()
            removed.append(name)
            if os.path.lexists(chained):
                os.rename(chained, hook)
    return removed
