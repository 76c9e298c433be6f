"""`snapver` commands of the registry: find, compare, release, derive, lineage, scan."""

from __future__ import annotations

import sys

import click

from ..errors import NO_MATCH, one_line
from ..names import short
from . import complete_release, complete_rev, complete_volume, complete_volume_at_rev
from . import cli, emit_json, emit_result, json_option, when, cell, label, run


@cli.command()
@click.argument("queries", nargs=-1)
@click.option("--all", "include_wip", is_flag=True, help="Include wip snapshots.")
@click.option("--sort", "sort_key", metavar="KEY", help="By this metric or param, the smallest first (-KEY: the greatest).")
@click.option("--desc", is_flag=True, help="With --sort: the greatest first.")
@click.option("--limit", type=click.IntRange(min=1), metavar="N", help="At most N versions.")
@click.option("--json", "as_json", is_flag=True)
def find(queries, include_wip, sort_key, desc, limit, as_json):
    """Versions whose metrics and params meet every QUERY, e.g. 'accuracy>0.9' 'lr<0.01'.

    Operators: > >= < <= = == != (words compare with = and != only). Newest
    first, or by --sort KEY; `find --sort -accuracy --limit 3` is the best three.
    A name no version has is an error (exit 1), not an empty answer.
    Exits 5 when no version matches.
    """
    if desc and not sort_key:
        raise click.UsageError("--desc goes with --sort KEY")
    if desc and not sort_key.startswith("-"):
        sort_key = "-" + sort_key
    rows = run("find", {"queries": list(queries), "all": include_wip, "sort": sort_key, "limit": limit})
    if as_json:
        emit_json(rows)
    for r in rows if not as_json else []:
        vals = "  ".join(f"{k}={cell(v)}" for k, v in r["values"].items())
        click.echo(f"{label(r['name']):<34} {when(r['created'])}  {vals}  {r['subject'] or ''}".rstrip())
    if not rows:
        if not as_json:
            click.echo(f"snapver: no version matches {one_line(' '.join(queries))}", err=True)
        sys.exit(NO_MATCH)  # as grep: a script tells "none" from an error (1)


@cli.command()
@click.argument("revs", nargs=-1, required=True, metavar="REV1 REV2 [REV...]", shell_complete=complete_rev)
@click.option("--json", "as_json", is_flag=True)
def compare(revs, as_json):
    """Params and metrics of two or more revisions side by side, each number with its
    delta against REV1, and the files changed in each volume from REV1 to the last.

    Walks both snapshots to find changed files: O(files).
    """
    if len(revs) < 2:
        raise click.UsageError("give two or more revisions to compare")
    result = run("compare", {"revs": list(revs)})
    if as_json:
        emit_json(result)
        return
    width = 24 if len(revs) > 2 else 20
    key = max([19] + [len(k) for kind in ("params", "metrics") for k in result[kind]])  # long names keep the columns
    click.echo(f"{'':<{key + 9}} " + " ".join(f"{label(n):>{width}}" for n in result["snapshots"]))
    for kind in ("params", "metrics"):
        for k, cells in result[kind].items():
            mark = " " if len({repr(c) for c in cells}) == 1 else "*"
            shown = [cell(cells[0])] + [cell(c) + (f" ({d:+.3g})" if d else "")
                                        for c, d in zip(cells[1:], result["deltas"][kind][k][1:])]
            click.echo(f"{mark} {kind[:-1]:<6} {k:<{key}} " + " ".join(f"{x:>{width}}" for x in shown))
    sign = {"added": "+", "changed": "M", "deleted": "-"}
    for v, changes in result["changes"].items():
        click.echo(f"{v}: {len(changes)} file(s) changed" if changes else f"{v}: unchanged")
        for c in changes:
            click.echo(f"  {sign[c['change']]} {c['path']}")


class _ReleaseGroup(click.Group):
    """`snapver release NAME [REV]` creates; `release list|remove` are subcommands."""

    def parse_args(self, ctx, args):
        if args and args[0] not in self.commands and not args[0].startswith("-"):
            args = ["create", *args]
        return super().parse_args(ctx, args)


@cli.group(cls=_ReleaseGroup)
def release():
    """Releases: names pinned to a commit's snapshots, protected from gc.

    `snapver release NAME [REV]` pins NAME to REV (default HEAD); `release set
    NAME REV` moves it; then `checkout release:NAME` and `path release:NAME
    VOLUME` find it, and <lake>/<project>/releases/NAME/VOLUME leads to it.
    Git tags become releases by themselves ([releases] from_tags in snapver.toml).
    """


@release.command("create", hidden=True)
@click.argument("name")
@click.argument("rev", default="HEAD", shell_complete=complete_rev)
@click.option("-m", "--message", help="A note kept with the release.")
@click.option("--force", is_flag=True, help="Release even if the model scan flagged a file.")
@json_option
def release_create(name, rev, message, force, as_json):
    r = run("release-create", {"name": name, "rev": rev, "message": message, "force": force})
    if as_json:
        return emit_result(r)
    click.echo(f"release {r['name']} pins {label(r['snapshot'])} ({', '.join(r['volumes'])})"
               + ("  [flagged by the model scan: released with --force]" if r["forced"] else ""))


@release.command("list")
@click.option("--json", "as_json", is_flag=True)
def release_list(as_json):
    """Every release, newest first."""
    rels = run("release-list")
    if as_json:
        emit_json(rels)
        return
    for r in rels:
        flag = "  [forced]" if r["forced"] else ""
        click.echo(f"{r['name']:<20} {label(r['snapshot']):<34} {when(r['created'])}  {r['message'] or ''}{flag}".rstrip())


@release.command("remove")
@click.argument("name", shell_complete=complete_release)
@json_option
def release_remove(name, as_json):
    """Unpin a release (its snapshots are then subject to gc again)."""
    r = run("release-remove", {"name": name})
    if as_json:
        return emit_result(r)
    click.echo(f"release {r['name']} removed (was {label(r['snapshot'])})")


@release.command("set")
@click.argument("name", shell_complete=complete_release)
@click.argument("rev", shell_complete=complete_rev)
@click.option("-m", "--message", help="Why: kept in the release's history.")
@click.option("--if", "conditions", multiple=True, metavar="COND",
              help="Move only if REV meets COND (as `snapver find`, e.g. 'accuracy>0.9'); else exit 1.")
@click.option("--force", is_flag=True, help="Move even if the model scan flagged a file.")
@json_option
def release_set(name, rev, message, conditions, force, as_json):
    """Move release NAME to REV (made if new) in one step: release:NAME always resolves.

    Every move is kept (`release history NAME`); the stable path
    <lake>/<project>/releases/NAME/VOLUME follows it; on ZFS the hold moves too.
    """
    r = run("release-set", {"name": name, "rev": rev, "message": message, "force": force,
                                 "conditions": list(conditions)})
    if as_json:
        return emit_result(r)
    was = f" (was {label(r['from'])})" if r["from"] and r["from"] != r["snapshot"] else \
        (" (already there)" if r["from"] else " (new)")
    click.echo(f"release {r['name']} pins {label(r['snapshot'])}{was}"
               + ("  [flagged by the model scan: released with --force]" if r["forced"] else ""))


release.add_command(release_set, "stage")


@release.command("history")
@click.argument("name", shell_complete=complete_release)
@click.option("--json", "as_json", is_flag=True)
def release_history(name, as_json):
    """Every move of release NAME, oldest first: when, who, from, to, message."""
    moves = run("release-history", {"name": name})
    if as_json:
        emit_json(moves)
        return
    for m in moves:
        src = label(m["from_snapshot"]) if m["from_snapshot"] else "(new)"
        dst = label(m["to_snapshot"]) if m["to_snapshot"] else "(removed)"
        click.echo(f"{when(m['when'])}  {m['who'] or '?':<24} {src:>12} -> {dst:<12} {m['message'] or ''}".rstrip())


@cli.command()
@click.argument("source", metavar="SOURCE_VOLUME@REV", shell_complete=complete_volume_at_rev)
@click.argument("volume", metavar="NEW_VOLUME")
@click.option("-m", "--message", help="Why: kept with the lineage edge.")
@click.option("--run", "run_cmd", metavar="CMD", help="The command that builds it (`snapver build`, `cascade`).")
@click.option("--input", "inputs", metavar="VOLUME@REV", multiple=True, shell_complete=complete_volume_at_rev,
              help="An input of --run (repeatable; default: SOURCE_VOLUME@REV).")
@json_option
def derive(source, volume, message, run_cmd, inputs, as_json):
    """A new volume as a copy-on-write clone of a snapshot (a fine-tune from its base model).

    Nothing is copied; NEW_VOLUME is added to snapver.toml (commit it) and
    snapshotted with every commit from now on.
    """
    e = run("derive", {"source": source, "volume": volume, "message": message, "run": run_cmd,
                       "inputs": list(inputs)})
    if as_json:
        return emit_result(e)
    click.echo(f"{e['volume']}/ derived from {e['source_volume']}@{label(e['source_snapshot'])} "
               "(copy-on-write: nothing copied)")
    if e["recipe"]:
        click.echo(f"recipe kept: `snapver build {volume}` runs {run_cmd!r} with {', '.join(e['recipe']['inputs'])}")
    click.echo(f"{volume} was added to snapver.toml: commit it")


@cli.command()
@click.argument("volume", required=False, shell_complete=complete_volume)
@click.option("--dot", is_flag=True, help="Graphviz DOT instead of a text tree.")
@click.option("--upstream", metavar="VOLUME@REV", help="Where this snapshot comes from.",
              shell_complete=complete_volume_at_rev)
@click.option("--json", "as_json", is_flag=True)
def lineage(volume, dot, upstream, as_json):
    """The graph of derived volumes (all of it, or VOLUME's family)."""
    found = run("lineage", {"volume": volume, "upstream": upstream, "dot": dot})
    if upstream:
        chain = found["upstream"]
        if as_json:
            emit_json(chain)
            return
        for step in chain:
            head = "" if step["relation"] == "this" else f"{step['relation']} "
            note = f'  "{step["message"]}"' if step["message"] else ""
            click.echo(f"{head}{step['volume']}@{label(step['snapshot'])}{note}")
            if step["same_moment"]:
                click.echo(f"    with {', '.join(v + '@' + label(step['snapshot']) for v in step['same_moment'])}")
        return
    if "dot" in found:
        click.echo(found["dot"], nl=False)
        return
    tree = found["tree"]
    if as_json:
        emit_json(tree)
        return
    for row in tree:
        depth, v, origin = row["depth"], row["volume"], row["from"]
        indent = "    " * (depth - 1) + "└── " if depth else ""
        if origin:
            source_volume, _, source_snapshot = origin.partition("@")
            note = f"  from {source_volume}@{label(source_snapshot)}" + (f'  "{row["message"]}"' if row["message"] else "")
        else:
            note = ""
        click.echo(f"{indent}{v}{note}" + (f"  [stale: {row['stale']}]" if row.get("stale") else ""))


@cli.command()
@click.argument("rev", default="HEAD", shell_complete=complete_rev)
@click.option("--pending", is_flag=True,
              help="Scan every snapshot whose scan a Git hook left pending (what its background process does).")
@click.option("--json", "as_json", is_flag=True)
def scan(rev, pending, as_json):
    """The model scan of REV's snapshots (scanning now those never scanned).

    Pickle-based model files (.pkl .pickle .pt .pth .bin .joblib .ckpt) are
    disassembled by picklescan, never loaded: flagged (imports code that runs on
    load), suspicious (imports globals picklescan does not know), clean. Globals
    in [scan] allow of snapver.toml (e.g. ["sklearn.*", "numpy.*"]) are accepted.
    Exits 1 if a file is flagged.

    A Git hook does not read a model that changed: it marks the snapshot's scan
    pending and a process of its own scans it after the commit (`log` and `show`
    say "scan pending" meanwhile; `release` scans a pending snapshot before it
    decides). --pending runs those scans now.
    """
    if pending:
        done = run("scan-pending")
        if as_json:
            emit_json(done)
        else:
            click.echo(f"scanned {len(done)} pending snapshot(s)")
            for d in done:
                for path in d["flagged"]:
                    click.echo(f"  FLAGGED    {d['volume']}/{path}  at {short(d['snapshot'])}")
        if any(d["flagged"] for d in done):
            sys.exit(1)
        return
    report = run("scan", {"rev": rev})
    if as_json:
        emit_json(report)
    else:
        for v, files in report.items():
            counts = {s: sum(f["state"] == s for f in files) for s in ("flagged", "suspicious", "clean")}
            click.echo(f"{v}: {len(files)} model file(s): " + ", ".join(f"{n} {s}" for s, n in counts.items()))
            for state in ("flagged", "suspicious", "clean"):  # what needs a look first
                for f in (f for f in files if f["state"] == state):
                    click.echo(f"  {state.upper() if state == 'flagged' else state:<10} {f['path']}"
                               + (f"  {', '.join(f['findings'])}" if f["findings"] else ""))
    if any(f["flagged"] for files in report.values() for f in files):
        sys.exit(1)


@cli.command("commit")
@click.option("-m", "--message", required=True, help="The commit message.")
@click.option("-a", "--all", "all_tracked", is_flag=True, help="As `git commit -a`: every modified tracked file.")
def commit_(message, all_tracked):
    """A commit of what changed: Git's files as `git commit` would, or, when only the data
    or a model changed, an empty commit (`--allow-empty`). The hooks snapshot it as usual.
    """
    done = run("commit", {"message": message, "all": all_tracked})
    if done["exit_code"]:
        sys.exit(done["exit_code"])
    if done["data_only"]:
        click.echo(f"data-only commit {label(done['head'] or '')}: {', '.join(done['changed'])} changed, nothing for Git")
