"""Crash points for tests: SNAPVER_FAULT=<point> makes the process SIGKILL itself there.

A test-only switch, documented so that anyone can reproduce what the crash
tests do: the process dies exactly as a power cut or OOM kill would leave it,
with no cleanup, no finally blocks and no flushed buffers.
SNAPVER_FAULT=<point>#N dies the N-th time the point is reached (the second
volume of a checkout, say) instead of the first.

SNAPVER_PAUSE=<point>[#N] stops the process there with SIGSTOP instead, so that a test can
change the world under it (unmount the lake) and let it go on with SIGCONT.

The points, in the order an operation reaches them:

    snapshot-volume              one volume of a snapshot set is taken (Btrfs; ZFS one at a time),
                                 or the whole set (ZFS in one transaction group)
    after-snapshot-before-state  a snapshot is taken, the workspace state not yet updated
    restore-copied               a restore's copy is beside its destination, not yet renamed over it
    move-copying                 a plain folder's entry is journaled, its copy into the volume not begun
    move-copied                  ... its copy is whole under a temporary name in the volume
    move-placed                  ... the copy has its name in the volume, the original not yet removed
    checkout-begin               the journal has the intent, nothing is done yet
    checkout-kept                the safety wip snapshot of unsnapshotted changes is taken
    checkout-cloned              a writable clone of the target is beside the live volume
    checkout-swapped             Btrfs: live and clone exchanged, the old one not yet retired;
                                 ZFS: the old live renamed away (still mounted where the link names),
                                 the clone not yet in its place
    checkout-mounted             ZFS: the clone is the live dataset, mounted at its fresh path;
                                 the volume's link still names the old one (zfslive.py)
    checkout-placed              the clone is the live volume; the workspace state not yet saved
    checkout-switched            one volume is done and recorded (journal and state)
    checkout-end                 every volume is done, the journal entry not yet closed
    gc-begin                     the journal has the list of snapshots to destroy
    gc-destroyed                 a snapshot is destroyed, its catalog row not yet removed
    gc-forgotten                 ... and its catalog row removed
    gc-end                       all destroyed, the journal entry not yet closed
    derive-begin                 the journal has the intent, nothing is done yet
    derive-cloned                the new volume exists in the lake
    derive-configured            snapver.toml names it
    derive-recorded              the workspace state and the link in the working tree are there
    derive-end                   the lineage is in the catalog, the journal entry not yet closed
    build-begin                  a build's result is about to be snapshotted and swapped in (journaled)
    build-snapshotted            its build point is taken, NEW not yet swapped
    build-switched               NEW is the build point; the clone not yet retired
    build-end                    all done, the journal entry not yet closed
    receive-begin                the journal has the intent (and the catalog rows), nothing is done yet
    receive-started              the receiving btrfs/zfs process runs, no stream yet
    push-mid-stream              the sender, two chunks into a stream (a cut connection, seen
    pull-mid-stream              from the far end) / the receiver, two chunks in
    receive-received             the stream is in and the snapshot whole, its catalog rows not yet written
    receive-end                  the catalog rows are written, the journal entry not yet closed
    daemon-opened                snapverd found a workspace with Git, not yet checked it is its owner's
    scan-read                    a model scan (not a hook's: they read nothing) has read the files,
                                 its verdicts not yet stored
"""

import os
import signal

_seen: dict[str, int] = {}


def point(name: str) -> None:
    for variable, sig in (("SNAPVER_FAULT", signal.SIGKILL), ("SNAPVER_PAUSE", signal.SIGSTOP)):
        wanted = os.environ.get(variable)
        if not wanted:
            continue
        target, _, nth = wanted.partition("#")
        if target != name:
            continue
        key = f"{variable}:{name}"
        _seen[key] = _seen.get(key, 0) + 1
        if _seen[key] == int(nth or 1):
            os.kill(os.getpid(), sig)
