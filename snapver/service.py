"""`snapver service install | uninstall`: snapverd's systemd units, written for this machine.

install writes the units of systemd/ with the ExecStart of the command that runs it (the
templates say /usr/local/bin/snapver, which nothing creates), a starting snapverd.toml
listing the working tree it is run in (only where none exists: an admin's file is never
overwritten), and a drop-in for each sandboxed unit with ReadWritePaths for the working
trees and lakes that config names. Every file it writes goes into a manifest with its
sha256, so uninstall removes exactly those, and keeps (and names) one changed since.

--root DIR writes into DIR instead of / (packaging, tests); systemctl is then run with
--root, which enables units offline.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import shutil
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .errors import CommandFailed, SnapverError
from .proc import ask, run
from .shipped import shipped

UNIT_DIR = Path("etc/systemd/system")
CONFIG = Path("etc/snapver/snapverd.toml")
MANIFEST = Path("etc/snapver/service-manifest.json")
UNITS = ("snapverd.service", "snapverd.socket", "snapver-gc.service", "snapver-gc.timer", "snapver-lakes.service")
SANDBOXED = ("snapverd.service", "snapver-gc.service")  # the units that get the paths drop-in
DROPIN = "snapver-paths.conf"
# The timer only where gc_interval = "off"; snapver-lakes.service mounts image lakes at boot.
ENABLED = ("snapverd.socket", "snapverd.service", "snapver-lakes.service")
TEMPLATE_COMMAND = "/usr/local/bin/snapver"


@dataclass
class Report:
    written: list[str] = field(default_factory=list)  # paths, as on the target system
    removed: list[str] = field(default_factory=list)
    kept: list[str] = field(default_factory=list)  # one line each: what was left alone, and why
    enabled: list[str] = field(default_factory=list)
    command: str = ""


def command() -> list[str]:
    """The snapver command that is running now, absolute: what the units' ExecStart runs."""
    argv0 = sys.argv[0]
    if Path(argv0).name == "__main__.py":  # `python -m snapver`: that interpreter, that way
        return [sys.executable, "-m", "snapver"]
    found = argv0 if os.sep in argv0 else shutil.which(argv0)
    if not (found and os.access(found, os.X_OK)):
        found = shutil.which("snapver")
    # Not resolved through symlinks: a venv's bin/snapver or a pipx link must stay what it is.
    return [os.path.abspath(found)] if found else [sys.executable, "-m", "snapver"]


def unit_words(words: list[str]) -> str:
    """Words for an ExecStart= or a path list: systemd's own quoting, % and $ escaped."""
    out = []
    for w in words:
        if any(ord(c) < 32 or c == "\x7f" for c in w):
            raise SnapverError(f"{w!r} has a control character: systemd units cannot name it")
        w = w.replace("%", "%%").replace("$", "$$")
        out.append(w if re.fullmatch(r"[A-Za-z0-9_@%$+=:,./-]+", w)
                   else '"' + w.replace("\\", "\\\\").replace('"', '\\"') + '"')
    return " ".join(out)


def render_unit(name: str, argv: list[str]) -> str:
    text = (shipped("systemd") / name).read_text()
    return re.sub(rf"^(Exec\w+=){re.escape(TEMPLATE_COMMAND)}(?= |$)",
                  lambda m: m.group(1) + unit_words(argv), text, flags=re.M)


def starting_config(trees: list[Path]) -> str:
    """systemd/snapverd.toml, with a [[workspace]] for each tree."""
    text = (shipped("systemd") / "snapverd.toml").read_text()
    for tree in trees:
        # A JSON string is a TOML basic string (the same escapes), whatever the path holds.
        text += f"\n[[workspace]]\npath = {json.dumps(str(tree))}\n"
    return text


def current_tree(cwd: Path) -> Path | None:
    """The working tree set up with `snapver init` that cwd is in, if it is in one. Found
    without running git: root (sudo) in a user's repository is refused by git's
    safe.directory, and must not run what that repository's config names anyway."""
    from .config import LocalState

    for tree in (cwd.resolve(), *cwd.resolve().parents):
        dot_git = tree / ".git"
        if dot_git.is_dir():
            return tree if LocalState.exists(dot_git) else None
        if dot_git.is_file():  # a linked worktree: "gitdir: <its Git directory>"
            text = dot_git.read_text(errors="replace").strip()
            git_dir = Path(text.removeprefix("gitdir:").strip()) if text.startswith("gitdir:") else None
            if git_dir is not None and not git_dir.is_absolute():
                git_dir = tree / git_dir
            return tree if git_dir is not None and LocalState.exists(git_dir) else None
    return None


@contextlib.contextmanager
def trusted(trees: list[Path]):
    """Let git, run as root, read these repositories (the configured workspaces, and only
    those), as snapverd does for them: their owners are users, and git's safe.directory
    refuses another owner's repository."""
    saved = {k: v for k, v in os.environ.items() if k.startswith("GIT_CONFIG_")}
    os.environ["GIT_CONFIG_COUNT"] = str(len(trees))
    for i, t in enumerate(trees):
        os.environ[f"GIT_CONFIG_KEY_{i}"] = "safe.directory"
        os.environ[f"GIT_CONFIG_VALUE_{i}"] = str(t)
    try:
        yield
    finally:
        for k in [k for k in os.environ if k.startswith("GIT_CONFIG_")]:
            del os.environ[k]
        os.environ.update(saved)


def writable_paths(config_file: Path) -> tuple[list[Path], list[str], bool]:
    """What the daemon writes for the workspaces config_file names: each working tree (its
    .git/snapver), its Git directory where that is elsewhere (a linked worktree's), and its
    lake (a Btrfs lake's folder; a ZFS lake's mountpoint). Also a line for each workspace
    that could not be read (gone, not set up yet): it is left out, and said. And whether a
    lake is ZFS: the daemon then mounts datasets that users must see (dropin)."""
    from .config import LocalState
    from .daemonconfig import DaemonConfig
    from .gitrepo import GitRepo

    paths: list[Path] = []
    notes: list[str] = []
    mounts = False
    workspaces = DaemonConfig.load(config_file).workspaces
    for w in workspaces:
        try:
            with trusted([x.path for x in workspaces]):
                git = GitRepo.find(w.path)
            state = LocalState.load(git.git_dir)
        except (SnapverError, OSError) as e:
            notes.append(f"{w.path}: not in the drop-in ({e}); run `snapver service install` again once it is set up")
            continue
        found = [git.toplevel, git.common_dir]
        if state.backend == "zfs":
            mounts = True
            try:
                mountpoint = run(["zfs", "get", "-H", "-o", "value", "mountpoint", state.lake]).strip()
            except CommandFailed as e:
                notes.append(f"{w.path}: its lake {state.lake} is not in the drop-in ({e})")
            else:
                if mountpoint.startswith("/"):
                    found.append(Path(mountpoint))
        else:
            found.append(Path(state.lake))
        for p in found:
            if not any(p == q or q in p.parents for q in paths):
                paths = [q for q in paths if p not in q.parents] + [p]
    return paths, notes, mounts


# Every sandbox setting of the units that gives the daemon a mount namespace of its own.
# systemd.exec: ReadWritePaths= (and the others' read-only or private mounts) disconnect the
# propagation of mounts from the service to the host.
MOUNT_NAMESPACE = ("ProtectSystem=no", "ReadWritePaths=", "PrivateTmp=no", "ProtectKernelModules=no",
                   "ProtectKernelTunables=no", "ProtectControlGroups=no", "ProtectClock=no")


def dropin(paths: list[Path], config_file: str, mounts: bool = False) -> str:
    if mounts:
        # A ZFS lake: a checkout has snapverd mount the commit's datasets where the users'
        # volume links lead. Mounted inside a namespace of the daemon's own they would not
        # reach the host, and the user would go on seeing the old live volume.
        lines = [f"# Written by `snapver service install`: a lake {config_file} names is ZFS, and snapverd",
                 "# mounts its datasets (a checkout's new live volumes) for every user to see, which no",
                 "# mount namespace of its own may hide: the sandbox keeps all but its mount settings.",
                 "# `snapver service uninstall` removes this file."]
        service = list(MOUNT_NAMESPACE)
    else:
        lines = [f"# Written by `snapver service install`: the working trees and lakes {config_file} names,",
                 "# which the sandbox (ProtectSystem=strict) must let snapverd write. Run it again after",
                 "# adding a workspace there; `snapver service uninstall` removes this file."]
        # "-": a lake that is not mounted yet must not stop the unit from starting.
        service = [f"ReadWritePaths={unit_words(['-' + str(p)])}" for p in paths]
    lines += ["[Unit]",
              "# Lakes in image files are mounted first (a unit not enabled is no failure: Wants).",
              "Wants=snapver-lakes.service",
              "After=snapver-lakes.service",
              "[Service]", *service]
    return "\n".join(lines) + "\n"


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _read_manifest(root: Path) -> dict:
    try:
        doc = json.loads((root / MANIFEST).read_text())
    except FileNotFoundError:
        return {"files": {}, "dirs": []}
    except (OSError, ValueError) as e:
        raise SnapverError(f"{root / MANIFEST} cannot be read ({e}): move it away and install again") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("files"), dict) or not isinstance(doc.get("dirs"), list):
        raise SnapverError(f"{root / MANIFEST} is damaged: move it away and install again")
    return doc


def _write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.snapver-tmp")
    tmp.write_text(text)
    tmp.chmod(0o644)
    os.replace(tmp, path)


def _systemctl(root: Path, *args: str) -> list[str]:
    return ["systemctl", *([f"--root={root}"] if root != Path("/") else []), *args]


def _systemd_running(root: Path) -> bool:
    return root == Path("/") and Path("/run/systemd/system").is_dir()


def _dirs_under(root: Path, top: Path) -> set[str]:
    return {str(Path(d).relative_to(root)) for d, _, _ in os.walk(root / top)} if (root / top).is_dir() else set()


def install(root: Path, cwd: Path, enable: bool = False) -> Report:
    """Write the units, the config if none is there, and the drop-ins; enable if asked."""
    root = root.resolve()
    if not root.is_dir():
        raise SnapverError(f"--root {root} is not a folder")
    argv = command()
    manifest = _read_manifest(root)
    report = Report(command=" ".join(argv))
    plan: dict[Path, str] = {UNIT_DIR / u: render_unit(u, argv) for u in UNITS}
    config_file = root / CONFIG
    if config_file.exists() and str(CONFIG) not in manifest["files"]:
        report.kept.append(f"/{CONFIG}: kept as it is (written by someone else); its workspaces are in the drop-in")
    else:
        tree = current_tree(cwd)
        if tree is None:
            report.kept.append(f"/{CONFIG}: lists no workspace ({cwd} is not in a working tree set up with "
                               "`snapver init`): add [[workspace]] tables, then install again")
        plan[CONFIG] = starting_config([tree] if tree else [])
    # Check everything before changing anything: a file we did not write, or one changed
    # since we wrote it, is someone's work.
    for rel in list(plan):
        target = root / rel
        if not os.path.lexists(target):
            continue
        ours = manifest["files"].get(str(rel))
        if rel == CONFIG and ours is not None and _digest(target.read_bytes()) != ours:
            del plan[rel]  # an admin edited the config we wrote: it is theirs now
            report.kept.append(f"/{CONFIG}: kept as it is (edited since snapver wrote it)")
            continue
        if ours is None:
            raise SnapverError(f"/{rel} exists and was not written by `snapver service install`: "
                               "move it away (or merge it by hand), then install again")
        if _digest(target.read_bytes()) != ours:
            raise SnapverError(f"/{rel} was changed since `snapver service install` wrote it: "
                               "put your changes in a drop-in (systemctl edit), move it away, then install again")
    before = _dirs_under(root, Path("etc"))
    for rel, text in plan.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        _write(root / rel, text)
    # The drop-ins come from the config as it now is (the admin's, or the one just written).
    paths, notes, mounts = writable_paths(config_file)
    report.kept += notes
    for unit in SANDBOXED:
        rel = UNIT_DIR / f"{unit}.d" / DROPIN
        target = root / rel
        if os.path.lexists(target) and manifest["files"].get(str(rel)) != _digest(target.read_bytes()):
            raise SnapverError(f"/{rel} exists and was not written by `snapver service install` as it is: "
                               "move it away, then install again")
        target.parent.mkdir(parents=True, exist_ok=True)
        plan[rel] = dropin(paths, f"/{CONFIG}", mounts)
        _write(target, plan[rel])
    files = dict(manifest["files"])
    files.update({str(rel): _digest((root / rel).read_bytes()) for rel in plan})
    dirs = sorted(set(manifest["dirs"]) | (_dirs_under(root, Path("etc")) - before))
    _save_manifest(root, files, dirs)
    report.written = [f"/{rel}" for rel in plan]
    if enable:
        before = _dirs_under(root, Path("etc"))
        if _systemd_running(root):
            run(_systemctl(root, "daemon-reload"))
        run(_systemctl(root, "enable", *(["--now"] if _systemd_running(root) else []), *ENABLED))
        _save_manifest(root, files, sorted(set(dirs) | (_dirs_under(root, Path("etc")) - before)))
        report.enabled = list(ENABLED)
    elif _systemd_running(root):
        run(_systemctl(root, "daemon-reload"))
    return report


def _save_manifest(root: Path, files: dict, dirs: list[str]) -> None:
    (root / MANIFEST).parent.mkdir(parents=True, exist_ok=True)
    _write(root / MANIFEST, json.dumps({"files": files, "dirs": dirs}, indent=2) + "\n")


def uninstall(root: Path) -> Report:
    """Disable the units, then remove every file install wrote that is as it wrote it."""
    root = root.resolve()
    if not (root / MANIFEST).exists():
        raise SnapverError(f"nothing to remove: /{MANIFEST} is not there "
                           f"(`snapver service install` was not run{'' if root == Path('/') else ' under ' + str(root)})")
    manifest = _read_manifest(root)
    report = Report()
    units = [u for u in (*ENABLED, "snapver-gc.timer") if (root / UNIT_DIR / u).exists()]
    if units:
        # ask: a unit that was never enabled is not a failure here.
        ask(_systemctl(root, "disable", *(["--now"] if _systemd_running(root) else []), *units))
    for rel, digest in sorted(manifest["files"].items()):
        target = root / rel
        if not os.path.lexists(target):
            continue
        if _digest(target.read_bytes()) != digest:
            report.kept.append(f"/{rel}: kept (changed since snapver wrote it)")
            continue
        target.unlink()
        report.removed.append(f"/{rel}")
    (root / MANIFEST).unlink()
    report.removed.append(f"/{MANIFEST}")
    for d in sorted(manifest["dirs"], key=lambda d: -d.count("/")):
        try:
            (root / d).rmdir()  # only if empty: what someone else put there stays
        except OSError:
            pass
    if _systemd_running(root):
        run(_systemctl(root, "daemon-reload"))
    return report


def mount_lakes(config_file: Path) -> tuple[list[str], list[str]]:
    """Mount every image-backed lake (or import its pool) of the workspaces config_file
    names, as any snapver command run as root would on finding it unmounted: at boot, from
    snapver-lakes.service. (what was done or found, what failed), one line each; one
    workspace failing does not stop the others."""
    from .config import LocalState
    from .daemonconfig import DaemonConfig
    from .gitrepo import GitRepo
    from .provision import ensure_mounted

    done: list[str] = []
    failed: list[str] = []
    workspaces = DaemonConfig.load(config_file).workspaces
    for w in workspaces:
        try:
            with trusted([x.path for x in workspaces]):
                state = LocalState.load(GitRepo.find(w.path).git_dir)
            if not state.image:
                done.append(f"{w.path}: its lake {state.lake} is not in an image file (nothing to mount)")
                continue
            ensure_mounted(state)
        except (SnapverError, OSError) as e:
            failed.append(f"{w.path}: {e}")
            continue
        done.append(f"{w.path}: the lake {state.lake} of {state.image} is there")
    return done, failed
