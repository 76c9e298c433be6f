"""Releases that move (`release set` / `stage`), with their history, their stable paths and
their ZFS holds following the move; gc keeps what a release or its stable path leads to; on
real Btrfs and zfs-fuse."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fixtures.git import commit, env, git, snapver, write

METRICS = '\n[registry]\nmetrics = ["models/metrics.json"]\n\n[retention]\nunreachable = "1s"\n'


def held(lake) -> dict[str, int]:
    """{snapshot name: datasets holding it} from ZFS's userrefs (zfs-fuse's `zfs holds` is broken)."""
    out = subprocess.run(["zfs", "get", "-H", "-p", "-r", "userrefs", lake.spec],
                         capture_output=True, text=True, check=True).stdout
    found: dict[str, int] = {}
    for line in out.splitlines():
        name, _, value, _ = line.split("\t")
        if "@" in name and value not in ("0", "-"):
            snap = name.rpartition("@")[2]
            found[snap] = found.get(snap, 0) + 1
    return found


def link(lake, name: str, volume: str) -> Path:
    """The stable path <lake>/<project>/releases/NAME/VOLUME (one project per test lake)."""
    found = list(lake.root.glob(f"*/releases/{name}/{volume}"))
    assert len(found) == 1, found
    return found[0]


@pytest.fixture
def unreleased():
    """Repositories whose releases go when the test ends: a ZFS hold keeps its lake from being destroyed."""
    repos: list[Path] = []
    yield repos
    for repo in repos:
        for r in snapver(repo, "release", "list", "--json").json:
            snapver(repo, "release", "remove", r["name"])


def state(repo: Path, lake) -> tuple:
    """What a refused command must leave as it was: releases, their history, links, holds."""
    rels = snapver(repo, "release", "list", "--json").json
    moves = {r["name"]: snapver(repo, "release", "history", r["name"], "--json").json for r in rels}
    links = sorted((str(p), os.readlink(p)) for p in lake.root.glob("*/releases/*/*") if p.is_symlink())
    return rels, moves, links, held(lake) if lake.backend == "zfs" else None


def test_release_moves_with_its_history_stable_path_and_hold(lake_repo, lake, unreleased):
    repo = lake_repo
    unreleased.append(repo)
    with open(repo / "snapver.toml", "a") as f:
        f.write(METRICS)
    write(repo / "models" / "metrics.json", '{"accuracy": 0.8}')
    write(repo / "models" / "model.pt", b"weights one")
    one = commit(repo, "model one", "snapver.toml")
    write(repo / "models" / "metrics.json", '{"accuracy": 0.95}')
    write(repo / "models" / "model.pt", b"weights two")
    two = commit(repo, "model two")

    assert "release prod pins" in snapver(repo, "release", "prod", one, "-m", "first").out
    served = link(lake, "prod", "models")
    assert (served / "model.pt").read_bytes() == b"weights one"
    if lake.backend == "zfs":
        assert held(lake) == {one: 3}

    out = snapver(repo, "release", "set", "prod", two, "-m", "promote", "--if", "accuracy>0.9").out
    assert f"release prod pins {two[:10]} (was {one[:10]})" in out
    assert (served / "model.pt").read_bytes() == b"weights two", "the same path leads to the new model"
    assert not os.path.isabs(os.readlink(served)), "relative: right wherever the lake is mounted"
    assert Path(snapver(repo, "path", "release:prod", "models").out.strip()).joinpath("model.pt").read_bytes() \
        == b"weights two"
    if lake.backend == "zfs":
        assert held(lake) == {two: 3}, "the hold moved with the release"
    # Checkouts (which on ZFS move the live dataset aside) leave the stable path leading to it.
    snapver(repo, "checkout", one)
    write(repo / "models" / "model.pt", b"edited after the checkout")
    snapver(repo, "checkout", "main")
    assert (served / "model.pt").read_bytes() == b"weights two"

    # `stage` is `set`; a release set for the first time is made.
    snapver(repo, "release", "stage", "canary", one)
    assert (link(lake, "canary", "data")).is_dir()
    moves = snapver(repo, "release", "history", "prod", "--json").json
    assert [(m["from_snapshot"], m["to_snapshot"], m["message"]) for m in moves] == \
        [(None, one, "first"), (one, two, "promote")]
    assert all(m["who"] == "Ada Tester <ada@example.com>" for m in moves), moves
    text = snapver(repo, "release", "history", "prod").out.splitlines()
    assert len(text) == 2 and "(new)" in text[0] and f"{one[:10]} -> {two[:10]}" in text[1]
    assert "promote" in text[1] and "Ada Tester <ada@example.com>" in text[1]

    # Refusals: one line, non-zero, nothing changed (catalog, history, links, holds).
    before = state(repo, lake)
    for argv, words in [
        (["release", "set", "prod", one, "--if", "accuracy>0.9"], "does not meet accuracy>0.9 (accuracy=0.8)"),
        (["release", "set", "prod", one, "--if", "accuracy>>0.9"], "does not parse at character 10"),
        (["release", "set", "prod", one, "--if", "nosuchkey>1"], "(nosuchkey=none)"),
        (["release", "set", "prod", "no-such-rev"], "no-such-rev"),
        (["release", "set", "a/b", two], "not a valid release name"),
        (["release", "history", "nope"], "there is no release 'nope'"),
    ]:
        done = snapver(repo, *argv, ok=False)
        assert done.code != 0 and words in done.err, (argv, done.err)
        assert len(done.err.strip().splitlines()) == 1 and "Traceback" not in done.err, done.err
        assert state(repo, lake) == before, argv
    assert snapver(repo, "release", "set", "prod", one, "--if", "accuracy>0.9", ok=False).code == 1

    # Removed: its links and hold go, its history stays.
    snapver(repo, "release", "remove", "canary")
    assert not list(lake.root.glob("*/releases/canary"))
    assert [m["to_snapshot"] for m in snapver(repo, "release", "history", "canary", "--json").json] == [one, None]
    if lake.backend == "zfs":
        assert held(lake) == {two: 3}


def test_gc_keeps_what_a_release_or_its_stable_path_leads_to_and_follows_the_move(lake_repo, lake, unreleased):
    repo = lake_repo
    unreleased.append(repo)
    with open(repo / "snapver.toml", "a") as f:
        f.write('[retention]\nunreachable = "1s"\n')
    commit(repo, "retention", "snapver.toml")
    git(repo, "checkout", "-q", "-b", "experiment")
    write(repo / "models" / "model.pt", b"experiment one")
    exp1 = commit(repo, "experiment one")
    write(repo / "models" / "model.pt", b"experiment two")
    exp2 = commit(repo, "experiment two")
    snapver(repo, "release", "set", "prod", exp1)
    git(repo, "checkout", "-q", "main")
    git(repo, "branch", "-q", "-D", "experiment")
    git(repo, "reflog", "expire", "--expire=now", "--expire-unreachable=now", "--all")
    time.sleep(1.5)

    # A crash after the catalog moved and before the old link was replaced: the link's
    # snapshot is kept as well (made here by pointing a second link at exp2 by hand).
    served = link(lake, "prod", "models")
    stray = served.parent / "data"
    os.unlink(stray)
    os.symlink(os.readlink(served).replace(exp1, exp2).replace("/models/", "/data/"), stray)
    decisions = {(d["volume"], d["name"]): d for d in snapver(repo, "gc", "--json").json["result"]["decisions"]}
    assert decisions[("models", exp1)]["keep"] and decisions[("models", exp1)]["reason"] == "release prod"
    assert decisions[("data", exp2)]["keep"] and "stable path of release prod" in decisions[("data", exp2)]["reason"]
    assert not decisions[("models", exp2)]["keep"]
    names = {e["name"] for e in snapver(repo, "log", "--json").json}
    assert exp1 in names

    # Moved to main's HEAD: the experiment is no longer released, and gc may take it.
    head = git(repo, "rev-parse", "HEAD").strip()
    snapver(repo, "release", "set", "prod", "HEAD")
    assert os.readlink(stray).endswith(head), "the move put every link right again"
    if lake.backend == "zfs":
        assert held(lake) == {head: 3}
    snapver(repo, "gc")
    names = {e["name"] for e in snapver(repo, "log", "--json").json}
    assert exp1 not in names and exp2 not in names and head in names
    assert Path(os.readlink(served)).name == head


def test_concurrent_moves_from_two_clones_are_ordered_and_both_recorded(lake_repo, lake, tmp_path, unreleased):
    repo = lake_repo
    unreleased.append(repo)
    write(repo / "models" / "model.pt", b"a")
    a = commit(repo, "a")
    write(repo / "models" / "model.pt", b"b")
    b = commit(repo, "b")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    snapver(clone, "init", *lake.init_args)
    snapver(repo, "release", "prod", "HEAD~2")

    for round_ in range(3):
        runs = [subprocess.Popen([sys.executable, "-m", "snapver", "release", "set", "prod", rev, "-m", f"{where.name} {round_}"],
                                 cwd=where, env=env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                for where, rev in ((repo, a), (clone, b))]
        for r in runs:
            out, err = r.communicate(timeout=120)
            assert r.returncode == 0, err
    moves = snapver(clone, "release", "history", "prod", "--json").json
    assert len(moves) == 1 + 6, "every move recorded"
    for before, after in zip(moves, moves[1:]):
        assert after["from_snapshot"] == before["to_snapshot"], "each move from where the last one left it"
    final = snapver(repo, "release", "list", "--json").json[0]
    assert final["snapshot"] == moves[-1]["to_snapshot"] in (a, b), "the last one wins"
    assert Path(os.readlink(link(lake, "prod", "models"))).name == final["snapshot"]
    if lake.backend == "zfs":
        assert held(lake) == {final["snapshot"]: 3}


# ------------------------------------------------------------------ snapver commit

def test_snapver_commit_makes_a_data_only_commit_and_commits_code_as_git_would(lake_repo, lake):
    repo = lake_repo
    first = git(repo, "rev-parse", "HEAD")
    # The README's example: training changed the model, not the code.
    write(repo / "models" / "model.pt", b"trained v2")
    plain = subprocess.run(["git", "commit", "-am", "train v2"], cwd=repo, env=env(), capture_output=True, text=True)
    assert plain.returncode != 0 and "nothing" in plain.stdout + plain.stderr, "why the command exists"
    done = snapver(repo, "commit", "-am", "train v2")
    assert "data-only commit" in done.out and "models" in done.out
    v2 = git(repo, "rev-parse", "HEAD")
    assert v2 != first and git(repo, "log", "-1", "--format=%s") == "train v2"
    assert git(repo, "diff", "--name-only", first, v2) == "", "nothing for Git in it"
    assert Path(snapver(repo, "path", v2, "models").out.strip(), "model.pt").read_bytes() == b"trained v2"

    # Code and data: committed as `git commit -a` would (the tracked file, not the untracked one).
    write(repo / "train.py", "print('train v3')\n")
    write(repo / "notes.txt", "untracked\n")
    write(repo / "models" / "model.pt", b"trained v3")
    snapver(repo, "commit", "-a", "-m", "train v3")
    v3 = git(repo, "rev-parse", "HEAD")
    assert git(repo, "diff", "--name-only", v2, v3) == "train.py"
    assert Path(snapver(repo, "path", v3, "models").out.strip(), "model.pt").read_bytes() == b"trained v3"

    # Nothing changed: one line, exit 1, no commit. A staged file without -a is committed.
    before = git(repo, "rev-parse", "HEAD")
    for argv in (["commit", "-m", "again"], ["commit", "-a", "-m", "again"], ["commit", "-m", " "]):
        failed = snapver(repo, *argv, ok=False)
        assert failed.code == 1 and len(failed.err.strip().splitlines()) == 1, failed.err
        assert git(repo, "rev-parse", "HEAD") == before
    write(repo / "train.py", "print('train v4')\n")
    assert "not staged" in snapver(repo, "commit", "-m", "x", ok=False).err
    git(repo, "add", "train.py")
    snapver(repo, "commit", "-m", "staged code")
    assert git(repo, "diff", "--name-only", "HEAD~1", "HEAD") == "train.py"
    assert snapver(repo, "log", "--json").json[0]["name"] == git(repo, "rev-parse", "HEAD")


# ------------------------------------------------------------------ a clone joins its project by itself

def test_a_clone_without_snapver_toml_joins_its_project_by_the_root_commit(repo, lake, tmp_path):
    snapver(repo, "init", *lake.init_args)  # snapver.toml is never committed
    with open(repo / "snapver.toml", "a") as f:
        f.write('\n[registry]\nmetrics = ["models/metrics.json"]\n')
    original = (repo / "snapver.toml").read_text()
    project = snapver(repo, "status", "--json").json[0]["path"].split("/workspaces/")[0].rsplit("/", 1)[1]
    write(repo / "models" / "metrics.json", '{"accuracy": 0.9}')
    write(repo / "models" / "model.pt", b"trained")
    (repo / "notes.txt").write_text("v1\n")
    v1 = commit(repo, "v1", "notes.txt")

    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    assert not (clone / "snapver.toml").exists()
    out = snapver(clone, "init", *lake.init_args).out
    assert f"joined project {project}, found in the lake by this repository's root commit" in out, out
    assert f"copied from the clone at {repo}" in out
    assert (clone / "snapver.toml").read_text() == original, "the registry settings came with it"
    assert (clone / "models" / "model.pt").read_bytes() == b"trained", "at HEAD's snapshot"
    assert snapver(clone, "find", "accuracy>0.5", "--json").json[0]["name"] == v1

    # No clone of it to copy from (their files moved away): one naming the project and its volumes.
    (repo / "snapver.toml").rename(tmp_path / "aside.toml")
    (clone / "snapver.toml").rename(tmp_path / "aside-clone.toml")
    try:
        second = tmp_path / "second"
        git(tmp_path, "clone", "-q", str(repo), str(second))
        out = snapver(second, "init", *lake.init_args).out
        assert f"joined project {project}" in out and "snapver.toml written for it" in out, out
        assert (second / "models" / "model.pt").read_bytes() == b"trained"
        assert f'id = "{project}"' in (second / "snapver.toml").read_text()
        assert 'volumes = ["data", "models", "logs"]' in (second / "snapver.toml").read_text()
    finally:
        (tmp_path / "aside.toml").rename(repo / "snapver.toml")
        (tmp_path / "aside-clone.toml").rename(clone / "snapver.toml")

    # Another repository (another root commit) on the same lake is a project of its own.
    other = tmp_path / "other"
    other.mkdir()
    git(other, "init", "-q", "-b", "main")
    write(other / "a.txt", "a\n")
    git(other, "add", "a.txt")
    git(other, "commit", "-q", "-m", "unrelated")
    out = snapver(other, "init", *lake.init_args).out
    assert "joined" not in out and project not in out, out
