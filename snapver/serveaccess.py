"""Who may ask the storage server what: snapverd.toml's [serve] and [[clients]], and
`snapver serve --restrict`, the forced command of a compute node's key in authorized_keys.

    command="snapver serve --restrict --key gpu1",restrict ssh-ed25519 AAAA... gpu1

sshd runs that instead of whatever the node asked for, and puts what it asked for in
SSH_ORIGINAL_COMMAND. It is split into words here (shlex, never a shell) and must be
`snapver serve --workspace PROJECT/NAME` or `snapver serve session LAKE PROJECT`; anything
else (a shell, scp, another program) is refused in one line. The key is known by the
name the admin gave it (--key), by its SHA256 fingerprint (sshd's ExposeAuthInfo), or
the account by its user name; the first [[clients]] entry matching any of them says which
projects it reaches, and whether read-only or read-write. (lakeserver.restricted runs it.)
"""

from __future__ import annotations

import base64
import hashlib
import os
import pwd
import shlex
from pathlib import Path
from typing import NamedTuple

from . import names
from .errors import SnapverError
from .tomlcheck import Invalid, get, known

DEFAULT_WORKSPACES = Path("/var/lib/snapver/nodes")

# What a read-only client may ask: nothing that changes a volume, a snapshot or the catalog.
READ_OPS = frozenset({"status", "log", "show", "path", "find", "release-list", "lineage", "release-history",
                      "builds", "diff", "compare", "du"})
# And a read-write one, besides: what a node's hooks and everyday commands do. Not build or
# cascade (they run a command, which a forced command exists to prevent), not gc, reindex or
# clones (the server's own upkeep), not push or pull (the server's own remotes).
WRITE_OPS = READ_OPS | {"init", "snapshot", "checkout", "follow", "rewrite", "restore", "release-create",
                        "release-set", "tag-releases", "derive", "doctor"}


class Client(NamedTuple):
    key: str | None  # a key's name (--key) or "SHA256:..." fingerprint
    user: str | None
    projects: frozenset[str]  # "*": every project
    write: bool

    def reaches(self, project: str) -> bool:
        return "*" in self.projects or project in self.projects


class Serving(NamedTuple):
    workspaces: Path = DEFAULT_WORKSPACES  # the compute nodes' workspaces: PROJECT/NAME under here
    lakes: tuple[str, ...] = ()  # the lakes a restricted client may name (none: any)
    clients: tuple[Client, ...] = ()


def from_doc(doc: dict) -> Serving:
    """[serve] and [[clients]] of snapverd.toml, checked (DaemonConfig reads them too)."""
    serve = doc.get("serve", {})
    if not isinstance(serve, dict):
        raise Invalid("[serve] must be a table", ("serve",))
    known(serve, ("workspaces", "lakes"), ("serve",), "[serve] ")
    where = get(serve, "workspaces", "str", ("serve",), str(DEFAULT_WORKSPACES))
    if not where.startswith("/"):
        raise Invalid("[serve] workspaces must be an absolute path", ("serve", "workspaces"))
    lakes = tuple(get(serve, "lakes", "strs", ("serve",), []))
    tables = doc.get("clients", [])
    if not isinstance(tables, list) or not all(isinstance(c, dict) for c in tables):
        raise Invalid("clients must be [[clients]] tables, each with key or user, and projects", ("clients",))
    clients = []
    for i, c in enumerate(tables):
        at, label = ("clients", i), f"[[clients]] #{i + 1} "
        known(c, ("key", "user", "projects", "access"), at, label)
        key, user = get(c, "key", "str", at), get(c, "user", "str", at)
        if not key and not user:
            raise Invalid(f"{label}needs key = \"NAME or SHA256:...\" or user = \"NAME\"", at)
        projects = get(c, "projects", "strs", at, [])
        if not projects:
            raise Invalid(f"{label}needs projects = [\"ID\", ...] (or [\"*\"])", at)
        for p in projects:
            if p != "*":
                try:
                    names.check_project(p)
                except SnapverError as e:
                    raise Invalid(f"{label}projects: {e}", at + ("projects",)) from None
        access = get(c, "access", "str", at, "read-only")
        if access not in ("read-only", "read-write"):
            raise Invalid(f"{label}access = {access!r}: say \"read-only\" or \"read-write\"", at + ("access",))
        clients.append(Client(key, user, frozenset(projects), access == "read-write"))
    return Serving(Path(where), lakes, tuple(clients))


# ------------------------------------------------------------------ who is asking

def fingerprint(line: str) -> str | None:
    """The SHA256 fingerprint of a public key line ("ssh-ed25519 AAAA..."), as ssh-keygen -l says it."""
    words = line.split()
    for w in words[1:2]:
        try:
            blob = base64.b64decode(w, validate=True)
        except ValueError:
            return None
        return "SHA256:" + base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return None


def identities(key_name: str | None) -> tuple[set[str], str]:
    """(the key's names: --key and its fingerprint where sshd exposes it, the user name)."""
    keys = {key_name} if key_name else set()
    auth = os.environ.get("SSH_USER_AUTH")  # ExposeAuthInfo yes: "publickey ssh-ed25519 AAAA..."
    if auth:
        try:
            for line in Path(auth).read_text().splitlines():
                if line.startswith("publickey "):
                    found = fingerprint(line.removeprefix("publickey "))
                    if found:
                        keys.add(found)
        except OSError:
            pass
    return keys, pwd.getpwuid(os.geteuid()).pw_name


def client_for(serving: Serving, keys: set[str], user: str) -> Client:
    for c in serving.clients:  # key and user both given: both must match
        if (c.key is None or c.key in keys) and (c.user is None or c.user == user):
            return c
    said = ", ".join(sorted(keys)) or f"user {user}"
    raise SnapverError(f"{said} is not a client of this server: add it to [[clients]] in snapverd.toml")


# ------------------------------------------------------------------ the forced command

def requested(original: str | None) -> list[str]:
    """SSH_ORIGINAL_COMMAND as the words after `snapver serve`; refused unless it is one."""
    if not original:
        raise SnapverError("this key runs snapver only: no shell (ssh HOST snapver serve ...)")
    try:
        words = shlex.split(original)
    except ValueError:
        words = []
    if len(words) < 3 or os.path.basename(words[0]) != "snapver" or words[1] != "serve":
        raise SnapverError(f"this key runs `snapver serve` only, not {original[:60]!r}")
    rest = words[2:]
    if rest[0] == "--workspace" and len(rest) == 2:
        return rest
    if rest[0] == "session" and len(rest) == 3:
        return rest
    raise SnapverError("this key runs `snapver serve --workspace PROJECT/NAME` or `snapver serve session ...` only")


def check(client: Client, project: str, op: str, lake: str | None = None, serving: Serving | None = None) -> None:
    """May client run op on project (and name that lake)? One line saying why not."""
    if not client.reaches(project):
        raise SnapverError(f"this key may not reach project {project}")
    if op not in (WRITE_OPS if client.write else READ_OPS):
        kind = "read-write" if client.write else "read-only"
        raise SnapverError(f"this key ({kind}) may not run {op} on the server")
    if lake is not None and serving is not None and serving.lakes and lake.rstrip("/") not in \
            {x.rstrip("/") for x in serving.lakes}:
        raise SnapverError(f"lake {lake} is not one this server serves ([serve] lakes)")
