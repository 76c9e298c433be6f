"""The catalog: an SQLite index of snapshots, commits and volumes, one per lake, and the
one module that reads and writes it.

It is an index, not the truth: every snapshot row can be rebuilt from the
filesystem (`snapver reindex`), every commit row from Git. Every table and every
SQL statement is here (the tables, their version and migrations in
catalog_schema.py); features call methods named for what they keep (the journal's
operations, clones, the registry's values, releases and lineage, model scans, pins
that came with received snapshots) and write no SQL. Transactions are `batch()`,
the one BEGIN IMMEDIATE / COMMIT / ROLLBACK (`transaction`), which nests by joining.

Writes happen in the Git hooks, so they use the standard library's sqlite3
directly: importing sqlite-utils costs 55-80 ms against 4-6 ms (`python -X
importtime -c 'import sqlite_utils'`), and tests/test_hook_imports.py keeps it off
the hook path; and sqlite-utils 3.x, which pyproject allows, commits its writers on
their own, which would break a batch. Reads for reports and reindex go through
sqlite-utils on the same connection.

One table is not an index: `operations`, the journal of multi-step operations
(journal.py). It cannot be rebuilt, and doctor repairs what it can without it.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

from . import catalog_schema
from .catalog_schema import SchemaTooNew
from .errors import FULL, CatalogFull, CatalogUnwritable, FilesystemFull, SnapverError


# The catalog most recently opened in this process: SQLite's errors do not name their file,
# and the message a user sees must (see explain).
_opened: Path | None = None
_read_copy = False  # it is a copy read because the filesystem was full (Catalog._connect_copy)


def explain(e: sqlite3.Error, path: Path | None = None) -> SnapverError:
    """What a user must do about an SQLite error from the catalog: one line."""
    where = path or _opened or "the lake's catalog.db"
    text = str(e)
    if "disk is full" in text or _full(where) or (_read_copy and "readonly" in text):
        return CatalogFull(f"the catalog {where} cannot be written: {FULL}")
    if "readonly" in text or "read-only" in text or "unable to open" in text:
        return CatalogUnwritable(
            f"the catalog {where} cannot be written ({text}): make it writable again "
            "(chmod u+w, chattr -i, or remount the lake read-write); the snapshots are safe"
        )
    return SnapverError(
        f"the catalog {where} is damaged ({text}): run `snapver reindex` to rebuild it "
        "from the filesystem (the snapshots are safe; the damaged file is kept beside it)"
    )


def _table_columns(conn, table: str) -> list[str]:
    return [r[1] for r in conn.execute(f"PRAGMA table_info({table})")]


def _full(path) -> bool:
    try:
        st = os.statvfs(Path(path).parent)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < 1024**2


_FS_IOC_SETFLAGS, _FS_NOCOW_FL = 0x40086602, 0x00800000


def _prepare_shm(db: Path) -> None:
    """Make SQLite's WAL index (`-shm`) a no-copy-on-write file before SQLite makes it.

    SQLite writes the index through a shared mmap. On Btrfs every write to a mapped page
    allocates a new block, and on a full filesystem that allocation fails as SIGBUS: the
    process dies instead of seeing SQLITE_FULL (measured: a receive into a full lake).
    A NOCOW file is written in place, and the flag only takes while the file is empty,
    so the file is made here, with the database's mode and owner as SQLite would.
    Elsewhere (ZFS, or a database not yet created) nothing is done.
    """
    import fcntl
    import struct

    try:
        st = os.stat(db)
        fd = os.open(f"{db}-shm", os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, st.st_mode & 0o666)
    except OSError:
        return  # no database yet, or the index exists (made here or by SQLite): as it is
    try:
        with contextlib.suppress(OSError):  # not Btrfs
            fcntl.ioctl(fd, _FS_IOC_SETFLAGS, struct.pack("i", _FS_NOCOW_FL))
        if os.geteuid() == 0:
            with contextlib.suppress(OSError):
                os.fchown(fd, st.st_uid, st.st_gid)
    finally:
        os.close(fd)


@contextlib.contextmanager
def transaction(conn):
    """BEGIN IMMEDIATE ... COMMIT, or ROLLBACK on any exception: the one place the catalog's
    transactions are written. IMMEDIATE takes the write lock at once, so that what is read
    inside (a journal's open rows, the schema's version) is still so at COMMIT. Inside a
    transaction already open it joins that one (SQLite has no nested BEGIN): the outer one
    commits or rolls back the lot."""
    if conn.in_transaction:
        yield
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield
        conn.execute("COMMIT")
    except BaseException:
        # SQLite may have rolled back already (a full disk): then there is nothing to undo,
        # and a transaction left open would be joined, unseen, by the next one.
        if conn.in_transaction:
            conn.execute("ROLLBACK")
        raise


class Catalog:
    def __init__(self, path: Path):
        global _opened
        self.path = _opened = path
        self.set_aside: Path | None = None  # where rebuild() put a damaged catalog
        self.read_only: Path | None = None  # the copy read when the filesystem is full
        try:
            try:
                self._connect()
            except sqlite3.Error as e:
                raise explain(e) from None
        except FilesystemFull:
            self._connect_copy()

    def _connect_copy(self) -> None:
        """A full filesystem: SQLite cannot even open the catalog (the WAL index it needs is a
        file it must make), yet gc and doctor, which free space, must read it. They read a
        copy in memory (/dev/shm: a few hundred KiB), exact up to its last commit, and every
        write to it fails as the filesystem being full: nothing is written before space is freed."""
        import atexit
        import shutil
        import tempfile

        copy = Path(tempfile.mkdtemp(prefix="snapver-catalog-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
        atexit.register(shutil.rmtree, copy, True)
        try:
            for suffix in ("", "-wal"):
                if os.path.exists(f"{self.path}{suffix}"):
                    shutil.copyfile(f"{self.path}{suffix}", copy / f"catalog.db{suffix}")
            self.conn = sqlite3.connect(copy / "catalog.db", timeout=30, isolation_level=None)
            self.conn.row_factory = sqlite3.Row
            if catalog_schema.version(self.conn, self.path) < catalog_schema.VERSION:
                # An older catalog is read as this version reads it: the copy is migrated
                # (in memory; the catalog itself is migrated once there is space).
                with transaction(self.conn):
                    catalog_schema.migrate(self.conn, self.path)
            self.conn.execute("PRAGMA query_only = ON")
        except (OSError, sqlite3.Error):
            raise CatalogFull(f"the catalog {self.path} cannot be read: {FULL}") from None
        self.read_only = copy
        global _read_copy
        _read_copy = True

    def _connect(self) -> None:
        _prepare_shm(self.path)
        self.conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        self.conn.row_factory = sqlite3.Row
        try:
            found = catalog_schema.version(self.conn, self.path)  # before anything is written
        except SchemaTooNew:
            self.conn.close()
            raise
        try:
            self.conn.execute("PRAGMA journal_mode=WAL")
            # In WAL mode NORMAL never corrupts, it can only lose the last transactions
            # in a power cut; the catalog is rebuilt from the filesystem anyway, and a
            # full fsync per row was most of a commit hook's time.
            self.conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.OperationalError:
            pass  # filesystems without shared mmap (FUSE) keep the rollback journal
        if found < catalog_schema.VERSION:
            self._migrate()

    def _migrate(self) -> None:
        try:
            with transaction(self.conn):
                catalog_schema.migrate(self.conn, self.path)
        except sqlite3.OperationalError as e:
            readonly = "readonly" in str(e) or "read-only" in str(e)
            if not readonly or "snapshots" not in self._tables():
                self.conn.close()
                raise explain(e, self.path) from None
            # Opened by one who may not write it: read as it is until one who may opens it
            # (a row without `kept` reads as not known, which gc keeps).
        except SchemaTooNew:
            self.conn.close()
            raise

    def _tables(self) -> set[str]:
        return {r[0] for r in self.conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    @classmethod
    def rebuild(cls, path: Path) -> Catalog:
        """The catalog for `reindex`: a damaged file (one SQLite cannot read, or one that
        fails its quick check) is moved aside, never deleted, and a new one started."""
        try:
            catalog = cls(path)
            if catalog.conn.execute("PRAGMA quick_check").fetchone()[0] == "ok":
                return catalog
            catalog.close()
        except sqlite3.DatabaseError:
            pass
        except (CatalogUnwritable, SchemaTooNew):
            raise  # not damaged (and a newer snapver's catalog): never set aside
        except SnapverError:
            pass
        aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
        for suffix in ("", "-wal", "-shm"):
            if os.path.lexists(f"{path}{suffix}"):
                os.rename(f"{path}{suffix}", f"{aside}{suffix}")
        catalog = cls(path)
        catalog.set_aside = aside
        return catalog

    def batch(self):
        """Several writes in one transaction (joined to the one open, if any)."""
        return transaction(self.conn)

    def close(self) -> None:
        self.conn.close()

    @property
    def db(self):
        import sqlite_utils

        return sqlite_utils.Database(self.conn)

    # writes (hot path: plain sqlite3)
    def record_snapshots(self, snapshots, workspace: str | None, message: str | None,
                         kept: bool | None = None) -> None:
        """kept: a safety wip (taken before live data was replaced), which gc never thins;
        None when not known (a rebuilt or received row), which gc treats as kept."""
        self.conn.executemany(
            "INSERT OR REPLACE INTO snapshots "
            "(project, volume, name, commit_sha, kind, created, workspace, message, kept) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            [
                (s.project, s.volume, s.name, s.commit, s.kind,
                 s.created.isoformat(), workspace, message, None if kept is None else int(kept))
                for s in snapshots
            ],
        )

    def record_commit(self, project: str, info, branch: str | None) -> None:
        self.conn.execute(
            "INSERT INTO commits VALUES (?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (project, sha) DO UPDATE SET branch = coalesce(excluded.branch, branch)",
            (project, info.sha, info.author, info.email, info.time, info.subject,
             " ".join(info.parents), branch),
        )

    def record_volume(self, project: str, workspace: str, name: str, path: Path, worktree: Path) -> None:
        self.conn.execute(
            "INSERT OR REPLACE INTO volumes VALUES (?, ?, ?, ?, ?)",
            (project, workspace, name, str(path), str(worktree)),
        )

    def forget_snapshot(self, project: str, volume: str, name: str) -> None:
        self.conn.execute(
            "DELETE FROM snapshots WHERE project = ? AND volume = ? AND name = ?",
            (project, volume, name),
        )

    # rows that travel with a snapshot to another lake
    def rows_for(self, project: str, volume: str, name: str) -> dict:
        snap = self.conn.execute("SELECT * FROM snapshots WHERE project = ? AND volume = ? AND name = ?",
                                 (project, volume, name)).fetchone()
        sha = name[:40]
        commit = self.conn.execute("SELECT * FROM commits WHERE project = ? AND sha = ?",
                                   (project, sha)).fetchone()
        return {"snapshot": dict(snap) if snap else None, "commit": dict(commit) if commit else None}

    def record_received(self, snap, rows: dict) -> None:
        """A snapshot that came from another lake, with what that lake knew of it."""
        theirs = rows.get("snapshot") or {}
        self.record_snapshots([snap], theirs.get("workspace"), theirs.get("message"), theirs.get("kept"))
        commit = rows.get("commit")
        if commit and commit.get("sha") == snap.commit:
            self.conn.execute(
                "INSERT OR IGNORE INTO commits VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (snap.project, snap.commit, *(commit.get(k) for k in
                                             ("author", "email", "time", "subject", "parents", "branch"))),
            )

    # reads
    def snapshot_rows(self, project: str) -> dict[tuple[str, str], dict]:
        rows = self.db["snapshots"].rows_where("project = ?", [project])
        return {(r["volume"], r["name"]): r for r in rows}

    def commits(self, project: str) -> dict[str, dict]:
        return {r["sha"]: r for r in self.db["commits"].rows_where("project = ?", [project])}

    def commit(self, project: str, sha: str) -> dict | None:
        rows = list(self.db["commits"].rows_where("project = ? AND sha = ?", [project, sha]))
        return rows[0] if rows else None

    # rebuild
    def replace_snapshots(self, snapshots, commits: Iterable[tuple]) -> None:
        """Swap in a rebuilt snapshot index in one transaction.

        Messages of wip snapshots exist only here, so they are carried over
        for every snapshot that is still on the filesystem. (sqlite-utils'
        writers commit on their own, so this one is plain SQL to stay atomic.)
        """
        old = {
            (r["project"], r["volume"], r["name"]): r
            for r in self.conn.execute("SELECT * FROM snapshots")
        }
        with self.batch():
            self.conn.execute("DELETE FROM snapshots")
            for s in snapshots:
                before = old.get((s.project, s.volume, s.name))
                self.record_snapshots(
                    [s], before and before["workspace"], before and before["message"],
                    before["kept"] if before else None,
                )
            for project, info in commits:
                self.record_commit(project, info, None)

    # ------------------------------------------------------------------ the journal (journal.py)

    def operations(self, workspaces) -> list:
        """The open operations of these workspaces, oldest first (one indexed lookup)."""
        marks = ", ".join("?" * len(workspaces))
        return self.conn.execute(f"SELECT * FROM operations WHERE workspace IN ({marks}) ORDER BY id",
                                 tuple(workspaces)).fetchall()

    def add_operation(self, kind: str, project: str, workspace: str, pid: int, command: str,
                      started: str, intent: str) -> int:
        cur = self.conn.execute(
            "INSERT INTO operations (kind, project, workspace, pid, command, started, intent, steps, state) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, '[]', 'running')",
            (kind, project, workspace, pid, command, started, intent),
        )
        op_id = cur.lastrowid
        assert op_id is not None  # always, after an INSERT
        return op_id

    def set_steps(self, op_id: int, steps: str) -> None:
        self.conn.execute("UPDATE operations SET steps = ? WHERE id = ?", (steps, op_id))

    def fail_operation(self, op_id: int, error: str) -> None:
        self.conn.execute("UPDATE operations SET state = 'failed', error = ? WHERE id = ?", (error, op_id))

    def end_operation(self, op_id: int) -> None:
        self.conn.execute("DELETE FROM operations WHERE id = ?", (op_id,))

    # ------------------------------------------------------------------ clones and workspaces

    def remember_clone(self, project: str, worktree: str, git_dir: str, workspace: str, seen: str) -> None:
        """One indexed lookup; a write only for a clone not remembered yet (the hooks call it)."""
        key = (project, worktree, git_dir, workspace)
        if self.conn.execute("SELECT 1 FROM clones WHERE project = ? AND worktree = ? AND git_dir = ? "
                             "AND workspace = ?", key).fetchone() is None:
            self.conn.execute("INSERT OR REPLACE INTO clones VALUES (?, ?, ?, ?, ?)", (*key, seen))

    def clones(self, project: str) -> list:
        return self.conn.execute("SELECT * FROM clones WHERE project = ?", (project,)).fetchall()

    def volume_worktrees(self, project: str) -> list:
        """(worktree, workspace) of every workspace with a volume, and a worktree, recorded."""
        return self.conn.execute("SELECT DISTINCT worktree, workspace FROM volumes WHERE project = ? "
                                 "AND worktree IS NOT NULL", (project,)).fetchall()

    def forget_clone(self, project: str, worktree: str, workspace: str) -> None:
        """A clone's row and its workspace's volume rows (call in a batch)."""
        for table in ("clones", "volumes"):
            self.conn.execute(f"DELETE FROM {table} WHERE project = ? AND worktree = ? AND workspace = ?",
                              (project, worktree, workspace))

    def workspaces(self, project: str) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT DISTINCT workspace FROM volumes WHERE project = ?",
                                                (project,))]

    # ------------------------------------------------------------------ the registry (registry.py)

    def record_values(self, project: str, snapshot: str, rows, source: str) -> None:
        """rows: (kind, key, num, text) of one snapshot's metrics and params."""
        self.conn.executemany("INSERT OR REPLACE INTO registry_values VALUES (?, ?, ?, ?, ?, ?, ?)",
                              [(project, snapshot, *r, source) for r in rows])

    def value_rows(self, project: str) -> list:
        """(snapshot, kind, key, num, text) of every value of the project, by key."""
        return self.conn.execute("SELECT snapshot, kind, key, num, text FROM registry_values "
                                 "WHERE project = ? ORDER BY key", (project,)).fetchall()

    def refresh_values(self, project: str, snapshot: str, rows, source: str) -> None:
        """record_values for `registry refresh`: a value recorded from another source (the
        Python API, another file) is left as it is; one from this file is read again."""
        self.conn.executemany(
            "INSERT INTO registry_values VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (project, snapshot, kind, key) "
            "DO UPDATE SET num = excluded.num, text = excluded.text WHERE source = excluded.source",
            [(project, snapshot, *r, source) for r in rows])

    def record_history(self, project: str, commit: str, workspace: str, run: str, step: int, rows,
                       logged: str, snapshot: str | None) -> None:
        """rows: (key, num, text) of one step of a run (metric_history; a step logged again replaces)."""
        self.conn.executemany("INSERT OR REPLACE INTO metric_history VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                              [(project, commit, workspace, run, step, *r, logged, snapshot) for r in rows])

    def next_step(self, project: str, commit: str, workspace: str, run: str) -> int:
        row = self.conn.execute("SELECT max(step) FROM metric_history WHERE project = ? AND commit_sha = ? "
                                "AND workspace = ? AND run = ?", (project, commit, workspace, run)).fetchone()
        return 0 if row[0] is None else int(row[0]) + 1

    def history_rows(self, project: str, key: str | None = None, commit: str | None = None) -> list:
        """metric_history rows (one key's, one commit's), in the order they were logged."""
        sql, args = "SELECT * FROM metric_history WHERE project = ?", [project]
        for column, value in (("key", key), ("commit_sha", commit)):
            if value is not None:
                sql += f" AND {column} = ?"
                args.append(value)
        return self.conn.execute(sql + " ORDER BY logged, run, step, key", args).fetchall()

    def history_keys(self, project: str) -> list[str]:
        return [r[0] for r in self.conn.execute("SELECT DISTINCT key FROM metric_history WHERE project = ? "
                                                "ORDER BY key", (project,))]

    def record_provenance(self, project: str, snapshot: str, rows) -> None:
        """rows: (volume, license, source)."""
        self.conn.executemany("INSERT OR REPLACE INTO provenance VALUES (?, ?, ?, ?, ?)",
                              [(project, v, snapshot, lic, src) for v, lic, src in rows])

    def provenance(self, project: str, snapshot: str) -> list:
        """(volume, license, source) of one snapshot."""
        return self.conn.execute("SELECT volume, license, source FROM provenance WHERE project = ? "
                                 "AND snapshot = ?", (project, snapshot)).fetchall()

    def release(self, project: str, name: str):
        """The release's row, or None."""
        return self.conn.execute("SELECT * FROM releases WHERE project = ? AND name = ?",
                                 (project, name)).fetchone()

    def releases(self, project: str) -> list:
        """Every release of the project, newest first."""
        return self.conn.execute("SELECT * FROM releases WHERE project = ? ORDER BY created DESC",
                                 (project,)).fetchall()

    def add_release(self, project: str, name: str, snapshot: str, commit: str, volumes: list[str],
                    created: str, message: str | None, forced: bool, who: str | None = None) -> None:
        with transaction(self.conn):
            self.conn.execute("INSERT INTO releases VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                              (project, name, snapshot, commit, " ".join(volumes), created, message, int(forced)))
            self._release_moved(project, name, created, who, None, (snapshot, commit, volumes), message)

    def move_release(self, project: str, name: str, snapshot: str, commit: str, volumes: list[str],
                     when: str, message: str | None, forced: bool, who: str | None):
        """Point release NAME at snapshot and record the move, in one transaction; the row it
        had (None if it was new). The write lock is taken before the old row is read, so two
        moves at once are put in an order, each recorded from where the other left it."""
        with transaction(self.conn):
            old = self.release(project, name)
            self.conn.execute("INSERT OR REPLACE INTO releases VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                              (project, name, snapshot, commit, " ".join(volumes), when, message, int(forced)))
            self._release_moved(project, name, when, who, old, (snapshot, commit, volumes), message)
        return old

    def remove_release(self, project: str, name: str, when: str | None = None, who: str | None = None) -> None:
        with transaction(self.conn):
            old = self.release(project, name)
            self.conn.execute("DELETE FROM releases WHERE project = ? AND name = ?", (project, name))
            if old is not None and when is not None:
                self._release_moved(project, name, when, who, old, None, "removed")

    def _release_moved(self, project, name, when, who, old, new, message) -> None:
        """Append a move, made after every tip of the release's history here: the move it is at,
        and any another lake made that was reported diverged (so this move settles it), and
        make it the head."""
        to = new or (None, None, None)
        move_id = os.urandom(16).hex()
        self.conn.execute(
            "INSERT INTO release_moves (project, name, moved, who, from_snapshot, to_snapshot, from_commit, "
            "to_commit, volumes, message, id, parents) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (project, name, when, who, old and old["snapshot"], to[0], old and old["commit_sha"], to[1],
             " ".join(to[2]) if to[2] else old and old["volumes"], message, move_id,
             " ".join(self._release_tips(project, name)) or None))
        self.set_release_head(project, name, move_id)

    def _release_tips(self, project: str, name: str) -> list[str]:
        """Ids of the moves of release NAME that no other move was made after, oldest first."""
        rows = self.conn.execute("SELECT id, parents FROM release_moves WHERE project = ? AND name = ? "
                                 "AND id IS NOT NULL ORDER BY seq", (project, name)).fetchall()
        after = {p for r in rows for p in (r["parents"] or "").split()}
        return [r["id"] for r in rows if r["id"] not in after]

    def release_heads(self, project: str) -> dict[str, str]:
        """{release name: id of the move it is at here}, also of releases since removed."""
        return dict(self.conn.execute("SELECT name, head FROM release_heads WHERE project = ?", (project,)).fetchall())

    def set_release_head(self, project: str, name: str, move_id: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO release_heads VALUES (?, ?, ?)", (project, name, move_id))

    def all_release_moves(self, project: str) -> list:
        """Every move of every release of the project, in the order they were recorded here."""
        return self.conn.execute("SELECT * FROM release_moves WHERE project = ? ORDER BY seq", (project,)).fetchall()

    def follow_release(self, project: str, name: str, row: dict | None, moves: list[dict], head: str | None) -> None:
        """Moves another lake made (added, in the order given: parents first), and, with head,
        the release put where that lake's move `head` left it (row, or None: removed); call in
        a batch."""
        for m in moves:
            self.conn.execute(
                "INSERT OR IGNORE INTO release_moves (project, name, moved, who, from_snapshot, to_snapshot, "
                "from_commit, to_commit, volumes, message, id, parents) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (project, name, *(m.get(k) for k in ("moved", "who", "from_snapshot", "to_snapshot", "from_commit",
                                                     "to_commit", "volumes", "message", "id", "parents"))))
        if head is None:
            return
        self.conn.execute("DELETE FROM releases WHERE project = ? AND name = ?", (project, name))
        if row is not None:
            self.conn.execute("INSERT INTO releases VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                              (project, name, *(row[k] for k in ("snapshot", "commit_sha", "volumes", "created",
                                                                 "message")), int(bool(row.get("forced")))))
        self.set_release_head(project, name, head)

    def release_moves(self, project: str, name: str) -> list:
        """Every move of release NAME, oldest first."""
        return self.conn.execute("SELECT * FROM release_moves WHERE project = ? AND name = ? ORDER BY seq",
                                 (project, name)).fetchall()

    def lineage(self, project: str) -> list:
        """(volume, source_volume, source_snapshot, message, created) of every derived volume, oldest first."""
        return self.conn.execute("SELECT volume, source_volume, source_snapshot, message, created FROM lineage "
                                 "WHERE project = ? ORDER BY created", (project,)).fetchall()

    def derived(self, project: str, volume: str) -> bool:
        return self.conn.execute("SELECT 1 FROM lineage WHERE project = ? AND volume = ?",
                                 (project, volume)).fetchone() is not None

    def add_lineage(self, project: str, volume: str, source_volume: str, source_snapshot: str,
                    message: str | None, created: str) -> None:
        self.conn.execute("INSERT OR IGNORE INTO lineage VALUES (?, ?, ?, ?, ?, ?)",
                          (project, volume, source_volume, source_snapshot, message, created))

    # ------------------------------------------------------------------ registry rows between lakes (registrysync.py)

    # The tables whose rows travel as rows (releases travel as moves, above), each read and
    # written whole, without the project column (and without builds' local id).
    # A table this catalog lacks (metric_history, which another change adds) is skipped.
    SYNCED = ("registry_values", "metric_history", "provenance", "scans", "scan_files", "lineage", "recipes", "builds")

    def synced_columns(self, table: str) -> list[str] | None:
        """The columns of a table that travels; None if this catalog has no such table."""
        if table not in self.SYNCED:
            raise ValueError(f"{table} is not a table whose rows travel")
        return [c for c in _table_columns(self.conn, table) if c not in ("project", "id")] or None

    def synced_rows(self, table: str, project: str) -> list[dict]:
        columns = self.synced_columns(table)
        if columns is None:
            return []
        return [dict(r) for r in self.conn.execute(
            f"SELECT {', '.join(columns)} FROM {table} WHERE project = ?", (project,))]

    def add_synced_rows(self, table: str, project: str, rows: list[dict]) -> None:
        """rows (dicts of synced_columns) into table, none replacing a row of the same key."""
        columns = self.synced_columns(table)
        if not rows or columns is None:
            return
        self.conn.executemany(
            f"INSERT OR IGNORE INTO {table} (project, {', '.join(columns)}) VALUES ({', '.join('?' * (len(columns) + 1))})",
            [(project, *(r.get(c) for c in columns)) for r in rows])

    # ------------------------------------------------------------------ recipes and builds (build.py)

    def set_recipe(self, project: str, volume: str, run: str, inputs: list[str], created: str) -> None:
        self.conn.execute("INSERT OR REPLACE INTO recipes VALUES (?, ?, ?, ?, ?)",
                          (project, volume, run, json.dumps(inputs), created))

    def recipes(self, project: str) -> list:
        """(volume, run, inputs as a list of VOLUME@REV) of every recipe `derive --run` recorded."""
        return [(r[0], r[1], json.loads(r[2])) for r in self.conn.execute(
            "SELECT volume, run, inputs FROM recipes WHERE project = ? ORDER BY volume", (project,))]

    def add_build(self, project: str, workspace: str, volume: str, command: str, inputs: dict[str, str],
                  snapshot: str | None, mark: str | None, exit_code: int, duration: float, log: str | None,
                  started: str) -> int:
        cur = self.conn.execute(
            "INSERT INTO builds (project, workspace, volume, command, inputs, snapshot, mark, exit_code, "
            "duration, log, started) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (project, workspace, volume, command, json.dumps(inputs), snapshot, mark, exit_code, duration,
             log, started))
        return int(cur.lastrowid or 0)

    def builds(self, project: str, workspace: str, volume: str | None = None, ok: bool = False,
               limit: int | None = None) -> list[dict]:
        """Builds of the workspace (one volume's), newest first; ok: the successful ones only."""
        sql = "SELECT * FROM builds WHERE project = ? AND workspace = ?"
        args: list = [project, workspace]
        if volume is not None:
            sql += " AND volume = ?"
            args.append(volume)
        if ok:
            sql += " AND snapshot IS NOT NULL"
        sql += " ORDER BY id DESC" + (f" LIMIT {int(limit)}" if limit else "")
        rows = []
        for r in self.conn.execute(sql, args):
            row = dict(r)
            row["inputs"] = json.loads(row["inputs"])
            rows.append(row)
        return rows

    def copy_snapshot_rows(self, project: str, volume: str, source: str, new: str) -> None:
        """The registry's per-snapshot rows of source (values, provenance, scans) for its copy new."""
        args = (new, project, source)
        self.conn.execute("INSERT OR IGNORE INTO registry_values SELECT project, ?, kind, key, num, text, source "
                          "FROM registry_values WHERE project = ? AND snapshot = ?", args)
        for table, cols in (("provenance", "license, source"), ("scans", "scanned, files, flagged"),
                            ("scan_files", "path, size, mtime_ns, ctime_ns, flagged, findings"),
                            ("scan_pending", "queued")):
            self.conn.execute(f"INSERT OR IGNORE INTO {table} SELECT project, volume, ?, {cols} FROM {table} "
                              "WHERE project = ? AND snapshot = ? AND volume = ?", (*args, volume))

    # ------------------------------------------------------------------ model scans (scan.py)

    def scanned_file(self, project: str, volume: str, path: str, size: int, mtime_ns: int, ctime_ns: int):
        """(flagged, findings) stored for a file of this volume with this stat, or None."""
        return self.conn.execute(
            "SELECT flagged, findings FROM scan_files WHERE project = ? AND volume = ? AND path = ? "
            "AND size = ? AND mtime_ns = ? AND ctime_ns = ? LIMIT 1",
            (project, volume, path, size, mtime_ns, ctime_ns),
        ).fetchone()

    def record_scan(self, project: str, volume: str, snapshot: str, rows, scanned: str) -> None:
        """A snapshot's scan, replacing any earlier one. rows: (path, size, mtime_ns, ctime_ns,
        flagged, findings)."""
        rows = list(rows)
        with self.batch():
            self.conn.execute("DELETE FROM scan_files WHERE project = ? AND volume = ? AND snapshot = ?",
                              (project, volume, snapshot))
            self.conn.executemany("INSERT INTO scan_files VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                  [(project, volume, snapshot, *r) for r in rows])
            self.conn.execute("INSERT OR REPLACE INTO scans VALUES (?, ?, ?, ?, ?, ?)",
                              (project, volume, snapshot, scanned, len(rows), sum(bool(r[4]) for r in rows)))
            # With the verdicts, never before them: a scan killed half-way leaves it owed.
            self.conn.execute("DELETE FROM scan_pending WHERE project = ? AND volume = ? AND snapshot = ?",
                              (project, volume, snapshot))

    def mark_scan_pending(self, project: str, rows, queued: str) -> None:
        """rows: (volume, snapshot) whose scan is owed (registry.py scans them after the commit)."""
        with self.batch():
            self.conn.executemany("INSERT OR IGNORE INTO scan_pending VALUES (?, ?, ?, ?)",
                                  [(project, v, s, queued) for v, s in rows])

    def scans_pending(self, project: str, snapshots=None) -> list[tuple[str, str]]:
        """(volume, snapshot) whose scan is owed, oldest first; of these snapshot names if given."""
        rows = self.conn.execute("SELECT volume, snapshot FROM scan_pending WHERE project = ? ORDER BY queued",
                                 (project,)).fetchall()
        wanted = None if snapshots is None else set(snapshots)
        return [(r[0], r[1]) for r in rows if wanted is None or r[1] in wanted]

    def drop_scan_pending(self, project: str, volume: str, snapshot: str) -> None:
        """A snapshot gone before its scan (gc): nothing is owed any more."""
        with self.batch():
            self.conn.execute("DELETE FROM scan_pending WHERE project = ? AND volume = ? AND snapshot = ?",
                              (project, volume, snapshot))

    def scan_rows(self, project: str, volume: str, snapshot: str) -> list | None:
        """(path, flagged, findings) of a snapshot's scan by path; None if it was never scanned."""
        if self.conn.execute("SELECT 1 FROM scans WHERE project = ? AND volume = ? AND snapshot = ?",
                             (project, volume, snapshot)).fetchone() is None:
            return None
        return self.conn.execute("SELECT path, flagged, findings FROM scan_files WHERE project = ? "
                                 "AND volume = ? AND snapshot = ? ORDER BY path",
                                 (project, volume, snapshot)).fetchall()

    # ------------------------------------------------------------------ pins that came with snapshots (received.py)

    def received_pins(self, project: str) -> list:
        """(volume, name, pin) by pin."""
        return self.conn.execute("SELECT volume, name, pin FROM received_pins WHERE project = ? ORDER BY pin",
                                 (project,)).fetchall()

    def add_received_pins(self, rows) -> None:
        """rows: (project, volume, name, pin)."""
        with self.batch():
            self.conn.executemany("INSERT OR IGNORE INTO received_pins VALUES (?, ?, ?, ?)", rows)
