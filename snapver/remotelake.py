"""A compute node's side of a lake on a storage server (lakeserver.py is the server's).

`snapver init --lake ssh://storage/srv/lake --mount /mnt/lake` makes a working tree whose
volume links point into the network mount of the server's lake (NFS, sshfs: the admin's
choice), and records the server in .git/snapver/remote-lake.json. From then on ops.call
sends every operation on the workspace here instead of opening a lake: one ssh session
each (through a control master that persists, so a command after the first costs one
round trip, not a handshake), carrying the node's Git refs and any commits the server
lacks. Paths in the answers are the server's; they are given back under the mount.

No silent divergence: a hook that cannot reach the server says so in one line (Git
carries on) and records what it could not do in .git/snapver/pending; the next command
that reaches the server sends those first, and the server snapshots or reports them.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path

from .errors import SnapverError

FILE = "remote-lake.json"
PENDING = "pending"
KNOWN = "remote-known"
# What a hook does: recorded when the server cannot be reached, done when it can.
DEFERRED = ("snapshot", "follow", "checkout", "rewrite")


def _git_dir_of(path: Path | str) -> Path | None:
    """The Git directory above path, found without starting git (the hooks' hot path): a
    `.git` folder; a linked worktree (a .git file) or GIT_DIR asks Git."""
    if "GIT_DIR" in os.environ:
        from .gitrepo import GitRepo

        return GitRepo.find(path).git_dir
    here = Path(os.path.abspath(path))
    for d in (here, *here.parents):
        dot = d / ".git"
        if dot.is_dir():
            return dot
        if dot.exists():
            from .gitrepo import GitRepo

            return GitRepo.find(path).git_dir
    return None


def attached(path: Path | str = ".") -> RemoteLake | None:
    """The remote lake of the working tree at path, or None (a local lake, or none yet)."""
    git_dir = _git_dir_of(path)
    if git_dir is None:
        return None
    try:
        doc = json.loads((git_dir / "snapver" / FILE).read_text())
    except FileNotFoundError:
        return None
    except ValueError:
        raise SnapverError(f"{git_dir / 'snapver' / FILE} is damaged: run `snapver init --lake ... --mount ...` "
                           "again (the volumes are safe on the server)") from None
    return RemoteLake(git_dir, doc)


class Unreachable(SnapverError):
    """ssh could not reach the server (its own exit status, 255)."""


class RemoteLake:
    def __init__(self, git_dir: Path, doc: dict):
        self.git_dir = git_dir
        self.state = git_dir / "snapver"
        self.toplevel = Path(doc.get("toplevel") or git_dir.parent)
        self.url = str(doc["url"])
        self.mount = Path(doc["mount"])
        self.workspace = str(doc["workspace"])  # PROJECT/NAME on the server
        self.root = str(doc.get("root") or "")  # the server's lake root, shown at mount
        self.command = str(doc.get("command") or "snapver")
        self.ssh = doc.get("ssh")

    # ---------------------------------------------------------------- ssh

    def argv(self) -> list[str]:
        from .peer import parse_url

        url = parse_url(self.url)
        dest = f"{url.user}@{url.host}" if url.user else str(url.host)
        port = ["-p", str(url.port)] if url.port else []
        ssh = shlex.split(self.ssh or os.environ.get("SNAPVER_SSH") or "ssh")
        # One control master per working tree and server (two working trees on one host may
        # hold different keys), kept for ControlPersist: a command then costs one round trip.
        # Options given in SNAPVER_SSH come first, and ssh keeps the first value it is given.
        import hashlib  # here, not at the top: every Git hook imports this module (ops), ~3 ms

        tag = hashlib.sha1(f"{self.git_dir}\0{dest}\0{url.port}\0{' '.join(ssh)}".encode()).hexdigest()[:16]
        control = Path(os.environ.get("XDG_RUNTIME_DIR") or os.path.expanduser("~/.ssh"))
        if len(str(control)) > 70:  # a Unix socket's path has ~100 bytes, and ssh adds a suffix
            control = Path(os.path.expanduser("~/.ssh"))
        control.mkdir(mode=0o700, parents=True, exist_ok=True)
        options = ["-o", "ControlMaster=auto", "-o", f"ControlPath={control / ('snapver-' + tag)}",
                   "-o", "ControlPersist=300", "-o", "BatchMode=yes", "-o", "ConnectTimeout=5",
                   "-o", "ServerAliveInterval=2", "-o", "ServerAliveCountMax=3"]
        # ssh hands the command to a shell there: every word quoted (and checked at init).
        return [*ssh, *options, *port, dest, shlex.join([self.command, "serve", "--workspace", self.workspace])]

    def exchange(self, request: dict, pack: bytes) -> dict:
        """One round trip; Unreachable when ssh cannot connect."""
        import tempfile  # here, not at the top: every Git hook imports this module (ops), ~3 ms

        with tempfile.TemporaryFile() as errors:
            try:
                done = subprocess.run(self.argv(), input=json.dumps(request).encode() + b"\n" + pack,
                                      stdout=subprocess.PIPE, stderr=errors)
            except FileNotFoundError as e:
                raise SnapverError(f"cannot reach the lake's server: {e.filename} is not installed") from None
            errors.seek(0)
            said = [x.strip() for x in errors.read().decode("utf-8", "replace").splitlines() if x.strip()]
        line = done.stdout.split(b"\n", 1)[0]
        try:
            answer = json.loads(line) if line else None
        except ValueError:
            answer = None
        if not isinstance(answer, dict):
            why = said[-1].removeprefix("snapver: ") if said else f"ssh ended with status {done.returncode}"
            if done.returncode == 255:  # ssh's own failure: no connection
                raise Unreachable(f"cannot reach the lake's server ({why})")
            raise SnapverError(f"the lake's server: {why}")
        return answer

    # ---------------------------------------------------------------- Git, sent along

    def _refs(self) -> tuple[dict[str, str], str]:
        out = subprocess.run(["git", "for-each-ref", "--format=%(objectname) %(refname)",
                              "refs/heads", "refs/tags", "refs/remotes"],
                             cwd=self.toplevel, capture_output=True, text=True).stdout
        refs = {}
        for line in out.splitlines():
            sha, _, ref = line.partition(" ")
            if len(sha) == 40 and " " not in ref and not ref.endswith("/HEAD"):
                refs[ref] = sha
        try:
            head = (self.git_dir / "HEAD").read_text().strip()
        except OSError:
            head = ""
        if head and not head.startswith("ref: ") and len(head) != 40:
            head = ""
        return refs, head

    def _known(self) -> set[str]:
        try:
            return set(json.loads((self.state / KNOWN).read_text()))
        except (OSError, ValueError, TypeError):
            return set()

    def _pack(self, wanted: set[str], known: set[str]) -> bytes:
        """The objects of wanted that the server lacks (it holds known): none when it has all."""
        wanted = {w for w in wanted if w and w not in known}
        if not wanted:
            return b""
        for negatives in (sorted(known), []):  # a commit pruned here since: send everything
            revs = "".join(f"{w}\n" for w in sorted(wanted)) + "".join(f"^{k}\n" for k in negatives)
            done = subprocess.run(["git", "pack-objects", "--stdout", "--revs", "-q"], cwd=self.toplevel,
                                  input=revs.encode(), capture_output=True)
            if done.returncode == 0:
                return done.stdout
        raise SnapverError(f"git pack-objects failed: {done.stderr.decode('utf-8', 'replace').strip()}")

    # ---------------------------------------------------------------- operations

    def call(self, op: str, args: dict, tell=None):
        from .config import write_as_owner as write_text

        if op == "restore" and isinstance(args.get("path"), str):  # relative to the top, as the server sees it
            args = {**args, "path": os.path.relpath(os.path.abspath(args["path"]), self.toplevel)}
        pending = self._pending()
        refs, head = self._refs()
        wanted = set(refs.values()) | ({head} if len(head) == 40 else set())
        known = self._known()
        request = {"op": op, "args": args, "refs": refs, "head": head, "pending": pending,
                   "config": self._config()}
        try:
            answer = self.exchange({**request, "pack": len(pack := self._pack(wanted, known))}, pack)
            if answer.get("resend"):  # the server lost what we thought it held
                pack = self._pack(wanted, set())
                answer = self.exchange({**request, "pack": len(pack)}, pack)
        except Unreachable as e:
            if op in DEFERRED:
                raise Unreachable(f"{e}: {self._defer(op, args)}") from None
            raise
        for line in answer.get("told") or []:
            if tell:
                tell(line)
        if answer.get("caught_up"):
            self._forget_pending(len(pending))
        if "error" in answer:
            raise SnapverError(str(answer["error"]))
        if answer.get("tips") is not None:
            write_text(self.state / KNOWN, json.dumps(answer["tips"]))
        if answer.get("root"):
            self.root = answer["root"]
        if answer.get("lake_at"):  # the hook shim compares it with HEAD, as with a local lake
            write_text(self.state / "lake-at", answer["lake_at"] + "\n")
        return self.here(answer.get("result"))

    def here(self, value):
        """The server's paths under the lake, as this node sees them (under the mount)."""
        if isinstance(value, str):
            root = self.root.rstrip("/")
            if root and (value == root or value.startswith(root + "/")):
                return str(self.mount / os.path.relpath(value, root))
            return value
        if isinstance(value, list):
            return [self.here(v) for v in value]
        if isinstance(value, dict):
            return {k: self.here(v) for k, v in value.items()}
        return value

    def _config(self) -> str | None:
        try:
            return (self.toplevel / "snapver.toml").read_text()
        except OSError:
            return None

    # ---------------------------------------------------------------- pending

    def _pending(self) -> list[dict]:
        try:
            lines = (self.state / PENDING).read_text().splitlines()
        except FileNotFoundError:
            return []
        out = []
        for line in lines:
            try:
                out.append(json.loads(line))
            except ValueError:
                continue
        return out

    def _defer(self, op: str, args: dict) -> str:
        head = self._refs()[1]
        commit = args.get("commit") or (head if len(head) == 40 else None)
        entry = {"op": "snapshot", "commit": commit} if op == "snapshot" else \
            {"op": "rewrite", "pairs": args.get("pairs")} if op == "rewrite" else {"op": "follow"}
        with open(self.state / PENDING, "a") as f:
            f.write(json.dumps(entry) + "\n")
        if op == "snapshot" and commit:
            return (f"commit {commit[:10]} is recorded in .git/snapver/pending and gets its snapshot "
                    "at the next snapver command that reaches the server")
        return ("recorded in .git/snapver/pending: the volumes follow HEAD at the next snapver command "
                "that reaches the server")

    def _forget_pending(self, count: int) -> None:
        """Drop the entries the server took (more may have been added meanwhile)."""
        from .config import write_as_owner as write_text

        path = self.state / PENDING
        try:
            lines = path.read_text().splitlines()
        except FileNotFoundError:
            return
        rest = lines[count:]
        if rest:
            write_text(path, "".join(line + "\n" for line in rest))
        else:
            path.unlink(missing_ok=True)


# ------------------------------------------------------------------ init on a node

def init(where: Path, a: dict, tell=None) -> dict:
    """`snapver init --lake ssh://HOST/LAKE --mount DIR [--name NAME]` on a compute node."""
    import hashlib
    import re
    import socket

    from . import names
    from .config import CONFIG_NAME, ProjectConfig
    from .gitrepo import GitRepo
    from .hookfiles import install
    from .peer import parse_url
    from .config import write_as_owner as write_text

    git = GitRepo.find(where)
    state = git.git_dir / "snapver"
    if (state / FILE).exists() or (state / "workspace.json").exists():
        raise SnapverError(f"snapver is already set up in {git.toplevel}; nothing to do")
    url = parse_url(str(a["lake"]))
    if url.scheme != "ssh":
        raise SnapverError("--mount goes with --lake ssh://HOST/LAKE (a lake on a storage server)")
    if not a.get("mount"):
        raise SnapverError("--lake ssh://... needs --mount DIR: where this node mounts the server's lake")
    mount = Path(str(a["mount"])).resolve()
    if not mount.is_dir():
        raise SnapverError(f"{mount} is not a folder: mount the server's lake there first (see README)")
    if (git.toplevel / CONFIG_NAME).exists():
        config = ProjectConfig.load(git.toplevel)
    else:
        base = "".join(c if c.isalnum() or c in "-_" else "-" for c in git.toplevel.name)[:40]
        vols = list(dict.fromkeys(names.check_volume(v) for v in (a.get("volumes") or ["data", "models", "logs"])))
        config = ProjectConfig(project=names.check_project(f"{base.strip('-_') or 'lake'}-{os.urandom(4).hex()}"),
                               volumes=vols, backend=a.get("backend") or "btrfs")
    for v in config.volumes:
        if os.path.lexists(git.toplevel / v):
            raise SnapverError(f"{git.toplevel / v} already exists: move it away first (snapver links the volume there)")
    name = a.get("name") or "-".join([socket.gethostname().split(".")[0], git.toplevel.name[:20],
                                      hashlib.sha1(str(git.toplevel).encode()).hexdigest()[:6]])
    name = re.sub(r"[^A-Za-z0-9_.-]", "-", str(name)).lstrip(".-_")[:63]
    lake = url.lake.lstrip("/") if config.backend == "zfs" else url.lake
    if not (git.toplevel / CONFIG_NAME).exists():
        config.save(git.toplevel)
    state.mkdir(parents=True, exist_ok=True)
    doc = {"url": url.url, "mount": str(mount), "workspace": f"{config.project}/{name}",
           "toplevel": str(git.toplevel), **({"command": a["command"]} if a.get("command") else {})}
    remote = RemoteLake(git.git_dir, doc)
    made = remote.call("init", {"lake": lake}, tell)
    doc["root"] = remote.root
    write_text(state / FILE, json.dumps(doc, indent=2))
    for v in made["volumes"]:  # already under the mount (RemoteLake.here)
        os.symlink(v["path"], git.toplevel / v["volume"])
    write_text(state / "links", "".join(v["volume"] + "\n" for v in made["volumes"]))
    git.keep_out(config.volumes)
    hooks = install(git) if a.get("hooks", True) else []
    return {"lake": url.url, "backend": made["backend"], "project": made["project"], "hooks": hooks,
            "volumes": [{"volume": v["volume"], "path": v["path"], "base": None} for v in made["volumes"]],
            "at": [], "joined": None, "workspace": doc["workspace"]}
