"""Git hooks: installing the shims, and what each hook does once the shim calls Python.

`python -m snapver.githooks HOOK ARGS...` is the hook path: it imports the
core but not click, and it never makes Git fail. A user error is printed
once; anything unexpected is printed once and its traceback goes to
.git/snapver/hook.log.
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

from . import faults, ops, seams
from .config import LocalState, ProjectConfig, write_as_owner
from .errors import SnapverError, one_line
from .gitrepo import GitRepo
from .hookfiles import HOOKS, hooks_dir, install, is_ours, uninstall  # noqa: F401  (as before, for callers)
from .names import short


# ------------------------------------------------------------------ the hook path

def main(argv: list[str]) -> int:
    hook, args = argv[0], argv[1:]
    os.umask(os.umask(0o022) | 0o022)  # as linux.restrict_umask, without importing it here
    try:
        if hook == "scan-pending":  # started by a hook that left a model scan pending (scan.start_detached)
            scan_pending()
            return 0
        if hook == "space-pending":  # started after a volume's first snapshot (spacewarm)
            call("space-pending", None, lambda m: log(f"space-pending: warning: {m}"))
            return 0
        seams.on_commit_path = True  # a changed model is scanned after the hook, not in it
        flagged_since()

        def announce(message: str) -> None:
            say(f"warning: {message}")
            log(f"{hook}: warning: {message}")

        if hook == "post-checkout" and not _has_state():
            # A new worktree: its own lake, in the project's history (its hooks are the project's).
            made = call("init", {"hooks": False}, announce)
            say(f"new worktree: its own lake at {', '.join(sorted(short(b) if b else 'empty' for b in made['at']))}")
            return 0
        if hook != "pre-push" and not os.path.exists("snapver.toml"):
            # Set up here, but this commit has no snapver.toml: it predates versioning (Git runs
            # hooks at the top of the working tree). Not "run snapver init": the lake stays.
            # Said once per commit: reference-transaction and post-checkout both come here.
            git = GitRepo.find(".")
            head, marker = git.head() or "", LocalState.dir(git.git_dir) / "predates"
            if not marker.exists() or marker.read_text() != head:
                write_as_owner(marker, head)
                say(f"{short(head)} predates versioning (it has no snapver.toml): the lake stays as it is, "
                    "and follows again at a commit that has one")
            return 0
        if hook == "tag-release":  # from reference-transaction: tags just created
            for message in call("tag-releases", {"lines": sys.stdin.read().splitlines()}, announce):
                say(message)
            return 0
        if hook == "rebase-edit":  # `rebase -i` stopped at an edit: the lake goes to that commit
            rebase_edit(sys.stdin.read().split(), announce)
            return 0
        if hook == "pre-push":
            push_with_git(args, sys.stdin.read().splitlines())
            return 0
        if hook != "post-rewrite" and opted_in("fetch"):
            fetch_with_git()  # before the lake follows HEAD
        if hook == "post-commit":
            faults.point("post-commit-start")
            # The commit this hook fired for, read by the shim before anything else ran.
            commit = os.environ.get("SNAPVER_COMMIT") or None
            snaps = call("snapshot", {"commit": commit} if commit else None, announce)
            if snaps:
                say(f"snapshot {short(snaps[0]['name'])} ({', '.join(s['volume'] for s in snaps)})")
                # An lstat each: a volume whose link is gone was snapshotted, but not what was
                # written in its place (Git runs hooks at the top of the working tree).
                for v in sorted({s["volume"] for s in snaps}):
                    if not os.path.islink(v):
                        say(f"warning: {v} is not the link to its volume: what is written there is not "
                            "versioned; `snapver status` says more")
        elif hook == "post-rewrite":
            git_dir = GitRepo.find(".").git_dir
            rebasing = any((git_dir / d).exists() for d in ("rebase-merge", "rebase-apply"))
            if rebasing and args[:1] == ["amend"] and not (git_dir / "rebase-merge" / "amend").exists():
                # The rebase amending by itself (a squash or fixup folding into the commit before):
                # the rebase's own post-rewrite maps the whole group, and the newest gives the data.
                return 0
            pairs = [line.split()[:2] for line in sys.stdin.read().splitlines() if line.strip()]
            made = call("rewrite", {"pairs": pairs}, announce)
            if made:
                said = len({s["commit"] for s in made})
                say(f"rewritten: {said} commit(s) got snapshots of their own; the old ones are kept")
            # An amend inside an unfinished rebase gives snapshots, but only the rebase's end moves the lake.
            if args[:1] == ["rebase"] or not rebasing:
                report(call("follow", None, announce))
        else:
            report(call("follow", None, announce))
    except Exception as e:
        known = _user_error(e)
        if known is None:
            import traceback  # only for a bug: it would cost every hook's start-up

            say(f"{hook} hook failed unexpectedly (Git carried on); details in .git/snapver/hook.log")
            log(f"{hook} {' '.join(args)}:\n{traceback.format_exc()}")
        else:
            say(f"{known} (Git carried on)")
            log(f"{hook} {' '.join(args)}: {known}")
    return 0


def scan_pending() -> None:
    """The scans a hook left pending, in a process of its own that nobody watches: what it
    flags is kept in .git/snapver/scan-flagged for the next hook to say (flagged_since)."""
    flagged = [f"{d['volume']}/{p} (at {short(d['snapshot'])})"
               for d in call("scan-pending", None, lambda m: log(f"scan-pending: warning: {m}")) for p in d["flagged"]]
    if flagged:
        path = GitRepo.find(".").git_dir / "snapver" / "scan-flagged"
        with open(path, "a") as f:
            f.writelines(line + "\n" for line in flagged)


def flagged_since() -> None:
    """Say, once, what the last scans after a commit flagged (one stat when there is nothing)."""
    git_dir = os.environ.get("GIT_DIR") or ".git"
    try:
        if os.path.isfile(git_dir):  # a linked worktree's .git: "gitdir: PATH"
            with open(git_dir) as f:
                git_dir = f.read().strip().removeprefix("gitdir: ")
        path = Path(git_dir) / "snapver" / "scan-flagged"
        if not path.is_file():
            return
        lines = path.read_text().split("\n")
        path.unlink()
    except OSError:
        return
    lines = [line for line in lines if line]
    if lines:
        say(f"warning: {len(lines)} model file(s) flagged since: run code when unpickled: {'; '.join(lines)}; "
            "`snapver scan REV` lists them, and `snapver release` refuses them")


def rebase_edit(done_line: list[str], tell) -> None:
    """At an `edit` stop HEAD is the commit being edited, or its copy on a new base: the copy
    gets the original's snapshots (as post-rewrite would give them at the end), then the lake
    follows HEAD, unsnapshotted changes kept first, so the data can be edited and amended."""
    git = GitRepo.find(".")
    if len(done_line) < 2:
        return
    edited, head = git.resolve(done_line[1]), git.head()
    if head and head != edited:
        call("rewrite", {"pairs": [[edited, head]]}, tell)
    report(call("follow", None, tell))


def opted_in(key: str) -> bool:
    """[remote] push / fetch = true in snapver.toml, read as every command reads it (it was a
    grep in the shim, which missed a quoted, dotted or inline-table key). tomllib is on the
    hook path already (config.py); a parse is a fraction of a millisecond."""
    try:
        return ProjectConfig.load(Path(".")).remote.get(key) is True
    except SnapverError:
        return False  # a broken snapver.toml: the command that follows says what is wrong


def push_with_git(args: list[str], updates: list[str]) -> None:
    """pre-push: send the snapshots of the commits Git is pushing ([remote] push = true)."""
    # Git's lines: <local ref> <local sha> <remote ref> <remote sha>; a deletion pushes nothing.
    shas = [f[1] for f in (line.split() for line in updates) if len(f) == 4 and f[1].strip("0")]
    if shas:
        pushed = call("push", {"remote": args[0], "revs": shas, "strict": False, "if_configured": True}, say)
        if pushed is not None:
            say(f"pushed {len(pushed['done'])} snapshot(s) to {pushed['remote']}")


def fetch_with_git() -> None:
    """Before the lake follows HEAD (`git pull`, checkout), fetch HEAD's snapshots if this lake
    lacks them ([remote] fetch = true). A failure is said, and the lake follows anyway, to
    the nearest snapshot it has."""
    try:
        pulled = call("pull", {"revs": ["HEAD"], "strict": False, "if_configured": True}, say)
        if pulled and pulled["done"]:
            say(f"pulled {len(pulled['done'])} snapshot(s)")
    except SnapverError as e:
        say(f"could not fetch snapshots: {e}")


def _user_error(e: Exception) -> SnapverError | None:
    """e as one line for the user, if it is one of theirs: a catalog SQLite cannot use counts,
    since the snapshot itself is already safe on the filesystem."""
    vanished = sys.modules.get("snapver.vanished")
    gone = vanished.lake_gone(e) if vanished is not None else None
    if gone is not None:
        return gone  # the lake unmounted mid-hook
    if isinstance(e, SnapverError):
        return e
    sqlite3 = sys.modules.get("sqlite3")
    if sqlite3 is not None and isinstance(e, sqlite3.Error):
        from .catalog import explain  # sqlite3 is loaded: the catalog is (an unprivileged hook has neither)

        return explain(e)
    return None


def _has_state() -> bool:
    # As in the shim: Git runs us at the top of the working tree, where a .git folder is the
    # Git directory unless GIT_DIR says otherwise; asking Git would start one more process.
    # A node whose lake is on a storage server has remote-lake.json instead (remotelake.py).
    if "GIT_DIR" not in os.environ and os.path.isdir(".git"):
        return LocalState.exists(Path(".git")) or os.path.exists(".git/snapver/remote-lake.json")
    git_dir = GitRepo.find(".").git_dir
    return LocalState.exists(git_dir) or (git_dir / "snapver" / "remote-lake.json").exists()


def call(op: str, args: dict | None, tell):
    """Every hook's one way to the lake: the operations table, as the CLI's; tell(line)
    hears the warnings on the way."""
    return ops.call(op, args, tell=tell)


def report(result: dict | None) -> None:
    if result is None:
        return
    for w in result["warnings"]:
        say(f"warning: {w}")
    for line in result.get("links", {}).values():
        say(f"repaired: {line}")
    for line in result.get("broken", {}).values():
        say(f"warning: {line}")
    if result["kept"]:
        say(f"kept unsnapshotted changes as {result['kept'][0]['name']}")
    if result["switched"]:
        target = next(iter(result["target"].values()))["name"]
        say(f"lake now at {short(target)} ({', '.join(result['switched'])})")


def say(message: str) -> None:
    print(f"snapver: {one_line(message)}", file=sys.stderr)


def log(message: str) -> None:
    try:
        path = GitRepo.find(".").git_dir / "snapver" / "hook.log"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            f.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S%z')} {message}\n")
    except Exception:
        pass  # logging must not be what breaks Git


if __name__ == "__main__":
    code = main(sys.argv[1:])
    # Leave without closing the catalog: the last connection to close checkpoints the WAL
    # into the database and deletes it (an fdatasync of each, ~8 ms), and the next hook then
    # creates it anew (an fdatasync of it and of the lake's folder, ~12 ms). SQLite is made
    # to be left open (a killed process leaves it the same); commits are in the WAL already,
    # and the next writer checkpoints once the WAL is large. Nothing else waits for exit.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
