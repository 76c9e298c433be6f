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

from tests.fixtures.git import env, git, snapver

VOLUMES = ("data", "models", "logs")


def write(path: Path, content: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(content)


def git_err(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, env=env(), capture_output=True, text=True)
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done.stderr


def commit(repo: Path, message: str) -> str:
    git_err(repo, "commit", "-q", "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD")


def retention(repo: Path, text: str) -> None:
    """A [retention] table in snapver.toml, committed."""
    toml = repo / "snapver.toml"
    toml.write_text(toml.read_text() + f"\n[retention]\n{text}\n")
    git(repo, "add", "snapver.toml")
    commit(repo, "retention")


def on_disk(repo: Path) -> set[tuple[str, str]]:
    return {(e["volume"], e["name"]) for e in snapver(repo, "log", "--all", "--json").json}


def plan(repo: Path) -> dict[tuple[str, str], dict]:
    return {(d["volume"], d["name"]): d for d in snapver(repo, "gc", "--dry-run", "--json").json}


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


@pytest.mark.parametrize("setting, error", [('kept = "soon"', "not a duration"), ("kept = 30", "not understood"),
                                            ('keep = "30d"', "not a setting")])
def test_bad_kept_setting_is_one_line(lake_repo, setting, error):
    before = on_disk(lake_repo)
    toml = lake_repo / "snapver.toml"
    toml.write_text(toml.read_text() + f"\n[retention]\n{setting}\n")
    result = snapver(lake_repo, "gc", ok=False)
    assert error in result.err and len(result.err.strip().splitlines()) == 1, result.err
    assert on_disk(lake_repo) == before
