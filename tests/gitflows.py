"""Helpers for the model-based test of Git flows (tests/test_git_flows_model.py).

A World is one project on one lake: clone A (where `snapver init` ran first), clone B
(`git clone` of A that joined with `snapver init`) and a linked worktree W of A, hooks
installed everywhere. Commands run as real processes (git with the hooks, the snapver CLI);
every command and what the hooks said is logged, so a failing sequence reads as a shell
session. Nothing here knows what snapver should do: that is the oracle in the test.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from tests.fixtures.git import env

VOLUMES = ("data", "models", "logs")
KEPT = re.compile(r"kept unsnapshotted changes as (\S+)")

# Installed as the post-rewrite hook snapver chains to (<hook>.pre-snapver, run first with the
# same input): Git's own list of rewritten commits, "<old> <new>" per line, for the oracle.
RECORDER = """#!/bin/sh
[ -n "$MODEL_REWRITES" ] || exit 0
while read -r old new rest; do echo "$1 $old $new" >> "$MODEL_REWRITES"; done
exit 0
"""

# GIT_SEQUENCE_EDITOR for `rebase -i`: MODEL_TODO=squash turns every pick after the first into
# a squash; MODEL_TODO=edit stops at the first pick.
SEQUENCE_EDITOR = """import os, sys
path, mode = sys.argv[1], os.environ["MODEL_TODO"]
lines, seen = open(path).read().splitlines(), 0
for i, line in enumerate(lines):
    if line.startswith("pick "):
        if mode == "squash" and seen:
            lines[i] = "squash " + line[5:]
        if mode == "edit" and not seen:
            lines[i] = "edit " + line[5:]
        seen += 1
open(path, "w").write("\\n".join(lines) + "\\n")
"""


class Done:
    def __init__(self, code: int, out: str, err: str):
        self.code, self.out, self.err = code, out, err

    @property
    def ok(self) -> bool:
        return self.code == 0

    @property
    def kept(self) -> list[str]:
        return KEPT.findall(self.err)


def read_tree(root: Path) -> dict[str, str]:
    """Every file under root (relative path -> text); a missing root reads as None-free {}."""
    files = {}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in filenames:
            path = os.path.join(dirpath, name)
            with open(path, errors="replace") as f:
                files[os.path.relpath(path, root)] = f.read()
    return files


class World:
    """One project on one lake: clones A and B and worktree W, with a log of every command."""

    def __init__(self, lake_spec: list[str], log):
        self.lake_args = lake_spec
        self.log = log  # called with each line of the session transcript
        self.home = Path(tempfile.mkdtemp(prefix="snapver-model-"))
        self.paths = {"A": self.home / "A", "B": self.home / "B", "W": self.home / "W"}
        self.editor = self.home / "sequence_editor.py"
        self.editor.write_text(SEQUENCE_EDITOR)
        self.rewrites = self.home / "rewrites"
        self.moves = 0
        self.last_run = 0.0  # time.monotonic() when the last command ended

    # ------------------------------------------------------------ running things
    def run(self, who: str, argv: list[str], extra: dict | None = None, quiet: bool = False) -> Done:
        e = {**env(), "MODEL_REWRITES": str(self.rewrites), "GIT_EDITOR": "true", **(extra or {})}
        done = subprocess.run(argv, cwd=self.paths[who], env=e, capture_output=True, text=True, timeout=120)
        result = Done(done.returncode, done.stdout, done.stderr)
        self.last_run = time.monotonic()
        if not quiet:
            shown = " ".join(argv if argv[0] == "git" else ["snapver", *argv[3:]])
            flags = " ".join(f"{k}={v}" for k, v in (extra or {}).items() if k != "GIT_SEQUENCE_EDITOR")
            self.log(f"[{who}] {flags + ' ' if flags else ''}{shown}  -> {result.code}")
            for line in (result.err + result.out).splitlines():
                if line.startswith("snapver:") or (result.code and line.strip()):
                    self.log(f"      {line}")
        return result

    def git(self, who: str, *args: str, **extra: str) -> Done:
        return self.run(who, ["git", *args], extra)

    def snapver(self, who: str, *args: str, quiet: bool = False) -> Done:
        return self.run(who, [sys.executable, "-m", "snapver", *args], quiet=quiet)

    def must(self, done: Done) -> Done:
        assert done.ok, f"set-up step failed: {done.err}{done.out}"
        return done

    def rev(self, who: str, rev: str = "HEAD") -> str | None:
        done = self.run(who, ["git", "rev-parse", "-q", "--verify", rev + "^{commit}"], quiet=True)
        return done.out.strip() if done.ok else None

    def lines(self, who: str, *args: str) -> list[str]:
        return self.run(who, ["git", *args], quiet=True).out.split()

    def take_rewrites(self) -> list[tuple[str, str, str]]:
        """(why, old, new) that Git reported to post-rewrite since the last call."""
        if not self.rewrites.exists():
            return []
        pairs = [tuple(line.split()[:3]) for line in self.rewrites.read_text().splitlines() if line.strip()]
        self.rewrites.unlink()
        return pairs

    def snapshots(self) -> dict[tuple[str, str], Path]:
        """Every snapshot of the project on the filesystem, (volume, name) -> its path: what
        `snapver log --all` lists, read in this process (a CLI process per step costs 0.25 s)."""
        from snapver.lake import Workspace

        ws = Workspace.open(self.paths["A"])
        return {(s.volume, s.name): s.path for s in ws.backend.snapshots(ws.project)}

    def live(self, who: str) -> dict[str, dict[str, str]]:
        return {v: read_tree(self.paths[who] / v / ".") for v in VOLUMES}

    # ------------------------------------------------------------ set-up and tear-down
    def set_up(self) -> str:
        """Clone A with snapver.toml committed, clone B joined, worktree W: the commit ID of
        the first commit with a snapshot."""
        a = self.paths["A"]
        a.mkdir()
        self.must(self.run("A", ["git", "init", "-q", "-b", "main"], quiet=True))
        (a / "train.py").write_text("print('train')\n")
        (a / "stash.txt").write_text("stash me\n")
        self.must(self.run("A", ["git", "add", "."], quiet=True))
        self.must(self.run("A", ["git", "commit", "-q", "-m", "code, before snapver"], quiet=True))
        self.must(self.snapver("A", "init", *self.lake_args, quiet=True))
        self.recorder("A")
        # gc may then remove an unreachable commit's snapshot at once (the default waits 30
        # days): what it keeps is then what it decided to keep, not its grace period.
        with open(a / "snapver.toml", "a") as f:
            f.write('\n[retention]\nunreachable = "1s"\n')
        self.must(self.run("A", ["git", "add", "snapver.toml"], quiet=True))
        self.must(self.run("A", ["git", "commit", "-q", "-m", "snapver"], quiet=True))
        first = self.rev("A")
        self.must(self.run("A", ["git", "clone", "-q", str(a), str(self.paths["B"])], quiet=True))
        self.must(self.snapver("B", "init", *self.lake_args, quiet=True))
        self.recorder("B")
        self.must(self.run("A", ["git", "remote", "add", "b", str(self.paths["B"])], quiet=True))
        self.must(self.run("A", ["git", "worktree", "add", "-q", "-b", "w", str(self.paths["W"])], quiet=True))
        self.log(f"set-up: A at {first[:10]} (main), B a clone of A, W a worktree of A (branch w)")
        return first

    def recorder(self, who: str) -> None:
        hooks = Path(self.run(who, ["git", "rev-parse", "--absolute-git-dir"], quiet=True).out.strip()) / "hooks"
        hook = hooks / "post-rewrite.pre-snapver"
        hook.write_text(RECORDER)
        hook.chmod(0o755)

    def daemon_config(self) -> Path:
        config = self.home / "snapverd.toml"
        lines = [f'socket = "{self.home / "snapverd.sock"}"', 'gc_interval = "off"']
        for who in ("A", "B", "W"):
            lines += ["[[workspace]]", f'path = "{self.paths[who]}"']
        config.write_text("\n".join(lines) + "\n")
        return config

    def tear_down(self) -> None:
        shutil.rmtree(self.home, ignore_errors=True)


def delete_btrfs_tree(root: Path) -> None:
    """Delete a lake directory on Btrfs with every subvolume in it (one `btrfs` process)."""
    subvolumes = []
    for dirpath, dirnames, _ in os.walk(root, topdown=False):
        for d in dirnames:
            path = os.path.join(dirpath, d)
            if not os.path.islink(path) and os.lstat(path).st_ino == 256:
                subvolumes.append(path)
    # Innermost first (topdown=False); read-only snapshots are deleted as they are.
    if subvolumes:
        subprocess.run(["btrfs", "subvolume", "delete", *subvolumes], capture_output=True)
    shutil.rmtree(root, ignore_errors=True)
