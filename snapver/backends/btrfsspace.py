"""Space on Btrfs (du, show --space) in O(changes): from send streams between sibling
snapshots (delta_space, at the end), with the walk kept for a volume's first snapshot to be
measured (no sibling's bytes known yet), a snapshot whose named files have hard links and
where send cannot run, each walked once and remembered (issues 16, 19). The live volume is
btrfslive's (a snapshot of it, measured as one), the project's footprint btrfsfootprint's.

Why streams and not qgroups (measured, bench notes in the README): qgroups give referenced and
exclusive bytes per subvolume at once, but they are a switch on the whole filesystem, their
rescan on enabling walks every extent of every snapshot, and the kernel traces shared extents
on every commit and subvolume drop, the cost growing with the snapshots that share them.

What the kernel offers was weighed first: simple quotas need btrfs-progs 6.7+ (Debian 12 has
6.2) and count a block against the subvolume that wrote it, not what a snapshot shows or
would free; qgroups give exactly that, but have the kernel trace shared trees when a
snapshot or retired volume is deleted (or mark themselves inconsistent until a rescan of
the whole filesystem), which is the very work checkouts keep off their path (not measured
here yet). So Btrfs keeps its walk (`btrfs filesystem du`, FIEMAP per file), and this
module remembers its answers in <lake>/space-cache.json:

- a snapshot's referenced bytes never change (it is read-only): kept by its UUID forever;
- its exclusive bytes (what deleting it frees) change whenever a subvolume that shares
  blocks with it comes or goes or is written: kept with a key made of every subvolume of
  the project (UUID and generation), so any such change measures again. Blocks shared by
  reflink with files outside the project are not in the key: there exclusive may be
  overstated until something in the project changes;
- a live volume walked (where btrfslive cannot do better) is kept like a snapshot's
  exclusive bytes (its generation is in the key).

A walk says so on stderr when stderr is a terminal (what it measures and the seconds so far:
one line, rewritten each second; btrfs-progs reports no progress of its own, and a walk split
by folders would count a file hard-linked across them twice). Walks of one volume's snapshots
are one at a time across processes (walk_lock): a command that finds one under way (the
measure started after a volume's first commit, spacewarm) waits for it, says so, and then
measures from the stream to the snapshot it measured instead of walking too.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import stat
import sys
import threading
import time
from pathlib import Path

from .. import linux
from ..errors import SnapverError
from .base import KNOWN, Space

CACHE = "space-cache.json"


class SpaceCache:
    def __init__(self, root: Path):
        self._path = root / CACHE
        try:
            self._doc = json.loads(self._path.read_text())
            if not isinstance(self._doc, dict):
                raise ValueError
        except (OSError, ValueError):
            self._doc = {}

    def get(self, uuid: str, key: str) -> Space | None:
        hit = self._doc.get(uuid)
        if isinstance(hit, list) and len(hit) == 3 and hit[2] == key:
            return Space(referenced=int(hit[0]), exclusive=int(hit[1]))
        return None

    def referenced(self, uuid: str) -> int | None:
        hit = self._doc.get(uuid)
        return int(hit[0]) if isinstance(hit, list) and len(hit) == 3 else None

    def put(self, uuid: str, key: str, space: Space, alive: set[str] | None = None) -> None:
        self._doc[uuid] = [space.referenced, space.exclusive, key]
        if alive is not None:  # forget what is gone
            self._doc = {u: v for u, v in self._doc.items() if u in alive or u.startswith("footprint:")}
        tmp = self._path.with_name(f"{CACHE}.{os.getpid()}")
        try:
            # 0644 whatever the umask: only who owns the lake may teach it sizes.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "w") as f:
                os.fchmod(fd, 0o644)
                f.write(json.dumps(self._doc))
            os.replace(tmp, self._path)
        except OSError:
            tmp.unlink(missing_ok=True)  # a lake the caller may not write: no cache, same answers


def key(infos: list[tuple[str, int]]) -> str:
    """What exclusive bytes depend on: every subvolume of the project, as (uuid, generation)."""
    return hashlib.sha256(repr(sorted(infos)).encode()).hexdigest()[:32]


@contextlib.contextmanager
def measuring(what: str, waiting: bool = False):
    """While a walk runs: one line on stderr, rewritten every second with the time so far,
    when stderr is a terminal (nothing otherwise: a pipe, a log, the UI's server)."""
    if not sys.stderr.isatty():
        yield
        return
    text = (f"waiting for the measure of {what} already under way (after its commit)" if waiting
            else f"measuring {what} (walks its files once; remembered after)")
    stop, start = threading.Event(), time.monotonic()

    def tick() -> None:
        while True:
            sys.stderr.write(f"\r{text} {time.monotonic() - start:.0f} s\x1b[K")
            sys.stderr.flush()
            if stop.wait(1):
                break

    ticker = threading.Thread(target=tick, daemon=True)
    ticker.start()
    try:
        yield
    finally:
        stop.set()
        ticker.join()
        sys.stderr.write("\r\x1b[K")
        sys.stderr.flush()


@contextlib.contextmanager
def walk_lock(root: Path, name: str, what: str):
    """One walk at a time per volume folder, across processes (the measure started after a
    commit, snapverd's, a user's command, the UI): who waited finds the answer kept (yields
    True), and does not walk the same files again. No lock where the lake is read-only to the
    caller: it walks (yields False)."""
    lock = root / DELTA / f"walk-{name}.lock"
    try:
        lock.parent.mkdir(mode=0o755, exist_ok=True)
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError:
        yield False
        return
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            waited = False
        except BlockingIOError:
            with measuring(what, waiting=True):
                fcntl.flock(fd, fcntl.LOCK_EX)
            waited = True
        yield waited
    finally:
        os.close(fd)  # and the lock with it


def walk(root: Path, path: Path, what: str, du, kept, lock: str | None = None) -> Space:
    """du(path) under the walk lock of its folder (or the one named); kept() is asked first
    once another walk was waited for (it may have just measured this)."""
    with walk_lock(root, lock or f"{path.parent.parent.parent.name}-{path.parent.parent.name}-{path.parent.name}",
                   what) as waited:
        if waited and (hit := kept()) is not None:
            return hit
        with measuring(what):
            return du(path)


def subvolumes(project_dir: Path, info) -> list[tuple[str, int]]:
    """(uuid, generation) of every subvolume snapver keeps in a project folder: snapshots,
    live volumes, volumes waiting in a workspace's trash. `info` is btrfs.subvol_info."""
    # Writes reach a subvolume's generation when their transaction commits (as in btrfs.mark).
    linux.syncfs(project_dir)
    found = []
    for pattern in ("snapshots/*/*", "workspaces/*/*", "workspaces/*/.*", "workspaces/*/.trash/*/*"):
        for path in sorted(project_dir.glob(pattern)):
            try:
                if path.is_dir() and not path.is_symlink() and path.stat().st_ino == 256:
                    i = info(path)
                    found.append((i.uuid, i.generation))
            except (OSError, SnapverError):
                continue  # deleted meanwhile
    return found


def snapshot_space(root: Path, project_dir: Path, path: Path, what: str, du, info) -> Space:
    """A snapshot's (or a live volume's) Space, walked (du) only when the cache cannot answer."""
    mine = info(path).uuid
    subs = subvolumes(project_dir, info)
    k = key(subs)
    hit = SpaceCache(root).get(mine, k)
    if hit is None:
        hit = walk(root, path, what, du, lambda: SpaceCache(root).get(mine, k))
        SpaceCache(root).put(mine, k, hit, alive={u for u, _ in subs})
        if info(path).readonly:
            remember_ref(_Store(root), path, mine, hit.referenced, info)
    return hit


# ------------------------------------------------------------------ O(changes): from send streams
#
# A snapshot's exclusive bytes are the extents no other subvolume references. A file that a
# --no-data send stream between it and a sibling snapshot does not name has exactly that
# sibling's extents (send compares the trees by extent: an unchanged file is skipped), so all
# its extents are shared, and it adds nothing to the walk's Exclusive. Hence, with any sibling
# still there, Exclusive = the walk's Exclusive over the files the stream names, measured now
# (FIEMAP on those files only: sharing changes as other subvolumes come, go or are written).
# Referenced bytes never change for a read-only snapshot: the sibling's, plus what the named
# files take in it, minus what they took in the sibling; the first snapshot of a volume to be
# asked is walked once (there is no sibling whose bytes are known yet).
#
# Kept in <lake>/space-cache.d/: per volume folder, its snapshots' (uuid, otransid), updated from
# a listing of names (no ioctl per snapshot per call); per snapshot, its referenced bytes and
# the files named between it and the sibling it was measured against (immutable while both are
# there). Nothing here is needed: a cache that cannot be read or written only costs time.

DELTA = "space-cache.d"
_CHUNK = 1000  # paths per `btrfs filesystem du` call (argv stays far below ARG_MAX)


class _Store:
    def __init__(self, root: Path):
        self.dir = root / DELTA

    def read(self, name: str) -> dict:
        try:
            doc = json.loads((self.dir / f"{name}.json").read_text())
            return doc if isinstance(doc, dict) else {}
        except (OSError, ValueError):
            return {}

    def write(self, name: str, doc: dict) -> None:
        tmp = self.dir / f".{name}.{os.getpid()}"
        try:
            self.dir.mkdir(mode=0o755, exist_ok=True)
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o644)
            with os.fdopen(fd, "w") as f:
                os.fchmod(fd, 0o644)
                f.write(json.dumps(doc))
            os.replace(tmp, self.dir / f"{name}.json")
        except OSError:
            tmp.unlink(missing_ok=True)


_SEEN: dict[Path, tuple[int, dict]] = {}  # folder -> (its mtime, its index), in this process


def _index_key(folder: Path) -> str:
    return f"index-{folder.parent.parent.name}-{folder.name}"


def siblings(store: _Store, folder: Path, info) -> dict[str, list]:
    """{name: [uuid, otransid(, referenced bytes once known)]} of the read-only snapshots in a
    volume's folder: the names from one listing, an ioctl only for names not seen before."""
    key = _index_key(folder)
    try:
        mtime = os.stat(folder).st_mtime_ns
    except OSError:
        return {}
    seen = _SEEN.get(folder)
    if seen is not None and seen[0] == mtime:
        return seen[1]  # no snapshot came or went since (a long-lived reader: snapver ui)
    doc = store.read(key)
    try:
        present = set(os.listdir(folder))
    except OSError:
        return {}
    changed = False
    for gone in set(doc) - present:
        (store.dir / f"{doc.pop(gone)[0]}.json").unlink(missing_ok=True)  # what it knew goes with it
        changed = True
    for name in present - set(doc):
        try:
            i = info(folder / name)
        except (OSError, SnapverError):
            continue  # not a subvolume, or deleted meanwhile
        if i.readonly:
            doc[name] = [i.uuid, i.otransid]
            changed = True
    if changed:
        store.write(key, doc)
        if not any(len(v) > 2 for v in doc.values()):
            known(store, folder).unlink(missing_ok=True)
    _SEEN[folder] = (mtime, doc)
    return doc


def known(store: _Store, folder: Path) -> Path:
    """Exists while some snapshot of the folder has its referenced bytes known, so that the
    next one's are O(changes): the one stat the Git hook makes (spacewarm) to tell whether a
    first measure is owed."""
    return store.dir.parent / KNOWN.format(project=folder.parent.parent.name, volume=folder.name)


def known_referenced(root: Path, path: Path, uuid: str, info) -> int | None:
    """The referenced bytes of the read-only snapshot at path (whose UUID the caller has read)
    if a measure found them before (they never change), read without measuring anything:
    None if none did. O(1): no look at the other subvolumes, which only the exclusive bytes
    depend on."""
    store = _Store(root)
    listed = siblings(store, path.parent, info).get(path.name)
    if listed is not None and listed[0] == uuid and len(listed) > 2:
        return int(listed[2])
    ref = store.read(uuid).get("ref")
    return int(ref) if ref is not None else SpaceCache(root).referenced(uuid)


def remember_ref(store: _Store, path: Path, uuid: str, ref: int, info) -> None:
    """A snapshot's referenced bytes, known from now on to its siblings' measures."""
    index = siblings(store, path.parent, info)
    entry = index.get(path.name)
    if entry is None or entry[0] != uuid:
        return
    if len(entry) == 2:
        entry.append(int(ref))
        store.write(_index_key(path.parent), index)
    with contextlib.suppress(OSError):  # made once (its time: when the first was known)
        os.close(os.open(known(store, path.parent), os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644))


def file_totals(tree: Path, rels: list[str]) -> tuple[int, int]:
    """(Total, Exclusive) of `btrfs filesystem du` over these regular files of tree, as the walk
    counts them."""
    return totals_many([(tree, rels)])[0]


def totals_many(named: list[tuple[Path, list[str]]]) -> list[tuple[int, int]]:
    """file_totals of each (tree, its files), for all of them in one `btrfs filesystem du` per
    1000 files rather than one per tree (a page of snapshots). -s prints one line per argument,
    in order; a name with a newline in it goes alone (its line is split in two)."""
    from .. import proc

    paths = [(i, str(tree / r.rstrip("\0"))) for i, (tree, rels) in enumerate(named) for r in rels]
    totals = [[0, 0] for _ in named]
    plain = [x for x in paths if "\n" not in x[1]]
    batches = [plain[i:i + _CHUNK] for i in range(0, len(plain), _CHUNK)] + [[x] for x in paths if "\n" in x[1]]
    for batch in batches:
        lines = proc.run(["btrfs", "filesystem", "du", "-s", "--raw", "--", *(p for _, p in batch)]).splitlines()[1:]
        if "\n" in batch[0][1]:
            lines = lines[:1]
        if len(lines) != len(batch):
            raise SnapverError(f"btrfs filesystem du printed {len(lines)} lines for {len(batch)} files: "
                               "a btrfs-progs this version of snapver does not know")
        for (i, _), line in zip(batch, lines):
            fields = line.split(None, 3)
            if len(fields) >= 3 and fields[0].isdigit() and fields[1].isdigit():
                totals[i][0] += int(fields[0])
                totals[i][1] += int(fields[1])
    return [(total, exclusive) for total, exclusive in totals]


def changed_files(old: Path, new: Path) -> tuple[list[str], list[str]] | None:
    """The regular files of old and of new that the send stream between them names (whole
    subtrees it made, removed or moved: every file below). None where send cannot say. A
    file with hard links is listed with a trailing NUL: its other names may be unnamed."""
    from . import btrfsdiff

    data = btrfsdiff.stream(old, new)
    if data is None:
        return None
    try:
        found = btrfsdiff.parse(data)
    except ValueError:
        return None
    return _files(old, found), _files(new, found)


def _files(tree: Path, found) -> list[str]:
    out: list[str] = []

    def collect(rel: str, node, whole: bool) -> None:
        try:
            st = os.lstat(tree / rel) if rel else os.lstat(tree)
        except (FileNotFoundError, NotADirectoryError):
            return
        if stat.S_ISREG(st.st_mode):
            out.append(rel + ("\0" if st.st_nlink > 1 else ""))
        elif stat.S_ISDIR(st.st_mode):
            if whole:
                for dirpath, dirnames, filenames in os.walk(tree / rel):
                    base = os.path.relpath(dirpath, tree)
                    for f in filenames:
                        fst = os.lstat(os.path.join(dirpath, f))
                        if stat.S_ISREG(fst.st_mode):
                            out.append((f if base == "." else f"{base}/{f}") + ("\0" if fst.st_nlink > 1 else ""))
            else:
                for name, child in node.children.items():
                    collect(f"{rel}/{name}" if rel else name, child, child.whole)

    collect("", found, False)
    return out


def delta_space(root: Path, path: Path, du, info, walking: bool = True) -> Space | None:
    """A snapshot's Space from the stream to a sibling (see above); None when it has no
    sibling or send cannot run (the caller walks), or, with walking=False, where this would
    walk it."""
    plan = delta_plan(root, path, du, info, walking)
    if plan is None:
        return None
    return Space(referenced=plan[0], exclusive=file_totals(path, plan[1])[1])


def delta_plan(root: Path, path: Path, du, info, walking: bool = True,
               sync: bool = True) -> tuple[int, list[str]] | None:
    """delta_space's answer but for its exclusive bytes: (referenced bytes, the files the
    stream named in it, whose exclusive bytes are the snapshot's), so that a page of
    snapshots measures its files in one `btrfs filesystem du` (totals_many). sync=False:
    the caller has synced the filesystem already."""
    store = _Store(root)
    index = siblings(store, path.parent, info)
    if path.name not in index:
        return None
    i = info(path)
    if index[path.name][0] != i.uuid:  # a name made again (destroyed, received anew): not the one listed
        index[path.name] = [i.uuid, i.otransid]
        store.write(_index_key(path.parent), index)
    uuid, mine = index[path.name][:2]
    by_uuid = {v[0]: name for name, v in index.items()}
    entry = store.read(uuid)
    kept = dict(entry)
    if "ref" not in entry and (old_ref := SpaceCache(root).referenced(uuid)) is not None:
        entry["ref"] = old_ref  # walked before this cache existed
    if entry.get("base") not in by_uuid or entry.get("base") == uuid:
        # The nearest sibling whose referenced bytes are known, else the nearest one.
        others = [(name, v[0], v[1]) for name, v in index.items() if v[0] != uuid]
        if not others:
            return None
        cache = SpaceCache(root)
        with_ref = [x for x in others if len(index[x[0]]) > 2 or cache.referenced(x[1]) is not None]
        name, base, _ = min(with_ref or others, key=lambda x: (abs(x[2] - mine), x[2] > mine))
        found = changed_files(path.parent / name, path)
        if found is None:
            return None
        entry.update(base=base, old=found[0], new=found[1])
    base_path = path.parent / by_uuid[entry["base"]]
    try:
        if info(base_path).uuid != entry["base"]:
            return None  # its name made again since it was listed: walk this once
    except (OSError, SnapverError):
        return None
    if sync:
        linux.syncfs(path)  # sharing as of the last writes (their transaction committed)
    if "ref" not in entry:
        base_known = index[by_uuid[entry["base"]]]
        base_ref = base_known[2] if len(base_known) > 2 else SpaceCache(root).referenced(entry["base"])
        # A hard-linked file counts once in the walk, under whichever name it meets first: its
        # names the stream did not list are unknown here, so such a snapshot is walked once.
        linked = any(r.endswith("\0") for r in entry["old"] + entry["new"])
        if base_ref is None or linked:
            if not walking:
                return None
            # Another process's walk of this folder (the measure after a commit) may make a
            # sibling's bytes known meanwhile: then from the stream to that one, not walked.
            again: list[tuple[int, list[str]]] = []

            def kept_by_other() -> Space | None:
                got = delta_plan(root, path, du, info, walking=False, sync=False)
                if got is None:
                    return None
                again.append(got)
                return Space(referenced=got[0], exclusive=0)  # walk() hands it back; again[0] is the answer

            measured = walk(root, path, f"snapshot {path.name}", du, kept_by_other)
            if again:
                return again[0]
            entry["ref"] = measured.referenced
        else:
            entry["ref"] = base_ref + file_totals(path, entry["new"])[0] - file_totals(base_path, entry["old"])[0]
    if entry != kept:
        store.write(uuid, entry)
    if len(index[path.name]) == 2 or not known(store, path.parent).exists():
        remember_ref(store, path, uuid, int(entry["ref"]), info)
    return int(entry["ref"]), list(entry["new"])

