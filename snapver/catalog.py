"""The catalog: an SQLite index of snapshots, commits and volumes, one per lake.

It is an index, not the truth: every snapshot row can be rebuilt from the
filesystem (`snapver reindex`), every commit row from Git. Writes happen in
the Git hooks, so they use the standard library's sqlite3 directly (importing
sqlite-utils costs about 125 ms); reads, reports and reindex go through
sqlite-utils on the same connection.

One table is not an index: `operations`, the journal of multi-step operations
(journal.py). It cannot be rebuilt, and doctor repairs what it can without it.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Iterable
from pathlib import Path

from .errors import FULL, CatalogFull, CatalogUnwritable, FilesystemFull, SnapverError

SCHEMA = """
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
"""


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


def _add_kept_column(conn) -> None:
    """A catalog made before safety wips were marked gets the column. Its rows are marked
    from what they say: "kept before ..." is a safety wip; a row reindex made (no workspace)
    is not known (NULL: gc keeps it as a safety wip); any other row is a daemon or manual one."""
    if any(r[1] == "kept" for r in conn.execute("PRAGMA table_info(snapshots)")):
        return
    try:
        conn.execute("BEGIN IMMEDIATE")
        try:
            if not any(r[1] == "kept" for r in conn.execute("PRAGMA table_info(snapshots)")):
                conn.execute("ALTER TABLE snapshots ADD COLUMN kept INTEGER")
                conn.execute("UPDATE snapshots SET kept = CASE WHEN message LIKE 'kept before %' THEN 1 "
                             "WHEN workspace IS NULL THEN NULL ELSE 0 END")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise
    except sqlite3.OperationalError as e:
        if "readonly" not in str(e) and "read-only" not in str(e):
            raise
        # Opened by one who may not write it: its rows read as "not known" (kept) until then.


class Catalog:
    def __init__(self, path: Path):
        global _opened
        self.path = _opened = path
        self.set_aside: Path | None = None  # where rebuild() put a damaged catalog
        self.read_only: Path | None = None  # the copy read when the filesystem is full
        self._schemas: set[str] = set()  # features' schemas made in this process (ensure)
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
            self.conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # reads the WAL in
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
            self.conn.execute("PRAGMA journal_mode=WAL")
            # In WAL mode NORMAL never corrupts, it can only lose the last transactions
            # in a power cut; the catalog is rebuilt from the filesystem anyway, and a
            # full fsync per row was most of a commit hook's time.
            self.conn.execute("PRAGMA synchronous=NORMAL")
        except sqlite3.OperationalError:
            pass  # filesystems without shared mmap (FUSE) keep the rollback journal
        try:
            self.conn.executescript(SCHEMA)
            _add_kept_column(self.conn)
        except sqlite3.OperationalError as e:
            self.conn.close()
            raise explain(e, self.path) from None

    def ensure(self, schema: str) -> sqlite3.Connection:
        """The connection, with a feature's tables made on its first use in this process
        (schema: CREATE ... IF NOT EXISTS statements, the feature's own). Statement by
        statement, so it may run inside a batch (executescript would commit it); not on the
        read-only copy, where creating tables would be a write."""
        if schema not in self._schemas and self.read_only is None:
            for statement in schema.split(";"):
                if statement.strip():
                    self.conn.execute(statement)
            self._schemas.add(schema)
        return self.conn

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
        except CatalogUnwritable:
            raise
        except SnapverError:
            pass
        aside = path.with_name(f"{path.name}.damaged-{time.strftime('%Y%m%dT%H%M%SZ', time.gmtime())}")
        for suffix in ("", "-wal", "-shm"):
            if os.path.lexists(f"{path}{suffix}"):
                os.rename(f"{path}{suffix}", f"{aside}{suffix}")
        catalog = cls(path)
        catalog.set_aside = aside
        return catalog

    @contextlib.contextmanager
    def batch(self):
        """Several writes in one transaction."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

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

    def rename_snapshot(self, old, new) -> None:
        self.conn.execute(
            "UPDATE OR REPLACE snapshots SET name = ?, commit_sha = ?, kind = ? "
            "WHERE project = ? AND volume = ? AND name = ?",
            (new.name, new.commit, new.kind, old.project, old.volume, old.name),
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
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute("DELETE FROM snapshots")
            for s in snapshots:
                before = old.get((s.project, s.volume, s.name))
                self.record_snapshots(
                    [s], before and before["workspace"], before and before["message"],
                    before["kept"] if before else None,
                )
            for project, info in commits:
                self.record_commit(project, info, None)
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
