"""OpenZFS in the kernel: the ZFS backend must go through libzfs_core, not fall back to the CLI.

These run where pyzfs imports and /dev/zfs exists: the vagrant/ dev VM and the QEMU guest
of vagrant/run-vm-tests. Elsewhere (zfs-fuse ships no libzfs_core) they are skipped,
except inside that VM (SNAPVER_VM=1), where a missing path is a failure, never a skip.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from snapver.backends import open_backend

from tests.fixtures.zfs import zfs_lake, zfs_pool  # noqa: F401

IN_VM = os.environ.get("SNAPVER_VM") == "1"

try:
    import libzfs_core
except ImportError as e:
    libzfs_core = None
    why_not = f"libzfs_core (python3-pyzfs) does not import: {e}"
else:
    why_not = None if os.path.exists("/dev/zfs") else "no /dev/zfs: OpenZFS is not loaded in this kernel"

if why_not and not IN_VM:
    pytest.skip(f"needs OpenZFS in the kernel ({why_not}); run vagrant/run-vm-tests", allow_module_level=True)


def test_kernel_zfs_and_pyzfs_are_there():
    assert why_not is None, why_not


@pytest.fixture
def calls(monkeypatch):
    """Record every libzfs_core call the backend makes and every process it starts."""
    seen: dict[str, list] = {"lzc": [], "argv": []}
    for name in ("lzc_snapshot", "lzc_destroy_snaps"):
        real = getattr(libzfs_core, name)

        def spy(*args, _real=real, _name=name):
            seen["lzc"].append((_name, args))
            return _real(*args)

        monkeypatch.setattr(libzfs_core, name, spy)

    class Popen(subprocess.Popen):
        def __init__(self, args, *a, **kw):
            seen["argv"].append(list(args))
            super().__init__(args, *a, **kw)

    monkeypatch.setattr(subprocess, "Popen", Popen)
    return seen


def test_backend_takes_the_libzfs_core_path(zfs_lake, calls):
    zfs = open_backend("zfs", zfs_lake)
    assert zfs.via == "libzfs_core"
    for v in ("data", "models"):
        (zfs.create_volume("proj", "ws1", v) / "f").write_text(v)
    calls["lzc"].clear(), calls["argv"].clear()

    zfs.snapshot("proj", "ws1", ["data", "models"], "a" * 40)

    wanted = sorted(f"{zfs_lake}/proj/workspaces/ws1/{v}@{'a' * 40}".encode() for v in ("data", "models"))
    snaps = [sorted(args[0]) for name, args in calls["lzc"] if name == "lzc_snapshot"]
    assert snaps == [wanted], "both volumes in one lzc_snapshot call"
    assert not [a for a in calls["argv"] if a[:2] == ["zfs", "snapshot"]], "no `zfs snapshot` process"
    # One lzc_snapshot is one transaction group.
    txgs = {subprocess.run(["zfs", "get", "-H", "-p", "-o", "value", "createtxg", n.decode()],
                           capture_output=True, text=True, check=True).stdout for n in wanted}
    assert len(txgs) == 1
    assert {s.name for s in zfs.snapshots("proj")} == {"a" * 40}

    # changed_since's probe snapshot is taken and dropped through libzfs_core too.
    calls["lzc"].clear()
    assert not zfs.changed_since("proj", "ws1", "data", "a" * 40)
    assert [name for name, _ in calls["lzc"]] == ["lzc_snapshot", "lzc_destroy_snaps"]


def test_lzc_snapshot_direct(zfs_lake):
    """pyzfs itself against the kernel, with no snapver code in between."""
    names = [f"{zfs_lake}@direct{i}".encode() for i in range(2)]
    libzfs_core.lzc_snapshot(names[:1])
    libzfs_core.lzc_snapshot(names[1:], {b"snapver:kind": b"test"})
    assert all(libzfs_core.lzc_exists(n) for n in names)
    libzfs_core.lzc_destroy_snaps(names, False)
    assert not any(libzfs_core.lzc_exists(n) for n in names)
