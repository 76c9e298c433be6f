"""Names snapver puts on the filesystem, and the rules every one must pass.

Every name that reaches a path, a dataset or an argv list is checked here
first. The rules are the intersection of what Btrfs file names and ZFS
dataset and snapshot components accept, minus anything a shell or a path
could misread (leading dash, dots, slashes, spaces, NUL).
"""

from __future__ import annotations

import re
from datetime import datetime, timezone

from .errors import SnapverError

_VOLUME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
_PROJECT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]{0,62}")
SHA = re.compile(r"[0-9a-f]{40}")
# wip snapshots: <sha>.<UTC time to the microsecond>, sortable as text.
_WIP = re.compile(r"([0-9a-f]{40})\.(\d{8}T\d{6}\.\d{6}Z)")
WIP_TIME_FORMAT = "%Y%m%dT%H%M%S.%fZ"
NO_COMMIT = "0" * 40


def short(name: str) -> str:
    """A commit ID or snapshot name as people read it: the ID's first ten digits, and a wip
    snapshot's time (<sha>.<time>) after them, so that two wips of one commit stay apart."""
    return name[:10] + name[40:]


_SHORT_WIP = re.compile(r"([0-9a-f]{4,39})\.(\d{8}T\d{6}\.\d{6}Z)")


def parse_short_wip(name: str) -> tuple[str, str] | None:
    """(commit ID prefix, time) of a wip snapshot named as `snapver log` prints it (short())."""
    m = _SHORT_WIP.fullmatch(name)
    return (m.group(1), m.group(2)) if m else None


def _show(name: object) -> str:
    return repr(name) if name else "an empty name"


def check_volume(name: object) -> str:
    if not isinstance(name, str) or not _VOLUME.fullmatch(name):
        raise SnapverError(
            f"{_show(name)} is not a valid volume name: use 1-63 letters, digits, '-' or '_', "
            "starting with a letter or digit"
        )
    return name


def check_project(name: str) -> str:
    if not isinstance(name, str) or not _PROJECT.fullmatch(name):
        raise SnapverError(
            f"{_show(name)} is not a valid project id: use 1-63 letters, digits, '-' or '_'"
        )
    return name


def check_workspace(name: str) -> str:
    """Workspace ids are made by snapver (project id + random hex) and follow the project rule."""
    if not isinstance(name, str) or not _PROJECT.fullmatch(name):
        raise SnapverError(f"{_show(name)} is not a valid workspace id: use 1-63 letters, digits, '-' or '_'")
    return name


def commit_snapshot_name(sha: str) -> str:
    if not SHA.fullmatch(sha):
        raise SnapverError(f"{_show(sha)} is not a full 40-hex commit ID")
    return sha


def wip_snapshot_name(sha: str, when: datetime | None = None) -> str:
    when = (when or datetime.now(timezone.utc)).astimezone(timezone.utc)
    return f"{commit_snapshot_name(sha)}.{when.strftime(WIP_TIME_FORMAT)}"


def parse_snapshot_name(name: str) -> tuple[str, str, datetime | None] | None:
    """(commit, kind, wip time) for a name snapver made, None for anything else."""
    if SHA.fullmatch(name):
        return name, "commit", None
    m = _WIP.fullmatch(name)
    if m:
        when = datetime.strptime(m.group(2), WIP_TIME_FORMAT).replace(tzinfo=timezone.utc)
        return m.group(1), "wip", when
    return None


def is_snapshot_name(name: object) -> bool:
    return isinstance(name, str) and parse_snapshot_name(name) is not None


def check_snapshot_name(name: object) -> str:
    """A snapshot name snapver made (a commit ID, or one with a wip time), as a peer sends it."""
    if not isinstance(name, str) or not is_snapshot_name(name):
        raise SnapverError(f"{_show(str(name))} is not a snapshot name snapver makes")
    return name
