"""`snapver` commands of builds: build, cascade."""

from __future__ import annotations

import sys

import click

from . import complete_volume
from . import cli, emit_json, emit_result, json_option, label, run

TAIL = 20  # lines of a failed build's log shown


def _tail(path: str) -> list[str]:
    try:
        with open(path, "rb") as f:
            return f.read().decode(errors="replace").splitlines()[-TAIL:]
    except OSError:
        return []


@cli.command()
@click.argument("volume", shell_complete=complete_volume)
@json_option
def build(volume, as_json):
    """Run VOLUME's recipe on a copy-on-write clone and swap the result in.

    The inputs are given read-only at their exact snapshots; on success the build
    is snapshotted (a build point of HEAD) and VOLUME shows it; on failure VOLUME
    is unchanged, and the log and exit code are shown (exit 1).
    """
    r = run("build", {"volume": volume})
    if as_json:
        emit_result(r, 0 if r["ok"] else 1)
    elif r["ok"]:
        if r["kept"]:
            click.echo(f"kept unsnapshotted changes of {volume} as {label(r['kept'])}")
        click.echo(f"{volume} built in {r['duration']:.1f}s from "
                   f"{', '.join(f'{v}@{label(s)}' for v, s in r['inputs'].items()) or 'no inputs'}: "
                   f"build point {label(r['snapshot'])} (log {r['log']})")
    else:
        for line in _tail(r["log"]):
            click.echo(f"  | {line}", err=True)
        click.echo(f"snapver: the build of {volume} failed (exit code {r['exit_code']}): {volume} is unchanged; "
                   f"log {r['log']}", err=True)
    if not r["ok"]:
        sys.exit(1)


@cli.command()
@click.argument("target", required=False, metavar="[VOLUME|release:NAME]")
@click.option("-j", "--jobs", type=click.IntRange(min=1), default=1, show_default=True,
              help="Builds run at once (independent ones only).")
@click.option("--dry-run", is_flag=True, help="Say what would be rebuilt and why; change nothing.")
@json_option
def cascade(target, jobs, dry_run, as_json):
    """Rebuild, in lineage order, every recipe volume whose inputs changed since its last build.

    With VOLUME: what derives from it; with release:NAME: what reads that release
    (and what derives from that). A failed build stops its subtree; siblings go on.
    """
    def say(node) -> None:
        if as_json:
            return
        tag = {"rebuild": "would rebuild"}.get(node.action, node.action)
        click.echo(f"{node.volume:<16} {tag:<13} {node.reason}")

    nodes = run("cascade", {"target": target, "jobs": jobs, "dry_run": dry_run}, progress=say)
    if as_json:
        emit_result(nodes, 1 if any(n["action"] == "failed" for n in nodes) else 0)
    if any(n["action"] == "failed" for n in nodes):
        sys.exit(1)


@cli.command()
@click.argument("volume", required=False)
@click.option("-n", "limit", type=click.IntRange(min=1), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True)
def builds(volume, limit, as_json):
    """The builds recorded here, newest first: each build point with the input snapshots it was made from."""
    rows = run("builds", {"volume": volume, "limit": limit})
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        made = f"-> {label(r['snapshot'])}" if r["snapshot"] else f"FAILED (exit code {r['exit_code']})"
        ins = ", ".join(f"{v}@{label(s)}" for v, s in r["inputs"].items()) or "no inputs"
        click.echo(f"{r['started'][:19]}  {r['volume']:<12} {made}  from {ins}  {r['duration']:.1f}s  {r['log']}")
