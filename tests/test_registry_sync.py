"""The registry travels with the snapshots: push, pull and clone between real lakes (Btrfs
images, zfs-fuse pools, and over a loopback sshd) carry metrics, params, provenance, scans,
lineage, recipes and releases with their history; releases merge as Git merges refs."""

from __future__ import annotations

import difflib
import json
import os
import re
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest

from snapver import registrysync
from snapver.catalog import Catalog
from snapver.transfer import open_lake
from tests.fixtures.git import commit, env, git, snapver, write
from tests.test_transfer import _cli, far, far_filesystems, project_of, sshd, third  # noqa: F401  (fixtures)

REGISTRY = """
[registry]
metrics = ["models/metrics.json"]
params = ["params.yaml"]

[volumes.data]
license = "CC-BY-4.0"
source = "s3://bucket/set-a"
"""
# Every table whose rows travel, and the releases: compared field by field (seq, the order a
# lake recorded its moves in, and builds' local id are the lake's own).
TABLES = (*Catalog.SYNCED, "releases", "release_moves", "release_heads")


def registry(spec: str, project: str) -> dict[str, set[tuple]]:
    """Every registry row of project in a lake's catalog, as sets of (column, value) tuples."""
    with sqlite3.connect(open_lake(spec).catalog_path) as db:
        db.row_factory = sqlite3.Row
        out = {}
        present = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
        for table in (t for t in TABLES if t in present):
            out[table] = {tuple((k, r[k]) for k in r.keys() if k not in ("seq", "id") or
                                (table == "release_moves" and k == "id"))
                          for r in db.execute(f"SELECT * FROM {table} WHERE project = ?", (project,))}
    return out


def zfs_held(spec: str) -> dict[str, int]:
    """{snapshot name: datasets holding it} from ZFS's userrefs (zfs-fuse's `zfs holds` is broken)."""
    out = subprocess.run(["zfs", "get", "-H", "-p", "-r", "userrefs", spec],
                         capture_output=True, text=True, check=True).stdout
    found: dict[str, int] = {}
    for line in out.splitlines():
        name, _, value, _ = line.split("\t")
        if "@" in name and value not in ("0", "-"):
            found[name.rpartition("@")[2]] = found.get(name.rpartition("@")[2], 0) + 1
    return found


def differences(mine: dict, theirs: dict) -> dict:
    return {t: (mine[t] ^ theirs[t]) for t in mine if mine[t] != theirs[t]}


def clone_differences(clone: dict, here: dict) -> dict:
    """differences, but the rows of wip points the clone took itself (on ZFS a fresh clone may
    keep a safety wip of its new, empty volumes as it checks out) are the clone's own."""
    known = {dict(r).get("snapshot") for rows in here.values() for r in rows}

    def own(row) -> bool:
        snapshot = dict(row).get("snapshot") or ""
        return len(snapshot) > 40 and snapshot not in known

    return differences({t: {r for r in rows if not own(r)} for t, rows in clone.items()}, here)


@pytest.fixture
def holds(lake, far, third):
    """ZFS holds of the releases, let go when the test ends: a held snapshot keeps its lake
    from being destroyed (before far and third are torn down, which this depends on)."""
    yield
    if lake.backend != "zfs":
        return
    for spec in (lake.spec, far.spec, third.spec):
        snaps = subprocess.run(["zfs", "list", "-H", "-o", "name", "-t", "snapshot", "-r", spec],
                               capture_output=True, text=True).stdout.split()
        for snap in snaps:
            for tag in ("prod", "v1.0", "v2.0"):
                subprocess.run(["zfs", "release", f"snapver-release:{tag}", snap], capture_output=True)


def tag(repo: Path, name: str, rev: str = "HEAD") -> str:
    done = subprocess.run(["git", "tag", "-a", "-m", name, name, rev], cwd=repo, env=env(),
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done.stderr


def trained(a: Path) -> dict[str, str]:
    """A history with every kind of registry row: metrics, params, provenance, scans, a derived
    volume with its recipe, a release moved twice, a tag."""
    with open(a / "snapver.toml", "a") as f:
        f.write(REGISTRY)
    write(a / "params.yaml", "lr: 0.01\n")
    write(a / "models" / "metrics.json", '{"accuracy": 0.8, "loss": {"val": 0.5}}')
    write(a / "models" / "model.pt", b"weights one")
    write(a / "data" / "train.csv", "x,y\n1,2\n")
    c1 = commit(a, "model one", "snapver.toml", "params.yaml")
    snapver(a, "derive", "models@HEAD", "finetune", "-m", "fine-tune on set B", "--run", "true")
    write(a / "finetune" / "head.pt", b"fine-tuned head")
    write(a / "models" / "metrics.json", '{"accuracy": 0.9, "loss": {"val": 0.3}}')
    c2 = commit(a, "fine-tuned", "snapver.toml")
    # Enough values that the rows go in more than one message (registrysync.parts).
    write(a / "models" / "metrics.json", json.dumps({"accuracy": 0.95, "loss": {"val": 0.2},
                                                     "per_class": {f"c{i}": i / 10001 for i in range(10001)}}))
    write(a / "params.yaml", "lr: 0.001\n")
    c3 = commit(a, "model three", "params.yaml")
    snapver(a, "release", "prod", c1, "-m", "first")
    snapver(a, "release", "set", "prod", c2, "-m", "promote")
    assert "release v1.0 pins" in tag(a, "v1.0", c3)
    return {"c1": c1, "c2": c2, "c3": c3}


SAME_OUTPUT = [
    ["log", "--metric", "accuracy", "--metric", "lr", "--metric", "loss.val"],
    ["release", "list", "--json"],
    ["release", "history", "prod", "--json"],
    ["release", "history", "v1.0", "--json"],
    ["lineage"],
    ["lineage", "--json"],
    ["lineage", "--upstream", "finetune@HEAD", "--json"],
    ["scan", "--json"],
    ["compare", "HEAD~2", "HEAD", "--json"],
]


def test_push_and_clone_carry_every_registry_row(lake_repo, lake, far, third, tmp_path, holds):
    a = lake_repo
    at = trained(a)
    project = project_of(a)
    snapver(a, "remote", "add", "far", far.url)
    pushed = snapver(a, "push", "far", "-q")
    assert "diverged" not in pushed.err and "differs" not in pushed.err, pushed.err
    here = registry(lake.spec, project)
    assert all(here[t] for t in ("registry_values", "provenance", "scans", "scan_files", "lineage", "recipes",
                                 "releases", "release_moves", "release_heads")), "every kind of row is there"
    assert differences(registry(far.spec, project), here) == {}, "the far lake has every row, field by field"
    far_root = open_lake(far.spec).root
    assert Path(os.readlink(far_root / project / "releases" / "prod" / "models")).name == at["c2"], \
        "the far lake's stable path of the release follows it"
    if lake.backend == "zfs":
        assert zfs_held(far.spec) == zfs_held(lake.spec) == {at["c2"]: 4, at["c3"]: 4}, "held there as here"

    b = tmp_path / "b"
    snapver(tmp_path, "clone", str(a), str(b), "--from", far.url, *third.init_args[:2], "-q")
    assert clone_differences(registry(third.spec, project), here) == {}, "the clone's lake has every row too"
    for argv in SAME_OUTPUT:
        # A snapshot's time in `log` is when it arrived on its lake (the filesystem's own), not a registry row.
        mine, theirs = (snapver(r, *argv, ok=None) for r in (a, b))
        if argv[0] == "log":
            for r in (mine, theirs):
                r.out = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "<time>", r.out)
        assert (theirs.code, theirs.out) == (mine.code, mine.out), \
            (argv, "\n".join(difflib.unified_diff(mine.out.splitlines(), theirs.out.splitlines(), lineterm="")))
    assert "0.95" in snapver(b, "log", "--metric", "accuracy").out
    for rev in ("HEAD", "HEAD~1", "release:prod"):
        mine, theirs = (snapver(r, "show", rev, "--json").json for r in (a, b))
        assert [theirs[k] for k in ("provenance", "params", "metrics")] == \
            [mine[k] for k in ("provenance", "params", "metrics")], rev
    served = open_lake(third.spec).root / project / "releases" / "prod" / "models"
    assert (served / "model.pt").read_bytes() == b"weights one", "the clone serves the release from its own lake"

    # Pushed and pulled again: nothing is added twice, nothing differs.
    assert "differs" not in snapver(b, "push", "-q").err
    assert "differs" not in snapver(a, "pull", "far", "-q").err
    assert registry(lake.spec, project) == here == registry(far.spec, project)


def only_added_history(before: dict, after: dict) -> bool:
    """Every row kept, and nothing new but metric history: each run's steps are rows of their
    own (per line of work and run), so both sides' runs are kept side by side."""
    rest = lambda t: {k: v for k, v in t.items() if k != "metric_history"}  # noqa: E731
    return rest(before) == rest(after) and before.get("metric_history", set()) <= after.get("metric_history", set())


def test_a_differing_row_keeps_the_local_one_and_is_reported(lake_repo, lake, far, third, tmp_path, holds):
    a = lake_repo
    trained(a)
    project = project_of(a)
    snapver(a, "remote", "add", "far", far.url)
    snapver(a, "push", "far", "-q")
    b = tmp_path / "b"
    snapver(tmp_path, "clone", str(a), str(b), "--from", far.url, *third.init_args[:2], "-q")
    # The same snapshot's metric recorded otherwise on each side (the Python API adds values to HEAD's).
    for repo, value in ((a, 0.5), (b, 0.7)):
        done = subprocess.run([sys.executable, "-c", "import snapver; "
                               f"snapver.snapshot(metrics={{'accuracy': {value}}}, wip=False)"],
                              cwd=repo, env=env(), capture_output=True, text=True)
        assert done.returncode == 0, done.stderr
    head = git(a, "rev-parse", "HEAD")[:10]
    far_before = registry(far.spec, project)
    pushed = snapver(a, "push", "far", "-q")
    assert f"metric accuracy of {head} differs: remote far 0.95, this lake 0.5; remote far keeps its own" \
        in pushed.err, pushed.err
    assert only_added_history(far_before, registry(far.spec, project)), "nothing replaced there"
    before = registry(third.spec, project)
    pulled = snapver(b, "pull", "-q")
    assert f"metric accuracy of {head} differs: this lake 0.7, remote origin 0.95; this lake keeps its own" \
        in pulled.err, pulled.err
    assert only_added_history(before, registry(third.spec, project)), "nothing replaced here"
    assert "0.7" in snapver(b, "log", "--metric", "accuracy").out.splitlines()[1]


def test_release_moved_on_one_side_fast_forwards_on_both_sides_is_reported(lake_repo, lake, far, third, tmp_path,
                                                                            holds):
    a = lake_repo
    at = trained(a)
    c1, c2, c3 = at["c1"], at["c2"], at["c3"]
    project = project_of(a)
    snapver(a, "remote", "add", "far", far.url)
    snapver(a, "push", "far", "-q")
    b = tmp_path / "b"
    snapver(tmp_path, "clone", str(a), str(b), "--from", far.url, *third.init_args[:2], "-q")

    def at_(repo: Path) -> str:
        return next(r["snapshot"] for r in snapver(repo, "release", "list", "--json").json if r["name"] == "prod")

    def history(repo: Path) -> list:
        return snapver(repo, "release", "history", "prod", "--json").json

    # Moved in a only: the far lake, then b, fast-forward (history and stable path with it).
    snapver(a, "release", "set", "prod", c3, "-m", "a promotes c3")
    assert "diverged" not in snapver(a, "push", "far", "-q").err
    assert "diverged" not in snapver(b, "pull", "-q").err
    assert at_(b) == c3 and history(b) == history(a)
    link = open_lake(third.spec).root / project / "releases" / "prod" / "models"
    assert Path(os.readlink(link)).name == c3
    if lake.backend == "zfs":  # prod was at c2 there: its hold moved to c3, where v1.0 holds it too
        assert zfs_held(third.spec) == {c3: 4}, "held: c3 of data, finetune, logs, models; c2 let go"

    # Moved on both sides: reported by each push and pull, and left as it is on the receiving side.
    snapver(a, "release", "set", "prod", c2, "-m", "a rolls back")
    snapver(b, "release", "set", "prod", c1, "-m", "b rolls further back")
    snapver(a, "push", "far", "-q")
    pushed = snapver(b, "push", "-q")
    assert (f"release prod diverged: remote origin {c2[:10]}, this lake {c1[:10]}; "
            "run snapver release set prod REV to choose") in pushed.err, pushed.err
    pulled = snapver(b, "pull", "-q")
    assert (f"release prod diverged: this lake {c1[:10]}, remote origin {c2[:10]}; "
            "run snapver release set prod REV to choose") in pulled.err, pulled.err
    assert at_(b) == c1 and Path(os.readlink(link)).name == c1
    assert {m["message"] for m in history(b)} >= {"a rolls back", "b rolls further back"}, "every move is kept"
    assert snapver(a, "pull", "far", "-q").err.count("diverged") == 0, "far is where a left it"

    # Settled in b: its move is made after both, and fast-forwards the far lake, then a.
    snapver(b, "release", "set", "prod", c3, "-m", "b chooses c3")
    assert "diverged" not in snapver(b, "push", "-q").err
    assert "diverged" not in snapver(a, "pull", "far", "-q").err
    assert at_(a) == c3
    assert [m["message"] for m in history(a)][-1] == "b chooses c3"
    assert sorted(map(str, history(a))) == sorted(map(str, history(b))), "one history, every move in it"
    assert registry(lake.spec, project)["release_moves"] == registry(far.spec, project)["release_moves"] \
        == registry(third.spec, project)["release_moves"]

    # A removal is a move too: it fast-forwards, its stable path and hold go, its history stays.
    snapver(a, "release", "remove", "v1.0")
    snapver(a, "push", "far", "-q")
    snapver(b, "pull", "-q")
    assert [r["name"] for r in snapver(b, "release", "list", "--json").json] == ["prod"]
    assert snapver(b, "release", "history", "v1.0", "--json").json[-1]["to_snapshot"] is None
    assert not (open_lake(third.spec).root / project / "releases" / "v1.0").exists()
    assert registry(third.spec, project)["releases"] == registry(lake.spec, project)["releases"]


def test_a_tag_fetched_into_a_second_clone_becomes_a_release_there(lake_repo, lake, far, third, tmp_path, holds):
    a = lake_repo
    trained(a)
    snapver(a, "remote", "add", "far", far.url)
    snapver(a, "push", "far", "-q")
    b = tmp_path / "b"
    snapver(tmp_path, "clone", str(a), str(b), "--from", far.url, *third.init_args[:2], "-q")
    write(a / "models" / "model.pt", b"weights four")
    c4 = commit(a, "model four")
    snapver(a, "push", "far", "-q")
    git(b, "fetch", "-q", "origin")
    snapver(b, "pull", "origin", "origin/main", "-q")  # b's lake holds c4 before it sees the tag
    tag(a, "v2.0", c4)
    fetched = subprocess.run(["git", "fetch", "--tags", "origin"], cwd=b, env=env(), capture_output=True, text=True)
    assert fetched.returncode == 0 and f"release v2.0 pins {c4[:10]}" in fetched.stderr, fetched.stderr
    mine = {r["name"]: r["snapshot"] for r in snapver(b, "release", "list", "--json").json}
    assert mine["v2.0"] == c4

    # The origin's own v2.0 arrives later: the same snapshot, so no divergence; both creations kept.
    snapver(a, "push", "far", "-q")
    pulled = snapver(b, "pull", "origin", "origin/main", "-q")
    assert "diverged" not in pulled.err, pulled.err
    assert {r["name"]: r["snapshot"] for r in snapver(b, "release", "list", "--json").json} == \
        {r["name"]: r["snapshot"] for r in snapver(a, "release", "list", "--json").json}
    assert len(snapver(b, "release", "history", "v2.0", "--json").json) == 2


def test_push_and_pull_over_ssh_carry_the_registry(lake_repo, lake, far, third, sshd, tmp_path, monkeypatch, holds):
    port, ssh = sshd
    monkeypatch.setenv("SNAPVER_SSH", ssh)
    a = lake_repo
    trained(a)
    project = project_of(a)
    remote_snapver = str(Path(_cli()[0]).with_name("snapver"))
    url = f"ssh://root@127.0.0.1:{port}{far.spec if far.backend == 'btrfs' else '/' + far.spec}"
    snapver(a, "remote", "add", "far", url, "--command", remote_snapver)
    snapver(a, "push", "far", "-q")
    here = registry(lake.spec, project)
    assert differences(registry(far.spec, project), here) == {}
    b = tmp_path / "b"
    snapver(tmp_path, "clone", str(a), str(b), "--from", url, "--command", remote_snapver,
            *third.init_args[:2], "-q")
    assert clone_differences(registry(third.spec, project), here) == {}
    snapver(a, "release", "set", "prod", "HEAD", "-m", "over ssh")
    snapver(a, "push", "far", "-q")
    snapver(b, "pull", "-q")
    assert snapver(b, "release", "history", "prod", "--json").json == \
        snapver(a, "release", "history", "prod", "--json").json


def test_an_older_far_end_gets_the_snapshots_and_the_user_is_told(lake_repo, lake, far, third, sshd, tmp_path,
                                                                   monkeypatch, holds):
    """The far end runs the snapver before the registry travelled (main's, as installed on
    another host): it is sent no request it does not know, and the push says so in one line."""
    port, ssh = sshd
    monkeypatch.setenv("SNAPVER_SSH", ssh)
    old = tmp_path / "old"
    old.mkdir()
    src = Path(__file__).parent.parent
    first = subprocess.run(["git", "log", "--diff-filter=A", "--format=%H", "--", "snapver/registrysync.py"],
                           cwd=src, capture_output=True, text=True, check=True).stdout.split()[-1]
    archive = subprocess.run(["git", "archive", f"{first}~1", "snapver"], cwd=src, capture_output=True,
                             check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(old)], input=archive, check=True)
    wrapper = old / "snapver-old"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={old} exec {sys.executable} -m snapver \"$@\"\n")
    wrapper.chmod(0o755)
    a = lake_repo
    trained(a)
    url = f"ssh://root@127.0.0.1:{port}{far.spec if far.backend == 'btrfs' else '/' + far.spec}"
    snapver(a, "remote", "add", "far", url, "--command", str(wrapper))
    done = snapver(a, "push", "far", "-q")
    assert "remote far runs an older snapver: the registry (metrics, releases, lineage) was not synced" in done.err
    assert done.err.count("older snapver") == 1 and "Traceback" not in done.err, done.err
    assert snapver(a, "push", "far", "--json").json["result"] == [], "the snapshots went"
    b = tmp_path / "b"
    cloned = snapver(tmp_path, "clone", str(a), str(b), "--from", url, "--command", str(wrapper),
                     *third.init_args[:2], "-q")
    assert "remote origin runs an older snapver" in cloned.err, cloned.err
    assert (b / "models" / "model.pt").read_bytes() == (a / "models" / "model.pt").read_bytes()
    shutil.rmtree(old)


def test_rows_are_cut_into_parts_with_each_scan_whole_and_the_releases_last():
    scans = [{"volume": "models", "snapshot": f"{i:040x}"} for i in range(5)]
    files = [{"volume": "models", "snapshot": f"{i:040x}", "path": f"m{j}.pt"} for i in range(5) for j in range(3)]
    values = [{"snapshot": "a" * 40, "kind": "metric", "key": f"k{i}"} for i in range(7)]
    rows = {"tables": {"registry_values": values, "scans": scans, "scan_files": files}, "releases": {"prod": {}}}
    got = registrysync.parts(rows, limit=4)
    assert len(got) > 3 and [bool(p["releases"]) for p in got] == [False] * (len(got) - 1) + [True]
    for p in got:
        scanned = {(s["volume"], s["snapshot"]) for s in p["tables"].get("scans", [])}
        assert {(f["volume"], f["snapshot"]) for f in p["tables"].get("scan_files", [])} == scanned
    for table, every in rows["tables"].items():
        assert [r for p in got for r in p["tables"].get(table, [])] == every
