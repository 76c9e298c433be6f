"""Decisions are made on error types, not on message words (issue 21, item 6): a full
filesystem is FilesystemFull wherever its words are built, an unwritable catalog is
CatalogUnwritable, and the words a user reads stay as they were. Pure classification,
so in-process; the full-filesystem flows themselves run on real Btrfs and ZFS in
test_crash.py and test_commit_atomic.py."""

import sqlite3
import sys

import pytest

from snapver import catalog, proc
from snapver.errors import CatalogUnwritable, CommandFailed, FilesystemFull


def failing(stderr: str) -> list[str]:
    return [sys.executable, "-c", f"import sys; sys.stderr.write({stderr!r}); sys.exit(1)"]


def test_a_tool_out_of_space_is_filesystem_full_with_the_same_words():
    with pytest.raises(FilesystemFull) as full:
        proc.run(failing("cp: error writing 'x': No space left on device\n"))
    assert isinstance(full.value, CommandFailed)
    assert "the filesystem is full; free space (or grow it) and try again" in str(full.value)
    with pytest.raises(CommandFailed) as other:
        proc.run(failing("cp: cannot stat 'x': No such file or directory\n"))
    assert not isinstance(other.value, FilesystemFull)


def test_the_catalog_full_read_only_or_damaged(tmp_path):
    db = tmp_path / "catalog.db"  # on a filesystem with room: only SQLite's words decide
    full = catalog.explain(sqlite3.OperationalError("database or disk is full"), db)
    assert isinstance(full, FilesystemFull) and isinstance(full, CatalogUnwritable)
    assert str(full) == (f"the catalog {db} cannot be written: the filesystem is full; "
                         "free space (or grow it) and try again")
    read_only = catalog.explain(sqlite3.OperationalError("attempt to write a readonly database"), db)
    assert isinstance(read_only, CatalogUnwritable) and not isinstance(read_only, FilesystemFull)
    assert "cannot be written (attempt to write a readonly database)" in str(read_only)
    damaged = catalog.explain(sqlite3.DatabaseError("database disk image is malformed"), db)
    assert not isinstance(damaged, (CatalogUnwritable, FilesystemFull))
