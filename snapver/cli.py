"""The `snapver` command: parse, call the core, print. Nothing else lives here."""

from __future__ import annotations

import json
import sqlite3
import sys
from datetime import datetime
from pathlib import Path

import click

from .errors import SnapverError
from . import catalog, ops
from .lake import Workspace, parse_size, short


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


def registry_view(ws, snaps) -> dict:
    """Provenance, params and metrics of a snapshot (for show)."""
    from . import registry

    name = next(iter(snaps.values())).name
    v = registry.values(ws, [name]).get(name, {})
    return {"provenance": registry.provenance(ws, name),
            "params": v.get("param", {}), "metrics": v.get("metric", {})}


def label(name: str) -> str:
    """A snapshot name for people: the short commit ID, and the time of a wip."""
    return short(name) + name[40:]


def daemon_view() -> dict | None:
    """What snapverd knows of this working tree, if one is running and watches it."""
    if not ops.SOCKET.exists():
        return None
    from . import client
    from .gitrepo import GitRepo

    try:
        toplevel = str(GitRepo.find(".").toplevel)
        return next((w for w in client.request({"op": "daemon-status"}, timeout=5) if w["workspace"] == toplevel), None)
    except (client.Unavailable, SnapverError, OSError):
        return None


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="snapver")
def cli():
    """Version an ML data lake (data, models, logs) with the Git commits of its code.

    Every commit gets a copy-on-write snapshot of each volume, named after the
    commit ID; checking out a commit brings the volumes back to it.
    """


@cli.command()
@click.option("--volume", "volumes", multiple=True, metavar="NAME",
              help="A volume to create (repeatable). Default: data, models, logs.")
@click.option("--image", type=click.Path(dir_okay=False, path_type=Path),
              help="Make (or reuse) a loop-mounted Btrfs image file as the lake (needs root).")
@click.option("--pool-image", type=click.Path(dir_okay=False, path_type=Path),
              help="Make (or import) a file-backed ZFS pool as the lake (needs root; implies --backend zfs).")
@click.option("--size", help="Size of a new --image or --pool-image, e.g. 20G (the file is sparse).")
@click.option("--lake", metavar="DIR|DATASET",
              help="Use this directory on Btrfs (or this ZFS dataset, with --backend zfs) as the lake.")
@click.option("--backend", type=click.Choice(["btrfs", "zfs"]), help="Filesystem of the lake.")
def init(volumes, image, pool_image, size, lake, backend):
    """Set up the lake for this Git working tree.

    Creates the volumes, links them at <repo>/<volume>, keeps them out of Git
    and writes snapver.toml (commit it). In a clone of a repository that has
    snapver.toml, joins that project's history and starts at HEAD's snapshot.
    """
    from . import githooks

    if pool_image:
        if image or backend == "btrfs":
            raise SnapverError("--pool-image makes a ZFS pool: it goes with neither --image nor --backend btrfs")
        image, backend = pool_image, "zfs"
    ws = Workspace.init(".", list(volumes), backend, lake, image, parse_size(size) if size else None)
    click.echo(f"lake {ws.backend.spec()} ({ws.backend.name}), project {ws.project}")
    for v in ws.volumes:
        base = ws.state.volume(v).base
        click.echo(f"  {v}/ -> {ws.live_path(v)}" + (f" (at {short(base)})" if base else ""))
    githooks.install(ws.git)
    click.echo("Git hooks installed: commits snapshot the lake, checkouts bring it back.")
    click.echo("Commit snapver.toml so that every clone shares this history.")


@cli.command()
@click.option("--wip", is_flag=True, help="A work-in-progress snapshot (<HEAD>.<UTC time>).")
@click.option("-m", "--message", help="A note kept with the snapshot.")
def snapshot(wip, message):
    """Snapshot every volume as the HEAD commit (or a wip point in time)."""
    for s in ops.call("snapshot", {"wip": wip, "message": message}):
        click.echo(f"{s['volume']}@{s['name']}")


@cli.command()
@click.option("--all", "include_wip", is_flag=True, help="Include wip snapshots.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per volume snapshot.")
@click.option("--metric", "metrics", multiple=True, metavar="NAME",
              help="Show this metric or param as a column (repeatable).")
def log(include_wip, as_json, metrics):
    """Snapshots of this project, newest first."""
    entries = ops.call("log", {"all": include_wip})
    if metrics:
        from . import registry

        known = registry.values(Workspace.open(), list({e["name"] for e in entries}))
        for e in entries:
            e["metrics"] = {m: registry.lookup(known.get(e["name"], {}), m) for m in metrics}
    if as_json:
        emit_json(entries)
        return
    if metrics:
        click.echo(f"{'snapshot':<34} {'':<19}  {'kind':<6}  " + "  ".join(f"{m:>12}" for m in metrics))
    grouped: dict[str, list] = {}
    for e in entries:
        grouped.setdefault(e["name"], []).append(e)
    for name, group in grouped.items():
        first = group[0]
        vols = " ".join(sorted(e["volume"] for e in group))
        note = first["message"] or first["subject"] or ""
        cols = "".join(f"{cell(first['metrics'][m]):>12}  " for m in metrics)
        click.echo(f"{label(name):<34} {when(first['created'])}  {first['kind']:<6}  {cols}{vols}  {note}".rstrip())


@cli.command()
@click.option("--json", "as_json", is_flag=True)
def status(as_json):
    """Which volumes changed since their last snapshot."""
    rows = ops.call("status")
    watched = daemon_view()
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        base = label(r["base"]) if r["base"] else "no snapshot"
        line = f"{r['volume']:<12} {'changed' if r['changed'] else 'clean':<8} since {base}"
        if watched and r["volume"] in watched["volumes"]:
            d = watched["volumes"][r["volume"]]
            pending = f", pending {d['pending_for']}s" if d["pending_for"] is not None else ""
            line += f"  [snapverd: {d['mode']}{pending}]"
        click.echo(line)
        if r.get("link"):
            click.echo(f"{'':<12} LINK BROKEN: {r['link']}")


@cli.command()
@click.argument("rev")
@click.option("--volume", "volumes", multiple=True, metavar="NAME", help="Only this volume (repeatable).")
def checkout(rev, volumes):
    """Make the volumes the snapshot of REV (a commit-ish or a snapshot name).

    Unsnapshotted changes are first kept as a wip snapshot.
    """
    result = ops.call("checkout", {"rev": rev, "volumes": list(volumes)})
    for w in result["warnings"]:
        warn(w)
    relinked = result.get("links", {})
    for line in relinked.values():
        click.echo(f"repaired: {line}")
    if result["kept"]:
        click.echo(f"kept unsnapshotted changes as {result['kept'][0]['name']}")
    broken = result.get("broken", {})
    for v, s in result["target"].items():
        if v in broken:
            click.echo(f"{v:<12} LINK BROKEN: {broken[v]}")
            continue
        at = "now at" if v in result["switched"] else "relinked at" if v in relinked else "already at"
        click.echo(f"{v:<12} {at} {label(s['name'])}")
    if broken:
        sys.exit(1)


@cli.command()
@click.argument("rev")
@click.argument("rev2", required=False)
@click.option("--volume", "volumes", multiple=True, metavar="NAME")
@click.option("--json", "as_json", is_flag=True)
def diff(rev, rev2, volumes, as_json):
    """Files added, changed and deleted from REV to REV2 (default: the live volumes).

    Walks both trees: O(files), unlike snapshot and checkout.
    """
    changes = Workspace.open().diff(rev, rev2, list(volumes) or None)
    if as_json:
        emit_json({v: [{"path": c.path, "change": c.change} for c in cs] for v, cs in changes.items()})
        return
    sign = {"added": "+", "changed": "M", "deleted": "-"}
    for v, cs in changes.items():
        for c in cs:
            click.echo(f"{sign[c.change]} {v}/{c.path}")


@cli.command()
@click.argument("rev")
@click.argument("path")
@click.option("--to", "dest", metavar="DEST", help="Write it here instead of its own place.")
def restore(rev, path, dest):
    """Bring back one file or folder (e.g. models/model.pt) from REV's snapshot."""
    where, snap = Workspace.open().restore(rev, path, dest)
    click.echo(f"restored {path} from {label(snap.name)}" + (f" to {where}" if dest else ""))


@cli.command()
@click.argument("rev")
@click.option("--space", is_flag=True, help="Also measure bytes used (walks the snapshot: O(files)).")
@click.option("--json", "as_json", is_flag=True)
def show(rev, space, as_json):
    """A snapshot's commit, volumes and paths."""
    ws = Workspace.open()
    commit, snaps, info = ws.show(rev)
    spaces = {v: ws.backend.space(s) for v, s in snaps.items()} if space else {}
    if as_json:
        vols = {v: {**ops.snapshot_dict(s), **({"referenced": spaces[v].referenced,
                                            "exclusive": spaces[v].exclusive} if space else {})}
                for v, s in snaps.items()}
        emit_json({"commit": commit, "info": info, "volumes": vols, **registry_view(ws, snaps)})
        return
    click.echo(f"commit   {commit}")
    if info:
        click.echo(f"author   {info['author']} <{info['email']}>")
        click.echo(f"date     {info['time']}")
        click.echo(f"subject  {info['subject']}")
    for v, s in snaps.items():
        extra = f"  {spaces[v].referenced:,} B, {spaces[v].exclusive:,} B exclusive" if space else ""
        click.echo(f"{v:<12} {s.name}  {when(s.created)}  {s.path}{extra}")
    view = registry_view(ws, snaps)
    for v, fields in view["provenance"].items():
        click.echo(f"{v:<12} " + "  ".join(f"{k} {val}" for k, val in fields.items()))
    for kind in ("params", "metrics"):
        for k, val in view[kind].items():
            click.echo(f"{kind[:-1]:<8} {k} = {cell(val)}")


@cli.command()
@click.argument("commit_map", metavar="COMMIT-MAP", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True)
def remap(commit_map, as_json):
    """Give commits rewritten by filter-repo or filter-branch their snapshots.

    COMMIT-MAP is filter-repo's .git/filter-repo/commit-map, or lines of `<old> <new>`
    commit IDs. Each new commit gets its own snapshot of every volume its old commit had
    (O(1)); the old snapshots stay until gc finds nothing that reaches them.
    """
    from . import rewrite

    pairs = rewrite.parse_commit_map(commit_map)
    made = ops.call("rewrite", {"pairs": pairs})
    if as_json:
        emit_json(made)
        return
    commits = sorted({s["commit"] for s in made})
    for c in commits:
        click.echo(f"{short(c)}  " + ", ".join(s["volume"] for s in made if s["commit"] == c))
    click.echo(f"{len(made)} snapshot(s) made for {len(commits)} rewritten commit(s); the old ones are kept")


@cli.group()
def hooks():
    """The Git hooks that snapshot on commit and follow checkouts."""


@hooks.command("install")
def hooks_install():
    """Install the hooks (honours core.hooksPath; an existing hook is chained, not replaced)."""
    from . import githooks
    from .gitrepo import GitRepo

    git = GitRepo.find(".")
    names = githooks.install(git)
    click.echo(f"installed {', '.join(names)} in {githooks.hooks_dir(git)}")


@hooks.command("uninstall")
def hooks_uninstall():
    """Remove the hooks and put back any hook they had chained to."""
    from . import githooks
    from .gitrepo import GitRepo

    git = GitRepo.find(".")
    names = githooks.uninstall(git)
    click.echo(f"removed {', '.join(names)}" if names else "no snapver hooks were installed")


@cli.command()
@click.option("--dry-run", is_flag=True, help="List what would be removed, remove nothing.")
@click.option("--forget-unknown", "forget_unknown", metavar="OLDER_THAN",
              help="Also remove snapshots of unknown commits (no known clone has them) "
                   "that arrived longer ago than this, e.g. 90d.")
@click.option("--json", "as_json", is_flag=True)
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
    from .daemon import policy_for
    from .retention import UNKNOWN, Policy, parse_duration

    forget = parse_duration(forget_unknown) if forget_unknown else None
    ws = Workspace.open()
    decisions = ws.gc(policy_for(ws, Policy()), dry_run=dry_run, forget_unknown=forget)
    if as_json:
        emit_json([{**ops.snapshot_dict(d.snapshot), "keep": d.keep, "reason": d.reason} for d in decisions])
        return
    if ws.gc_doubts:
        more = f" (and {len(ws.gc_doubts) - 1} more)" if len(ws.gc_doubts) > 1 else ""
        click.echo(f"kept every unreachable commit snapshot: {ws.gc_doubts[0]}{more}; "
                   "see `snapver clones`")
    dropped = [d for d in decisions if not d.keep]
    for d in dropped:
        click.echo(f"{'would remove' if dry_run else 'removed'} {d.snapshot.volume}@{label(d.snapshot.name)}  ({d.reason})")
    click.echo(f"{len(dropped)} of {len(decisions)} snapshots {'would go' if dry_run else 'removed'}")
    unknown = sum(d.reason == UNKNOWN for d in decisions)
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
    from . import clones as clones_

    ws = Workspace.open()
    seen = clones_.listing(ws)
    if as_json:
        emit_json([{"path": str(s.clone.worktree), "git_dir": str(s.clone.git_dir) if s.clone.git_dir else None,
                    "workspace": s.clone.workspace, "state": s.state, "detail": s.detail} for s in seen])
        return
    for s in seen:
        here = "  (this one)" if s.clone.worktree == ws.git.toplevel and s.clone.workspace == ws.id else ""
        click.echo(f"{s.state:<10}  {s.clone.worktree}  {s.clone.workspace}{here}")
        if s.detail and s.state != "missing":
            click.echo(f"            {s.detail}")


@clones.command("forget")
@click.argument("path")
def clones_forget(path):
    """Stop counting a clone that was deleted or moved away (the only way to drop one).

    Refused while PATH is still that clone: gc must count what its branches
    reach; delete it first. A clone moved elsewhere is remembered anew at its new
    path the first time snapver runs there.
    """
    from . import clones as clones_

    ws = Workspace.open()
    for c in clones_.forget(ws, path):
        click.echo(f"forgot {c.worktree} (workspace {c.workspace}); gc no longer waits for it")


@cli.group(invoke_without_command=True)
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Daemon config (default /etc/snapver/snapverd.toml).")
@click.pass_context
def daemon(ctx, config_path):
    """Run snapverd in the foreground (as systemd does), or ask a running one.

    It takes wip snapshots when writes to a watched workspace go quiet,
    snapshots commits made without the hooks, applies retention, and serves
    users who may not touch the lake themselves over a Unix socket.
    """
    from .daemon import DEFAULT_CONFIG

    ctx.obj = config_path or DEFAULT_CONFIG
    if ctx.invoked_subcommand is None:
        from . import daemon as snapverd

        snapverd.main(ctx.obj)


@daemon.command("status")
@click.option("--json", "as_json", is_flag=True)
def daemon_status(as_json):
    """What the running daemon watches, how, and what is pending."""
    from . import client

    try:
        view = client.request({"op": "daemon-status"}, timeout=10)
    except client.Unavailable:
        raise SnapverError(f"snapverd is not running (nothing listens on {ops.SOCKET})") from None
    if as_json:
        emit_json(view)
        return
    for w in view:
        click.echo(w["workspace"])
        for v, d in w["volumes"].items():
            pending = f"changes pending for {d['pending_for']}s" if d["pending_for"] is not None else "no pending changes"
            last = label(d["last_snapshot"]) if d["last_snapshot"] else "none yet"
            click.echo(f"  {v:<12} {d['mode']:<8} {pending}; last wip snapshot {last}")


@daemon.command("gc")
@click.pass_obj
def daemon_gc(config_path):
    """Apply retention once to every workspace in the daemon config (for snapver-gc.timer)."""
    from .daemon import Daemon

    decisions = Daemon(config_path).gc_all()
    click.echo(f"{sum(not d.keep for d in decisions)} of {len(decisions)} snapshots removed")


@cli.command()
@click.argument("queries", nargs=-1, required=True)
@click.option("--all", "include_wip", is_flag=True, help="Include wip snapshots.")
@click.option("--json", "as_json", is_flag=True)
def find(queries, include_wip, as_json):
    """Versions whose metrics and params meet every QUERY, e.g. 'accuracy>0.9' 'lr<0.01'.

    Operators: > >= < <= = == != (words compare with = and != only).
    """
    from . import registry

    rows = registry.find(Workspace.open(), list(queries), include_wip)
    if as_json:
        emit_json(rows)
        return
    for r in rows:
        vals = "  ".join(f"{k}={cell(v)}" for k, v in r["values"].items())
        click.echo(f"{label(r['name']):<34} {when(r['created'])}  {vals}  {r['subject'] or ''}".rstrip())


@cli.command()
@click.argument("rev1")
@click.argument("rev2")
@click.option("--json", "as_json", is_flag=True)
def compare(rev1, rev2, as_json):
    """Params and metrics of REV1 and REV2 side by side, and the files changed in each volume.

    Walks both snapshots to find changed files: O(files).
    """
    from . import registry

    result = registry.compare(Workspace.open(), rev1, rev2)
    if as_json:
        emit_json(result)
        return
    a, b = (label(n) for n in result["snapshots"])
    click.echo(f"{'':<28} {a:>20} {b:>20}")
    for kind in ("params", "metrics"):
        for k, (x, y) in result[kind].items():
            mark = " " if x == y else "*"
            click.echo(f"{mark} {kind[:-1]:<6} {k:<19} {cell(x):>20} {cell(y):>20}")
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


def release_dict(r) -> dict:
    return {"name": r.name, "snapshot": r.snapshot, "commit": r.commit, "volumes": r.volumes,
            "created": r.created, "message": r.message, "forced": r.forced}


@cli.group(cls=_ReleaseGroup)
def release():
    """Releases: names pinned to a commit's snapshots, protected from gc.

    `snapver release NAME [REV]` pins NAME to REV (default HEAD); then
    `checkout release:NAME` and `path release:NAME VOLUME` find it. Git tags
    become releases by themselves ([releases] from_tags in snapver.toml).
    """


@release.command("create", hidden=True)
@click.argument("name")
@click.argument("rev", default="HEAD")
@click.option("-m", "--message", help="A note kept with the release.")
@click.option("--force", is_flag=True, help="Release even if the model scan flagged a file.")
def release_create(name, rev, message, force):
    from . import registry

    r = registry.create_release(Workspace.open(), name, rev, message, force)
    click.echo(f"release {r.name} pins {label(r.snapshot)} ({', '.join(r.volumes)})"
               + ("  [flagged by the model scan: released with --force]" if r.forced else ""))


@release.command("list")
@click.option("--json", "as_json", is_flag=True)
def release_list(as_json):
    """Every release, newest first."""
    from . import registry

    rels = registry.list_releases(Workspace.open())
    if as_json:
        emit_json([release_dict(r) for r in rels])
        return
    for r in rels:
        flag = "  [forced]" if r.forced else ""
        click.echo(f"{r.name:<20} {label(r.snapshot):<34} {when(r.created)}  {r.message or ''}{flag}".rstrip())


@release.command("remove")
@click.argument("name")
def release_remove(name):
    """Unpin a release (its snapshots are then subject to gc again)."""
    from . import registry

    r = registry.remove_release(Workspace.open(), name)
    click.echo(f"release {r.name} removed (was {label(r.snapshot)})")


@cli.command()
@click.argument("rev")
@click.argument("volume")
def path(rev, volume):
    """The read-only path of VOLUME at REV (e.g. release:prod), for a serving config."""
    from . import api

    click.echo(str(api.path(volume, rev)))


@cli.command()
@click.argument("source", metavar="SOURCE_VOLUME@REV")
@click.argument("volume", metavar="NEW_VOLUME")
@click.option("-m", "--message", help="Why: kept with the lineage edge.")
def derive(source, volume, message):
    """A new volume as a copy-on-write clone of a snapshot (a fine-tune from its base model).

    Nothing is copied; NEW_VOLUME is added to snapver.toml (commit it) and
    snapshotted with every commit from now on.
    """
    from . import registry

    e = registry.derive(Workspace.open(), source, volume, message)
    click.echo(f"{e.volume}/ derived from {e.source_volume}@{label(e.source_snapshot)} (copy-on-write: nothing copied)")
    click.echo(f"{volume} was added to snapver.toml: commit it")


@cli.command()
@click.argument("volume", required=False)
@click.option("--dot", is_flag=True, help="Graphviz DOT instead of a text tree.")
@click.option("--upstream", metavar="VOLUME@REV", help="Where this snapshot comes from.")
@click.option("--json", "as_json", is_flag=True)
def lineage(volume, dot, upstream, as_json):
    """The graph of derived volumes (all of it, or VOLUME's family)."""
    from . import registry

    ws = Workspace.open()
    if upstream:
        if volume:
            raise SnapverError("give either VOLUME or --upstream VOLUME@REV, not both")
        chain = registry.upstream(ws, upstream)
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
    if dot:
        click.echo(registry.lineage_dot(ws, volume), nl=False)
        return
    tree = registry.lineage_tree(ws, volume)
    if as_json:
        emit_json([{"depth": d, "volume": v, "from": e and f"{e.source_volume}@{e.source_snapshot}",
                    "message": e and e.message} for d, v, e in tree])
        return
    for depth, v, e in tree:
        indent = "    " * (depth - 1) + "└── " if depth else ""
        note = f"  from {e.source_volume}@{label(e.source_snapshot)}" + (f'  "{e.message}"' if e.message else "") if e else ""
        click.echo(f"{indent}{v}{note}")


@cli.command()
@click.option("--json", "as_json", is_flag=True)
def du(as_json):
    """Bytes per volume and snapshot: shared with others, exclusive, and the saving against
    full copies. Walks the snapshots on Btrfs: O(files)."""
    from . import registry

    report = registry.du(Workspace.open())
    if as_json:
        emit_json(report)
        return
    for vol in report["volumes"]:
        origin = f"  (derived from {vol['derived_from'][:vol['derived_from'].index('@') + 11]})" if vol["derived_from"] else ""
        click.echo(f"{vol['volume']}{origin}")
        for r in vol["rows"]:
            name = label(r["snapshot"]) if r["snapshot"] else "live"
            click.echo(f"  {name:<34} {r['referenced']:>14,} B  {r['shared']:>14,} shared  {r['exclusive']:>14,} exclusive")
    pct = 100 * report["saving"] / report["full_copies"] if report["full_copies"] else 0
    click.echo(f"full copies {report['full_copies']:,} B, on disk {report['on_disk']:,} B: "
               f"saved {report['saving']:,} B ({pct:.0f}%)")


@cli.command()
@click.argument("rev", default="HEAD")
@click.option("--json", "as_json", is_flag=True)
def scan(rev, as_json):
    """The model scan of REV's snapshots (scanning now those never scanned).

    Pickle-based model files (.pkl .pickle .pt .pth .bin .joblib .ckpt) are
    disassembled by picklescan, never loaded. Exits 1 if a file is flagged.
    """
    from . import registry

    report = registry.scan_report(Workspace.open(), rev)
    if as_json:
        emit_json(report)
    else:
        for v, files in report.items():
            click.echo(f"{v}: {len(files)} model file(s), {sum(f['flagged'] for f in files)} flagged")
            for f in files:
                click.echo(f"  {'FLAGGED' if f['flagged'] else 'clean':<8} {f['path']}"
                           + (f"  {', '.join(f['findings'])}" if f["findings"] else ""))
    if any(f["flagged"] for files in report.values() for f in files):
        sys.exit(1)


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
    from . import journal

    journal.announce = None  # the report says it, once
    report = ops.call("doctor", {"repair": repair})
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
def reindex():
    """Rebuild the catalog from the snapshots on the filesystem (and commits from Git)."""
    ws = Workspace.open()
    count = ws.reindex()
    click.echo(f"catalog rebuilt: {count} snapshots")
    if ws.catalog.set_aside:
        click.echo(f"snapver: warning: the damaged catalog is kept as {ws.catalog.set_aside}: releases, "
                   "metrics and lineage were only in it (see SECURITY.md, catalog loss)", err=True)


# ------------------------------------------------------------------ other lakes

@cli.group()
def remote():
    """Other lakes to push snapshots to and pull them from (kept in .git/config)."""


@remote.command("add")
@click.argument("name")
@click.argument("url")
@click.option("--command", metavar="PATH", help="snapver on the remote host, if not `snapver` on its PATH.")
def remote_add(name, url, command):
    """Add a remote: URL is ssh://[user@]host/<pool/dataset or path> or file:///<path or pool/dataset>."""
    from . import transfer

    from .gitrepo import GitRepo

    transfer.add_remote(GitRepo.find("."), name, url, command)
    click.echo(f"remote {name}: {url}")


@remote.command("list")
@click.option("--json", "as_json", is_flag=True)
def remote_list(as_json):
    """The remotes of this working tree."""
    from . import transfer
    from .gitrepo import GitRepo

    found = transfer.remotes(GitRepo.find("."))
    if as_json:
        emit_json([{"name": n, **r} for n, r in sorted(found.items())])
    for n, r in sorted(found.items()) if not as_json else []:
        click.echo(f"{n:<12} {r['url']}")


@remote.command("remove")
@click.argument("name")
def remote_remove(name):
    """Forget a remote (its lake and snapshots stay as they are)."""
    from . import transfer
    from .gitrepo import GitRepo

    transfer.remove_remote(GitRepo.find("."), name)
    click.echo(f"removed remote {name}")


def progress_bars(quiet: bool):
    """A tqdm bar per stream on stderr (bytes, rate, time left where the size is known)."""
    if quiet:
        return None

    def start(volume, name, total):
        from tqdm import tqdm

        bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, leave=True,
                   desc=f"{volume}@{label(name)}", file=sys.stderr, dynamic_ncols=True)

        def tick(n):
            if n is None:
                bar.close()
            else:
                bar.update(n)
        return tick
    return start


def report_transfers(done, as_json: bool, verb: str) -> None:
    if as_json:
        emit_json([vars(t) for t in done])
        return
    for t in done:
        how = f"incremental from {label(t.base)}" if t.base else "whole"
        click.echo(f"{verb} {t.volume}@{label(t.name)}  {t.bytes:,} B in {t.seconds:.1f} s ({how}"
                   f"{', resumed' if t.resumed else ''})")
    click.echo(f"{len(done)} snapshot(s) {verb}" if done else "everything is there already")


def warn(message: str) -> None:
    click.echo(f"snapver: warning: {message}", err=True)


def transfer_command(fn):
    """push and pull take the same arguments: [REMOTE] [REV]..., -q, --json."""
    fn = click.option("--json", "as_json", is_flag=True, help="What was moved, as JSON (no progress bars).")(fn)
    fn = click.option("-q", "--quiet", is_flag=True, help="No progress bars.")(fn)
    fn = click.argument("revs", nargs=-1)(fn)
    fn = click.argument("remote_name", required=False, metavar="[REMOTE]")(fn)
    return cli.command()(fn)


@click.option("--init", is_flag=True, help="Make REMOTE's folder or dataset a lake even if it holds other files.")
@transfer_command
def push(remote_name, revs, quiet, as_json, init):
    """Send the snapshots of REVs (default HEAD) and their history that REMOTE lacks.

    Incremental from the newest snapshot both lakes hold (btrfs send -p,
    zfs send -i), whole only when they share none.
    """
    from . import transfer

    done = transfer.push(Workspace.open(), remote_name, list(revs), progress_bars(quiet or as_json), warn, init)
    report_transfers(done, as_json, "pushed")


@transfer_command
def pull(remote_name, revs, quiet, as_json):
    """Fetch the snapshots of REVs (default HEAD) and their history from REMOTE.

    The lake itself does not move: `git checkout` (or `snapver checkout`) does.
    """
    from . import transfer

    done = transfer.pull(Workspace.open(), remote_name, list(revs), progress_bars(quiet or as_json), warn)
    report_transfers(done, as_json, "pulled")


@cli.command()
@click.argument("git_url")
@click.argument("directory", type=click.Path(file_okay=False, path_type=Path))
@click.option("--from", "lake_url", metavar="URL",
              help="The lake to pull from (default: [remote] url in the repository's snapver.toml).")
@click.option("--lake", metavar="DIR|DATASET", help="This host's lake (default: as snapver.toml says).")
@click.option("--image", type=click.Path(dir_okay=False, path_type=Path), help="A Btrfs image file as this host's lake.")
@click.option("--size", help="Size of a new --image.")
@click.option("--command", metavar="PATH", help="snapver on the lake's host, if not `snapver` on its PATH.")
@click.option("-q", "--quiet", is_flag=True, help="No progress bars.")
def clone(git_url, directory, lake_url, lake, image, size, command, quiet):
    """Clone a repository and bring its lake at HEAD: `git clone`, `init`, `pull`, checkout."""
    from . import githooks, transfer

    ws = transfer.clone(git_url, directory, lake_url, lake, image, parse_size(size) if size else None,
                        progress_bars(quiet), command)
    githooks.install(ws.git)
    at = {ws.state.volume(v).base for v in ws.volumes}
    click.echo(f"cloned into {directory}; lake {ws.backend.spec()}, at "
               f"{', '.join(sorted(label(b) if b else 'empty' for b in at))}")


@cli.command(hidden=True, context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def serve(args):
    """The far end of push and pull (run by them over ssh, or locally for file://)."""
    from . import transfer

    transfer.serve(list(args))


def main() -> None:
    """Every failure a user can cause ends as one line on stderr and a non-zero exit."""
    from .linux import restrict_umask

    restrict_umask()
    from . import journal

    journal.announce = warn
    try:
        code = cli.main(prog_name="snapver", standalone_mode=False)
    except Exception as e:
        explain_failure(e)
        raise  # not a user's error: a bug, with its traceback
    sys.exit(code if isinstance(code, int) else 0)


def explain_failure(e: Exception) -> None:
    """Exit with one line if e is a failure a user can cause; return if it is a bug."""
    from .vanished import lake_gone

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
    from .errors import one_line

    click.echo(f"snapver: {one_line(message)}", err=True)
    sys.exit(code)
