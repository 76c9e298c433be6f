"""Every operation snapver does, in one table, with JSON-shaped results.

The CLI, the Python API, the Git hooks and snapverd's socket all run an operation through
here (`call`, or `perform` for the daemon), so `snapver show` gives the same answer whether
it ran here or in the daemon for a user who may not touch the lake directly. The CLI only
parses arguments and prints what comes back.

An entry says what it acts on (a workspace, a Git repository, or nothing yet) and whether
snapverd may run it for a user who is not root (`served`). What is not served runs in the
caller's own process with the caller's own rights: each says why next to its entry.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, NamedTuple

# The features plug themselves into the core's seams when imported (seams.py): every
# entry point routes through here, so they are in place before a workspace is opened.
from . import build, cascade, client, doctor, endpoint, journal, metrics, recipes, registry, releases, remotelake, rewrite, spacewarm  # noqa: F401  (plugged in)
from .errors import NotFound, SnapverError
from .gitrepo import GitRepo

WORKSPACE, GIT, NOTHING = "workspace", "git", "nothing"  # what an operation acts on


class Caller(NamedTuple):
    """Who asked, and what cannot travel in JSON: a served caller (over snapverd's socket)
    may act only within its own working tree; tell(line) hears warnings the result does not
    carry; progress(volume, name, size) makes a progress callback for a stream."""

    served: bool = False
    tell: Callable[[str], None] | None = None
    progress: Callable | None = None


class Op(NamedTuple):
    run: Callable  # run(subject, args, caller): a JSON-shaped result
    on: str = WORKSPACE
    served: bool = False
    announce: bool = True  # False: journal.check's warning is not said (the result says it)


# ------------------------------------------------------------------ JSON shapes

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


def release_dict(r) -> dict:
    return {"name": r.name, "snapshot": r.snapshot, "commit": r.commit, "volumes": r.volumes,
            "created": r.created, "message": r.message, "forced": r.forced}


def _at(ws) -> list[str | None]:
    return sorted({ws.state.volume(v).base for v in ws.volumes}, key=lambda b: b or "")


# ------------------------------------------------------------------ snapshots and checkouts

def _snapshot(ws, a, by):
    commit = a.get("commit")
    step, run = metrics.check_step(a.get("step")), metrics.check_run(str(a.get("run") or "default"))  # before it is taken
    snaps = ws.snapshot(wip=bool(a.get("wip")), message=a.get("message"), commit=str(commit) if commit else None)
    values = {"metric": a.get("metrics") or {}, "param": a.get("params") or {}}
    if snaps and (values["metric"] or values["param"]):
        if not all(isinstance(v, dict) for v in values.values()):
            raise SnapverError("metrics and params are JSON objects")
        registry.record_values(ws, snaps[0].name, values, source=str(a.get("source") or "api"))
        if values["metric"]:  # a point of the run's history too, which outlives the wip (metrics.py)
            metrics.log(ws, values["metric"], step, run, snapshot=snaps[0].name)
    return [snapshot_dict(s) for s in snaps]


def _log_metrics(ws, a, by):
    return metrics.log(ws, a.get("metrics"), metrics.check_step(a.get("step")), str(a.get("run") or "default"))


def _metrics_history(ws, a, by):
    rev, run = a.get("rev"), a.get("run")
    return metrics.history(ws, str(a["key"]), str(rev) if rev else None, str(run) if run else None)


def _checkout(ws, a, by):
    return checkout_dict(ws.checkout(str(a["rev"]), a.get("volumes") or None, bool(a.get("nearest"))))


def _follow(ws, a, by):
    return checkout_dict(ws.follow_head())


def _pairs(a) -> list[tuple[str, str]]:
    pairs = a.get("pairs", [])
    if not isinstance(pairs, list) or not all(isinstance(p, (list, tuple)) and len(p) == 2 for p in pairs):
        raise SnapverError("pairs must be a list of [old, new] commit IDs")
    return [(str(old), str(new)) for old, new in pairs]


def _rewrite(ws, a, by):
    if by.served:
        rewrite.check_served(ws, _pairs(a))  # only what the caller's own working tree did
    return [snapshot_dict(s) for s in ws.rewrite(_pairs(a))]


def _status(ws, a, by):
    from .names import parse_snapshot_name

    stale = cascade.stale(ws)  # recipe volumes whose inputs moved since their last build
    head = ws.git.head()

    def off_head(base) -> str | None:
        """HEAD's commit when the volume is at another commit's snapshot (`snapver checkout REV`
        or release:NAME move the lake, not Git); a wip of HEAD counts as HEAD's."""
        parsed = parse_snapshot_name(base) if base else None
        return head if head and parsed and parsed[0] != head else None

    return [{"volume": r.volume, "path": str(r.path), "base": r.base, "changed": r.changed, "link": r.link,
             "stale": stale.get(r.volume), "not_at_head": off_head(r.base)}
            for r in ws.status()]


def _log(ws, a, by):
    """One object per version (a commit, or a wip point in time), newest first, with the
    snapshot of each of its volumes inside: {volume: {path, created}}."""
    entries: dict[str, dict] = {}
    for e in ws.log(bool(a.get("all"))):
        s = e.snapshot
        entry = entries.setdefault(s.name, {"name": s.name, "commit": s.commit, "kind": s.kind,
                                            "created": s.created.isoformat(), "subject": e.subject,
                                            "author": e.author, "message": e.message, "volumes": {}})
        entry["volumes"][s.volume] = {"path": str(s.path), "created": s.created.isoformat()}
        entry["message"] = entry["message"] or e.message
    # A model scan the Git hook left to a process of its own that has not stored its verdicts yet.
    for v, name in ws.catalog.scans_pending(ws.project, entries):
        entries[name].setdefault("scan_pending", []).append(v)
    keys = a.get("metrics") or []
    if keys:  # in the same call: the values are read from the same catalog as the entries
        known = registry.values(ws, list(entries))
        for entry in entries.values():
            entry["metrics"] = {m: registry.lookup(known.get(entry["name"], {}), str(m)) for m in keys}
    return list(entries.values())


def _show(ws, a, by):
    commit, snaps, info = ws.show(str(a["rev"]))
    vols = {v: snapshot_dict(s) for v, s in snaps.items()}
    if a.get("space"):
        for (v, s), space in zip(snaps.items(), ws.backend.spaces(list(snaps.values()))):
            vols[v].update(referenced=space.referenced, exclusive=space.exclusive)
    name = next(iter(snaps.values())).name
    v = registry.values(ws, [name]).get(name, {})
    return {"commit": commit, "info": info, "volumes": vols, "provenance": registry.provenance(ws, name),
            "params": v.get("param", {}), "metrics": v.get("metric", {}),
            "scan_pending": sorted(vol for vol, _ in ws.catalog.scans_pending(ws.project, [name]))}


def _diff(ws, a, by):
    changes = ws.diff(str(a["rev"]), a.get("rev2"), a.get("volumes") or None)
    return {v: [{"path": c.path, "change": c.change} for c in cs] for v, cs in changes.items()}


def _restore(ws, a, by):
    where, snap = ws.restore(str(a["rev"]), str(a["path"]), a.get("to"))
    return {"path": str(where), "snapshot": snapshot_dict(snap)}


def _path(ws, a, by):
    vol = ws._volumes([str(a["volume"])])[0]
    rev = a.get("rev", "HEAD")
    if rev is None:
        return str(ws.live_path(vol))
    snap = ws.resolve(str(rev), [vol])[0].get(vol)
    if snap is None:
        raise NotFound(f"{vol} did not exist at {rev}")
    return str(snap.path)


def _init(where, a, by):
    from .hookfiles import install
    from .lake import Workspace

    if str(a.get("lake") or "").startswith("ssh://") or a.get("mount"):
        return remotelake.init(where, a, by.tell)  # a lake on a storage server, seen through a mount

    ws = Workspace.init(where, list(a.get("volumes") or []), a.get("backend"), a.get("lake"),
                        Path(a["image"]) if a.get("image") else None, a.get("size"), a.get("project"))
    hooks = install(ws.git) if a.get("hooks", True) else []
    return {"lake": ws.backend.spec(), "backend": ws.backend.name, "project": ws.project,
            "volumes": [{"volume": v, "path": str(ws.live_path(v)), "base": ws.state.volume(v).base}
                        for v in ws.volumes],
            "at": _at(ws), "hooks": hooks, "joined": ws.joined}


def _hooks_install(git, a, by):
    from .hookfiles import hooks_dir, install

    return {"installed": install(git), "directory": str(hooks_dir(git))}


def _hooks_uninstall(git, a, by):
    from .hookfiles import uninstall

    return {"removed": uninstall(git)}


# ------------------------------------------------------------------ upkeep

def _gc(ws, a, by):
    from .retention import Policy, parse_duration

    dry_run = bool(a.get("dry_run"))
    if by.served and not dry_run:
        raise SnapverError("snapverd runs gc for a user only as --dry-run: it applies retention itself "
                           "(snapver-gc.timer), and removing snapshots is root's or the lake owner's call")
    forget = parse_duration(str(a["forget_unknown"])) if a.get("forget_unknown") else None
    # Gone working trees' live volumes first (their changes kept as wips, which gc then keeps).
    pruned = _prune(ws, {"dry_run": dry_run}, by)
    # The project's own [retention], else the built-in default: the same whoever runs it.
    decisions = ws.gc(ws.config.retention or Policy(), dry_run=dry_run, forget_unknown=forget)
    return {"decisions": [{**snapshot_dict(d.snapshot), "keep": d.keep, "reason": d.reason} for d in decisions],
            "doubts": list(ws.gc_doubts), "pruned": pruned}


def _prune(ws, a, by):
    from . import prune

    return [{"path": p.worktree, "workspace": p.workspace, "volumes": p.volumes, "kept": p.kept}
            for p in prune.prune(ws, dry_run=bool(a.get("dry_run")))]


def _clones(ws, a, by):
    from . import clones

    return [{"path": str(s.clone.worktree), "git_dir": str(s.clone.git_dir) if s.clone.git_dir else None,
             "workspace": s.clone.workspace, "state": s.state, "detail": s.detail,
             "this": s.clone.worktree == ws.git.toplevel and s.clone.workspace == ws.id}
            for s in clones.listing(ws)]


def _clones_forget(ws, a, by):
    from . import clones

    return [{"path": str(c.worktree), "workspace": c.workspace} for c in clones.forget(ws, str(a["path"]))]


def _doctor(ws, a, by):
    return (doctor.repair(ws) if a.get("repair") else doctor.diagnose(ws)).as_dict()


def _reindex(ws, a, by):
    count = ws.reindex()
    return {"snapshots": count, "set_aside": str(ws.catalog.set_aside) if ws.catalog.set_aside else None}


# ------------------------------------------------------------------ the registry

def _lineage(ws, a, by):
    volume = a.get("volume")
    if a.get("upstream"):
        if volume:
            raise SnapverError("give either VOLUME or --upstream VOLUME@REV, not both")
        return {"upstream": registry.upstream(ws, str(a["upstream"]))}
    if a.get("dot"):
        return {"dot": registry.lineage_dot(ws, volume, cascade.marks(ws))}
    stale = cascade.stale(ws)  # recipe volumes whose inputs moved since their last build
    return {"tree": [{"depth": d, "volume": v, "from": e and f"{e.source_volume}@{e.source_snapshot}",
                      "message": e and e.message, "stale": stale.get(v)} for d, v, e in registry.lineage_tree(ws, volume)]}


def _derive(ws, a, by):
    command, inputs = a.get("run"), [str(i) for i in a.get("inputs") or []]
    if inputs and not command:
        raise SnapverError("--input is for a recipe: give its command with --run")
    # Checked before the volume is made: a bad recipe changes nothing.
    recipe = recipes.check(str(a["volume"]), str(command), inputs or [str(a["source"])], "derive --run") \
        if command else None
    e = registry.derive(ws, str(a["source"]), str(a["volume"]), a.get("message"))
    if recipe:
        recipes.record(ws, recipe)
    return {"volume": e.volume, "source_volume": e.source_volume, "source_snapshot": e.source_snapshot,
            "message": e.message, "recipe": recipe and {"run": command, "inputs": [f"{v}@{r}" for v, r in recipe.inputs]}}


def _tag_releases(ws, a, by):
    return releases.releases_from_tags(ws, [str(line) for line in a.get("lines", [])])


# ------------------------------------------------------------------ other lakes
# peer and transfer are imported in the functions: they import dataclasses, which the hook
# path does without (tests/test_hook_imports.py); so are retention, clones, lake, hookfiles.

def _remote_add(git, a, by):
    from . import peer

    peer.add_remote(git, str(a["name"]), str(a["url"]), a.get("command"))
    return {"name": a["name"], "url": a["url"]}


def _remote_list(git, a, by):
    from . import peer

    return [{"name": n, **r} for n, r in sorted(peer.remotes(git).items())]


def _remote_remove(git, a, by):
    from . import peer

    peer.remove_remote(git, str(a["name"]))
    return {"name": a["name"]}


def _transfers(done) -> list[dict]:
    return [{"volume": t.volume, "name": t.name, "base": t.base, "bytes": t.bytes, "seconds": t.seconds,
             "resumed": t.resumed} for t in done]


def _sync(direction):
    def run(ws, a, by):
        from . import transfer

        revs = [str(r) for r in a.get("revs") or []]
        if a.get("if_configured"):  # the hooks: only where snapver.toml's [remote] opts in
            if not ws.config.remote.get("push" if direction == "push" else "fetch"):
                return None
            if direction == "pull":
                head = ws.git.head()
                if not head or ws.backend.find(ws.project, ws.volumes[0], head):
                    return None  # this lake has HEAD's snapshot: nothing to fetch first
        remote = (ws.config.remote.get("name") or a.get("remote")) if a.get("if_configured") else a.get("remote")
        return {"remote": remote, "done": _transfers(transfer.sync(
            ws, direction, remote, revs, by.progress, by.tell, bool(a.get("init")), bool(a.get("strict", True))))}
    return run


def _build(ws, a, by):
    return build.build(ws, str(a["volume"])).as_dict()


def _cascade(ws, a, by):
    target = a.get("target")
    return [n.as_dict() for n in cascade.cascade(ws, str(target) if target else None, int(a.get("jobs", 1)),
                                                 bool(a.get("dry_run")), by.progress)]


def _builds(ws, a, by):
    volume = a.get("volume")
    return build.history(ws, str(volume) if volume else None, int(a.get("limit", 20)))


def _release_set(ws, a, by):
    rel, was = releases.set_release(ws, str(a["name"]), str(a.get("rev") or "HEAD"), a.get("message"),
                                    bool(a.get("force")), [str(c) for c in a.get("conditions") or []])
    return {**release_dict(rel), "from": was, "paths": {v: str(releases.stable_dir(ws, rel.name) / v)
                                                         for v in rel.volumes}}


def _release_history(ws, a, by):
    return [m._asdict() for m in releases.history(ws, str(a["name"]))]


def _commit(git, a, by):
    """`snapver commit`: git commit as the user, in the user's own process (never served: the
    commit and its objects are the user's); an empty one when only the lake changed."""
    import subprocess

    from . import datacommit

    head = git.head()
    changed = datacommit.volumes_changed(call("status", None, git.toplevel, tell=by.tell), head)
    argv = datacommit.argv(git.toplevel, str(a["message"]), bool(a.get("all")), changed)
    done = subprocess.run(argv, cwd=git.toplevel)  # Git and its hooks speak to the terminal themselves
    return {"exit_code": done.returncode, "data_only": "--allow-empty" in argv, "changed": changed,
            "head": git.head()}


def _clone(where, a, by):
    from . import transfer
    from .hookfiles import install

    ws = transfer.clone(str(a["git_url"]), where, a.get("from"), a.get("lake"),
                        Path(a["image"]) if a.get("image") else None, a.get("size"), by.progress, a.get("command"),
                        by.tell)
    install(ws.git)
    return {"directory": str(where), "lake": ws.backend.spec(), "at": _at(ws)}


def _serve(where, a, by):
    from . import peer

    args = [str(x) for x in a.get("args", [])]
    if args[:1] == ["--restrict"]:  # a compute node's key: authorized_keys' forced command
        from . import lakeserver

        return lakeserver.restricted(args[1:], perform)
    if "--workspace" in args[:3]:  # a compute node's operation on its workspace here
        from . import lakeserver

        return lakeserver.main(args, perform)
    peer.serve(args)


OPS: dict[str, Op] = {
    # What a user's hooks and commands ask of a lake they may not write: snapverd runs these
    # for them (served), each within their own working tree only.
    "snapshot": Op(_snapshot, served=True),
    "checkout": Op(_checkout, served=True),
    "follow": Op(_follow, served=True),
    "rewrite": Op(_rewrite, served=True),
    "status": Op(_status, served=True),
    "log": Op(_log, served=True),
    "show": Op(_show, served=True),
    "path": Op(_path, served=True),
    "gc": Op(_gc, served=True),  # a user: --dry-run only (see _gc)
    "doctor": Op(_doctor, served=True, announce=False),  # its report says what is interrupted, once
    "find": Op(lambda ws, a, by: registry.find(ws, [str(q) for q in a.get("queries", [])], bool(a.get("all")),
                                               a.get("sort") and str(a["sort"]), a.get("limit")), served=True),
    "release-list": Op(lambda ws, a, by: [release_dict(r) for r in releases.list_releases(ws)], served=True),
    "lineage": Op(_lineage, served=True),
    "release-history": Op(_release_history, served=True),
    # Training code's metrics (the Python API), and their history: catalog rows of the caller's
    # own line of work, as "snapshot" records with a wip.
    "log-metrics": Op(_log_metrics, served=True),
    "metrics-history": Op(_metrics_history, served=True),
    "builds": Op(_builds, served=True),
    # Not served: each runs as its caller. diff, compare, scan and du walk every file of a
    # snapshot (O(files)), which is the caller's to read and would hold one of snapverd's
    # threads; restore writes where the caller says, which root must not do for a user.
    "diff": Op(_diff),
    "compare": Op(lambda ws, a, by: registry.compare(ws, [str(r) for r in a.get("revs") or []])),
    "scan": Op(lambda ws, a, by: registry.scan_report(ws, str(a.get("rev") or "HEAD"))),
    "scan-pending": Op(lambda ws, a, by: registry.scan_pending(ws)),  # the hook's scan process, `scan --pending`
    "du": Op(lambda ws, a, by: registry.du(ws)),
    "space-pending": Op(lambda ws, a, by: spacewarm.measure_pending(ws)),  # the process a snapshot starts
    "restore": Op(_restore),
    # Not served: they change what only the lake's owner decides (which snapshots gc may never
    # take, a volume added to snapver.toml, the catalog rebuilt, which clones gc waits for);
    # clones also runs git in every known clone, which root must not do for a user.
    "release-create": Op(lambda ws, a, by: release_dict(releases.create_release(
        ws, str(a["name"]), str(a.get("rev") or "HEAD"), a.get("message"), bool(a.get("force"))))),
    "release-remove": Op(lambda ws, a, by: release_dict(releases.remove_release(ws, str(a["name"])))),
    "release-set": Op(_release_set),
    "tag-releases": Op(_tag_releases),
    "derive": Op(_derive),
    "reindex": Op(_reindex),
    "registry-refresh": Op(lambda ws, a, by: metrics.refresh(ws, bool(a.get("all")))),
    "clones": Op(_clones),
    "clones-forget": Op(_clones_forget),
    "prune": Op(_prune),
    # Not served: they run the user's own command (a recipe), which snapverd, as root, must not.
    "build": Op(_build),
    "cascade": Op(_cascade),
    # Not served: a stream is sent and received as root, over the caller's ssh and remotes.
    "push": Op(_sync("push")),
    "pull": Op(_sync("pull")),
    "remote-add": Op(_remote_add, on=GIT),
    "remote-list": Op(_remote_list, on=GIT),
    "remote-remove": Op(_remote_remove, on=GIT),
    "hooks-install": Op(_hooks_install, on=GIT),
    "commit": Op(_commit, on=GIT),
    "hooks-uninstall": Op(_hooks_uninstall, on=GIT),
    # Not served, and on no workspace yet: they make one (a lake, or a clone and its lake).
    "init": Op(_init, on=NOTHING),
    "clone": Op(_clone, on=NOTHING),
    "serve": Op(_serve, on=NOTHING),  # the far end of push and pull, speaking on stdin and stdout
}
# Answered by snapverd itself, never here: what it watches (Daemon.handle).
DAEMON_STATUS = "daemon-status"


def perform(ws, op: str, args: dict, served: bool = False, tell=None, progress=None):
    """Run op on an open workspace. served: for a caller over the daemon's socket, who may
    ask only what snapverd serves, and act only on what its own working tree did."""
    entry = OPS.get(op) if isinstance(op, str) else None
    if entry is None:
        raise SnapverError(f"unknown operation {op!r}")
    if served and not entry.served:
        raise SnapverError(f"snapverd does not run {op} for a user: run it as the lake's owner or as root")
    if entry.on != WORKSPACE:
        raise SnapverError(f"{op} acts on no workspace")  # never served: only call() runs these
    return entry.run(ws, args, Caller(served, tell, progress))


def call(op: str, args: dict | None = None, path: Path | str = ".", tell=None, progress=None):
    """Run op on the working tree at path: through the daemon when the caller is not root,
    snapverd serves op and is listening; here otherwise. tell: told of warnings (also of an
    interrupted operation found on the way, unless the op's result says it)."""
    args = args or {}
    if op == DAEMON_STATUS:
        return client.request({"op": op}, timeout=10)
    entry = OPS.get(op)
    if entry is None:
        raise SnapverError(f"unknown operation {op!r}")
    # The one seam between a lake here and a lake on a storage server (remotelake.py): a
    # working tree attached to one sends its workspace's operations there, one ssh round
    # trip each; what acts on Git alone, or on no workspace yet, runs here as always.
    remote = remotelake.attached(path) if entry.on == WORKSPACE else None
    if remote is not None:
        return remote.call(op, args, tell)
    if entry.served and os.geteuid() != 0 and os.environ.get("SNAPVER_DIRECT") != "1" and endpoint.SOCKET.exists():
        toplevel = GitRepo.find(path).toplevel
        try:
            return client.request({"op": op, "workspace": str(toplevel), **args})
        except client.Unavailable:
            pass  # no daemon after all: try it ourselves, and fail with our own words
    before = journal.announce
    journal.announce = tell if entry.announce else None  # for this call only (see finally)
    try:
        if entry.on == NOTHING:
            return entry.run(Path(path), args, Caller(False, tell, progress))
        if entry.on == GIT:
            return entry.run(GitRepo.find(path), args, Caller(False, tell, progress))
        # Here, not at the top: an unprivileged user's hook goes through snapverd above and
        # never opens the lake, so it does not pay for importing the core (sqlite3, backends).
        from .lake import Workspace

        try:
            return perform(Workspace.open(path), op, args, tell=tell, progress=progress)
        except PermissionError as e:
            if not entry.served or os.geteuid() == 0:
                raise
            # What a user who is not root gets when no snapverd answered: the cause, not a traceback.
            raise SnapverError(f"snapverd is not running (nothing listens on {endpoint.SOCKET}) and this user "
                               f"may not change the lake itself ({e.strerror}: {e.filename}): start it "
                               "(systemctl start snapverd.socket) or run as the lake's owner") from None
    finally:
        journal.announce = before
