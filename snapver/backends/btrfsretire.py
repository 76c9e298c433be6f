"""Volumes a Btrfs checkout swapped out wait for gc, off the command's path (issue 19).

A checkout replaces the live subvolume with a clone of the target snapshot; the one it
replaces was kept by a snapshot first, so deleting it loses nothing, but deleting it is
not cheap: the ioctl prunes every cached inode of the subvolume (a million freshly
written files take seconds, measured in bench/scale.py), holding the folder's lock while
the next checkout wants to snapshot and rename, so the first return after the first
checkout of a big lake waited for it (4.7 s in issue 19).

So a checkout only moves the old volume to <workspace>/.trash/<random>.later/<volume>, a
rename, and `snapver gc` (which the timer and the daemon run), `doctor --repair`, or
snapverd once the workspace has had no checkout for a while (`reap_after`) delete it,
synchronously, when no checkout waits; space accounting too, as its figures need. Kept, such a volume costs next to nothing: it
shares every block with the snapshot that kept it. gc reaps before it destroys snapshots,
so the blocks of a destroyed snapshot are not held by a retired twin. Should gc never run,
a workspace keeps at most KEEP of them: a checkout hands older ones to a background
deletion (as every checkout did before), which may stall the next command once.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

LATER = ".later"  # the suffix of a trash folder that waits for gc (no deletion under way)
# Retired volumes a workspace holds before a checkout deletes the oldest. That deletion is
# the stall this module avoids (measured: 5.6 s, three checkouts after it started, with 16
# and the volume a million files were written into), so the cap is there against a leak
# where gc never runs, not as the usual way out; gc or the daemon's gc comes first.
KEEP = 64


def retire(trash: Path, retired_from: Path, volume: str) -> Path:
    """Move the swapped-out volume (at retired_from) into a folder of its own under trash."""
    for attempt in range(3):
        folder = trash / (os.urandom(6).hex() + LATER)
        folder.mkdir(parents=True)
        try:
            os.rename(retired_from, folder / volume)
            return folder / volume
        except FileNotFoundError:
            if attempt == 2 or not os.path.lexists(retired_from):
                raise
            # A reap that found the folder empty removed it (see SETTLED): another one.
    raise AssertionError("unreachable")


def waiting(trash: Path) -> list[Path]:
    """The trash folders that wait for gc, oldest first."""
    try:
        names = [n for n in os.listdir(trash) if n.endswith(LATER)]
    except (FileNotFoundError, NotADirectoryError):
        return []
    folders = []
    for name in names:
        try:
            folders.append((os.stat(trash / name).st_mtime, trash / name))
        except OSError:
            continue
    return [p for _, p in sorted(folders)]


def overflow(trash: Path) -> list[Path]:
    """Folders beyond KEEP (oldest first), renamed to plain trash folders, whose subvolumes
    the caller hands to a background deletion (tidy_trash finishes the folders later)."""
    handed = []
    for folder in waiting(trash)[:-KEEP]:
        plain = folder.with_name(folder.name[:-len(LATER)])
        try:
            os.rename(folder, plain)
        except OSError:
            continue
        handed += [plain / n for n in sorted(os.listdir(plain))]
    return handed


# Seconds: a folder this old that another process made has its volume in it (see reap);
# the window is one mkdir and one rename, and retire() tries again should it be missed.
SETTLED = 5


def reap(workspaces: Path, own: str, quiet_for: float = 0.0) -> list[str]:
    """Delete every retired volume of every workspace under workspaces, now; one line each.

    The caller holds workspace `own`'s lock, not the others': a checkout there makes its
    folder and then renames the volume into it, so a folder younger than SETTLED may be
    on its way and is left for the next gc.

    quiet_for: only in workspaces whose last checkout is at least that many seconds old
    (snapverd's reap in idle time): a user still switching versions is not made to share
    the disk with a deletion, which may stall their next command once."""
    done = []
    try:
        spaces = sorted(os.listdir(workspaces))
    except FileNotFoundError:
        return []
    now = time.time()
    for ws in spaces:
        folders = waiting(workspaces / ws / ".trash")
        try:
            if quiet_for and folders and now - os.stat(folders[-1]).st_mtime < quiet_for:
                continue
        except OSError:
            continue
        for folder in folders:
            try:
                if ws != own and now - os.stat(folder).st_mtime < SETTLED:
                    continue
            except OSError:
                continue
            for name in sorted(os.listdir(folder)):
                gone = subprocess.run(["btrfs", "subvolume", "delete", str(folder / name)],
                                      capture_output=True, stdin=subprocess.DEVNULL)
                if gone.returncode == 0:
                    done.append(f"deleted retired volume {folder / name}")
            try:
                os.rmdir(folder)
            except OSError:
                pass  # one that refused stays for the next gc
    return done


def delete_later(*subvolumes: Path) -> None:
    """Delete retired subvolumes from a detached process that outlives this one (btrfs goes
    on to the next one if one fails; tidy_trash retries what is left).

    Deleting evicts the subvolume's cached pages first (about 0.3 s per cached GiB), which
    is why no checkout waits for it."""
    # Popen, not proc.run: started in a session of its own and never waited for.
    subprocess.Popen(
        ["btrfs", "subvolume", "delete", *map(str, subvolumes)],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


STALE_TRASH = 600  # seconds: a retired volume still there this long lost its deletion (a crash)


def tidy_trash(trash: Path) -> None:
    """Remove the folders of finished deletions; restart deletions a crash interrupted.

    A deletion locks the folder it deletes in until the pages are evicted, so nothing
    here reads a folder that may be busy: an empty Btrfs directory has size 0, and
    stat() never waits for that lock.
    """
    now = time.time()
    for folder in listdir(trash):
        path = trash / folder
        if folder.endswith(LATER):
            continue  # waits for gc
        try:
            st = path.stat()
            if st.st_size == 0:
                os.rmdir(path)
            elif now - st.st_mtime > STALE_TRASH:
                for name in listdir(path):
                    delete_later(path / name)
                os.utime(path)  # and not again for another while
        except OSError:
            pass  # gone meanwhile, or not empty after all: the next checkout looks again


def listdir(path: Path) -> list[str]:
    try:
        return sorted(os.listdir(path))
    except (FileNotFoundError, NotADirectoryError):  # the lake root also holds catalog.db
        return []
