"""The core CLI on a real Btrfs: init, snapshot, log, status, checkout, diff, restore, show, reindex."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import shutil
import sqlite3
import subprocess
import tempfile
from pathlib import Path

import pytest

from tests.fixtures.btrfs import unmount
from tests.fixtures.git import commit as git_commit, disk_state, env, git, snapver, tree_digest, write

# Every commit here is settled: most tests prove a failing command changed nothing on disk.
commit = functools.partial(git_commit, settle=True)


def lake_digest(repo: Path) -> dict[str, str]:
    return {v: tree_digest(repo / v / ".") for v in ("data", "models", "logs")}


def test_init_creates_linked_volumes_kept_out_of_git(lake_repo, lake):
    for v in ("data", "models", "logs"):
        link = lake_repo / v
        assert link.is_symlink() and link.resolve().is_dir()
        assert str(link.resolve()).startswith(str(lake.root))
        if lake.backend == "btrfs":
            assert link.resolve().stat().st_ino == 256, "a volume is a Btrfs subvolume"
        else:
            assert os.path.ismount(link.resolve()), "a volume is a mounted ZFS dataset"
    write(lake_repo / "data" / "x.csv", "a,b\n")
    assert git(lake_repo, "status", "--porcelain") == ""
    toml = (lake_repo / "snapver.toml").read_text()
    assert 'volumes = ["data", "models", "logs"]' in toml
    assert (lake_repo / ".git" / "snapver" / "workspace.json").exists()


def test_custom_volumes(repo, lake):
    snapver(repo, "init", *lake.init_args, "--volume", "raw", "--volume", "ckpt")
    assert sorted(p.name for p in repo.iterdir() if p.is_symlink()) == ["ckpt", "raw"]


def test_snapshot_names_are_commit_ids(lake_repo):
    write(lake_repo / "models" / "m.bin", os.urandom(4096))
    head = commit(lake_repo, "train v1")
    entries = [e for e in snapver(lake_repo, "log", "--json").json if e["commit"] == head]
    assert len(entries) == 1, "log --json: one object per version, its volumes inside"
    e = entries[0]
    assert set(e["volumes"]) == {"data", "models", "logs"}
    assert e["name"] == e["commit"] == head
    assert e["kind"] == "commit"
    assert e["subject"] == "train v1"
    for snap in e["volumes"].values():
        assert Path(snap["path"]).name == head


def test_wip_snapshot_name_and_log_all(lake_repo):
    head = commit(lake_repo, "base")
    write(lake_repo / "logs" / "run.log", "epoch 1\n")
    snapver(lake_repo, "snapshot", "--wip", "-m", "mid-training")
    wips = [e for e in snapver(lake_repo, "log", "--all", "--json").per_volume if e["kind"] == "wip"]
    assert len(wips) == 3
    assert all(re.fullmatch(head + r"\.\d{8}T\d{6}\.\d{6}Z", e["name"]) for e in wips)
    assert all(e["message"] == "mid-training" for e in wips)
    assert all(e["kind"] == "commit" for e in snapver(lake_repo, "log", "--json").json)


def test_twenty_checkouts_back_and_forth_are_byte_identical(lake_repo):
    write(lake_repo / "data" / "train" / "a.bin", os.urandom(300_000))
    write(lake_repo / "models" / "model.pt", os.urandom(200_000))
    v1 = commit(lake_repo, "v1")
    first = lake_digest(lake_repo)
    write(lake_repo / "data" / "train" / "b.bin", os.urandom(100_000))
    write(lake_repo / "models" / "model.pt", os.urandom(250_000))
    os.remove(lake_repo / "data" / "train" / "a.bin")
    v2 = commit(lake_repo, "v2")
    second = lake_digest(lake_repo)
    assert first != second
    before = {e["name"] for e in snapver(lake_repo, "log", "--all", "--json").json}
    assert {v1, v2} <= before
    for i in range(20):
        rev, expected = (v1, first) if i % 2 == 0 else (v2, second)
        out = snapver(lake_repo, "checkout", rev)
        assert "kept" not in out.out, "nothing was changed, so nothing needs keeping"
        assert lake_digest(lake_repo) == expected
    names = {e["name"] for e in snapver(lake_repo, "log", "--all", "--json").json}
    assert names == before, "checkouts keep every snapshot and add none"


def test_checkout_keeps_unsnapshotted_changes_as_wip(lake_repo):
    v1 = commit(lake_repo, "v1")
    write(lake_repo / "models" / "best.pt", b"precious weights")
    dirty = lake_digest(lake_repo)
    assert {r["volume"]: r["changed"] for r in snapver(lake_repo, "status", "--json").json}["models"]
    out = snapver(lake_repo, "checkout", v1).out
    kept = re.search(r"kept unsnapshotted changes as (\S+)", out).group(1)
    assert kept.startswith(v1 + ".")
    assert not (lake_repo / "models" / "best.pt").exists()
    snapver(lake_repo, "checkout", kept)
    assert lake_digest(lake_repo) == dirty
    assert (lake_repo / "models" / "best.pt").read_bytes() == b"precious weights"


def test_checkout_keeps_a_live_volume_whose_snapshot_is_gone(lake_repo):
    # The live volume matches its last (wip) snapshot, which is then removed, as
    # retention may thin it: the live data exists nowhere else and must be kept.
    repo = lake_repo
    base = git(repo, "rev-parse", "HEAD")
    write(repo / "data" / "x.txt", "v1")
    commit(repo, "v1")
    write(repo / "data" / "x.txt", "only here")
    snapver(repo, "snapshot", "--wip", "-m", "w")
    name = next(e["name"] for e in snapver(repo, "log", "--all", "--json").json if e["kind"] == "wip")
    from snapver.lake import Workspace

    ws = Workspace.open(repo)
    for volume in ws.volumes:
        ws.backend.destroy(ws.backend.find(ws.project, volume, name))
    ws.catalog.close()
    result = snapver(repo, "checkout", base)
    assert "kept" in result.out + result.err
    kept = [e for e in snapver(repo, "log", "--all", "--json").per_volume if e["kind"] == "wip" and e["volume"] == "data"]
    assert len(kept) == 1 and (Path(kept[0]["path"]) / "x.txt").read_text() == "only here"


def test_status_reports_changed_volumes(lake_repo):
    commit(lake_repo, "v1")
    assert not any(r["changed"] for r in snapver(lake_repo, "status", "--json").json)
    write(lake_repo / "data" / "new.csv", "1\n")
    rows = {r["volume"]: r["changed"] for r in snapver(lake_repo, "status", "--json").json}
    assert rows == {"data": True, "models": False, "logs": False}
    (lake_repo / "data" / "new.csv").read_text()  # reading is not changing


def test_checkout_of_one_volume(lake_repo):
    write(lake_repo / "models" / "m.pt", "old")
    write(lake_repo / "data" / "d.csv", "old")
    v1 = commit(lake_repo, "v1")
    write(lake_repo / "models" / "m.pt", "new")
    write(lake_repo / "data" / "d.csv", "new")
    commit(lake_repo, "v2")
    snapver(lake_repo, "checkout", v1, "--volume", "models")
    assert (lake_repo / "models" / "m.pt").read_text() == "old"
    assert (lake_repo / "data" / "d.csv").read_text() == "new"


def test_restore_deleted_file_leaves_the_rest(lake_repo):
    write(lake_repo / "models" / "keep.pt", "v1 weights")
    write(lake_repo / "models" / "other.pt", "other")
    commit(lake_repo, "v1")
    os.remove(lake_repo / "models" / "keep.pt")
    write(lake_repo / "models" / "other.pt", "other, edited")
    out = snapver(lake_repo, "restore", "HEAD", "models/keep.pt")
    assert "restored models/keep.pt" in out.out
    assert (lake_repo / "models" / "keep.pt").read_text() == "v1 weights"
    assert (lake_repo / "models" / "other.pt").read_text() == "other, edited"


def test_restore_folder_to_elsewhere(lake_repo, tmp_path):
    write(lake_repo / "data" / "set" / "a.txt", "a")
    write(lake_repo / "data" / "set" / "b.txt", "b")
    commit(lake_repo, "v1")
    snapver(lake_repo, "restore", "HEAD", "data/set", "--to", str(tmp_path / "copy"))
    assert tree_digest(tmp_path / "copy") == tree_digest(lake_repo / "data" / "set")


def test_restore_over_a_changed_file_keeps_it_first(lake_repo):
    write(lake_repo / "models" / "m.pt", "committed")
    commit(lake_repo, "v1")
    write(lake_repo / "models" / "m.pt", "edited, not committed")
    snapver(lake_repo, "restore", "HEAD", "models/m.pt")
    assert (lake_repo / "models" / "m.pt").read_text() == "committed"
    wip = [e for e in snapver(lake_repo, "log", "--all", "--json").json if e["kind"] == "wip"]
    kept = Path(wip[0]["volumes"]["models"]["path"])
    assert (kept / "m.pt").read_text() == "edited, not committed"


def test_diff_between_snapshots_and_live(lake_repo):
    write(lake_repo / "data" / "same.csv", "same")
    write(lake_repo / "data" / "edit.csv", "before")
    write(lake_repo / "data" / "gone.csv", "x")
    v1 = commit(lake_repo, "v1")
    write(lake_repo / "data" / "edit.csv", "after!")
    os.remove(lake_repo / "data" / "gone.csv")
    write(lake_repo / "data" / "sub" / "new.csv", "n")
    expected = {"edit.csv": "changed", "gone.csv": "deleted", "sub/": "added", "sub/new.csv": "added"}
    live = snapver(lake_repo, "diff", v1, "--json").json
    assert {c["path"]: c["change"] for c in live["data"]} == expected
    assert live["models"] == [] and live["logs"] == []
    v2 = commit(lake_repo, "v2")
    snap = snapver(lake_repo, "diff", v1, v2, "--json").json
    assert {c["path"]: c["change"] for c in snap["data"]} == expected
    text = snapver(lake_repo, "diff", v1, v2).out
    assert "M data/edit.csv" in text and "- data/gone.csv" in text


def test_show(lake_repo):
    write(lake_repo / "models" / "m.pt", os.urandom(100_000))
    head = commit(lake_repo, "shown")
    shown = snapver(lake_repo, "show", "HEAD", "--json", "--space").json
    assert shown["commit"] == head and shown["info"]["subject"] == "shown"
    assert shown["volumes"]["models"]["referenced"] >= 100_000
    assert "subject  shown" in snapver(lake_repo, "show", head[:8]).out


def test_reindex_after_losing_the_catalog_gives_the_same_log(lake_repo, lake):
    for i in range(3):
        write(lake_repo / "data" / f"{i}.csv", str(i))
        commit(lake_repo, f"v{i}")
    write(lake_repo / "logs" / "x.log", "x")
    snapver(lake_repo, "snapshot", "--wip")
    before = snapver(lake_repo, "log", "--all", "--json").json
    (lake.root / "catalog.db").unlink()
    snapver(lake_repo, "reindex")
    assert snapver(lake_repo, "log", "--all", "--json").json == before
    with contextlib.closing(sqlite3.connect(lake.root / "catalog.db")) as catalog:
        rows = catalog.execute("SELECT count(*) FROM snapshots").fetchone()
    assert rows[0] == sum(len(e["volumes"]) for e in before)


def test_clone_joins_history_with_its_own_lake(lake_repo, lake, tmp_path):
    write(lake_repo / "models" / "m.pt", "from clone A")
    commit(lake_repo, "v1")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(lake_repo), str(clone))
    snapver(clone, "init", *lake.init_args)
    assert (clone / "models" / "m.pt").read_text() == "from clone A"
    write(clone / "models" / "m.pt", "clone B's own work")
    assert (lake_repo / "models" / "m.pt").read_text() == "from clone A"
    assert (clone / "models").resolve() != (lake_repo / "models").resolve()


# ------------------------------------------------------------------- bad input

def one_line_error(result) -> str:
    assert result.code != 0
    lines = [line for line in result.err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("snapver: "), result.err
    assert "Traceback" not in result.err
    return lines[0]


def test_init_outside_git(tmp_path, lake):
    before = disk_state(tmp_path, lake.root)
    line = one_line_error(snapver(tmp_path, "init", *lake.init_args, ok=False))
    assert "not inside a Git working tree" in line
    assert disk_state(tmp_path, lake.root) == before


def test_init_on_a_filesystem_without_snapshots(repo):
    before = disk_state(repo)
    line = one_line_error(snapver(repo, "init", ok=False))
    assert "ext" in line and "--image" in line
    assert disk_state(repo) == before


def test_second_init(lake_repo, lake):
    before = disk_state(lake_repo, lake.root)
    line = one_line_error(snapver(lake_repo, "init", *lake.init_args, ok=False))
    assert "already set up" in line
    assert disk_state(lake_repo, lake.root) == before


@pytest.mark.parametrize("name", ["../x", "a b", "-rf", "", "a/b", "x" * 80, "é", "a\nb", "$(reboot)"])
def test_invalid_volume_names(repo, lake, name):
    before = disk_state(repo, lake.root)
    line = one_line_error(snapver(repo, "init", *lake.init_args, "--volume", name, ok=False))
    assert "not a valid volume name" in line
    assert disk_state(repo, lake.root) == before


def test_init_refuses_a_volume_that_exists_in_the_tree(repo, lake):
    (repo / "data").mkdir()
    before = disk_state(repo, lake.root)
    line = one_line_error(snapver(repo, "init", *lake.init_args, ok=False))
    assert "already exists" in line
    assert disk_state(repo, lake.root) == before


@pytest.mark.parametrize("rev", ["nonexistent", "HEAD~99", "-x", "a" * 40, "HEAD:train.py", "../.."])
def test_rev_that_is_not_a_commit(lake_repo, lake, rev):
    commit(lake_repo, "v1")
    before = disk_state(lake_repo, lake.root)
    for args in (["checkout", "--", rev], ["show", "--", rev], ["diff", "--", rev], ["restore", "--", rev, "data/x"]):
        line = one_line_error(snapver(lake_repo, *args, ok=False))
        assert "not a commit" in line or "no snapshot" in line, line
    assert disk_state(lake_repo, lake.root) == before


def test_commit_without_snapshot_names_nearest_ancestor(lake_repo, lake):
    v1 = commit(lake_repo, "v1")
    subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "no snapshot"], cwd=lake_repo,
                   env={**env(), "SNAPVER_SKIP": "1"}, check=True)
    before = disk_state(lake_repo, lake.root)
    line = one_line_error(snapver(lake_repo, "checkout", "HEAD", ok=False))
    assert "has no snapshot" in line and v1[:10] in line
    assert disk_state(lake_repo, lake.root) == before


@pytest.mark.parametrize("path", ["../etc/passwd", "data/../../x", "/etc/passwd", "models/out/passwd",
                                  "models/out", "models", "train.py", ""])
def test_restore_paths_that_leave_the_volume(lake_repo, lake, path):
    (lake_repo / "models" / "out").symlink_to("/etc")
    commit(lake_repo, "v1")
    before = disk_state(lake_repo, lake.root)
    one_line_error(snapver(lake_repo, "restore", "HEAD", path, ok=False))
    assert disk_state(lake_repo, lake.root) == before


def test_snapshot_before_any_commit(tmp_path, lake):
    repo = tmp_path / "empty"
    git(tmp_path, "init", "-q", str(repo))
    snapver(repo, "init", *lake.init_args)
    line = one_line_error(snapver(repo, "snapshot", ok=False))
    assert "no commit yet" in line


def test_commands_outside_a_snapver_repo(repo):
    line = one_line_error(snapver(repo, "log", ok=False))
    assert "snapver init" in line


# ------------------------------------------------------------------- the embedded default

def test_init_with_image_makes_and_reuses_a_btrfs_image(tmp_path, repo):
    image = tmp_path / "lake.img"
    mnt = tmp_path / "lake"
    try:
        out = snapver(repo, "init", "--image", str(image), "--size", "300M")
        assert image.stat().st_blocks * 512 < 300 * 1024**2, "the image is sparse"
        assert str(mnt) in out.out
        write(repo / "data" / "d.csv", "1")
        git(repo, "add", "snapver.toml")
        git(repo, "commit", "-q", "-m", "v1")
        snapver(repo, "snapshot")
        clone = tmp_path / "clone"
        git(tmp_path, "clone", "-q", str(repo), str(clone))
        snapver(clone, "init")  # snapver.toml names the image: the clone joins it
        assert (clone / "data" / "d.csv").read_text() == "1"
        # After a reboot the image is no longer mounted: the next run as root mounts it.
        unmount(mnt)
        assert snapver(repo, "status", "--json").json[0]["volume"] == "data"
        assert (repo / "data" / "d.csv").read_text() == "1"
    finally:
        unmount(mnt)


def test_image_needs_root():
    home = Path(tempfile.mkdtemp(prefix="snapver-nobody-"))  # pytest's tmp_path is root-only
    try:
        repo = home / "r"
        git(home, "init", "-q", str(repo))
        subprocess.run(["chown", "-R", "nobody:nogroup", str(home)], check=True)
        result = snapver(repo, "init", "--image", str(home / "x.img"), "--size", "1G", ok=False, user="nobody")
        assert "needs root" in one_line_error(result)
        assert not (home / "x.img").exists()
    finally:
        shutil.rmtree(home)


@pytest.mark.parametrize("size", ["big", "-1G", "0"])
def test_bad_image_size(repo, tmp_path, size):
    line = one_line_error(snapver(repo, "init", "--image", str(tmp_path / "x.img"), "--size", size, ok=False))
    assert "not a size" in line
    assert not (tmp_path / "x.img").exists()


def test_image_too_small(repo, tmp_path):
    before = disk_state(repo)
    line = one_line_error(snapver(repo, "init", "--image", str(tmp_path / "x.img"), "--size", "10M", ok=False))
    assert "at least" in line
    assert not (tmp_path / "x.img").exists() and disk_state(repo) == before


def test_init_with_pool_image_makes_and_reuses_a_zfs_pool(zfs_pool, tmp_path, repo):
    """The ZFS twin of --image: a file-backed pool made, used, and joined by a clone."""
    from tests.fixtures.zfs import destroy_pool

    image = tmp_path / f"pv{os.urandom(3).hex()}.img"
    pool = image.stem
    try:
        out = snapver(repo, "init", "--pool-image", str(image), "--size", "256M")
        assert f"{pool}/snapver (zfs)" in out.out
        assert image.stat().st_blocks * 512 < 256 * 1024**2, "the pool file is sparse"
        write(repo / "models" / "m.pt", "zfs weights")
        git(repo, "add", "snapver.toml")
        git(repo, "commit", "-q", "-m", "v1")
        clone = tmp_path / "clone"
        git(tmp_path, "clone", "-q", str(repo), str(clone))
        snapver(clone, "init")  # snapver.toml names the pool image: the clone joins it
        assert (clone / "models" / "m.pt").read_text() == "zfs weights"
        line = one_line_error(snapver(repo, "init", "--pool-image", str(image), "--image", "x", ok=False))
        assert "--pool-image" in line
    finally:
        destroy_pool(pool)


@pytest.mark.parametrize("spec, error", [
    ("nosuchpool/lake", "does not exist"),
    ("bad name/x", "not a valid ZFS dataset name"),
    ("-o/x", "not a valid ZFS dataset name"),
    ("tank/x;reboot", "not a valid ZFS dataset name"),
])
def test_zfs_lake_that_does_not_exist_or_is_invalid(zfs_pool, repo, spec, error):
    before = disk_state(repo)
    line = one_line_error(snapver(repo, "init", "--backend", "zfs", "--lake", spec, ok=False))
    assert error in line
    assert disk_state(repo) == before
