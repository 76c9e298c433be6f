"""diff in O(changes) (issue 19): what the filesystem's change tracking gives equals the walk's answer.

On Btrfs the send stream between two snapshots names the candidates (backends/btrfsdiff.py),
on OpenZFS `zfs diff` does (backends/zfsdiff.py: in the VM); zfs-fuse has no `zfs diff`, so
Backend.diff walks there and must equal the walk too.
Both backends get the same lake: adds, deletes, renames of files and folders, nested folders,
empty files, hard links (a test of their own), symlinks, xattr-only, chmod-only and type changes.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from snapver.backends import btrfsdiff, open_backend, zfsdiff
from snapver.backends.base import Change, walk_diff

P, W = "proj", "ws1"
SHA_A, SHA_B, SHA_C = "a" * 40, "b" * 40, "c" * 40


def put(path: Path, data: bytes = b"x") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)


def first_version(root: Path) -> None:
    for d in range(3):
        for f in range(20):
            put(root / f"part-{d}" / f"f-{f:03d}.bin", f"{d}/{f}".encode() * 10)
    put(root / "deep" / "a" / "b" / "c" / "leaf.txt", b"leaf")
    put(root / "deep" / "a" / "sibling.txt", b"sib")
    put(root / "moveme" / "inner" / "x.bin", b"x" * 100)
    put(root / "moveme" / "y.bin", b"y")
    put(root / "empty.bin", b"")
    put(root / "toempty.bin", b"something")
    put(root / "gone.bin", b"bye")
    put(root / "renamed-from.bin", b"rename me")
    put(root / "becomes-dir", b"a file first")
    (root / "becomes-file").mkdir()
    put(root / "becomes-file" / "inside.bin", b"i")
    put(root / "xattr.bin", b"xattr")
    put(root / "mode.bin", b"mode")
    os.symlink("part-0/f-000.bin", root / "link")
    os.symlink("nowhere", root / "retarget")


def second_version(root: Path, xattrs: bool) -> None:
    put(root / "part-1" / "f-005.bin", b"rewritten, another size")
    put(root / "part-2" / "f-006.bin", b"2/6" * 10 + b"!")  # one byte more
    put(root / "part-2" / "new.bin", b"new")
    put(root / "new-folder" / "nested" / "deeper" / "n.bin", b"n")
    put(root / "new-empty.bin", b"")
    (root / "toempty.bin").write_bytes(b"")
    (root / "gone.bin").unlink()
    (root / "part-0" / "f-019.bin").unlink()
    os.rename(root / "renamed-from.bin", root / "part-1" / "renamed-to.bin")
    os.rename(root / "moveme", root / "deep" / "moved")
    (root / "becomes-dir").unlink()
    put(root / "becomes-dir" / "child.bin", b"c")
    (root / "becomes-file" / "inside.bin").unlink()
    (root / "becomes-file").rmdir()
    put(root / "becomes-file", b"now a file")
    (root / "deep" / "a" / "b" / "c" / "leaf.txt").unlink()
    (root / "deep" / "a" / "b" / "c").rmdir()
    if xattrs:
        os.setxattr(root / "xattr.bin", "user.snapver", b"only an xattr changes")
    os.chmod(root / "mode.bin", 0o600)
    os.symlink("part-2/new.bin", root / "new-link")
    (root / "retarget").unlink()
    os.symlink("somewhere else", root / "retarget")
    # a folder emptied and one swapped for another under the same name
    for f in range(20):
        (root / "part-2" / f"f-{f:03d}.bin").unlink() if f != 6 else None
    os.rename(root / "part-1", root / "part-swap")
    os.rename(root / "part-0", root / "part-1")
    os.rename(root / "part-swap", root / "part-0")


def supports_xattrs(path: Path) -> bool:
    probe = path / ".xattr-probe"
    probe.write_bytes(b"")
    try:
        os.setxattr(probe, "user.probe", b"1")
        return True
    except OSError:
        return False
    finally:
        probe.unlink()


def openzfs(backend) -> bool:
    """OpenZFS in the kernel (the VM): snapshots under .zfs/snapshot, and `zfs diff`."""
    return backend.name == "zfs" and (backend.root / ".zfs" / "snapshot").is_dir()


def test_a_rewritten_file_with_two_names_is_changed_under_both(backend):
    """A write is reported under one name of a hard-linked file; the walk calls both changed,
    so the diff must too (the candidates give way to the walk there). Removing one name of
    two is read from the candidates as any deletion."""
    live = backend.create_volume(P, W, "data")
    put(live / "a" / "one-name.bin", b"first")
    put(live / "twin.bin", b"first")
    os.link(live / "twin.bin", live / "a" / "other-name.bin")
    a = backend.find(P, "data", backend.snapshot(P, W, ["data"], SHA_A)[0].name)
    with open(live / "twin.bin", "r+b") as f:
        f.write(b"second, longer")
    b = backend.find(P, "data", backend.snapshot(P, W, ["data"], SHA_B)[0].name)
    expected = walk_diff(a.path, b.path)
    assert {(c.path, c.change) for c in expected} == {("twin.bin", "changed"), ("a/other-name.bin", "changed")}
    assert backend.diff(a.path, b.path) == expected
    assert backend.diff(a.path, live) == walk_diff(a.path, live)
    # A new name for an unchanged file is an addition and nothing else, as the walk says.
    os.link(live / "a" / "one-name.bin", live / "second-name.bin")
    c = backend.find(P, "data", backend.snapshot(P, W, ["data"], SHA_C)[0].name)
    assert backend.diff(b.path, c.path) == walk_diff(b.path, c.path) == [Change("second-name.bin", "added")]
    (live / "twin.bin").unlink()  # a/other-name.bin stays
    d = backend.find(P, "data", backend.snapshot(P, W, ["data"], "d" * 40)[0].name)
    assert backend.diff(c.path, d.path) == walk_diff(c.path, d.path) == [Change("twin.bin", "deleted")]
    if backend.name == "btrfs":
        assert btrfsdiff.diff(a.path, b.path) is None, "the rewrite's other name is left to the walk"
        assert btrfsdiff.diff(c.path, d.path) == [Change("twin.bin", "deleted")]
    elif openzfs(backend):
        assert zfsdiff.diff(a.path, b.path) is None
        assert zfsdiff.diff(c.path, d.path) == [Change("twin.bin", "deleted")]


def test_diff_equals_the_walk(backend):
    live = backend.create_volume(P, W, "data")
    first_version(live)
    a = backend.snapshot(P, W, ["data"], SHA_A)[0]
    second_version(live, supports_xattrs(live))
    b = backend.snapshot(P, W, ["data"], SHA_B)[0]
    put(live / "part-0" / "after-b.bin", b"c")
    c = backend.snapshot(P, W, ["data"], SHA_C)[0]
    a, b, c = (backend.find(P, "data", s.name) for s in (a, b, c))

    taken = [a.name, b.name, c.name]  # in this order (their `created` may share a second)
    for old, new in ((a, b), (b, a), (a, c), (b, c), (c, a), (a, a)):
        expected = walk_diff(old.path, new.path)
        assert backend.diff(old.path, new.path) == expected, (old.name[:1], new.name[:1])
        if backend.name == "btrfs":
            # The send stream's answer itself, not a fallback to the walk.
            assert btrfsdiff.diff(old.path, new.path) == expected
        elif openzfs(backend) and taken.index(old.name) <= taken.index(new.name):  # zfs diff goes forward only
            assert zfsdiff.diff(old.path, new.path) == expected
    got = {(c.path, c.change) for c in backend.diff(a.path, b.path)}
    for change in (("part-2/new.bin", "added"), ("gone.bin", "deleted"), ("renamed-from.bin", "deleted"),
                   ("part-0/renamed-to.bin", "added"), ("deep/moved/inner/x.bin", "added"),
                   ("moveme/", "deleted"), ("becomes-dir/child.bin", "added"), ("becomes-file", "added"),
                   ("toempty.bin", "changed"), ("retarget", "changed"), ("new-link", "added"),
                   ("part-0/f-005.bin", "changed")):
        assert change in got, change
    assert not {p for p, _ in got} & {"xattr.bin", "mode.bin", "empty.bin"}  # the walk ignores those
    assert backend.diff(a.path, a.path) == []

    # To the live volume (diff REV): the same, and nothing left behind.
    put(live / "part-1" / "unsnapshotted.bin", b"u")
    (live / "part-0" / "f-000.bin").unlink()
    before = sorted(backend.volume_path(P, W, "data").parent.rglob("*"))
    for old in (a, b, c):
        expected = walk_diff(old.path, live)
        assert backend.diff(old.path, live) == expected
        if backend.name == "btrfs":
            trash = live.parent / ".trash"
            from snapver.backends.btrfs import snapshot_subvolume
            assert btrfsdiff.diff_live(old.path, live, trash, snapshot_subvolume) == expected
        elif openzfs(backend):
            assert zfsdiff.diff(old.path, live) == expected
    after = sorted(backend.volume_path(P, W, "data").parent.rglob("*"))
    assert [p for p in after if p.name != ".trash"] == before, "the snapshot of the live volume is gone again"


def test_the_stream_names_only_what_changed(btrfs_lake):
    """O(changes): among 2,000 files, three changes give a handful of candidates."""
    backend = open_backend("btrfs", str(btrfs_lake))
    live = backend.create_volume(P, W, "data")
    for d in range(20):
        for f in range(100):
            put(live / f"d{d:02d}" / f"f{f:03d}", b"x")
    a = backend.snapshot(P, W, ["data"], SHA_A)[0]
    put(live / "d03" / "f007", b"changed")
    (live / "d11" / "f050").unlink()
    put(live / "d19" / "new", b"")
    b = backend.snapshot(P, W, ["data"], SHA_B)[0]

    found = btrfsdiff.parse(btrfsdiff.stream(a.path, b.path) or b"")
    names = []

    def collect(node, rel):
        for name, child in node.children.items():
            names.append(f"{rel}{name}")
            collect(child, f"{rel}{name}/")
    collect(found, "")
    assert {"d03/f007", "d11/f050", "d19/new"} <= set(names)
    assert len(names) < 12, names
    assert [(c.path, c.change) for c in backend.diff(a.path, b.path)] == [
        ("d03/f007", "changed"), ("d11/f050", "deleted"), ("d19/new", "added")]


def test_no_shared_ancestry_walks(btrfs_lake):
    """Snapshots of two volumes (a derived clone's parent), and the live volume: the walk answers."""
    backend = open_backend("btrfs", str(btrfs_lake))
    for vol in ("data", "models"):
        put(backend.create_volume(P, W, vol) / "same.bin", b"s")
        put(backend.volume_path(P, W, vol) / f"only-{vol}.bin", b"o")
    a = backend.snapshot(P, W, ["data", "models"], SHA_A)
    assert backend.diff(a[0].path, a[1].path) == walk_diff(a[0].path, a[1].path) == [
        ("only-data.bin", "deleted"), ("only-models.bin", "added")]
    live = backend.volume_path(P, W, "models")
    put(live / "later.bin", b"l")
    assert backend.diff(a[0].path, live) == walk_diff(a[0].path, live) == [
        ("later.bin", "added"), ("only-data.bin", "deleted"), ("only-models.bin", "added")]


def test_a_stream_that_is_not_whole_is_refused():
    with pytest.raises(ValueError):
        btrfsdiff.parse(b"not a stream")
    header = b"btrfs-stream\0" + (1).to_bytes(4, "little")
    with pytest.raises(ValueError):
        btrfsdiff.parse(header)  # no END command: cut short
    end = (0).to_bytes(4, "little") + (21).to_bytes(2, "little") + b"\0\0\0\0"
    assert btrfsdiff.parse(header + end).children == {}
