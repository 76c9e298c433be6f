"""`snapver metrics history` (a run's metrics per step) and `snapver registry refresh`."""

from __future__ import annotations

import click

from . import cli, emit_json, when, cell, label, run


@cli.group()
def metrics():
    """Metrics logged per step by training code (snapver.log_metrics, snapver.snapshot(step=N)).

    They are kept by line of work (commit), run and step, and outlive the wip
    snapshots they came with when gc thins those.
    """


@metrics.command("history")
@click.argument("key")
@click.argument("rev", required=False)
@click.option("--run", "run_name", metavar="RUN", help="Only this run's steps.")
@click.option("--json", "as_json", is_flag=True, help="One JSON object per logged step.")
def metrics_history(key, rev, run_name, as_json):
    """Every logged step of metric KEY (only those logged on REV's commit, when given), oldest first.

    A wip snapshot gc has thinned away is marked `(thinned)`: its metrics stay.
    """
    rows = run("metrics-history", {"key": key, "rev": rev, "run": run_name})
    if as_json:
        emit_json(rows)
        return
    click.echo(f"{'commit':<10}  {'run':<20} {'step':>6} {key:>12}  {'logged':<19}  snapshot")
    for r in rows:
        snap = ""
        if r["snapshot"]:
            snap = label(r["snapshot"]) + ("" if r["snapshot_present"] else "  (thinned)")
        click.echo(f"{r['commit'][:10]:<10}  {r['run']:<20} {r['step']:>6} {cell(r['value']):>12}  "
                   f"{when(r['logged']) if r['logged'] else '?':<19}  {snap}".rstrip())


@cli.group()
def registry():
    """The registry's values kept in the catalog (see `snapver find`, `log --metric`)."""


@registry.command("refresh")
@click.option("--all", "include_wip", is_flag=True, help="Also read the files of wip snapshots.")
@click.option("--json", "as_json", is_flag=True)
def registry_refresh(include_wip, as_json):
    """Read the [registry] metric and param files again from every commit snapshot that holds
    them: adding [registry] to snapver.toml later fills in the past.

    A file in a volume is read from the snapshot, one in the Git tree from the commit; values
    recorded by training code (the Python API) are left as they are. Reads only the named files.
    """
    done = run("registry-refresh", {"all": include_wip})
    if as_json:
        emit_json(done)
        return
    for rel, count in done["files"].items():
        click.echo(f"{rel}: read from {count} of {done['snapshots']} snapshot(s)")
    click.echo(f"{done['values']} value(s) recorded")
