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


def when(dt) -> str:
    if isinstance(dt, str):
        dt = datetime.fromisoformat(dt)
    return dt.astimezone().strftime("%Y-%m-%d %H:%M:%S")


def cell(value) -> str:
    """A metric or param for a table: numbers without noise, '-' for none."""
    if value is None:
        return "-"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def label(name: str) -> str:
    """A snapshot name for people: the short commit ID, and the time of a wip."""
    return short(name) + name[40:]


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


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
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
    sys.exit(code)


# The commands, one module per family; importing each registers it on `cli`.
from . import build, daemon, registry, service, snapshots, transfer, ui, upkeep  # noqa: E402,F401
