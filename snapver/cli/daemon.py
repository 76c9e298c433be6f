"""`snapver daemon`: run snapverd, its status, its gc."""

from __future__ import annotations

from pathlib import Path

import click

from ..errors import SnapverError
from .. import endpoint
from . import cli, emit_json, label


@cli.group(invoke_without_command=True)
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Daemon config (default $SNAPVER_CONFIG, else /etc/snapver/snapverd.toml); "
                   "`daemon --config X status` asks the daemon at X's socket.")
@click.pass_context
def daemon(ctx, config_path):
    """Run snapverd in the foreground (as systemd does), or ask a running one.

    It takes wip snapshots when writes to a watched workspace go quiet,
    snapshots commits made without the hooks, applies retention, and serves
    users who may not touch the lake themselves over a Unix socket.
    """
    from ..daemon import DEFAULT_CONFIG

    ctx.obj = config_path or DEFAULT_CONFIG
    if config_path and ctx.invoked_subcommand == "status":
        from ..daemonconfig import DaemonConfig

        # The socket this config gives its daemon (checked whole: its errors name file and line).
        endpoint.SOCKET = DaemonConfig.load(config_path).socket
    if ctx.invoked_subcommand is None:
        from .. import daemon as snapverd

        snapverd.main(ctx.obj)


@daemon.command("status")
@click.option("--json", "as_json", is_flag=True)
def daemon_status(as_json):
    """What the running daemon watches, how, and what is pending."""
    from .. import client, ops

    try:
        view = ops.call(ops.DAEMON_STATUS)
    except client.Unavailable:
        raise SnapverError(f"snapverd is not running (nothing listens on {endpoint.SOCKET})") from None
    if as_json:
        emit_json(view)
        return
    for w in view:
        click.echo(w["workspace"])
        for v, d in w["volumes"].items():
            pending = f"changes pending for {d['pending_for']}s" if d["pending_for"] is not None else "no pending changes"
            last = label(d["last_snapshot"]) if d["last_snapshot"] else "none yet"
            click.echo(f"  {v:<12} {d['mode']:<8} {pending}; last wip snapshot {last}")
        _cascades(w.get("cascade") or {})


def _cascades(c: dict) -> None:
    """The cascades snapverd started here ([cascade] in snapver.toml): running, queued, the last."""
    shown = ([("running", c["running"])] if c.get("running") else []) + \
        [("queued", q) for q in c.get("queued", [])] + ([("last", c["last"])] if c.get("last") else [])
    for what, run in shown:
        when = run["finished"] or run["started"] or run["queued"]
        click.echo(f"  cascade {what} ({run['state']}, {when}): {run['trigger']}")
        for n in run["nodes"]:
            click.echo(f"    {n['volume']:<12} {n['action']:<11} "
                       f"{label(n['snapshot']) if n['snapshot'] else n['reason']}")
        if run.get("error"):
            click.echo(f"    {run['error']}")


@daemon.command("gc")
@click.pass_obj
def daemon_gc(config_path):
    """Apply retention once to every workspace in the daemon config (for snapver-gc.timer)."""
    from ..daemon import Daemon

    decisions = Daemon(config_path).gc_all()
    click.echo(f"{sum(not d.keep for d in decisions)} of {len(decisions)} snapshots removed")
