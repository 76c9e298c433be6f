"""`snapver service`: snapverd's systemd units installed on this machine, and removed."""

from __future__ import annotations

from pathlib import Path

import click

from . import cli

ROOT = click.option("--root", type=click.Path(file_okay=False, path_type=Path), default=Path("/"),
                    show_default=True, help="Write under this folder instead of / (packaging, tests).")


@cli.group()
def service():
    """snapverd as a systemd service: its units written for this machine, and removed."""


@service.command("install")
@click.option("--enable", is_flag=True, help="Also enable (and, under a running systemd, start) "
              "snapverd.socket and snapverd.service.")
@ROOT
def service_install(enable, root):
    """Write snapverd's units with the ExecStart of this snapver command, a starting
    /etc/snapver/snapverd.toml listing the working tree you are in (only if none exists),
    and a drop-in letting the sandboxed units write the lakes that config names.

    Run it again after adding a workspace to snapverd.toml: it rewrites what it wrote.
    """
    from .. import service as svc

    report = svc.install(root, Path.cwd(), enable)
    click.echo(f"ExecStart runs {report.command}")
    for path in report.written:
        click.echo(f"wrote {path}")
    for line in report.kept:
        click.echo(line)
    if report.enabled:
        click.echo(f"enabled {' '.join(report.enabled)}")


@service.command("uninstall")
@ROOT
def service_uninstall(root):
    """Disable snapverd's units and remove what `snapver service install` wrote
    (a file changed since is kept, and named)."""
    from .. import service as svc

    report = svc.uninstall(root)
    for path in report.removed:
        click.echo(f"removed {path}")
    for line in report.kept:
        click.echo(line)


@service.command("mount")
@click.option("--config", "config_path", type=click.Path(dir_okay=False, path_type=Path),
              help="Daemon config (default /etc/snapver/snapverd.toml).")
def service_mount(config_path):
    """Mount the lakes in image files (or import their ZFS pools) of the workspaces the
    daemon config names: what snapver-lakes.service runs at boot."""
    import sys

    from .. import service as svc
    from ..daemonconfig import DEFAULT_CONFIG

    done, failed = svc.mount_lakes(config_path or DEFAULT_CONFIG)
    for line in done:
        click.echo(line)
    for line in failed:
        click.echo(f"snapver: {line}", err=True)
    if failed:
        sys.exit(1)
