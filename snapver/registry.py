"""The model registry on the catalog: metrics and params, releases, lineage, provenance, scans, du.

What MLflow's model registry gives a team, kept where snapver keeps
everything else: in the lake's catalog, keyed by snapshot names.

- Metrics and params: files named in snapver.toml ([registry] metrics /
  params, paths from the repository root, into a volume or the Git tree;
  JSON, YAML or CSV) are read when a commit is snapshotted; nested keys are
  flattened with dots. Training code can add its own (snapver.snapshot).
- Releases (releases.py, on top of this module): a name pinned to one snapshot of
  every volume, that moves, with its history; `release:NAME` is a REV everywhere.
- Lineage: read from the edges `derive` (derive.py, in the core) records:
  upstream, the lineage tree, du.
- Provenance ([volumes.NAME] license / source) is kept with each snapshot.

A feature: the core never imports it. It plugs into the core's seams
(seams.py) when imported, which ops.py and api.py do: after a snapshot,
when a rewrite copies one (releases.py plugs in gc's protector and `release:`).
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
from pathlib import Path, PurePosixPath
from typing import NamedTuple, NoReturn

from . import derive as lineage
from . import scan, seams
from .config import RegistrySettings
from .derive import Edge, derive, edges, split_source  # noqa: F401  (derive: the CLI's, as before)
from .errors import NotFound, SnapverError
from .names import short
from .proc import ask_bytes
from .safeio import inside, read_regular


def warn(message: str, *args) -> None:
    """Warnings during a snapshot must not stop it, and the core does not print: they go
    to logging, which shows them on stderr in the CLI and the hooks (Python's last-resort
    handler) and in the journal under snapverd. Imported only when there is something to
    say: `logging` alone would cost every commit hook a fifth of its start-up."""
    import logging

    logging.getLogger("snapver.registry").warning(message, *args)




# ------------------------------------------------------------------ settings

Settings = RegistrySettings  # read and checked with the rest of snapver.toml (config.py)


def settings(ws) -> Settings:
    """The registry's part of snapver.toml: [registry], [releases], [scan], [volumes.NAME]."""
    return ws.config.registry


def scan_volumes(ws, s: Settings) -> list[str]:
    if s.scan_volumes is not None:
        return [v for v in s.scan_volumes if v in ws.volumes]
    derived = {e.volume for e in lineage.edges(ws)}
    return [v for v in ws.volumes if v == "models" or v in derived]


# ------------------------------------------------------------------ at snapshot time

def after_snapshot(ws, snaps) -> None:
    """What the registry keeps of a snapshot just taken; never makes the snapshot fail."""
    if not snaps:
        return
    s = settings(ws)  # checked when the workspace was opened
    name = snaps[0].name
    rows = [(sn.volume, s.provenance[sn.volume].get("license"), s.provenance[sn.volume].get("source"))
            for sn in snaps if s.provenance.get(sn.volume)]
    if rows:
        ws.catalog.record_provenance(ws.project, name, rows)
    if snaps[0].kind == "commit" and (s.metrics or s.params):
        by_volume = {sn.volume: sn for sn in snaps}
        for kind, files in (("metric", s.metrics), ("param", s.params)):
            for rel in files:
                values = _read_file(ws, rel, name, by_volume)
                if values is not None:
                    record_values(ws, name, {kind: values}, source=rel)
    if s.scan_on_snapshot:
        wanted = set(scan_volumes(ws, s))
        owed = []
        for sn in snaps:
            if sn.volume in wanted:
                try:
                    # On a commit's path (the Git hooks) a model that changed is read after it.
                    if _scan_one(ws, sn, read=not seams.on_commit_path) is None:
                        owed.append((sn.volume, sn.name))
                except Exception as e:  # a scanner's failure must not fail a snapshot already taken
                    warn("snapver: warning: model scan of %s@%s failed: %s", sn.volume, short(name), e)
        if owed:
            from datetime import datetime, timezone

            ws.catalog.mark_scan_pending(ws.project, owed, datetime.now(timezone.utc).isoformat())
            scan.start_detached(ws.git.toplevel)


def scan_pending(ws) -> list[dict]:
    """Scan the snapshots of this project whose scan is owed (the process a Git hook starts, and
    `snapver scan --pending`): [{volume, snapshot, flagged: [path]}]; a snapshot gone since
    (gc) is owed no more."""
    done = []
    for volume, name in ws.catalog.scans_pending(ws.project):
        snap = ws.backend.find(ws.project, volume, name)
        if snap is None:
            ws.catalog.drop_scan_pending(ws.project, volume, name)
            continue
        verdicts = _scan_one(ws, snap) or []
        done.append({"volume": volume, "snapshot": name, "flagged": [v.path for v in verdicts if v.flagged]})
    return done


def _scan_one(ws, snap, read: bool = True):
    verdicts = scan.scan_snapshot(ws.catalog, snap, read)
    for v in verdicts or []:
        if v.flagged:
            warn("snapver: warning: %s/%s runs code when unpickled (%s): "
                        "`snapver scan` lists it, and `snapver release` refuses it",
                        snap.volume, v.path, ", ".join(v.findings))
    return verdicts


def _read_file(ws, rel: str, snapshot: str, by_volume: dict, live: bool = True) -> dict | None:
    """The flattened values of one configured file, None (after a warning) if it is unusable.
    live=False (a past snapshot, metrics.refresh): never the live volume or the working tree."""
    parts = PurePosixPath(rel).parts
    data = None
    try:
        if parts[0] in ws.volumes:
            # Inside a volume: read it from the snapshot just taken, which is what the
            # snapshot holds (the live volume may be written to meanwhile).
            root = by_volume[parts[0]].path if parts[0] in by_volume else (ws.live_path(parts[0]) if live else None)
            target = _within(root, Path(root, *parts[1:]), rel) if root is not None else None
            if target and os.path.lexists(target):
                data = _regular(target, rel)
        else:
            # In the Git tree: the committed content is the truth of a commit snapshot;
            # a file Git does not track is read from the working tree.
            data = ask_bytes(["git", "cat-file", "blob", f"{snapshot[:40]}:{rel}"], cwd=ws.git.toplevel)
            if live and data is None and (target := _within(ws.git.toplevel, ws.git.toplevel / rel, rel)) \
                    and os.path.lexists(target):
                data = _regular(target, rel)
    except OSError as e:
        warn("snapver: warning: %s cannot be read (%s); its values were not recorded", rel, e.strerror)
        return None
    if data is None:
        return None  # not there (yet): nothing to record, nothing wrong
    try:
        return parse_values(rel, data)
    except ValueError as e:
        warn("snapver: warning: %s is not valid %s (%s); its values were not recorded, "
                    "the snapshot was taken", rel, _format(rel).upper(), e)
        return None


def _regular(target: Path, rel: str) -> bytes | None:
    """The bytes of a regular file; a FIFO, device or socket is not read (open would block
    the hook holding the workspace lock, or the daemon), and not a symlink put there since."""
    data = read_regular(target)
    if data is None and not os.path.isdir(target):
        warn("snapver: warning: %s is not a regular file; it was not read", rel)
    return data


def _within(root: Path, target: Path, rel: str) -> Path | None:
    """target if it stays inside root once symlinks are followed. The root daemon reads these
    files for users: a symlink there must not make it read (and record) a file of root's."""
    real = inside(root, target)
    if real is not None:
        return real
    warn("snapver: warning: %s leads outside %s through a symlink; it was not read", rel, root)
    return None


def _format(rel: str) -> str:
    suffix = PurePosixPath(rel).suffix.lower()
    return {".json": "json", ".yaml": "yaml", ".yml": "yaml", ".csv": "csv"}.get(suffix, "json")


def parse_values(rel: str, data: bytes) -> dict[str, object]:
    """Flat {dotted.key: number or text} from a JSON, YAML or CSV file; ValueError if invalid."""
    fmt = _format(rel)
    text = data.decode("utf-8")
    if fmt == "json":
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise ValueError(f"line {e.lineno} column {e.colno}: {e.msg}") from None
    elif fmt == "yaml":
        import yaml  # only projects that configure a YAML file pay for importing it

        try:
            doc = yaml.safe_load(text)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f"line {mark.line + 1} column {mark.column + 1}: " if mark else ""
            raise ValueError(f"{where}{getattr(e, 'problem', None) or e}") from None
    else:
        doc = _csv_values(text)
    if not isinstance(doc, dict):
        raise ValueError("the top level must be a mapping of names to values")
    return flatten(doc)


def _csv_values(text: str) -> dict:
    """`name,value` rows, or a header and rows (the last row wins: a per-epoch log)."""
    try:
        rows = [r for r in csv.reader(io.StringIO(text), strict=True) if r]
    except csv.Error as e:
        raise ValueError(str(e)) from None
    if len(rows) < 2:
        raise ValueError("need a header row and at least one row of values")
    header = [h.strip() for h in rows[0]]
    if len(header) == 2 and header[1].lower() == "value" and header[0].lower() in ("name", "key", "metric", "param"):
        return {r[0].strip(): _scalar(r[1].strip()) for r in rows[1:] if len(r) == 2}
    last = rows[-1]
    if len(last) != len(header):
        raise ValueError(f"row {len(rows)} has {len(last)} fields, the header {len(header)}")
    return {h: _scalar(v.strip()) for h, v in zip(header, last)}


def _scalar(text: str):
    try:
        return float(text) if any(c in text for c in ".eE") or text.lower() in ("nan", "inf") else int(text)
    except ValueError:
        return text


def flatten(doc, prefix: str = "") -> dict[str, object]:
    flat: dict[str, object] = {}
    items = doc.items() if isinstance(doc, dict) else enumerate(doc)
    for k, v in items:
        key = f"{prefix}{k}"
        if isinstance(v, (dict, list)):
            flat.update(flatten(v, key + "."))
        else:
            flat[key] = v
    return flat


def record_values(ws, snapshot: str, values: dict[str, dict], source: str) -> None:
    """values: {"metric": {...}, "param": {...}}, nested keys flattened with dots."""
    ws.catalog.record_values(ws.project, snapshot, to_rows(values), source)


def to_rows(values: dict[str, dict]) -> list[tuple]:
    """(kind, key, num, text) of {"metric": {...}, "param": {...}}; SnapverError if a value is not one."""
    rows = []
    for kind, mapping in values.items():
        if mapping is None:
            continue
        if not isinstance(mapping, dict):
            raise SnapverError(f"{kind}s must be a mapping of names to values")
        for key, value in flatten(mapping).items():
            if value is not None and not isinstance(value, (int, float, str, bool)):
                raise SnapverError(f"{kind} {key!r}: {value!r} is not a number or text")
            num = _number(value)
            text = None if value is None else (str(value).lower() if isinstance(value, bool) else str(value))
            rows.append((kind, key, num, text))
    return rows


def _number(value) -> float | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(value)
    except ValueError:
        return None


def values(ws, snapshots: list[str] | None = None) -> dict[str, dict[str, dict]]:
    """{snapshot: {"metric": {key: value}, "param": {...}}} from the catalog."""
    out: dict[str, dict[str, dict]] = {}
    for snap, kind, key, num, text in ws.catalog.value_rows(ws.project):
        if snapshots is None or snap in snapshots:
            out.setdefault(snap, {"metric": {}, "param": {}})[kind][key] = num if num is not None else text
    return out


def lookup(v: dict, key: str):
    """A key's value in one snapshot's values: metrics first, then params."""
    for kind in ("metric", "param"):
        if key in v.get(kind, {}):
            return v[kind][key]
    return None


# ------------------------------------------------------------------ find

_OPS = {
    ">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b, "=": lambda a, b: a == b, ">": lambda a, b: a > b, "<": lambda a, b: a < b,
}
_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_.\-/]*")
_OP = re.compile(r">=|<=|==|!=|=|>|<")
_VALUE = re.compile(r"[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?$|[A-Za-z0-9_.:/+-]+$")


class Condition(NamedTuple):
    key: str
    op: str
    value: float | str

    def test(self, actual) -> bool:
        if actual is None:
            return False
        if isinstance(self.value, float):
            return isinstance(actual, float) and _OPS[self.op](actual, self.value)
        return str(actual) == self.value if self.op in ("=", "==") else str(actual) != self.value


def parse_condition(text: str) -> Condition:
    """'accuracy>0.9' -> Condition; a SnapverError that points at where it went wrong."""
    def fail(pos: int, what: str) -> NoReturn:
        raise SnapverError(f"query {text!r} does not parse at character {pos + 1} "
                           f"({text[pos:pos + 12]!r}): expected {what}")

    pos = len(text) - len(text.lstrip())
    m = _KEY.match(text, pos)
    if not m:
        fail(pos, "a metric or param name")
    key, pos = m.group(), m.end()
    pos += len(text[pos:]) - len(text[pos:].lstrip())
    m = _OP.match(text, pos)
    if not m:
        fail(pos, "one of > >= < <= = == != after the name")
    op, pos = m.group(), m.end()
    pos += len(text[pos:]) - len(text[pos:].lstrip())
    rest = text[pos:].rstrip()
    m = _VALUE.match(rest)
    if not rest or not m:
        fail(pos, "a number or a word after the operator")
    is_number = m.group(1) is not None
    if not is_number and op not in ("=", "==", "!="):
        fail(pos, f"a number after {op!r} (words compare only with = and !=)")
    return Condition(key, op, float(rest) if is_number else rest)


def find(ws, queries: list[str], include_wip: bool = False, sort: str | None = None,
         limit: int | None = None) -> list[dict]:
    """Snapshots (one row per snapshot name) whose values meet every query: newest first, or by
    the value of sort ('-KEY': the greatest first; only those that have it); at most limit rows.
    A key no snapshot of the project has is an error (a typo would otherwise find nothing)."""
    conditions = [parse_condition(q) for q in queries]
    descending = bool(sort and sort.startswith("-"))
    key = sort[1:] if sort and descending else sort
    if not conditions and not key:
        raise SnapverError("give at least one condition, e.g. 'accuracy>0.9', or --sort KEY")
    if key is not None and not _KEY.fullmatch(key):
        raise SnapverError(f"--sort {sort!r} is not a metric or param name (descending: --sort -NAME or --desc)")
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
        raise SnapverError(f"--limit {limit!r} is not a whole number >= 1")
    all_values = values(ws)
    known = {k for v in all_values.values() for kind in v.values() for k in kind}
    unknown = [k for k in dict.fromkeys([*(c.key for c in conditions), *([key] if key else [])]) if k not in known]
    if unknown:
        near = sorted(known)
        raise SnapverError(f"no metric or param named {', '.join(map(repr, unknown))} in this project "
                           + (f"(known: {', '.join(near[:12])}{', ...' if len(near) > 12 else ''})" if near
                              else "(none recorded yet: see [registry] in snapver.toml)"))
    shown = list(dict.fromkeys([*(c.key for c in conditions), *([key] if key else [])]))
    rows: dict[str, dict] = {}
    for entry in ws.log(include_wip=include_wip):
        name = entry.snapshot.name
        v = all_values.get(name)
        if name in rows or v is None:
            continue
        if all(c.test(lookup(v, c.key)) for c in conditions) and (key is None or lookup(v, key) is not None):
            rows[name] = {"name": name, "commit": entry.snapshot.commit, "kind": entry.snapshot.kind,
                          "created": entry.snapshot.created.isoformat(), "subject": entry.subject,
                          "values": {k: lookup(v, k) for k in shown}}
    found = list(rows.values())
    if key is not None:
        # Numbers by value, then words; the newest first among equals (sorted is stable).
        def order(r):
            x = r["values"][key]
            return (0, x, "") if isinstance(x, float) else (1, 0.0, str(x))
        found.sort(key=order, reverse=descending)
    return found[:limit] if limit else found


# ------------------------------------------------------------------ compare

def snapshots_at(ws, rev: str) -> tuple[dict, str]:
    """The snapshots at rev of the volumes that have one (derived volumes are younger than
    older commits, and resolve leaves them out); an error only if none has."""
    found, commit, _ = ws.resolve(rev, ws.volumes)
    return found, commit


def compare(ws, revs: list[str]) -> dict:
    """Params and metrics of two or more revisions side by side, each number's delta against the
    first, and the files changed in each volume from the first to the last (walks both)."""
    if len(revs) < 2:
        raise SnapverError("compare needs two or more revisions")
    at = [snapshots_at(ws, rev) for rev in revs]
    names_ = [next(iter(snaps.values())).name for snaps, _ in at]
    v = values(ws, names_)
    table: dict[str, dict] = {}
    deltas: dict[str, dict] = {}
    for kind in ("param", "metric"):
        keys = sorted({k for n in names_ for k in v.get(n, {}).get(kind, {})})
        table[kind] = {k: [v.get(n, {}).get(kind, {}).get(k) for n in names_] for k in keys}
        deltas[kind] = {k: [None] + [y - cells[0] if isinstance(y, float) and isinstance(cells[0], float) else None
                                     for y in cells[1:]] for k, cells in table[kind].items()}
    (old, _), (new, _) = at[0], at[-1]
    changes = {}
    for vol in ws.volumes:
        if vol in old and vol in new:
            changes[vol] = [{"path": c.path, "change": c.change}
                            for c in ws.backend.diff(old[vol].path, new[vol].path)]
    return {"snapshots": names_, "commits": [c for _, c in at], "params": table["param"],
            "metrics": table["metric"], "deltas": {"params": deltas["param"], "metrics": deltas["metric"]},
            "changes": changes}


# ------------------------------------------------------------------ model safety (releases.py refuses what it flags)

def flagged(ws, snaps: dict) -> list[str]:
    """'volume/path (findings)' for every flagged model file in these snapshots; scans those
    configured for scanning that were never scanned (scan off, older than the scanner, or
    pending: the hook's scan process has not stored its verdicts, or never will)."""
    wanted = set(scan_volumes(ws, settings(ws)))
    pending = {v for v, _ in ws.catalog.scans_pending(ws.project, [s.name for s in snaps.values()])}
    bad = []
    for v, snap in snaps.items():
        verdicts = scan.stored(ws.catalog, snap)
        if verdicts is None and (v in wanted or v in pending):  # pending: its process may never run
            verdicts = _scan_one(ws, snap)
        judged = [scan.judge(f, settings(ws).scan_allow)[1] for f in verdicts or []]
        bad += [f"{v}/{f.path} ({', '.join(f.findings)})" for f in judged if f.flagged]
    return bad


def scan_report(ws, rev: str = "HEAD") -> dict[str, list[dict]]:
    """{volume: [{path, flagged, findings}]} for the scanned volumes' snapshots at rev;
    a snapshot never scanned (scan off, taken before, or its scan pending) is scanned now."""
    snaps, _ = snapshots_at(ws, rev)
    report = {}
    for v in scan_volumes(ws, settings(ws)):
        if v in snaps:
            verdicts = scan.stored(ws.catalog, snaps[v])
            if verdicts is None:
                verdicts = scan.scan_snapshot(ws.catalog, snaps[v])
            judged = [scan.judge(f, settings(ws).scan_allow) for f in verdicts or []]  # [scan] allow
            report[v] = [{"path": f.path, "state": state, "flagged": f.flagged, "findings": f.findings}
                         for state, f in judged]
    return report


# ------------------------------------------------------------------ lineage (made by derive.py)

def upstream(ws, source: str) -> list[dict]:
    """Where VOLUME@REV comes from: its snapshot, the snapshot it was derived from, and so on
    up to a volume nobody derived; each with the other volumes' snapshots of the same moment
    (the dataset and code it was made with)."""
    volume, rev = split_source(source)
    if volume not in ws.volumes:
        raise NotFound(f"no volume {volume!r} here: the volumes are {', '.join(ws.volumes)}")
    snap = ws.resolve(rev, [volume])[0][volume]
    by_volume = {e.volume: e for e in edges(ws)}
    chain, current, seen = [], (volume, snap.name), set()
    relation, message = "this", None
    while current not in seen:
        seen.add(current)
        v, name = current
        beside = sorted(
            other for other in ws.volumes
            if other != v and ws.backend.find(ws.project, other, name) is not None
        )
        chain.append({"volume": v, "snapshot": name, "commit": name[:40], "relation": relation,
                      "message": message, "same_moment": beside})
        edge = by_volume.get(v)
        if edge is None:
            break
        current, relation, message = (edge.source_volume, edge.source_snapshot), "derived from", edge.message
    return chain


def lineage_tree(ws, volume: str | None = None) -> list[tuple[int, str, Edge | None]]:
    """(depth, volume, edge into it) in tree order; only VOLUME's family when given."""
    es = edges(ws)
    parent = {e.volume: e for e in es}
    children: dict[str, list[Edge]] = {}
    for e in es:
        children.setdefault(e.source_volume, []).append(e)
    if volume is not None:
        if volume not in ws.volumes and volume not in parent and volume not in children:
            raise NotFound(f"no volume {volume!r} here: the volumes are {', '.join(ws.volumes)}")
        root, seen = volume, set()
        while root in parent and root not in seen:
            seen.add(root)
            root = parent[root].source_volume
        roots = [root]
    else:
        roots = [v for v in dict.fromkeys([*ws.volumes, *children]) if v not in parent]
    out: list[tuple[int, str, Edge | None]] = []

    def walk(v: str, depth: int, edge: Edge | None) -> None:
        out.append((depth, v, edge))
        for e in children.get(v, []):
            walk(e.volume, depth + 1, e)

    for r in roots:
        walk(r, 0, None)
    return out


def lineage_dot(ws, volume: str | None = None, recipes: dict[str, dict] | None = None) -> str:
    """Graphviz DOT of the lineage: an edge from each source, labelled with the snapshot it
    was derived from. recipes (cascade.marks; the registry knows no recipes): a recipe volume
    says the snapshot it is at, red if stale, with a dashed edge from each of its inputs
    labelled with the snapshot its last build read."""
    recipes = recipes or {}
    tree = lineage_tree(ws, volume)
    shown = {v for _, v, _ in tree}

    def tag(name: str) -> str:  # a build point (a wip of HEAD) by its commit and time of day
        return short(name) if len(name) <= 40 else f"{name[:10]} {name[50:52]}:{name[52:54]}:{name[54:56]}"

    lines = ["digraph lineage {", "  rankdir=LR;"]
    for _, v, _ in tree:
        r = recipes.get(v)
        if r is None:
            lines.append(f'  "{v}";')
            continue
        base = ws.state.volume(v).base
        text = f"{v}\\nat {tag(base) if base else 'nothing yet'}" + ("\\nSTALE" if r["stale"] else "")
        lines.append(f'  "{v}" [shape=box, label="{text}"' + (", color=red, fontcolor=red];" if r["stale"] else "];"))
    for _, v, e in tree:
        if e is not None:
            lines.append(f'  "{e.source_volume}" -> "{v}" [label="{short(e.source_snapshot)}"];')
    for v, r in recipes.items():
        for i, used in r["inputs"].items():
            if v in shown and i in shown:
                lines.append(f'  "{i}" -> "{v}" [style=dashed, color=gray40, fontcolor=gray40, '
                             f'label="{"read " + tag(used) if used else "not built yet"}"];')
    return "\n".join(lines + ["}"]) + "\n"


# ------------------------------------------------------------------ du

def du(ws) -> dict:
    """Per volume and snapshot: bytes referenced, exclusive (only it holds them) and shared
    (with its ancestors, siblings and clones); and the saving against full copies. On Btrfs
    O(changes) per snapshot (send streams), and on disk from the filesystem where the lake is
    one (metadata: its metadata bytes, apart; None where on disk was walked or is ZFS's)."""
    parents = {e.volume: e for e in edges(ws)}
    rows = []
    for v in ws.volumes:
        snaps = sorted(ws.backend.snapshots(ws.project, v), key=lambda s: s.age_key)
        for snap, sp in zip(snaps, ws.backend.spaces(snaps)):
            rows.append({"volume": v, "snapshot": snap.name, "referenced": sp.referenced,
                         "exclusive": sp.exclusive, "shared": max(sp.referenced - sp.exclusive, 0)})
        if ws.backend.volume_exists(ws.project, ws.id, v):
            sp = ws.backend.live_space(ws.project, ws.id, v)
            rows.append({"volume": v, "snapshot": None, "referenced": sp.referenced,
                         "exclusive": sp.exclusive, "shared": max(sp.referenced - sp.exclusive, 0)})
    fp = ws.backend.footprint(ws.project)
    return {
        "volumes": [
            {"volume": v, "derived_from": (f"{parents[v].source_volume}@{parents[v].source_snapshot}"
                                           if v in parents else None),
             "rows": [r for r in rows if r["volume"] == v]}
            for v in ws.volumes
        ],
        "full_copies": fp.full_copies,
        "on_disk": fp.on_disk,
        "metadata": fp.metadata,
        "saving": max(fp.full_copies - fp.on_disk, 0),
    }


# ------------------------------------------------------------------ show

def provenance(ws, snapshot: str) -> dict[str, dict[str, str]]:
    return {v: {k: val for k, val in (("license", lic), ("source", src)) if val}
            for v, lic, src in ws.catalog.provenance(ws.project, snapshot)}


seams.plug(taken=after_snapshot)
