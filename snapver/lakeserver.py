"""The storage server's side of a remote lake: `snapver serve --workspace PROJECT/NAME`.

A compute node's working tree has its volumes on the server, seen through a network
mount (remotelake.py is the node's side). Each snapver command or hook of the node is one
ssh session here: one JSON line (the operation, its arguments, the node's Git refs and
HEAD, the commits recorded while the server was unreachable, the size of a Git pack),
then the pack, then one JSON line back (the result, the warnings said on the way, the
commits this side now holds). So a command is one round trip, the same session protocol
as push and pull speak (JSON lines on stdin and stdout, over ssh).

The server keeps, for each node's working tree, a Git repository of its own under
[serve] workspaces (PROJECT/NAME): the node's refs and HEAD mirrored into it, its
commits carried by the packs. That is the working tree every operation of ops.py runs
in, exactly as on a machine with a local lake: its volume links point at the live
volumes, which are what the node's mount shows, and revisions resolve as on the node.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from . import journal, names, peer, serveaccess
from .daemonconfig import DEFAULT_CONFIG, DaemonConfig
from .errors import NotFound, SnapverError
from .serveaccess import Serving

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_REF = re.compile(r"refs/(heads|tags|remotes)/[^\x00-\x20~^:?*\[\\]{1,200}")
MAX_HEADER = 1 << 24


def workspace_dir(serving, where: str) -> tuple[str, Path]:
    """PROJECT/NAME, checked, and its folder under [serve] workspaces."""
    project, _, name = where.partition("/")
    names.check_project(project)
    if not _NAME.fullmatch(name) or ".." in name:
        raise SnapverError(f"{where!r} is not PROJECT/NAME: a node's workspace is named by letters, "
                           "digits, '.', '-' and '_'")
    return project, Path(serving.workspaces) / project / name


def serve(serving, where: str, perform, client=None) -> None:
    """Answer one request on stdin and stdout. perform: ops.perform (the table is the
    operations layer's, above this one). client: a restricted key's grant (serveaccess)."""
    src, out = sys.stdin.buffer, sys.stdout.buffer

    def say(message: dict) -> None:
        out.write(json.dumps(message, default=str).encode() + b"\n")
        out.flush()

    project, shadow = workspace_dir(serving, where)
    if client is not None and not client.reaches(project):  # before a word of the request is read
        raise SnapverError(f"this key may not reach project {project}")
    told: list[str] = []
    done: dict = {}  # "caught_up": the node's pending entries were taken (even if the op then failed)
    try:
        line = src.readline(MAX_HEADER)
        try:
            ask = json.loads(line)
        except ValueError:
            raise SnapverError("that was not a snapver request: is the node's snapver of this version?") from None
        size = int(ask.get("pack") or 0)
        pack = src.read(size) if size else b""
        if len(pack) != size:
            raise SnapverError("the request was cut short")
        op = str(ask.get("op"))
        if client is not None:
            serveaccess.check(client, project, op, ask.get("args", {}).get("lake") if op == "init" else None, serving)
            if op == "restore" and ask.get("args", {}).get("to"):
                raise SnapverError("a restricted key restores into the volume only (no --to)")
        answer = handle(shadow, project, op, ask, pack, told.append, done, perform)
        say({**answer, **done, "told": told})
    except SnapverError as e:
        say({"error": str(e), "resend": isinstance(e, MissingObjects), "told": told, **done})


class MissingObjects(SnapverError):
    """The node's refs name commits this side lacks (its idea of what we hold is stale)."""


def handle(shadow: Path, project: str, op: str, ask: dict, pack: bytes, tell, done: dict, perform) -> dict:
    from .config import LocalState
    from .lake import Workspace

    args = ask.get("args") or {}
    if not isinstance(args, dict):
        raise SnapverError("arguments must be a JSON object")
    fresh = False
    if op == "init":
        fresh = _make(shadow, project, ask)
    elif not LocalState.exists(shadow / ".git"):
        raise NotFound(f"the server has no workspace {project}/{shadow.name}: "
                       "run `snapver init --lake ssh://... --mount ...` on the node first")
    _write_config(shadow, ask.get("config"))
    sync_git(shadow, ask.get("refs") or {}, ask.get("head") or "", pack)
    before = journal.announce
    journal.announce = tell
    try:
        if op == "init":
            ws = Workspace.init(shadow, [], None, _lake(ask, args), None, None) if fresh or not \
                LocalState.exists(shadow / ".git") else Workspace.open(shadow)
            result = {"volumes": [{"volume": v, "path": str(ws.live_path(v))} for v in ws.volumes],
                      "project": ws.project, "backend": ws.backend.name, "lake": ws.backend.spec()}
        else:
            ws = Workspace.open(shadow)
            os.chdir(shadow)  # a path the node gives (restore) is relative to its working tree's top
            _catch_up(ws, ask.get("pending") or [], op, tell)
            done["caught_up"] = True
            result = perform(ws, op, args, tell=tell)
        # The refs here are the node's now: what it may leave out of the next pack.
        return {"result": result, "root": str(ws.backend.root), "lake_at": ws.lake_at(),
                "tips": sorted(set((ask.get("refs") or {}).values()) | ({ask["head"]} if names.SHA.fullmatch(
                    str(ask.get("head"))) else set()))}
    finally:
        journal.announce = before


def _lake(ask: dict, args: dict) -> str:
    lake = str(args.get("lake") or "")
    return lake


def _make(shadow: Path, project: str, ask: dict) -> bool:
    """The node's workspace here: an empty Git repository, its snapver.toml from the node."""
    if (shadow / ".git").exists():
        return False  # the node set up again (lost its own files): the same workspace
    shadow.mkdir(parents=True, exist_ok=True)
    _git(shadow, "init", "-q")
    # Nothing is ever checked out here: the node's files are the node's. Only refs and HEAD.
    _git(shadow, "config", "gc.auto", "0")
    config = ask.get("config")
    if not isinstance(config, str):
        raise SnapverError("the node sent no snapver.toml")
    return True


def _write_config(shadow: Path, text) -> None:
    """The node's snapver.toml (it may add a volume in a commit): written when it changed."""
    if not isinstance(text, str):
        return
    from .config import CONFIG_NAME, write_as_owner

    path = shadow / CONFIG_NAME
    try:
        if path.read_text() == text:
            return
    except FileNotFoundError:
        pass
    write_as_owner(path, text)


def _catch_up(ws, pending: list, op: str, tell) -> None:
    """The commits a node's hooks recorded while this server was unreachable: each gets its
    snapshot now (the volumes could not change meanwhile: the node's mount was down too),
    or is reported if the lake moved on; then the lake follows the node's HEAD."""
    follow = False
    for entry in pending:
        if not isinstance(entry, dict):
            continue
        if entry.get("op") == "rewrite" and isinstance(entry.get("pairs"), list):
            ws.rewrite([(str(p[0]), str(p[1])) for p in entry["pairs"] if isinstance(p, list) and len(p) == 2])
        elif entry.get("op") == "snapshot" and isinstance(entry.get("commit"), str):
            commit = entry["commit"]
            if not names.SHA.fullmatch(commit):
                continue
            if all(ws.backend.find(ws.project, v, commit) for v in ws.volumes):
                continue
            taken = ws.snapshot(commit=commit)
            if taken:
                tell(f"commit {commit[:10]} made while the server was unreachable: snapshotted now")
            else:
                tell(f"commit {commit[:10]} made while the server was unreachable has no snapshot "
                     "(the lake moved on before it was reached); `snapver doctor` lists it")
        else:
            follow = True
    if follow and op not in ("follow", "checkout"):
        ws.follow_head()


# ------------------------------------------------------------------ the node's Git, mirrored

def _git(where: Path, *args: str, data: bytes | None = None) -> str:
    done = subprocess.run(["git", *args], cwd=where, input=data, capture_output=True)
    if done.returncode:
        why = done.stderr.decode("utf-8", "replace").strip().splitlines()
        raise SnapverError(f"git {args[0]} on the server failed: {why[-1] if why else done.returncode}")
    return done.stdout.decode()


def sync_git(shadow: Path, refs: dict, head: str, pack: bytes) -> None:
    """Make the refs and HEAD here the node's: the pack brings what we lack."""
    if pack:
        _git(shadow, "index-pack", "--stdin", "--fix-thin", data=pack)
    if not isinstance(refs, dict):
        raise SnapverError("refs must be a JSON object")
    for ref, sha in refs.items():
        if not isinstance(ref, str) or not _REF.fullmatch(ref) or ".." in ref or not names.SHA.fullmatch(str(sha)):
            raise SnapverError(f"{str(ref)[:80]!r} is not a ref snapver mirrors")
    have = {}
    for line in _git(shadow, "for-each-ref", "--format=%(objectname) %(refname)").splitlines():
        sha, _, ref = line.partition(" ")
        have[ref] = sha
    script = [f"update {r} {s}" for r, s in refs.items() if have.get(r) != s]
    script += [f"delete {r}" for r in have if r not in refs]
    if script:
        done = subprocess.run(["git", "update-ref", "--stdin"], cwd=shadow,
                              input=("\n".join(script) + "\n").encode(), capture_output=True)
        if done.returncode:
            raise MissingObjects("the server lacks commits the node named: sending them all")
    current = (shadow / ".git" / "HEAD").read_text().strip()
    if head.startswith("ref: "):
        target = head[5:]
        if not _REF.fullmatch(target) and not re.fullmatch(r"refs/heads/[^\x00-\x20~^:?*\[\\]{1,200}", target):
            raise SnapverError(f"{target[:80]!r} is not a branch")
        if current != head:
            _git(shadow, "symbolic-ref", "HEAD", target)
    elif names.SHA.fullmatch(head):
        if current != head:
            done = subprocess.run(["git", "update-ref", "--no-deref", "HEAD", head], cwd=shadow, capture_output=True)
            if done.returncode:
                raise MissingObjects("the server lacks the node's HEAD commit: sending it")
    elif head:
        raise SnapverError("HEAD must be a commit ID or a branch")


def restricted(args: list[str], perform) -> None:
    """`snapver serve --restrict [--key NAME] [--config PATH]`: the forced command."""
    key, config = None, None
    it = iter(args)
    for word in it:
        if word == "--key":
            key = next(it, None)
        elif word == "--config":
            config = next(it, None)
        else:
            raise SnapverError(f"usage: snapver serve --restrict [--key NAME] [--config PATH], not {word!r}")
    serving = load(Path(config) if config else None)
    keys, user = serveaccess.identities(key)
    client = serveaccess.client_for(serving, keys, user)
    asked = serveaccess.requested(os.environ.get("SSH_ORIGINAL_COMMAND"))
    if asked[0] == "--workspace":
        serve(serving, asked[1], perform, client)
        return
    lake, project = asked[1], names.check_project(asked[2])
    serveaccess.check(client, project, "init" if client.write else "status", lake, serving)
    if not client.write:
        # A session may receive (push): a read-only key has no session at all.
        raise SnapverError("this key is read-only: push and pull sessions need a read-write key")
    peer.serve(["session", lake, project])


def load(path: Path | None) -> Serving:
    """The serving settings of snapverd.toml at path (the default config if it exists)."""
    if path is None:
        if not DEFAULT_CONFIG.exists():
            return Serving()
        path = DEFAULT_CONFIG
    return DaemonConfig.load(path).serving


def main(argv: list[str], perform) -> None:
    """`snapver serve [--config PATH] --workspace PROJECT/NAME`: for a node whose key is not
    restricted (an admin's); a forced command goes through serveaccess.restricted."""
    config = None
    if argv[:1] == ["--config"] and len(argv) > 2:
        config, argv = Path(argv[1]), argv[2:]
    if len(argv) != 2 or argv[0] != "--workspace":
        raise SnapverError("usage: snapver serve --workspace PROJECT/NAME (a node's snapver runs it)")
    os.umask(0o022)
    serve(load(config), argv[1], perform)
