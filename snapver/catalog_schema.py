"""The catalog's tables, its schema version, and the steps up from each older version.

Clones of one project run whatever snapver each has installed, and share one catalog. Its
schema version is SQLite's `PRAGMA user_version` (a field in the file's header, 0 in every
catalog made before it was kept):

- A catalog of a newer version than this snapver knows is refused before anything is
  written (SchemaTooNew, one line): its tables may mean what this version cannot know.
- An older one is brought up to date by catalog.Catalog when it is opened, in one
  IMMEDIATE transaction (two processes opening it at once migrate it once: the second
  finds the new version when it gets the lock). A step that fails rolls the whole
  migration back, and every step is idempotent besides.
- A new version appends a step to MIGRATIONS and never edits an old one: a new catalog
  (an empty file, or the one `reindex` starts after a loss) runs them all from 0.

Plain sqlite3, not sqlite-utils (whose `create_table`/`transform` could write these
steps): the first Git hook after an upgrade is what migrates, and the hook path does not
import sqlite-utils (55-80 ms against 4-6 ms for sqlite3, `python -X importtime -c
'import sqlite_utils'`; tests/test_hook_imports.py). The schema as SQL is also the one
place a reader sees every table whole.
"""

from __future__ import annotations

import os

from .errors import SnapverError

VERSION = 6


class SchemaTooNew(SnapverError):
    """The catalog was written by a newer snapver: this one must not read or write it."""


# Version 1: the tables of every catalog before user_version was kept, as their last
# `CREATE TABLE IF NOT EXISTS` made them (the registry's and received pins' on first use).
_V1 = """
CREATE TABLE IF NOT EXISTS snapshots (
    project TEXT NOT NULL,
    volume TEXT NOT NULL,
    name TEXT NOT NULL,
    commit_sha TEXT NOT NULL,
    kind TEXT NOT NULL,
    created TEXT NOT NULL,
    workspace TEXT,
    message TEXT,
    kept INTEGER,
    PRIMARY KEY (project, volume, name)
);
CREATE TABLE IF NOT EXISTS commits (
    project TEXT NOT NULL,
    sha TEXT NOT NULL,
    author TEXT,
    email TEXT,
    time TEXT,
    subject TEXT,
    parents TEXT,
    branch TEXT,
    PRIMARY KEY (project, sha)
);
CREATE TABLE IF NOT EXISTS volumes (
    project TEXT NOT NULL,
    workspace TEXT NOT NULL,
    name TEXT NOT NULL,
    path TEXT NOT NULL,
    worktree TEXT,
    PRIMARY KEY (project, workspace, name)
);
CREATE TABLE IF NOT EXISTS operations (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL,
    project TEXT NOT NULL,
    workspace TEXT NOT NULL,
    pid INTEGER NOT NULL,
    command TEXT NOT NULL,
    started TEXT NOT NULL,
    intent TEXT NOT NULL,
    steps TEXT NOT NULL,
    state TEXT NOT NULL,
    error TEXT
);
CREATE INDEX IF NOT EXISTS operations_workspace ON operations (workspace);
CREATE TABLE IF NOT EXISTS clones (
    project TEXT NOT NULL,
    worktree TEXT NOT NULL,
    git_dir TEXT NOT NULL,
    workspace TEXT NOT NULL,
    seen TEXT NOT NULL,
    PRIMARY KEY (project, worktree, git_dir, workspace)
);
CREATE TABLE IF NOT EXISTS registry_values (
    project TEXT NOT NULL, snapshot TEXT NOT NULL, kind TEXT NOT NULL, key TEXT NOT NULL,
    num REAL, text TEXT, source TEXT,
    PRIMARY KEY (project, snapshot, kind, key)
);
CREATE TABLE IF NOT EXISTS releases (
    project TEXT NOT NULL, name TEXT NOT NULL, snapshot TEXT NOT NULL, commit_sha TEXT NOT NULL,
    volumes TEXT NOT NULL, created TEXT NOT NULL, message TEXT, forced INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (project, name)
);
CREATE TABLE IF NOT EXISTS lineage (
    project TEXT NOT NULL, volume TEXT NOT NULL, source_volume TEXT NOT NULL,
    source_snapshot TEXT NOT NULL, message TEXT, created TEXT NOT NULL,
    PRIMARY KEY (project, volume)
);
CREATE TABLE IF NOT EXISTS provenance (
    project TEXT NOT NULL, volume TEXT NOT NULL, snapshot TEXT NOT NULL, license TEXT, source TEXT,
    PRIMARY KEY (project, volume, snapshot)
);
CREATE TABLE IF NOT EXISTS scans (
    project TEXT NOT NULL, volume TEXT NOT NULL, snapshot TEXT NOT NULL, scanned TEXT NOT NULL,
    files INTEGER NOT NULL, flagged INTEGER NOT NULL,
    PRIMARY KEY (project, volume, snapshot)
);
CREATE TABLE IF NOT EXISTS scan_files (
    project TEXT NOT NULL, volume TEXT NOT NULL, snapshot TEXT NOT NULL, path TEXT NOT NULL,
    size INTEGER, mtime_ns INTEGER, ctime_ns INTEGER, flagged INTEGER NOT NULL, findings TEXT NOT NULL,
    PRIMARY KEY (project, volume, snapshot, path)
);
CREATE INDEX IF NOT EXISTS scan_files_by_stat ON scan_files (project, volume, path, size, mtime_ns);
CREATE TABLE IF NOT EXISTS received_pins (
    project TEXT NOT NULL,
    volume TEXT NOT NULL,
    name TEXT NOT NULL,
    pin TEXT NOT NULL,
    PRIMARY KEY (project, volume, name, pin)
);
"""


def _statements(script: str) -> list[str]:
    # One by one: executescript would COMMIT the migration's transaction first.
    return [s.strip() for s in script.split(";") if s.strip()]


def _to_v1(conn) -> None:
    """Every table of version 1; and a catalog made before safety wips were marked gets the
    `kept` column, its rows marked from what they say: "kept before ..." is a safety wip; a
    row reindex made (no workspace) is not known (NULL: gc keeps it as a safety wip); any
    other row is a daemon or manual one."""
    had_snapshots = _columns(conn, "snapshots")
    for statement in _statements(_V1):
        conn.execute(statement)
    if had_snapshots and "kept" not in had_snapshots:
        conn.execute("ALTER TABLE snapshots ADD COLUMN kept INTEGER")
        conn.execute("UPDATE snapshots SET kept = CASE WHEN message LIKE 'kept before %' THEN 1 "
                     "WHEN workspace IS NULL THEN NULL ELSE 0 END")


# Version 2: build recipes (`derive --run`) and the record of every build (cascade.py):
# the snapshot each input was at, so that "stale" is a comparison of names, O(1) per input.
_V2 = """
CREATE TABLE IF NOT EXISTS recipes (
    project TEXT NOT NULL, volume TEXT NOT NULL, run TEXT NOT NULL, inputs TEXT NOT NULL,
    created TEXT NOT NULL,
    PRIMARY KEY (project, volume)
);
CREATE TABLE IF NOT EXISTS builds (
    id INTEGER PRIMARY KEY,
    project TEXT NOT NULL, workspace TEXT NOT NULL, volume TEXT NOT NULL, command TEXT NOT NULL,
    inputs TEXT NOT NULL, snapshot TEXT, mark TEXT, exit_code INTEGER, duration REAL, log TEXT,
    started TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS builds_by_volume ON builds (project, workspace, volume, id);
"""


# Version 3: releases move (`release set`), and every move is kept. One row per move, in the
# order the catalog's write lock let them in (seq); a creation has no `from`, a removal no `to`.
_V3 = """
CREATE TABLE IF NOT EXISTS release_moves (
    seq INTEGER PRIMARY KEY,
    project TEXT NOT NULL, name TEXT NOT NULL, moved TEXT NOT NULL, who TEXT,
    from_snapshot TEXT, to_snapshot TEXT, from_commit TEXT, to_commit TEXT, volumes TEXT, message TEXT
);
CREATE INDEX IF NOT EXISTS release_moves_by_name ON release_moves (project, name, seq)
"""


def _to_v2(conn) -> None:
    for statement in _statements(_V2):
        conn.execute(statement)


def _to_v3(conn) -> None:
    """The release_moves table; each release of an older version gets its creation as its first move
    (when it was made, its message; who is not known), so its history starts where it did."""
    had = "release_moves" in {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    for statement in _statements(_V3):
        conn.execute(statement)
    if not had:
        conn.execute("INSERT INTO release_moves (project, name, moved, who, from_snapshot, to_snapshot, "
                     "from_commit, to_commit, volumes, message) SELECT project, name, created, NULL, NULL, "
                     "snapshot, NULL, commit_sha, volumes, message FROM releases ORDER BY created")


# Version 4: metric history. Training code logs metrics per step (snapver.log_metrics, or
# snapver.snapshot(metrics=..., step=N)); a row is keyed by the line of work it was logged on
# (commit, workspace), the run (one training process, or what SNAPVER_RUN names) and the step,
# not by the wip snapshot it came with (kept as `snapshot` when there was one): gc thins
# wips, and the curve of a run must outlive them. Plain rows, to export as they are.
_V4 = """
CREATE TABLE IF NOT EXISTS metric_history (
    project TEXT NOT NULL, commit_sha TEXT NOT NULL, workspace TEXT NOT NULL, run TEXT NOT NULL,
    step INTEGER NOT NULL, key TEXT NOT NULL, num REAL, text TEXT, logged TEXT NOT NULL, snapshot TEXT,
    PRIMARY KEY (project, commit_sha, workspace, run, step, key)
);
CREATE INDEX IF NOT EXISTS metric_history_by_key ON metric_history (project, key, commit_sha)
"""


def _to_v4(conn) -> None:
    """The metric_history table; the metrics the Python API recorded with wip snapshots before it
    (registry_values from 'api') become history too, one run ('wips') per line of work, one step
    per wip in time order: a catalog upgraded while its wips are still there keeps their values."""
    had = "metric_history" in {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    for statement in _statements(_V4):
        conn.execute(statement)
    if had:
        return
    conn.execute(
        "INSERT OR IGNORE INTO metric_history SELECT v.project, substr(v.snapshot, 1, 40), "
        "coalesce((SELECT s.workspace FROM snapshots s WHERE s.project = v.project AND s.name = v.snapshot "
        "AND s.workspace IS NOT NULL LIMIT 1), ''), 'wips', "
        "(SELECT count(DISTINCT o.snapshot) FROM registry_values o WHERE o.project = v.project "
        "AND o.kind = 'metric' AND o.source = 'api' AND length(o.snapshot) > 40 "
        "AND substr(o.snapshot, 1, 40) = substr(v.snapshot, 1, 40) AND o.snapshot < v.snapshot), "
        "v.key, v.num, v.text, coalesce((SELECT s.created FROM snapshots s WHERE s.project = v.project "
        "AND s.name = v.snapshot LIMIT 1), ''), v.snapshot "
        "FROM registry_values v WHERE v.kind = 'metric' AND v.source = 'api' AND length(v.snapshot) > 40")


# Version 5: releases travel between lakes (registrysync.py) and are merged as Git merges refs.
# Each move gets an id, the same on every lake it reaches, and its parents: the moves it was
# made after (more than one when it settles a divergence). release_heads names the move a
# release is at on this lake (also for a removed one): a release moved on one side only
# fast-forwards, one moved on both is reported. Creating the ids needs no lake-wide
# agreement: a move made before version 5 existed on one lake only.
_V5 = """
CREATE TABLE IF NOT EXISTS release_heads (
    project TEXT NOT NULL, name TEXT NOT NULL, head TEXT NOT NULL,
    PRIMARY KEY (project, name)
)
"""


def _to_v5(conn) -> None:
    """Ids, parents (the move before, in seq order) and heads for the moves of version 4."""
    have = _columns(conn, "release_moves")
    for column in ("id", "parents"):
        if column not in have:
            conn.execute(f"ALTER TABLE release_moves ADD COLUMN {column} TEXT")
    for statement in _statements(_V5):
        conn.execute(statement)
    conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS release_moves_by_id ON release_moves (id)")
    last: dict[tuple[str, str], str] = {}
    rows = conn.execute("SELECT seq, project, name, id FROM release_moves ORDER BY seq").fetchall()
    for seq, project, name, move_id in rows:
        if move_id is None:
            move_id = os.urandom(16).hex()
            parent = last.get((project, name))
            conn.execute("UPDATE release_moves SET id = ?, parents = ? WHERE seq = ?", (move_id, parent, seq))
        last[(project, name)] = move_id
    for (project, name), move_id in last.items():
        conn.execute("INSERT OR IGNORE INTO release_heads VALUES (?, ?, ?)", (project, name, move_id))


# Version 6: a model scan can wait until after the commit (registry.py: the Git hook only marks
# the snapshot, and a process of its own scans it). A row here is a snapshot whose scan is owed;
# record_scan deletes it with the verdicts, in one transaction, so a scan killed half-way leaves
# it owed. A table of its own, not a mark in `scans`: a snapver before version 6 finds no scan
# of such a snapshot and scans it before a release, as it always did, never "scanned, 0 files".
_V6 = """
CREATE TABLE IF NOT EXISTS scan_pending (
    project TEXT NOT NULL, volume TEXT NOT NULL, snapshot TEXT NOT NULL, queued TEXT NOT NULL,
    PRIMARY KEY (project, volume, snapshot)
)
"""


def _to_v6(conn) -> None:
    for statement in _statements(_V6):
        conn.execute(statement)


# MIGRATIONS[n] takes a catalog from version n to n + 1.
MIGRATIONS = [_to_v1, _to_v2, _to_v3, _to_v4, _to_v5, _to_v6]
assert len(MIGRATIONS) == VERSION


def _columns(conn, table: str) -> set[str]:
    return {r[1] for r in conn.execute(f"PRAGMA table_info({table})")}


def version(conn, path=None) -> int:
    """The catalog's schema version; SchemaTooNew if this snapver does not know it."""
    found = conn.execute("PRAGMA user_version").fetchone()[0]
    if found > VERSION:
        where = f" {path}" if path else ""
        raise SchemaTooNew(f"this catalog{where} was written by a newer snapver (schema {found}; this one "
                           f"knows {VERSION}): upgrade snapver")
    return found


def migrate(conn, path=None) -> int:
    """Bring the catalog up to VERSION; the caller holds a write transaction, so that the
    version read here is still the version when the steps are done. Returns the version found."""
    found = version(conn, path)  # again: another process may have migrated it meanwhile
    for step in MIGRATIONS[found:]:
        step(conn)
    if found < VERSION:
        conn.execute(f"PRAGMA user_version = {VERSION}")
    return found
