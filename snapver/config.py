"""snapver.toml (committed, shared by every clone) and the working tree's local state.

snapver.toml says what the project versions: its id, its volumes, the
backend, and where the lake usually is; and how its registry, retention and
remote behave. It is read in one place (ProjectConfig.load), every table and
key checked (tomlcheck), and written in one place: a new file by save, the
volumes list edited in place with tomlkit by with_volume. The local state, under the working
tree's own Git directory, says which lake and workspace this checkout uses
and what each live volume was last known to hold; losing it costs nothing
but an extra safety snapshot, because every unknown is treated as changed.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path, PurePosixPath
from typing import NamedTuple

from . import tomlcheck
from .errors import SnapverError
from .names import check_project, check_volume, check_workspace
from .tomlcheck import Invalid, get, known, short

CONFIG_NAME = "snapver.toml"


class RegistrySettings(NamedTuple):
    """[registry], [releases], [scan] and [volumes.NAME]: what the registry keeps of a snapshot."""
    metrics: list[str] = []
    params: list[str] = []
    from_tags: bool = True
    scan_on_snapshot: bool = True
    scan_volumes: list[str] | None = None  # None: `models` and derived volumes
    scan_allow: list[str] = []  # module.name patterns a team accepts ("sklearn.*"): not flagged
    provenance: dict[str, dict[str, str]] = {}


class CascadeSettings(NamedTuple):
    """[cascade]: when snapverd starts a cascade by itself (cascadetrigger.py); off unless asked."""
    on_release: bool = False  # a release a recipe reads moved (release set, a tag)
    on_commit: bool = False  # a new commit snapshot of a volume a recipe reads


# Plain classes (and NamedTuples for records), not dataclasses, here and in every module
# the Git hooks import: `dataclasses` imports `inspect` and builds each class with exec,
# which cost a hook more start-up time than all its other imports together.
class ProjectConfig:
    """Every table of snapver.toml, checked: read only by load(), written only by save() (a new
    file) and with_volume() (an edit in place that keeps the user's comments and layout)."""

    def __init__(self, project: str, volumes: list[str], backend: str = "btrfs",
                 lake: str | None = None, image: str | None = None, remote: dict | None = None,
                 registry: RegistrySettings | None = None, retention=None,
                 builds: dict[str, tuple[str, list[str]]] | None = None,
                 cascade: CascadeSettings | None = None):
        self.project = project
        self.volumes = volumes
        self.backend = backend
        self.lake = lake  # where the lake usually is on this team's hosts
        self.image = image
        # [remote]: name, url, ssh, and the opt-in Git integration push / fetch (booleans)
        self.remote = remote or {}
        self.registry = registry or RegistrySettings()
        self.retention = retention  # a retention.Policy, or None: the default (or the daemon's)
        # [build.NEW] run / inputs: volume -> (command, ["VOLUME@REV", ...]), checked (recipes.py runs them)
        self.builds = builds or {}
        self.cascade = cascade or CascadeSettings()

    def _values(self) -> tuple:
        return (self.project, self.volumes, self.backend, self.lake, self.image, self.remote,
                self.registry, self.retention, self.builds, self.cascade)

    def __eq__(self, other) -> bool:
        return isinstance(other, ProjectConfig) and self._values() == other._values()

    @classmethod
    def load(cls, toplevel: Path) -> ProjectConfig:
        path = toplevel / CONFIG_NAME
        return tomlcheck.parse(path, _read(path, toplevel), _from_doc)

    def save(self, toplevel: Path) -> None:
        """Write a new snapver.toml saying this (`snapver init` of a new project)."""
        import tomlkit  # the writer only: the hooks never write snapver.toml

        doc = tomlkit.document()
        doc.add(tomlkit.comment("snapver: the volumes versioned with this repository's commits."))
        doc.add(tomlkit.comment("Commit this file; every clone reads it."))
        project = tomlkit.table()
        project.add("id", self.project)
        project.add("backend", self.backend)
        project.add("volumes", list(self.volumes))
        doc.add("project", project)
        if self.lake or self.image:
            doc.add(tomlkit.nl())
            doc.add(tomlkit.comment("Where this project's lake usually is; `snapver init --lake/--image` overrides."))
            lake = tomlkit.table()
            for key, value in (("path", self.lake), ("image", self.image)):
                if value:
                    lake.add(key, value)
            doc.add("lake", lake)
        path = toplevel / CONFIG_NAME
        text = tomlkit.dumps(doc)
        if tomlcheck.parse(path, text, _from_doc) != self:  # what is written reads back the same
            raise SnapverError(f"{path} would not say what snapver meant to write: nothing written")
        write_as_owner(path, text)


Config = ProjectConfig  # the name the rest of the package knew it by


def with_volume(toplevel: Path, volume: str) -> str:
    """The text of snapver.toml with volume appended to [project] volumes and everything else,
    comments, order and layout included, as the user left it. Checked before anything is
    written: the result must read back as the same config with one more volume."""
    import tomlkit

    path = toplevel / CONFIG_NAME
    data = _read(path, toplevel)
    before = tomlcheck.parse(path, data, _from_doc)  # valid, so UTF-8 text
    text = data.decode()
    if volume in before.volumes:
        raise SnapverError(f"{path} names {volume} already under [project] volumes")
    try:
        doc = tomlkit.parse(text)
        doc["project"]["volumes"].append(volume)
        new = tomlkit.dumps(doc)
        after = tomlcheck.parse(path, new, _from_doc)
    except (tomlkit.exceptions.TOMLKitError, ValueError, KeyError, SnapverError):
        after = None
    if after is None or after._values() != (before.project, [*before.volumes, volume], *before._values()[2:]):
        raise SnapverError(f"cannot add {volume} to [project] volumes in {path}: "
                           "add it there by hand, then try again")
    return new


def _read(path: Path, toplevel: Path) -> bytes:
    from .safeio import open_regular

    try:
        f = open_regular(path)  # a FIFO planted here must not block a hook or the daemon
    except FileNotFoundError:
        raise SnapverError(f"no {CONFIG_NAME} in {toplevel}: run `snapver init` to version a lake here") from None
    except OSError as e:
        raise SnapverError(f"{path} cannot be read: {e.strerror}") from None
    if f is None:
        raise SnapverError(f"{path} is not a regular file: put snapver.toml back from Git")
    with f:
        return f.read()


# ------------------------------------------------------------------ what snapver.toml may say

_TABLES = ("project", "lake", "remote", "retention", "registry", "releases", "scan", "volumes", "build", "cascade")
_REMOTE_KEYS = {"name": "str", "url": "str", "ssh": "str", "push": "bool", "fetch": "bool"}


def _from_doc(doc: dict) -> ProjectConfig:
    tomlcheck.tables(doc, _TABLES)
    if "project" not in doc:
        raise Invalid("no [project] table: restore snapver.toml from Git")
    p, at = doc["project"], ("project",)
    known(p, ("id", "backend", "volumes"), at, "[project] ")
    if "id" not in p:
        raise Invalid("[project] has no id: restore it from Git", at)
    project = _name(check_project, get(p, "id", "str", at), at + ("id",))
    backend = get(p, "backend", "str", at, "btrfs")
    if backend not in ("btrfs", "zfs"):
        raise Invalid(f"[project] backend = {short(backend)}: the backends are btrfs, zfs", at + ("backend",))
    volumes = [_name(check_volume, v, at + ("volumes",)) for v in get(p, "volumes", "strs", at, [])]
    if not volumes:
        raise Invalid("[project] volumes names no volumes", at + ("volumes",))
    if len(set(volumes)) != len(volumes):
        raise Invalid(f"[project] volumes names a volume twice: {', '.join(volumes)}", at + ("volumes",))

    lake = doc.get("lake", {})
    known(lake, ("path", "image"), ("lake",), "[lake] ")
    remote = doc.get("remote", {})
    known(remote, tuple(_REMOTE_KEYS), ("remote",), "[remote] ")
    for key, kind in _REMOTE_KEYS.items():
        get(remote, key, kind, ("remote",))
    return ProjectConfig(
        project=project, volumes=volumes, backend=backend,
        lake=get(lake, "path", "str", ("lake",)), image=get(lake, "image", "str", ("lake",)),
        remote=dict(remote), registry=_registry(doc),
        retention=retention_policy(doc["retention"]) if "retention" in doc else None,
        builds=_builds(doc.get("build", {})),
        cascade=_cascade(doc.get("cascade", {})),
    )


def _cascade(table: dict) -> CascadeSettings:
    known(table, CascadeSettings._fields, ("cascade",), "[cascade] ")
    return CascadeSettings(*(get(table, key, "bool", ("cascade",), False) for key in CascadeSettings._fields))


def _builds(table: dict) -> dict[str, tuple[str, list[str]]]:
    """[build.NEW] run = "CMD", inputs = ["VOLUME@REV", ...]: a recipe versioned with the code."""
    import shlex

    builds = {}
    for volume, fields in table.items():
        at = ("build", volume)
        if not isinstance(fields, dict):
            raise Invalid(f"[build] {volume} = {short(fields)}: write it as a table [build.{volume}]", at)
        _name(check_volume, volume, at)
        known(fields, ("run", "inputs"), at, f"[build.{volume}] ")
        run = get(fields, "run", "str", at)
        if run is None:
            raise Invalid(f"[build.{volume}] has no run: give the command that builds {volume}", at)
        try:
            argv = shlex.split(run)
        except ValueError as e:
            raise Invalid(f"[build.{volume}] run = {short(run)}: {e}", at + ("run",)) from None
        if not argv:
            raise Invalid(f"[build.{volume}] run is empty: give the command that builds {volume}", at + ("run",))
        inputs = get(fields, "inputs", "strs", at, [])
        seen = set()
        for text in inputs:
            source, _, rev = text.partition("@")
            if not rev or not source:
                raise Invalid(f"[build.{volume}] inputs: {short(text)}: give VOLUME@REV, e.g. data@HEAD",
                              at + ("inputs",))
            _name(check_volume, source, at + ("inputs",))
            if source == volume or source in seen:
                raise Invalid(f"[build.{volume}] inputs: {short(text)}: "
                              f"{'a build cannot read its own output' if source == volume else 'a volume twice'}",
                              at + ("inputs",))
            seen.add(source)
        builds[volume] = (run, list(inputs))
    return builds


def _name(check, value: str, at: tuple) -> str:
    try:
        return check(value)
    except SnapverError as e:
        raise Invalid(f"{tomlcheck.label_of(at[:-1])}{at[-1]}: {e}", at) from None


def _registry(doc: dict) -> RegistrySettings:
    registry, releases, scan = (doc.get(t, {}) for t in ("registry", "releases", "scan"))
    known(registry, ("metrics", "params"), ("registry",), "[registry] ")
    known(releases, ("from_tags",), ("releases",), "[releases] ")
    known(scan, ("on_snapshot", "volumes", "allow"), ("scan",), "[scan] ")
    allow = get(scan, "allow", "strs", ("scan",), [])
    for pattern in allow:
        if not re.fullmatch(r"[A-Za-z_*?][A-Za-z0-9_.*?]*", pattern):
            raise Invalid(f"[scan] allow: {short(pattern)} is not a module.name pattern (e.g. \"sklearn.*\")",
                          ("scan", "allow"))

    def paths(key: str) -> list[str]:
        value = registry.get(key, [])
        value = [value] if isinstance(value, str) else get(registry, key, "strs", ("registry",), [])
        for p in value:
            rel = PurePosixPath(p)
            if not p or rel.is_absolute() or ".." in rel.parts:
                raise Invalid(f"[registry] {key}: {short(p)} must be relative to the repository, without '..'",
                              ("registry", key))
        return value

    provenance = {}
    for volume, fields in doc.get("volumes", {}).items():
        at = ("volumes", volume)
        if not isinstance(fields, dict):
            raise Invalid(f"[volumes] {volume} = {short(fields)}: write it as a table [volumes.{volume}]", at)
        _name(check_volume, volume, at)
        known(fields, ("license", "source"), at, f"[volumes.{volume}] ")
        provenance[volume] = {k: get(fields, k, "str", at) for k in ("license", "source") if k in fields}
    return RegistrySettings(
        metrics=paths("metrics"),
        params=paths("params"),
        from_tags=get(releases, "from_tags", "bool", ("releases",), True),
        scan_on_snapshot=get(scan, "on_snapshot", "bool", ("scan",), True),
        scan_volumes=get(scan, "volumes", "strs", ("scan",)),
        scan_allow=allow,
        provenance=provenance,
    )


def retention_policy(table, at: tuple = ("retention",)):
    """[retention] as a retention.Policy (snapver.toml's, and snapverd.toml's default), each
    key checked on its own so that an error names its line. retention.py is imported only
    when there is such a table: it brings dataclasses, which the hooks do without."""
    from .retention import Policy

    if not isinstance(table, dict):
        raise Invalid("[retention] must be a table with unreachable, wip and kept", at)
    known(table, ("unreachable", "wip", "kept"), at, "[retention] ")
    for key, value in table.items():
        try:
            Policy.from_config({key: value})
        except SnapverError as e:
            said = str(e)
            raise Invalid(said if said.startswith("[retention]") else f"[retention] {key}: {said}",
                          at + (key,)) from None
    return Policy.from_config(table)


class VolumeState:
    def __init__(self, base: str | None = None, mark: str | None = None):
        self.base = base  # the snapshot the live volume last matched
        self.mark = mark  # backend token: the live volume's state at that moment

    def __repr__(self) -> str:
        return f"VolumeState(base={self.base!r}, mark={self.mark!r})"


class LocalState:
    def __init__(self, path: Path, backend: str, lake: str, workspace: str,
                 image: str | None = None, volumes: dict[str, VolumeState] | None = None):
        self.path = path
        self.backend = backend
        self.lake = lake
        self.workspace = workspace
        self.image = image
        self.volumes = volumes if volumes is not None else {}

    FILE = "workspace.json"

    @staticmethod
    def dir(git_dir: Path) -> Path:
        return git_dir / "snapver"

    @classmethod
    def exists(cls, git_dir: Path) -> bool:
        return (cls.dir(git_dir) / cls.FILE).exists()

    @classmethod
    def load(cls, git_dir: Path) -> LocalState:
        path = cls.dir(git_dir) / cls.FILE
        try:
            doc = json.loads(path.read_text())
            return cls(
                path=path,
                backend=doc["backend"],
                lake=doc["lake"],
                workspace=check_workspace(doc["workspace"]),
                image=doc.get("image"),
                volumes={k: VolumeState(**v) for k, v in doc.get("volumes", {}).items()},
            )
        except FileNotFoundError:
            raise SnapverError(
                "this working tree has no lake yet: run `snapver init` here"
            ) from None
        except (ValueError, KeyError, TypeError):
            raise SnapverError(
                f"{path} is damaged: move it away and run `snapver init` again "
                "(snapshots are safe, they live in the lake)"
            ) from None

    def volume(self, name: str) -> VolumeState:
        return self.volumes.setdefault(name, VolumeState())

    def save(self) -> None:
        doc = {"backend": self.backend, "lake": self.lake, "workspace": self.workspace, "image": self.image,
               "volumes": {k: {"base": v.base, "mark": v.mark} for k, v in self.volumes.items()}}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_as_owner(self.path, json.dumps(doc, indent=2))


def write_as_owner(path: Path, text: str) -> None:
    """Replace a file under a working tree's .git atomically, owned by whoever owns its folder.

    Never half-written (temporary file, fsync, rename), and never left owned by
    root when the root daemon acted for a user who must still change it.
    The folder belongs to a user and the root daemon writes here, so nothing the user planted
    is followed: the temporary file is made new (O_EXCL, O_NOFOLLOW) and chowned by its fd.
    """
    tmp = path.with_name(f".{path.name}.tmp")
    try:
        os.unlink(tmp)  # left by a crash, or planted (a symlink to a file of root's)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with open(fd, "w") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
        owner = path.parent.stat()
        if os.geteuid() == 0 and (owner.st_uid, owner.st_gid) != (0, 0):
            os.fchown(f.fileno(), owner.st_uid, owner.st_gid)
    os.replace(tmp, path)
