"""The catalog's schema version (PRAGMA user_version) and its migrations, in-process on a
temporary file: an older catalog is brought up to date in one transaction, once; a newer
one is refused with one line and left exactly as it was."""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from snapver import catalog_schema
from snapver.catalog import Catalog
from snapver.catalog_schema import VERSION, SchemaTooNew
from snapver.errors import SnapverError

# The core tables as the first snapver made them (before `kept`, before the registry): the
# oldest catalog a newer snapver may meet, at user_version 0.
OLDEST = """
CREATE TABLE snapshots (project TEXT NOT NULL, volume TEXT NOT NULL, name TEXT NOT NULL,
    commit_sha TEXT NOT NULL, kind TEXT NOT NULL, created TEXT NOT NULL, workspace TEXT, message TEXT,
    PRIMARY KEY (project, volume, name));
CREATE TABLE commits (project TEXT NOT NULL, sha TEXT NOT NULL, author TEXT, email TEXT, time TEXT,
    subject TEXT, parents TEXT, branch TEXT, PRIMARY KEY (project, sha));
CREATE TABLE volumes (project TEXT NOT NULL, workspace TEXT NOT NULL, name TEXT NOT NULL,
    path TEXT NOT NULL, worktree TEXT, PRIMARY KEY (project, workspace, name));
INSERT INTO snapshots VALUES ('p', 'data', 'a', 'a', 'wip', 't', 'w1', 'kept before checkout of b');
INSERT INTO snapshots VALUES ('p', 'data', 'b', 'b', 'wip', 't', 'w1', 'by hand');
INSERT INTO snapshots VALUES ('p', 'data', 'c', 'c', 'commit', 't', NULL, NULL);
"""

V1_TABLES = {"snapshots", "commits", "volumes", "operations", "clones", "registry_values", "releases",
             "lineage", "provenance", "scans", "scan_files", "received_pins"}
# Version 2 adds the build recipes and the record of builds (cascade), version 3 the
# history of release moves, version 4 the metric history, version 5 the move each release
# is at (its head), version 6 the model scans owed (a Git hook leaves them to a process of their own).
TABLES = V1_TABLES | {"recipes", "builds", "release_moves", "metric_history", "release_heads", "scan_pending"}


def raw(path: Path, script: str = "") -> None:
    with contextlib.closing(sqlite3.connect(path, isolation_level=None)) as db:
        db.executescript(script)


def user_version(path: Path) -> int:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return db.execute("PRAGMA user_version").fetchone()[0]


def tables(path: Path) -> set[str]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}


def files(path: Path) -> dict[str, str]:
    """Every file of the catalog (database, WAL, index) by name, with a hash of its bytes."""
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(path.parent.iterdir())}


def test_a_new_catalog_is_made_at_the_current_version(tmp_path):
    db = tmp_path / "catalog.db"
    Catalog(db).close()
    assert user_version(db) == VERSION == 6
    assert tables(db) == TABLES


def test_the_oldest_catalog_is_migrated_with_its_rows_kept_and_marked(tmp_path):
    db = tmp_path / "catalog.db"
    raw(db, OLDEST)
    assert user_version(db) == 0
    c = Catalog(db)
    assert user_version(db) == VERSION
    assert tables(db) == TABLES
    kept = {r["name"]: r["kept"] for r in c.conn.execute("SELECT name, kept FROM snapshots")}
    assert kept == {"a": 1, "b": 0, "c": None}  # a safety wip, a manual one, a reindexed row (not known)
    c.close()


def test_a_catalog_of_today_without_a_version_is_migrated_and_keeps_every_row(tmp_path):
    """Version 0 as the last snapver before user_version left it: every table there already."""
    db = tmp_path / "catalog.db"
    raw(db, catalog_schema._V1 + "INSERT INTO releases VALUES ('p', 'prod', 's', 'c', 'data', 't', NULL, 0);")
    assert user_version(db) == 0
    c = Catalog(db)
    assert user_version(db) == VERSION
    assert [r["name"] for r in c.releases("p")] == ["prod"]
    assert [(m["from_snapshot"], m["to_snapshot"]) for m in c.release_moves("p", "prod")] == [(None, "s")]
    c.close()


def test_a_catalog_of_version_1_is_upgraded_and_its_releases_get_their_history(tmp_path):
    """Version 1 as the snapver before releases moved left it: each release's creation
    becomes the first move of its history, and the release then moves with its history."""
    db = tmp_path / "catalog.db"
    raw(db, catalog_schema._V1 + "PRAGMA user_version = 1;"
            "INSERT INTO releases VALUES ('p', 'prod', 's1', 'c1', 'data models', '2026-01-01T00:00:00+00:00', "
            "'serving', 0);"
            "INSERT INTO releases VALUES ('p', 'v1.0', 's0', 'c0', 'data', '2025-12-01T00:00:00+00:00', NULL, 0);")
    c = Catalog(db)
    assert user_version(db) == VERSION == 6
    moves = c.release_moves("p", "prod")
    assert [(m["moved"], m["who"], m["from_snapshot"], m["to_snapshot"], m["volumes"], m["message"])
            for m in moves] == [("2026-01-01T00:00:00+00:00", None, None, "s1", "data models", "serving")]
    assert [m["to_snapshot"] for m in c.release_moves("p", "v1.0")] == ["s0"]
    old = c.move_release("p", "prod", "s2", "c2", ["data", "models"], "2026-02-01T00:00:00+00:00", "promote",
                         False, "a <a@x>")
    assert old["snapshot"] == "s1" and c.release("p", "prod")["snapshot"] == "s2"
    assert [(m["from_snapshot"], m["to_snapshot"], m["who"]) for m in c.release_moves("p", "prod")] == \
        [(None, "s1", None), ("s1", "s2", "a <a@x>")]
    c.close()
    Catalog(db).close()  # opened again: the history is not copied twice
    with contextlib.closing(sqlite3.connect(db)) as raw_db:
        assert raw_db.execute("SELECT count(*) FROM release_moves").fetchone()[0] == 3


def test_a_catalog_of_version_3_is_upgraded_and_its_api_metrics_become_history(tmp_path):
    """Version 3 as the snapver before metric history left it: the metrics the Python API kept
    with wip snapshots become steps of one run per line of work, in time order, so that gc
    thinning those wips later does not take them; a commit's values and files' values do not."""
    sha, other = "a" * 40, "b" * 40
    w1, w2, w3 = (f"{sha}.20260101T00000{i}.000000Z" for i in (1, 2, 3))
    v3 = catalog_schema._V1 + ";" + catalog_schema._V2 + ";" + catalog_schema._V3 + ";"
    raw(db := tmp_path / "catalog.db", v3 + "PRAGMA user_version = 3;" + "".join(
        f"INSERT INTO snapshots VALUES ('p', 'data', '{n}', '{sha}', 'wip', '2026-01-01T00:00:0{i}+00:00', 'ws1', "
        f"NULL, 0); INSERT INTO registry_values VALUES ('p', '{n}', 'metric', 'loss', {1 / i}, '{1 / i}', 'api');"
        for i, n in enumerate((w1, w2, w3), 1)) +
        f"INSERT INTO registry_values VALUES ('p', '{w1}', 'param', 'lr', 0.1, '0.1', 'api');"
        f"INSERT INTO registry_values VALUES ('p', '{other}', 'metric', 'loss', 0.5, '0.5', 'api');"
        f"INSERT INTO registry_values VALUES ('p', '{w2}', 'metric', 'acc', 0.9, '0.9', 'models/m.json');")
    c = Catalog(db)
    assert user_version(db) == VERSION and tables(db) == TABLES
    rows = [(r["commit_sha"], r["workspace"], r["run"], r["step"], r["key"], r["num"], r["snapshot"], r["logged"])
            for r in c.history_rows("p")]
    assert rows == [(sha, "ws1", "wips", i - 1, "loss", 1 / i, n, f"2026-01-01T00:00:0{i}+00:00")
                    for i, n in enumerate((w1, w2, w3), 1)]
    c.conn.execute("DELETE FROM snapshots")  # gc thins the wips: their history stays
    assert [r["num"] for r in c.history_rows("p", "loss", sha)] == [1.0, 0.5, 1 / 3]
    c.record_history("p", sha, "ws1", "wips", 3, [("loss", 0.2, "0.2")], "2026-01-02T00:00:00+00:00", None)
    assert c.next_step("p", sha, "ws1", "wips") == 4 and c.next_step("p", sha, "ws1", "other") == 0
    c.close()
    Catalog(db).close()  # opened again: nothing copied twice
    with contextlib.closing(sqlite3.connect(db)) as raw_db:
        assert raw_db.execute("SELECT count(*) FROM metric_history").fetchone()[0] == 4


def test_refresh_keeps_values_of_other_sources(tmp_path):
    c = Catalog(tmp_path / "catalog.db")
    c.record_values("p", "s", [("metric", "acc", 0.9, "0.9")], "api")
    c.record_values("p", "s", [("metric", "f1", 0.1, "0.1")], "m.json")
    c.refresh_values("p", "s", [("metric", "acc", 0.5, "0.5"), ("metric", "f1", 0.2, "0.2"),
                                ("metric", "new", 1.0, "1")], "m.json")
    assert {(r[2], r[3]) for r in c.value_rows("p")} == {("acc", 0.9), ("f1", 0.2), ("new", 1.0)}
    c.close()


def test_a_catalog_of_version_4_gets_move_ids_parents_and_heads(tmp_path):
    """Version 4's moves get ids and their parents (the move before, per release), each
    release its head (also a removed one); a move made afterwards follows on from the head."""
    db = tmp_path / "catalog.db"
    raw(db, catalog_schema._V1 + catalog_schema._V2 + ";" + catalog_schema._V3 + ";" + catalog_schema._V4 + ";PRAGMA user_version = 4;"
            "INSERT INTO releases VALUES ('p', 'prod', 's2', 'c2', 'data', 't2', NULL, 0);"
            "INSERT INTO release_moves (project, name, moved, from_snapshot, to_snapshot, volumes) VALUES "
            "('p', 'prod', 't1', NULL, 's1', 'data'), ('p', 'old', 't1', NULL, 's1', 'data'), "
            "('p', 'prod', 't2', 's1', 's2', 'data'), ('p', 'old', 't3', 's1', NULL, 'data');")
    c = Catalog(db)
    assert user_version(db) == VERSION
    prod, old = c.release_moves("p", "prod"), c.release_moves("p", "old")
    assert [m["parents"] for m in prod] == [None, prod[0]["id"]]
    assert [m["parents"] for m in old] == [None, old[0]["id"]]
    assert len({m["id"] for m in prod + old}) == 4
    assert c.release_heads("p") == {"prod": prod[1]["id"], "old": old[1]["id"]}
    c.move_release("p", "prod", "s3", "c3", ["data"], "t4", None, False, None)
    moves = c.release_moves("p", "prod")
    assert moves[2]["parents"] == prod[1]["id"] and c.release_heads("p")["prod"] == moves[2]["id"]
    c.close()
    Catalog(db).close()  # again: ids are not made twice
    assert [m["id"] for m in Catalog(db).release_moves("p", "prod")] == [m["id"] for m in moves]


def test_a_catalog_of_version_5_gets_the_table_of_scans_owed_and_keeps_its_scans(tmp_path):
    """A scan stored before version 6 stays a scan; a scan owed is one transaction away from
    its verdicts: record_scan stores them and drops it together."""
    db = tmp_path / "catalog.db"
    raw(db, ";".join([catalog_schema._V1, catalog_schema._V2, catalog_schema._V3, catalog_schema._V4,
                      catalog_schema._V5]) + ";ALTER TABLE release_moves ADD COLUMN id TEXT;"
            "ALTER TABLE release_moves ADD COLUMN parents TEXT;PRAGMA user_version = 5;"
            "INSERT INTO scans VALUES ('p', 'models', 's1', 't', 0, 0);")
    c = Catalog(db)
    assert user_version(db) == VERSION and tables(db) == TABLES
    assert c.scan_rows("p", "models", "s1") == [] and c.scans_pending("p") == []
    c.mark_scan_pending("p", [("models", "s2"), ("models", "s3")], "t2")
    c.mark_scan_pending("p", [("models", "s2")], "t3")  # owed twice is owed once
    assert c.scans_pending("p") == [("models", "s2"), ("models", "s3")]
    assert c.scans_pending("p", ["s3"]) == [("models", "s3")]
    c.record_scan("p", "models", "s2", [("m.pkl", 1, 2, 3, 1, "[]")], "t4")
    assert c.scans_pending("p") == [("models", "s3")] and [tuple(r) for r in c.scan_rows("p", "models", "s2")] == [("m.pkl", 1, "[]")]
    c.close()


def test_migrating_is_idempotent(tmp_path):
    db = tmp_path / "catalog.db"
    raw(db, OLDEST)
    Catalog(db).close()
    before = files(db)
    Catalog(db).close()  # at the current version: nothing to do, nothing written
    assert files(db) == before
    # A step that runs again (its version not recorded, say) changes nothing either.
    raw(db, "PRAGMA user_version = 0")
    c = Catalog(db)
    assert user_version(db) == VERSION
    assert c.conn.execute("SELECT count(*) FROM snapshots").fetchone()[0] == 3
    assert {r["name"]: r["kept"] for r in c.conn.execute("SELECT name, kept FROM snapshots")} == \
        {"a": 1, "b": 0, "c": None}
    c.close()


def test_a_migration_that_fails_changes_nothing(tmp_path):
    """A catalog whose snapshots table the step cannot mark (no `message` column): the step
    fails halfway, after creating the other tables, and all of it is rolled back."""
    db = tmp_path / "catalog.db"
    raw(db, "CREATE TABLE snapshots (project TEXT, volume TEXT, name TEXT, workspace TEXT);"
            "INSERT INTO snapshots VALUES ('p', 'data', 'a', 'w');")
    with pytest.raises(SnapverError, match="damaged"):
        Catalog(db)
    assert user_version(db) == 0
    assert tables(db) == {"snapshots"}


def test_a_newer_catalog_is_refused_with_one_line_and_left_as_it_was(tmp_path):
    db = tmp_path / "catalog.db"
    Catalog(db).close()
    raw(db, f"PRAGMA user_version = {VERSION + 1}; DROP TABLE releases;")  # a newer snapver's layout
    before = files(db)
    for open_it in (Catalog, Catalog.rebuild):  # reindex too: a newer catalog is not a damaged one
        with pytest.raises(SchemaTooNew) as e:
            open_it(db)
        line = str(e.value)
        assert len(line.splitlines()) == 1
        assert f"was written by a newer snapver (schema {VERSION + 1}" in line and "upgrade snapver" in line
        assert str(db) in line
        assert files(db) == before
    assert user_version(db) == VERSION + 1


READ_AS_NOBODY = """
import sys
from pathlib import Path
from snapver.catalog import Catalog
c = Catalog(Path(sys.argv[1]))
print(len(c.releases("p")), c.conn.execute("SELECT count(*) FROM snapshots").fetchone()[0])
"""


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to act as another user")
def test_one_who_may_not_write_reads_an_old_catalog_as_it_is():
    """Someone who may not write the catalog cannot migrate it: they read it as it is, and
    the first one who may write it migrates it."""
    home = Path(tempfile.mkdtemp(prefix="snapver-catalog-"))  # not pytest's: nobody must get in
    try:
        home.chmod(0o755)
        db = home / "catalog.db"
        raw(db, catalog_schema._V1 + "INSERT INTO releases VALUES ('p', 'prod', 's', 'c', 'data', 't', NULL, 0);")
        done = subprocess.run([sys.executable, "-c", READ_AS_NOBODY, str(db)], user="nobody",
                              cwd="/", env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
                              capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
        assert done.stdout.split() == ["1", "0"]
        assert user_version(db) == 0
        Catalog(db).close()
        assert user_version(db) == VERSION
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_transactions_nest_by_joining_and_roll_back_whole(tmp_path):
    c = Catalog(tmp_path / "catalog.db")
    with pytest.raises(RuntimeError), c.batch():
        c.add_lineage("p", "ft", "models", "s", None, "t")
        with c.batch():  # joined: rolled back with the outer one
            c.add_lineage("p", "ft2", "models", "s", None, "t")
        raise RuntimeError
    assert c.lineage("p") == []
    assert not c.conn.in_transaction
    c.close()
