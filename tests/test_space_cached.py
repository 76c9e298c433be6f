"""Space accounting without walking every time (issue 19): ZFS reads properties; Btrfs walks a
snapshot once and remembers (backends/btrfsspace.py). The answers equal a fresh walk's, also
after the lake changed under the cache."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path


from snapver.backends import btrfsspace
from snapver.backends.base import Space
from snapver.backends.btrfs import subvol_info

P, W = "proj", "ws1"
SHA_A, SHA_B, SHA_C = "a" * 40, "b" * 40, "c" * 40


def put(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(os.urandom(size))
        os.fsync(f.fileno())


def walked(backend, path: Path):
    from snapver.backends.btrfs import _du

    return _du(path)


def test_space_is_remembered_and_stays_true(backend):
    live = backend.create_volume(P, W, "data")
    put(live / "big.bin", 1 << 20)
    put(live / "small.bin", 4096)
    a = backend.snapshot(P, W, ["data"], SHA_A)[0]
    put(live / "big.bin", 1 << 20)  # rewritten: a alone holds the old MiB now
    b = backend.snapshot(P, W, ["data"], SHA_B)[0]
    a, b = backend.find(P, "data", a.name), backend.find(P, "data", b.name)
    first = backend.space(a)
    assert first.referenced >= (1 << 20) + 4096 and first.exclusive >= 1 << 20
    assert backend.space(a) == first
    if backend.name != "btrfs":
        assert backend.live_space(P, W, "data").referenced >= 1 << 20
        return
    assert first == walked(backend, a.path)
    # a has a sibling (b): measured from their send stream, and what that needs remembered.
    assert (backend.root / btrfsspace.DELTA / f"{subvol_info(a.path).uuid}.json").exists(), "remembered"
    # The live volume, not written since b was taken of it: b's bytes, none of its own.
    assert backend.live_space(P, W, "data") == walked(backend, live)
    # small.bin's blocks are a's, b's and live's; rewritten in live and b gone, a alone
    # holds them: a's exclusive bytes grow, and the cache must follow.
    put(live / "small.bin", 4096)
    backend.destroy(b)
    subprocess.run(["btrfs", "subvolume", "sync", str(backend.root)], check=True)  # b's blocks dropped
    os.sync()
    assert backend.space(a) == walked(backend, a.path) and backend.space(a).exclusive > first.exclusive
    assert backend.live_space(P, W, "data") == walked(backend, live)
    put(live / "more.bin", 8192)  # written again: measured again
    assert backend.live_space(P, W, "data") == walked(backend, live)
    assert backend.live_space(P, W, "data").referenced >= first.referenced + 8192
    c = backend.snapshot(P, W, ["data"], SHA_C)[0]
    c = backend.find(P, "data", c.name)
    assert backend.space(c) == walked(backend, c.path)
    fp = backend.footprint(P)
    assert fp == backend.footprint(P) and fp.on_disk <= fp.full_copies


def test_space_from_streams_equals_the_walk(backend):
    """Btrfs: a snapshot's space from the send stream to a sibling (O(changes)) is the walk's,
    for rewrites, deletions, a renamed folder, inline files, hard links and symlinks, also once
    the sibling it was measured against is gone; ZFS: its properties, as `zfs get` gives them."""
    live = backend.create_volume(P, W, "data")
    put(live / "a.bin", 1 << 20)
    put(live / "b.bin", 8192)
    put(live / "tiny", 64)  # inline in the metadata
    put(live / "d" / "one.bin", 16384)
    put(live / "d" / "sub" / "two.bin", 4096)
    os.link(live / "b.bin", live / "b-link")
    os.symlink("a.bin", live / "to-a")
    shas = [c * 40 for c in "1234"]
    snaps = [backend.snapshot(P, W, ["data"], shas[0])[0]]
    put(live / "a.bin", 1 << 20)  # rewritten: the first snapshot alone holds the old MiB
    (live / "b.bin").unlink()
    put(live / "tiny", 100)
    os.rename(live / "d", live / "d2")
    put(live / "e.bin", 65536)
    snaps.append(backend.snapshot(P, W, ["data"], shas[1])[0])
    snaps.append(backend.snapshot(P, W, ["data"], shas[2])[0])  # nothing changed
    with open(live / "e.bin", "r+b") as f:  # a part of e rewritten
        f.write(os.urandom(4096))
        os.fsync(f.fileno())
    snaps.append(backend.snapshot(P, W, ["data"], shas[3])[0])
    snaps = [backend.find(P, "data", s.name) for s in snaps]
    os.sync()

    def truth(snap):
        if backend.name == "btrfs":
            return walked(backend, snap.path)
        full = backend._zsnap(snap).full
        out = subprocess.run(["zfs", "get", "-Hp", "-o", "value", "used,referenced", full],
                             capture_output=True, text=True, check=True).stdout.split()
        return Space(referenced=int(out[1]), exclusive=int(out[0]))

    # Newest first, as the Space page asks: the first is walked, the others from streams.
    for snap in snaps[::-1]:
        assert backend.space(snap) == truth(snap), snap.name
    for snap in snaps:
        assert backend.space(snap) == truth(snap), snap.name  # again, from what was kept
    assert backend.space(snaps[0]).exclusive >= 1 << 20
    if backend.name != "btrfs":
        return
    kept = {p.stem: json.loads(p.read_text()) for p in (backend.root / btrfsspace.DELTA).glob("*.json")}
    bases = [kept[subvol_info(s.path).uuid].get("base") for s in snaps if subvol_info(s.path).uuid in kept]
    assert sum(1 for b in bases if b) >= 3, "measured from streams, not walked"
    # Writes in the live volume and a sibling gone: what the others hold alone changes.
    before = backend.space(snaps[3]).exclusive  # its rewritten block is live's too
    put(live / "e.bin", 65536)
    backend.destroy(snaps[2])
    subprocess.run(["btrfs", "subvolume", "sync", str(backend.root)], check=True)
    os.sync()
    for snap in (snaps[0], snaps[1], snaps[3]):
        assert backend.space(snap) == walked(backend, snap.path), snap.name
    assert backend.space(snaps[3]).exclusive >= before + 4096  # live's new e.bin no longer shares it
