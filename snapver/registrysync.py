"""The registry travels with the snapshots: push, pull and clone carry the registry's rows of
every snapshot both lakes hold once the snapshots are sent (metrics and params, provenance,
model scans, builds), the lineage edges and recipes of the volumes they hold, and the
releases whose snapshots they hold, with their history.

Rows keyed by a snapshot (or a volume) are merged as sets: a row the receiver lacks is added,
the same row is a no-op, and a row of the same key with another value leaves the receiver's
as it is and is reported in one line. Nothing is deleted or replaced.

Releases are merged as Git merges refs. Every move has an id, the same on every lake, and
its parents (catalog_schema version 4); release_heads says which move a release is at here.
A release that moved on one side only fast-forwards on the other (its holds and stable
paths follow, as in `release set`); one that moved on both sides since their last common
move, to different snapshots, is reported and left as it is; either way every move of the
other side is added to the history, so that the next `release set` here, made after every
move it knows, settles the divergence (its parents are all the history's tips), and the
lake that sees it later fast-forwards to it.

Only snapshots with the same identity on both lakes count as held by both: a snapshot of
the same name taken on each lake on its own is not the same data, and its rows stay apart.
"""

from __future__ import annotations

from collections.abc import Iterable

from . import names
from .errors import SnapverError
from .names import short
from .releaselake import _hold, _lock, _point, _unhold, _unhold_old, _unpoint, check_release_name

# The session protocol's version (peer.holdings): 2 knows the `registry` and `registry-rows`
# requests. A far end that does not say it is of version 1 and is sent no registry rows.
PROTOCOL = 2

# The key of each table whose rows travel (catalog.SYNCED), and the columns that say when or
# where a row was made rather than what it says (two lakes may record the same thing at two
# times): a difference there is not a conflict.
KEYS = {
    "registry_values": ("snapshot", "kind", "key"),
    "provenance": ("volume", "snapshot"),
    "scans": ("volume", "snapshot"),
    "scan_files": ("volume", "snapshot", "path"),
    "lineage": ("volume",),
    "recipes": ("volume",),
    "builds": ("volume", "snapshot", "started", "command"),
    # Per-step metric history (another change adds the table): by its line of work, run and step.
    "metric_history": ("commit_sha", "workspace", "run", "step", "key"),
}
_WHEN = {"registry_values": {"source"}, "scans": {"scanned"}, "lineage": {"created", "message"},
         "recipes": {"created"}, "builds": set(), "provenance": set(), "scan_files": set(),
         "metric_history": {"logged", "snapshot"}}
# Tables keyed by a snapshot name alone (a commit's values are the same for every volume).
_BY_NAME = ("registry_values",)

MOVE_FIELDS = ("id", "parents", "moved", "who", "from_snapshot", "to_snapshot", "from_commit", "to_commit",
               "volumes", "message")
RELEASE_FIELDS = ("snapshot", "commit_sha", "volumes", "created", "message", "forced")
_MAX_LINES = 20


class Lakeside:
    """A lake's project as releaselake needs it, where there is no workspace (the far end)."""

    def __init__(self, backend, project: str):
        self.backend, self.project = backend, project


def shared(receiver: dict, source: dict) -> list[list[str]]:
    """[volume, name] of the snapshots both lakes hold as the same snapshot (identity)."""
    return sorted([v, n] for (v, n), i in receiver.items() if source.get((v, n)) == i)


# ------------------------------------------------------------------ export

def export(catalog, project: str, keys: Iterable) -> dict:
    """The rows of this lake's registry that go with the snapshots keys ([volume, name])."""
    held = {(v, n) for v, n in keys}
    snapshots = {n for _, n in held}
    volumes = {v for v, _ in held}
    tables: dict[str, list[dict]] = {}
    for table in catalog.SYNCED:
        rows = catalog.synced_rows(table, project)
        if table in _BY_NAME:
            rows = [r for r in rows if r["snapshot"] in snapshots]
        elif table == "metric_history":  # of the commits both hold (its wip may be gone)
            rows = [r for r in rows if r["commit_sha"] in snapshots or r["snapshot"] in snapshots]
        elif table == "lineage":
            rows = [r for r in rows if r["volume"] in volumes or (r["source_volume"], r["source_snapshot"]) in held]
        elif table == "recipes":
            rows = [r for r in rows if r["volume"] in volumes]
        else:
            rows = [r for r in rows if (r["volume"], r["snapshot"]) in held]
        tables[table] = rows
    return {"tables": tables, "releases": _export_releases(catalog, project, held, snapshots)}


def _export_releases(catalog, project: str, held: set, snapshots: set) -> dict:
    """Each release whose snapshots the other lake holds (or, once removed, held), with its
    head and every move of its history here, in the order recorded (parents first)."""
    moves: dict[str, list[dict]] = {}
    for m in catalog.all_release_moves(project):
        moves.setdefault(m["name"], []).append({k: m[k] for k in MOVE_FIELDS})
    current = {r["name"]: r for r in catalog.releases(project)}
    out = {}
    for name, head in catalog.release_heads(project).items():
        row = current.get(name)
        if row is not None and not all((v, row["snapshot"]) in held for v in row["volumes"].split()):
            continue  # pinned to what the other lake does not hold: it could not follow it
        if row is None and not any(m["to_snapshot"] in snapshots for m in moves.get(name, [])):
            continue
        out[name] = {"head": head, "row": None if row is None else {k: row[k] for k in RELEASE_FIELDS},
                     "moves": moves.get(name, [])}
    return out


def parts(rows: dict, limit: int = 10000) -> list[dict]:
    """rows (export's) cut into pieces of about limit rows, each a message of its own (a
    session's line is at most 16 MiB), each merged on its own; a scan goes with its files,
    and the releases go last, whole."""
    tables = rows.get("tables") or {}
    files: dict[tuple, list] = {}
    for f in tables.get("scan_files") or []:
        files.setdefault((f["volume"], f["snapshot"]), []).append(f)
    out: list[dict] = []
    part: dict[str, list] = {}
    size = 0
    for table, got in tables.items():
        if table == "scan_files":
            continue
        for r in got:
            part.setdefault(table, []).append(r)
            size += 1
            if table == "scans":
                with_it = files.get((r["volume"], r["snapshot"]), [])
                part.setdefault("scan_files", []).extend(with_it)
                size += len(with_it)
            if size >= limit:
                out.append({"tables": part, "releases": {}})
                part, size = {}, 0
    out.append({"tables": part, "releases": rows.get("releases") or {}})
    return out


# ------------------------------------------------------------------ merge

def merge(catalog, backend, project: str, given: dict, here: str = "here", there: str = "there") -> list[str]:
    """Merge rows another lake exported (export) into this lake's registry; what differs,
    one line each (here and there name the two lakes in them)."""
    if not isinstance(given, dict) or not isinstance(given.get("tables", {}), dict) \
            or not isinstance(given.get("releases", {}), dict):
        raise SnapverError("the registry rows sent are not in the form this snapver reads")
    said: list[str] = []
    tables = given.get("tables") or {}
    with catalog.batch():
        for table in catalog.SYNCED:
            if table == "scan_files":
                continue  # with its scan, below
            added = _merge_table(catalog, project, table, tables.get(table), said, here, there)
            if table == "scans":
                scanned = {(r["volume"], r["snapshot"]) for r in added}
                files = [r for r in _valid(tables.get("scan_files"), "scan_files")
                         if (r["volume"], r["snapshot"]) in scanned]
                catalog.add_synced_rows("scan_files", project, files)  # a scan comes whole or not at all
    for name, release in sorted((given.get("releases") or {}).items()):
        try:
            _merge_release(catalog, backend, project, check_release_name(name), release, said, here, there)
        except (SnapverError, KeyError, TypeError, AttributeError) as e:
            said.append(f"release {name} was not merged: {e if isinstance(e, SnapverError) else 'malformed rows'}")
    if len(said) > _MAX_LINES:
        said[_MAX_LINES:] = [f"and {len(said) - _MAX_LINES} more difference(s) of the same kind"]
    return said


def _valid(rows, table: str) -> list[dict]:
    """The rows whose key is well-formed (a peer's words are checked like a user's)."""
    good = []
    for r in rows if isinstance(rows, list) else []:
        if not isinstance(r, dict) or any(type(r.get(k)) not in (str, int) for k in KEYS[table]):
            continue
        if any(r.get(k) is not None and not names.is_snapshot_name(r[k])
               for k in ("snapshot", "source_snapshot", "commit_sha")):
            continue
        if not all(_is_volume(r[k]) for k in ("volume", "source_volume") if k in r):
            continue
        good.append(r)
    return good


def _is_volume(name) -> bool:
    try:
        names.check_volume(name)
        return True
    except SnapverError:
        return False


def _merge_table(catalog, project: str, table: str, theirs, said: list, here: str, there: str) -> list[dict]:
    columns = catalog.synced_columns(table)
    if columns is None:
        return []  # this catalog has no such table (a newer lake's): nothing to keep it in
    key = KEYS[table]
    mine = {tuple(r[k] for k in key): r for r in catalog.synced_rows(table, project)}
    added = []
    for r in _valid(theirs, table):
        k = tuple(r[c] for c in key)
        if k in mine:
            differs = [c for c in columns if c not in key and c not in _WHEN[table] and mine[k].get(c) != r.get(c)]
            if differs:
                said.append(f"{_what(table, k)} differs: {here} {_show(mine[k], differs)}, "
                            f"{there} {_show(r, differs)}; {here} keeps its own")
            continue
        mine[k] = r
        added.append(r)
    catalog.add_synced_rows(table, project, added)
    return added


def _what(table: str, k: tuple) -> str:
    if table == "registry_values":
        return f"{k[1]} {k[2]} of {short(k[0])}"
    if table in ("lineage", "recipes"):
        return f"{'the lineage' if table == 'lineage' else 'the recipe'} of volume {k[0]}"
    if table == "metric_history":
        return f"metric {k[4]} at step {k[3]} of run {k[2]} on {short(k[0])}"
    return f"the {'model scan' if table == 'scans' else table.rstrip('s')} of {k[0]}@{short(k[1])}"


def _show(row: dict, columns: list[str]) -> str:
    if set(columns) <= {"num", "text"}:
        return str(row.get("num") if row.get("num") is not None else row.get("text"))
    return ", ".join(f"{c}={row.get(c)}" for c in columns)


def _ancestors(parents: dict[str, list[str]], start: str) -> set[str]:
    seen, todo = set(), [start]
    while todo:
        m = todo.pop()
        if m not in seen:
            seen.add(m)
            todo.extend(parents.get(m, []))
    return seen


def _at(row) -> str:
    return short(row["snapshot"]) if row is not None else "removed"


def _merge_release(catalog, backend, project: str, name: str, given: dict, said: list, here: str,
                   there: str) -> None:
    head = given["head"]
    moves = [{k: m.get(k) for k in MOVE_FIELDS} for m in given["moves"]]
    if not isinstance(head, str) or any(not isinstance(m["id"], str) for m in moves):
        raise SnapverError("a move without an id")
    row = given.get("row")
    if row is not None:
        row = {k: row.get(k) for k in RELEASE_FIELDS}
        names.check_snapshot_name(row["snapshot"])
        for v in row["volumes"].split():
            names.check_volume(v)
    side = Lakeside(backend, project)
    # as `release set`: the stable paths and holds end where the catalog says; steady: one
    # read of the lake serves the finds and holds below (the release's lock is held)
    with _lock(side, name), backend.steady():
        mine = {m["id"]: m for m in catalog.release_moves(project, name)}
        ours = catalog.release_heads(project).get(name)
        parents = {m["id"]: (m["parents"] or "").split() for m in [*mine.values(), *moves]}
        missing = [m for m in moves if m["id"] not in mine]
        current = catalog.release(project, name)
        if ours is not None and (ours == head or head in _ancestors(parents, ours)):
            follow = False  # the same, or this lake is ahead: the other follows when it is sent this one's
        elif ours is None or ours in _ancestors(parents, head):
            follow = True  # moved there only: fast-forward
        else:
            follow = False
            if (current and current["snapshot"]) != (row and row["snapshot"]):
                said.append(f"release {name} diverged: {here} {_at(current)}, {there} {_at(row)}; "
                            f"run snapver release set {name} REV to choose")
        if not follow:
            with catalog.batch():
                catalog.follow_release(project, name, None, missing, None)
            return
        snaps = {}
        if row is not None:
            snaps = {v: backend.find(project, v, row["snapshot"]) for v in row["volumes"].split()}
            if any(s is None for s in snaps.values()):
                said.append(f"release {name} is at {_at(row)} {there}, which {here} does not hold: not followed")
                return
        held_now = _hold(side, snaps, name) if row and (current is None or current["snapshot"] != row["snapshot"]) \
            else []
        try:
            with catalog.batch():
                catalog.follow_release(project, name, row, missing, head)
        except BaseException:
            _unhold(side, held_now, name)
            raise
        if row is not None:
            _point(side, name, snaps)
        else:
            _unpoint(side, name)
        _unhold_old(side, name, current, row["snapshot"] if row is not None else None)
