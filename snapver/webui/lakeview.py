"""`snapver ui --lake PATH`: every project on a lake, without a working tree.

A ProjectView stands where the pages take a Workspace: the same few attributes the pages
read (project, volumes, backend, catalog, log, resolve, show), from the lake's catalog and
snapshots alone. There is no Git repository and no workspace here, so:

- a version is named by its snapshot name (or release:NAME), not by a Git revision;
- there are no live volumes (id is None): Space shows the snapshots only;
- a project's volumes are those it has snapshots of (catalog), or lineage says it has.

The projects come from the catalog (one query); from the filesystem, the source of truth,
only when the catalog knows none (lost or rebuilt empty).
"""

from __future__ import annotations

from ..catalog import Catalog
from ..errors import NotFound, SnapverError
from ..lake import DEFAULT_VOLUMES, LogEntry
from .. import names, seams


def _volume_order(found) -> list[str]:
    """data, models, logs first (as init makes them), then the others by name."""
    first = [v for v in DEFAULT_VOLUMES if v in found]
    return first + sorted(v for v in found if v not in DEFAULT_VOLUMES)


def projects(backend, catalog: Catalog) -> list[dict]:
    """Each project on the lake: {name, versions, volumes, newest}, by name."""
    rows = catalog.conn.execute(
        "SELECT project, COUNT(DISTINCT name), GROUP_CONCAT(DISTINCT volume), MAX(created) "
        "FROM snapshots GROUP BY project").fetchall()
    found = {r[0]: {"name": r[0], "versions": r[1], "volumes": _volume_order((r[2] or "").split(",")),
                    "newest": r[3]} for r in rows}
    if not found:
        for s in backend.snapshots(readable=False):
            p = found.setdefault(s.project, {"name": s.project, "versions": set(), "volumes": set(), "newest": None})
            p["versions"].add(s.name)
            p["volumes"].add(s.volume)
            p["newest"] = max(filter(None, [p["newest"], s.created.isoformat()]))
        for p in found.values():
            p["versions"], p["volumes"] = len(p["versions"]), _volume_order(p["volumes"])
    return [found[k] for k in sorted(found)]


class ProjectView:
    """One project of a lake, read-only, shaped as the pages use a Workspace."""

    id = None  # no workspace: no live volumes

    def __init__(self, backend, project: str, catalog: Catalog | None = None):
        self.backend = backend
        try:
            self.project = names.check_project(project)
        except SnapverError:
            raise NotFound(f"there is no project {project!r} on this lake") from None
        self._catalog = catalog
        rows = self.catalog.conn.execute(
            "SELECT DISTINCT volume FROM snapshots WHERE project = ? UNION "
            "SELECT volume FROM lineage WHERE project = ?", [project, project]).fetchall()
        vols = {r[0] for r in rows}
        if not vols:
            vols = {s.volume for s in backend.snapshots(project, readable=False)}
        if not vols:
            raise NotFound(f"there is no project {project!r} on this lake")
        self.volumes = _volume_order(vols)

    @property
    def catalog(self) -> Catalog:
        if self._catalog is None:
            self._catalog = Catalog(self.backend.catalog_path)
        return self._catalog

    def log(self, include_wip: bool = False) -> list[LogEntry]:
        """Snapshots newest first, from the filesystem (as Workspace.log)."""
        snaps = [s for s in self.backend.snapshots(self.project)
                 if s.volume in self.volumes and (include_wip or s.kind == "commit")]
        rows = self.catalog.snapshot_rows(self.project)
        commits = self.catalog.commits(self.project)
        snaps.sort(key=lambda s: (s.age_key, s.volume), reverse=True)
        return [LogEntry(s, commits.get(s.commit, {}).get("subject"), commits.get(s.commit, {}).get("author"),
                         rows.get((s.volume, s.name), {}).get("message")) for s in snaps]

    def resolve(self, rev: str, volumes: list[str], nearest: bool = False):
        """release:NAME or a snapshot name: there is no Git repository to ask for others."""
        for prefix, resolve in seams.rev_prefixes.items():
            if rev.startswith(prefix):
                found, commit = resolve(self, rev[len(prefix):], volumes)
                return found, commit, []
        parsed = names.parse_snapshot_name(rev)
        if not parsed:
            raise SnapverError(f"{rev!r}: on a lake without its repository, name a version by its snapshot "
                               "name (40 hex digits, and a wip's time) or release:NAME")
        found = {v: s for v in volumes if (s := self.backend.find(self.project, v, rev)) is not None}
        if not found:
            raise NotFound(f"there is no snapshot {rev} in project {self.project}")
        return found, parsed[0], []

    def show(self, rev: str):
        found, commit, _ = self.resolve(rev, self.volumes)
        return commit, found, self.catalog.commit(self.project, commit)
