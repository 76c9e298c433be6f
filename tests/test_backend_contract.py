"""The Backend contract, run against every filesystem for real: Btrfs on a loop image, ZFS on a file pool.

The first part holds for every backend; the ZFS part at the end covers what
only ZFS has (clone dependencies, holds, pools, dataset names).
"""

from __future__ import annotations

import hashlib
import mmap
import os
import subprocess
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from snapver.backends import open_backend, zfsfuse
from snapver.backends.base import Change
from snapver.backends.zfs import _rename
from snapver.errors import SnapverError
from snapver.names import wip_snapshot_name

from tests.fixtures.zfs import destroy_pool, zfs_file_pool

P, W1, W2 = "proj", "ws1", "ws2"
SHA_A, SHA_B, SHA_C = "a" * 40, "b" * 40, "c" * 40


def tree(root: Path) -> dict[str, str]:
    """Relative path -> sha256 of every file (and '/' for every directory) under root."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        for d in dirnames:
            out[os.path.normpath(os.path.join(rel, d)) + "/"] = "dir"
        for f in filenames:
            out[os.path.normpath(os.path.join(rel, f))] = hashlib.sha256(
                Path(dirpath, f).read_bytes()).hexdigest()
    return out


def write(path: Path, data: bytes | str, sync: bool = True) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
        if sync:
            f.flush()
            os.fsync(f.fileno())


def wip(sha: str, i: int) -> str:
    return wip_snapshot_name(sha, datetime(2025, 1, 1, tzinfo=timezone.utc) + timedelta(seconds=i))


def names(backend, volume=None) -> set[tuple[str, str]]:
    return {(s.volume, s.name) for s in backend.snapshots(P, volume)}


# ---- every backend -------------------------------------------------------

def test_create_volume(backend):
    assert not backend.volume_exists(P, W1, "data")
    path = backend.create_volume(P, W1, "data")
    assert path == backend.volume_path(P, W1, "data") and path.is_dir()
    assert backend.volume_exists(P, W1, "data")
    write(path / "x.bin", b"1")
    assert (path / "x.bin").read_bytes() == b"1"


def test_snapshot_of_several_volumes(backend):
    before = datetime.now(timezone.utc).replace(microsecond=0)
    for v in ("data", "models"):
        write(backend.create_volume(P, W1, v) / "f.txt", f"{v} v1")
    snaps = backend.snapshot(P, W1, ["data", "models"], SHA_A)
    assert [(s.volume, s.name, s.commit, s.kind) for s in snaps] == [
        ("data", SHA_A, SHA_A, "commit"), ("models", SHA_A, SHA_A, "commit")]
    assert names(backend) == {("data", SHA_A), ("models", SHA_A)}
    assert names(backend, "models") == {("models", SHA_A)}
    for s in snaps:
        found = backend.find(P, s.volume, SHA_A)
        assert found is not None and found.path == s.path and found.mark == s.mark
        assert before - timedelta(seconds=1) <= found.created <= datetime.now(timezone.utc)
        assert (found.path / "f.txt").read_text() == f"{s.volume} v1"
        with pytest.raises(OSError):  # read-only
            (found.path / "new").write_text("no")
    # Later writes to the live volume do not show in the snapshot.
    write(backend.volume_path(P, W1, "data") / "f.txt", "data v2")
    assert (backend.find(P, "data", SHA_A).path / "f.txt").read_text() == "data v1"
    assert backend.find(P, "data", SHA_B) is None


def test_snapshots_sort_in_creation_order_within_one_second(backend):
    # Names run backwards so that a name tiebreak would give the wrong order;
    # ZFS creation times have whole seconds only.
    write(backend.create_volume(P, W1, "data") / "f", "0")
    made = []
    for sha in (SHA_C, SHA_B, SHA_A):
        made += backend.snapshot(P, W1, ["data"], sha)
    listed = sorted(backend.snapshots(P, "data"), key=lambda s: s.age_key)
    assert [s.name for s in listed] == [SHA_C, SHA_B, SHA_A]
    assert [s.age_key for s in made] == [s.age_key for s in listed]


def test_snapshot_of_some_volumes_and_bad_requests(backend):
    for v in ("data", "models"):
        write(backend.create_volume(P, W1, v) / "f", v)
    backend.snapshot(P, W1, ["data"], SHA_A)
    assert names(backend) == {("data", SHA_A)}
    with pytest.raises(SnapverError):  # all or none: "logs" does not exist
        backend.snapshot(P, W1, ["models", "logs"], SHA_B)
    assert names(backend) == {("data", SHA_A)}


def test_changed_since(backend):
    live = backend.create_volume(P, W1, "data")
    write(live / "f", "one")
    (snap,) = backend.snapshot(P, W1, ["data"], SHA_A)
    assert not backend.changed_since(P, W1, "data", snap.mark)
    assert not backend.changed_since(P, W1, "data", backend.mark(P, W1, "data"))
    assert backend.changed_since(P, W1, "data", None)
    assert backend.changed_since(P, W1, "data", "not-a-mark")
    (live / "f").read_text()  # reading is not a change
    assert not backend.changed_since(P, W1, "data", snap.mark)

    changes = [
        lambda: write(live / "f", "two", sync=True),
        lambda: write(live / "f", "six", sync=False),  # same size, no fsync
        lambda: os.chmod(live / "f", 0o600),
        lambda: os.rename(live / "f", live / "g"),
        lambda: (live / "g").unlink(),
        lambda: (live / "d").mkdir(),
    ]
    for i, change in enumerate(changes):
        change()
        assert backend.changed_since(P, W1, "data", snap.mark), f"change {i} not seen"
        (snap,) = backend.snapshot(P, W1, ["data"], wip(SHA_A, i))
        assert not backend.changed_since(P, W1, "data", snap.mark)

    # A write through mmap, never msync'ed, is a change too.
    write(live / "m", b"\0" * 4096)
    (snap,) = backend.snapshot(P, W1, ["data"], SHA_B)
    with open(live / "m", "r+b") as f, mmap.mmap(f.fileno(), 4096) as m:
        m[0:4] = b"MMAP"
        assert backend.changed_since(P, W1, "data", snap.mark)


def test_clone_into_place_restores_older_snapshot(backend):
    live = backend.create_volume(P, W1, "data")
    write(live / "keep.txt", "same")
    write(live / "edit.txt", "v1")
    write(live / "gone.txt", "bye")
    (a,) = backend.snapshot(P, W1, ["data"], SHA_A)
    tree_a = tree(a.path)
    write(live / "edit.txt", "v2 longer")
    write(live / "sub" / "new.bin", os.urandom(100_000))
    (live / "gone.txt").unlink()
    (b,) = backend.snapshot(P, W1, ["data"], SHA_B)
    tree_b = tree(b.path)
    assert tree_a != tree_b

    mark = backend.clone_into_place(a, W1)
    live = backend.volume_path(P, W1, "data")
    assert tree(live) == tree_a
    assert names(backend) == {("data", SHA_A), ("data", SHA_B)}
    assert tree(backend.find(P, "data", SHA_B).path) == tree_b
    assert not backend.changed_since(P, W1, "data", mark)
    write(live / "edit.txt", "v3")  # the clone is writable
    assert backend.changed_since(P, W1, "data", mark)
    assert tree(backend.find(P, "data", SHA_A).path) == tree_a

    backend.clone_into_place(backend.find(P, "data", SHA_B), W1)
    assert tree(backend.volume_path(P, W1, "data")) == tree_b


def test_clone_into_place_from_another_workspace(backend):
    write(backend.create_volume(P, W1, "data") / "f", "made in ws1")
    (a,) = backend.snapshot(P, W1, ["data"], SHA_A)
    # ws2 has no volume yet: checking out A there makes one.
    backend.clone_into_place(a, W2)
    live2 = backend.volume_path(P, W2, "data")
    assert (live2 / "f").read_text() == "made in ws1"
    write(live2 / "f", "changed in ws2")
    (b,) = backend.snapshot(P, W2, ["data"], SHA_B)
    # ws1 checks out the commit made in ws2.
    (c,) = backend.snapshot(P, W1, ["data"], SHA_C)
    backend.clone_into_place(backend.find(P, "data", SHA_B), W1)
    assert (backend.volume_path(P, W1, "data") / "f").read_text() == "changed in ws2"
    assert (backend.volume_path(P, W2, "data") / "f").read_text() == "changed in ws2"
    assert names(backend) == {("data", SHA_A), ("data", SHA_B), ("data", SHA_C)}
    assert (backend.find(P, "data", SHA_A).path / "f").read_text() == "made in ws1"
    assert (backend.find(P, "data", SHA_C).path / "f").read_text() == "made in ws1"


def test_round_trips_keep_every_snapshot(backend, round_trips):
    live = backend.create_volume(P, W1, "data")
    write(live / "f", "A")
    (a,) = backend.snapshot(P, W1, ["data"], SHA_A)
    write(live / "f", "B")
    (b,) = backend.snapshot(P, W1, ["data"], SHA_B)
    expected = {SHA_A: "A", SHA_B: "B"}
    for i in range(round_trips):
        target = backend.find(P, "data", SHA_A if i % 2 == 0 else SHA_B)
        if i % 4 == 3:  # now and then work gets done and captured before switching
            write(backend.volume_path(P, W1, "data") / "f", f"wip {i}")
            name = wip(SHA_A, i)
            backend.snapshot(P, W1, ["data"], name)
            expected[name] = f"wip {i}"
        mark = backend.clone_into_place(target, W1)
        assert (backend.volume_path(P, W1, "data") / "f").read_text() == expected[target.name]
        assert not backend.changed_since(P, W1, "data", mark)
    assert names(backend) == {("data", n) for n in expected}
    for name, content in expected.items():
        assert (backend.find(P, "data", name).path / "f").read_text() == content


def test_destroy(backend):
    live = backend.create_volume(P, W1, "data")
    write(live / "f", "A")
    (a,) = backend.snapshot(P, W1, ["data"], SHA_A)
    write(live / "f", "B")
    (b,) = backend.snapshot(P, W1, ["data"], SHA_B)
    backend.clone_into_place(a, W1)  # the live volume now comes from A
    backend.destroy(backend.find(P, "data", SHA_B))
    assert names(backend) == {("data", SHA_A)}
    backend.destroy(backend.find(P, "data", SHA_A))
    assert names(backend) == set() and backend.find(P, "data", SHA_A) is None
    # The workspace checked out from A keeps its files.
    assert (backend.volume_path(P, W1, "data") / "f").read_text() == "A"


def test_space(backend):
    live = backend.create_volume(P, W1, "data")
    write(live / "big.bin", os.urandom(2 * 1024**2))
    (a,) = backend.snapshot(P, W1, ["data"], SHA_A)
    write(live / "big.bin", os.urandom(2 * 1024**2))  # every block rewritten
    backend.snapshot(P, W1, ["data"], SHA_B)
    space = backend.space(backend.find(P, "data", SHA_A))
    assert 2 * 1024**2 <= space.referenced < 3 * 1024**2
    # The old blocks are now A's alone: deleting A would free them.
    assert 2 * 1024**2 <= space.exclusive <= space.referenced


def test_diff(backend):
    live = backend.create_volume(P, W1, "data")
    write(live / "same", "s")
    write(live / "edit", "1")
    write(live / "gone", "g")
    (a,) = backend.snapshot(P, W1, ["data"], SHA_A)
    write(live / "edit", "2")
    write(live / "dir" / "new", "n")
    (live / "gone").unlink()
    (b,) = backend.snapshot(P, W1, ["data"], SHA_B)
    assert sorted(backend.diff(a.path, b.path), key=lambda c: c.path) == [
        Change("dir/", "added"), Change("dir/new", "added"),
        Change("edit", "changed"), Change("gone", "deleted")]


def test_open_missing_lake(backend):
    missing = "nopool/snapver" if backend.name == "zfs" else "/nonexistent/lake"
    with pytest.raises(SnapverError, match="does not exist"):
        open_backend(backend.name, missing)


# ---- ZFS only ------------------------------------------------------------

@pytest.fixture
def zfs(zfs_lake):
    return open_backend("zfs", zfs_lake)


def datasets(prefix: str) -> list[str]:
    out = subprocess.run(["zfs", "list", "-H", "-o", "name", "-t", "all", "-r", prefix],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def test_zfs_reports_its_path(zfs):
    try:
        import libzfs_core  # noqa: F401
        fast = os.path.exists("/dev/zfs")
    except ImportError:
        fast = False
    assert zfs.via == ("libzfs_core" if fast else "cli")


@pytest.mark.parametrize("spec", ["", "-o", "pool/../x", "pool/a b", "pool//x", "1pool/x", "pool/x;rm"])
def test_zfs_rejects_bad_lake_names(spec):
    with pytest.raises(SnapverError, match="not a valid ZFS dataset name"):
        open_backend("zfs", spec)


def test_zfs_rejects_bad_names_before_any_command(zfs):
    before = datasets(zfs.spec())
    for project, workspace, volume in [("p/q", W1, "data"), (P, "../x", "data"), (P, W1, "a@b"),
                                       (P, "-r", "data"), (P, W1, "")]:
        with pytest.raises(SnapverError, match="not a valid"):
            zfs.create_volume(project, workspace, volume)
    assert datasets(zfs.spec()) == before


def test_zfs_snapshot_name_taken_twice_is_refused(zfs):
    zfs.create_volume(P, W1, "data")
    zfs.snapshot(P, W1, ["data"], SHA_A)
    zfs.clone_into_place(zfs.find(P, "data", SHA_A), W2)
    with pytest.raises(SnapverError, match="already exists"):
        zfs.snapshot(P, W2, ["data"], SHA_A)


def test_zfs_keeps_metadata_on_snapshots(zfs):
    for v in ("data", "models"):
        zfs.create_volume(P, W1, v)
    zfs.snapshot(P, W1, ["data", "models"], wip(SHA_A, 1))
    out = subprocess.run(["zfs", "get", "-H", "-r", "-o", "name,property,value",
                          "snapver:kind,snapver:commit,snapver:workspace", f"{zfs.spec()}/{P}/workspaces"],
                         capture_output=True, text=True, check=True).stdout
    props = {tuple(line.split("\t")) for line in out.splitlines() if "@" in line}
    for v in ("data", "models"):
        full = f"{zfs.spec()}/{P}/workspaces/{W1}/{v}@{wip(SHA_A, 1)}"
        assert {(full, "snapver:kind", "wip"), (full, "snapver:commit", SHA_A),
                (full, "snapver:workspace", W1)} <= props
    # Only the volumes were snapshotted, not the workspace dataset above them.
    assert not any(line.startswith(f"{zfs.spec()}/{P}/workspaces/{W1}@") for line in out.splitlines())


def test_zfs_held_snapshot_is_not_destroyed(zfs):
    zfs.create_volume(P, W1, "data")
    (a,) = zfs.snapshot(P, W1, ["data"], SHA_A)
    full = f"{zfs.spec()}/{P}/workspaces/{W1}/data@{SHA_A}"
    subprocess.run(["zfs", "hold", "snapver-release", full], check=True)
    with pytest.raises(SnapverError, match="held by a release"):
        zfs.destroy(a)
    assert zfs.find(P, "data", SHA_A) is not None
    subprocess.run(["zfs", "release", "snapver-release", full], check=True)
    zfs.destroy(a)
    assert zfs.find(P, "data", SHA_A) is None


def test_zfs_origin_of_another_workspace_is_not_destroyed(zfs):
    write(zfs.create_volume(P, W1, "data") / "f", "A")
    (a,) = zfs.snapshot(P, W1, ["data"], SHA_A)
    zfs.clone_into_place(a, W2)
    with pytest.raises(SnapverError, match=f"workspace {W2} is a clone of it"):
        zfs.destroy(a)
    assert (zfs.find(P, "data", SHA_A).path / "f").read_text() == "A"


def test_zfs_history_is_kept_and_pruned(zfs):
    live = zfs.create_volume(P, W1, "data")
    write(live / "f", "A")
    zfs.snapshot(P, W1, ["data"], SHA_A)
    write(live / "f", "B")
    zfs.snapshot(P, W1, ["data"], SHA_B)
    zfs.clone_into_place(zfs.find(P, "data", SHA_A), W1)
    history = [d for d in datasets(zfs.spec()) if "/history/" in d and "/data." in d and "@" not in d]
    assert len(history) == 1  # the old live volume, kept for A and B
    # B is the newest snapshot in history: destroying it leaves A's, which
    # the live clone needs; destroying A promotes the clone and drops history.
    zfs.destroy(zfs.find(P, "data", SHA_B))
    zfs.destroy(zfs.find(P, "data", SHA_A))
    assert not [d for d in datasets(zfs.spec()) if "/history/" in d and "/data." in d]
    assert (zfs.volume_path(P, W1, "data") / "f").read_text() == "A"
    # A clone that changed nothing and has no snapshots is not kept.
    zfs.snapshot(P, W1, ["data"], SHA_C)
    zfs.clone_into_place(zfs.find(P, "data", SHA_C), W2)
    zfs.clone_into_place(zfs.find(P, "data", SHA_C), W2)
    assert not [d for d in datasets(zfs.spec()) if "/data." in d or "/incoming/" in d and "/data" in d]


def test_zfs_finishes_an_interrupted_checkout(zfs):
    live_path = zfs.create_volume(P, W1, "data")
    write(live_path / "f", "A")
    (a,) = zfs.snapshot(P, W1, ["data"], SHA_A)
    write(live_path / "f", "B")
    (b,) = zfs.snapshot(P, W1, ["data"], SHA_B)
    # A crash between the two renames: the live volume moved away, the clone of A waiting.
    live = f"{zfs.spec()}/{P}/workspaces/{W1}/data"
    for view in zfsfuse.mounted_clones(zfs._node.view(P), live):  # as clone_into_place does on zfs-fuse
        subprocess.run(["zfs", "unmount", view], check=True)
    _rename(live, f"{zfs.spec()}/{P}/history/{W1}/data.crashed")
    subprocess.run(["zfs", "clone", "-p", "-o", "mountpoint=none", f"{zfs.spec()}/{P}/history/{W1}/data.crashed@{SHA_A}",
                    f"{zfs.spec()}/{P}/incoming/{W1}/data"], check=True)
    assert not zfs.volume_exists(P, W1, "data")
    zfs.clone_into_place(zfs.find(P, "data", SHA_B), W1)
    assert (zfs.volume_path(P, W1, "data") / "f").read_text() == "B"
    assert names(zfs) == {("data", SHA_A), ("data", SHA_B)}


def test_zfs_full_pool(zfs_pool):
    with zfs_file_pool("64M") as pool:
        subprocess.run(["zfs", "create", f"{pool}/snapver"], check=True)
        zfs = open_backend("zfs", f"{pool}/snapver")
        for v in ("data", "models"):
            write(zfs.create_volume(P, W1, v) / "f", v)
        (a, _) = zfs.snapshot(P, W1, ["data", "models"], SHA_A)
        data = zfs.volume_path(P, W1, "data")
        with pytest.raises(OSError):  # fill it up
            with open(data / "fill", "wb") as f:
                for _ in range(200):
                    f.write(os.urandom(1024**2))
                    f.flush()
                    os.fsync(f.fileno())
        before = set(datasets(pool))
        try:
            zfs.snapshot(P, W1, ["data", "models"], SHA_B)
        except SnapverError as e:
            assert "full" in str(e) and "\n" not in str(e)
            assert set(datasets(pool)) == before  # nothing half-done
        else:
            assert {f"{P}/workspaces/{W1}/{v}@{SHA_B}" for v in ("data", "models")} <= {
                d.split("/", 2)[2] for d in datasets(pool)}
        try:
            zfs.clone_into_place(a, W1)
        except SnapverError as e:
            assert "full" in str(e) and "\n" not in str(e)
            assert (data / "f").read_text() == "data" and (data / "fill").exists()
            assert not [d for d in datasets(pool) if "/incoming/" in d]
        else:
            assert tree(zfs.volume_path(P, W1, "data")) == tree(a.path)


def test_zfs_provision_pool(zfs_pool, tmp_path):
    from snapver.backends.zfs import provision_pool

    pool = f"snapverprov{os.urandom(3).hex()}"
    image = tmp_path / "pool.img"
    with pytest.raises(SnapverError, match="at least 64M"):
        provision_pool(image, 1024**2, pool, tmp_path / "mnt")
    with pytest.raises(SnapverError, match="pass --size"):
        provision_pool(image, None, pool, tmp_path / "mnt")
    assert not image.exists()
    try:
        lake = provision_pool(image, 128 * 1024**2, pool, tmp_path / "mnt")
        assert lake == f"{pool}/snapver"
        backend = open_backend("zfs", lake)
        assert backend.root == tmp_path / "mnt" / "snapver"
        write(backend.create_volume(P, W1, "data") / "f", "x")
        assert provision_pool(image, None, pool, tmp_path / "mnt") == lake  # reused
        assert (open_backend("zfs", lake).volume_path(P, W1, "data") / "f").read_text() == "x"
    finally:
        destroy_pool(pool)
