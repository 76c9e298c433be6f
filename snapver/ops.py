"""The operations the CLI, the hooks and the daemon's socket share, with JSON-shaped results.

One table, so that `snapver checkout` gives the same answer whether it ran
here or in the daemon for a user who may not touch the lake directly.
"""

from __future__ import annotations

import os
from pathlib import Path

# The features plug themselves into the core's seams when imported (seams.py): every
# entry point routes through here, so they are in place before a workspace is opened.
from . import build, cascade, client, doctor, endpoint, registry, releases, rewrite  # noqa: F401  (registry: plugged in)
from .errors import SnapverError
from .gitrepo import GitRepo


def snapshot_dict(s) -> dict:
    return {"name": s.name, "volume": s.volume, "commit": s.commit, "kind": s.kind,
            "created": s.created.isoformat(), "path": str(s.path)}


def checkout_dict(result) -> dict | None:
    if result is None:
        return None
    return {
        "target": {v: snapshot_dict(s) for v, s in result.target.items()},
        "kept": [snapshot_dict(s) for s in result.kept],
        "switched": result.switched,
        "warnings": result.warnings,
        "links": result.links,  # volume -> how its link was put back
        "broken": result.broken,  # volume -> what is still wrong with its link
    }


def _snapshot(ws, a):
    commit = a.get("commit")
    return [snapshot_dict(s) for s in ws.snapshot(wip=bool(a.get("wip")), message=a.get("message"),
                                                  commit=str(commit) if commit else None)]


def _checkout(ws, a):
    return checkout_dict(ws.checkout(str(a["rev"]), a.get("volumes") or None, bool(a.get("nearest"))))


def _follow(ws, a):
    return checkout_dict(ws.follow_head())


def _pairs(a) -> list[tuple[str, str]]:
    pairs = a.get("pairs", [])
    if not isinstance(pairs, list) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs):
        raise SnapverError("pairs must be a list of [old, new] commit IDs")
    return [(str(old), str(new)) for old, new in pairs]


def _rewrite(ws, a):
    return [snapshot_dict(s) for s in ws.rewrite(_pairs(a))]


def _status(ws, a):
    stale = cascade.stale(ws)  # recipe volumes whose inputs moved since their last build
    return [{"volume": r.volume, "path": str(r.path), "base": r.base, "changed": r.changed, "link": r.link,
             "stale": stale.get(r.volume)}
            for r in ws.status()]


def _log(ws, a):
    return [{**snapshot_dict(e.snapshot), "subject": e.subject, "author": e.author, "message": e.message}
            for e in ws.log(bool(a.get("all")))]


def _build(ws, a):
    return build.build(ws, str(a["volume"])).as_dict()


def _cascade(ws, a):
    target = a.get("target")
    return [n.as_dict() for n in cascade.cascade(ws, str(target) if target else None, int(a.get("jobs", 1)),
                                                 bool(a.get("dry_run")), a.get("progress"))]


def _builds(ws, a):
    volume = a.get("volume")
    return build.history(ws, str(volume) if volume else None, int(a.get("limit", 20)))


def _doctor(ws, a):
    return (doctor.repair(ws) if a.get("repair") else doctor.diagnose(ws)).as_dict()


def release_dict(r) -> dict:
    return {"name": r.name, "snapshot": r.snapshot, "commit": r.commit, "volumes": r.volumes,
            "created": r.created, "message": r.message, "forced": r.forced}


def _release_set(ws, a):
    rel, was = releases.set_release(ws, str(a["name"]), str(a.get("rev") or "HEAD"), a.get("message"),
                                    bool(a.get("force")), [str(c) for c in a.get("conditions") or []])
    return {**release_dict(rel), "from": was, "paths": {v: str(releases.stable_dir(ws, rel.name) / v)
                                                         for v in rel.volumes}}


def _release_history(ws, a):
    return [m._asdict() for m in releases.history(ws, str(a["name"]))]


OPS = {
    "snapshot": _snapshot,
    "checkout": _checkout,
    "follow": _follow,
    "rewrite": _rewrite,
    "status": _status,
    "log": _log,
    "doctor": _doctor,
    "build": _build,
    "cascade": _cascade,
    "builds": _builds,
    "release-set": _release_set,
    "release-history": _release_history,
}

# They run the user's own command: never for a caller over the daemon's socket (as root).
NOT_SERVED = ("build", "cascade")


def perform(ws, op: str, args: dict, served: bool = False):
    """served: for a caller over the daemon's socket, who may act only on what its own
    working tree did (a rewrite it did not make there is refused)."""
    if op not in OPS:
        raise SnapverError(f"unknown operation {op!r}")
    if served and op in NOT_SERVED:
        raise SnapverError(f"`snapver {op}` runs your recipe's command: run it yourself, not through snapverd")
    if served and op == "rewrite":
        rewrite.check_served(ws, _pairs(args))
    return OPS[op](ws, args)


def call(op: str, args: dict | None = None, path: Path | str = "."):
    """Run op on the working tree at path: through the daemon when the caller is not root
    and a daemon is listening, directly otherwise."""
    args = args or {}
    if os.geteuid() != 0 and os.environ.get("SNAPVER_DIRECT") != "1" and endpoint.SOCKET.exists():
        toplevel = GitRepo.find(path).toplevel
        try:
            return client.request({"op": op, "workspace": str(toplevel), **args})
        except client.Unavailable:
            pass  # no daemon after all: try it ourselves, and fail with our own words
    # Here, not at the top: an unprivileged user's hook goes through snapverd above and never
    # opens the lake, so it does not pay for importing the core (sqlite3, the backends).
    from .lake import Workspace

    return perform(Workspace.open(path), op, args)
