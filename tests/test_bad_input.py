"""Hostile input, property-based: names, revisions, paths, messages and config values drawn from
shell metacharacters, '..', NUL, newlines, very long strings and unicode.

Each one must end in a SnapverError (the CLI: one line, non-zero exit, no traceback) or in a
correct result; never reach a shell (a canary directory outside the repository and the lake
would get a `pwned` file), never read or write outside the lake and the repository, and never
create anything with a name outside snapver's own alphabet.

Most examples call the core in-process against one real Btrfs lake (many per second); a
sample goes through the CLI as a subprocess. HYPOTHESIS_EXAMPLES scales every property.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from snapver import names
from snapver.errors import SnapverError
from tests.fixtures.git import env, git, snapver

SCALE = float(os.environ.get("HYPOTHESIS_EXAMPLES", "1"))
SAFE = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9._:-]*")  # everything snapver itself names things with
TRIED: dict[str, int] = {}  # property -> examples run, for the report
INPUTS: dict[str, int] = {}  # property -> hostile values tried


@pytest.fixture(scope="module", autouse=True)
def examples_report(request):
    """After the module's last test, whichever it is and whatever was selected: how many examples
    each property ran (the README quotes the total). A report, not a test: it cannot fail."""
    yield
    if TRIED:
        line = ("hypothesis examples: " + ", ".join(f"{k} {v}" for k, v in TRIED.items())
                + f"; total {sum(TRIED.values())} examples, {sum(INPUTS.values())} hostile values")
        capture = request.config.pluginmanager.get_plugin("capturemanager")
        with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
            print("\n" + line)  # to the terminal (from an xdist worker: shown with -s)


def tried(prop: str, *values) -> None:
    TRIED[prop] = TRIED.get(prop, 0) + 1
    INPUTS[prop] = INPUTS.get(prop, 0) + sum(len(v) if isinstance(v, list) else 1 for v in values)


def examples(n: int) -> settings:
    return settings(max_examples=max(1, int(n * SCALE)), deadline=None, database=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])


# ------------------------------------------------------------------ the hostile alphabet

CANARY = Path("/tmp/snapver-canary-dir")  # fixed: the strategies must name it before any fixture runs
SHELL = [f"$(touch {CANARY}/pwned)", f"`touch {CANARY}/pwned`", f"; touch {CANARY}/pwned",
         f"| touch {CANARY}/pwned", f"&& touch {CANARY}/pwned #", f"\ntouch {CANARY}/pwned\n",
         "$(reboot)", "${IFS}", "'; rm -rf / #"]
PIECES = ["..", "../", "../../", "/", "//", "\0", "\n", "\r", "\t", " ", "-", "--", "-rf", "--help",
          "*", "?", "[a]", "~", "~root", ".", "'", '"', "\\", "$HOME", "%s", "%n", "{}", "é", "名",
          "🙂", "\u202e", "\u200b", "\ufeff", "x" * 300, "y" * 5000, "release:", "@", ":", "^", "~1",
          "HEAD", "HEAD~1", "main", "refs/heads/main", "data", "models", "logs", "/etc/passwd",
          str(CANARY), f"{CANARY}/secret", ".git", "snapshots", "workspaces", "catalog.db", "0" * 40,
          "0" * 40 + ".20260101T000000.000000Z", "-c core.pager=touch"]
hostile = st.lists(
    st.one_of(st.sampled_from(PIECES), st.sampled_from(SHELL), st.text(max_size=12)),
    min_size=0, max_size=5,
).map("".join)
# argv cannot carry NUL: the CLI sample draws the rest.
hostile_arg = hostile.filter(lambda s: "\0" not in s)


# ------------------------------------------------------------------ one real lake for the module

@pytest.fixture(scope="module")
def world(btrfs_fs, tmp_path_factory):
    """A repository on a real Btrfs lake with two commits, a release, and a canary outside both."""
    root = tmp_path_factory.mktemp("bad-input")
    lake = btrfs_fs / f"lake-bad-input-{os.urandom(3).hex()}"
    lake.mkdir()
    repo = root / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "train.py").write_text("print('train')\n")
    git(repo, "add", "train.py")
    git(repo, "commit", "-q", "-m", "code")
    snapver(repo, "init", "--lake", str(lake))
    git(repo, "add", "snapver.toml")
    git(repo, "commit", "-q", "-m", "snapver")
    (repo / "models" / "m.pt").write_text("v1")
    (repo / "data" / "sub").mkdir()
    (repo / "data" / "sub" / "a.csv").write_text("a")
    git(repo, "commit", "-q", "--allow-empty", "-m", "v1")
    snapver(repo, "release", "prod")
    shutil.rmtree(CANARY, ignore_errors=True)
    CANARY.mkdir()
    (CANARY / "secret").write_text("do not copy me")
    yield {"repo": repo, "lake": lake, "head": git(repo, "rev-parse", "HEAD"),
           "commits": set(git(repo, "rev-list", "--all").split())}
    shutil.rmtree(CANARY, ignore_errors=True)


def names_under(*roots: Path, depth: int = 6) -> set[str]:
    """Every path under roots (not inside .git's object store), to depth."""
    seen = set()
    for root in roots:
        base = len(root.parts)
        for dirpath, dirnames, filenames in os.walk(root):
            if len(Path(dirpath).parts) - base >= depth:
                dirnames[:] = []
            dirnames[:] = [d for d in dirnames if d != "objects"]
            seen.update(os.path.join(dirpath, n) for n in dirnames + filenames)
    return seen


class Watch:
    """Before/after one example: the canary untouched, nothing new with a hostile name."""

    def __init__(self, world):
        self.world = world
        self.roots = (world["repo"], world["lake"], CANARY)
        self.before = names_under(*self.roots)

    def check(self) -> None:
        assert sorted(os.listdir(CANARY)) == ["secret"], "something reached the canary: a shell ran"
        assert (CANARY / "secret").read_text() == "do not copy me"
        new = names_under(*self.roots) - self.before
        bad = [p for p in new if not SAFE.fullmatch(os.path.basename(p))]
        assert not bad, f"created with a hostile name: {bad}"
        lake = str(self.world["lake"])
        stray = [p for p in new if not p.startswith((str(self.world["repo"]), lake))]
        assert not stray, f"created outside the repo and the lake: {stray}"


def _valid_volume(name: str) -> bool:
    try:
        names.check_volume(name)
        return True
    except SnapverError:
        return False


def workspace(world):
    from snapver.lake import Workspace

    return Workspace.open(world["repo"])


# ------------------------------------------------------------------ names

@examples(600)
@given(text=hostile)
def test_name_checks_pass_only_safe_names(text):
    from snapver import releases

    tried("names", text)
    for check in (names.check_volume, names.check_project, names.check_workspace,
                  names.commit_snapshot_name, releases.check_release_name):
        try:
            got = check(text)
        except SnapverError as e:
            assert "\n" not in str(e).replace(repr(text), ""), "an error is one line"
            continue
        assert got == text and SAFE.fullmatch(got) and len(got) <= 63 and not set(got) <= {"."}, \
            f"{check.__name__} passed {text!r}"
        if check is not releases.check_release_name:  # a release name is never a path
            assert "." not in got, f"{check.__name__} passed {text!r}, which a path could misread"


# ------------------------------------------------------------------ revisions, through the core

@examples(300)
@given(rev=hostile)
def test_hostile_revisions_resolve_or_fail_cleanly(world, rev):
    tried("revisions", rev)
    watch = Watch(world)
    ws = workspace(world)
    try:
        try:
            commit, snaps, _ = ws.show(rev)
        except SnapverError:
            pass
        else:
            assert commit in world["commits"], f"{rev!r} resolved to {commit}"
            for s in snaps.values():
                assert str(s.path).startswith(str(world["lake"]) + "/")
        try:
            changes = ws.diff(rev)
        except SnapverError:
            pass
        else:
            assert set(changes) <= set(ws.volumes)
    finally:
        ws.catalog.close()
    watch.check()


@examples(150)
@given(rev=st.sampled_from(["HEAD", "release:prod", "HEAD~1"]) | hostile,
       volume=st.sampled_from(["data", "models"]) | hostile)
def test_hostile_checkouts_never_leave_the_lake(world, rev, volume):
    tried("checkouts", rev, volume)
    watch = Watch(world)
    ws = workspace(world)
    try:
        try:
            result = ws.checkout(rev, [volume])
        except SnapverError:
            pass
        else:
            assert set(result.target) == {volume} and volume in ws.volumes
    finally:
        ws.catalog.close()
    watch.check()
    assert (world["repo"] / "models").resolve().is_relative_to(world["lake"])


# ------------------------------------------------------------------ paths

@examples(300)
@given(path=st.sampled_from(["models/m.pt", "data/sub", "data/sub/a.csv"]) | hostile
       | st.lists(st.sampled_from(["..", "data", "models", "sub", "a.csv", "m.pt", ".", "", str(CANARY),
                                   "secret", "etc", "passwd", "/"]), max_size=8).map("/".join))
def test_hostile_restore_paths_stay_inside_the_volume(world, path):
    tried("restore paths", path)
    watch = Watch(world)
    ws = workspace(world)
    try:
        try:
            dest, snap = ws.restore(world["head"], path, cwd=world["repo"])
        except SnapverError:
            pass
        else:
            live = os.path.realpath(ws.live_path(snap.volume))
            assert str(dest).startswith(live + os.sep), f"{path!r} restored to {dest}"
            assert "do not copy me" not in (dest.read_text() if dest.is_file() else "")
    finally:
        ws.catalog.close()
    watch.check()


# ------------------------------------------------------------------ names given to snapver

@examples(120)
@given(name=hostile)
def test_hostile_release_and_volume_names(world, name):
    from snapver import registry, releases

    tried("release/derive names", name)
    watch = Watch(world)
    toml = (world["repo"] / "snapver.toml").read_text()
    ws = workspace(world)
    try:
        try:
            rel = releases.create_release(ws, name, "HEAD")
        except SnapverError:
            pass
        else:
            assert rel.name == name and SAFE.fullmatch(name)
            releases.remove_release(ws, name)
        if not _valid_volume(name):  # a valid new volume is test_registry's business
            with pytest.raises(SnapverError):
                registry.derive(ws, "models@HEAD", name)
    finally:
        ws.catalog.close()
        assert (world["repo"] / "snapver.toml").read_text() == toml
    watch.check()


@examples(100)
@given(message=hostile)
def test_hostile_messages_are_kept_verbatim(world, message):
    tried("messages", message)
    watch = Watch(world)
    ws = workspace(world)
    try:
        snaps = ws.snapshot(wip=True, message=message)
        rows = ws.catalog.snapshot_rows(ws.project)
        assert all(rows[(s.volume, s.name)]["message"] == message for s in snaps)
        for s in snaps:  # keep the lake small for the other properties
            ws.backend.destroy(s)
            ws.catalog.forget_snapshot(ws.project, s.volume, s.name)
    finally:
        ws.catalog.close()
    watch.check()


# ------------------------------------------------------------------ config values

def toml_string(s: str) -> str:
    return json.dumps(s, ensure_ascii=False)  # a JSON string without surrogates is a TOML basic string


@examples(300)
@given(project=hostile, volume=hostile, backend=hostile, lake=hostile)
def test_hostile_snapver_toml(tmp_path_factory, project, volume, backend, lake):
    from snapver.config import Config

    tried("snapver.toml", project, volume, backend, lake)
    d = tmp_path_factory.mktemp("toml", numbered=True)
    (d / "snapver.toml").write_text(
        f"[project]\nid = {toml_string(project)}\nbackend = {toml_string(backend)}\n"
        f"volumes = [{toml_string(volume)}]\n[lake]\npath = {toml_string(lake)}\n"
    )
    try:
        config = Config.load(d)
    except SnapverError as e:
        assert str(e).startswith(str(d / "snapver.toml"))
    else:
        assert SAFE.fullmatch(config.project) and all(SAFE.fullmatch(v) for v in config.volumes)
        if backend not in ("btrfs", "zfs"):
            from snapver.backends import open_backend

            with pytest.raises(SnapverError):
                open_backend(config.backend, "/nonexistent")
    shutil.rmtree(d)


@examples(300)
@given(workspace_id=hostile, lake=hostile, backend=hostile, base=hostile)
def test_hostile_local_state(tmp_path_factory, workspace_id, lake, backend, base):
    from snapver.config import LocalState

    tried("workspace.json", workspace_id, lake, backend, base)
    d = tmp_path_factory.mktemp("state", numbered=True)
    (d / "snapver").mkdir()
    (d / "snapver" / "workspace.json").write_text(json.dumps(
        {"backend": backend, "lake": lake, "workspace": workspace_id, "volumes": {"data": {"base": base}}}))
    try:
        state = LocalState.load(d)
    except SnapverError:
        pass
    else:
        assert SAFE.fullmatch(state.workspace)
    shutil.rmtree(d)


@examples(300)
@given(key=st.sampled_from(["debounce", "max_delay", "poll_interval", "gc_interval", "socket"]),
       value=hostile, users=st.lists(hostile, max_size=3), wip=hostile)
def test_hostile_daemon_config(tmp_path_factory, key, value, users, wip):
    from snapver.daemon import DaemonConfig

    tried("snapverd.toml", value, users, wip)
    d = tmp_path_factory.mktemp("daemon", numbered=True)
    path = d / "snapverd.toml"
    path.write_text(f"{key} = {toml_string(value)}\nallow_users = [{', '.join(map(toml_string, users))}]\n"
                    f"[retention]\nwip = {toml_string(wip)}\n")
    try:
        DaemonConfig.load(path)
    except SnapverError as e:
        assert str(e).startswith(str(path))
    shutil.rmtree(d)


# ------------------------------------------------------------------ the CLI, a sample

COMMANDS = [
    lambda a, b: ["checkout", a], lambda a, b: ["show", a], lambda a, b: ["diff", a, "--json"],
    lambda a, b: ["restore", "HEAD", a], lambda a, b: ["restore", a, "models/m.pt", "--to", "restored.pt"],
    lambda a, b: ["release", a], lambda a, b: ["derive", f"models@{a}", b + "/"], lambda a, b: ["derive", a, b + "/"],
    lambda a, b: ["snapshot", "--wip", "-m", a], lambda a, b: ["path", a, b], lambda a, b: ["find", a],
    lambda a, b: ["checkout", "HEAD", "--volume", a], lambda a, b: ["log", "--metric", a],
    lambda a, b: ["compare", a, b], lambda a, b: ["lineage", "--upstream", a],
]  # derive's new volume always ends in "/": a valid name would really add a volume


@examples(40)
@given(which=st.integers(0, len(COMMANDS) - 1), a=hostile_arg, b=hostile_arg)
def test_hostile_arguments_through_the_cli(world, which, a, b):
    tried("CLI", a, b)
    watch = Watch(world)
    argv = COMMANDS[which](a, b)
    toml = (world["repo"] / "snapver.toml").read_text()
    done = subprocess.run([sys.executable, "-m", "snapver", *argv], cwd=world["repo"], env=env(),
                          capture_output=True, text=True, timeout=60)
    assert "Traceback" not in done.stderr, done.stderr
    if done.returncode != 0:
        assert len(done.stderr.strip().splitlines()) == 1 or "\n" in a + b, done.stderr
        assert done.stderr.startswith(("snapver: ", "Usage: ", "Error: ")), done.stderr
    # Undo what a valid argument legitimately made, so every example starts alike.
    if (world["repo"] / "restored.pt").exists():
        (world["repo"] / "restored.pt").unlink()
    if (world["repo"] / "snapver.toml").read_text() != toml:
        raise AssertionError(f"{argv} changed snapver.toml")
    if argv[0] == "release" and done.returncode == 0:
        snapver(world["repo"], "release", "remove", a)
    watch.check()
