"""gc keeps what it cannot prove dead (issue 14, items 1 and 3), driven by real Git and hooks.

- Safety wips (kept before a checkout) are never thinned; they age out by `[retention] kept`,
  and the newest wip of every line of work stays.
- Commit snapshots go only when every known clone is present, complete and readable and none
  reaches them: a moved, shallow or unreadable clone keeps everything and gc says why.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from tests.fixtures.daemon import give_to_nobody
from tests.fixtures.git import commit, env, git, snapver, write

VOLUMES = ("data", "models", "logs")


def git_err(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, env=env(), capture_output=True, text=True)
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done.stderr


def retention(repo: Path, text: str) -> None:
    """A [retention] table in snapver.toml, committed."""
    toml = repo / "snapver.toml"
    toml.write_text(toml.read_text() + f"\n[retention]\n{text}\n")
    git(repo, "add", "snapver.toml")
    commit(repo, "retention")


def on_disk(repo: Path) -> set[tuple[str, str]]:
    return {(e["volume"], e["name"]) for e in snapver(repo, "log", "--all", "--json").per_volume}


def plan(repo: Path) -> dict[tuple[str, str], dict]:
    return {(d["volume"], d["name"]): d for d in snapver(repo, "gc", "--dry-run", "--json").json["result"]["decisions"]}


def forget_reflogs(repo: Path) -> None:
    """What `git gc` does once reflog entries expire: only refs reach commits any more."""
    git(repo, "reflog", "expire", "--expire=now", "--expire-unreachable=now", "--all")


def clone_of(origin: Path, where: Path, lake, *extra: str) -> Path:
    git(where.parent, "clone", "-q", *extra, str(origin) if not extra else f"file://{origin}", str(where))
    snapver(where, "init", *lake.init_args)
    return where


# ---------------------------------------------------------------- safety wips

def test_safety_wips_are_never_thinned_and_age_out_by_kept(lake_repo):
    from snapver.daemon import policy_for
    from snapver.lake import Workspace
    from snapver.retention import Policy

    repo = lake_repo
    retention(repo, 'wip = "1"\nkept = "30d"')  # the schedule alone would keep one wip per volume
    main = git(repo, "rev-parse", "HEAD")
    git(repo, "checkout", "-q", "-b", "feature")
    write(repo / "models" / "model.pt", "feature weights")
    feature = commit(repo, "feature")
    git(repo, "checkout", "-q", "main")

    kept = []  # (wip name, the edit it holds)
    for i, target in enumerate(["feature", "main", "feature"]):
        edit = f"edit {i} before checkout of {target}"
        write(repo / "data" / "f", edit)
        said = git_err(repo, "checkout", "-q", target)
        m = re.search(r"kept unsnapshotted changes as (\S+)", said)
        assert m, said
        kept.append((m.group(1), edit))
    assert [n.split(".")[0] for n, _ in kept] == [main, feature, main], "each wip names the commit it left"
    for i in range(3):  # daemon-like wips on feature: the schedule may thin these
        write(repo / "logs" / "run.log", f"step {i}")
        snapver(repo, "snapshot", "--wip")
    manual = sorted(n for v, n in on_disk(repo) if v == "logs" and n.startswith(feature + ".")
                    and n not in {k for k, _ in kept})
    assert len(manual) == 3

    decided = plan(repo)
    for name, _ in kept:
        assert all(decided[(v, name)]["keep"] for v in VOLUMES), decided[("data", name)]
    assert not any(decided[("logs", n)]["keep"] for n in manual[:2]), [decided[("logs", n)]["reason"] for n in manual]
    assert decided[("logs", manual[2])]["keep"]
    out = snapver(repo, "gc").out
    assert "6 of" in out, out
    for name, edit in kept:  # each kept edit is still there, with its data
        assert (Path(snapver(repo, "path", name, "data").out.strip()) / "f").read_text() == edit

    # Thirty-one days on: a kept wip older than `kept` goes, unless it is the newest of its line.
    ws = Workspace.open(repo)
    try:
        later = datetime.now(timezone.utc) + timedelta(days=31)
        decisions = {(d.snapshot.volume, d.snapshot.name): d for d in ws.gc(policy_for(ws, Policy()), now=later)}
    finally:
        ws.catalog.close()
    first, second, third = (n for n, _ in kept)
    assert not decisions[("data", first)].keep and "older than 30 days" in decisions[("data", first)].reason
    assert decisions[("data", third)].keep, "the newest wip of main's line of work stays"
    assert not decisions[("data", second)].keep, "feature's line has a newer wip"
    assert decisions[("logs", manual[2])].keep
    left = on_disk(repo)
    assert ("data", third) in left and ("data", first) not in left and ("data", second) not in left
    assert ("data", main) in left and ("data", feature) in left, "commit snapshots are untouched"


def test_a_wip_the_catalog_does_not_know_is_kept_as_a_safety_wip(lake_repo):
    from snapver.lake import Workspace

    retention(lake_repo, 'wip = "1"')
    for i in range(3):
        write(lake_repo / "logs" / "run.log", f"step {i}")
        snapver(lake_repo, "snapshot", "--wip")
    wips = sorted(n for v, n in on_disk(lake_repo) if v == "logs" and "." in n)
    assert [plan(lake_repo)[("logs", n)]["keep"] for n in wips] == [False, False, True]
    ws = Workspace.open(lake_repo)
    db = ws.backend.catalog_path
    ws.catalog.close()
    for suffix in ("", "-wal", "-shm"):
        Path(f"{db}{suffix}").unlink(missing_ok=True)
    snapver(lake_repo, "reindex")  # rows come back from the filesystem, without their kind of wip
    decided = plan(lake_repo)
    assert all(decided[("logs", n)]["keep"] for n in wips)
    assert "not known to the catalog" in decided[("logs", wips[0])]["reason"]


@pytest.mark.parametrize("setting, error", [('kept = "soon"', "not a duration"), ("kept = 30", "not understood"),
                                            ('keep = "30d"', "unknown setting(s) keep")])
def test_bad_kept_setting_is_one_line(lake_repo, setting, error):
    before = on_disk(lake_repo)
    toml = lake_repo / "snapver.toml"
    good = toml.read_text()
    toml.write_text(good + f"\n[retention]\n{setting}\n")
    result = snapver(lake_repo, "gc", ok=False)
    assert error in result.err and len(result.err.strip().splitlines()) == 1, result.err
    toml.write_text(good)  # every command checks the whole file: on_disk's `snapver log` too
    assert on_disk(lake_repo) == before


# ---------------------------------------------------------------- every known clone

def feature_only_in(clone: Path, branch: str = "feat") -> str:
    """A commit with its own data that only `branch` of that clone reaches."""
    git(clone, "checkout", "-q", "-b", branch)
    write(clone / "data" / "only-here.csv", f"rows only {branch} reaches\n")
    return commit(clone, f"work on {branch}")


def test_moved_clone_keeps_what_only_it_reaches_until_forgotten(lake_repo, lake, tmp_path):
    a = lake_repo
    retention(a, 'unreachable = "1s"')
    b = clone_of(a, tmp_path / "B", lake)
    feat = feature_only_in(b)
    moved = tmp_path / "B-moved"
    b.rename(moved)
    time.sleep(1.5)  # past the grace of unreachable snapshots

    out = snapver(a, "gc").out
    assert re.search(rf"kept every unreachable commit snapshot: {re.escape(str(b))} is missing", out), out
    assert {("data", feat), ("models", feat)} <= on_disk(a), "B's branch-only snapshots are kept"
    assert "not proven unreachable" in plan(a)[("data", feat)]["reason"]
    listed = {c["path"]: c for c in snapver(a, "clones", "--json").json}
    assert listed[str(b)]["state"] == "missing" and listed[str(a)]["state"] == "present"
    text = snapver(a, "clones").out
    assert re.search(rf"^missing +{re.escape(str(b))} ", text, re.M) and "(this one)" in text, text

    refused = snapver(a, "clones", "forget", str(a), ok=False)
    assert "still there" in refused.err and len(refused.err.strip().splitlines()) == 1
    assert "no known clone" in snapver(a, "clones", "forget", str(tmp_path / "nowhere"), ok=False).err

    snapver(moved, "status")  # snapver run in the moved clone remembers it at its new path
    assert snapver(a, "clones", "forget", str(b)).out.startswith(f"forgot {b}")
    assert str(b) not in {c["path"] for c in snapver(a, "clones", "--json").json}
    out = snapver(a, "gc").out
    assert "kept every" not in out and ("data", feat) in on_disk(a), "B-moved still reaches feat"
    assert plan(a)[("data", feat)]["reason"] == "reachable commit"

    shutil.rmtree(moved)  # deleted for good (the volume links go, the lake keeps its volumes)
    assert "missing" in snapver(a, "gc").out and ("data", feat) in on_disk(a)
    snapver(a, "clones", "forget", str(moved))
    # No known clone has feat any more: it is unknown, not proven dead (issue 22), so it stays
    # until --forget-unknown says otherwise.
    assert re.search(r"kept \d+ snapshot\(s\) of unknown commits", snapver(a, "gc").out)
    assert ("data", feat) in on_disk(a)
    snapver(a, "gc", "--forget-unknown", "1s")
    assert not any(name == feat for _, name in on_disk(a)), "forgotten, nothing reaches feat: it goes"


def test_shallow_clone_keeps_every_commit_snapshot(lake_repo, lake, tmp_path):
    a = lake_repo
    retention(a, 'unreachable = "1s"')
    git(a, "checkout", "-q", "-b", "doomed")
    write(a / "data" / "x.csv", "doomed rows\n")
    doomed = commit(a, "doomed")
    git(a, "checkout", "-q", "main")
    git(a, "branch", "-q", "-D", "doomed")
    forget_reflogs(a)
    c = clone_of(a, tmp_path / "C", lake, "--depth", "1")
    assert git(c, "rev-parse", "--is-shallow-repository") == "true"
    time.sleep(1.5)

    out = snapver(a, "gc").out
    assert f"{c} is a shallow clone" in out, out
    assert ("data", doomed) in on_disk(a)
    listed = {x["path"]: x["state"] for x in snapver(a, "clones", "--json").json}
    assert listed[str(c)] == "shallow"

    git(c, "fetch", "-q", "--unshallow")
    out = snapver(a, "gc").out
    assert "kept every" not in out and ("data", doomed) not in on_disk(a), out


def test_reflog_and_a_clone_at_a_commit_before_snapver_toml_count(lake_repo, lake, tmp_path):
    a = lake_repo
    retention(a, 'unreachable = "1s"')
    before_snapver = git(a, "rev-list", "--max-parents=0", "HEAD")
    b = clone_of(a, tmp_path / "B", lake)
    feat = feature_only_in(b)
    git_err(b, "checkout", "-q", before_snapver)  # no snapver.toml in B's working tree now
    assert not (b / "snapver.toml").exists()
    git(a, "checkout", "-q", "-b", "gone")
    write(a / "data" / "y.csv", "rows on a deleted branch\n")
    in_reflog = commit(a, "only the reflog remembers this")
    git(a, "checkout", "-q", "main")
    git(a, "branch", "-q", "-D", "gone")
    time.sleep(1.5)

    out = snapver(a, "gc").out
    assert "kept every" not in out, out
    decided = plan(a)
    assert decided[("data", feat)]["reason"] == "reachable commit", "B counts without its snapver.toml"
    assert decided[("data", in_reflog)]["reason"] == "reachable commit", "`git checkout HEAD@{1}` gets it back"
    forget_reflogs(a)
    snapver(a, "gc")
    left = on_disk(a)
    assert ("data", feat) in left and ("data", in_reflog) not in left


def test_daemon_gc_keeps_a_moved_clones_snapshots(lake_repo, lake, tmp_path):
    a = lake_repo
    retention(a, 'unreachable = "1s"')
    b = clone_of(a, tmp_path / "B", lake)
    feat = feature_only_in(b)
    b.rename(tmp_path / "B-moved")
    config = tmp_path / "snapverd.toml"
    config.write_text(f'gc_interval = "off"\n[[workspace]]\npath = "{a}"\n')
    time.sleep(1.5)

    done = snapver(a, "daemon", "--config", str(config), "gc")
    assert f"{b} is missing" in done.err, done.err
    assert ("data", feat) in on_disk(a), "the daemon's gc keeps what only the moved clone reaches"
    snapver(a, "clones", "forget", str(b))
    snapver(a, "daemon", "--config", str(config), "gc")
    assert ("data", feat) in on_disk(a), "no known clone has feat now: unknown, kept"
    snapver(a, "gc", "--forget-unknown", "1s")
    assert ("data", feat) not in on_disk(a)


def test_root_reads_another_users_clone_as_that_user(lake_repo, lake, user_home):
    """gc run by root (the daemon) counts a clone owned by a user, without running Git as root there."""
    a = lake_repo
    retention(a, 'unreachable = "1s"')
    b = clone_of(a, user_home / "B", lake)
    feat = feature_only_in(b)
    give_to_nobody(b)
    time.sleep(1.5)
    out = snapver(a, "gc").out
    assert "kept every" not in out, out
    assert plan(a)[("data", feat)]["reason"] == "reachable commit"


def test_root_asks_another_users_clone_which_commits_it_has_as_that_user(lake_repo, lake, user_home):
    """A commit another user's clone dropped (branch deleted, reflog expired) is unreachable there,
    not unknown: root's gc asks that clone's object database as its owner (Git refuses a
    repository of another user to root), so the snapshot can go after its grace."""
    a = lake_repo
    retention(a, 'unreachable = "1s"')
    b = clone_of(a, user_home / "B", lake)
    dropped = feature_only_in(b, "dropped")
    git(b, "checkout", "-q", "main")
    git(b, "branch", "-D", "dropped")
    forget_reflogs(b)
    give_to_nobody(b)
    time.sleep(1.5)
    assert plan(a)[("data", dropped)]["reason"].startswith("unreachable commit"), plan(a)[("data", dropped)]
    snapver(a, "gc")
    assert ("data", dropped) not in on_disk(a)
