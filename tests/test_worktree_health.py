"""Health of the working tree and hostile files in volumes (issue 14, items 9 and 10).

Item 9: each volume is a symlink <worktree>/<volume> -> its live volume; a link that went
missing, was replaced by a plain folder or points elsewhere is reported by `status` and
`doctor`, and put back by `doctor --repair` and `snapver checkout HEAD` (a plain folder's
files moved into the volume first, never deleted). Item 10: a FIFO, or a symlink to one,
with a model's or a metrics file's name blocks nothing.
Every test runs on Btrfs and on zfs-fuse (the `lake` fixture).
"""

from __future__ import annotations

import contextlib
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fixtures.git import env, git, snapver
from tests.fixtures.pause import paused

VOLUMES = ("data", "models", "logs")
SNAPVER = [sys.executable, "-m", "snapver"]


def git_err(cwd: Path, *args: str, timeout: float = 120) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, env=env(), capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done.stderr


def live(repo: Path, volume: str) -> Path:
    return Path(next(r for r in snapver(repo, "status", "--json").json if r["volume"] == volume)["path"])


def is_linked(repo: Path, volume: str) -> bool:
    link = repo / volume
    return link.is_symlink() and os.path.realpath(link) == os.path.realpath(live(repo, volume))


def files(root: Path) -> dict[str, str]:
    out = {}
    for dirpath, _, names in os.walk(root):
        for n in names:
            p = Path(dirpath, n)
            out[str(p.relative_to(root))] = p.read_text()
    return out


# ---------------------------------------------------------------- item 9: volume links

@pytest.fixture
def tracked_then_versioned(repo, lake):
    """A project whose data/ was tracked by Git (commit `old`), then handed to snapver."""
    (repo / "data").mkdir()
    (repo / "data" / "old.csv").write_text("tracked by git\n")
    git(repo, "add", "data")
    git(repo, "commit", "-q", "-m", "data in git")
    old = git(repo, "rev-parse", "HEAD")
    git(repo, "rm", "-q", "-r", "data")
    git(repo, "commit", "-q", "-m", "data leaves git")
    snapver(repo, "init", *lake.init_args)
    git(repo, "add", "snapver.toml")
    git(repo, "commit", "-q", "-m", "snapver")
    (repo / "data" / "rows.csv").write_text("versioned\n")
    git_err(repo, "commit", "-q", "--allow-empty", "-m", "rows")
    return repo, old


def test_visiting_a_commit_that_tracked_the_folder_and_back_puts_the_link_back(tracked_then_versioned):
    repo, old = tracked_then_versioned
    git_err(repo, "checkout", "-q", old)
    assert (repo / "data" / "old.csv").read_text() == "tracked by git\n"  # Git's own folder there
    said = git_err(repo, "checkout", "-q", "main")
    assert is_linked(repo, "data"), f"no link to the volume after coming back: {said}"
    assert (repo / "data" / "rows.csv").read_text() == "versioned\n"
    assert "repaired: data" in said
    status = snapver(repo, "status", "--json").json
    assert all(r["link"] is None for r in status)


def test_a_missing_link_alone_is_put_back_by_the_post_checkout_hook(lake_repo):
    (lake_repo / "data" / "f").write_text("x")
    git_err(lake_repo, "commit", "-q", "--allow-empty", "-m", "f")
    git(lake_repo, "branch", "other")
    (lake_repo / "data").unlink()  # `git clean -fdx` does this to the link
    # The lake is already at the commit checked out: only the link check calls Python.
    said = git_err(lake_repo, "checkout", "-q", "other")
    assert is_linked(lake_repo, "data"), said
    assert (lake_repo / "data" / "f").read_text() == "x"


def test_status_and_doctor_report_each_broken_link(lake_repo, tmp_path):
    (lake_repo / "data").unlink()  # missing
    (lake_repo / "models").unlink()
    (lake_repo / "models").mkdir()  # a plain folder
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (lake_repo / "logs").unlink()
    (lake_repo / "logs").symlink_to(elsewhere)  # pointing elsewhere

    rows = {r["volume"]: r for r in snapver(lake_repo, "status", "--json").json}
    assert "missing" in rows["data"]["link"]
    assert "plain folder" in rows["models"]["link"]
    assert str(elsewhere) in rows["logs"]["link"]
    text = snapver(lake_repo, "status").out.splitlines()
    assert len([line for line in text if "LINK BROKEN" in line]) == 3

    result = snapver(lake_repo, "doctor", ok=False)
    assert len([line for line in result.out.splitlines() if line.startswith("volume link:")]) == 3
    assert "nothing interrupted" not in result.out
    report = snapver(lake_repo, "doctor", "--json", ok=False).json
    assert not report["clean"] and len(report["links"]) == 3

    # doctor --repair puts all three back and leaves what the stray link pointed to alone.
    (elsewhere / "keep.txt").write_text("not ours")
    repaired = snapver(lake_repo, "doctor", "--repair")
    assert all(is_linked(lake_repo, v) for v in VOLUMES), repaired.out
    assert (elsewhere / "keep.txt").read_text() == "not ours"
    assert snapver(lake_repo, "doctor", "--json").json["clean"]
    assert all(r["link"] is None for r in snapver(lake_repo, "status", "--json").json)


def test_git_clean_then_mkdir_files_go_into_the_volume_nothing_deleted(lake_repo):
    (lake_repo / "data" / "f.csv").write_text("in the volume\n")
    (lake_repo / "data" / "sub").mkdir()
    (lake_repo / "data" / "sub" / "a").write_text("volume a\n")
    git_err(lake_repo, "commit", "-q", "--allow-empty", "-m", "data")
    head = git(lake_repo, "rev-parse", "HEAD")
    git(lake_repo, "clean", "-q", "-fdx")
    assert not os.path.lexists(lake_repo / "data")
    (lake_repo / "data" / "sub").mkdir(parents=True)  # a script's `mkdir -p data/sub`
    (lake_repo / "data" / "new.csv").write_text("written to the plain folder\n")
    (lake_repo / "data" / "f.csv").write_text("a clash\n")
    (lake_repo / "data" / "sub" / "b").write_text("plain b\n")
    (lake_repo / "data" / "sub" / "a").write_text("plain a\n")
    (lake_repo / "data" / "link").symlink_to("/etc/hostname")  # moved as a link, never followed

    assert "plain folder" in snapver(lake_repo, "status", "--json").json[0]["link"]
    out = snapver(lake_repo, "checkout", "HEAD").out
    data_line = next(line for line in out.splitlines() if line.startswith("data "))
    assert "already at" not in data_line, out
    assert "repaired: data" in out and "2 under a new name" in out, out
    assert is_linked(lake_repo, "data")

    got = files(lake_repo / "data")
    assert got["f.csv"] == "in the volume\n" and got["sub/a"] == "volume a\n"
    assert got["new.csv"] == "written to the plain folder\n" and got["sub/b"] == "plain b\n"
    clashes = {k: v for k, v in got.items() if ".from-plain-folder-" in k}
    assert sorted(clashes.values()) == ["a clash\n", "plain a\n"]
    assert os.readlink(lake_repo / "data" / "link") == "/etc/hostname"

    # The next commit versions what was written to the plain folder.
    git_err(lake_repo, "commit", "-q", "--allow-empty", "-m", "after repair")
    snap = Path(snapver(lake_repo, "show", "HEAD", "--json").json["volumes"]["data"]["path"])
    assert (snap / "new.csv").read_text() == "written to the plain folder\n"
    assert (snap / "f.csv").read_text() == "in the volume\n"
    assert head != git(lake_repo, "rev-parse", "HEAD")


def test_checkout_head_says_already_at_only_for_linked_volumes(lake_repo):
    git_err(lake_repo, "commit", "-q", "--allow-empty", "-m", "one")
    out = snapver(lake_repo, "checkout", "HEAD").out
    assert out.count("already at") == 3
    (lake_repo / "models").unlink()
    out = snapver(lake_repo, "checkout", "HEAD").out
    assert out.count("already at") == 2 and "repaired: models" in out
    assert is_linked(lake_repo, "models")


def test_a_folder_git_tracks_is_left_alone_and_said(lake_repo):
    git_err(lake_repo, "commit", "-q", "--allow-empty", "-m", "one")
    (lake_repo / "logs").unlink()
    (lake_repo / "logs").mkdir()
    (lake_repo / "logs" / "t.log").write_text("tracked\n")
    git(lake_repo, "add", "-f", "logs/t.log")
    result = snapver(lake_repo, "checkout", "HEAD", ok=False)
    assert "Git tracks" in result.out and "logs" in result.out
    assert (lake_repo / "logs" / "t.log").read_text() == "tracked\n"
    assert not (lake_repo / "logs").is_symlink()


# ---------------------------------------------------------------- item 10: hostile files

def test_fifos_with_a_models_or_a_metrics_files_name_block_nothing(lake_repo, tmp_path):
    toml = lake_repo / "snapver.toml"
    toml.write_text(toml.read_text() + '\n[registry]\nmetrics = ["logs/metrics.json", "models/m.json"]\n')
    git(lake_repo, "add", "snapver.toml")
    models = lake_repo / "models"
    (models / "ok.pt").write_bytes(pickle.dumps({"w": [1, 2, 3]}))
    os.mkfifo(models / "x.pt")
    os.mkfifo(lake_repo / "logs" / "metrics.json")
    outside = tmp_path / "outside.pt"
    os.mkfifo(outside)
    (models / "out.pt").symlink_to(outside)
    os.mkfifo(tmp_path / "m.json")
    (models / "m.json").symlink_to(tmp_path / "m.json")
    fifos = [models / "x.pt", lake_repo / "logs" / "metrics.json", outside, tmp_path / "m.json"]
    try:
        said = git_err(lake_repo, "commit", "-q", "-m", "with fifos", timeout=60)
    except subprocess.TimeoutExpired:
        pytest.fail("git commit hung on a FIFO in a volume")
    finally:
        for fifo in fifos:  # a hook stuck in open() would get its writer and go on
            with contextlib.suppress(OSError):
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
    assert "snapshot" in said
    assert "metrics.json is not a regular file" in said
    scanned = snapver(lake_repo, "scan", "HEAD", "--json").json
    paths = {f["path"] for f in scanned["models"]}
    assert paths == {"ok.pt"}, scanned
    # `snapver diff` walks the live volume: a FIFO that replaced a file blocks it neither.
    (models / "ok.pt").unlink()
    os.mkfifo(models / "ok.pt")
    try:
        result = snapver(lake_repo, "diff", "HEAD", "--json")
    except subprocess.TimeoutExpired:
        pytest.fail("snapver diff hung on a FIFO in a volume")
    assert "ok.pt" in result.out


# ---------------------------------------------------------------- item 9: a killed plain-folder move

def plain_folder_with_files(repo: Path) -> dict[str, str]:
    """data/ replaced by a plain folder holding files the volume has not got: (every file, as
    the repaired volume must hold them)."""
    (repo / "data" / "kept.csv").write_text("in the volume\n")
    git_err(repo, "commit", "-q", "--allow-empty", "-m", "data")
    (repo / "data").unlink()
    (repo / "data" / "sub").mkdir(parents=True)
    (repo / "data" / "a.csv").write_text("plain a\n")
    (repo / "data" / "b.csv").write_text("plain b\n")
    for i in range(20):
        (repo / "data" / "sub" / f"part{i}.csv").write_text(f"plain part {i}\n")
    return {"kept.csv": "in the volume\n", **files(repo / "data")}


def everything_somewhere(repo: Path, volume: Path, want: dict[str, str]) -> None:
    """Every file is whole in the plain folder or in the volume (temporary copies aside)."""
    plain, vol = files(repo / "data"), files(volume)
    for rel, text in want.items():
        assert plain.get(rel) == text or vol.get(rel) == text, f"{rel} lost: {plain} {vol}"


@pytest.mark.parametrize("point, then", [("move-copying#3", "doctor"), ("move-copied#3", "doctor"),
                                          ("move-placed#3", "doctor"), ("move-copied#1", "commit")])
def test_a_plain_folder_move_killed_anywhere_loses_nothing_and_doctor_finishes_it(lake_repo, point, then):
    want = plain_folder_with_files(lake_repo)
    volume = live(lake_repo, "data")
    crashed = subprocess.run([*SNAPVER, "checkout", "HEAD"], cwd=lake_repo, capture_output=True, text=True,
                             env={**env(), "SNAPVER_FAULT": point}, timeout=120)
    assert crashed.returncode == -9, crashed.stderr  # a, b moved; killed at sub (#3) or at a (#1)
    everything_somewhere(lake_repo, volume, want)
    temps = [k for k in files(volume) if ".snapver-move-" in k]
    assert bool(temps) == point.startswith("move-copied"), temps  # the kill left its partial copy

    report = snapver(lake_repo, "doctor", "--json", ok=False).json
    (op,) = report["interrupted"]
    assert op["kind"] == "move" and op["intent"]["volume"] == "data", op
    assert any("plain folder" in line for line in report["links"])

    if then == "commit":
        # The next command that takes the lock (here the post-commit hook) finishes the move's
        # entry first, so no temporary copy goes into history; the folder is still reported.
        git_err(lake_repo, "commit", "-q", "--allow-empty", "-m", "after the kill")
        snap = Path(snapver(lake_repo, "show", "HEAD", "--json").json["volumes"]["data"]["path"])
        assert not [k for k in files(snap) if ".snapver-" in k], files(snap)
        everything_somewhere(lake_repo, volume, want)
        assert snapver(lake_repo, "doctor", "--json", ok=False).json["interrupted"] == []
    fixed = snapver(lake_repo, "doctor", "--repair")
    assert "move of data/" in fixed.out or then == "commit", fixed.out
    assert is_linked(lake_repo, "data"), fixed.out
    assert files(lake_repo / "data") == want, "every file in the volume once, no temporary copy"
    assert snapver(lake_repo, "doctor", "--json").json["clean"]


def test_a_file_written_during_the_move_stays_and_is_moved_next_time(lake_repo):
    want = plain_folder_with_files(lake_repo)
    with paused([*SNAPVER, "checkout", "HEAD"], lake_repo, "move-copied#3") as proc:  # sub copied, not in place
        # A training script still writing to the plain folder, after the copy was made.
        (lake_repo / "data" / "sub" / "part0.csv").write_text("rewritten during the move\n")
    out, err = proc.out, proc.err
    assert proc.returncode == 1 and "something is writing there" in out, out + err
    assert (lake_repo / "data" / "sub" / "part0.csv").read_text() == "rewritten during the move\n"
    assert os.listdir(lake_repo / "data") == ["sub"] and os.listdir(lake_repo / "data" / "sub") == ["part0.csv"]
    snapver(lake_repo, "doctor", "--repair")
    got = files(lake_repo / "data")
    aside = [k for k in got if k.startswith("sub/part0.csv.from-plain-folder-")]
    assert len(aside) == 1 and got.pop(aside[0]) == "rewritten during the move\n", got
    assert got == want and is_linked(lake_repo, "data"), "the copy taken before, the new write beside it"


