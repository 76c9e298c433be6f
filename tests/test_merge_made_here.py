"""A merge commit that `git merge` makes is a new commit: it gets a snapshot of the live lake, as
`git commit` gives one, and the lake stays where it was; in a linked worktree as in the main
clone, and also when the lake did not follow HEAD's last move (reset --soft or --mixed keep the
lake, as they keep the working tree). The model-based test of Git flows found a worktree whose
lake had not followed a rebase that picked nothing (fixed since) make a merge that the hooks took
for a checkout, because its first parent was not where the lake was: the merge got no snapshot
and the lake went back to its nearest snapshotted ancestor."""

from __future__ import annotations

import pytest

from tests.fixtures.git import git
from tests.test_git_hooks import commit, git_err, lake_of, snapshot_names, write
from tests.test_rewrite import data_of


@pytest.mark.parametrize("where", ["worktree", "main clone"])
@pytest.mark.parametrize("lake_moved", ["followed", "reset --mixed"])
def test_merge_commit_gets_a_snapshot_of_the_live_lake(lake_repo, tmp_path, where, lake_moved):
    a = lake_repo
    write(a / "data" / "f.csv", "base")
    base = commit(a, "base")
    if where == "worktree":
        w = tmp_path / "wt"
        git_err(a, "worktree", "add", "-q", "-b", "w", str(w), base)
    else:
        w = a
        git(a, "branch", "w", base)
    write(a / "code.txt", "t1\n")
    git(a, "add", "code.txt")
    t1 = commit(a, "t1")  # on main
    if where == "main clone":
        git_err(a, "checkout", "-q", "w")
    git_err(w, "rebase", "-q", t1)  # w fast-forwards to t1: the lake follows
    if where == "main clone":
        git_err(a, "checkout", "-q", "main")
    write(a / "data" / "f.csv", "amended in A")
    git_err(a, "commit", "-q", "--amend", "--allow-empty", "-m", "t1, amended")  # a sibling of t1
    sibling = git(a, "rev-parse", "HEAD")
    if where == "main clone":
        git_err(a, "checkout", "-q", "w")
    if lake_moved == "reset --mixed":
        # One commit more, taken back: HEAD is at t1 again, the lake stays with what it holds.
        write(w / "data" / "undone.csv", "committed, then reset")
        commit(w, "undone")
        git_err(w, "reset", "-q", "HEAD~1")
    write(w / "data" / "live.csv", "live in w")
    before = lake_of(w)
    said = git_err(w, "merge", "-q", "--no-edit", "-m", "merge", sibling)
    merge = git(w, "rev-parse", "HEAD")
    assert git(w, "rev-parse", "HEAD^1", "HEAD^2").split() == [t1, sibling], "a real merge commit"
    assert merge in snapshot_names(a), f"the merge commit has no snapshot; the hooks said: {said}"
    assert lake_of(w) == before, f"the lake moved; the hooks said: {said}"
    assert "kept unsnapshotted" not in said and "no snapshot" not in said, said
    held = data_of(w, merge)
    assert held["data/live.csv"] == "live in w" and held["data/f.csv"] == "base"
    assert ("data/undone.csv" in held) == (lake_moved == "reset --mixed")
