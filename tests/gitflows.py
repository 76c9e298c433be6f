"""Helpers for the model-based test of Git flows (tests/test_git_flows_model.py).

A World is one project on one lake: clone A (where `snapver init` ran first), clone B
(`git clone` of A that joined with `snapver init`) and a linked worktree W of A, hooks
installed everywhere, and snapverd running as a real process that watches all three. A
second lake (issue 22) on the same filesystem holds clone R, which never fetches: what A, B
and W push there is of commits R does not know. Commands run as real processes (git with the
hooks, the snapver CLI); every command and what the hooks said is logged, so a failing
sequence reads as a shell session. Nothing here knows what snapver should do: that is the
oracle in the test.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
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

    def __init__(self, lake_spec: list[str], log, far_spec: list[str] | None = None, far_url: str | None = None):
        self.lake_args = lake_spec
        self.far_args, self.far_url = far_spec, far_url  # the second lake: R's `snapver init`, a file:// URL
        self.log = log  # called with each line of the session transcript
        self.home = Path(tempfile.mkdtemp(prefix="snapver-model-"))
        self.paths = {"A": self.home / "A", "B": self.home / "B", "W": self.home / "W", "R": self.home / "R"}
        self.daemon: subprocess.Popen | None = None
        self.daemon_log = self.home / "snapverd.log"
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

    def known(self, who: str, shas: list[str]) -> list[str]:
        """Of shas, the commits who's object database has (reachable or not)."""
        done = subprocess.run(["git", "cat-file", "--batch-check=%(objectname) %(objecttype)"], cwd=self.paths[who],
                              input="".join(f"{s}\n" for s in shas), capture_output=True, text=True)
        return [line.split()[0] for line in done.stdout.splitlines() if line.endswith(" commit")]

    def snapshots(self, who: str = "A") -> dict[tuple[str, str], Path]:
        """Every snapshot of the project on who's lake, (volume, name) -> its path: what
        `snapver log --all` lists, read in this process (a CLI process per step costs 0.25 s)."""
        from snapver.lake import Workspace

        ws = Workspace.open(self.paths[who])
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
        if self.far_args:
            self.must(self.run("A", ["git", "clone", "-q", str(a), str(self.paths["R"])], quiet=True))
            self.must(self.snapver("R", "init", *self.far_args, quiet=True))
            for who in ("A", "B"):  # W shares A's .git/config
                # What `snapver remote add two URL` writes, without an interpreter start per clone.
                self.must(self.run(who, ["git", "config", "snapver-remote.two.url", self.far_url], quiet=True))
            self.log(f"set-up: R a clone of A on the second lake ({self.far_url}, remote `two` of A, B, W); "
                     "R never fetches")
        return first

    def recorder(self, who: str) -> None:
        hooks = Path(self.run(who, ["git", "rev-parse", "--absolute-git-dir"], quiet=True).out.strip()) / "hooks"
        hook = hooks / "post-rewrite.pre-snapver"
        hook.write_text(RECORDER)
        hook.chmod(0o755)

    def daemon_config(self, gone: tuple[str, ...] = ()) -> Path:
        config = self.home / "snapverd.toml"
        # Short times, so that it takes wips, follows HEADs and deletes what checkouts swapped
        # out (its idle reap, racing the next checkout and gc) while the sequence runs.
        lines = [f'socket = "{self.home / "snapverd.sock"}"', 'gc_interval = "off"', 'debounce = "1s"',
                 'max_delay = "2s"', 'poll_interval = "1s"', 'reap_after = "2s"']
        for who in ("A", "B", "W"):
            if who not in gone:
                lines += ["[[workspace]]", f'path = "{self.paths[who]}"']
        config.write_text("\n".join(lines) + "\n")
        return config

    def reload_daemon(self, gone: tuple[str, ...] = ()) -> None:
        """A clone moved or deleted: its new path (or none) in the config, and SIGHUP, as an admin would."""
        self.daemon_config(gone)
        if self.daemon is not None and self.daemon.poll() is None:
            # Not before it is up: until it has its handler a SIGHUP ends it (systemd, too,
            # reloads a Type=notify service only once it said READY).
            self.wait_for_daemon()
            self.daemon.send_signal(signal.SIGHUP)
            self.log("kill -HUP snapverd  (config: " + ", ".join(
                f"{w} at {self.paths[w].name}" for w in ("A", "B", "W") if w not in gone) + ")")

    def start_daemon(self) -> None:
        """snapverd for A, B and W, as a real process. Not waited for: it comes up during the
        first step (a sequence is short, and waiting would cost every sequence a second);
        daemon_trouble() says if it died, whenever that was."""
        config = self.daemon_config()
        with open(self.daemon_log, "ab") as log:
            self.daemon = subprocess.Popen([sys.executable, "-m", "snapver", "daemon", "--config", str(config)],
                                           cwd=self.home, env={**env(), "SNAPVER_SOCKET": str(self.home / "snapverd.sock")},
                                           stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
        self.log(f"set-up: snapverd watching A, B, W (debounce 1s, max_delay 2s, poll 1s, reap_after 2s), pid {self.daemon.pid}")

    def wait_for_daemon(self, timeout: float = 120) -> None:
        """Until snapverd answers on its socket (or has died: daemon_trouble says so)."""
        from snapver import client

        deadline = time.monotonic() + timeout
        while self.daemon.poll() is None and time.monotonic() < deadline:
            try:
                client.request({"op": "daemon-status"}, path=self.home / "snapverd.sock", timeout=2)
                return
            except (client.Unavailable, OSError):
                time.sleep(0.05)

    def daemon_trouble(self) -> str | None:
        """None while snapverd runs; else its exit code and the end of what it wrote."""
        if self.daemon is None or self.daemon.poll() is None:
            return None
        text = self.daemon_log.read_text(errors="replace") if self.daemon_log.exists() else ""
        return f"snapverd exited with {self.daemon.returncode}; its log ends:\n{text[-3000:]}"

    def daemon_said(self, what: str) -> int:
        """How many lines of snapverd's log say `what` (to count the wips it took)."""
        try:
            return sum(what in line for line in self.daemon_log.read_text(errors="replace").splitlines())
        except OSError:
            return 0

    def stop_daemon(self) -> None:
        """SIGTERM (it finishes the jobs in flight), then SIGKILL if it hangs; always waited for,
        so that nothing of it still writes to a lake that is about to be removed."""
        if self.daemon is None:
            return
        if self.daemon.poll() is None:
            self.daemon.send_signal(signal.SIGTERM)
            try:
                self.daemon.wait(60)
            except subprocess.TimeoutExpired:
                self.daemon.kill()
                self.daemon.wait()

    def tear_down(self) -> None:
        self.stop_daemon()
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
