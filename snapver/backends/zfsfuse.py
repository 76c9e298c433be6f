"""Every place the ZFS backend works around zfs-fuse 0.7.0 (pool version 23), where tests run.

Measured there: no `written` property, no `zfs diff`, no `zfs list -p`, no .zfs snapdir, no
`zfs send -nP`, no `receive -s`, `zfs holds` broken (the userrefs property works), `zfs set`
takes one property per call, `zfs snapshot` takes one name (but -r is atomic across
descendants), `canmount=noauto` at clone time still mounts, rename/destroy of a mounted
dataset (or rename of one whose snapshots have a mounted clone) fails "dataset is busy",
and a plain incremental stream is refused by a clone of its base ("invalid backup stream").
Each function says which of these it works around; OpenZFS takes the same paths, which
are correct there too, only not always the shortest.
"""

from __future__ import annotations

import struct
import subprocess
import time
from contextlib import contextmanager
from pathlib import Path

from ..errors import CommandFailed
from ..proc import ask, run
from .zfsnode import View, ZfsNode

# zfs send stream: 312-byte records; an incremental stream between two
# identical snapshots is exactly BEGIN then END.
RECORD = 312
DRR_BEGIN, DRR_END = 0, 5


# ------------------------------------------------------------------ "dataset is busy"

def unmounted(argv: list[str], dataset: str) -> str:
    """Rename or destroy a filesystem that may be mounted.

    zfs-fuse unmounts inside `zfs rename`/`zfs destroy` but lets go of the
    dataset a moment after the FUSE unmount returns, so the operation fails
    "dataset is busy" (measured: most of the time), and later the busier the
    machine (CI, with a guest beside the suite, once needed more than 6 s).
    Unmounting first and retrying for about 13 s makes it reliable; a dataset
    that stays busy (a shell inside it) still fails with ZFS's words.
    """
    ask(["zfs", "unmount", dataset])  # not mounted: fine
    for delay in (0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, None):
        try:
            return run(argv)
        except CommandFailed as e:
            if "busy" not in str(e) or delay is None:
                raise
            time.sleep(delay)
    raise AssertionError("unreachable")


def rename(node: ZfsNode, old: str, new: str) -> None:
    unmounted(["zfs", "rename", "-p", old, new], old)
    node.changed()
    props = node.get(new, ["mounted", "mountpoint"])[new]
    if props["mountpoint"] != "none":
        node.mount(new, props["mounted"] == "yes")


def destroy(node: ZfsNode, dataset: str, recursive: bool = False) -> None:
    node.changed()
    unmounted(["zfs", "destroy", *(["-r"] if recursive else []), dataset], dataset)


# ------------------------------------------------------------------ no .zfs snapdir: views

def view_name(lake: str, project: str, volume: str, name: str) -> str:
    """zfs-fuse has no .zfs/snapshot: a snapshot is read through a read-only clone, its view."""
    return f"{lake}/{project}/snapshots/{volume}/{name}"


def ensure_view(node: ZfsNode, view: View, project: str, volume: str, full: str) -> Path:
    """The mounted view of snapshot `full`: O(1) to make, mounted by ZFS itself, and destroy()
    removes it before the snapshot it depends on."""
    name = view_name(node.lake, project, volume, full.partition("@")[2])
    ds = view.dataset(name)
    if ds is None:
        node.changed(project)
        run(["zfs", "create", "-p", name.rpartition("/")[0]])
        try:
            run(["zfs", "clone", "-o", "readonly=on", "-o", "atime=off", full, name])
        except CommandFailed:
            if not node.exists(name):  # else another process made it first
                raise
        props = node.get(name, ["mountpoint", "mounted"])[name]
        mounted, mountpoint = props["mounted"] == "yes", props["mountpoint"]
    else:
        mounted, mountpoint = ds.mounted, ds.mountpoint
    if not mounted:
        # A checkout killed while its views stepped aside for a rename: an unmounted
        # view would show an empty directory where the snapshot's files are.
        ask(["zfs", "mount", name])  # already mounted again: fine
    return Path(mountpoint)


def mounted_clones(view: View, dataset: str) -> list[str]:
    """The mounted clones of dataset's snapshots: its snapshot views, and the live volumes of
    other working trees that a checkout made from its snapshots."""
    return [d.name for d in view.datasets.values()
            if d.origin.partition("@")[0] == dataset and d.mounted]


@contextmanager
def clones_aside(clones: list[str]):
    """zfs-fuse will not rename a dataset, nor receive into it, while a clone of one of its
    snapshots is mounted: the clones step aside meanwhile (OpenZFS needs none of this). A
    clone in use (a shell inside another working tree's volume) cannot step aside; the rename
    is tried anyway, since zfs-fuse refuses it only some of the time, and if it is refused the
    error names the clone in use."""
    done: list[str] = []
    busy: list[str] = []
    for c in clones:
        (done if ask(["zfs", "unmount", c]) is not None else busy).append(c)
    try:
        yield
    except CommandFailed as e:
        if not busy:
            raise
        raise CommandFailed(f"{e}; zfs-fuse will not rename a dataset while a clone of one of its "
                            f"snapshots is in use ({', '.join(busy)}): close what uses it and run "
                            "the command again") from None
    finally:
        for c in done:
            ask(["zfs", "mount", c])  # already mounted: fine


def unmounted_clones(view: View) -> list[str]:
    """Snapshot views and live volumes left unmounted by a rename killed before it mounted
    them again (clones_aside)."""
    places = (f"{view.top}/snapshots/", f"{view.top}/workspaces/")
    return [d.name for d in view.datasets.values()
            if d.origin and not d.mounted and d.mountpoint != "none" and d.name.startswith(places)]


# ------------------------------------------------------------------ no written@snap

def same_blocks(base: str, probe: str) -> bool:
    """Whether the incremental stream base -> probe is empty (BEGIN then END): zfs-fuse has
    no `written@snap`, and space accounting cannot prove "unchanged" (a same-size overwrite
    of a clone's block moves no counter), so changed_since reads the stream's first records."""
    # A pipe, not proc.run: only the stream's first records are read, then the send is killed.
    proc = subprocess.Popen(["zfs", "send", "-i", base, probe],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    assert proc.stdout is not None  # stdout=PIPE
    try:
        head = proc.stdout.read(2 * RECORD + 1)
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()
    if len(head) != 2 * RECORD:
        return False
    types = struct.unpack_from("<I", head, 0)[0], struct.unpack_from("<I", head, RECORD)[0]
    return types == (DRR_BEGIN, DRR_END)


# ------------------------------------------------------------------ missing commands and options

_no_dry_run: set[str] = set()  # lakes whose zfs has no `send -nP` (asked once per process)


def estimate(lake: str, argv: list[str]) -> int | None:
    """`zfs send -nP` where it exists; zfs-fuse has no dry run, which is asked only once."""
    if lake in _no_dry_run:
        return None
    # Not proc.ask: a failure's stderr tells a zfs without a dry run ("invalid option") apart.
    done = subprocess.run([*argv[:2], "-nP", *argv[2:]], capture_output=True, text=True)
    for line in done.stdout.splitlines() if done.returncode == 0 else []:
        if line.startswith("size"):
            return int(line.split()[-1])
    if done.returncode != 0 and "invalid option" in done.stderr:
        _no_dry_run.add(lake)
    return None


def set_each(node: ZfsNode, target: str, props: dict[str, str]) -> None:
    """zfs-fuse's `zfs set` takes one property per call."""
    node.changed()
    for key, value in props.items():
        run(["zfs", "set", f"{key}={value}", target])


def snapshot_cli(node: ZfsNode, full_names: list[str], props: dict[str, str], fault) -> None:
    """Take every snapshot in one transaction group, or none, without libzfs_core: the zfs-fuse
    CLI takes one snapshot name, but -r snapshots a dataset and all its descendants in one
    txg, and a workspace dataset's volumes are exactly its descendants."""
    node.changed()
    options = [a for k, v in props.items() for a in ("-o", f"{k}={v}")]
    parents = {n.rpartition("/")[0] for n in full_names}
    name = full_names[0].partition("@")[2]
    if len(full_names) > 1 and len(parents) == 1:
        parent = parents.pop()
        if set(node.children(parent)) == {n.partition("@")[0] for n in full_names}:
            run(["zfs", "snapshot", "-r", *options, f"{parent}@{name}"])
            run(["zfs", "destroy", f"{parent}@{name}"])
            fault("snapshot-volume")  # all at once: a kill here leaves the whole set
            return
    made: list[str] = []
    try:  # a subset of the volumes: one at a time, undone on failure
        for full in full_names:
            run(["zfs", "snapshot", *options, full])
            made.append(full)
            fault("snapshot-volume")
    except BaseException:
        for full in made:
            run(["zfs", "destroy", full])
        raise


def head_of_chain(node: ZfsNode, base_full: str, target: str) -> str:
    """Make received snapshot base_full the newest snapshot of a dataset `target`, so that a
    plain incremental stream from it can be received (an amended commit sent from its parent
    while the old commit followed the parent in the received chain). zfs-fuse refuses such a
    stream in a clone of its base ("invalid backup stream"), so the clone is promoted: it
    takes the base and every older snapshot of the chain with it, and the rest of the chain
    becomes a clone of the base. No snapshot is renamed or destroyed; each keeps its guid."""
    node.changed()
    run(["zfs", "clone", "-o", "readonly=on", "-o", "atime=off", base_full, target])
    try:
        run(["zfs", "promote", target])
    except BaseException:
        destroy(node, target)
        raise
    return target
