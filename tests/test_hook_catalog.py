"""A hook leaves the catalog open (githooks exits with os._exit, so that SQLite does not
checkpoint and delete its WAL on every commit): the WAL and its index stay behind, and
must still be writable by whoever owns the lake, also after root ran the hook (`sudo git
commit`). SQLite run as root gives them the database's owner; were they root's, the
owner's next write would fail with "attempt to write a readonly database"."""

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

WRITE = """
import os, sys
from pathlib import Path
from snapver.catalog import Catalog
c = Catalog(Path(sys.argv[1]))
c.record_volume("p", sys.argv[2], "data", Path("/x"), Path("/y"))
os._exit(0)  # as the hooks leave: the connection is never closed
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as root and as nobody")
def test_a_catalog_root_left_open_stays_writable_by_its_owner():
    home = Path(tempfile.mkdtemp(prefix="snapver-catalog-"))
    try:
        home.chmod(0o755)
        lake = home / "lake"
        lake.mkdir()
        shutil.chown(lake, "nobody", "nogroup")
        db = lake / "catalog.db"

        def write(workspace: str, user: str | None) -> subprocess.CompletedProcess:
            return subprocess.run([sys.executable, "-c", WRITE, str(db), workspace], cwd=home, user=user,
                                  capture_output=True, text=True)

        assert write("by-the-owner", "nobody").returncode == 0
        assert write("by-root", None).returncode == 0
        done = write("by-the-owner-again", "nobody")
        assert done.returncode == 0, done.stderr
        rows = subprocess.run([sys.executable, "-c", "import sqlite3, sys; print(sorted(r[0] for r in "
                               "sqlite3.connect(sys.argv[1]).execute('SELECT workspace FROM volumes')))", str(db)],
                              capture_output=True, text=True, check=True).stdout
        assert rows.strip() == "['by-root', 'by-the-owner', 'by-the-owner-again']"
    finally:
        shutil.rmtree(home, ignore_errors=True)
