"""What the pages show, read from the lake through the library (lake, registry, derive, scan):
plain dicts and lists, no HTML. Each page reads only what it draws: the catalog and the
snapshot listing (O(versions)), never a walk of a snapshot's files: compare's diff and the
space figures come from the filesystem's change tracking (send streams on Btrfs, properties
on ZFS), O(changes), as `snapver compare` and `snapver du` do. Space on Btrfs walks once: the
first snapshot of a volume it is asked about, when no sibling's bytes are known yet."""

from __future__ import annotations

import heapq
import os
import stat
import subprocess
import threading
from collections import OrderedDict
from datetime import datetime
from pathlib import Path, PurePosixPath
from typing import NamedTuple, Sequence, cast

from .. import names, registry, releases, scan
from ..backends.base import Snapshot
from ..derive import edges
from ..errors import NotFound, SnapverError

PER_PAGE = 50
SPACE_PER_PAGE = 10  # each version's space is a send stream (Btrfs) or a property read (ZFS)
FILES_PER_PAGE = 200


class Refused(SnapverError):
    """A request for something outside what the view may show (a path leaving a snapshot)."""


def label(name: str) -> str:
    """A snapshot name for people: the short commit ID, and the time of a wip."""
    return name[:10] + name[40:]


def page_of(items: Sequence, page: int, per: int) -> tuple[Sequence, dict]:
    pages = max(1, -(-len(items) // per))
    page = min(max(page, 1), pages)
    return items[(page - 1) * per: page * per], {"page": page, "pages": pages, "total": len(items)}


class Entry(NamedTuple):
    """A snapshot as the catalog knows it (what scan.stored needs, and what a row shows)."""
    project: str
    volume: str
    name: str
    commit: str
    kind: str
    created: datetime
    subject: str | None
    author: str | None
    message: str | None


def generations(commits: dict[str, dict]) -> dict[str, int]:
    """Each known commit's distance from the oldest known ones (1 + its parents' greatest):
    a child sorts after its parent even when both have the same time."""
    gen: dict[str, int] = {}
    for start in commits:
        stack = [start]
        while stack:
            sha = stack[-1]
            if sha in gen:
                stack.pop()
                continue
            parents = [p for p in (commits[sha].get("parents") or "").split() if p in commits]
            todo = [p for p in parents if p not in gen]
            if todo:
                stack.extend(todo)
            else:
                gen[sha] = 1 + max((gen[p] for p in parents), default=-1)
                stack.pop()
    return gen


def catalog_log(ws, include_wip: bool) -> list[Entry]:
    """The snapshots of this project's volumes, newest first, from the catalog: one query,
    where `Workspace.log` asks the filesystem about each snapshot (an ioctl and stats each:
    seconds for 10,000 versions). Taken in the same second (ZFS times are whole seconds), a
    commit's snapshot sorts after its parent's, and a wip after its commit's. The version
    and files pages find the snapshots themselves on the filesystem."""
    volumes = set(ws.volumes)
    commits = ws.catalog.commits(ws.project)
    gen = generations(commits)
    found = []
    for r in ws.catalog.snapshot_rows(ws.project).values():
        if r["volume"] in volumes and (include_wip or r["kind"] == "commit"):
            c = commits.get(r["commit_sha"]) or {}
            created = datetime.fromisoformat(r["created"])
            found.append(((created, gen.get(r["commit_sha"], -1), r["kind"] != "commit", r["name"]), Entry(
                ws.project, r["volume"], r["name"], r["commit_sha"], r["kind"], created,
                c.get("subject"), c.get("author"), r["message"])))
    found.sort(key=lambda f: f[0], reverse=True)
    if not found:  # a catalog lost or rebuilt empty: the filesystem, the source of truth, says
        return [Entry(ws.project, e.snapshot.volume, e.snapshot.name, e.snapshot.commit, e.snapshot.kind,
                      e.snapshot.created, e.subject, e.author, e.message) for e in ws.log(include_wip)]
    return [f[1] for f in found]


def versions(ws, queries: list[str], include_wip: bool = True) -> tuple[list[dict], list[str], list[str]]:
    """Every version (one row per snapshot name, newest first) meeting every query, with its
    volumes, values and releases; and the metric and param keys (one column each)."""
    conditions = [registry.parse_condition(q) for q in queries if q.strip()]
    all_values = registry.values(ws)
    rels: dict[str, list[str]] = {}
    for r in releases.list_releases(ws):
        rels.setdefault(r.snapshot, []).append(r.name)
    rows: dict[str, dict] = {}
    for s in catalog_log(ws, include_wip):
        if s.name in rows:
            rows[s.name]["volumes"].append(s.volume)
            rows[s.name]["snaps"].append(s)
            continue
        v = all_values.get(s.name, {})
        if conditions and not all(c.test(registry.lookup(v, c.key)) for c in conditions):
            continue
        rows[s.name] = {"name": s.name, "label": label(s.name), "commit": s.commit, "kind": s.kind,
                        "created": s.created, "subject": s.subject or s.message or "",
                        "author": s.author or "", "volumes": [s.volume], "snaps": [s],
                        "metrics": v.get("metric", {}), "params": v.get("param", {}),
                        "releases": sorted(rels.get(s.name, []))}
    metric_keys = sorted({k for r in rows.values() for k in r["metrics"]})
    param_keys = sorted({k for r in rows.values() for k in r["params"]})
    return list(rows.values()), metric_keys, param_keys


def sort_rows(rows: list[dict], key: str, descending: bool) -> list[dict]:
    """Rows by a metric or param (numbers before words; versions without it last), or by
    time ('' or 'time'); the newest first among equals."""
    if key in ("", "time"):
        return rows if descending else rows[::-1]

    def value(r: dict):
        v = r["metrics"].get(key, r["params"].get(key))
        return (0, v, "") if isinstance(v, float) else (1, 0.0, str(v))

    have = [r for r in rows if key in r["metrics"] or key in r["params"]]
    rest = [r for r in rows if not (key in r["metrics"] or key in r["params"])]
    return sorted(have, key=value, reverse=descending) + rest


def scan_status(ws, row: dict) -> str:
    """'flagged', 'clean' or '' (never scanned) from the stored verdicts: a catalog read per
    volume, so only for the rows of one page."""
    verdicts = [scan.stored(ws.catalog, s) for s in row["snaps"]]
    if any(f.flagged for vs in verdicts if vs for f in vs):
        return "flagged"
    return "clean" if any(vs is not None for vs in verdicts) else ""


def snapshots_at(ws, rev: str) -> dict[str, Snapshot]:
    """{volume: snapshot} at rev. A snapshot name (every link here) is taken as it is: the
    volumes that have one, whether or not Git still knows the commit; any other rev as
    `snapver compare` resolves it."""
    if names.is_snapshot_name(rev):
        snaps = {v: s for v in ws.volumes if (s := ws.backend.find(ws.project, v, rev)) is not None}
        if not snaps:
            raise NotFound(f"there is no snapshot {label(rev)}")
        return snaps
    return registry.snapshots_at(ws, rev)[0]


def version(ws, rev: str) -> dict:
    """One version: its commit, snapshots, values, releases, provenance (what `show` says)."""
    if names.is_snapshot_name(rev):
        snaps = snapshots_at(ws, rev)
        commit = next(iter(snaps.values())).commit
        info = ws.catalog.commit(ws.project, commit)
    else:
        commit, snaps, info = ws.show(rev)
    name = next(iter(snaps.values())).name
    v = registry.values(ws, [name]).get(name, {})
    return {"name": name, "label": label(name), "commit": commit, "info": info or {},
            "snaps": snaps, "metrics": v.get("metric", {}), "params": v.get("param", {}),
            "releases": [r.name for r in releases.list_releases(ws) if r.snapshot == name],
            "provenance": registry.provenance(ws, name)}


def compare(ws, revs: list[str], page: int) -> dict:
    """N versions side by side, oldest first: values with deltas against the oldest, and the files changed
    from each one to the next per volume (the backend's diff, as `snapver diff`), paginated."""
    if len(revs) < 2:
        raise SnapverError("choose two or more versions to compare")
    at = []
    for rev in revs:
        at.append(snapshots_at(ws, rev))
    # Oldest first, whatever order they were ticked or typed in: deltas read as progress.
    at.sort(key=lambda snaps: min(s.age_key for s in snaps.values()))
    snap_names = [next(iter(s.values())).name for s in at]
    vals = registry.values(ws, snap_names)
    table: dict[str, list] = {}
    for kind in ("param", "metric"):
        keys = sorted({k for n in snap_names for k in vals.get(n, {}).get(kind, {})})
        rows = []
        for k in keys:
            cells = [vals.get(n, {}).get(kind, {}).get(k) for n in snap_names]
            base = cells[0]
            deltas = [(c - base) if isinstance(c, float) and isinstance(base, float) and i else None
                      for i, c in enumerate(cells)]
            rows.append({"key": k, "cells": cells, "deltas": deltas, "same": len(set(map(repr, cells))) == 1})
        table[kind] = rows
    changes = []
    for i in range(1, len(at)):
        old, new = at[i - 1], at[i]
        for vol in ws.volumes:
            if vol in old and vol in new:
                found = [{"path": c.path, "change": c.change}
                         for c in ws.backend.diff(old[vol].path, new[vol].path)]
                shown, pg = page_of(found, page, FILES_PER_PAGE)
                changes.append({"from": label(snap_names[i - 1]), "to": label(snap_names[i]),
                                "volume": vol, "files": shown, "pager": pg})
    pagers = [ch["pager"] for ch in changes] or [{"page": 1, "pages": 1, "total": 0}]
    return {"names": snap_names, "labels": [label(n) for n in snap_names], "params": table["param"],
            "metrics": table["metric"], "changes": changes, "pager": max(pagers, key=lambda p: p["pages"])}


def chart_points(ws) -> dict[str, list[dict]]:
    """{metric: [{version, time, order, branch, kind, value}]}, oldest first: every numeric
    metric of every commit snapshot (one line per branch), and the wip points of a run."""
    all_values = registry.values(ws)
    commits = ws.catalog.commits(ws.project)
    seen: dict[str, Entry] = {}
    for entry in catalog_log(ws, include_wip=True):
        seen.setdefault(entry.name, entry)
    snaps = list(seen.values())[::-1]  # oldest first
    out: dict[str, list[dict]] = {}
    for order, s in enumerate(snaps):
        for key, value in all_values.get(s.name, {}).get("metric", {}).items():
            if isinstance(value, float):
                out.setdefault(key, []).append({
                    "version": label(s.name), "name": s.name, "time": s.created.isoformat(), "order": order,
                    "branch": (commits.get(s.commit) or {}).get("branch") or "(no branch)",
                    "kind": s.kind, "value": value})
    return dict(sorted(out.items()))


def run_history(ws, commit: str) -> dict[str, list[dict]]:
    """The per-step history of the run(s) on one line of work (commit: the commit the run
    started from, HEAD when its points were taken): {metric: [{run, step, value, time,
    snapshot}]}, by run and step. The one place the Run page reads:

    - the catalog's `metric_history` (catalog version 4): steps logged by snapver.log_metrics /
      snapver.snapshot(step=N), kept when gc thins wips (a catalog not yet upgraded has none);
    - else, for a line of work with no history rows, the metrics recorded with its wip
      snapshots (`<commit>.<time>`: the daemon's points from [registry] files), one run, one
      step per wip in time order, as version 4's migration carries the API's over."""
    if not names.SHA.fullmatch(commit):
        raise NotFound(f"{commit!r} is not a commit ID")
    conn = ws.catalog.conn
    has_table = conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'metric_history'").fetchone()
    out: dict[str, list[dict]] = {}
    if has_table:
        rows = conn.execute("SELECT run, step, key, num, logged, snapshot FROM metric_history WHERE project = ? "
                            "AND commit_sha = ? AND num IS NOT NULL ORDER BY run, step", [ws.project, commit])
        for run, step, key, num, logged, snap in rows:
            out.setdefault(key, []).append({"run": run, "step": step, "value": num, "time": logged,
                                            "snapshot": label(snap) if snap else ""})
        if out:
            return dict(sorted(out.items()))
    rows = conn.execute("SELECT snapshot, key, num FROM registry_values WHERE project = ? AND kind = 'metric' "
                        "AND num IS NOT NULL AND snapshot LIKE ? ORDER BY snapshot", [ws.project, commit + ".%"])
    steps: dict[str, int] = {}
    for snap, key, num in rows:
        parsed = names.parse_snapshot_name(snap)
        if not parsed or parsed[0] != commit or parsed[2] is None:
            continue
        step = steps.setdefault(snap, len(steps))  # the names sort by their time
        out.setdefault(key, []).append({"run": "wips", "step": step, "value": num,
                                        "time": parsed[2].isoformat(), "snapshot": label(snap)})
    return dict(sorted(out.items()))


def runs(ws) -> list[dict]:
    """The lines of work with a per-step history of two steps or more: [{commit, label, steps,
    subject}], newest first (for the Charts page's list of runs)."""
    conn = ws.catalog.conn
    found: dict[str, int] = {}
    for (snap,) in conn.execute("SELECT DISTINCT snapshot FROM registry_values WHERE project = ? "
                                "AND kind = 'metric' AND length(snapshot) > 40", [ws.project]):
        found[snap[:40]] = found.get(snap[:40], 0) + 1
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'metric_history'").fetchone():
        for sha, n in conn.execute("SELECT commit_sha, COUNT(DISTINCT run || ':' || step) FROM metric_history "
                                   "WHERE project = ? GROUP BY commit_sha", [ws.project]):
            found[sha] = max(found.get(sha, 0), n)
    commits = ws.catalog.commits(ws.project)
    out = [{"commit": sha, "label": label(sha), "steps": n, "subject": (commits.get(sha) or {}).get("subject") or "",
            "time": (commits.get(sha) or {}).get("time") or ""} for sha, n in found.items() if n >= 2]
    return sorted(out, key=lambda r: r["time"], reverse=True)


def lineage_svg(ws, link) -> str:
    """The graph of volumes and the volumes derived from them, drawn by graphviz `dot`: each
    edge labelled with the snapshot it came from, each derived node a link to that version
    (link(snapshot name) is its URL), releases as notes pinned to their version."""
    def q(*lines: str) -> str:  # a DOT string; several lines joined with DOT's own \n
        return '"' + "\\n".join(t.replace("\\", "\\\\").replace('"', '\\"') for t in lines) + '"'

    lines = ["digraph lineage {", "  rankdir=LR;", '  node [shape=box, style="rounded,filled", fillcolor="#eef4fb",'
             ' fontname="sans-serif"];', '  edge [fontname="sans-serif", fontsize=10];']
    for _depth, vol, edge in registry.lineage_tree(ws):
        if edge is None:
            lines.append(f"  {q('vol:' + vol)} [id={q('vol_' + vol)}, label={q(vol)}];")
            continue
        lines.append(f"  {q('vol:' + vol)} [id={q('vol_' + vol)}, label={q(vol, 'derived')}, fillcolor=\"#fdf1d6\","
                     f" URL={q(link(edge.source_snapshot))}, tooltip={q(edge.message or vol)}];")
        lines.append(f"  {q('vol:' + edge.source_volume)} -> {q('vol:' + vol)} "
                     f"[label={q(label(edge.source_snapshot))}, URL={q(link(edge.source_snapshot))}];")
    for r in releases.list_releases(ws):
        lines.append(f"  {q('rel:' + r.name)} [shape=note, fillcolor=\"#e3f5e1\", id={q('rel_' + r.name)},"
                     f" label={q('release ' + r.name, label(r.snapshot))}, URL={q(link(r.snapshot))}];")
        # One edge, to the first volume it pins: the label says the version, the rest is clutter.
        if r.volumes:
            lines.append(f"  {q('rel:' + r.name)} -> {q('vol:' + r.volumes[0])} [style=dashed, arrowhead=none];")
    dot = "\n".join(lines + ["}"]) + "\n"
    try:
        done = subprocess.run(["dot", "-Tsvg"], input=dot, capture_output=True, text=True, timeout=30)
    except FileNotFoundError:
        raise SnapverError("graphviz's `dot` is not installed: apt-get install graphviz") from None
    if done.returncode != 0:
        raise SnapverError(f"dot failed: {done.stderr.strip()}")
    svg = done.stdout
    return svg[svg.find("<svg"):]  # inline in the page: without the XML prologue and doctype


def space(ws, page: int, per: int, total: bool) -> dict:
    """`snapver du`, a page of versions at a time (newest first): referenced, exclusive and
    shared bytes of each of their snapshots, the live volumes on the first page. Only a page's
    are computed (each O(changes) on Btrfs: the send stream to a sibling); the whole lake's
    footprint (on Btrfs the filesystem's figures where the lake is one, else a walk of the
    project) only when asked (total)."""
    by_name: dict[str, list[str]] = {}
    for entry in catalog_log(ws, include_wip=True):
        by_name.setdefault(entry.name, []).append(entry.volume)
    shown, pager = page_of(list(by_name.items()), page, per)
    parents = {e.volume: e for e in edges(ws)}
    rows = []
    if pager["page"] == 1 and ws.id is not None:  # a lake's project (--lake) has no live volumes
        for vol in ws.volumes:
            if ws.backend.volume_exists(ws.project, ws.id, vol):
                rows.append(_space_row(vol, None, ws.backend.live_space(ws.project, ws.id, vol)))
    snaps = [snap for name, vols in shown for vol in sorted(vols, key=ws.volumes.index)
             if (snap := ws.backend.find(ws.project, vol, name)) is not None]  # else gone since listed
    rows += [_space_row(s.volume, s.name, sp) for s, sp in zip(snaps, ws.backend.spaces(snaps))]
    bars = [{"volume": r["volume"], "version": label(r["snapshot"]) if r["snapshot"] else "live",
             "part": part, "bytes": r[part]} for r in rows for part in ("exclusive", "shared")]
    footprint = ws.backend.footprint(ws.project) if total else None
    return {"rows": rows, "bars": bars, "pager": pager, "footprint": footprint,
            "derived": {v: f"{e.source_volume}@{label(e.source_snapshot)}" for v, e in parents.items()}}


def _space_row(volume: str, snapshot: str | None, sp) -> dict:
    return {"volume": volume, "snapshot": snapshot, "referenced": sp.referenced,
            "exclusive": sp.exclusive, "shared": max(sp.referenced - sp.exclusive, 0)}


# ------------------------------------------------------------------ files

def snapshot_of(ws, name: str, volume: str):
    if not names.is_snapshot_name(name):
        raise NotFound(f"{name!r} is not a snapshot name")
    if volume not in ws.volumes:
        raise NotFound(f"no volume {volume!r} here: the volumes are {', '.join(ws.volumes)}")
    snap = ws.backend.find(ws.project, volume, name)
    if snap is None:
        raise NotFound(f"there is no snapshot {label(name)} of {volume}")
    return snap


def inside(root: Path, rel: str) -> Path:
    """root/rel, refused (Refused) if rel has a '..' or an absolute part, or resolves through a
    symlink to somewhere outside root; NotFound if it is not there."""
    parts = PurePosixPath(rel).parts if rel else ()
    if rel.startswith("/") or "\0" in rel or any(p in ("..", ".") for p in rel.split("/")):
        raise Refused(f"{rel!r} leaves the snapshot")
    real_root = os.path.realpath(root)
    target = os.path.realpath(os.path.join(real_root, *parts))
    if target != real_root and not target.startswith(real_root + os.sep):
        raise Refused(f"{rel!r} leads outside the snapshot (through a symlink)")
    if not os.path.lexists(target):
        raise NotFound(f"{rel or '/'} is not in the snapshot")
    return Path(target)


def listing(path: Path, page: int) -> tuple[list[dict], dict]:
    """One folder of a snapshot, a page at a time: the folder's own names (folders first,
    then by name; the kind from the directory entry, no stat), and a stat of only the page's
    entries: O(entries of this folder) cheap steps, never a walk below it, and for a big
    folder only once (FolderNames.of). While a big folder is still being read, its first
    page is its first entries as the filesystem keeps them (the pager says "reading")."""
    folder = FolderNames.of(path)
    if page <= 1 and not folder.done.is_set():
        shown = folder.first[:FILES_PER_PAGE]
        pager = {"page": 1, "pages": None, "total": None, "reading": True}
    else:
        folder.wait()
        places, pager = page_of(range(len(folder)), page, FILES_PER_PAGE)
        shown = folder.at(cast(range, places))  # a slice of a range is a range
    entries = []
    for name in shown:
        try:
            st = os.lstat(path / name)
        except OSError:
            continue
        kind = "dir" if stat.S_ISDIR(st.st_mode) else "link" if stat.S_ISLNK(st.st_mode) else "file"
        entries.append({"name": name, "kind": kind, "size": st.st_size,
                        "mtime": datetime.fromtimestamp(st.st_mtime).astimezone()})
    return entries, pager


# A folder of BIG_FOLDER entries or more is read in a thread of its own: its first view shows
# the entries read first, at once, instead of waiting for the whole folder (a million entries
# take about 2 s to read from disk: bench/ui_pages.py). Its names are then kept, by the
# folder's device, inode and change time: a snapshot's folders never change, so paging through
# one reads it once. Small folders are not kept: listing them again costs less than the memory
# (~70 MB for a million names). The first pages by name are picked with a partial selection
# (heapq, ~0.06 s for a page of a million names) instead of a sort (~0.4 s when names come in
# random order, as hashed shard names do); a page past them sorts the kept names once.
BIG_FOLDER = 10_000
FOLDERS_KEPT = 2
PICKED_PAGES = 10
_kept: OrderedDict[tuple[int, int, int], FolderNames] = OrderedDict()
_kept_lock = threading.Lock()


class FolderNames:
    """The entries of one folder: its folders, then its other entries, each part by name."""

    def __init__(self) -> None:
        self.dirs: list[str] = []
        self.files: list[str] = []
        self.first: list[str] = []  # the first entries read, in the filesystem's order
        self.ordered = False
        self.done = threading.Event()  # the whole folder is read
        self.failed: OSError | None = None
        self.lock = threading.Lock()  # sort() empties a list while it runs: no reader meanwhile

    @classmethod
    def of(cls, path: Path) -> FolderNames:
        st = os.stat(path)
        key = (st.st_dev, st.st_ino, st.st_ctime_ns)
        with _kept_lock:
            if key in _kept:
                _kept.move_to_end(key)
                return _kept[key]
        folder = cls()
        entries = os.scandir(path)
        try:
            whole = folder._read(entries, BIG_FOLDER)
        except BaseException:
            entries.close()
            raise
        if whole:
            folder.done.set()
            return folder
        with _kept_lock:
            _kept[key] = folder
            while len(_kept) > FOLDERS_KEPT:
                _kept.popitem(last=False)
        threading.Thread(target=folder._read_rest, args=(entries, key), daemon=True,
                         name=f"listing {path}").start()
        return folder

    def _read(self, entries, most: int | None) -> bool:
        """Up to most entries more (None: all); True once the folder has no more (closed)."""
        for n, entry in enumerate(entries, 1):
            (self.dirs if entry.is_dir(follow_symlinks=False) else self.files).append(entry.name)
            if len(self.first) < FILES_PER_PAGE:
                self.first.append(entry.name)
            if most is not None and n >= most:
                return False
        entries.close()
        return True

    def _read_rest(self, entries, key) -> None:
        try:
            self._read(entries, None)
        except OSError as e:  # the snapshot went (gc) while it was read
            self.failed = e
            entries.close()
            with _kept_lock:
                _kept.pop(key, None)
        finally:
            self.done.set()

    def wait(self) -> None:
        self.done.wait()
        if self.failed is not None:
            raise NotFound(f"the folder could not be read: {self.failed.strerror}")

    def __len__(self) -> int:
        return len(self.dirs) + len(self.files)

    def at(self, places: range) -> list[str]:
        """The names at these places of the order (a step-1 range, as page_of gives)."""
        with self.lock:
            if not self.ordered and places.stop > PICKED_PAGES * FILES_PER_PAGE:
                self.dirs.sort()
                self.files.sort()
                self.ordered = True
            n = len(self.dirs)
            if self.ordered:
                return [self.dirs[i] if i < n else self.files[i - n] for i in places]
            firsts = heapq.nsmallest(places.stop, self.dirs)
            firsts += heapq.nsmallest(max(places.stop - n, 0), self.files)
        return firsts[places.start:]
