"""Space accounting without walking every time (issue 19): ZFS reads properties; Btrfs walks a
snapshot once and remembers (backends/btrfsspace.py). The answers equal a fresh walk's, also
after the lake changed under the cache."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path


from snapver.backends import btrfsspace
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
    cache = json.loads((backend.root / btrfsspace.CACHE).read_text())
    assert subvol_info(a.path).uuid in cache, "measured once, remembered"
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
