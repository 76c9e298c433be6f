"""`snapver ui` (a read-only local web view of the lake) and `snapver plots` (its charts as a
static page). The app is snapver/webui."""

from __future__ import annotations

import socket
from pathlib import Path

import click

from ..errors import SnapverError
from ..lake import Workspace
from . import cli


@cli.command()
@click.option("--port", default=8731, show_default=True, type=click.IntRange(0, 65535),
              help="TCP port (0: any free one).")
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; anything but loopback requires the token printed at start.")
@click.option("--open", "open_browser", is_flag=True, help="Open the page in a web browser.")
@click.option("--lake", metavar="DIR|DATASET",
              help="Show every project on this lake (a folder on Btrfs or a ZFS dataset), no working tree needed.")
def ui(port, host, open_browser, lake):
    """A read-only web view of this project's lake: versions, compare, charts, lineage,
    releases, space and the files of each snapshot. Ctrl-C stops it."""
    from .. import webui

    if lake is not None:
        from ..backends import open_lake

        what, where = f"lake {open_lake(lake).spec()}", Path.cwd()  # a lake, or one clear line now
    else:
        ws = Workspace.open()  # a working tree with a lake, or one clear line now rather than per page
        what, where = ws.project, ws.git.toplevel
    token = None if webui.is_loopback(host) else webui.new_token()

    def ready(url: str) -> None:
        click.echo(f"snapver ui: {what} at {url}", err=False)
        if token:
            click.echo(f"snapver ui: listening on {host}: every request needs the token above "
                       "(?token=, or the X-Snapver-Token header)")
        click.echo("snapver ui: read-only; Ctrl-C stops it")
        if open_browser:
            import webbrowser

            webbrowser.open(url)

    try:
        webui.serve(where, host, port, token, ready, lake)
    except (OSError, socket.gaierror) as e:
        raise SnapverError(f"cannot listen on {host}:{port}: {e.strerror or e}") from None
    except KeyboardInterrupt:
        pass


@cli.command()
@click.option("--out", default="snapver-plots", show_default=True, type=click.Path(file_okay=False, path_type=Path),
              help="Folder to write index.html and its scripts into.")
def plots(out):
    """Every metric over the versions as a static HTML page (Vega-Lite, the JS copied next to
    it: it opens offline), to attach to a pull request or keep as a CI artifact."""
    from ..webui import charts

    page = charts.write_plots(Workspace.open(), out)
    click.echo(f"wrote {page}")
