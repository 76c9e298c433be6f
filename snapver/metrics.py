"""Metrics that last: the per-step history of a training run, and the registry read again.

- History: training code logs metrics per step (`snapver.log_metrics(metrics, step=N)`, or
  `snapver.snapshot(metrics=..., step=N)` with a wip snapshot). Each step is kept in the
  catalog's metric_history, keyed by the line of work it was logged on (HEAD's commit and
  the workspace), the run (one training process by default) and the step; the wip snapshot
  it came with is only noted. gc thins wips by its schedule; the curve of a run stays.
- Refresh: the metric and param files named in [registry] are read from every snapshot that
  holds them, as the commit hook would have read them had [registry] been there then: a
  project that adds [registry] later gets its past filled in (`snapver registry refresh`).

A feature beside the registry (registry.py reads values; this module adds to them): the
core never imports it.
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

from . import names, registry
from .errors import NotFound, SnapverError

# A run's name: what a person types after --run, kept short and printable.
_RUN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:+@-]{0,99}")


def check_run(run: object) -> str:
    if not isinstance(run, str) or not _RUN.fullmatch(run):
        raise SnapverError(f"{run!r} is not a valid run name: use 1-100 letters, digits and . _ - : + @, "
                           "starting with a letter or digit")
    return run


def check_step(step: object) -> int | None:
    if step is None:
        return None
    if isinstance(step, bool) or not isinstance(step, int) or step < 0:
        raise SnapverError(f"step {step!r} is not a whole number >= 0")
    return step


def _rows(metrics: object) -> list[tuple[str, float | None, str | None]]:
    """(key, num, text) of a mapping of metrics, nested keys flattened with dots."""
    if not isinstance(metrics, dict) or not metrics:
        raise SnapverError("metrics must be a non-empty mapping of names to values")
    rows = []
    for key, value in registry.flatten(metrics).items():
        if value is not None and not isinstance(value, (int, float, str, bool)):
            raise SnapverError(f"metric {key!r}: {value!r} is not a number or text")
        text = None if value is None else (str(value).lower() if isinstance(value, bool) else str(value))
        rows.append((key, registry._number(value), text))
    return rows


def log(ws, metrics: dict, step: int | None, run: str, snapshot: str | None = None) -> dict:
    """One step of run on the line of work HEAD is on; step None: the run's next one (0 first).
    Returns where it went: {commit, workspace, run, step, keys}."""
    rows = _rows(metrics)
    check_run(run)
    step = check_step(step)
    commit = snapshot[:40] if snapshot else (ws.git.head() or names.NO_COMMIT)
    logged = datetime.now(timezone.utc).isoformat()
    with ws.catalog.batch():  # the step number read and written under one write lock
        if step is None:
            step = ws.catalog.next_step(ws.project, commit, ws.id, run)
        ws.catalog.record_history(ws.project, commit, ws.id, run, step, rows, logged, snapshot)
    return {"commit": commit, "workspace": ws.id, "run": run, "step": step, "keys": [r[0] for r in rows]}


def history(ws, key: str, rev: str | None = None, run: str | None = None) -> list[dict]:
    """Every logged step of key (on REV's commit only, when given; one run's, when given), in the
    order logged; each says whether the wip it came with is still there (gc may have thinned it)."""
    commit = None
    if rev is not None and names.is_snapshot_name(rev):
        commit = rev[:40]  # a wip gc thinned away still names its line
    elif rev is not None and rev.startswith("release:"):
        commit = ws.resolve(rev, ws.volumes)[1]
    elif rev is not None:
        commit = ws.git.resolve(rev)  # a commit whose snapshot gc took (or never had one) still has its history
    rows = ws.catalog.history_rows(ws.project, key, commit)
    if not rows:
        known = ws.catalog.history_keys(ws.project)
        if key not in known:
            raise NotFound(f"no metric history of {key!r} in this project"
                           + (f" (logged: {', '.join(known[:10])}{', ...' if len(known) > 10 else ''})"
                              if known else ": log some with snapver.log_metrics(metrics, step=N)"))
    present = {name for (_volume, name) in ws.catalog.snapshot_rows(ws.project)}
    out = []
    for r in rows:
        if run is not None and r["run"] != run:
            continue
        value = r["num"] if r["num"] is not None else r["text"]
        out.append({"key": r["key"], "commit": r["commit_sha"], "workspace": r["workspace"], "run": r["run"],
                    "step": r["step"], "value": value, "logged": r["logged"], "snapshot": r["snapshot"],
                    "snapshot_present": r["snapshot"] in present if r["snapshot"] else None})
    return out


def refresh(ws, include_wip: bool = False) -> dict:
    """Read the [registry] metric and param files of every commit snapshot (and wip, include_wip)
    again, from the snapshot itself (a file in a volume) or the commit (a file in the Git tree),
    never from the live volumes or the working tree. A value recorded from elsewhere (the
    Python API) is left as it is. O(snapshots x files named), never a walk."""
    s = registry.settings(ws)
    files = [("metric", rel) for rel in s.metrics] + [("param", rel) for rel in s.params]
    if not files:
        raise SnapverError("no metric or param files are configured: name them in snapver.toml, "
                           '[registry] metrics = ["models/metrics.json"] (and params), then refresh')
    by_name: dict[str, dict] = {}
    for entry in ws.log(include_wip=include_wip):
        by_name.setdefault(entry.snapshot.name, {})[entry.snapshot.volume] = entry.snapshot
    found: dict[str, int] = {rel: 0 for _, rel in files}
    recorded = 0
    for name, by_volume in by_name.items():
        for kind, rel in files:
            values = registry._read_file(ws, rel, name, by_volume, live=False)
            if not values:
                continue
            rows = registry.to_rows({kind: values})
            with ws.catalog.batch():
                ws.catalog.refresh_values(ws.project, name, rows, rel)
            found[rel] += 1
            recorded += len(rows)
    return {"snapshots": len(by_name), "values": recorded, "files": found}
