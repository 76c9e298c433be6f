"""Snapshots are immutable: a rewrite (amend, rebase, squash, filter-repo) adds snapshots for
the new commits and never renames or removes the old ones (issue 14, items 2, 4, 5 and 11)."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path

import pytest

from snapver import client
from tests.fixtures.daemon import NOBODY, Snapverd, as_user
from tests.fixtures.git import env, git, snapver
from tests.test_git_hooks import commit, git_err, lake_of, snapshot_names, write

ZERO = "0" * 40


def data_of(repo: Path, rev: str) -> dict[str, str]:
    """What `snapver show REV` says each volume's snapshot holds: {volume/file: content}."""
    shown = snapver(repo, "show", rev, "--json").json
    found = {}
    for v, s in shown["volumes"].items():
        for f in sorted(Path(s["path"]).rglob("*")):
            if f.is_file():
                found[f"{v}/{f.relative_to(s['path'])}"] = f.read_text()
    return found


def make(repo: Path, message: str, content: str, **extra_env) -> str:
    write(repo / "data" / "f.csv", content)
    write(repo / "models" / "m.pt", f"model of {content}")
    # Code changes too: commits with one tree and one second would be one commit again
    # after a rebase (a fixup of an empty commit made in the same second is that commit).
    write(repo / "code.txt", f"code of {message}\n")
    git(repo, "add", "code.txt")
    return commit(repo, message, **extra_env)


def rebase_i(repo: Path, upstream: str, sed: str, *more: str, ok: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["git", "rebase", "-i", upstream, *more], cwd=repo, capture_output=True, text=True,
                          env={**env(), "GIT_SEQUENCE_EDITOR": f"sed -i -e '{sed}'", "GIT_EDITOR": "true"})
    assert (done.returncode == 0) == ok, done.stderr
    return done


def test_amend_with_a_backup_branch_keeps_the_old_data(lake_repo):
    repo = lake_repo
    old = make(repo, "v1", "one")
    git(repo, "branch", "keep")
    write(repo / "data" / "f.csv", "two")
    git_err(repo, "commit", "-q", "--amend", "--allow-empty", "-m", "v1, amended")
    new = git(repo, "rev-parse", "HEAD")
    assert data_of(repo, "keep")["data/f.csv"] == "one", "the old commit keeps its own data"
    assert data_of(repo, new)["data/f.csv"] == "two", "the amend's own snapshot is the new commit's"
    git_err(repo, "checkout", "-q", "keep")
    assert (repo / "data" / "f.csv").read_text() == "one"
    git_err(repo, "checkout", "-q", "main")
    assert (repo / "data" / "f.csv").read_text() == "two"
    assert {old, new} <= snapshot_names(repo)


def test_a_clone_keeps_its_snapshot_when_another_clone_amends(lake_repo, lake, tmp_path):
    a = lake_repo
    x = make(a, "x", "x data")
    b = tmp_path / "clone-b"
    git(tmp_path, "clone", "-q", str(a), str(b))
    snapver(b, "init", *lake.init_args)
    assert (b / "data" / "f.csv").read_text() == "x data"
    write(a / "data" / "f.csv", "amended in A")
    git_err(a, "commit", "-q", "--amend", "--allow-empty", "-m", "x, amended")
    assert snapver(b, "show", "HEAD", "--json").json["commit"] == x
    assert data_of(b, "HEAD")["data/f.csv"] == "x data"
    write(b / "data" / "f.csv", "B's experiment")
    git_err(b, "checkout", "-q", "HEAD~1")
    git_err(b, "checkout", "-q", "main")
    assert (b / "data" / "f.csv").read_text() == "x data"


def test_rebase_edit_amend_abort_keeps_mains_snapshot(lake_repo):
    repo = lake_repo
    make(repo, "c1", "c1 data")
    c2 = make(repo, "c2", "c2 data")
    rebase_i(repo, "HEAD~2", "1s/^pick/edit/")
    edited = git(repo, "rev-parse", "HEAD")
    assert (repo / "data" / "f.csv").read_text() == "c1 data", "at an edit stop the lake is at that commit"
    write(repo / "data" / "f.csv", "edited c1")
    git_err(repo, "commit", "-q", "--amend", "--allow-empty", "-m", "c1, edited")
    amended = git(repo, "rev-parse", "HEAD")
    assert amended != edited
    assert data_of(repo, amended)["data/f.csv"] == "edited c1", "the amend at the stop snapshots its data"
    git_err(repo, "rebase", "--abort")
    assert git(repo, "rev-parse", "main") == c2
    assert (repo / "data" / "f.csv").read_text() == "c2 data", "the abort brings the lake back with HEAD"
    assert data_of(repo, "main")["data/f.csv"] == "c2 data"
    assert data_of(repo, "main~1")["data/f.csv"] == "c1 data"
    plan = snapver(repo, "gc", "--dry-run", "--json").json["result"]["decisions"]
    assert all(d["keep"] for d in plan if d["name"] in (c2, edited)), "main's snapshots are kept"
    git_err(repo, "checkout", "-q", "main~1")
    git_err(repo, "checkout", "-q", "main")
    assert (repo / "data" / "f.csv").read_text() == "c2 data"


def test_squash_takes_the_newest_data_and_the_lake_stays(lake_repo):
    repo = lake_repo
    make(repo, "base", "base data")
    c2 = make(repo, "c2", "c2 data")
    c3 = make(repo, "c3", "c3 data")
    before = lake_of(repo)
    said = rebase_i(repo, "HEAD~2", "2s/^pick/squash/").stderr
    squashed = git(repo, "rev-parse", "HEAD")
    assert squashed not in (c2, c3)
    assert data_of(repo, squashed)["data/f.csv"] == "c3 data", "the newest commit of the group"
    assert lake_of(repo) == before, "the live lake did not move back"
    assert "kept unsnapshotted" not in said
    assert {c2, c3} <= snapshot_names(repo), "the squashed commits keep their snapshots"
    assert data_of(repo, c2)["data/f.csv"] == "c2 data"


def test_fixup_of_an_older_commit_with_the_lake_elsewhere(lake_repo):
    """fixup of c2 into c1 below c3: the group's newest (c2) gives the new commit its data,
    c3's copy is c3's data, and the lake (at c3) stays."""
    repo = lake_repo
    base = make(repo, "base", "base data")
    make(repo, "c1", "c1 data")
    make(repo, "c2", "c2 data")
    make(repo, "c3", "c3 data")
    rebase_i(repo, base, "2s/^pick/fixup/")
    assert data_of(repo, "HEAD~1")["data/f.csv"] == "c2 data"
    assert data_of(repo, "HEAD")["data/f.csv"] == "c3 data"
    assert (repo / "data" / "f.csv").read_text() == "c3 data"


def _rewrite_by_hand(repo: Path, count: int) -> list[tuple[str, str]]:
    """What filter-branch / filter-repo do: the last `count` commits made again with new
    messages (git commit-tree), the branch moved to the new tip; returns (old, new) pairs."""
    olds = git(repo, "rev-list", "--reverse", f"HEAD~{count}..HEAD").split()
    parent = git(repo, "rev-parse", f"HEAD~{count}")
    pairs = []
    for old in olds:
        new = git(repo, "commit-tree", f"{old}^{{tree}}", "-p", parent, "-m", f"rewritten {old[:7]}")
        pairs.append((old, new))
        parent = new
    git(repo, "update-ref", "refs/heads/main", parent)
    return pairs


def test_remap_a_filter_repo_commit_map(lake_repo, tmp_path):
    repo = lake_repo
    make(repo, "c1", "c1 data")
    make(repo, "c2", "c2 data")
    pairs = _rewrite_by_hand(repo, 2)
    dropped = make(repo, "dropped", "dropped data")  # filter-repo writes zeros for a dropped commit
    git(repo, "reset", "-q", "--soft", pairs[-1][1])
    before = snapshot_names(repo)
    commit_map = tmp_path / "commit-map"
    commit_map.write_text("old                                      new\n"
                          + "".join(f"{o} {n}\n" for o, n in pairs) + f"{dropped} {ZERO}\n")
    out = snapver(repo, "remap", str(commit_map)).out
    assert "6 snapshot(s) made for 2 rewritten commit(s)" in out, out  # three volumes of each
    for (old, new), content in zip(pairs, ("c1 data", "c2 data")):
        assert data_of(repo, new)["data/f.csv"] == content
        assert data_of(repo, old)["data/f.csv"] == content, "the old snapshot is still there"
    assert before <= snapshot_names(repo) and dropped in snapshot_names(repo)
    plain = tmp_path / "pairs"  # filter-branch's old -> new pairs, written by hand; again: nothing to do
    plain.write_text("".join(f"{o} {n}\n" for o, n in pairs))
    assert "0 snapshot(s) made" in snapver(repo, "remap", str(plain)).out


def test_remap_refuses_bad_input_and_changes_nothing(lake_repo, tmp_path):
    repo = lake_repo
    c1 = make(repo, "c1", "c1 data")
    before = snapshot_names(repo, all_=True)
    unknown = "1234567890" * 4
    cases = {
        "missing": None,
        "bad-line": f"old new\n{c1} not-a-commit\n",
        "three-fields": f"{c1} {c1} {c1}\n",
        "empty": "\n",
        "unknown-new": f"{c1} {unknown}\n",
    }
    for name, text in cases.items():
        path = tmp_path / name
        if text is not None:
            path.write_text(text)
        result = snapver(repo, "remap", str(path), ok=False)
        assert len(result.err.strip().splitlines()) == 1 and "Traceback" not in result.err, (name, result.err)
    assert snapshot_names(repo, all_=True) == before


def test_the_socket_refuses_rewrites_not_made_in_the_callers_tree(nobody_repo, daemon_dir):
    repo = nobody_repo
    d = Snapverd(daemon_dir, [repo]).start()
    try:
        def run_git(*args):
            done = subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True,
                                  env={**env(), "SNAPVER_SKIP": "1", "HOME": "/tmp"})
            assert done.returncode == 0, done.stderr
            return done.stdout.strip()

        def ask(op, **args):
            return client.request({"op": op, "workspace": str(repo), **args}, path=d.socket, timeout=120)

        def scenario():
            (repo / "data" / "f").write_text("v1")
            run_git("commit", "-q", "--allow-empty", "-m", "v1")
            old = run_git("rev-parse", "HEAD")
            ask("snapshot")
            # Commits that were never HEAD or a branch tip here (objects only, as another
            # clone's commits fetched, or made up): not rewritten in this working tree.
            stranger = run_git("commit-tree", "HEAD^{tree}", "-m", "never checked out")
            other = run_git("commit-tree", "HEAD^{tree}", "-p", stranger, "-m", "nor this")
            refused = []
            for pairs in ([[stranger, other]], [[old, other], [stranger, other]], [[old, "ab" * 20]]):
                try:
                    ask("rewrite", pairs=pairs)
                    refused.append(None)
                except Exception as e:  # noqa: BLE001 - the refusal is the point
                    refused.append(str(e))
            run_git("commit", "-q", "--amend", "--allow-empty", "-m", "v1, amended")
            new = run_git("rev-parse", "HEAD")
            made = ask("rewrite", pairs=[[old, new]])
            names = {e["name"] for e in ask("log", all=True)}
            return old, new, other, refused, made, sorted(names)

        ok, answer = as_user(NOBODY, scenario)
        assert ok, answer
        old, new, other, refused, made, names = answer
        assert all(r and "refused" in r and "\n" not in r for r in refused), refused
        assert {s["volume"] for s in made} == {"data", "models", "logs"} and {s["name"] for s in made} == {new}
        assert other not in names, "nothing was made for a refused request"
        assert {old, new} <= set(names)
    finally:
        d.stop()


def test_a_copy_is_a_snapshot_of_its_own(lake_repo, lake):
    """copy_snapshot: same data, refuses an existing name, and either one can go first
    where the filesystem allows it (ZFS ties the old one to its copy: refused, in one line)."""
    from snapver.errors import SnapverError
    from snapver.lake import Workspace

    repo = lake_repo
    old = make(repo, "c1", "c1 data")
    new = git(repo, "commit-tree", "HEAD^{tree}", "-m", "a rewrite of c1")
    ws = Workspace.open(repo)
    source = ws.backend.find(ws.project, "data", old)
    copy = ws.backend.copy_snapshot(source, new)
    assert copy.name == new and copy.kind == "commit"
    assert (ws.backend.find(ws.project, "data", new).path / "f.csv").read_text() == "c1 data"
    try:
        ws.backend.copy_snapshot(source, new)
        raise AssertionError("a second copy of the same name was made")
    except SnapverError as e:
        assert "already exists" in str(e)
    ws.backend.destroy(ws.backend.find(ws.project, "data", new))
    assert ws.backend.find(ws.project, "data", new) is None
    assert (ws.backend.find(ws.project, "data", old).path / "f.csv").read_text() == "c1 data"
    copy = ws.backend.copy_snapshot(ws.backend.find(ws.project, "data", old), new)  # again, after its removal
    try:
        ws.backend.destroy(ws.backend.find(ws.project, "data", old))
        assert lake.backend == "btrfs", "ZFS cannot destroy the origin of a clone"
    except SnapverError as e:
        assert lake.backend == "zfs" and "rewritten commit's copy" in str(e) and "\n" not in str(e), e
    assert (ws.backend.find(ws.project, "data", new).path / "f.csv").read_text() == "c1 data"


def test_gc_after_an_amend_keeps_the_new_commits_data(lake_repo):
    """The amended-away commit is dead once its reflog expires; gc may drop it, never the copy
    the new commit holds (on ZFS the copy is a clone of it, so the old one stays "in use")."""
    repo = lake_repo
    toml = repo / "snapver.toml"
    toml.write_text(toml.read_text() + '\n[retention]\nunreachable = "1s"\n')
    git(repo, "add", "snapver.toml")
    commit(repo, "retention")
    old = make(repo, "v1", "one")
    git_err(repo, "commit", "-q", "--amend", "-m", "v1, reworded")  # no new data: the new commit copies old's
    new = git(repo, "rev-parse", "HEAD")
    git(repo, "reflog", "expire", "--expire=now", "--expire-unreachable=now", "--all")
    time.sleep(1.5)
    done = snapver(repo, "gc", "--json")
    decided = {(d["volume"], d["name"]): d for d in done.json["result"]["decisions"]}
    assert decided[("data", new)]["keep"]
    assert decided[("data", old)]["keep"] == (old in snapshot_names(repo))  # ZFS: "in use" by the copy
    assert data_of(repo, new) == {"data/f.csv": "one", "models/m.pt": "model of one"}


@pytest.mark.parametrize("how", ["upstream", "upstream-detached", "became-empty"])
def test_a_rebase_that_drops_every_commit_brings_the_lake_to_its_new_head(lake_repo, how):
    """Every commit to replay is already upstream (an amend that changed only data, rebased
    onto the commit it amended), or becomes empty when picked: no post-rewrite runs, and the
    lake must follow HEAD all the same. Found by the model-based test (lake-not-at-head after
    `git rebase`)."""
    repo = lake_repo
    if how == "became-empty":
        base = git(repo, "rev-parse", "HEAD")
        git(repo, "checkout", "-q", "-b", "keep")
        write(repo / "extra.txt", "more code")
        git(repo, "add", "extra.txt")
        target = make(repo, "upstream", "upstream data")  # code.txt as c1 makes it, and more
        git_err(repo, "checkout", "-q", "main")
        assert git(repo, "rev-parse", "HEAD") == base
        write(repo / "code.txt", "code of upstream\n")
        git(repo, "add", "code.txt")
        write(repo / "data" / "f.csv", "c1 data")
        commit(repo, "c1")
        expected = "upstream data"
    else:
        target = make(repo, "c1", "c1 data")
        git(repo, "branch", "keep")
        write(repo / "data" / "f.csv", "amended data")
        git_err(repo, "commit", "-q", "--amend", "--allow-empty", "-m", "c1, amended")
        if how == "upstream-detached":
            git_err(repo, "checkout", "-q", "--detach")
        expected = "c1 data"
    git_err(repo, "rebase", "-q", "keep")
    assert git(repo, "rev-parse", "HEAD") == target, "every commit was dropped"
    assert (repo / "data" / "f.csv").read_text() == expected, "the lake is at HEAD's data"
