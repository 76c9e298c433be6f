"""Where a ZFS live volume is mounted (snapver/backends/zfslive.py), on a real pool.

Each checkout mounts the new live dataset at a path no dataset had before and points the
volume's link at it, so that an NFS client crosses into the new filesystem instead of
reading the one it had crossed into (tests/test_vm_nfs_lake.py proves that part in the
VM). Here: the link moves, the replaced dataset goes to history read-only (destroyed, its
folder too, when it holds no snapshot), gc deletes one a checkout could not destroy then,
and a lake made before (live datasets mounted at the volume's path itself) turns into
the new layout at its first checkout, with nothing lost.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from tests.fixtures.git import git, snapver, tree_digest

pytestmark = pytest.mark.parametrize("lake", ["zfs"], indirect=True)


def zfs_get(prop: str, dataset: str) -> str:
    return subprocess.run(["zfs", "get", "-H", "-o", "value", prop, dataset],
                          capture_output=True, text=True, check=True).stdout.strip()


def datasets(spec: str) -> dict[str, str]:
    """name -> mountpoint of every filesystem under the lake."""
    out = subprocess.run(["zfs", "list", "-H", "-o", "name,mountpoint", "-t", "filesystem", "-r", spec],
                         capture_output=True, text=True, check=True).stdout
    return dict(line.split("\t") for line in out.splitlines())


def commit(repo: Path, text: str) -> str:
    (repo / "data" / "set.csv").write_text(text)
    git(repo, "commit", "-q", "--allow-empty", "-m", text)
    return git(repo, "rev-parse", "HEAD")


def test_each_checkout_mounts_the_volume_at_a_fresh_path_behind_its_link(lake_repo, lake):
    ws_link = Path(os.readlink(lake_repo / "data"))  # <lake>/<project>/workspaces/<ws>/data
    first = os.readlink(ws_link)
    assert first.startswith(".mounts/data.") and os.path.ismount(ws_link.parent / first)
    a = commit(lake_repo, "a")
    b = commit(lake_repo, "b")
    seen = {first}
    for rev, text in ((a, "a"), (b, "b"), (a, "a")):
        snapver(lake_repo, "checkout", rev)
        target = os.readlink(ws_link)
        assert target not in seen, "never a path a dataset was mounted at before"
        seen.add(target)
        assert (lake_repo / "data" / "set.csv").read_text() == text
        mounted = {m for m in datasets(lake.spec).values() if "/.mounts/" in m}
        assert {str(p) for p in (ws_link.parent / ".mounts").iterdir()} == mounted, \
            "no folder left behind by a dataset destroyed (a former live volume with no snapshot)"
    for name, mountpoint in datasets(lake.spec).items():
        if "/history/" in name and "." in name.rsplit("/", 1)[1]:  # a former live volume
            # Read-only (the property reads "off, temporary" on zfs-fuse, so try a write).
            with pytest.raises(OSError, match="Read-only"):
                (Path(mountpoint) / "probe").write_text("x")
    assert snapver(lake_repo, "doctor").code == 0


def test_a_lake_from_before_turns_the_mountpoint_into_the_link_at_its_first_checkout(lake_repo, lake):
    a = commit(lake_repo, "a")
    b = commit(lake_repo, "b")
    (lake_repo / "data" / "work.csv").write_text("not snapshotted")
    ws_link = Path(os.readlink(lake_repo / "data"))
    live = next(n for n, m in datasets(lake.spec).items() if n.endswith("/workspaces/" + ws_link.parent.name + "/data"))
    placed = zfs_get("mountpoint", live)
    # As lakes were made before: the live dataset mounted at the volume's path itself.
    ws_link.unlink()
    subprocess.run(["zfs", "inherit", "mountpoint", live], check=True)
    if not os.path.ismount(ws_link):
        subprocess.run(["zfs", "mount", live], check=True)
    os.rmdir(placed)
    assert os.path.ismount(ws_link) and not ws_link.is_symlink()
    assert (lake_repo / "data" / "work.csv").read_text() == "not snapshotted"
    assert snapver(lake_repo, "status").code == 0

    snapver(lake_repo, "checkout", a)
    assert ws_link.is_symlink() and os.readlink(ws_link).startswith(".mounts/data.")
    assert (lake_repo / "data" / "set.csv").read_text() == "a"
    snapver(lake_repo, "checkout", b)
    assert tree_digest(lake_repo / "data") == {"set.csv": tree_digest(lake_repo / "data")["set.csv"]}, \
        "b as committed, without the work written after it"
    assert (lake_repo / "data" / "set.csv").read_text() == "b"
    kept = [e for e in snapver(lake_repo, "log", "--all", "--json").per_volume
            if e["volume"] == "data" and "." in e["name"]]
    assert any((Path(e["path"]) / "work.csv").exists() for e in kept), "the unsnapshotted work was kept"
    assert snapver(lake_repo, "doctor").code == 0


def test_gc_deletes_a_former_live_volume_without_snapshots_that_a_checkout_left(lake_repo, lake):
    a = commit(lake_repo, "a")
    commit(lake_repo, "b")
    snapver(lake_repo, "checkout", a)
    ws_link = Path(os.readlink(lake_repo / "data"))
    history = next(n for n in datasets(lake.spec) if n.endswith("/history")) + "/" + ws_link.parent.name
    # What a checkout leaves when the replaced volume is busy (an NFS client in it, on OpenZFS):
    # a history dataset with no snapshot, still mounted under .mounts.
    left = f"{history}/data.20260101T000000000000Z"
    where = ws_link.parent / ".mounts" / "data.20260101T000000000000Z"
    subprocess.run(["zfs", "create", "-p", "-o", f"mountpoint={where}", left], check=True)
    kept = set(datasets(lake.spec))
    gc = snapver(lake_repo, "gc")
    assert left not in datasets(lake.spec) and not where.exists(), gc.out
    assert set(datasets(lake.spec)) == kept - {left}, "only that one: history with snapshots stays"
    assert (lake_repo / "data" / "set.csv").read_text() == "a"


def test_snapverd_reaps_only_when_a_checkout_left_a_volume_behind(lake_repo, lake):
    """snapverd asks every few seconds (workspace ""): it reads the project's datasets only
    when a checkout left the file saying one waits (a busy destroy, on OpenZFS)."""
    from snapver.backends import open_backend

    commit(lake_repo, "a")
    ws_link = Path(os.readlink(lake_repo / "data"))
    project = ws_link.parent.parent.parent.name
    history = f"{lake.spec}/{project}/history/{ws_link.parent.name}"
    left = f"{history}/data.20260101T000000000000Z"
    subprocess.run(["zfs", "create", "-p", "-o", f"mountpoint={ws_link.parent / '.mounts' / left.rpartition('/')[2]}",
                    left], check=True)
    backend = open_backend("zfs", lake.spec)
    assert backend.reap(project, "", quiet_for=60) == [] and left in datasets(lake.spec), "no file: not looked at"
    due = lake.root / project / "history" / ".reap-due"
    due.touch()
    said = backend.reap(project, "", quiet_for=60)
    assert left not in datasets(lake.spec) and len(said) == 1, said
    assert not due.exists(), "nothing waits any more"
