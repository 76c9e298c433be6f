"""The lake the `snapver ui` tests look at (HTTP in test_webui.py, a real browser in
test_webui_browser.py), and the server run as a real process."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.fixtures.git import commit, env, git, snapver, write

ACCURACY = (0.71, 0.82, 0.93)
LR = (0.1, 0.01, 0.001)


@dataclass
class Made:
    repo: Path
    versions: list[str]  # the three commits with metrics, oldest first
    derived_from: str  # the snapshot finetune was derived from (the second)


def make_lake(repo: Path) -> Made:
    """Three commits with metrics and params, a volume derived from the second, a release
    moved twice (v1, then v2, then v3), a symlink out of the snapshot and one within it."""
    with open(repo / "snapver.toml", "a") as f:
        f.write('\n[registry]\nmetrics = ["models/metrics.json"]\nparams = ["params.yaml"]\n')
    write(repo / "data" / "train.csv", "x,y\n1,2\n")
    os.symlink("/etc", repo / "data" / "escape")
    os.symlink("train.csv", repo / "data" / "inner")
    versions = []
    for i, (acc, lr) in enumerate(zip(ACCURACY, LR)):
        write(repo / "params.yaml", f"lr: {lr}\noptimizer: adam\n")
        write(repo / "models" / "metrics.json", json.dumps({"accuracy": acc}))
        write(repo / "models" / "model.txt", f"weights {i}\n")
        write(repo / "models" / "weights.dat", os.urandom(256 * 1024))  # space for the Space page to show
        paths = ["snapver.toml", "params.yaml"]
        if i == 2:  # finetune, derived from the second, is committed with the third
            snapver(repo, "derive", f"models@{versions[1]}", "finetune", "-m", "fine-tune on set B")
        versions.append(commit(repo, f"train v{i + 1}", *paths))
    snapver(repo, "release", "prod", versions[0], "-m", "first")
    for v in versions[1:]:  # moved twice
        snapver(repo, "release", "set", "prod", v, "-m", f"serving {v[:7]}")
    return Made(repo, versions, versions[1])


@pytest.fixture
def made(lake_repo):
    """make_lake on the test's lake; the release removed afterwards, since on ZFS it is a
    `zfs hold`, which would keep the fixture from destroying the lake."""
    m = make_lake(lake_repo)
    yield m
    snapver(m.repo, "release", "remove", "prod", ok=None)


class Server:
    """`snapver ui ARGS` as a process in repo; url (with the token, if any) from what it prints."""

    def __init__(self, repo: Path, *args: str):
        self.log = repo.parent / "ui.log"  # its stderr: a failing test prints it
        with open(self.log, "w") as log:
            self.proc = subprocess.Popen([sys.executable, "-m", "snapver", "ui", "--port", "0", *args], cwd=repo,
                                         env=env(), stdout=subprocess.PIPE, stderr=log, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if " at http" not in line:
            self.stop()
            raise AssertionError(f"snapver ui did not start: {line}{self.log.read_text()}")
        self.url = line.split(" at ", 1)[1].strip()
        self.base = self.url.split("?")[0].rstrip("/")
        self.port = int(self.base.rsplit(":", 1)[1])
        self.token = self.url.split("?token=")[1] if "?token=" in self.url else None

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc) -> None:
        self.stop()
        if exc[0] is not None:
            print(f"snapver ui's stderr:\n{self.log.read_text()}")


def lake_listing(repo: Path) -> tuple:
    """What a read-only view must leave as it was: the snapshots, the releases, the lineage."""
    return (snapver(repo, "log", "--all", "--json").out, snapver(repo, "release", "list", "--json").out,
            snapver(repo, "lineage", "--json").out, git(repo, "status", "--porcelain"))


def wait_for(predicate, timeout: float = 20.0, what: str = "condition"):
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


LOSS_STEPS = (0.9, 0.5, 0.3)


def log_steps(repo: Path) -> list[str]:
    """Three wip snapshots on HEAD with a loss each, through the Python API (as training code
    records its steps): the per-step history of the run on HEAD. Their names, oldest first."""
    code = ("import json, sys, snapver\n"
            "print(json.dumps([snapver.snapshot(metrics={'loss': float(x)})['models'] for x in sys.argv[1:]]))\n")
    done = subprocess.run([sys.executable, "-c", code, *map(str, LOSS_STEPS)], cwd=repo, env=env(),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)
