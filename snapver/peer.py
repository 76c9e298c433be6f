"""The far end of push and pull: remote URLs, the session protocol, and `snapver serve`.

A transfer is the filesystem's own stream (btrfs send, zfs send) piped into
its own receive on the other lake, incremental from the newest snapshot both
hold and whole only when they share none. The far end is `snapver serve`,
over one ssh connection for ssh:// remotes and as a local process for
file:// ones, so both ends check every name with the same code and no shell
string is ever built from user input.

One push or pull is one session with the far end: it first says what its
lake holds (a JSON line), then answers requests, one JSON line each. A
stream travels in frames (a 4-byte length, then that many bytes) and ends
with an empty frame, or with ABORT when its sender failed; catalog rows go
in the request. So a receiver knows a stream is whole from the frames, and
the stream's own end marker is checked as well (Backend.stream_complete):
a stream cut short never becomes a snapshot (Backend.receive), and ZFS
keeps a resume token where the pool supports it.

The sync loop that drives a session, in either direction, is transfer.py.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import struct
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from urllib.parse import unquote, urlsplit

from . import doctor, faults, journal, names, received, registrysync
from .backends import open_lake
from .backends.base import Backend, Snapshot
from .catalog import Catalog
from .errors import NotFound, SnapverError
from .proc import failure
from .received import Receiving

_REMOTE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
_HOST = re.compile(r"[A-Za-z0-9][A-Za-z0-9.-]{0,252}|\[[0-9A-Fa-f:.]+\]")
_USER = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}")
_LAKE = re.compile(r"[A-Za-z0-9_.:/-]{1,1000}")
CHUNK = 1 << 20  # bytes per read while pumping a stream
TAIL = 512  # bytes kept of a stream's end: its end marker (Btrfs: 10, ZFS: 312)


@dataclass(frozen=True)
class RemoteURL:
    url: str
    scheme: str  # "file" or "ssh"
    lake: str  # a path (Btrfs, or a ZFS dataset's mountpoint) or a ZFS dataset
    host: str | None = None
    user: str | None = None
    port: int | None = None


def check_remote_name(name: str) -> str:
    if not isinstance(name, str) or not _REMOTE.fullmatch(name):
        raise SnapverError(f"{name!r} is not a valid remote name: use 1-63 letters, digits, '-' or '_'")
    return name


def parse_url(url: str) -> RemoteURL:
    """ssh://[user@]host[:port]/<lake> or file:///<lake>, every part checked."""
    usage = "use ssh://[user@]host/<pool/dataset or path> or file:///<path or pool/dataset>"
    try:
        parts = urlsplit(url)
        port = parts.port
    except ValueError:
        raise SnapverError(f"{url!r} is not a remote URL: {usage}") from None
    lake = unquote(parts.path)
    segments = lake.strip("/").split("/")
    if (
        not _LAKE.fullmatch(lake) or not lake.startswith("/") or "//" in lake
        or any(s in ("", ".", "..") or s.startswith("-") for s in segments)
    ):
        raise SnapverError(f"{url!r} names no lake (or a strange one): {usage}")
    if parts.scheme == "file" and not parts.netloc:
        return RemoteURL(url, "file", lake)
    if parts.scheme == "ssh" and parts.hostname:
        host = parts.hostname if not parts.netloc.rpartition("@")[2].startswith("[") else f"[{parts.hostname}]"
        if not _HOST.fullmatch(host) or (parts.username and not _USER.fullmatch(parts.username)):
            raise SnapverError(f"{url!r} has a host or user name snapver will not pass to ssh: {usage}")
        if parts.password:
            raise SnapverError(f"{url!r} has a password in it: use an ssh key instead")
        return RemoteURL(url, "ssh", lake, host, parts.username, port)
    raise SnapverError(f"{url!r} is not a remote URL: {usage}")


# ------------------------------------------------------------------ remotes (in .git/config)

SECTION = "snapver-remote"


def remotes(git) -> dict[str, dict[str, str]]:
    """{name: {"url": ..., "command": ...}} from the repository's Git config."""
    try:
        out = git.git("config", "--get-regexp", rf"^{SECTION}\.")
    except SnapverError:
        return {}  # no such keys: git config exits 1
    found: dict[str, dict[str, str]] = {}
    for line in out.splitlines():
        key, _, value = line.partition(" ")
        if key.count(".") < 2:
            continue
        _, name, option = key.split(".", 2)
        if _REMOTE.fullmatch(name):
            found.setdefault(name, {})[option.lower()] = value
    return {n: r for n, r in found.items() if "url" in r}


def add_remote(git, name: str, url: str, command: str | None = None) -> RemoteURL:
    check_remote_name(name)
    parsed = parse_url(url)
    if name in remotes(git):
        raise SnapverError(f"remote {name} exists already: remove it first (`snapver remote remove {name}`)")
    git.git("config", f"{SECTION}.{name}.url", url)
    if command:
        git.git("config", f"{SECTION}.{name}.command", command)
    return parsed


def remove_remote(git, name: str) -> None:
    check_remote_name(name)
    if name not in remotes(git):
        raise NotFound(f"no remote {name}: see `snapver remote list`")
    git.git("config", "--remove-section", f"{SECTION}.{name}")


# ------------------------------------------------------------------ the far end

class Peer:
    """The other lake, reached by running `snapver serve` there."""

    def __init__(self, name: str, url: RemoteURL, command: str = "snapver", ssh: str | None = None):
        self.name, self.url = name, url
        self.command = command
        self.ssh = ssh or os.environ.get("SNAPVER_SSH") or "ssh"

    def argv(self, *args: str) -> list[str]:
        if self.url.scheme == "file":
            # This host: the same interpreter, straight into this module (no CLI to import).
            return [sys.executable, "-m", "snapver.peer", "serve", *args]
        host = self.url.host or ""  # an ssh URL always has one (parse_url)
        dest = f"{self.url.user}@{host}" if self.url.user else host
        port = ["-p", str(self.url.port)] if self.url.port else []
        # ssh hands the remote command to a shell there: every word quoted, and every
        # word was checked before (names, URL parts), so nothing can be read as syntax.
        return [*shlex.split(self.ssh), *port, dest, shlex.join([self.command, "serve", *args])]

    def session(self, lake: str, project: str) -> Session:
        errors = tempfile.TemporaryFile()
        try:
            proc = subprocess.Popen(self.argv("session", lake, project), stdin=subprocess.PIPE,
                                    stdout=subprocess.PIPE, stderr=errors)
        except FileNotFoundError as e:
            raise SnapverError(f"cannot reach remote {self.name}: {e.filename} is not installed") from None
        return Session(self.name, proc, errors)


class Session:
    """One conversation with `snapver serve session` at the far end."""

    def __init__(self, name: str, proc: subprocess.Popen, errors):
        if proc.stdin is None or proc.stdout is None:
            raise ValueError("a session talks through the far end's stdin and stdout pipes")
        self.name, self.proc, self._errors = name, proc, errors
        self.stdin, self.stdout = proc.stdin, proc.stdout
        self.holdings = self.answer()

    def request(self, message: dict) -> None:
        try:
            self.stdin.write(json.dumps(message).encode() + b"\n")
            self.stdin.flush()
        except BrokenPipeError:
            raise self.failure() from None

    def answer(self) -> dict:
        line = self.stdout.readline(1 << 24)
        if not line:
            raise self.failure()
        try:
            message = json.loads(line)
        except ValueError:
            raise SnapverError(f"remote {self.name} answered something else than snapver: "
                               "is snapver installed there (see `snapver remote add --command`)?") from None
        if "error" in message:
            raise SnapverError(f"remote {self.name}: {message['error']}")
        return message

    def failure(self) -> SnapverError:
        """What the far end said before it went away (its last line on stderr)."""
        try:
            self.stdin.close()
        except BrokenPipeError:
            pass
        code = self.proc.wait()
        self._errors.seek(0)
        lines = [l.strip() for l in self._errors.read().decode("utf-8", "replace").splitlines() if l.strip()]
        why = lines[-1].removeprefix("snapver: ") if lines else f"it ended with status {code}"
        return SnapverError(f"remote {self.name}: {why}")

    def close(self) -> None:
        try:
            self.stdin.close()
        except BrokenPipeError:
            pass
        self.proc.wait()
        self._errors.close()


def peer(ws, name: str | None) -> Peer:
    known = remotes(ws.git)
    name = name or ws.config.remote.get("name") or ("origin" if "origin" in known else None)
    if name is None and len(known) == 1:
        name = next(iter(known))
    if name is None:
        raise NotFound("no remote given and no default: `snapver remote add NAME URL` first")
    check_remote_name(name)
    if name not in known:
        raise NotFound(f"no remote {name}: add it with `snapver remote add {name} URL`")
    return Peer(name, parse_url(known[name]["url"]), known[name].get("command", "snapver"),
                ws.config.remote.get("ssh"))


def _what(backend: Backend) -> str:
    return backend.describe()


def lake_state(backend: Backend) -> str:
    """'lake' (it has a catalog), 'empty' (nothing in it yet), or 'other' (someone's files)."""
    if backend.catalog_path.exists():
        return "lake"
    try:
        with os.scandir(backend.root) as entries:
            return "other" if any(e.name != ".zfs" for e in entries) else "empty"
    except OSError:
        return "other"


def _catalog(backend: Backend):
    return Catalog(backend.catalog_path)


def holdings(backend: Backend, project: str) -> dict:
    """What a lake holds of a project, as `serve list` tells the other end."""
    names.check_project(project)
    with backend.steady():
        snaps = sorted(backend.snapshots(project, readable=False), key=lambda s: s.age_key)
        identities = backend.identities(project)
        appendable = backend.appendable(project)
        resumable = backend.resumable()
    return {
        "backend": backend.name,
        "lake": lake_state(backend),
        "what": _what(backend),
        "snapshots": [[s.volume, s.name, identities[(s.volume, s.name)]] for s in snaps],
        "appendable": None if appendable is None else sorted(appendable),
        "resumable": None if resumable is None else [[v, n, t] for (v, n), t in resumable.items()],
        "protocol": registrysync.PROTOCOL,
    }


def choose_base(backend: Backend, snap: Snapshot, held: dict[tuple[str, str], str],
                appendable: set | None, prefer=None) -> tuple[Snapshot | None, bool]:
    """The base for sending snap to a lake that holds `held` ((volume, name) -> identity).
    prefer: snapshot names, best first (the newest common ancestors along the commit
    graph, first parent first); the first of them that can be a base wins, and only where
    none can does the backend's own order (the newest by time) decide."""
    usable = []
    for base, clone in backend.send_bases(snap):
        theirs = held.get((base.volume, base.name))
        if theirs is None or theirs != backend.identity(base):
            continue
        if clone or appendable is None or (base.volume, base.name) in appendable:
            usable.append((base, clone))
    if usable and prefer is not None:
        by_name = {base.name: (base, clone) for base, clone in reversed(usable)}
        for name in prefer:
            if name in by_name:
                return by_name[name]
    return usable[0] if usable else (None, False)


_FRAME = struct.Struct("<I")
END, ABORT = 0, 0xFFFFFFFF


def send_frames(src, dst, tick=None, crash_point: str | None = None) -> int:
    """Frame a stream from src (a reader) onto dst; return its byte count (no end frame)."""
    total = 0
    while True:
        chunk = src.read1(CHUNK)
        if not chunk:
            return total
        dst.write(_FRAME.pack(len(chunk)))
        dst.write(chunk)
        total += len(chunk)
        if tick:
            tick(len(chunk))
        if crash_point and total > 2 * CHUNK:
            faults.point(crash_point)  # push-mid-stream, pull-mid-stream


def receive_frames(src, dst, tick=None, crash_point: str | None = None) -> tuple[int, bytes, bool]:
    """Unframe a stream from src into dst: (bytes, its last bytes, whether it ended with END).
    A short read (the sender went away) or ABORT is False."""
    total, tail = 0, b""
    while True:
        head = src.read(_FRAME.size)
        if len(head) < _FRAME.size:
            return total, tail, False
        (size,) = _FRAME.unpack(head)
        if size in (END, ABORT):
            return total, tail, size == END
        chunk = src.read(size)
        if len(chunk) < size:
            return total, tail, False
        dst.write(chunk)
        total += size
        tail = (tail + chunk[-TAIL:])[-TAIL:]
        if tick:
            tick(size)
        if crash_point and total > 2 * CHUNK:
            faults.point(crash_point)


def receive_into(backend: Backend, catalog, project: str, volume: str, name: str, base: str | None,
                 clone: bool, rows: dict, src, tick=None, crash_point: str | None = None,
                 resuming: bool = False) -> tuple[Snapshot, int]:
    """Receive one framed stream from src into the lake, with its catalog rows; all or nothing.

    Journaled: a crash between the stream's end and its catalog rows is finished by the next
    receive into the project (or doctor), from the rows the journal kept; a crash before
    the end left no snapshot, and what it did leave is resumed or replaced by the next
    receive of that snapshot, or removed by `doctor --repair`."""
    end = Receiving(backend, catalog, project)
    reading = False
    try:
        with end.lock():
            for said in doctor.repair_interrupted(end):
                if journal.announce:
                    journal.announce(said)
            with journal.operation(end, "receive", {"volume": volume, "name": name, "rows": rows}) as op:
                job = backend.receive(project, volume, name, base, clone, resuming)
                # A receive that fails undoes itself (Receive.finish): only a kill leaves this row.
                op.step("started", changed=False)
                reading = True
                try:
                    total, tail, ended = receive_frames(src, job.stdin, tick, crash_point)
                    complete = ended and backend.stream_complete(tail)
                except BrokenPipeError:  # the receive stopped early: its exit status says why
                    total, complete = 0, True
                    _drain(src)
                snap = job.finish(complete)
                op.step("received")
                with catalog.batch():
                    catalog.record_received(snap, rows)
        return snap, total
    except BaseException:
        if not reading:
            _drain(src)  # refused before it started: the stream is still on its way
        raise


def _drain(src) -> None:
    """Read the rest of a framed stream nobody wants, so the session stays in step."""
    receive_frames(src, _Discard())


class _Discard:
    def write(self, data: bytes) -> None:
        pass


def send_stream(argv: list[str], dst, tick=None, crash_point: str | None = None) -> int:
    """Run a send command and frame its stream onto dst, ending with END, or ABORT if it failed."""
    with tempfile.TemporaryFile() as errors:
        sender = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=errors)
        try:
            total = send_frames(sender.stdout, dst, tick, crash_point)
        except BaseException:
            sender.kill()
            sender.wait()
            raise
        code = sender.wait()
        dst.write(_FRAME.pack(END if code == 0 else ABORT))
        dst.flush()
        if code:
            errors.seek(0)
            raise failure(argv, errors.read())
        return total


def serve(args: list[str]) -> None:
    """The far end: `snapver serve session LAKE PROJECT`, a conversation on stdin and stdout."""
    if len(args) != 3 or args[0] != "session":
        raise SnapverError("usage: snapver serve session LAKE PROJECT (push and pull run it)")
    backend = open_lake(args[1])
    project = names.check_project(args[2])
    catalog = None
    src, out = sys.stdin.buffer, sys.stdout.buffer

    def say(message: dict) -> None:
        out.write(json.dumps(message).encode() + b"\n")
        out.flush()

    said = holdings(backend, project)
    if backend.catalog_path.exists():
        catalog = _catalog(backend)
        said["pins"] = received.pins(catalog, project)
    say(said)
    while line := src.readline(1 << 24):
        try:
            ask = json.loads(line)
        except ValueError:
            say({"error": "that was not a snapver request: is the other end a snapver of this version?"})
            return
        try:
            if ask.get("op") == "receive":
                say(serve_receive(backend, project, ask, src))
            elif ask.get("op") == "pins":
                catalog = catalog or _catalog(backend)
                pins = [p for p in ask.get("pins") or [] if isinstance(p, list) and len(p) == 3]
                say({"pinned": received.record_pins(catalog, project, pins, set(backend.identities(project)))})
            elif ask.get("op") == "registry":  # a push's registry rows, merged here
                catalog = catalog or _catalog(backend)
                said_here = registrysync.merge(catalog, backend, project, ask.get("rows"),
                                               str(ask.get("here", "there")), str(ask.get("there", "here")))
                say({"said": said_here})
            elif ask.get("op") == "registry-rows":  # a pull's: this lake's rows of what both hold
                catalog = catalog or _catalog(backend)
                mine = backend.identities(project)
                keys = [k for k in ask.get("shared") or [] if isinstance(k, list) and len(k) == 2
                        and tuple(k) in mine]
                pieces = registrysync.parts(registrysync.export(catalog, project, keys))
                for i, piece in enumerate(pieces):
                    say({"rows": piece, "more": i < len(pieces) - 1})
            elif ask.get("op") == "send":
                catalog = catalog or _catalog(backend)
                with backend.steady():
                    serve_send(backend, catalog, project, names.check_volume(ask.get("volume")),
                               names.check_snapshot_name(ask.get("name")), ask, say, out)
            else:
                raise SnapverError(f"unknown request {ask.get('op')!r}")
        except SnapverError as e:
            say({"error": str(e)})


def serve_receive(backend, project: str, ask: dict, src) -> dict:
    """Receive one framed stream; whatever goes wrong, the stream is read to its end, so
    that the session stays in step for the next request."""
    try:
        volume = names.check_volume(ask.get("volume"))  # a peer's words: checked like a user's
        name = names.check_snapshot_name(ask.get("name"))
        base = ask.get("base")
        if base is not None:
            base = names.check_snapshot_name(base)
        catalog = _catalog(backend)
    except BaseException:
        _drain(src)
        raise
    snap, _ = receive_into(backend, catalog, project, volume, name, base,
                           bool(ask.get("clone")), ask.get("rows") or {}, src, resuming=bool(ask.get("resume")))
    return {"received": snap.name, "volume": volume}


def serve_send(backend, catalog, project, volume, name, ask, say, out) -> None:
    """Send one snapshot: a header line, the framed stream, a closing line. The base is chosen
    here, where the snapshot's lineage is known, from what the receiver says it holds."""
    snap = backend.find(project, volume, name) if names.is_snapshot_name(name or "") else None
    if snap is None:
        raise NotFound(f"there is no snapshot {name} of volume {volume} here")
    held = {(v, n): i for v, n, i in ask.get("held", [])}
    appendable = None if ask.get("appendable") is None else {tuple(x) for x in ask["appendable"]}
    token = ask.get("token")
    prefer = ask.get("prefer") if isinstance(ask.get("prefer"), list) else None
    base, clone = (None, False) if token else choose_base(backend, snap, held, appendable, prefer)
    argv = backend.resume_argv(token) if token else backend.send_argv(snap, base)
    say({"base": base.name if base else None, "clone": clone,
         "size": None if token else backend.estimate(snap, base),
         "rows": catalog.rows_for(project, volume, name)})
    try:
        send_stream(argv, out)
    except SnapverError as e:
        say({"error": str(e)})
        return
    say({"sent": name})


if __name__ == "__main__":  # `python -m snapver.peer serve ...`: the far end on this host
    try:
        serve(sys.argv[2:])
    except SnapverError as e:
        print(f"snapver: {e}", file=sys.stderr)
        sys.exit(1)
