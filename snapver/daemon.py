"""snapverd: captures work between commits, follows commits made without hooks, keeps
history tidy, and does privileged snapshot work for users over a Unix socket.

One main loop ticks every half second and only decides what is due; the work on
each workspace (its poll, its capture) runs in a thread of its own, at most one
at a time per workspace, so one workspace that hangs (a lock held for long, a
slow filesystem) never stops the others, nor the loop. Watchdog threads only note
the time of the last write, and socket threads serve requests. Everything that
touches a workspace takes that workspace's lock (lake.Workspace.lock), shared
with the hooks and the CLI, so the daemon never races a `git checkout`.
"""

from __future__ import annotations

import grp
import json
import logging
import os
import pwd
import signal
import stat
import socket
import socketserver
import sqlite3
import struct
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import faults, lock, names, ops
from .cascadetrigger import Trigger
from .catalog import explain
from .config import LocalState
# snapverd.toml's reader; DEFAULT_CONFIG and DaemonConfig are where the CLI and tests found them.
from .daemonconfig import DEFAULT_CONFIG as DEFAULT_CONFIG
from .daemonconfig import DaemonConfig as DaemonConfig
from .daemonconfig import WatchedWorkspace, check_projects
from .errors import SnapverError
from .lake import Workspace
from .retention import Policy

log = logging.getLogger("snapverd")


# ------------------------------------------------------------------ change capture

@dataclass
class VolumeWatch:
    volume: str
    path: Path
    device: int | None = None  # st_dev of the live volume: a checkout swaps it
    mode: str = "events"  # or "polling", when inotify watches would run out
    watch: object = None
    first_change: float | None = None
    last_change: float | None = None
    last_mark: str | None = None
    last_snapshot: str | None = None
    dirs: int = 0  # inotify watches this volume holds


class _Recorder:
    """watchdog handler: remembers when a volume was last written, nothing more."""

    IGNORED = {"opened", "closed_no_write"}  # reading is not changing

    def __init__(self, daemon: Daemon, key: tuple[Path, str]):
        self.daemon, self.key = daemon, key

    def dispatch(self, event) -> None:
        if event.event_type not in self.IGNORED:
            self.daemon.note_change(self.key)


class Daemon:
    def __init__(self, config_path: Path):
        self.config_path = config_path
        self.config = DaemonConfig.load(config_path)
        check_projects(self.config)
        self.watches: dict[tuple[Path, str], VolumeWatch] = {}
        self.heads: dict[Path, str | None] = {}
        self.lock = threading.Lock()  # guards watches and their times, and busy
        self.budget_lock = threading.Lock()  # guards watch_budget and (un)scheduling watches
        self.busy: dict[Path, threading.Thread] = {}  # workspaces with a job in flight
        self.gc_thread: threading.Thread | None = None
        self.stopping = threading.Event()
        self.reload_requested = threading.Event()
        self.last_gc = time.monotonic()
        self.observer: Any = None  # watchdog's Observer, once started (watchdog has no types)
        self.server: Any = None  # the socket's _Server, once started
        self.watch_budget = 0
        self.cascades = Trigger(self._open)  # [cascade] on_release / on_commit (cascadetrigger.py)
        self._trust_workspaces()

    # -- lifecycle
    def run(self, listen_fd: int | None = None) -> None:
        # The handlers first: once the socket answers, an admin (or a script that waited for
        # it) may send SIGHUP, whose default action would end the daemon (the Git-flow model
        # found it: a reload right after start-up killed snapverd). Until the loop below runs,
        # they only set flags, which it reads.
        signal.signal(signal.SIGTERM, lambda *_: self.stopping.set())
        signal.signal(signal.SIGINT, lambda *_: self.stopping.set())
        signal.signal(signal.SIGHUP, lambda *_: self.reload_requested.set())
        from watchdog.observers import Observer  # third-party: `snapver gc` imports this module too

        self.observer = Observer()
        self.observer.start()
        self._watch_all()
        self.server = _make_server(self, self.config.socket, listen_fd)
        threading.Thread(target=self.server.serve_forever, name="socket", daemon=True).start()
        notify("READY=1", f"STATUS={self._watching()}")
        log.info("snapverd ready: %s; socket %s", self._watching(), self.config.socket)
        next_poll = 0.0
        while not self.stopping.wait(0.5):
            notify("WATCHDOG=1")
            if self.reload_requested.is_set():
                self.reload_requested.clear()
                self.reload()
            now = time.monotonic()
            poll = now >= next_poll
            if poll:
                next_poll = now + self.config.poll_interval
            self._dispatch(poll)
            if self.config.gc_interval and now - self.last_gc >= self.config.gc_interval and \
                    not (self.gc_thread and self.gc_thread.is_alive()):
                self.last_gc = now
                self.gc_thread = threading.Thread(target=self.gc_all, name="gc", daemon=True)
                self.gc_thread.start()
        # SIGTERM: the loop stops deciding; the jobs in flight finish, so no snapshot is cut short.
        notify("STOPPING=1")
        self._wait_for_jobs()
        self.server.shutdown()
        self.server.server_close()
        if listen_fd is None:
            self.config.socket.unlink(missing_ok=True)  # ours to remove; systemd's is not
        self.observer.stop()
        log.info("snapverd stopped")

    def reload(self) -> None:
        # Not RELOADING=1/READY=1 (sd_notify(3)): under the guest's systemd 252 the unit once
        # stayed "reloading" after both were sent (CI at f59225c); kept out until understood.
        log.info("reloading the config (SIGHUP)")
        try:
            try:
                config = DaemonConfig.load(self.config_path)
                check_projects(config)
            except SnapverError as e:
                log.error("config not reloaded, keeping the old one: %s", e)
                return
            with self.lock, self.budget_lock:
                for w in self.watches.values():
                    if w.watch is not None:
                        self.observer.unschedule(w.watch)
                self.watches.clear()
            self.config = config
            self._trust_workspaces()
            self._watch_all()
            log.info("config reloaded: %s", self._watching())
        finally:
            notify(f"STATUS={self._watching()}")

    def _watching(self) -> str:
        """What start-up and reload say: only the workspaces loaded count; those that could not be
        are named (each was logged with its reason as "not watched")."""
        failed = [str(p) for p in self.unwatched]
        said = f"{len(self.config.workspaces) - len(failed)} workspace(s) watched"
        return said + (f", {len(failed)} not: {', '.join(failed)}" if failed else "")

    def _trust_workspaces(self) -> None:
        """Let git, run as root, work in the configured users' repositories (and only those)."""
        paths = [str(w.path) for w in self.config.workspaces]
        os.environ["GIT_CONFIG_COUNT"] = str(len(paths))
        for i, p in enumerate(paths):
            os.environ[f"GIT_CONFIG_KEY_{i}"] = "safe.directory"
            os.environ[f"GIT_CONFIG_VALUE_{i}"] = p

    # -- watching
    def _watch_all(self) -> None:
        limit = _inotify_limit()
        self.watch_budget = self.config.inotify_budget if self.config.inotify_budget is not None else limit // 4
        self.unwatched: dict[Path, str] = {}
        for w in self.config.workspaces:
            # Alive, though busy: each workspace costs a few filesystem calls, and a reload of
            # many on a slow pool must not outlast WatchdogSec and get snapverd killed.
            notify("WATCHDOG=1")
            try:
                ws = self._open(w.path)
                self.heads[w.path] = ws.git.head()
                for v in ws.volumes:
                    watch = VolumeWatch(v, ws.live_path(v))
                    self.watches[(w.path, v)] = watch
                    self._start_watch(w.path, watch)
                    # Work left unsnapshotted while the daemon was down counts as a change.
                    if ws.backend.changed_since(ws.project, ws.id, v, ws.state.volume(v).mark):
                        self.note_change((w.path, v))
            except (SnapverError, OSError) as e:  # one workspace that vanishes never stops the daemon
                log.error("%s: not watched: %s", w.path, e)
                self.unwatched[w.path] = str(e)

    def _start_watch(self, tree: Path, watch: VolumeWatch) -> None:
        with self.budget_lock:  # jobs of several workspaces may start watches at once
            self._start_watch_locked(tree, watch)

    def _start_watch_locked(self, tree: Path, watch: VolumeWatch) -> None:
        # The volume's real folder: on ZFS its path is a link (backends/zfslive.py), and watchdog
        # does not follow a link it is given (nor should it follow those inside a volume).
        real = Path(os.path.realpath(watch.path))
        watch.device = _device(real)
        dirs = _count_dirs(real, self.watch_budget)
        if dirs > self.watch_budget:
            watch.mode = "polling"
            log.warning("%s: %s has more directories than the inotify budget (%d): polling",
                        tree, watch.volume, self.watch_budget)
            return
        try:
            watch.watch = self.observer.schedule(_Recorder(self, (tree, watch.volume)), str(real),
                                                 recursive=True)
            watch.mode = "events"
            watch.dirs = dirs
            self.watch_budget -= dirs
        except OSError as e:
            watch.mode = "polling"
            log.warning("%s: %s: inotify refused (%s): polling", tree, watch.volume, e)

    def note_change(self, key: tuple[Path, str]) -> None:
        now = time.monotonic()
        with self.lock:
            w = self.watches.get(key)
            if w is not None:
                w.first_change = w.first_change or now
                w.last_change = now

    def _dispatch(self, poll: bool) -> None:
        """Start a job for each workspace with something due (its poll, volumes gone quiet)
        and no job still in flight; a busy workspace's writes stay pending for its next job."""
        now = time.monotonic()
        due: dict[Path, list[str]] = {}
        with self.lock:
            for (tree, volume), w in self.watches.items():
                if w.first_change is None or tree in self.busy:
                    continue
                if (w.last_change is not None and now - w.last_change >= self.config.debounce) \
                        or now - w.first_change >= self.config.max_delay:
                    due.setdefault(tree, []).append(volume)
                    w.first_change = w.last_change = None  # writes from now on are a new burst
            trees = [w.path for w in self.config.workspaces if w.path not in self.busy and (poll or w.path in due)]
            for tree in trees:
                job = threading.Thread(target=self._job, args=(tree, poll, due.get(tree, [])),
                                       name=f"workspace {tree}", daemon=True)
                self.busy[tree] = job
        for tree in trees:
            self.busy[tree].start()

    def _job(self, tree: Path, poll: bool, volumes: list[str]) -> None:
        try:
            if poll:
                self._poll(tree)
            if volumes:
                self._capture(tree, volumes)
        except Exception:  # never let one workspace's job take the daemon down
            log.exception("%s: job failed", tree)
        finally:
            with self.lock:
                self.busy.pop(tree, None)

    def _wait_for_jobs(self) -> None:
        with self.lock:
            jobs = list(self.busy.values()) + ([self.gc_thread] if self.gc_thread else []) + self.cascades.running()
        deadline = time.monotonic() + lock.WAIT_SECONDS + 30
        for job in jobs:
            job.join(max(0.0, deadline - time.monotonic()))
            if job.is_alive():
                log.warning("%s: still busy at exit: left to finish or be undone by `snapver doctor`", job.name)

    def _poll(self, tree: Path) -> None:
        try:
            ws = self._open(tree)
            self._follow_commits(ws, tree)
            self.cascades.poll(ws, tree)  # after the commit's snapshot: on_commit sees it
            if self.config.reap_after:
                # Idle time's work (issue 19): what checkouts swapped out, deleted while nobody
                # switches versions, not in the next `show --space` or `du`. No lock: a
                # checkout under way in another workspace is left alone (Backend.reap).
                for line in ws.backend.reap(ws.project, "", quiet_for=self.config.reap_after):
                    log.info("%s: %s", tree, line)
            for v in ws.volumes:
                watch = self.watches.get((tree, v))
                if watch is None:
                    continue
                if _device(watch.path) != watch.device:  # a checkout swapped the volume in
                    with self.budget_lock:
                        if watch.watch is not None:
                            self.observer.unschedule(watch.watch)
                            watch.watch, self.watch_budget = None, self.watch_budget + watch.dirs
                    self._start_watch(tree, watch)
                if watch.mode == "polling":
                    mark = ws.backend.mark(ws.project, ws.id, v)
                    if mark != watch.last_mark:
                        watch.last_mark = mark
                        if ws.backend.changed_since(ws.project, ws.id, v, ws.state.volume(v).mark):
                            self.note_change((tree, v))
        except SnapverError as e:
            log.error("%s: %s", tree, e)

    def _follow_commits(self, ws, tree: Path) -> None:
        """A commit made by a tool that skipped the hooks gets its snapshot all the same."""
        head = ws.git.head()
        if head == self.heads.get(tree):
            return
        self.heads[tree] = head
        if head is None or head == ws.lake_at():
            return
        if all(ws.backend.find(ws.project, v, head) for v in ws.volumes):
            return
        parents = ws.git.commit(head).parents
        if parents and parents[0] == ws.lake_at():
            try:
                snaps = ws.snapshot(message="snapshotted by snapverd: the commit skipped the hooks")
            except SnapverError:
                # The commit's hook was only slower than this poll: it took the snapshot while
                # we waited for the lock, and the writes since are the wip capture's to keep.
                if all(ws.backend.find(ws.project, v, head) for v in ws.volumes):
                    return
                raise
            log.info("%s: commit %s had no snapshot: took it (%d volumes)", tree, names.short(head), len(snaps))

    def _capture(self, tree: Path, volumes: list[str]) -> None:
        try:
            snaps = self._open(tree).capture(volumes, message="captured by snapverd")
        except SnapverError as e:
            # Still pending: a hook or checkout holding the lock, or any other failure,
            # must not make the daemon forget writes it has not captured yet.
            for v in volumes:
                self.note_change((tree, v))
            log.warning("%s: capture failed, will retry: %s", tree, e)
            return
        faults.point("daemon-after-capture")
        with self.lock:
            for s in snaps:
                if (tree, s.volume) in self.watches:  # unless a reload dropped it meanwhile
                    self.watches[(tree, s.volume)].last_snapshot = s.name
        if snaps:
            log.info("%s: wip snapshot %s of %s", tree, snaps[0].name, ", ".join(s.volume for s in snaps))

    def gc_all(self) -> list:
        """Retention for every project the daemon watches (once per project)."""
        done, decisions = set(), []
        for w in self.config.workspaces:
            try:
                ws = self._open(w.path)
                if ws.project in done:
                    continue
                done.add(ws.project)
                from . import prune  # here: only the gc needs it

                for p in prune.prune(ws):  # gone working trees' live volumes first, as `snapver gc` does
                    log.info("%s: removed the live %s of %s (gone)%s", w.path, ", ".join(p.volumes), p.worktree,
                             f"; its changes kept as {p.kept[0]}" if p.kept else "")
                decisions += ws.gc(policy_for(ws, self.config.retention))
                for doubt in ws.gc_doubts:
                    log.warning("%s: gc kept every unreachable commit snapshot: %s", w.path, doubt)
            except SnapverError as e:
                log.error("%s: gc failed: %s", w.path, e)
        dropped = [d for d in decisions if not d.keep]
        if dropped:
            log.info("gc removed %d snapshot(s)", len(dropped))
        return decisions

    def _open(self, tree: Path):
        ws = Workspace.open(tree)
        faults.point("daemon-opened")
        try:
            _check_own(ws)
        except OSError as e:
            # Moved or deleted since Git found it (a clone moved as snapverd starts or reloads):
            # that workspace is not served, and the daemon goes on with the others.
            raise SnapverError(f"{tree} changed while snapverd checked it ({e.strerror}): "
                               "not served until it is back, or the config names where it went") from None
        return ws

    # -- the socket API
    def status(self, allowed) -> list[dict]:
        out = []
        now = time.monotonic()
        with self.lock:
            for w in self.config.workspaces:
                if not allowed(w):
                    continue
                vols = {}
                for (tree, v), watch in self.watches.items():
                    if tree == w.path:
                        vols[v] = {"mode": watch.mode, "last_snapshot": watch.last_snapshot,
                                   "pending_for": round(now - watch.first_change, 1) if watch.first_change else None}
                out.append({"workspace": str(w.path), "volumes": vols, "cascade": self.cascades.status(w.path)})
        return out

    def handle(self, request: dict, creds: tuple[int, int, int]) -> object:
        pid, uid, gid = creds
        op = request.get("op")
        if not isinstance(op, str):
            raise SnapverError(f"unknown operation {op!r}")
        if op == "daemon-status":
            return self.status(lambda w: self.may(uid, gid, w))
        tree = Path(os.path.realpath(str(request.get("workspace", ""))))
        watched = next((w for w in self.config.workspaces if w.path == tree), None)
        if watched is None:
            raise SnapverError(f"snapverd does not watch {tree}: add it to {self.config_path}")
        if not self.may(uid, gid, watched):
            raise SnapverError(f"{_user(uid)} may not act on {tree}: ask its owner to add you to allow_users")
        log.info("%s (pid %d) asks %s on %s", _user(uid), pid, op, tree)
        args = {k: v for k, v in request.items() if k not in ("op", "workspace")}
        return ops.perform(self._open(tree), op, args, served=True)

    def may(self, uid: int, gid: int, w: WatchedWorkspace) -> bool:
        if uid == 0:
            return True
        try:
            if w.path.stat().st_uid == uid:
                return True
        except OSError:
            return False
        name = _user(uid)
        if name in w.allow_users | self.config.allow_users:
            return True
        groups = {grp.getgrgid(g).gr_name for g in _groups(uid, gid)}
        return bool(groups & (w.allow_groups | self.config.allow_groups))


def _check_own(ws) -> None:
    """Root acts on what a user's files name (the lake and workspace in .git/snapver, the
    project in snapver.toml) only if it is that user's own: their state folder, a lake only
    root may change and reached through no symlink, and volumes that belong to the owner of
    the working tree. Otherwise a user could name another user's workspace or project, or a
    lake of their own whose symlinks lead root's checkout and gc elsewhere."""
    tree = ws.git.toplevel
    owner = tree.stat().st_uid
    folder = LocalState.dir(ws.git.git_dir)
    st = os.lstat(folder)
    if stat.S_ISLNK(st.st_mode) or st.st_uid != owner:
        raise SnapverError(f"{folder} is not {_user(owner)}'s own folder: snapverd will not act on {tree}")
    ws.backend.check_served(tree)
    volumes = [ws.live_path(v) for v in ws.volumes if ws.backend.volume_exists(ws.project, ws.id, v)]
    strangers = [p for p in volumes if p.stat().st_uid != owner]
    if not volumes or strangers:
        raise SnapverError(
            f"the workspace {ws.id} named in {folder / LocalState.FILE} is not {tree}'s own "
            f"(its volumes belong to {_user(strangers[0].stat().st_uid) if strangers else 'nobody here'}): "
            "snapverd will not act on it; run `snapver init` again in a fresh clone"
        )


def policy_for(ws, default: Policy) -> Policy:
    """A project's own [retention] in snapver.toml wins over the daemon's default (checked
    when the workspace was opened: a broken file is an error there, never the default)."""
    return ws.config.retention or default


# ------------------------------------------------------------------ socket server

class _Handler(socketserver.StreamRequestHandler):
    def handle(self) -> None:
        creds = struct.unpack("3i", self.request.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
        for line in self.rfile:
            try:
                request = json.loads(line)
                if not isinstance(request, dict):
                    raise ValueError("a request is a JSON object")
                answer = {"ok": True, "result": self.server.daemon.handle(request, creds)}  # type: ignore[attr-defined]
            except SnapverError as e:
                answer = {"ok": False, "error": str(e), "exit_code": e.exit_code}  # "not found" stays 3
            except sqlite3.Error as e:
                answer = {"ok": False, "error": str(explain(e))}
            except (ValueError, KeyError, TypeError) as e:
                answer = {"ok": False, "error": f"bad request: {e}"}
            except Exception as e:  # never let one request take the daemon down
                log.exception("request failed")
                answer = {"ok": False, "error": f"snapverd failed: {e.__class__.__name__}: {e}"}
            self.wfile.write(json.dumps(answer, default=str).encode() + b"\n")


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True
    daemon: Daemon  # the snapverd it answers for


def _make_server(daemon: Daemon, path: Path, listen_fd: int | None) -> _Server:
    if listen_fd is not None:  # systemd socket activation: the socket is already bound
        server = _Server(str(path), _Handler, bind_and_activate=False)
        server.socket = socket.socket(fileno=listen_fd)
    else:
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o755)
        if path.is_socket():
            path.unlink()  # left by a daemon that died
        server = _Server(str(path), _Handler)
        os.chmod(path, 0o666)  # anyone may connect; each request is checked by SO_PEERCRED
    server.daemon = daemon
    return server


def listen_fd_from_systemd() -> int | None:
    """The socket systemd passed (LISTEN_FDS protocol: fd 3), if it passed one to us."""
    if os.environ.get("LISTEN_PID") == str(os.getpid()) and os.environ.get("LISTEN_FDS") == "1":
        return 3
    return None


# ------------------------------------------------------------------ small helpers

def notify(*states: str) -> None:
    """Tell systemd (Type=notify) how we are; a no-op when not run by systemd."""
    if "NOTIFY_SOCKET" not in os.environ:
        return
    import sdnotify  # third-party, and only under systemd

    sdnotify.SystemdNotifier().notify("\n".join(states))


def _inotify_limit() -> int:
    try:
        return int(Path("/proc/sys/fs/inotify/max_user_watches").read_text())
    except (OSError, ValueError):
        return 8192


def _count_dirs(root: Path, stop_after: int) -> int:
    """Directories under root, counting no further than stop_after + 1 (one inotify watch each)."""
    count, stack = 0, [str(root)]
    while stack and count <= stop_after:
        count += 1
        try:
            with os.scandir(stack.pop()) as it:
                stack.extend(e.path for e in it if e.is_dir(follow_symlinks=False))
        except OSError:
            pass
    return count


def _device(path: Path) -> int | None:
    try:
        return os.stat(path).st_dev
    except OSError:
        return None


def _user(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return f"uid {uid}"


def _groups(uid: int, gid: int) -> list[int]:
    try:
        return os.getgrouplist(pwd.getpwuid(uid).pw_name, gid)
    except KeyError:
        return [gid]


def main(config_path: Path) -> None:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(message)s")
    Daemon(config_path).run(listen_fd_from_systemd())
