"""`snapver` commands that keep a lake healthy: gc, clones, du, doctor, reindex."""

from __future__ import annotations

import json
import sys

import click

from ..lake import short
from . import cli, emit_json, emit_result, human, json_option, label, run


@cli.command()
@click.option("--dry-run", is_flag=True, help="List what would be removed, remove nothing.")
@click.option("--forget-unknown", "forget_unknown", metavar="OLDER_THAN",
              help="Also remove snapshots of unknown commits (no known clone has them) "
                   "that arrived longer ago than this, e.g. 90d.")
@json_option
def gc(dry_run, forget_unknown, as_json):
    """Remove snapshots the retention policy no longer keeps (releases never go).

    The policy is [retention] in snapver.toml: `unreachable` (how long snapshots
    of commits no branch, tag, reflog or HEAD of any known clone reaches are
    kept, default 30d), `kept` (how long a wip kept before a checkout, restore
    or rebase lives, default 30d; no schedule thins these) and `wip` (a
    thinning schedule for the daemon's and manual wips, default 1m1h,1h1d,1d1w:
    one per minute for an hour, one per hour for a day, one per day for a
    week). The newest wip of every line of work always stays. If a known clone
    is missing, shallow or unreadable, no commit snapshot goes (`snapver clones`).
    """
    from ..retention import UNKNOWN, parse_duration

    if forget_unknown:
        parse_duration(forget_unknown)  # a typo is the user's error before anything is asked
    result = run("gc", {"dry_run": dry_run, "forget_unknown": forget_unknown})
    decisions, doubts = result["decisions"], result["doubts"]
    if as_json:
        return emit_result(result)
    if doubts:
        more = f" (and {len(doubts) - 1} more)" if len(doubts) > 1 else ""
        click.echo(f"kept every unreachable commit snapshot: {doubts[0]}{more}; "
                   "see `snapver clones`")
    print_pruned(result.get("pruned", []), dry_run)
    dropped = [d for d in decisions if not d["keep"]]
    for d in dropped:
        click.echo(f"{'would remove' if dry_run else 'removed'} {d['volume']}@{label(d['name'])}  ({d['reason']})")
    click.echo(f"{len(dropped)} of {len(decisions)} snapshots {'would go' if dry_run else 'removed'}")
    unknown = sum(d["reason"] == UNKNOWN for d in decisions)
    if unknown:
        click.echo(f"kept {unknown} snapshot(s) of unknown commits (no known clone has them); "
                   "`snapver gc --forget-unknown AGE` lets those older than AGE go")


@cli.group(invoke_without_command=True)
@click.option("--json", "as_json", is_flag=True)
@click.pass_context
def clones(ctx, as_json):
    """The clones and worktrees of this project that gc asks what they reach.

    Every clone that opened the lake is remembered. gc removes a commit snapshot
    only when every one of them is present, readable and not shallow, and none
    reaches the commit. `snapver clones forget PATH` drops one that is gone.
    """
    if ctx.invoked_subcommand is not None:
        return
    seen = run("clones")
    if as_json:
        emit_json([{k: s[k] for k in ("path", "git_dir", "workspace", "state", "detail")} for s in seen])
        return
    for s in seen:
        here = "  (this one)" if s["this"] else ""
        click.echo(f"{s['state']:<10}  {s['path']}  {s['workspace']}{here}")
        if s["detail"] and s["state"] != "missing":
            click.echo(f"            {s['detail']}")


@clones.command("forget")
@click.argument("path")
@json_option
def clones_forget(path, as_json):
    """Stop counting a clone that was deleted or moved away (the only way to drop one).

    Refused while PATH is still that clone: gc must count what its branches
    reach; delete it first. A clone moved elsewhere is remembered anew at its new
    path the first time snapver runs there.
    """
    forgot = run("clones-forget", {"path": path})
    if as_json:
        return emit_result(forgot)
    for c in forgot:
        click.echo(f"forgot {c['path']} (workspace {c['workspace']}); gc no longer waits for it")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
def du(as_json):
    """Bytes per volume and snapshot: shared with others, exclusive, and the saving against
    full copies. On Btrfs from send streams between snapshots (a volume's first snapshot is
    walked once, remembered)."""
    report = run("du")
    if as_json:
        emit_json(report)
        return
    for vol in report["volumes"]:
        origin = f"  (derived from {vol['derived_from'][:vol['derived_from'].index('@') + 11]})" if vol["derived_from"] else ""
        click.echo(f"{vol['volume']}{origin}")
        for r in vol["rows"]:
            name = label(r["snapshot"]) if r["snapshot"] else "live"
            click.echo(f"  {name:<34} {human(r['referenced']):>10}  {human(r['shared']):>10} shared  "
                       f"{human(r['exclusive']):>10} exclusive")
    pct = 100 * report["saving"] / report["full_copies"] if report["full_copies"] else 0
    click.echo(f"full copies {human(report['full_copies'])}, on disk {human(report['on_disk'])}: "
               f"saved {human(report['saving'])} ({pct:.0f}%)")
    if report.get("metadata") is not None:
        click.echo(f"on disk: the filesystem's data bytes; its metadata (small files inline in it "
                   f"included) takes {human(report['metadata'])} more")


@cli.command()
@click.option("--repair", is_flag=True, help="Finish or undo what was interrupted.")
@click.option("--json", "as_json", is_flag=True)
def doctor(repair, as_json):
    """Find operations a crash interrupted (checkout, gc, derive, receive, snapshot, restore) and what they left.

    Exits 1 while something is unfinished. With --repair, each interrupted
    operation is finished (checkout, derive, a receive whose snapshot arrived, a
    snapshot set whose missing volumes are unchanged since) or ended (gc: nothing it
    had not destroyed yet goes; a receive that was cut; a snapshot set that can no
    longer be one point in time; a restore: its partial copy goes, your data stays),
    half-made swaps are completed or dropped, and what cut receives left is removed
    (also a half-received ZFS stream kept for resuming).
    """
    report = run("doctor", {"repair": repair})  # its table entry says nothing on the way: the report does
    if as_json:
        emit_json(report)
    else:
        for line in report["repaired"]:
            click.echo(f"repaired: {line}")
        for o in report["interrupted"]:
            last = o["steps"][-1]["step"] if o["steps"] else "none"
            how = f"failed: {o['error']}" if o["state"] == "failed" else f"interrupted, PID {o['pid']} gone"
            click.echo(f"{o['kind']} #{o['id']} ({how}), started {o['started']} by `{o['command']}`, "
                       f"last step done: {last}")
            intent = {k: v for k, v in o["intent"].items() if k != "rows"}  # a receive's catalog rows: bulky
            click.echo(f"  intent: {json.dumps(intent, sort_keys=True)}")
        for line in report["leftovers"]:
            click.echo(f"left behind: {line}")
        for sha in report.get("unsnapshotted", []):
            click.echo(f"no snapshot: commit {short(sha)} (its hook lost a race or did not run; "
                       "it resolves to its nearest snapshotted ancestor)")
        for line in report.get("links", []):
            click.echo(f"volume link: {line}")
        for line in report.get("half_made", []):
            click.echo(f"half-made: {line}")
        if report["clean"]:
            click.echo("nothing interrupted: the workspace is clean")
        elif not repair:
            click.echo("run `snapver doctor --repair` to finish or undo it")
    if not report["clean"]:
        sys.exit(1)


@cli.command()
@json_option
def reindex(as_json):
    """Rebuild the catalog from the snapshots on the filesystem (and commits from Git)."""
    done = run("reindex")
    if as_json:
        return emit_result(done)
    click.echo(f"catalog rebuilt: {done['snapshots']} snapshots")
    if done["set_aside"]:
        click.echo(f"snapver: warning: the damaged catalog is kept as {done['set_aside']}: releases, "
                   "metrics and lineage were only in it (see SECURITY.md, catalog loss); `snapver registry refresh` "
                   "reads the [registry] metric and param files of every snapshot again", err=True)


def print_pruned(pruned: list[dict], dry_run: bool) -> None:
    for p in pruned:
        kept = f"; its changes kept first as {label(p['kept'][0])}" if p["kept"] else ""
        click.echo(f"{'would remove' if dry_run else 'removed'} the live {', '.join(p['volumes'])} of "
                   f"{p['path']} (gone){kept}")


@cli.command()
@click.option("--dry-run", is_flag=True, help="List what would be removed, remove nothing.")
@json_option
def prune(dry_run, as_json):
    """Remove the live volumes of working trees that are gone (deleted, or `git worktree
    remove`d), which would otherwise stay in the lake forever. A change not in a snapshot
    is kept first as a wip snapshot (`snapver log --all` shows it; gc keeps it for the
    retention's `kept` age). A clone that was moved counts as gone until it is opened at its
    new place: run any snapver command there first. gc prunes too.
    """
    pruned = run("prune", {"dry_run": dry_run})
    if as_json:
        return emit_result(pruned)
    print_pruned(pruned, dry_run)
    if not pruned:
        click.echo("no working tree of this project is gone with its volumes left in the lake")
