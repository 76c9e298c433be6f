"""`snapver` commands of snapshots and checkouts: init, snapshot, log, status, checkout, diff, restore, show, remap, path, hooks."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import SnapverError
from .. import ops
from ..lake import Workspace, parse_size, short
from . import cli, emit_json, when, cell, registry_view, label, daemon_view, warn


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
    from .. import githooks

    if pool_image:
        if image or backend == "btrfs":
            raise SnapverError("--pool-image makes a ZFS pool: it goes with neither --image nor --backend btrfs")
        image, backend = pool_image, "zfs"
    ws = Workspace.init(".", list(volumes), backend, lake, image, parse_size(size) if size else None)
    click.echo(f"lake {ws.backend.spec()} ({ws.backend.name}), project {ws.project}")
    if ws.joined:
        click.echo(ws.joined)
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
        from .. import registry

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
        if r.get("stale"):
            line += f"  [stale: {r['stale']}]"
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
    from .. import rewrite

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
    from .. import githooks
    from ..gitrepo import GitRepo

    git = GitRepo.find(".")
    names = githooks.install(git)
    click.echo(f"installed {', '.join(names)} in {githooks.hooks_dir(git)}")


@hooks.command("uninstall")
def hooks_uninstall():
    """Remove the hooks and put back any hook they had chained to."""
    from .. import githooks
    from ..gitrepo import GitRepo

    git = GitRepo.find(".")
    names = githooks.uninstall(git)
    click.echo(f"removed {', '.join(names)}" if names else "no snapver hooks were installed")


@cli.command()
@click.argument("rev")
@click.argument("volume")
def path(rev, volume):
    """The read-only path of VOLUME at REV (e.g. release:prod), for a serving config."""
    from .. import api

    click.echo(str(api.path(volume, rev)))
