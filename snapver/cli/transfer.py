"""`snapver` commands between lakes: remote, push, pull, clone, serve."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from ..lake import parse_size
from . import complete_rev
from . import cli, emit_json, emit_result, human, json_option, label, run


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
    run("remote-add", {"name": name, "url": url, "command": command})
    click.echo(f"remote {name}: {url}")


@remote.command("list")
@click.option("--json", "as_json", is_flag=True)
def remote_list(as_json):
    """The remotes of this working tree."""
    found = run("remote-list")
    if as_json:
        emit_json(found)
    for r in found if not as_json else []:
        click.echo(f"{r['name']:<12} {r['url']}")


@remote.command("remove")
@click.argument("name")
def remote_remove(name):
    """Forget a remote (its lake and snapshots stay as they are)."""
    run("remote-remove", {"name": name})
    click.echo(f"removed remote {name}")


def progress_bars(quiet: bool):
    """A tqdm bar per stream on stderr (bytes, rate, time left where the size is known)."""
    if quiet:
        return None

    def start(volume, name, total):
        from tqdm import tqdm

        # disable=None: no bar unless stderr is a terminal (a log or CI gets no escape codes).
        bar = tqdm(total=total, unit="B", unit_scale=True, unit_divisor=1024, leave=True,
                   desc=f"{volume}@{label(name)}", file=sys.stderr, dynamic_ncols=True, disable=None)

        def tick(n):
            if n is None:
                bar.close()
            else:
                bar.update(n)
        return tick
    return start


def report_transfers(done, as_json: bool, verb: str) -> None:
    if as_json:
        return emit_result(done)
    for t in done:
        how = f"incremental from {label(t['base'])}" if t["base"] else "whole"
        click.echo(f"{verb} {t['volume']}@{label(t['name'])}  {human(t['bytes'])} in {t['seconds']:.1f} s ({how}"
                   f"{', resumed' if t['resumed'] else ''})")
    click.echo(f"{len(done)} snapshot(s) {verb}" if done else "everything is there already")


def transfer_command(fn):
    """push and pull take the same arguments: [REMOTE] [REV]..., -q, --json."""
    fn = json_option(fn)  # what was moved (no progress bars)
    fn = click.option("-q", "--quiet", is_flag=True, help="No progress bars.")(fn)
    fn = click.argument("revs", nargs=-1, shell_complete=complete_rev)(fn)
    fn = click.argument("remote_name", required=False, metavar="[REMOTE]")(fn)
    return cli.command()(fn)


@click.option("--init", is_flag=True, help="Make REMOTE's folder or dataset a lake even if it holds other files.")
@transfer_command
def push(remote_name, revs, quiet, as_json, init):
    """Send the snapshots of REVs (default HEAD) and their history that REMOTE lacks.

    Incremental from the newest snapshot both lakes hold (btrfs send -p,
    zfs send -i), whole only when they share none.
    """
    done = run("push", {"remote": remote_name, "revs": list(revs), "init": init},
               progress=progress_bars(quiet or as_json))["done"]
    report_transfers(done, as_json, "pushed")


@transfer_command
def pull(remote_name, revs, quiet, as_json):
    """Fetch the snapshots of REVs (default HEAD) and their history from REMOTE.

    The lake itself does not move: `git checkout` (or `snapver checkout`) does.
    """
    done = run("pull", {"remote": remote_name, "revs": list(revs)}, progress=progress_bars(quiet or as_json))["done"]
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
    made = run("clone", {"git_url": git_url, "from": lake_url, "lake": lake, "image": str(image) if image else None,
                         "size": parse_size(size) if size else None, "command": command},
               path=directory, progress=progress_bars(quiet))
    click.echo(f"cloned into {directory}; lake {made['lake']}, at "
               f"{', '.join(sorted(label(b) if b else 'empty' for b in made['at']))}")


@cli.command(hidden=True, context_settings={"ignore_unknown_options": True})
@click.argument("args", nargs=-1, type=click.UNPROCESSED)
def serve(args):
    """The far end of push and pull (run by them over ssh, or locally for file://)."""
    run("serve", {"args": list(args)})
