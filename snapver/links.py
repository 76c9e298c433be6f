"""Health of the working tree: each volume is a symlink <worktree>/<volume> -> its live volume.

Git, a script or a person can break that link without snapver knowing: a
checkout of an old commit that tracked `data/` replaces the link with a plain
folder (and coming back removes it), `git clean -fdx` removes it, `mkdir data`
puts a plain folder in its place. Files written there are then never
versioned, while every commit snapshots the hidden volume. So:

- check() says, for each volume whose live volume exists, whether its link is
  missing, replaced by a folder (or a file), or points elsewhere: an lstat and
  a readlink, no walk;
- mend() puts the links back (`doctor --repair`, `snapver checkout HEAD`):
  whatever a plain folder holds is moved INTO the volume first, never deleted;
  a name the volume already has is kept too, the incoming one under a name that
  says where it came from. The hooks only put back a missing link (nothing to
  move there), and leave the rest to be reported.

The moves work through directory descriptors (openat, O_NOFOLLOW), because the
root daemon does them for users: a symlink a user puts in the folder or in the
volume must not lead root's moves anywhere else.

The folder and the volume are on different filesystems, so each entry is
copied (reflinked where it can be) under a temporary name in the volume,
renamed into place, and only then removed from the folder, and only what the
copy has unchanged (a file written meanwhile stays, for the next repair). A
kill can stop that anywhere, so the move is journaled (kind "move"), its row
naming the entry being copied and its temporary name: finish_move, run by the
next command that takes the workspace lock and by `doctor --repair`, removes
a partial copy or finishes removing an entry whose copy was whole, and the
next mend moves the rest. Nothing is searched for and no file is lost.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import time
from pathlib import Path
from typing import NamedTuple

from . import faults
from .errors import SnapverError
from .proc import run

DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
FIX = "`snapver doctor --repair` or `snapver checkout HEAD` puts it back"


class LinkProblem(NamedTuple):
    volume: str
    kind: str  # missing | folder | elsewhere | other
    line: str  # what is wrong and what to do, one line


def problem(ws, volume: str) -> LinkProblem | None:
    """What is wrong with one volume's link, None if it is right (or the volume is not here)."""
    link = ws.git.toplevel / volume
    live = ws.live_path(volume)
    try:
        st = os.lstat(link)
    except FileNotFoundError:
        return LinkProblem(volume, "missing", f"{volume}: the link to the volume is missing "
                           f"(the data is safe in {live}); {FIX}")
    if stat.S_ISLNK(st.st_mode):
        target = os.readlink(link)
        if target == str(live) or os.path.realpath(link) == os.path.realpath(live):
            return None
        return LinkProblem(volume, "elsewhere", f"{volume} links to {target}, not to the volume {live}: "
                           f"what is written there is not versioned; {FIX}")
    if stat.S_ISDIR(st.st_mode):
        return LinkProblem(volume, "folder", f"{volume} is a plain folder, not the link to the volume: what is "
                           f"written there is not versioned; {FIX} (moving its files into the volume)")
    return LinkProblem(volume, "other", f"{volume} is a file, not the link to the volume; {FIX} "
                       "(moving the file aside)")


def check(ws, volumes: list[str] | None = None) -> list[LinkProblem]:
    found = []
    for v in volumes if volumes is not None else ws.volumes:
        p = problem(ws, v)  # an lstat and a readlink; the backend is asked only when one is wrong
        if p and ws.backend.volume_exists(ws.project, ws.id, v):  # not one this clone has not got yet
            found.append(p)
    return found


def mend(ws, volumes: list[str] | None = None, only_missing: bool = False) -> tuple[dict[str, str], list[LinkProblem]]:
    """Put the broken links of these volumes back, with the workspace lock held.
    Returns ({volume: a line saying what was done} for each link put back, the problems left)."""
    done, left = {}, []
    for p in check(ws, volumes):
        if only_missing and p.kind != "missing":
            left.append(p)
            continue
        try:
            said = _mend_one(ws, p)
        except SnapverError as e:
            left.append(p._replace(line=f"{p.volume}: not put back: {e}"))
            continue
        done[p.volume] = said
    return done, left


def _mend_one(ws, p: LinkProblem) -> str:
    link = ws.git.toplevel / p.volume
    live = ws.live_path(p.volume)
    stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
    said = f"{p.volume}: the link to the volume was missing; put back"
    if p.kind == "elsewhere":
        target = os.readlink(link)
        os.unlink(link)  # a symlink: removing it removes nothing it points to
        said = f"{p.volume}: linked to {target} (left as it is); now links to the volume again"
    elif p.kind == "other":
        aside = _free(link.parent, f"{p.volume}.snapver-aside-{stamp}")
        os.rename(link, link.parent / aside)
        said = f"{p.volume}: was a file, moved aside to {aside}; the link is back"
    elif p.kind == "folder":
        tracked = ws.git.git("ls-files", "-z", "--", f"{p.volume}/").split("\0")
        tracked = [t for t in tracked if t]
        if tracked:
            raise SnapverError(
                f"{p.volume}/ holds {len(tracked)} file(s) Git tracks (e.g. {tracked[0]}): left as it is; "
                f"`git rm -r --cached {p.volume}` and commit, then `snapver checkout HEAD`"
            )
        op = ws._journal("move", {"volume": p.volume, "stamp": stamp})
        if op is None:
            raise SnapverError(f"{p.volume}/ left as it is: the catalog cannot journal the move of its files "
                               "(a kill midway would leave a copy nobody knows of); `snapver reindex` first")
        from . import journal

        try:
            moved, clashes = _empty_into(link, live, stamp, lambda step, **d: journal.note(ws, op, step, **d))
        except BaseException:
            # Undo the copy of the entry this stopped at (as a kill's repair would), then end the
            # row; if even that fails, the row stays for doctor.
            finish_move(ws, op)
            journal.close(ws, op)
            raise
        journal.close(ws, op)
        try:
            os.rmdir(link)
        except OSError as e:
            raise SnapverError(f"{p.volume}/ could not be removed once emptied ({e.strerror}): "
                               "something is writing there; stop it and try again") from None
        said = f"{p.volume}: was a plain folder; moved its {moved} entr{'y' if moved == 1 else 'ies'} into the volume"
        if clashes:
            said += (f", {len(clashes)} under a new name as the volume had the name already "
                     f"({'; '.join(clashes[:3])}{'; ...' if len(clashes) > 3 else ''})")
        said += "; the link is back (commit, or `snapver snapshot --wip`, to version them)"
    try:
        ws.link(p.volume)
    except FileExistsError:
        pass
    if problem(ws, p.volume) is not None:
        raise SnapverError(f"{link} was made again meanwhile: stop what writes there and try again")
    return said


def _free(folder: Path, name: str, dir_fd: int | None = None) -> str:
    """name, or name.2, name.3, ...: the first that does not exist in folder."""
    candidate, n = name, 1
    while True:
        try:
            os.lstat(candidate if dir_fd is not None else folder / candidate, dir_fd=dir_fd)
        except FileNotFoundError:
            return candidate
        n += 1
        candidate = f"{name}.{n}"


def _empty_into(folder: Path, volume: Path, stamp: str, record) -> tuple[int, list[str]]:
    """Move everything in folder into volume (merging folders, keeping both on a clash)."""
    try:
        src = os.open(folder, DIR_FLAGS)
    except OSError as e:
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise SnapverError(f"{folder} changed while it was being repaired: try again") from None
        raise
    try:
        dst = os.open(volume, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except BaseException:
        os.close(src)
        raise
    moved: list[int] = [0]
    clashes: list[str] = []
    try:
        _merge(src, dst, "", stamp, moved, clashes, record)
    finally:
        os.close(src)
        os.close(dst)
    return moved[0], clashes


def _merge(src: int, dst: int, prefix: str, stamp: str, moved: list[int], clashes: list[str], record) -> None:
    for name in sorted(os.listdir(src)):
        st = os.lstat(name, dir_fd=src)
        try:
            there = os.lstat(name, dir_fd=dst)
        except FileNotFoundError:
            there = None
        if there is None:
            _move(src, name, dst, name, prefix, record)
            moved[0] += 1
        elif stat.S_ISDIR(st.st_mode) and stat.S_ISDIR(there.st_mode):
            # Both folders (a symlink is never one here: O_NOFOLLOW): merge them.
            sub_src = os.open(name, DIR_FLAGS, dir_fd=src)
            try:
                sub_dst = os.open(name, DIR_FLAGS, dir_fd=dst)
                try:
                    _merge(sub_src, sub_dst, f"{prefix}{name}/", stamp, moved, clashes, record)
                finally:
                    os.close(sub_dst)
            finally:
                os.close(sub_src)
            with contextlib.suppress(OSError):  # not empty: written meanwhile, moved next time
                os.rmdir(name, dir_fd=src)
        else:
            aside = _free(Path(), f"{name}.from-plain-folder-{stamp}", dir_fd=dst)
            _move(src, name, dst, aside, prefix, record)
            moved[0] += 1
            clashes.append(f"{prefix}{name} kept as {prefix}{aside}")


def _move(src: int, name: str, dst: int, new: str, prefix: str, record) -> None:
    """Move one entry between directories: a rename where it can be, else a copy (reflinked
    where the filesystem can) under a temporary name, renamed into place, and only then
    the original removed (what the copy holds unchanged); the journal names the entry and
    its temporary copy before the copy starts, so a kill anywhere is repaired by finish_move."""
    try:
        os.rename(name, new, src_dir_fd=src, dst_dir_fd=dst)
        return
    except OSError as e:
        if e.errno != errno.EXDEV:  # another filesystem (a volume is a subvolume or a dataset)
            raise
    tmp = f".{new}.snapver-move-{os.urandom(4).hex()}"
    names = {"src": prefix + name, "dst": prefix + new, "tmp": prefix + tmp}
    record("copying", **names)
    me = f"/proc/{os.getpid()}/fd"
    try:
        run(["cp", "-a", "--reflink=auto", "--no-target-directory", "--", f"{me}/{src}/{name}", f"{me}/{dst}/{tmp}"])
    except BaseException:
        if _exists(dst, tmp):
            _remove(dst, tmp)
        raise
    faults.point("move-copied")
    os.rename(tmp, new, src_dir_fd=dst, dst_dir_fd=dst)
    record("placed", **names)
    _prune_copied(src, name, dst, new)


def _exists(dir_fd: int, name: str) -> bool:
    try:
        os.lstat(name, dir_fd=dir_fd)
    except FileNotFoundError:
        return False
    return True


def _remove(dir_fd: int, name: str) -> None:
    """Remove an entry snapver made (a temporary copy), folder or not."""
    if stat.S_ISDIR(os.lstat(name, dir_fd=dir_fd).st_mode):
        import shutil  # stdlib, but ~2 ms of every hook's start-up for a rare path

        shutil.rmtree(name, dir_fd=dir_fd)
    else:
        os.unlink(name, dir_fd=dir_fd)


def _same(a: os.stat_result, b: os.stat_result) -> bool:
    # cp -a keeps type, size and modification time: a file changed after it was copied differs.
    # zfs-fuse keeps whole seconds only: a copy's time with no fraction matches to the second.
    same_time = a.st_mtime_ns == b.st_mtime_ns or (
        b.st_mtime_ns % 1_000_000_000 == 0 and a.st_mtime_ns // 1_000_000_000 == b.st_mtime_ns // 1_000_000_000)
    return (stat.S_IFMT(a.st_mode) == stat.S_IFMT(b.st_mode) and same_time
            and (a.st_size == b.st_size or stat.S_ISDIR(a.st_mode)))


def _prune_copied(src: int, name: str, dst: int, new: str) -> None:
    """Remove src/name as far as dst/new holds a copy of it: what was written to it after the
    copy (or what the copy does not have) stays where it is, for the next move."""
    st = os.lstat(name, dir_fd=src)
    there = os.lstat(new, dir_fd=dst)
    if stat.S_ISDIR(st.st_mode) and stat.S_ISDIR(there.st_mode):
        sub_src = os.open(name, DIR_FLAGS, dir_fd=src)
        try:
            sub_dst = os.open(new, DIR_FLAGS, dir_fd=dst)
            try:
                for entry in os.listdir(sub_src):
                    if _exists(sub_dst, entry):
                        _prune_copied(sub_src, entry, sub_dst, entry)
            finally:
                os.close(sub_dst)
        finally:
            os.close(sub_src)
        with contextlib.suppress(OSError):  # not empty: something the copy has not got
            os.rmdir(name, dir_fd=src)
    elif _same(st, there) and (not stat.S_ISLNK(st.st_mode)
                               or os.readlink(name, dir_fd=src) == os.readlink(new, dir_fd=dst)):
        os.unlink(name, dir_fd=src)


def _open_dir(root: Path, rel: str, follow_root: bool = False) -> int | None:
    """root/rel as a directory descriptor, no symlink followed below root; None if not there."""
    try:
        fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC | (0 if follow_root else os.O_NOFOLLOW))
    except (FileNotFoundError, NotADirectoryError, OSError):
        return None
    for part in [x for x in rel.split("/") if x]:
        try:
            sub = os.open(part, DIR_FLAGS, dir_fd=fd)
        except OSError:
            os.close(fd)
            return None
        os.close(fd)
        fd = sub
    return fd


def finish_move(ws, op) -> str:
    """A plain folder's move into its volume, cut by a kill (or failed) at one entry: undo that
    entry's partial copy, or finish removing an entry whose copy was whole and in place. The
    rest of the folder stays where it is, for `doctor --repair` or `snapver checkout HEAD`."""
    volume = op.intent.get("volume", "")
    what = f"the move of {volume}/'s files into its volume"
    rest = f"; what is left in {volume}/ is moved by `snapver doctor --repair` or `snapver checkout HEAD`"
    if volume not in ws.volumes:
        return f"{what} left as it is: {volume!r} is not a volume of this workspace"
    step = op.steps[-1] if op.steps else {}
    src, dst, tmp = (str(step.get(k, "")) for k in ("src", "dst", "tmp"))
    if not step:
        return f"{what} had copied nothing: nothing to finish or undo" + rest
    parts = [x for p in (src, dst, tmp) for x in p.split("/")]
    base, _, dst_name = dst.rpartition("/")
    if ("" in parts or ".." in parts or "." in parts or src.rpartition("/")[0] != base
            or tmp.rpartition("/")[0] != base or not tmp.rpartition("/")[2].startswith(f".{dst_name}.snapver-move-")):
        return f"{what} left as it is: its journal entry names unexpected paths ({src}, {dst}, {tmp})"
    sfd = _open_dir(ws.git.toplevel / volume, base)
    dfd = _open_dir(ws.live_path(volume), base, follow_root=True)
    try:
        if dfd is None:
            return f"{what}: the volume has no {base or 'top folder'} any more; nothing to finish or undo" + rest
        src_name, tmp_name = src.rpartition("/")[2], tmp.rpartition("/")[2]
        had_src = sfd is not None and _exists(sfd, src_name)
        if step["step"] == "copying" and _exists(dfd, tmp_name):
            _remove(dfd, tmp_name)  # snapver's own partial copy; the original is still in the folder
            said = f"its partial copy of {src} ({tmp}) removed from the volume, {src} is still in {volume}/"
        elif step["step"] == "placed" and had_src and sfd is not None and _exists(dfd, dst_name):
            _prune_copied(sfd, src_name, dfd, dst_name)
            said = f"{src} was whole in the volume as {dst}: removed from {volume}/"
            if _exists(sfd, src_name):
                said += " (but for what was written to it after the copy, left there)"
        elif had_src and _exists(dfd, dst_name):
            said = f"{src} is in the volume as {dst} and still in {volume}/: both kept"
        else:
            said = f"{src} had not been copied yet or was moved whole: nothing to finish or undo"
    except OSError as e:
        raise SnapverError(f"{what} could not be finished ({e.strerror}): run `snapver doctor --repair`") from None
    finally:
        for fd in (sfd, dfd):
            if fd is not None:
                os.close(fd)
    return f"{what} was interrupted at {src}: {said}" + rest
