"""Plain Git drives the lake: commit, checkout, switch, reset, merge, pull, amend, rebase, worktrees."""

from __future__ import annotations

import re
import stat
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.git import commit, env, git, snapver, tree_digest, write

VOLUMES = ("data", "models", "logs")


def lake_of(repo: Path) -> dict:
    return {v: tree_digest(repo / v / ".") for v in VOLUMES}


def git_err(cwd: Path, *args: str, **extra_env) -> str:
    """Run git, assert it succeeded, return what the hooks said on stderr."""
    done = subprocess.run(["git", *args], cwd=cwd, env={**env(), **extra_env}, capture_output=True, text=True)
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done.stderr


def snapshot_names(repo: Path, all_: bool = False) -> set[str]:
    args = ["log", "--json"] + (["--all"] if all_ else [])
    return {e["name"] for e in snapver(repo, *args).json}


@pytest.fixture
def history(lake_repo):
    """Three commits with different data and models: (repo, [(sha, lake digest)])."""
    states = []
    for i in range(3):
        write(lake_repo / "data" / f"part{i}.csv", f"rows {i}\n" * 100)
        write(lake_repo / "models" / "model.pt", f"weights v{i}")
        write(lake_repo / "logs" / "train.log", f"epoch {i}\n")
        states.append((commit(lake_repo, f"v{i}"), lake_of(lake_repo)))
    return lake_repo, states


def test_every_commit_is_snapshotted(history):
    repo, states = history
    names = snapshot_names(repo)
    assert {sha for sha, _ in states} <= names
    entries = {e["name"]: e for e in snapver(repo, "log", "--json").per_volume if e["volume"] == "models"}
    assert entries[states[1][0]]["subject"] == "v1"
    assert (Path(entries[states[1][0]]["path"]) / "model.pt").read_text() == "weights v1"


def test_checkout_back_and_forth_brings_the_lake_along(history):
    repo, states = history
    for sha, digest in [states[0], states[2], states[1], states[0], states[2]]:
        git_err(repo, "checkout", "-q", sha)
        assert lake_of(repo) == digest
    git_err(repo, "checkout", "-q", "main")
    assert lake_of(repo) == states[2][1]
    assert snapshot_names(repo, all_=True) == snapshot_names(repo), "clean checkouts keep no wip"


def test_branch_switch_keeps_unsnapshotted_changes(history):
    repo, states = history
    git(repo, "branch", "old", states[0][0])
    write(repo / "models" / "experiment.pt", "unsaved work")
    dirty = lake_of(repo)
    said = git_err(repo, "switch", "-q", "old")
    assert lake_of(repo) == states[0][1]
    kept = re.search(r"kept unsnapshotted changes as (\S+)", said).group(1)
    assert kept.startswith(states[2][0] + "."), "the wip belongs to the commit the lake was at"
    snapver(repo, "checkout", kept)
    assert lake_of(repo) == dirty


def test_new_branch_at_same_commit_keeps_the_lake_as_it_is(history):
    repo, _ = history
    write(repo / "data" / "wip.csv", "in progress")
    dirty = lake_of(repo)
    git_err(repo, "checkout", "-q", "-b", "feature")
    assert lake_of(repo) == dirty, "like Git with the working tree: uncommitted work comes along"


def test_reset_hard_follows_reset_soft_does_not(history):
    repo, states = history
    write(repo / "models" / "model.pt", "edited")
    git_err(repo, "reset", "-q", "--soft", "HEAD~1")
    assert (repo / "models" / "model.pt").read_text() == "edited"
    git_err(repo, "reset", "-q", "--hard", states[2][0])
    git_err(repo, "reset", "-q", "--hard", "HEAD~2")
    assert lake_of(repo) == states[0][1]
    wips = snapshot_names(repo, all_=True) - snapshot_names(repo)
    kept = [w for w in wips if w.startswith(states[2][0])]
    assert kept, "the edited model was kept before the hard reset"
    snapver(repo, "checkout", sorted(kept)[0])
    assert (repo / "models" / "model.pt").read_text() == "edited"


def test_detached_head(history):
    repo, states = history
    git_err(repo, "checkout", "-q", "--detach", states[1][0])
    assert lake_of(repo) == states[1][1]
    write(repo / "models" / "detached.pt", "x")
    sha = commit(repo, "on a detached HEAD")
    assert sha in snapshot_names(repo)


def test_single_file_checkout_leaves_the_lake(history):
    repo, states = history
    git_err(repo, "checkout", "-q", states[0][0], "--", "train.py")
    assert lake_of(repo) == states[2][1]


def test_commit_without_snapshot_takes_nearest_ancestor_with_warning(history):
    repo, states = history
    skipped = commit(repo, "made with hooks off", SNAPVER_SKIP="1")
    assert skipped not in snapshot_names(repo)
    git_err(repo, "checkout", "-q", states[0][0])
    said = git_err(repo, "checkout", "-q", skipped)
    assert "no snapshot" in said and states[2][0][:10] in said
    assert len([line for line in said.splitlines() if "warning" in line]) == 1
    assert lake_of(repo) == states[2][1]


def test_amend_gives_the_new_commit_a_snapshot_and_keeps_the_old_one(history):
    repo, states = history
    old = states[2][0]
    git_err(repo, "commit", "-q", "--amend", "--allow-empty", "-m", "v2, reworded")
    new = git(repo, "rev-parse", "HEAD")
    names = snapshot_names(repo)
    assert new in names and old in names, "snapshots are immutable: the old commit keeps its own"
    assert lake_of(repo) == states[2][1]
    git_err(repo, "checkout", "-q", old)
    assert lake_of(repo) == states[2][1]


def test_rebase_gives_rewritten_commits_snapshots_and_keeps_the_old_ones(history):
    repo, states = history
    git(repo, "checkout", "-q", "-b", "topic", states[1][0])  # hooks move the lake to v1
    write(repo / "models" / "topic.pt", "topic model")
    topic = commit(repo, "topic work")
    topic_lake = lake_of(repo)
    git_err(repo, "rebase", "-q", "main")
    rebased = git(repo, "rev-parse", "HEAD")
    assert rebased != topic
    names = snapshot_names(repo)
    assert rebased in names and topic in names
    snap = next(e for e in snapver(repo, "log", "--json").per_volume if e["name"] == rebased and e["volume"] == "models")
    assert (Path(snap["path"]) / "topic.pt").read_text() == "topic model"
    assert lake_of(repo) == topic_lake


def test_merge_commit_made_here_is_snapshotted(history):
    repo, states = history
    git(repo, "checkout", "-q", "-b", "side", states[1][0])
    write(repo / "data" / "side.csv", "side")
    commit(repo, "side work")
    git_err(repo, "checkout", "-q", "main")
    assert lake_of(repo) == states[2][1]
    git_err(repo, "merge", "-q", "--no-edit", "--no-ff", "side")
    merge = git(repo, "rev-parse", "HEAD")
    assert merge in snapshot_names(repo)
    assert lake_of(repo) == states[2][1], "the lake of a merge is its first parent's"


def test_pull_in_a_second_clone_brings_the_first_clones_data(history, lake, tmp_path):
    repo, states = history
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    snapver(clone, "init", *lake.init_args)
    assert lake_of(clone) == states[2][1]
    write(repo / "models" / "model.pt", "weights v3 from clone A")
    commit(repo, "v3")
    said = git_err(clone, "pull", "-q", "--ff-only")
    assert "lake now at" in said
    assert (clone / "models" / "model.pt").read_text() == "weights v3 from clone A"
    write(clone / "models" / "model.pt", "clone B's own experiment")
    assert (repo / "models" / "model.pt").read_text() == "weights v3 from clone A"
    git_err(clone, "checkout", "-q", states[0][0])
    assert lake_of(clone) == states[0][1]


def test_worktree_gets_its_own_lake(history, tmp_path):
    repo, states = history
    wt = tmp_path / "wt"
    said = git_err(repo, "worktree", "add", "-q", str(wt), states[1][0])
    assert "new worktree" in said
    assert lake_of(wt) == states[1][1]
    write(wt / "models" / "model.pt", "worktree experiment")
    assert (repo / "models" / "model.pt").read_text() == "weights v2"
    sha = commit(wt, "in the worktree")
    assert sha in snapshot_names(repo)
    git_err(wt, "checkout", "-q", states[0][0])
    assert lake_of(wt) == states[0][1]


@pytest.mark.parametrize("killed", [False, True], ids=["plain", "killed-hooks"])
def test_cherry_pick_and_revert_in_a_worktree_snapshot_its_live_lake(history, tmp_path, killed):
    """A new commit made by the sequencer (cherry-pick, revert) is a commit, not a checkout: its
    snapshot is the worktree's live data, and the lake stays where it is. (The model-based test
    found the cherry-pick's hooks moving W's lake back to HEAD's ancestor and snapshotting that.)"""
    repo, states = history
    wt = tmp_path / "wt"
    # W one commit behind A: the pick gets a parent of its own (on A's HEAD, in the same second,
    # it would be the very commit picked, with A's snapshot).
    git_err(repo, "worktree", "add", "-q", "-b", "w", str(wt), states[1][0])
    write(wt / "models" / "f2", "W's live data")
    live = lake_of(wt)
    fault = {"SNAPVER_FAULT": "after-snapshot-before-state"} if killed else {}
    write(repo / "code" / "t2.txt", "t2\n")
    picked = commit(repo, "t2", "code/t2.txt", **fault)
    write(repo / "code" / "t3.txt", "t3\n")
    commit(repo, "t3", "code/t3.txt", **fault)
    said = git_err(wt, "cherry-pick", picked)
    new = git(wt, "rev-parse", "HEAD")
    assert "kept unsnapshotted" not in said and "lake now at" not in said, said
    assert lake_of(wt) == live, "the lake did not move under the new commit"
    assert snapver(wt, "show", new, "--json").json["commit"] == new
    assert lake_of_snapshot(wt, new) == live, "the cherry-pick's snapshot is W's live data"
    write(wt / "models" / "f2", "W's data at the revert")
    live = lake_of(wt)
    said = git_err(wt, "revert", "--no-edit", new)
    reverted = git(wt, "rev-parse", "HEAD")
    assert "kept unsnapshotted" not in said and "lake now at" not in said, said
    assert lake_of(wt) == live
    assert lake_of_snapshot(wt, reverted) == live


def lake_of_snapshot(repo: Path, rev: str) -> dict:
    shown = snapver(repo, "show", rev, "--json").json
    return {v: tree_digest(Path(s["path"]) / ".") for v, s in shown["volumes"].items()}


def test_skip_turns_hooks_off_for_one_command(history):
    repo, states = history
    sha = commit(repo, "skipped", SNAPVER_SKIP="1")
    assert sha not in snapshot_names(repo)
    git_err(repo, "checkout", "-q", states[0][0], SNAPVER_SKIP="1")
    assert lake_of(repo) == states[2][1]


def test_a_hook_error_never_breaks_git(history):
    repo, _ = history
    state = repo / ".git" / "snapver" / "workspace.json"
    state.write_text(state.read_text().replace('"workspace": "', '"workspace": "../../'))
    said = git_err(repo, "commit", "-q", "--allow-empty", "-m", "still commits")
    lines = [line for line in said.splitlines() if line.startswith("snapver:")]
    assert len(lines) == 1 and "Git carried on" in lines[0]
    assert "still commits" in (repo / ".git" / "snapver" / "hook.log").read_text() or \
        "post-commit" in (repo / ".git" / "snapver" / "hook.log").read_text()
    assert git(repo, "log", "-1", "--format=%s") == "still commits"


def test_existing_hook_is_chained_and_restored_exactly(repo, lake):
    hook = repo / ".git" / "hooks" / "post-commit"
    original = "#!/bin/sh\necho \"$(git rev-parse HEAD)\" >> .git/my-hook-ran\n"
    hook.write_text(original)
    hook.chmod(0o750)
    snapver(repo, "init", *lake.init_args)
    sha = commit(repo, "both hooks run")
    assert (repo / ".git" / "my-hook-ran").read_text().strip() == sha
    assert sha in snapshot_names(repo)
    snapver(repo, "hooks", "uninstall")
    assert hook.read_text() == original
    assert stat.S_IMODE(hook.stat().st_mode) == 0o750
    assert not any(p.name.endswith(".pre-snapver") for p in hook.parent.iterdir())
    assert not any("snapver git hook" in p.read_text() for p in hook.parent.iterdir() if p.is_file())
    sha2 = commit(repo, "no snapver now")
    assert sha2 not in snapshot_names(repo)
    snapver(repo, "hooks", "install")
    snapver(repo, "hooks", "install")  # twice is the same as once
    assert (hook.parent / "post-commit.pre-snapver").read_text() == original
    sha3 = commit(repo, "back on")
    assert sha3 in snapshot_names(repo)


def test_chained_reference_transaction_keeps_its_stdin_and_veto(repo, lake):
    hook = repo / ".git" / "hooks" / "reference-transaction"
    hook.write_text("#!/bin/sh\ncat >> .git/refs-seen\n")
    hook.chmod(0o755)
    snapver(repo, "init", *lake.init_args)
    commit(repo, "x")
    assert "refs/heads/main" in (repo / ".git" / "refs-seen").read_text()


def test_core_hooks_path_is_honoured(repo, lake, tmp_path):
    shared = tmp_path / "shared-hooks"
    git(repo, "config", "core.hooksPath", str(shared))
    snapver(repo, "init", *lake.init_args)
    assert (shared / "post-commit").exists()
    assert not (repo / ".git" / "hooks" / "post-commit").exists()
    git(repo, "add", "snapver.toml")
    sha = commit(repo, "via hooksPath")
    assert sha in snapshot_names(repo)
