"""snapver.toml (committed, shared by every clone) and the working tree's local state.

snapver.toml says what the project versions: its id, its volumes, the
backend, and where the lake usually is. The local state, under the working
tree's own Git directory, says which lake and workspace this checkout uses
and what each live volume was last known to hold; losing it costs nothing
but an extra safety snapshot, because every unknown is treated as changed.
"""

from __future__ import annotations

import json
import os
import tomllib
from pathlib import Path

from .errors import SnapverError
from .names import check_project, check_volume, check_workspace

CONFIG_NAME = "snapver.toml"


# Plain classes (and NamedTuples for records), not dataclasses, here and in every module
# the Git hooks import: `dataclasses` imports `inspect` and builds each class with exec,
# which cost a hook more start-up time than all its other imports together.
class Config:
    def __init__(self, project: str, volumes: list[str], backend: str = "btrfs",
                 lake: str | None = None, image: str | None = None, remote: dict | None = None):
        self.project = project
        self.volumes = volumes
        self.backend = backend
        self.lake = lake  # where the lake usually is on this team's hosts
        self.image = image
        # [remote]: name, url, ssh, and the opt-in Git integration push / fetch (booleans)
        self.remote = remote or {}

    @classmethod
    def load(cls, toplevel: Path) -> Config:
        path = toplevel / CONFIG_NAME
        from .safeio import open_regular

        try:
            f = open_regular(path)  # a FIFO planted here must not block a hook or the daemon
            if f is None:
                raise SnapverError(f"{path} is not a regular file: put snapver.toml back from Git")
            with f:
                doc = tomllib.load(f)
        except FileNotFoundError:
            raise SnapverError(
                f"no {CONFIG_NAME} in {toplevel}: run `snapver init` to version a lake here"
            ) from None
        except tomllib.TOMLDecodeError as e:
            raise SnapverError(f"{path} is not valid TOML ({e}): fix it by hand") from None
        project = doc.get("project", {})
        try:
            config = cls(
                project=check_project(project["id"]),
                volumes=[check_volume(v) for v in project.get("volumes", [])],
                backend=project.get("backend", "btrfs"),
                lake=doc.get("lake", {}).get("path"),
                image=doc.get("lake", {}).get("image"),
                remote=_remote_settings(doc.get("remote", {})),
            )
        except (KeyError, TypeError, AttributeError):
            raise SnapverError(f"{path} has no [project] id: restore it from Git") from None
        except SnapverError as e:
            raise SnapverError(f"{path}: {e}") from None
        if not config.volumes:
            raise SnapverError(f"{path} names no volumes under [project] volumes")
        return config

    def save(self, toplevel: Path) -> None:
        q = json.dumps  # TOML basic strings are JSON strings for these names
        lines = [
            "# snapver: the volumes versioned with this repository's commits.",
            "# Commit this file; every clone reads it.",
            "[project]",
            f"id = {q(self.project)}",
            f"backend = {q(self.backend)}",
            f"volumes = [{', '.join(q(v) for v in self.volumes)}]",
        ]
        if self.lake or self.image:
            lines += ["", "# Where this project's lake usually is; `snapver init --lake/--image` overrides."]
            lines += ["[lake]"]
            lines += [f"path = {q(self.lake)}"] if self.lake else []
            lines += [f"image = {q(self.image)}"] if self.image else []
        (toplevel / CONFIG_NAME).write_text("\n".join(lines) + "\n")


_REMOTE_KEYS = {"name": str, "url": str, "ssh": str, "push": bool, "fetch": bool}


def _remote_settings(table) -> dict:
    if not isinstance(table, dict):
        raise SnapverError("[remote] must be a table")
    for key, value in table.items():
        if key not in _REMOTE_KEYS or not isinstance(value, _REMOTE_KEYS[key]):
            allowed = ", ".join(f"{k} ({t.__name__})" for k, t in _REMOTE_KEYS.items())
            raise SnapverError(f"[remote] {key} = {value!r} is not understood: "
                               f"the keys are {allowed}")
    return dict(table)


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
