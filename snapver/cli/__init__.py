"""The `snapver` command: parse, call the core, print. Nothing else lives here."""

from __future__ import annotations

import json
import sqlite3
import sys
from datetime import datetime

import click

from ..errors import SnapverError
from .. import catalog, endpoint, ops
from ..lake import short


def emit_json(value) -> None:
    click.echo(json.dumps(value, indent=2, default=str))


# The command whose --json asked for the envelope, so that a failure is said in it too.
_json_op: list[str] = []


def json_option(fn):
    """--json on a command that changes something: one schema for all of them (README "--json").
    Done: {"ok": true, "op": "release set", "exit_code": 0, "result": <the operation's result>};
    failed: {"ok": false, "op": ..., "exit_code": N, "error": "<the line said on stderr>"}."""
    def remember(ctx, param, value):
        if value:
            _json_op[:] = [ctx.command_path.split(" ", 1)[-1]]
        return value
    return click.option("--json", "as_json", is_flag=True, callback=remember,
                        help="Print the result as one JSON object (README: --json).")(fn)


def emit_result(result, exit_code: int = 0) -> None:
    """The envelope of json_option, for a command that ran (exit_code: its own, e.g. a failed build)."""
    emit_json({"ok": exit_code == 0, "op": _json_op[0] if _json_op else None, "exit_code": exit_code,
               "result": result})
    _json_op.clear()  # said: a later sys.exit(exit_code) adds nothing


# Shell completion (`snapver completion`): what an argument takes, from snapver.complete (cheap reads).
def complete_rev(ctx, param, incomplete: str) -> list[str]:
    from ..complete import revisions

    return revisions(incomplete)


def complete_volume(ctx, param, incomplete: str) -> list[str]:
    from ..complete import volumes

    return [v for v in volumes() if v.startswith(incomplete)]


def complete_release(ctx, param, incomplete: str) -> list[str]:
    from ..complete import releases

    return [r for r in releases() if r.startswith(incomplete)]


def complete_volume_at_rev(ctx, param, incomplete: str) -> list[str]:
    """VOLUME@REV (derive, lineage --upstream, --input): the volume, then its revision."""
    volume, at, rev = incomplete.partition("@")
    if not at:
        return [f"{v}@" for v in complete_volume(ctx, param, volume)]
    return [f"{volume}@{r}" for r in complete_rev(ctx, param, rev)]


def when(dt) -> str:
    if isinstance(dt, str):
        dt = datetime.fromisoformat(dt)
    return dt.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def cell(value) -> str:
    """A metric or param for a table: numbers without noise, '-' for none."""
    if value is None:
        return "-"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def human(size: int) -> str:
    """Bytes as people read them: 512 B, 1.5 KiB, 20.0 GiB (--json keeps the exact number)."""
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{size} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"  # not reached


def label(name: str) -> str:
    """A snapshot name for people: the short commit ID, and the time of a wip (short() has it:
    adding name[40:] again printed it twice, a name checkout could not take)."""
    return short(name)


def daemon_view() -> dict | None:
    """What snapverd knows of this working tree, if one is running and watches it."""
    if not endpoint.SOCKET.exists():
        return None
    from .. import client
    from ..gitrepo import GitRepo

    try:
        toplevel = str(GitRepo.find(".").toplevel)
        listing = ops.call(ops.DAEMON_STATUS)
        return next((w for w in listing if w["workspace"] == toplevel), None) if isinstance(listing, list) else None
    except (client.Unavailable, SnapverError, OSError):
        return None


EPILOG = """\b
Exit codes:
  0  done
  1  an error (one line on stderr; nothing changed on disk)
  2  usage error: a bad option or argument
  3  not found: no such revision, snapshot, release or volume
  4  `status --exit-code`: a volume changed since its snapshot
  5  `find`: no version matches

\b
Environment:
  SNAPVER_SOCKET     snapverd's socket (default: `socket` in the daemon config,
                     else /run/snapver/snapverd.sock)
  SNAPVER_CONFIG     the daemon config (default /etc/snapver/snapverd.toml)
  SNAPVER_DIRECT=1   act on the lake directly, never through snapverd
  SNAPVER_SKIP=1     the Git hooks do nothing for this one command
  SNAPVER_SSH        the ssh command of push, pull and clone (default ssh)
  SNAPVER_LOCK_WAIT  seconds to wait for a busy workspace (default 30)

\b
Completion: eval "$(snapver completion bash)"  (or zsh, fish)
"""


@click.group(context_settings={"help_option_names": ["-h", "--help"]}, epilog=EPILOG)
@click.version_option(package_name="snapver")
def cli():
    """Version an ML data lake (data, models, logs) with the Git commits of its code.

    Every commit gets a copy-on-write snapshot of each volume, named after the
    commit ID; checking out a commit brings the volumes back to it.
    """


def warn(message: str) -> None:
    click.echo(f"snapver: warning: {message}", err=True)


def run(op: str, args: dict | None = None, **how):
    """Every command's one way to the lake: the operations table (ops.call), the same that
    the hooks, the Python API and snapverd use; warnings on the way go to stderr."""
    return ops.call(op, args, tell=warn, **how)


def main() -> None:
    """Every failure a user can cause ends as one line on stderr and a non-zero exit."""
    from ..linux import restrict_umask

    restrict_umask()
    try:
        code = cli.main(prog_name="snapver", standalone_mode=False)
    except Exception as e:
        explain_failure(e)
        raise  # not a user's error: a bug, with its traceback
    sys.exit(code if isinstance(code, int) else 0)


def explain_failure(e: Exception) -> None:
    """Exit with one line if e is a failure a user can cause; return if it is a bug."""
    from ..vanished import lake_gone

    gone = lake_gone(e)  # the lake unmounted under the command: what failed says less
    if gone is not None:
        fail(str(gone), 1)
    if isinstance(e, SnapverError):
        fail(str(e), e.exit_code)
    if isinstance(e, click.UsageError):
        hint = f" (see `{e.ctx.command_path} --help`)" if e.ctx else ""
        fail(e.format_message() + hint, e.exit_code)
    if isinstance(e, click.ClickException):
        fail(e.format_message(), e.exit_code)
    if isinstance(e, click.Abort):
        fail("aborted", 130)
    if isinstance(e, sqlite3.Error):  # a catalog write midway (a full filesystem, say)
        err = catalog.explain(e)
        fail(f"{err}; `snapver doctor` says if anything was left unfinished", err.exit_code)
    if isinstance(e, PermissionError):
        fail(f"permission denied: {e.filename or e}: run it as the workspace's owner or as root", 1)


def fail(message: str, code: int) -> None:
    from ..errors import one_line

    click.echo(f"snapver: {one_line(message)}", err=True)
    if _json_op:  # --json was asked for: a script reads the failure where it reads a result
        click.echo(json.dumps({"ok": False, "op": _json_op[0], "exit_code": code, "error": one_line(message)}))
    sys.exit(code)


# The commands, one module per family; importing each registers it on `cli`.
from . import build, completion, daemon, metrics, registry, service, snapshots, transfer, ui, upkeep  # noqa: E402,F401
