"""Running external tools: argv lists only, failures as one readable line."""

from __future__ import annotations

import subprocess
from collections.abc import Sequence

from .errors import FULL, CommandFailed, FullCommandFailed


def run(argv: Sequence[str], *, input: bytes | None = None, cwd=None, env=None) -> str:
    """Run argv, return its stdout as text; raise CommandFailed with the tool's own words."""
    try:
        done = subprocess.run(
            list(argv), input=input, cwd=cwd, env=env, capture_output=True, check=False
        )
    except FileNotFoundError:
        raise CommandFailed(f"{argv[0]} is not installed (needed for this lake)") from None
    if done.returncode != 0:
        raise failure(argv, done.stderr)
    return done.stdout.decode("utf-8", "surrogateescape")


def ask(argv: Sequence[str], *, input: bytes | None = None, cwd=None) -> str | None:
    """argv's stdout as text when it exits 0, None when it exits otherwise: for a question a
    tool answers by its exit status (is this an ancestor, does this dataset exist), where no
    is an answer, not a failure, so its stderr is not kept. Not installed: CommandFailed."""
    out = ask_bytes(argv, input=input, cwd=cwd)
    return None if out is None else out.decode("utf-8", "surrogateescape")


def ask_bytes(argv: Sequence[str], *, input: bytes | None = None, cwd=None) -> bytes | None:
    """ask, with stdout as the tool wrote it (a file's content from `git cat-file blob`)."""
    try:
        done = subprocess.run(list(argv), input=input, cwd=cwd, capture_output=True, check=False)
    except FileNotFoundError:
        raise CommandFailed(f"{argv[0]} is not installed (needed for this lake)") from None
    return done.stdout if done.returncode == 0 else None


def failure(argv: Sequence[str], stderr: bytes) -> CommandFailed:
    """The error for a tool that failed, typed FilesystemFull when it ran out of space."""
    return (FullCommandFailed if _full(stderr) else CommandFailed)(describe_failure(argv, stderr))


def _words(stderr: bytes) -> list[str]:
    return [line.strip() for line in stderr.decode("utf-8", "replace").splitlines() if line.strip()]


def _full(stderr: bytes) -> bool:
    """The tool's own words (no errno reaches us from a process) say its filesystem is full."""
    return any("No space left" in w or "out of space" in w for w in _words(stderr))


def describe_failure(argv: Sequence[str], stderr: bytes) -> str:
    words = _words(stderr)
    why = words[-1] if words else "no message"
    if _full(stderr):
        why = FULL
    what = " ".join(argv[:3]) if argv[0] in ("btrfs", "zfs", "zpool", "git") else argv[0]
    return f"{what} failed: {why}"


def start_hook_job(job: str, toplevel) -> None:
    """Start `python -m snapver.githooks JOB` in the working tree, detached: Git's command does
    not wait for it, a Ctrl-C at the terminal does not reach it, and it writes nothing there
    (its errors go to .git/snapver/hook.log). Never raises: a job that did not start is still
    owed, and whoever needs its result does the work then."""
    import sys

    try:
        subprocess.Popen([sys.executable, "-m", "snapver.githooks", job], cwd=toplevel,
                         stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         start_new_session=True, close_fds=True)
    except OSError:
        pass
