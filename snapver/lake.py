"""The core: a workspace (one Git working tree and its live volumes) and what it can do.

Nothing here knows about click or printing: every operation returns data,
and every user mistake is a SnapverError with one line to show. Order of
work in every operation that changes anything: check all input, take the
workspace lock, keep unsnapshotted work as a wip snapshot, then act.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

from . import (checkout, clones, derive, faults, journal, links, lock, names, provision, received, restore, rewrite,
               seams, snapset, vanished)
from .backends import open_backend
from .backends.base import Backend, Change, Snapshot
from .catalog import Catalog, SchemaTooNew, explain
from .config import CONFIG_NAME, Config, LocalState, VolumeState, write_as_owner
from .errors import FilesystemFull, InUse, NotFound, SnapverError
from .checkout import CheckoutResult
from .gitrepo import GitRepo
from .names import short
from .provision import parse_size as parse_size  # where the CLI and bench/ have always found it

DEFAULT_VOLUMES = ("data", "models", "logs")


class VolumeStatus(NamedTuple):
    volume: str
    path: Path
    base: str | None  # the snapshot it last matched
    changed: bool
    link: str | None = None  # what is wrong with <worktree>/<volume> -> the volume, if anything


class LogEntry(NamedTuple):
    snapshot: Snapshot
    subject: str | None
    author: str | None
    message: str | None


def _project_id(folder: str) -> str:
    """A new project's ID from the repository folder's name: letters without their accents
    (données -> donnees), other characters as '-', and a random suffix; 'lake' when nothing is left."""
    import unicodedata

    ascii_name = unicodedata.normalize("NFKD", folder).encode("ascii", "ignore").decode()
    base = "".join(c if c.isalnum() or c in "-_" else "-" for c in ascii_name)[:40]
    return names.check_project(f"{base.strip('-_') or 'lake'}-{os.urandom(4).hex()}")


class Workspace:
    joined: str | None = None  # init: which project a clone without snapver.toml joined (join.py)

    def __init__(self, git: GitRepo, config: Config, state: LocalState, backend: Backend):
        self.git = git
        self.config = config
        self.state = state
        self.backend = backend
        self._catalog: Catalog | None = None
        self.gc_doubts: list[str] = []  # why the last gc kept unreachable commit snapshots
        vanished.remember(backend.root)

    @property
    def project(self) -> str:
        return self.config.project

    @property
    def id(self) -> str:
        return self.state.workspace

    @property
    def volumes(self) -> list[str]:
        return self.config.volumes

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = Catalog(self.backend.catalog_path)
        return self._catalog

    def live_path(self, volume: str) -> Path:
        return self.backend.volume_path(self.project, self.id, volume)

    @contextlib.contextmanager
    def lock(self, finish: bool = True):
        """Exclusive use of this workspace; the state is read again once the lock is held,
        because the hooks, the CLI and the daemon may each have changed it meanwhile.
        A snapshot set a kill cut short is finished or undone first (finish=False: doctor's
        diagnosis, which changes nothing)."""
        with lock.held(LocalState.dir(self.git.git_dir) / "lock"):
            self.state = LocalState.load(self.git.git_dir)
            if finish:
                self._finish_cut_snapshots()
            yield

    def _finish_cut_snapshots(self) -> None:
        try:
            snapset.finish_interrupted(self)
        except (SnapverError, sqlite3.Error) as e:
            # Not now (a full filesystem, say): the command goes on; doctor reports it.
            if journal.announce:
                err = e if isinstance(e, SnapverError) else explain(e)
                journal.announce(f"an interrupted snapshot could not be finished ({err}): "
                                 "run `snapver doctor --repair`")

    @property
    def _at_file(self) -> Path:
        return LocalState.dir(self.git.git_dir) / "lake-at"

    def lake_at(self) -> str | None:
        """The commit the lake last followed (the hooks compare it with HEAD in shell)."""
        try:
            return self._at_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    def _record_at(self, sha: str | None) -> None:
        if sha:
            write_as_owner(self._at_file, sha + "\n")

    # ---------------------------------------------------------------- open / init
    @classmethod
    def open(cls, path: Path | str = ".") -> Workspace:
        git = GitRepo.find(path)
        config = Config.load(git.toplevel)
        state = LocalState.load(git.git_dir)
        provision.ensure_mounted(state)
        ws = cls(git, config, state, open_backend(state.backend, state.lake))
        journal.check(ws)  # one indexed lookup, and only where someone reads the warning
        clones.note(ws)  # one indexed lookup; a write only when this clone is new or moved
        return ws

    @classmethod
    def init(
        cls,
        path: Path | str = ".",
        volumes: list[str] | None = None,
        backend: str | None = None,
        lake: str | None = None,
        image: Path | None = None,
        size: int | None = None,
        project: str | None = None,
    ) -> Workspace:
        """Give a working tree its lake: a new project, or a clone joining its project's history.
        project: the new project's ID, instead of one made from the folder's name."""
        git = GitRepo.find(path)
        if LocalState.exists(git.git_dir):
            state = LocalState.load(git.git_dir)
            raise SnapverError(
                f"snapver is already set up in {git.toplevel} (lake {state.lake}); nothing to do"
            )
        joining = (git.toplevel / CONFIG_NAME).exists()
        if joining:
            config = Config.load(git.toplevel)
            if volumes and list(volumes) != config.volumes:
                raise SnapverError(
                    f"{CONFIG_NAME} already names the volumes {', '.join(config.volumes)}: "
                    "edit it instead of passing --volume"
                )
            if backend and backend != config.backend:
                raise SnapverError(f"{CONFIG_NAME} says backend {config.backend!r}, not {backend!r}")
            if project and project != config.project:
                raise SnapverError(f"{CONFIG_NAME} names the project {config.project}: pass no --project")
        else:
            vols = list(dict.fromkeys(names.check_volume(v) for v in (volumes or DEFAULT_VOLUMES)))
            config = Config(project=names.check_project(project) if project else _project_id(git.toplevel.name),
                            volumes=vols, backend=backend or "btrfs")
        for v in config.volumes:
            if os.path.lexists(git.toplevel / v):
                raise SnapverError(
                    f"{git.toplevel / v} already exists: move it away first "
                    "(snapver puts the volume there), or choose another --volume name"
                )
        if size is not None and image is None:
            raise SnapverError("--size goes with --image")

        # Input is checked; from here on things change on disk.
        spec, image_path = provision.provision_lake(git, config, lake, image, size)
        backend_ = open_backend(config.backend, spec)
        from . import join  # init only: the hooks never need it

        if project and not joining and backend_.snapshots(project, None, readable=False):
            raise SnapverError(f"the lake already holds a project {project}: choose another --project, "
                               "or leave it out to join the one this repository's history is in")
        found = None if joining or project else join.adopt(git, backend_, config.backend, volumes)
        if found is not None:  # the lake holds this repository's project: join it
            config = found.config
        workspace_id = names.check_workspace(f"{config.project[:40]}-{os.urandom(4).hex()}")
        state = LocalState(
            path=LocalState.dir(git.git_dir) / LocalState.FILE,
            backend=config.backend,
            lake=backend_.spec(),
            workspace=workspace_id,
            image=str(image_path) if image_path else None,
        )
        if found is not None and found.text is not None:
            write_as_owner(git.toplevel / CONFIG_NAME, found.text)
        elif not joining:
            config.lake = state.lake if not image_path else None
            config.image = state.image
            config.save(git.toplevel)
        ws = cls(git, config, state, backend_)
        ws.joined = found.said if found is not None else None
        ws._create_volumes()
        state.save()
        ws._record_at(git.head())
        git.keep_out(config.volumes)
        clones.note(ws)
        return ws

    def _create_volumes(self) -> None:
        """Fresh volumes: empty for a new project, at HEAD's snapshot for a joining clone."""
        head = self.git.head()
        start: dict[str, Snapshot] = {}
        if head:
            try:
                start = self.resolve(head, self.volumes, nearest=True)[0]
            except NotFound:
                start = {}  # nothing snapshotted yet: start empty
        owner = self.git.toplevel.stat()
        for v in self.volumes:
            if v in start:
                mark = self.backend.clone_into_place(start[v], self.id)
                self.state.volumes[v] = _vs(start[v].name, mark)
            else:
                path = self.backend.create_volume(self.project, self.id, v)
                if os.geteuid() == 0 and owner.st_uid != 0:
                    os.chown(path, owner.st_uid, owner.st_gid)  # `sudo snapver init` for a user
                # After the chown, which is itself a change of the volume.
                self.state.volume(v).mark = self.backend.mark(self.project, self.id, v)
            self.link(v)

    def link(self, volume: str) -> None:
        """<worktree>/<volume> -> the live volume, kept out of Git, known to the catalog."""
        link = self.git.toplevel / volume
        if not os.path.lexists(link):
            link.symlink_to(self.live_path(volume), target_is_directory=True)
            self.git.keep_out([volume])
            self._note_linked(volume)
        self.catalog.record_volume(self.project, self.id, volume, self.live_path(volume), self.git.toplevel)

    def _note_linked(self, volume: str) -> None:
        """.git/snapver/links names the volumes that have a link: the post-checkout shim
        checks each is still a symlink (a `test -L`, no process) and calls Python if not."""
        path = LocalState.dir(self.git.git_dir) / "links"
        try:
            known = path.read_text().split()
        except FileNotFoundError:
            known = []
        if volume not in known:
            path.parent.mkdir(parents=True, exist_ok=True)
            write_as_owner(path, "".join(f"{v}\n" for v in [*known, volume]))

    def _mend_links(self, volumes: list[str], result: CheckoutResult, hook: bool) -> None:
        """Put back broken volume links before a checkout looks at the volumes (lock held): files
        written to a plain folder in a link's place go into the volume, and so into the safety
        wip. The hooks only put back missing links (an lstat each) and say what else is wrong."""
        result.links, left = links.mend(self, volumes, only_missing=hook)
        result.broken = {p.volume: p.line for p in left}

    # ---------------------------------------------------------------- snapshots
    def snapshot(self, wip: bool = False, message: str | None = None, commit: str | None = None) -> list[Snapshot]:
        """Snapshot every volume as HEAD's commit snapshot (or a wip one).

        commit: the commit a post-commit hook fired for. By the time the hook holds the lock,
        HEAD may have moved on (two commits finishing together in one working tree, or a
        checkout right after): see _fired_for."""
        if commit is not None and not names.SHA.fullmatch(commit):
            raise SnapverError(f"{commit!r} is not a full commit ID")
        info = self.git.commit(commit) if commit else self.git.head_commit()
        head = info.sha if info else None
        # steady: what this process reads of the lake it reuses until it changes the lake
        # itself (backends/zfsnode.py): with the lock held only it changes this workspace's
        # volumes, and the finds below and the backend's own check share one read.
        with self.lock(), self.backend.steady():
            if wip:
                return self._take(self.volumes, names.wip_snapshot_name(head or names.NO_COMMIT), message)
            if head is None:
                raise SnapverError("HEAD has no commit yet: commit first, or take a --wip snapshot")
            if commit is not None:
                snapset.check_parent(self, info)
                if not snapset.fired_for(self, commit):
                    return []
            existing = {v: self.backend.find(self.project, v, head) for v in self.volumes}
            todo = [v for v, s in existing.items() if s is None]
            changed = [v for v, s in existing.items() if s is not None and self._changed(v)]
            if changed:
                raise SnapverError(
                    f"commit {short(head)} already has a snapshot and {', '.join(changed)} changed "
                    "since: commit first, or keep it with `snapver snapshot --wip`"
                )
            taken = self._take(todo, head, message, info) if todo else []
            self._record_at(head)
            return taken + [s for s in existing.values() if s is not None]

    def _take(self, volumes: list[str], name: str, message: str | None, info=None,
              kept: bool = False) -> list[Snapshot]:
        # All or none, even under SIGKILL: Btrfs (and ZFS without one transaction group for the
        # set) snapshots volume by volume, so the intent is journaled first (one small INSERT),
        # and the row is deleted in the same transaction as the snapshots' catalog rows.
        # A row left behind is finished or undone by finish_snapshot.
        op = self._journal("snapshot", {"name": name, "volumes": volumes, "message": message, "kept": kept})
        try:
            snaps = self.backend.snapshot(self.project, self.id, volumes, name)
        except BaseException:
            if op is not None:
                with contextlib.suppress(sqlite3.Error):  # the backend undid what it had taken
                    journal.close(self, op)
            raise
        faults.point("after-snapshot-before-state")
        return self._record(snaps, message, info, op, kept)

    def _journal(self, kind: str, intent: dict):
        """A journal row for a short operation, or None when the catalog cannot take one: a
        damaged or read-only catalog does not stop a snapshot (the filesystem is the truth and
        reindex brings the rows back), a full filesystem does (nothing could be recorded), and
        so does a newer snapver's catalog (this one must not change that lake at all)."""
        try:
            return journal.begin(self, kind, intent)
        except (sqlite3.Error, SnapverError) as e:
            err = e if isinstance(e, SnapverError) else explain(e, self.backend.catalog_path)
            if isinstance(err, (FilesystemFull, SchemaTooNew)):
                raise err from None
            return None

    def _record(self, snaps: list[Snapshot], message: str | None, info=None, op=None,
                kept: bool = False) -> list[Snapshot]:
        commit = snaps[0].commit if snaps else names.NO_COMMIT
        try:
            with self.catalog.batch():
                self.catalog.record_snapshots(snaps, self.id, message, kept)
                if commit != names.NO_COMMIT:
                    info = info if info and info.sha == commit else self.git.commit(commit)
                    self.catalog.record_commit(self.project, info, self.git.branch())
                if op is not None:
                    journal.close(self, op)
        except (sqlite3.Error, SnapverError) as e:
            err = e if isinstance(e, SnapverError) else explain(e, self.backend.catalog_path)
            if isinstance(err, FilesystemFull):
                # A full filesystem lets Btrfs take a snapshot but not SQLite write its row: the
                # snapshot is undone, so that a failed snapshot leaves nothing behind.
                for s in snaps:
                    self.backend.destroy(s)
                if op is not None:
                    with contextlib.suppress(sqlite3.Error):
                        journal.close(self, op)
            else:
                # A damaged or read-only catalog: the snapshot stands (the filesystem is the
                # truth, and reindex brings its row back), and the error says what to do.
                self._record_taken(snaps)
            raise err from None
        self._record_taken(snaps)
        for listener in seams.snapshot_taken:  # the registry: metrics files, provenance, model scan
            listener(self, snaps)
        return snaps

    def _record_taken(self, snaps: list[Snapshot]) -> None:
        for s in snaps:
            self.state.volumes[s.volume] = _vs(s.name, s.mark)
        self.state.save()

    def _changed(self, volume: str) -> bool:
        if not self.backend.volume_exists(self.project, self.id, volume):
            return False  # a volume this clone has not got yet (derived elsewhere): nothing to keep
        state = self.state.volume(volume)
        if self.backend.changed_since(self.project, self.id, volume, state.mark):
            return True
        # Unchanged since its snapshot, but is that snapshot still there (gc may have
        # thinned a wip away)? If not, the live volume is the only copy: changed.
        return state.base is not None and self.backend.find(self.project, volume, state.base) is None

    def _keep_changes(self, volumes: list[str], why: str) -> list[Snapshot]:
        """The safety net before anything replaces live data: a wip snapshot of what changed."""
        with self.backend.steady():  # the lock is held: one read of the lake for every volume
            if not any(self._changed(v) for v in volumes):
                return []
            # All volumes, not just the changed ones, so the wip is one whole point in time.
            # It belongs to the commit the lake was at: in a hook, HEAD has already moved on.
            name = names.wip_snapshot_name(self.lake_at() or self.git.head() or names.NO_COMMIT)
            here = [v for v in self.volumes if self.backend.volume_exists(self.project, self.id, v)]
            return self._take(here, name, why, kept=True)

    def capture(self, volumes: list[str] | None = None, message: str | None = None) -> list[Snapshot]:
        """A wip snapshot of those volumes that changed, and of nothing else (the daemon)."""
        with self.lock(), self.backend.steady():
            changed = [v for v in self._volumes(volumes) if self._changed(v)]
            if not changed:
                return []
            name = names.wip_snapshot_name(self.lake_at() or self.git.head() or names.NO_COMMIT)
            return self._take(changed, name, message)

    def gc(self, policy, dry_run: bool = False, now=None, forget_unknown=None) -> list:
        """Apply the retention policy to this project's snapshots; return every decision.

        Commit snapshots go only when every known clone was read (clones.reachability):
        a doubt keeps them all, and each decision's reason says which clone.
        forget_unknown (a timedelta): let snapshots of unknown commits older than that go."""
        from . import retention  # here: it is made of dataclasses, which the hook path does without

        now = now or datetime.now(timezone.utc)
        with self.lock():
            reach = clones.reachability(self)
            self.gc_doubts = reach.doubts
            snaps = self.backend.snapshots(self.project)
            present = [c.worktree for c in clones.known(self) if c.worktree.is_dir()]
            unknown = received.unknown(present, {
                s.commit for s in snaps if s.kind == "commit" and s.commit not in reach.commits})
            decisions = retention.plan(
                snaps, reach.commits,
                {**received.pinned(self.catalog, self.project), **self.protected()}, policy, now,
                rows=self.catalog.snapshot_rows(self.project), doubt="; ".join(reach.doubts) or None,
                unknown=unknown, forget_unknown=forget_unknown,
            )
            doomed = [d.snapshot for d in decisions if not d.keep]
            if not dry_run:
                self.backend.reap(self.project, self.id)  # what checkouts left for gc: first, see Backend.reap
            if not dry_run and doomed:
                in_use = self._destroy(doomed)
                decisions = [retention.Decision(d.snapshot, True, f"in use: {in_use[d.snapshot]}")
                             if d.snapshot in in_use else d for d in decisions]
                self.snapshot_paths_may_have_moved()
        return decisions

    def snapshot_paths_may_have_moved(self) -> None:
        """After datasets were swapped, promoted or destroyed: where snapshot paths move
        (OpenZFS), the features' links into snapshots are pointed again (seams.paths_moved)."""
        if self.backend.snapshot_paths_move:
            for listener in seams.paths_moved:
                listener(self)

    def protected(self) -> dict[tuple[str, str], str]:
        """(volume, snapshot) that must stay, with why: what the features plugged in protect
        (releases), and the sources of derived volumes. Refused when no feature is plugged
        in: a gc that cannot see the releases must not run."""
        if not seams.gc_protectors:
            raise SnapverError("no feature protects snapshots in this process (snapver.registry is not "
                               "loaded): refused, so that no release is destroyed; use snapver's CLI or ops")
        keep: dict[tuple[str, str], str] = {}
        for protector in seams.gc_protectors:
            keep.update(protector(self))
        for key, why in derive.sources(self).items():
            keep.setdefault(key, why)
        return keep

    def _destroy(self, doomed: list[Snapshot]) -> dict[Snapshot, str]:
        """Destroy doomed; return those the filesystem refused as still in use, with why."""
        in_use: dict[Snapshot, str] = {}
        intent = {"destroy": [[s.volume, s.name] for s in doomed]}
        started = False
        try:
            with journal.operation(self, "gc", intent) as op:
                started = True
                for s in doomed:
                    try:
                        self.backend.destroy(s)
                    except InUse as e:
                        # A rewritten commit's ZFS copy, or a live volume, is a clone of it:
                        # it stays, costing no space of its own, and the decision says why.
                        in_use[s] = str(e)
                        continue
                    op.step("destroyed", volume=s.volume, name=s.name)
                    self.catalog.forget_snapshot(self.project, s.volume, s.name)
                    faults.point("gc-forgotten")
        except sqlite3.Error as e:
            err = explain(e, self.backend.catalog_path)
            if started or not isinstance(err, FilesystemFull):
                raise err from None
            # A full filesystem cannot take the journal's row, and gc is what frees space:
            # it destroys first, unjournaled (a kill leaves only catalog rows of destroyed
            # snapshots, which reindex drops), and forgets their rows once there is room.
            for s in doomed:
                try:
                    self.backend.destroy(s)
                except InUse as e:
                    in_use[s] = str(e)
            try:
                with self.catalog.batch():
                    for s in doomed:
                        self.catalog.forget_snapshot(self.project, s.volume, s.name)
            except sqlite3.Error:
                if journal.announce:
                    journal.announce("the catalog could not be updated yet (the filesystem was full): "
                                     "run `snapver reindex` once the space is freed")
        return in_use

    def status(self) -> list[VolumeStatus]:
        broken = {p.volume: p.line for p in links.check(self)}
        with self.backend.steady():  # it only reads (probes leave the lake as it was)
            return [
                VolumeStatus(v, self.live_path(v), self.state.volume(v).base, self._changed(v), broken.get(v))
                for v in self.volumes
            ]

    def log(self, include_wip: bool = False) -> list[LogEntry]:
        """Snapshots newest first, from the filesystem, with what the catalog knows of them."""
        snaps = [
            s for s in self.backend.snapshots(self.project)
            if s.volume in self.volumes and (include_wip or s.kind == "commit")
        ]
        rows = self.catalog.snapshot_rows(self.project)
        commits = self.catalog.commits(self.project)
        snaps.sort(key=lambda s: (s.age_key, s.volume), reverse=True)
        entries = []
        for s in snaps:
            c = commits.get(s.commit, {})
            row = rows.get((s.volume, s.name), {})
            entries.append(LogEntry(s, c.get("subject"), c.get("author"), row.get("message")))
        return entries

    # ---------------------------------------------------------------- resolving revisions
    def _whole_wip_name(self, rev: str, prefix: str, stamp: str, volumes: list[str]) -> str:
        """The one wip snapshot whose commit ID starts with prefix, taken at stamp (a listing of
        the volume's snapshots: no walk)."""
        whole = {s.name for v in volumes for s in self.backend.snapshots(self.project, v)
                 if s.name.startswith(prefix) and s.name.endswith("." + stamp)}
        if len(whole) > 1:
            raise SnapverError(f"{rev} is ambiguous: {', '.join(sorted(whole))}; give the whole name")
        if not whole:
            raise NotFound(f"there is no wip snapshot {rev}")
        return whole.pop()

    def resolve(self, rev: str, volumes: list[str], nearest: bool = False):
        """The snapshot of each volume at rev: (by volume, commit, warnings).

        rev is release:NAME, a snapshot name or anything `git rev-parse` takes. A commit
        with no snapshot of its own is an error naming its nearest
        snapshotted first-parent ancestor, or with nearest=True (the hooks)
        that ancestor is used with a warning.
        """
        # It only reads: one look at the lake answers for every volume (on ZFS one
        # `zfs get -r` of the project, not one per volume), and all from the same moment.
        with self.backend.steady():
            return self._resolve(rev, volumes, nearest)

    def _resolve(self, rev: str, volumes: list[str], nearest: bool):
        for prefix, resolve in seams.rev_prefixes.items():  # release:NAME (the registry)
            if rev.startswith(prefix):
                found, commit = resolve(self, rev[len(prefix):], volumes)
                return found, commit, []
        shortened = names.parse_short_wip(rev)
        if shortened:  # as `snapver log` prints a wip: the short commit ID and its time
            rev = self._whole_wip_name(rev, *shortened, volumes)
        parsed = names.parse_snapshot_name(rev)
        if parsed and parsed[1] == "wip":
            found = {v: self.backend.find(self.project, v, rev) for v in volumes}
            missing = [v for v, s in found.items() if s is None]
            if missing:
                raise NotFound(f"there is no wip snapshot {rev} of {', '.join(missing)}")
            return found, parsed[0], []
        if parsed:  # a full commit ID: its snapshot stands even if Git has forgotten the commit
            found = {v: self.backend.find(self.project, v, rev) for v in volumes}
            if all(found.values()):
                return found, rev, []
        sha = self.git.resolve(rev)
        found = {v: self.backend.find(self.project, v, sha) for v in volumes}
        if all(found.values()):
            return found, sha, []
        # Each volume without a snapshot here takes its nearest snapshotted first-parent
        # ancestor; a volume with none at all did not exist yet (derived later) and is left out.
        missing = [v for v in volumes if found[v] is None]
        have = {v: {s.name for s in self.backend.snapshots(self.project, v)} for v in missing}
        nearest_of: dict[str, str] = {}
        for a in self.git.first_parent_ancestors(sha):
            nearest_of.update({v: a for v in missing if v not in nearest_of and a in have[v]})
            if len(nearest_of) == len(missing):
                break
        absent = [v for v in missing if v not in nearest_of]
        what = f"commit {short(sha)} ({rev})" if not sha.startswith(rev) else f"commit {short(sha)}"
        if len(absent) == len(volumes):
            raise NotFound(f"{what} has no snapshot, and neither has any of its first-parent ancestors")
        warnings = [f"{', '.join(absent)} did not exist at {what}: left as they are"] if absent else []
        commit = sha
        if nearest_of:
            ancestor = next(a for a in self.git.first_parent_ancestors(sha) if a in nearest_of.values())
            if not nearest:
                raise NotFound(
                    f"{what} has no snapshot; its nearest snapshotted ancestor is {short(ancestor)}: "
                    f"`snapver checkout {short(ancestor)}`"
                )
            found.update({v: self.backend.find(self.project, v, a) for v, a in nearest_of.items()})
            warnings.append(
                f"commit {short(sha)} has no snapshot; using its nearest snapshotted ancestor {short(ancestor)}"
            )
            commit = ancestor if not any(found[v] and found[v].name == sha for v in volumes) else sha
        return {v: s for v, s in found.items() if v not in absent}, commit, warnings

    def _volumes(self, only: list[str] | None) -> list[str]:
        for v in only or []:
            if v not in self.volumes:
                raise NotFound(f"no volume {v!r} here: the volumes are {', '.join(self.volumes)}")
        return list(only) if only else list(self.volumes)

    # ---------------------------------------------------------------- checkout (checkout.py)
    def checkout(self, rev: str, volumes: list[str] | None = None, nearest: bool = False,
                 hook: bool = False) -> CheckoutResult:
        return checkout.checkout(self, rev, volumes, nearest, hook)

    def finish_checkout(self, op) -> str:
        return checkout.finish_checkout(self, op)

    def follow_head(self) -> CheckoutResult | None:
        return checkout.follow_head(self)

    def rewrite(self, pairs: list[tuple[str, str]]) -> list[Snapshot]:
        """`commit --amend`, `rebase`, `snapver remap` replaced commits: each new commit gets
        snapshots of its own, made from the old ones, which stay (see rewrite.py)."""
        return rewrite.apply(self, pairs)

    # ---------------------------------------------------------------- looking at snapshots
    def show(self, rev: str) -> tuple[str, dict[str, Snapshot], dict | None]:
        target, commit, _ = self.resolve(rev, self.volumes)
        info = self.catalog.commit(self.project, commit)
        if info is None and commit != names.NO_COMMIT:
            c = self.git.commit(commit)
            info = {"sha": c.sha, "author": c.author, "email": c.email, "time": c.time,
                    "subject": c.subject, "parents": " ".join(c.parents), "branch": None}
        return commit, target, info

    def diff(self, rev: str, rev2: str | None = None, volumes: list[str] | None = None) -> dict[str, list[Change]]:
        """Files added, changed, deleted from rev to rev2 (or to the live volumes)."""
        vols = self._volumes(volumes)
        old = self.resolve(rev, vols)[0]
        new = self.resolve(rev2, vols)[0] if rev2 else None
        return {
            v: self.backend.diff(old[v].path, new[v].path if new else self.live_path(v))
            for v in vols if v in old and (new is None or v in new)
        }

    # ---------------------------------------------------------------- restore (restore.py)
    def restore(self, rev: str, path: str, to: str | None = None, cwd: Path | None = None) -> tuple[Path, Snapshot]:
        return restore.restore(self, rev, path, to, cwd)

    # ---------------------------------------------------------------- reindex
    def reindex(self) -> int:
        """Rebuild the catalog of this lake from the filesystem, and commit rows from Git."""
        snaps = self.backend.snapshots()
        mine = {s.commit for s in snaps if s.project == self.project} - {names.NO_COMMIT}
        commits = [(self.project, info) for info in self.git.commits(sorted(mine)).values()]
        self._catalog = Catalog.rebuild(self.backend.catalog_path)  # a damaged one is set aside
        self.catalog.replace_snapshots(snaps, commits)
        return len(snaps)


def _vs(base: str, mark: str) -> VolumeState:
    return VolumeState(base=base, mark=mark)
