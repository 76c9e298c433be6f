"""snapverd.toml: the daemon's settings, read and checked in one place (errors name the
file and the line), at start and on SIGHUP alike. Split out of daemon.py: a noun of its own,
which the CLI and the tests read without the daemon's threads and sockets."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from . import endpoint, serveaccess, tomlcheck
from .config import retention_policy
from .errors import SnapverError
from .retention import Policy, parse_duration
from .serveaccess import Serving
from .tomlcheck import Invalid, known, short

DEFAULT_CONFIG = endpoint.CONFIG  # SNAPVER_CONFIG, else /etc/snapver/snapverd.toml


@dataclass(frozen=True)
class WatchedWorkspace:
    path: Path  # a Git working tree set up with `snapver init`
    allow_users: frozenset[str] = frozenset()
    allow_groups: frozenset[str] = frozenset()


@dataclass
class DaemonConfig:
    socket: Path = endpoint.SOCKET
    debounce: float = 30.0  # quiet time after a burst of writes before a wip snapshot
    max_delay: float = 600.0  # a job that never pauses is still captured this often
    poll_interval: float = 5.0  # refs, swapped volumes, and volumes watched by polling
    gc_interval: float = 3600.0  # 0 turns scheduled retention off
    # A workspace with no checkout this long gets the volumes its checkouts swapped out (Btrfs)
    # deleted, so that `show --space` and `du` need not; 0 leaves them to gc.
    reap_after: float = 60.0
    inotify_budget: int | None = None  # directories we may watch; None: a quarter of the limit
    allow_users: frozenset[str] = frozenset()
    allow_groups: frozenset[str] = frozenset()
    retention: Policy = field(default_factory=Policy)
    workspaces: list[WatchedWorkspace] = field(default_factory=list)
    # [serve] and [[clients]]: compute nodes over ssh (`snapver serve --restrict`, serveaccess.py)
    serving: Serving = field(default_factory=Serving)

    @classmethod
    def load(cls, path: Path) -> DaemonConfig:
        """Read and check every setting: a value of the wrong type or out of range, or a key
        nobody reads, is an error naming it, at start and on SIGHUP alike (where the old
        config is kept), never a crash later in the main loop."""
        try:
            with open(path, "rb") as f:
                data = f.read()
        except FileNotFoundError:
            raise SnapverError(f"no daemon config at {path}: write one (see README) or pass --config") from None
        except OSError as e:
            raise SnapverError(f"{path} cannot be read: {e.strerror}") from None
        return tomlcheck.parse(path, data, cls._from_doc)  # errors name the file and the line

    @classmethod
    def _from_doc(cls, doc: dict) -> DaemonConfig:
        known(doc, _TOP_KEYS)
        seconds = {k: _duration(doc, k) for k in ("debounce", "max_delay", "poll_interval") if k in doc}
        for key in ("gc_interval", "reap_after"):  # each may be "off"
            if key in doc:
                seconds[key] = 0.0 if doc[key] in ("off", 0) and not isinstance(doc[key], bool) \
                    else _duration(doc, key)
        budget = doc.get("inotify_budget")
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 0):
            raise Invalid(f"inotify_budget = {budget!r}: give a whole number of directories, 0 or more "
                          "(or leave it out: a quarter of fs.inotify.max_user_watches)", ("inotify_budget",))
        sock = doc.get("socket", str(endpoint.SOCKET))
        if not isinstance(sock, str) or not sock.startswith("/"):
            raise Invalid(f"socket = {short(sock)}: give an absolute path, e.g. \"/run/snapver/snapverd.sock\"",
                          ("socket",))
        policy = retention_policy(doc["retention"]) if "retention" in doc else Policy()
        tables = doc.get("workspace", [])
        if not isinstance(tables, list) or not all(isinstance(w, dict) for w in tables):
            raise Invalid("workspace must be [[workspace]] tables, each with a path", ("workspace",))
        workspaces = []
        for i, w in enumerate(tables, 1):
            at = ("workspace", i - 1)
            known(w, _WORKSPACE_KEYS, at, f"[[workspace]] #{i} ")
            users, groups = _names(w, "allow_users", f"[[workspace]] #{i} ", at), \
                _names(w, "allow_groups", f"[[workspace]] #{i} ", at)
            where = w.get("path")
            if not isinstance(where, str) or not where:
                raise Invalid(f"[[workspace]] #{i} needs path = \"/the/working/tree\"", at)
            workspaces.append(WatchedWorkspace(Path(where).resolve(), users, groups))
        return cls(
            socket=Path(sock),
            inotify_budget=budget,
            allow_users=_names(doc, "allow_users"),
            allow_groups=_names(doc, "allow_groups"),
            retention=policy,
            workspaces=workspaces,
            serving=serveaccess.from_doc(doc),
            **seconds,
        )


def check_projects(config: DaemonConfig) -> None:
    """The snapver.toml of every workspace to watch, checked as the daemon config is: a broken
    one refuses the start (or the reload), naming its file and line, rather than leaving that
    workspace silently unwatched or under the default retention. A workspace without one
    (not set up yet, gone) is only logged later, as before: "not watched"."""
    from .config import ProjectConfig
    from .tomlcheck import ConfigError

    for w in config.workspaces:
        try:
            ProjectConfig.load(w.path)
        except ConfigError:
            raise
        except SnapverError:
            pass


_TOP_KEYS = ("socket", "debounce", "max_delay", "poll_interval", "gc_interval", "reap_after", "inotify_budget",
             "allow_users", "allow_groups", "retention", "workspace", "serve", "clients")
_WORKSPACE_KEYS = ("path", "allow_users", "allow_groups")


def _duration(doc: dict, key: str) -> float:
    value = doc[key]
    if not isinstance(value, str):
        raise Invalid(f"{key} = {short(value)} is not a duration: write it as a string, e.g. \"30s\"", (key,))
    try:
        return parse_duration(value).total_seconds()
    except SnapverError as e:
        raise Invalid(f"{key}: {e}", (key,)) from None


def _names(doc: dict, key: str, where: str = "", at: tuple = ()) -> frozenset[str]:
    value = doc.get(key, [])
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise Invalid(f"{where}{key} = {short(value)}: it must be a list of names", at + (key,))
    return frozenset(value)
