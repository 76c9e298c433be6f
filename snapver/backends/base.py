"""The few verbs every filesystem offers snapver, and how a lake picks its backend.

A backend speaks in logical names (project, workspace, volume, snapshot
name) and hides where those live: Btrfs subvolume paths, ZFS dataset names.
The core (lake.py) never sees a path it did not get from here, and nothing
but this package imports a backend module (the factory is in backends/__init__.py;
this module imports no backend).

Layout every backend keeps, in its own terms:

    <lake>/catalog.db
    <lake>/<project>/snapshots/<volume>/<snapshot name>   read-only
    <lake>/<project>/workspaces/<workspace>/<volume>      the live, writable volume
"""

from __future__ import annotations

import os
import signal
import stat
import subprocess
from abc import ABC, abstractmethod
from contextlib import AbstractContextManager, nullcontext
from datetime import datetime
from pathlib import Path
from typing import NamedTuple

from ..errors import CommandFailed, SnapverError
from ..names import parse_snapshot_name
from ..proc import failure, run
from ..safeio import open_regular


class Snapshot(NamedTuple):
    project: str
    volume: str
    name: str
    path: Path  # where its read-only files can be read
    created: datetime
    # A token that says "a live volume is clean as of this snapshot"; the
    # backend alone knows what it means (a Btrfs transid, a ZFS snapshot).
    mark: str
    # Creation order on its filesystem (Btrfs otransid, ZFS createtxg): ZFS
    # times have whole seconds only, and two commits can share one.
    seq: int = 0

    @property
    def age_key(self) -> tuple:
        """Sorts snapshots oldest first, even those made in the same second."""
        return (self.created, self.seq, self.name)

    @property
    def commit(self) -> str:
        return self._parsed()[0]

    @property
    def kind(self) -> str:
        return self._parsed()[1]

    def _parsed(self) -> tuple[str, str, datetime | None]:
        parsed = parse_snapshot_name(self.name)
        if parsed is None:  # backends list only names snapver made
            raise ValueError(f"{self.name} is not a snapshot name snapver makes")
        return parsed


class Space(NamedTuple):
    referenced: int  # bytes the snapshot shows
    exclusive: int  # bytes only it holds: what deleting it would free


class Footprint(NamedTuple):
    full_copies: int  # the sum of every snapshot's and live volume's referenced bytes
    on_disk: int  # the bytes they really take, each shared block counted once
    # Where on_disk is the filesystem's own account of its data (a Btrfs lake that is its own
    # filesystem): the bytes of its metadata, which hold small files inline, given apart.
    # None where on_disk comes from the datasets (ZFS) or a walk.
    metadata: int | None = None


# Btrfs: what btrfsspace keeps while some snapshot of <project>/snapshots/<volume> has known
# bytes (Backend.space_owed's one stat, on the hook's path, where btrfsspace is not imported).
KNOWN = "space-cache.d/known-{project}-{volume}"


class Change(NamedTuple):
    path: str  # relative to the volume root
    change: str  # added, changed, deleted


class Backend(ABC):
    """One lake on one filesystem."""

    name: str  # "btrfs", "zfs"
    # Whether a live volume's mark compares with any snapshot's (Btrfs: transaction IDs of
    # one filesystem), so changed_since(snapshot.mark) says if it was written after it.
    comparable_marks = False
    # Whether a snapshot's path can change while the snapshot lives (OpenZFS: it is under
    # its dataset's .zfs/snapshot, and a checkout renames the dataset into history, a gc's
    # promote moves snapshots to another dataset), so links into snapshots need re-pointing.
    snapshot_paths_move = False

    # -- the lake itself: where it is made, mounted again, found, trusted (class methods:
    # there is no lake yet to ask). The factory (backends/__init__.py) picks the class.
    @classmethod
    @abstractmethod
    def provision_image(cls, image: Path, size: int | None) -> str:
        """Make (or reuse) a lake in an image file; return its spec (needs root)."""

    @classmethod
    def lake_spec(cls, lake: str) -> str:
        """The spec to record for a lake a user named (--lake)."""
        return lake

    @classmethod
    def default_lake(cls, toplevel: Path) -> str | None:
        """The lake a working tree gets when none is named, if this filesystem offers one."""
        return None

    @classmethod
    @abstractmethod
    def ensure_mounted(cls, spec: str, image: Path) -> None:
        """An image-backed lake is mounted (or its pool imported) again after a reboot."""

    @classmethod
    def at_path(cls, path: Path) -> Backend | None:
        """The lake of this kind whose root is the folder path (a remote URL's), if any."""
        return None

    @classmethod
    def named(cls, spec: str) -> Backend | None:
        """The lake of this kind a non-path name gives (a ZFS dataset), if any."""
        return None

    def check_served(self, tree: Path) -> None:
        """Refuse (SnapverError) a lake the root daemon must not act on for a user: one
        that others than root may change, or reached through a symlink."""

    def describe(self) -> str:
        """The lake for people: 'the folder ...', 'the ZFS dataset ...'."""
        return f"the lake {self.spec()}"

    @property
    @abstractmethod
    def root(self) -> Path:
        """Directory where the lake is mounted: the catalog lives here."""

    @property
    def catalog_path(self) -> Path:
        return self.root / "catalog.db"

    @abstractmethod
    def spec(self) -> str:
        """What to store so the lake can be opened again (a path, a dataset)."""

    def steady(self) -> AbstractContextManager:
        """A context in which the backend may reuse what it read of the lake until it changes
        the lake itself: for a run that reads and sends (a push, the far end's listing), a
        read over every volume, or the steps of one operation with the workspace lock held;
        not for one that waits (for a lock, a build) while others change the lake. Nothing,
        by default."""
        return nullcontext()

    # live volumes
    @abstractmethod
    def create_volume(self, project: str, workspace: str, volume: str) -> Path:
        """Make an empty writable volume; return where it is mounted."""

    @abstractmethod
    def volume_path(self, project: str, workspace: str, volume: str) -> Path: ...

    @abstractmethod
    def volume_exists(self, project: str, workspace: str, volume: str) -> bool: ...

    @abstractmethod
    def mark(self, project: str, workspace: str, volume: str) -> str:
        """A token for the live volume's state now, for changed_since later."""

    @abstractmethod
    def changed_since(self, project: str, workspace: str, volume: str, mark: str | None) -> bool:
        """Whether the live volume may differ from the state `mark` recorded.

        Must be O(1) in data size and never say False when it changed: a wrong
        False would let a checkout discard work. An unknown mark is changed.
        """

    # snapshots
    @abstractmethod
    def snapshot(self, project: str, workspace: str, volumes: list[str], name: str) -> list[Snapshot]:
        """Snapshot the live volumes as `name`, all or none."""

    @abstractmethod
    def snapshots(self, project: str | None = None, volume: str | None = None,
                  readable: bool = True) -> list[Snapshot]:
        """Every snapver snapshot in the lake (optionally one project / volume).
        readable=False: their `path` need not be readable yet, where making it so costs
        (a mount per snapshot on zfs-fuse); for listings that never open a file."""

    @abstractmethod
    def find(self, project: str, volume: str, name: str) -> Snapshot | None: ...

    @abstractmethod
    def destroy(self, snap: Snapshot) -> None: ...

    @abstractmethod
    def copy_snapshot(self, snap: Snapshot, name: str) -> Snapshot:
        """A new read-only snapshot `name` of the same volume holding exactly snap's data, in
        O(1) (a rewritten commit gets its own snapshot); snap stays as it is. Refused if
        `name` exists. All or none: a crash leaves no snapshot `name`. The Snapshot returned
        is for the catalog; its `path` may not be readable yet (find gives one that is)."""

    @abstractmethod
    def clone_into_place(self, snap: Snapshot, workspace: str) -> str:
        """Make a writable CoW clone of snap the live volume, atomically; return its mark.

        The volume that was live is gone afterwards: the caller has made sure
        it was captured by a snapshot first.
        """

    def after_checkout(self) -> None:
        """Clean-up a checkout leaves until all its volumes are in place (nothing, by default)."""

    @abstractmethod
    def tidy(self, project: str, workspace: str, volumes: list[str], repair: bool = False) -> list[str]:
        """What an interrupted checkout left in this workspace, one line each, without the
        journal; with repair=True also put it right: a half-made swap is finished (its
        clone renamed into place) or dropped, so every volume is a whole live volume.
        Idempotent. Anything dropped was already kept by a snapshot (checkout keeps first)."""

    @abstractmethod
    def half_received(self, project: str, volumes: list[str], repair: bool = False) -> list[str]:
        """What receives that were cut or killed left of these volumes in the lake, one line
        each; with repair=True remove it. None of it was ever a snapshot. Call with the
        lake's receive lock held (received.Receiving), so a receive under way is not touched."""

    def seal_received(self, project: str, volume: str, name: str) -> None:
        """Finish a received snapshot a crash caught between the stream's end and the
        bookkeeping the backend does after it (ZFS: its snapver properties)."""

    @abstractmethod
    def live_origin(self, project: str, workspace: str, volume: str) -> tuple[str, str] | None:
        """(name, mark) of the snapshot the live volume was cloned from, as clone_into_place
        would have returned the mark; None for a volume made empty or unknown."""

    @abstractmethod
    def space(self, snap: Snapshot) -> Space: ...

    def spaces(self, snaps: list[Snapshot]) -> list[Space]:
        """space() of each, in order: what a page of `du` or the Space view asks, where a
        backend can answer many at once cheaper than one by one."""
        return [self.space(s) for s in snaps]

    def reap(self, project: str, workspace: str, quiet_for: float = 0.0) -> list[str]:
        """Delete what checkouts of project left for later (Btrfs: retired volumes), off their
        path; gc calls it, with workspace's lock held, before it destroys snapshots, and
        snapverd with no lock ("") and quiet_for, to touch only workspaces whose last
        checkout is that many seconds old. One line per thing deleted."""
        return []

    # the registry (releases, derived volumes, du)
    @abstractmethod
    def hold(self, snap: Snapshot, tag: str) -> None:
        """Pin snap under tag so that nothing destroys it until unhold (a release)."""

    @abstractmethod
    def unhold(self, snap: Snapshot, tag: str) -> None:
        """Undo hold(snap, tag); a tag that is not held is not an error."""

    @abstractmethod
    def clone_volume(self, snap: Snapshot, workspace: str, volume: str) -> Path:
        """Make a new live volume `volume` of workspace as a writable CoW clone of snap
        (of another volume): no data is copied. Return where it is mounted."""

    def same_data(self, old: Snapshot, new: Snapshot) -> bool:
        """Whether two snapshots of one volume provably hold the same data, read from the
        filesystem's own change tracking in O(1) (no file is read): a commit snapshot of a
        volume nobody wrote since its last snapshot, say. False when it cannot be proven
        (the caller then treats them as different: a cascade rebuilds)."""
        return (old.project, old.volume, old.name) == (new.project, new.volume, new.name)

    @abstractmethod
    def retire_volume(self, project: str, workspace: str, volume: str) -> None:
        """Take away a writable volume that is no workspace's live data (a build's clone):
        gone, or (ZFS, where a snapshot of it is another volume's origin) set aside read-only
        with its snapshots, as a checkout retires a live volume. Nothing if it is not there."""

    def space_owed(self, project: str, volume: str) -> bool:
        """Whether space() of this volume's next snapshot would walk its files (no snapshot of
        it has known bytes yet): cheap, asked on the Git hook's path (spacewarm)."""
        return False

    @abstractmethod
    def live_space(self, project: str, workspace: str, volume: str) -> Space:
        """Space of a live volume, as space() measures a snapshot."""

    @abstractmethod
    def footprint(self, project: str) -> Footprint:
        """What the project's snapshots and live volumes would take as full copies,
        and what they really take on disk."""

    def diff(self, old: Path, new: Path) -> list[Change]:
        """Files added, changed and deleted from old to new (walks both trees)."""
        return walk_diff(old, new)

    # moving snapshots between lakes (push, pull): the filesystem's own send and receive
    @abstractmethod
    def identity(self, snap: Snapshot) -> str:
        """The same on every lake that holds this snapshot by send and receive (and only
        there): an incremental stream applies where the identity of its base matches."""

    def identities(self, project: str) -> dict[tuple[str, str], str]:
        """(volume, name) -> identity of every snapshot of project."""
        return {(s.volume, s.name): self.identity(s) for s in self.snapshots(project, readable=False)}

    @abstractmethod
    def send_bases(self, snap: Snapshot) -> list[tuple[Snapshot, bool]]:
        """Snapshots an incremental send of snap can start from, best first, each with
        True where the receiver must start a new clone from it (a ZFS clone's origin)."""

    def appendable(self, project: str) -> set[tuple[str, str]] | None:
        """(volume, name) of the snapshots a plain incremental stream can be received on;
        None for all of them (Btrfs: any subvolume can be a parent)."""
        return None

    @abstractmethod
    def send_argv(self, snap: Snapshot, base: Snapshot | None) -> list[str]:
        """The command that writes snap's send stream (incremental from base) to stdout."""

    def estimate(self, snap: Snapshot, base: Snapshot | None) -> int | None:
        """Bytes the stream will take, if the filesystem can tell cheaply; None if not."""
        return None

    def resumable(self) -> dict[tuple[str, str], str] | None:
        """None where an interrupted receive starts over; else (volume, name) -> token of
        every receive that stopped half-way (ZFS `receive -s`)."""
        return None

    def resume_argv(self, token: str) -> list[str]:
        raise SnapverError(f"the {self.name} backend cannot resume a transfer")

    def stream_complete(self, tail: bytes) -> bool:
        """Whether a stream ending in these bytes was sent whole (ZFS checks that itself)."""
        return True

    @abstractmethod
    def receive(self, project: str, volume: str, name: str, base: str | None, clone: bool,
                resuming: bool = False) -> Receive:
        """Start receiving a stream as snapshot `name` of volume, incremental from the
        snapshot `base` (clone: as a new clone of it), or (resuming) the rest of a stream
        that was cut, wherever its half sits. The caller feeds Receive.proc.stdin."""


class Receive:
    """A `btrfs receive` / `zfs receive` under way; the caller writes the stream to `stdin`.

    finish() either makes the result a snapshot (`done`) or removes every trace
    of it (`undo`): a stream cut short is never listed as a snapshot. The
    snapshot it returns is for the catalog; its `path` may not be readable yet
    (Backend.find gives one that is). Whether
    it was whole is `complete`, which the caller learns from the stream's own
    end marker (Backend.stream_complete), because EOF alone proves nothing:
    btrfs receive takes EOF at a command boundary for a finished stream.
    So the receiving process never sees EOF at all. It holds its own pipe's
    write end, ends at the stream's end marker (btrfs receive -e; zfs
    receive stops at END by itself), and dies with this process, so that a
    crash of snapver mid-stream kills it instead of letting it finish.
    """

    FINISH_SECONDS = 120  # for it to end after the whole stream went in

    def __init__(self, argv: list[str], done, undo, release=None):
        import tempfile  # stdlib, but ~1.5 ms of every hook's start-up: only receives need it

        self.argv = argv
        self._errors = tempfile.TemporaryFile()
        read_end, write_end = os.pipe()
        parent = os.getpid()
        try:  # Popen, not proc.run: the stream is written into its stdin as it arrives
            self.proc = subprocess.Popen(argv, stdin=read_end, stdout=subprocess.DEVNULL, stderr=self._errors,
                                         pass_fds=(write_end,), preexec_fn=lambda: _die_with(parent))
        finally:
            os.close(read_end)
        self.stdin = os.fdopen(write_end, "wb", buffering=0)
        self._done, self._undo, self._release = done, undo, release

    def finish(self, complete: bool) -> Snapshot:
        try:
            return self._finish(complete)
        finally:
            if self._release:
                self._release()

    def _finish(self, complete: bool) -> Snapshot:
        try:
            self.stdin.close()
        except BrokenPipeError:
            pass
        try:
            code = self.proc.wait(timeout=self.FINISH_SECONDS if complete else 0)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            code = self.proc.wait()
            complete = complete and code == 0
        self._errors.seek(0)
        errors = self._errors.read()
        self._errors.close()
        if code != 0 or not complete:
            self._undo()
            if complete:
                raise failure(self.argv, errors)
            raise CommandFailed("the stream stopped half-way; nothing of it was kept: run it again")
        try:
            return self._done()
        except BaseException:
            self._undo()
            raise


def _die_with(parent: int) -> None:
    """In a child before exec: get SIGKILL when the parent dies (prctl PR_SET_PDEATHSIG)."""
    import ctypes  # in the child only: ctypes would cost every hook's start-up ~2 ms

    ctypes.CDLL(None).prctl(1, signal.SIGKILL)
    if os.getppid() != parent:  # it died before prctl took effect
        os._exit(1)


def walk_diff(old: Path, new: Path) -> list[Change]:
    """Compare two trees: O(files), the fallback where the filesystem cannot say what changed."""
    changes: list[Change] = []
    _walk(old, new, "", changes)
    return changes


def _entries(root: Path, rel: str) -> dict[str, os.stat_result]:
    try:
        with os.scandir(root / rel if rel else root) as it:
            return {e.name: e.stat(follow_symlinks=False) for e in it}
    except FileNotFoundError:
        return {}


def _walk(old: Path, new: Path, rel: str, changes: list[Change]) -> None:
    a, b = _entries(old, rel), _entries(new, rel)
    for name in sorted(a.keys() | b.keys()):
        walk_entry(old, new, f"{rel}/{name}" if rel else name, a.get(name), b.get(name), changes)


def walk_entry(old: Path, new: Path, path: str, sa: os.stat_result | None, sb: os.stat_result | None,
               changes: list[Change]) -> None:
    """The walk's verdict on one entry (lstat on each side, None where absent) and all below it:
    btrfsdiff applies it to the paths a send stream names, so both give the same answer."""
    a_dir = sa is not None and stat.S_ISDIR(sa.st_mode)
    b_dir = sb is not None and stat.S_ISDIR(sb.st_mode)
    if sa is None or sb is None or a_dir != b_dir:
        if sa is not None:
            _all(old, path, a_dir, "deleted", changes)
        if sb is not None:
            _all(new, path, b_dir, "added", changes)
    elif a_dir:
        _walk(old, new, path, changes)
    elif not _same_file(old / path, new / path, sa, sb):
        changes.append(Change(path, "changed"))


def _all(root: Path, path: str, is_dir: bool, change: str, changes: list[Change]) -> None:
    changes.append(Change(path + ("/" if is_dir else ""), change))
    if is_dir:
        for dirpath, dirnames, filenames in os.walk(root / path):
            dirnames.sort()
            rel = os.path.relpath(dirpath, root)
            for d in dirnames:
                changes.append(Change(f"{rel}/{d}/", change))
            for f in sorted(filenames):
                changes.append(Change(f"{rel}/{f}", change))


def _same_file(a: Path, b: Path, sa: os.stat_result, sb: os.stat_result) -> bool:
    if stat.S_IFMT(sa.st_mode) != stat.S_IFMT(sb.st_mode) or sa.st_size != sb.st_size:
        return False
    if stat.S_ISLNK(sa.st_mode):
        return os.readlink(a) == os.readlink(b)
    if not stat.S_ISREG(sa.st_mode):
        return True
    # A CoW snapshot keeps mtime for files it did not touch; equal size and
    # mtime is the rsync quick check, anything else is compared byte by byte.
    # Whole-second mtimes (zfs-fuse) cannot tell two writes in one second
    # apart, so there the bytes decide too.
    if sa.st_mtime_ns == sb.st_mtime_ns and sa.st_mtime_ns % 1_000_000_000:
        return True
    # Not filecmp, which opens by name: a FIFO put there since the scandir would block it.
    fa, fb = open_regular(a), open_regular(b)
    try:
        if fa is None or fb is None:
            return False
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True
    finally:
        for f in (fa, fb):
            if f is not None:
                f.close()


def create_image_file(image: Path, size: int | None, minimum: int, make: list[str]) -> None:
    """A sparse file of `size` bytes formatted by the argv `make` (the image path is
    appended); removed again if formatting fails, so a failed init leaves nothing."""
    if size is None:
        raise SnapverError(f"{image} does not exist: pass --size to create it (e.g. --size 20G)")
    if size < minimum:
        raise SnapverError(f"--size must be at least {minimum // 1024**2}M for this image")
    image.parent.mkdir(parents=True, exist_ok=True)
    with open(image, "xb") as f:
        f.truncate(size)
    try:
        run([*make, str(image)])
    except BaseException:
        image.unlink()
        raise
