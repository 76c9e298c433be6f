"""`snapver build NEW`: run NEW's recipe on a CoW clone, and swap the result in as a checkout would.

The steps, and what a kill -9 at each leaves:

1. prepare (workspace lock held): the inputs are resolved to exact snapshots; NEW's
   unsnapshotted changes, if any, are kept as a wip; a writable clone of NEW's current
   snapshot is made in the workspace's build workspace (build_workspace: `b-<id>`), never
   on the live volume. A kill now or during step 2 leaves only that clone, which nothing
   refers to: doctor (leftovers, below) removes it once no build holds its lock.
2. run (no workspace lock: commits and checkouts go on): the recipe's argv at the
   repository root, with SNAPVER_OUTPUT (the clone), SNAPVER_INPUT_<VOLUME> (the input's
   read-only snapshot) and SNAPVER_INPUT_<VOLUME>_SNAPSHOT (its name); output to the log.
3. finish (lock held, journaled as "build"): on success the clone is snapshotted as a wip
   of HEAD (the build point, which the next commit names), NEW's unsnapshotted changes are
   kept, and the build point is cloned into place like a checkout; then the clone is
   retired. doctor --repair finishes a killed finish from its journal row: the build point
   exists (swap it in) or it does not (nothing of NEW changed). On failure the clone is
   retired and NEW is as it was.

Every build is recorded (catalog `builds`): command, the snapshot of each input, the build
point, exit code, duration, log. cascade.py compares the inputs of a volume's last build
with what they resolve to now, by name: O(1) per input.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import subprocess
import time
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

from . import journal, names, recipes, seams
from .backends.base import Snapshot
from .config import LocalState, VolumeState
from .errors import SnapverError

LOG_DIR = "snapver-builds"  # in the logs volume, if the project has one


def build_workspace(ws) -> str:
    """Where this workspace's builds make their clones: a workspace of its own in the lake."""
    return names.check_workspace(("b-" + ws.id)[:63])


def env_key(volume: str) -> str:
    return "SNAPVER_INPUT_" + volume.upper().replace("-", "_")


class Result(NamedTuple):
    volume: str
    ok: bool
    exit_code: int
    duration: float
    log: str
    inputs: dict[str, str]  # input volume -> the snapshot it was built from
    snapshot: str | None  # the build point
    kept: str | None = None  # a wip that kept NEW's unsnapshotted changes

    def as_dict(self) -> dict:
        return self._asdict()


class RunAs(NamedTuple):
    """Whom a build's command runs as, when snapverd (root) runs it: the working tree's owner,
    with no supplementary groups and a clean environment (cascadetrigger.owner)."""
    uid: int
    gid: int
    name: str
    home: str

    def env(self) -> dict[str, str]:
        # Nothing of root's environment (its GIT_CONFIG_* safe.directory list, sockets, PATH)
        # reaches the user's command: only what a login would give, and the build's own.
        return {"HOME": self.home, "USER": self.name, "LOGNAME": self.name, "LANG": "C.UTF-8",
                "PATH": "/usr/local/bin:/usr/bin:/bin"}


class Job:
    """One build between prepare and finish."""

    def __init__(self, ws, recipe: recipes.Recipe, inputs: dict[str, Snapshot], lock_fd: int):
        self.ws, self.recipe, self.inputs, self.lock_fd = ws, recipe, inputs, lock_fd
        self.volume = recipe.volume
        self.clone: Path | None = None
        self.kept: str | None = None
        self.log = Path()
        self.proc: subprocess.Popen | None = None
        self.code: int | None = None  # set when the command could not even start
        self.reason = ""  # why it is built (cascade)
        self.run_as: RunAs | None = None  # None: as the caller (the CLI); snapverd: the tree's owner
        self.started = time.monotonic()
        self.started_at = datetime.now(timezone.utc).isoformat()


# ---------------------------------------------------------------- inputs


def last_build(ws, volume: str) -> dict | None:
    rows = ws.catalog.builds(ws.project, ws.id, volume, ok=True, limit=1)
    return rows[0] if rows else None


def resolve_input(ws, volume: str, rev: str, head: str | None = None) -> Snapshot:
    """The exact snapshot an input names, as `checkout` resolves it; but a built volume at
    HEAD is its newest build point of HEAD, if it was built since HEAD was committed (the
    next commit names that build)."""
    if volume not in ws.volumes:
        raise SnapverError(f"input {volume}@{rev}: no volume {volume} here: the volumes are {', '.join(ws.volumes)}")
    if rev == "HEAD":
        last = last_build(ws, volume)
        head = head or ws.git.head()
        if last and head and last["snapshot"].startswith(head + "."):
            snap = ws.backend.find(ws.project, volume, last["snapshot"])
            if snap is not None:
                return snap
    return ws.resolve(rev, [volume])[0][volume]


def unchanged(ws, volume: str, used: str, now: Snapshot) -> bool:
    """Whether input volume is still what a build used: the same snapshot, or one the
    filesystem proves holds the same data (a commit since, of an unchanged volume)."""
    if now.name == used:
        return True
    old = ws.backend.find(ws.project, volume, used)
    return old is not None and ws.backend.same_data(old, now)


def resolve_inputs(ws, recipe: recipes.Recipe) -> dict[str, Snapshot]:
    head = ws.git.head() if any(rev == "HEAD" for _, rev in recipe.inputs) else None  # one git call per node
    with ws.backend.steady():  # and one read of the lake
        return {v: resolve_input(ws, v, rev, head) for v, rev in recipe.inputs}


# ---------------------------------------------------------------- the steps


def _lock_path(ws, volume: str) -> Path:
    return LocalState.dir(ws.git.git_dir) / "builds" / f"{volume}.lock"


def _take_lock(ws, volume: str) -> int:
    path = _lock_path(ws, volume)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise SnapverError(f"a build of {volume} is running already in this working tree") from None
    return fd


def _busy(ws, volume: str) -> bool:
    """Whether a build of volume holds its lock now (a clone then is its work, not a leftover)."""
    try:
        fd = os.open(_lock_path(ws, volume), os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except BlockingIOError:
        return True
    finally:
        os.close(fd)


def prepare(ws, volume: str, inputs: dict[str, Snapshot] | None = None, run_as: RunAs | None = None) -> Job:
    """Check everything, then make the clone the command will write into. inputs: as the
    caller resolved them just now (cascade), else resolved here. run_as: whom the command
    runs as (snapverd), else the caller."""
    recipe = recipes.get(ws, volume)
    if volume not in ws.volumes:
        raise SnapverError(f"{volume} is not a volume of this project: derive it first "
                           f"(`snapver derive SRC@REV {volume}`)")
    recipe.argv  # noqa: B018  (checked before anything changes)
    fd = _take_lock(ws, volume)
    try:
        with ws.lock():
            job = Job(ws, recipe, inputs if inputs is not None else resolve_inputs(ws, recipe), fd)
            bws = build_workspace(ws)
            ws.backend.retire_volume(ws.project, bws, volume)  # a killed build's (its lock is ours now)
            state = ws.state.volume(volume)
            base = ws.backend.find(ws.project, volume, state.base) if state.base else None
            if base is None or ws._changed(volume):
                head = ws.lake_at() or ws.git.head() or names.NO_COMMIT
                base = ws._take([volume], names.wip_snapshot_name(head), f"kept before build of {volume}",
                                kept=True)[0]
                job.kept = base.name
            job.clone = ws.backend.clone_volume(base, bws, volume)
    except BaseException:
        os.close(fd)
        raise
    job.run_as = run_as
    job.log = _log_path(ws, volume, make=run_as is None)
    return job


def _log_path(ws, volume: str, make: bool = True) -> Path:
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    if "logs" in ws.volumes and volume != "logs" and ws.backend.volume_exists(ws.project, ws.id, "logs"):
        folder = ws.live_path("logs") / LOG_DIR / volume
    else:
        folder = LocalState.dir(ws.git.git_dir) / "builds" / volume
    if make:
        folder.mkdir(parents=True, exist_ok=True)
    return folder / f"{stamp}.log"


def _open_log_as(path: Path, who: RunAs):
    """The log, made by root in a folder its user owns, as theirs: each folder below the
    volume (or the state folder) opened without following a symlink, so that a link the user
    planted there cannot make root create or chown a file elsewhere."""
    top = 3 if path.parent.parent.name == LOG_DIR else 2  # logs/snapver-builds/VOL, or .git/snapver/builds/VOL
    fd = os.open(path.parents[top - 1], os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for part in path.parts[-top:-1]:
            with contextlib.suppress(FileExistsError):
                os.mkdir(part, 0o755, dir_fd=fd)
            below = os.open(part, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            os.close(fd)
            fd = below
            os.fchown(fd, who.uid, who.gid)
        out = os.open(path.name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644,
                      dir_fd=fd)
    finally:
        os.close(fd)
    os.fchown(out, who.uid, who.gid)
    return os.fdopen(out, "wb")


def start(job: Job) -> None:
    """Start the command; it runs while the caller does other things (cascade -j)."""
    ws = job.ws
    who = job.run_as
    env = dict(who.env() if who else os.environ, SNAPVER_OUTPUT=str(job.clone), SNAPVER_BUILD=job.volume)
    for volume, snap in job.inputs.items():
        env[env_key(volume)] = str(snap.path)
        env[env_key(volume) + "_SNAPSHOT"] = snap.name
    with (_open_log_as(job.log, who) if who else open(job.log, "wb")) as log:
        log.write(f"# snapver build {job.volume}: {job.recipe.run}\n".encode())
        for volume, snap in job.inputs.items():
            log.write(f"# input {volume}@{snap.name}\n".encode())
        log.flush()
        try:
            # A snapverd that is not root runs as the owner already (and may not drop groups).
            switch = who is not None and (os.geteuid() == 0 or who.uid != os.geteuid())
            as_owner: dict = {"user": who.uid, "group": who.gid, "extra_groups": []} if who and switch else {}
            job.proc = subprocess.Popen(job.recipe.argv, cwd=ws.git.toplevel, env=env, stdin=subprocess.DEVNULL,
                                        stdout=log, stderr=subprocess.STDOUT, close_fds=True, **as_owner)
        except (OSError, subprocess.SubprocessError) as e:  # SubprocessError: the switch to the owner failed
            log.write(f"snapver: cannot run {job.recipe.argv[0]}: {getattr(e, 'strerror', None) or e}\n".encode())
            job.code = 127 if isinstance(e, FileNotFoundError) else 126


def wait(job: Job) -> int:
    if job.code is None:
        assert job.proc is not None
        job.code = job.proc.wait()
    return job.code


def poll(job: Job) -> int | None:
    if job.code is None and job.proc is not None:
        job.code = job.proc.poll()
    return job.code


def finish(job: Job) -> Result:
    """Swap the build in (success) or drop it (failure), and record it either way."""
    ws, volume = job.ws, job.volume
    code = wait(job)
    duration = time.monotonic() - job.started
    inputs = {v: s.name for v, s in job.inputs.items()}
    bws = build_workspace(ws)
    try:
        with ws.lock():
            if code != 0:
                ws.backend.retire_volume(ws.project, bws, volume)
                ws.catalog.add_build(ws.project, ws.id, volume, job.recipe.run, inputs, None, None, code,
                                     duration, str(job.log), job.started_at)
                return Result(volume, False, code, duration, str(job.log), inputs, None, job.kept)
            head = ws.lake_at() or ws.git.head() or names.NO_COMMIT
            name = names.wip_snapshot_name(head)
            intent = {"volume": volume, "workspace": bws, "snapshot": name, "inputs": inputs,
                      "command": job.recipe.run, "exit_code": code, "duration": duration, "log": str(job.log),
                      "started": job.started_at}
            with journal.operation(ws, "build", intent) as op:
                snap = ws.backend.snapshot(ws.project, bws, [volume], name)[0]
                op.step("snapshotted", snapshot=name)
                kept = _complete(ws, intent, snap, op)
            return Result(volume, True, code, duration, str(job.log), inputs, name, kept or job.kept)
    finally:
        os.close(job.lock_fd)


def _complete(ws, intent: dict, snap: Snapshot, op=None, repair: bool = False) -> str | None:
    """From the build point on (idempotent, for doctor too): record it, keep NEW's changes,
    swap it in, record the build, retire the clone. Returns the wip that kept changes, if any."""
    volume = intent["volume"]
    ws.catalog.record_snapshots([snap], ws.id, f"build of {volume}: {intent['command']}", False)
    kept = None
    origin = ws.backend.live_origin(ws.project, ws.id, volume) if repair else None
    if origin and origin[0] == snap.name and not ws._changed(volume):
        mark = origin[1]  # swapped in before the kill; only the state was not saved
    else:
        taken = ws._keep_changes([volume], f"kept before build of {volume}")
        kept = taken[0].name if taken else None
        if op and kept:
            op.step("kept", changed=False, snapshot=kept)
        mark = ws.backend.clone_into_place(snap, ws.id)
    ws.state.volumes[volume] = VolumeState(snap.name, mark)
    ws.state.save()
    ws.link(volume)
    ws.backend.after_checkout()
    ws.snapshot_paths_may_have_moved()
    if op:
        op.step("switched", volume=volume)
    if not any(b["snapshot"] == snap.name for b in ws.catalog.builds(ws.project, ws.id, volume, ok=True, limit=1)):
        ws.catalog.add_build(ws.project, ws.id, volume, intent["command"], intent["inputs"], snap.name, mark,
                             intent["exit_code"], intent["duration"], intent["log"], intent["started"])
    ws.backend.retire_volume(ws.project, intent["workspace"], volume)
    return kept


def build(ws, volume: str) -> Result:
    """`snapver build NEW`: prepare, run, finish."""
    job = prepare(ws, volume)
    try:
        start(job)
    except BaseException:
        with contextlib.suppress(Exception), ws.lock():
            ws.backend.retire_volume(ws.project, build_workspace(ws), volume)
        os.close(job.lock_fd)
        raise
    return finish(job)


def history(ws, volume: str | None = None, limit: int = 20) -> list[dict]:
    """The recorded builds, newest first: the lineage of each build point (its input snapshots)."""
    if volume is not None:
        names.check_volume(volume)
    return ws.catalog.builds(ws.project, ws.id, volume, limit=limit)


# ---------------------------------------------------------------- doctor


def finish_build(ws, op) -> str:
    """doctor --repair of a build killed while it swapped its result in."""
    i = op.intent
    volume = i["volume"]
    snap = ws.backend.find(ws.project, volume, i["snapshot"]) if volume in ws.volumes else None
    if snap is None:
        ws.backend.retire_volume(ws.project, i["workspace"], volume)
        return f"build of {volume} had changed nothing of {volume} yet: dropped (its clone removed)"
    kept = _complete(ws, i, snap, repair=True)
    said = f"build of {volume} finished: {volume} is its build point {snap.name}"
    return said + (f" (unsnapshotted changes kept as {kept})" if kept else "")


def leftovers(ws, repair: bool) -> list[str]:
    """Clones of builds that were killed (their lock is free), found from the lake alone."""
    found = []
    bws = build_workspace(ws)
    for volume in ws.volumes:
        if not ws.backend.volume_exists(ws.project, bws, volume) or _busy(ws, volume):
            continue
        found.append(f"{volume}: the clone of a build that did not finish is left in workspace {bws}")
        if repair:
            ws.backend.retire_volume(ws.project, bws, volume)
    return found


seams.plug(repair={"build": finish_build}, leftover=leftovers)
