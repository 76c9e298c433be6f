"""`snapver` commands of snapshots and checkouts: init, snapshot, log, status, checkout, diff, restore, show, remap, path, hooks."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..errors import CHANGED, SnapverError
from ..lake import parse_size, short
from . import complete_rev, complete_volume
from . import cli, emit_json, emit_result, human, json_option, when, cell, label, daemon_view, run, warn


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
@click.option("--project", metavar="ID", help="The new project's ID (default: from the folder's name).")
@click.option("--mount", type=click.Path(file_okay=False), metavar="DIR",
              help="With --lake ssh://HOST/LAKE: where this node mounts the server's lake (NFS, sshfs).")
@click.option("--name", metavar="NAME", help="With --mount: this working tree's name on the server.")
@json_option
def init(volumes, image, pool_image, size, lake, backend, project, mount, name, as_json):
    """Set up the lake for this Git working tree.

    Creates the volumes, links them at <repo>/<volume>, keeps them out of Git
    and writes snapver.toml (commit it). In a clone of a repository that has
    snapver.toml, joins that project's history and starts at HEAD's snapshot.
    """
    if pool_image:
        if image or backend == "btrfs":
            raise SnapverError("--pool-image makes a ZFS pool: it goes with neither --image nor --backend btrfs")
        image, backend = pool_image, "zfs"
    made = run("init", {"volumes": list(volumes), "backend": backend, "lake": lake, "project": project,
                        "image": str(image) if image else None, "size": parse_size(size) if size else None,
                        **({"mount": mount, "name": name} if mount or name else {})})
    if as_json:
        return emit_result(made)
    click.echo(f"lake {made['lake']} ({made['backend']}), project {made['project']}")
    if made["joined"]:
        click.echo(made["joined"])
    for v in made["volumes"]:
        base = v["base"]
        click.echo(f"  {v['volume']}/ -> {v['path']}" + (f" (at {short(base)})" if base else ""))
    click.echo("Git hooks installed: commits snapshot the lake, checkouts bring it back.")
    click.echo("Commit snapver.toml so that every clone shares this history.")


@cli.command()
@click.option("--wip", is_flag=True, help="A work-in-progress snapshot (<HEAD>.<UTC time>).")
@click.option("-m", "--message", help="A note kept with the snapshot.")
@json_option
def snapshot(wip, message, as_json):
    """Snapshot every volume as the HEAD commit (or a wip point in time)."""
    made = run("snapshot", {"wip": wip, "message": message})
    if as_json:
        return emit_result(made)
    for s in made:
        click.echo(f"{s['volume']}@{s['name']}")


@cli.command()
@click.option("--all", "include_wip", is_flag=True, help="Include wip snapshots.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per version, its volumes inside.")
@click.option("--metric", "metrics", multiple=True, metavar="NAME",
              help="Show this metric or param as a column (repeatable).")
def log(include_wip, as_json, metrics):
    """Snapshots of this project, newest first."""
    entries = run("log", {"all": include_wip, "metrics": list(metrics)})
    if as_json:
        emit_json(entries)
        return
    # Each metric's column as wide as its name or its widest value: a long name keeps the table.
    width = {m: max([12, len(m)] + [len(cell(e["metrics"][m])) for e in entries]) for m in metrics}
    if metrics:
        click.echo(f"{'snapshot':<34} {'':<19}  {'kind':<6}  " + "  ".join(f"{m:>{width[m]}}" for m in metrics))
    for e in entries:
        vols = " ".join(sorted(e["volumes"]))
        # A commit's subject first (the daemon's note on a commit it snapshotted comes after it).
        notes = [e["subject"], e["message"]] if e["kind"] == "commit" else [e["message"] or e["subject"]]
        note = "  ".join(f"({n})" if i else n for i, n in enumerate(n for n in notes if n))
        if e.get("scan_pending"):
            note = f"[scan pending: {', '.join(sorted(e['scan_pending']))}]  {note}"
        cols = "".join(f"{cell(e['metrics'][m]):>{width[m]}}  " for m in metrics)
        click.echo(f"{label(e['name']):<34} {when(e['created'])}  {e['kind']:<6}  {cols}{vols}  {note}".rstrip())


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@click.option("--exit-code", "exit_code", is_flag=True, help="Exit 4 if a volume changed since its snapshot.")
def status(as_json, exit_code):
    """Which volumes changed since their last snapshot."""
    rows = run("status")
    watched = daemon_view()
    if as_json:
        emit_json(rows)
    else:
        _print_status(rows, watched)
    if exit_code and any(r["changed"] for r in rows):
        sys.exit(CHANGED)  # as `git diff --exit-code`


def _print_status(rows: list[dict], watched: dict | None) -> None:
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
    away = [r["volume"] for r in rows if r.get("not_at_head")]
    if away:
        head = label(next(r["not_at_head"] for r in rows if r.get("not_at_head")))
        click.echo(f"not at HEAD's snapshot ({head}): {', '.join(away)} (`snapver checkout REV` and release:NAME "
                   "move the lake, not Git; `snapver checkout HEAD` brings it back)")


@cli.command()
@click.argument("rev", shell_complete=complete_rev)
@click.option("--volume", "volumes", multiple=True, metavar="NAME", help="Only this volume (repeatable).",
              shell_complete=complete_volume)
@json_option
def checkout(rev, volumes, as_json):
    """Make the volumes the snapshot of REV (a commit-ish or a snapshot name).

    Unsnapshotted changes are first kept as a wip snapshot.
    """
    result = run("checkout", {"rev": rev, "volumes": list(volumes)})
    if as_json:  # its warnings are in it, not on stderr; a broken link is exit 1, as below
        emit_result(result, 1 if result.get("broken") else 0)
        sys.exit(1 if result.get("broken") else 0)
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
@click.argument("rev", shell_complete=complete_rev)
@click.argument("rev2", required=False, shell_complete=complete_rev)
@click.option("--volume", "volumes", multiple=True, metavar="NAME", shell_complete=complete_volume)
@click.option("--json", "as_json", is_flag=True)
def diff(rev, rev2, volumes, as_json):
    """Files added, changed and deleted from REV to REV2 (default: the live volumes).

    Walks both trees: O(files), unlike snapshot and checkout.
    """
    changes = run("diff", {"rev": rev, "rev2": rev2, "volumes": list(volumes)})
    if as_json:
        emit_json(changes)
        return
    sign = {"added": "+", "changed": "M", "deleted": "-"}
    for v, cs in changes.items():
        for c in cs:
            click.echo(f"{sign[c['change']]} {v}/{c['path']}")


@cli.command()
@click.argument("rev", shell_complete=complete_rev)
@click.argument("path")
@click.option("--to", "dest", metavar="DEST", help="Write it here instead of its own place.")
@json_option
def restore(rev, path, dest, as_json):
    """Bring back one file or folder (e.g. models/model.pt) from REV's snapshot."""
    done = run("restore", {"rev": rev, "path": path, "to": dest})
    if as_json:
        return emit_result(done)
    click.echo(f"restored {path} from {label(done['snapshot']['name'])}" + (f" to {done['path']}" if dest else ""))


@cli.command()
@click.argument("rev", shell_complete=complete_rev)
@click.option("--space", is_flag=True, help="Also measure bytes used (walks the snapshot: O(files)).")
@click.option("--json", "as_json", is_flag=True)
def show(rev, space, as_json):
    """A snapshot's commit, volumes and paths."""
    view = run("show", {"rev": rev, "space": space})
    if as_json:
        emit_json(view)
        return
    commit, info = view["commit"], view["info"]
    click.echo(f"commit   {commit}")
    if info:
        click.echo(f"author   {info['author']} <{info['email']}>")
        click.echo(f"date     {info['time']}")
        click.echo(f"subject  {info['subject']}")
    for v, s in view["volumes"].items():
        extra = f"  {human(s['referenced'])}, {human(s['exclusive'])} exclusive" if space else ""
        click.echo(f"{v:<12} {s['name']}  {when(s['created'])}  {s['path']}{extra}")
    for v, fields in view["provenance"].items():
        click.echo(f"{v:<12} " + "  ".join(f"{k} {val}" for k, val in fields.items()))
    for kind in ("params", "metrics"):
        for k, val in view[kind].items():
            click.echo(f"{kind[:-1]:<8} {k} = {cell(val)}")
    if view.get("scan_pending"):
        click.echo(f"scan     pending for {', '.join(view['scan_pending'])} (a model changed: it is scanned after "
                   "the commit; `snapver scan` does it now, `snapver release` before it decides)")


@cli.command()
@click.argument("commit_map", metavar="COMMIT-MAP", type=click.Path(path_type=Path))
@json_option
def remap(commit_map, as_json):
    """Give commits rewritten by filter-repo or filter-branch their snapshots.

    COMMIT-MAP is filter-repo's .git/filter-repo/commit-map, or lines of `<old> <new>`
    commit IDs. Each new commit gets its own snapshot of every volume its old commit had
    (O(1)); the old snapshots stay until gc finds nothing that reaches them.
    """
    from .. import rewrite

    pairs = rewrite.parse_commit_map(commit_map)
    made = run("rewrite", {"pairs": pairs})
    if as_json:
        return emit_result(made)
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
    done = run("hooks-install")
    click.echo(f"installed {', '.join(done['installed'])} in {done['directory']}")


@hooks.command("uninstall")
def hooks_uninstall():
    """Remove the hooks and put back any hook they had chained to."""
    names = run("hooks-uninstall")["removed"]
    click.echo(f"removed {', '.join(names)}" if names else "no snapver hooks were installed")


@cli.command()
@click.argument("rev", shell_complete=complete_rev)
@click.argument("volume", shell_complete=complete_volume)
def path(rev, volume):
    """The read-only path of VOLUME at REV (e.g. release:prod), for a serving config."""
    click.echo(run("path", {"volume": volume, "rev": rev}))
