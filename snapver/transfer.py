"""Push, pull and clone: one sync loop that moves the snapshots revs ask for from one lake
to the other, in either direction, through a session with the far end (peer.py).

A direction (_Sending, _Fetching) says only what differs: which lake's snapshots are
listed, where the receiver's holdings come from, and how one snapshot crosses; the
choice of what to move, the check of same-named snapshots taken on both sides, and the
bookkeeping of bases and appendable snapshots are the loop's, once.
"""

from __future__ import annotations

import itertools
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

from . import names, received, registrysync
from .ancestry import ancestors, parents_of
from .backends import open_lake  # noqa: F401  (as before, for callers)
from .config import Config
from .errors import SnapverError
from .lake import Workspace
from .peer import Peer, Session, add_remote, choose_base, parse_url, peer, receive_into, send_stream
from .proc import run


@dataclass
class Transfer:
    volume: str
    name: str
    base: str | None  # None: sent whole
    bytes: int
    seconds: float
    resumed: bool = False


def _wanted(ws, revs: list[str], available: list[tuple[str, str]]) -> list[tuple[str, str]]:
    """(volume, name) of those available that revs ask for: a wip's name asks for itself,
    anything else (a commit's full ID too, though it names the commit's snapshot) for the
    commit snapshots of every commit it reaches (Git's history)."""
    commits: set[str] = set()
    exact: set[str] = set()
    for rev in revs or ["HEAD"]:
        if (names.parse_snapshot_name(rev) or ("", ""))[1] == "wip" and any(n == rev for _, n in available):
            exact.add(rev)
            continue
        sha = ws.git.resolve(rev)
        commits.update(ws.git.git("rev-list", sha, "--").split())
    return [(v, n) for v, n in available
            if n in exact or (names.parse_snapshot_name(n) or ("", ""))[1] == "commit" and n in commits]


def _lacking(ws, revs: list[str], has: set[str]) -> str | None:
    """The first rev asked for by name whose own snapshot is not among `has` (names)."""
    for rev in revs:
        if names.is_snapshot_name(rev) and rev in has:
            continue
        sha = ws.git.resolve(rev)
        if sha not in has:
            return rev if rev.startswith(sha[:10]) else f"{rev} ({sha[:10]})"
    return None


def _open(ws, remote: str | None, sending: bool = False, init: bool = False) -> tuple[Peer, Session]:
    """A session with the remote's lake. What is not a lake yet is refused, except as the
    far end of a push when it is empty (or init says to make it one)."""
    p = peer(ws, remote)
    session = p.session(p.url.lake, ws.project)
    theirs = session.holdings
    if theirs.get("backend") != ws.backend.name:
        session.close()
        raise SnapverError(f"remote {p.name} is a {theirs.get('backend')} lake and this one is "
                           f"{ws.backend.name}: send streams do not cross filesystems")
    state, what = theirs.get("lake", "lake"), theirs.get("what", p.url.lake)
    if state != "lake":
        if not sending:
            session.close()
            raise SnapverError(f"remote {p.name}: {what} is {'empty' if state == 'empty' else 'not a snapver lake'}"
                               f": there is nothing to pull (is the URL {p.url.url} right?)")
        if state == "other" and not init:
            session.close()
            raise SnapverError(f"remote {p.name}: {what} has files in it and is not a snapver lake: nothing was "
                               f"sent (is the URL {p.url.url} right? push --init makes it a lake)")
    return p, session


def _different(there: str, volume: str, name: str) -> str:
    return (f"{there} holds a {volume}@{name[:10]} of its own (taken there, not received from here): "
            "neither is sent over the other")


class _Direction:
    """One side of the loop. available: the source's (volume, name), oldest first; source:
    their identities; held: the receiver's (volume, name) -> identity, kept up to date as
    snapshots arrive; appendable, tokens: the receiver's (None where its backend has none)."""

    available: list[tuple[str, str]]
    source: dict
    held: dict
    appendable: set | None
    tokens: dict
    receiver: str  # who holds a same-named snapshot of its own, for the warning

    def __init__(self, ws, p: Peer, session: Session):
        self.ws, self.peer, self.session = ws, p, session

    def known(self) -> set[str]:
        """Names a rev asked for by name may be found among (strict)."""
        raise NotImplementedError

    def lacking(self, rev: str) -> str:
        raise NotImplementedError

    def move(self, key: tuple[str, str], token, prefer, progress) -> tuple[str | None, bool, int]:
        """Send one snapshot across: (its base's name, whether a clone, bytes)."""
        raise NotImplementedError

    def arrived(self, key: tuple[str, str]) -> str:
        """The identity of key's snapshot on the receiver, once it arrived."""
        raise NotImplementedError

    def finish(self, wanted: set, done: list, warn) -> None:
        """The pins of what the sync covered travel with it (gc there keeps what they pin)."""
        raise NotImplementedError


class _Sending(_Direction):
    def __init__(self, ws, p: Peer, session: Session):
        super().__init__(ws, p, session)
        theirs = session.holdings
        self.held = {(v, n): i for v, n, i in theirs["snapshots"]}
        self.appendable = None if theirs["appendable"] is None else {tuple(x) for x in theirs["appendable"]}
        self.tokens = {(v, n): t for v, n, t in theirs["resumable"] or []}
        mine = sorted((s for s in ws.backend.snapshots(ws.project, readable=False) if s.volume in ws.volumes),
                      key=lambda s: s.age_key)
        self.snaps = {(s.volume, s.name): s for s in mine}
        self.available = list(self.snaps)
        self.source = ws.backend.identities(ws.project)
        self.receiver = f"remote {p.name}"

    def known(self) -> set[str]:
        return {n for _, n in self.available}

    def lacking(self, rev: str) -> str:
        return f"this lake has no snapshot of {rev}: nothing of it to push (`snapver snapshot` takes one at HEAD)"

    def move(self, key, token, prefer, progress):
        ws, snap = self.ws, self.snaps[key]
        base, clone = choose_base(ws.backend, snap, self.held, self.appendable, prefer)
        argv = ws.backend.resume_argv(token) if token else ws.backend.send_argv(snap, base)
        # The size is for the progress bar only: a Btrfs estimate is a metadata pass.
        total = None if token or not progress else ws.backend.estimate(snap, base)
        self.session.request({"op": "receive", "volume": snap.volume, "name": snap.name,
                              "base": base.name if base else None, "clone": clone, "resume": bool(token),
                              "rows": ws.catalog.rows_for(ws.project, snap.volume, snap.name)})
        tick = progress(snap.volume, snap.name, total) if progress else None
        try:
            sent = send_stream(argv, self.session.proc.stdin, tick, "push-mid-stream")
        except BrokenPipeError:
            raise self.session.failure() from None
        finally:
            if tick:
                tick(None)
        self.session.answer()
        return (base.name if base else None), clone, sent

    def arrived(self, key):
        return self.ws.backend.identity(self.snaps[key])

    def finish(self, wanted, done, warn):
        pins = [p for p in received.pins(self.ws.catalog, self.ws.project) if (p[0], p[1]) in wanted]
        if pins:
            self.session.request({"op": "pins", "pins": pins})
            self.session.answer()
        theirs = self.session.holdings
        if _speaks_registry(self, warn):
            rows = registrysync.export(self.ws.catalog, self.ws.project, registrysync.shared(self.held, self.source))
            for part in registrysync.parts(rows):
                self.session.request({"op": "registry", "rows": part, "here": f"remote {self.peer.name}",
                                      "there": "this lake"})
                _say(warn, self.session.answer().get("said"))
        if done and theirs.get("lake", "lake") != "lake" and warn:
            warn(f"remote {self.peer.name}: {theirs.get('what')} was "
                 f"{'empty' if theirs['lake'] == 'empty' else 'not a lake'}; it is a snapver lake now")


class _Fetching(_Direction):
    def __init__(self, ws, p: Peer, session: Session, catalog):
        super().__init__(ws, p, session)
        self.catalog = catalog
        self.source = {(v, n): i for v, n, i in session.holdings["snapshots"] if v in ws.volumes}
        self.available = list(self.source)  # the far end lists them oldest first
        self.held = ws.backend.identities(ws.project)
        self.appendable = ws.backend.appendable(ws.project)
        self.tokens = ws.backend.resumable() or {}
        self.receiver = "this lake"

    def known(self) -> set[str]:
        return {n for _, n in self.available} | {n for _, n in self.held}

    def lacking(self, rev: str) -> str:
        return f"remote {self.peer.name} has no snapshot of {rev}, and neither has this lake"

    def move(self, key, token, prefer, progress):
        ws, session, (volume, name) = self.ws, self.session, key
        session.request({"op": "send", "volume": volume, "name": name,
                         "held": [[v, n, i] for (v, n), i in self.held.items() if v == volume],
                         "appendable": None if self.appendable is None else sorted(self.appendable),
                         "token": token,
                         "prefer": list(itertools.islice((c for c in prefer if (volume, c) in self.held), 64))})
        header = session.answer()
        tick = progress(volume, name, header.get("size")) if progress else None
        try:
            _, got = receive_into(ws.backend, self.catalog, ws.project, volume, name, header["base"],
                                  header["clone"], header.get("rows") or {}, session.proc.stdout,
                                  tick, "pull-mid-stream", resuming=bool(token))
        except SnapverError:
            session.answer()  # the far end's own words, if its send failed
            raise
        finally:
            if tick:
                tick(None)
        session.answer()
        return header["base"], header["clone"], got

    def arrived(self, key):
        with self.ws.backend.steady():  # one read of the lake for the find and the identity
            return self.ws.backend.identity(self.ws.backend.find(self.ws.project, *key))

    def finish(self, wanted, done, warn):
        pins = [p for p in self.session.holdings.get("pins") or [] if isinstance(p, list) and len(p) == 3
                and (p[0], p[1]) in wanted]
        received.record_pins(self.catalog, self.ws.project, pins, set(self.held))
        if _speaks_registry(self, warn):
            self.session.request({"op": "registry-rows", "shared": registrysync.shared(self.held, self.source)})
            more = True
            while more:  # the far end's parts, each merged as it comes
                answer = self.session.answer()
                more = bool(answer.get("more"))
                _say(warn, registrysync.merge(self.catalog, self.ws.backend, self.ws.project,
                                              answer.get("rows") or {}, "this lake", f"remote {self.peer.name}"))


def _speaks_registry(d: _Direction, warn) -> bool:
    """Whether the far end takes registry rows (an older snapver does not: it is told nothing,
    and the user is told why the registry stayed behind)."""
    if d.session.holdings.get("protocol", 1) >= registrysync.PROTOCOL:
        return True
    if warn:
        warn(f"remote {d.peer.name} runs an older snapver: the registry (metrics, releases, lineage) was not "
             "synced, only the snapshots; upgrade snapver there")
    return False


def _say(warn, lines) -> None:
    for line in lines or []:
        if warn and isinstance(line, str):
            warn(line)


def _loop(ws, d: _Direction, revs: list[str], progress, warn, strict: bool) -> list[Transfer]:
    """Move what revs ask for that the receiver lacks, oldest first. warn(line) is told of
    snapshots of the same name that both lakes took on their own. strict: a rev with no
    snapshot of its own is an error (the hooks send the history they can)."""
    wanted = set(_wanted(ws, revs, d.available))
    missing = _lacking(ws, revs, d.known()) if strict else None
    if missing:
        raise SnapverError(d.lacking(missing))
    parents = parents_of(ws, wanted - set(d.held))
    done = []
    for key in d.available:
        volume, name = key
        if key in wanted and key in d.held and warn and d.held[key] != d.source.get(key):
            warn(_different(d.receiver, volume, name))
        if key not in wanted or key in d.held:
            continue
        started = time.monotonic()
        token = d.tokens.get(key)
        base, clone, moved = d.move(key, token, ancestors(parents, name), progress)
        d.held[key] = d.arrived(key)
        if d.appendable is not None:
            if base and not clone:
                d.appendable.discard((volume, base))
            d.appendable.add(key)
        done.append(Transfer(volume, name, base, moved, time.monotonic() - started, bool(token)))
    d.finish(wanted, done, warn)
    return done


def sync(ws, direction: str, remote: str | None = None, revs: list[str] | None = None, progress=None,
         warn=None, init: bool = False, strict: bool = True) -> list[Transfer]:
    """direction "push": send the snapshots revs ask for that the remote lacks; "pull":
    receive those this lake lacks. init: a push may make a folder with files in it a lake."""
    if direction not in ("push", "pull"):
        raise ValueError(f"a sync is a push or a pull, not {direction!r}")
    if os.geteuid() != 0:
        what = "sending" if direction == "push" else "receiving"
        raise SnapverError(f"{direction} needs root: {what} a stream is a privileged filesystem call")
    if direction == "pull":
        catalog = ws.catalog  # opened first: once a stream is on its way, only receive_into reads it
        p, session = _open(ws, remote)
        try:
            return _loop(ws, _Fetching(ws, p, session, catalog), revs or [], progress, warn, strict)
        finally:
            session.close()
    p, session = _open(ws, remote, sending=True, init=init)
    try:
        with ws.backend.steady():  # this lake is listed once for the whole push: it only reads it
            return _loop(ws, _Sending(ws, p, session), revs or [], progress, warn, strict)
    finally:
        session.close()


def push(ws, remote: str | None = None, revs: list[str] | None = None, progress=None,
         warn=None, init: bool = False, strict: bool = True) -> list[Transfer]:
    return sync(ws, "push", remote, revs, progress, warn, init, strict)


def pull(ws, remote: str | None = None, revs: list[str] | None = None, progress=None,
         warn=None, strict: bool = True) -> list[Transfer]:
    return sync(ws, "pull", remote, revs, progress, warn, strict=strict)


def clone(git_url: str, directory: Path, lake_url: str | None, lake: str | None, image: Path | None,
          size: int | None, progress=None, command: str | None = None, warn=None):
    """`git clone`, then this host's lake for it (init), its snapshots (pull) and HEAD's data."""
    directory = Path(directory)
    if lake_url:
        parse_url(lake_url)  # before anything is on disk
    if directory.exists() and any(directory.iterdir()):
        raise SnapverError(f"{directory} exists and is not empty: clone into a new folder")
    existed = directory.exists()
    run(["git", "clone", "--quiet", "--", git_url, str(directory)])
    ws = None
    try:
        config = Config.load(directory)
        url = lake_url or config.remote.get("url")
        if not url:
            raise SnapverError("where is its lake? pass --from URL, or set [remote] url in snapver.toml")
        parse_url(url)
        ws = Workspace.init(directory, lake=lake, image=image, size=size)
        name = config.remote.get("name", "origin")
        add_remote(ws.git, name, url, command)
        pull(ws, name, ["HEAD"], progress, warn, strict=False)
        head = ws.git.head()
        if head:
            ws.checkout(head, nearest=True)
        return ws
    except BaseException as e:
        if ws is None:
            # Nothing but the Git clone was made: it goes, so that the same command can run again.
            shutil.rmtree(directory, ignore_errors=True)
            if existed:
                directory.mkdir()
            said = f"the Git clone in {directory} was removed"
        else:
            # Its lake holds the workspace's volumes now: kept, and said so, never deleted here.
            said = (f"left the clone in {directory} and its volumes on lake {ws.backend.spec()} "
                    "(made before the pull failed): `snapver pull` there finishes it")
        if not isinstance(e, SnapverError):
            raise
        raise type(e)(f"{e}; {said}") from None
