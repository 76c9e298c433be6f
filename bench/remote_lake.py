#!/usr/bin/env python3
"""Benchmark: `git commit` and `git checkout` on a compute node whose lake is on a storage
server (issue 18), next to the same commands with a local lake.

The issue's budget: a commit on a node adds at most the local hook cost, one round trip
and the server's snapshot. Both set-ups use one Btrfs image on this host:

- local: a Git repository with `snapver init --lake <image>/local`;
- remote: the storage server and one node as network namespaces (tests/fixtures/netns.py:
  a veth pair, sshd with the node's key as a forced command `snapver serve --restrict`),
  the node's clone set up with `snapver init --lake ssh://... --mount`, its mount sshfs with
  the README's options.

Each round writes one small file into data/, then times `git commit` (post-commit hook:
the snapshot), `git checkout HEAD~1` and `git checkout main` (post-checkout: the lake
follows). The ssh control master is up after the first command, as it is on a node in
use (ControlPersist). Also timed: one bare round trip through that master (a request for
a project the key does not reach: the session, the server's snapver start-up, the refusal).
Medians over the rounds; results in bench/results/remote_lake.md. Needs root.

    .venv/bin/python bench/remote_lake.py [--rounds 15]
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

from common import DEFAULT_WORKDIR, SNAPVER, btrfs_image, loadavg, machine, machine_line, require_root, \
    run_dir, write_results

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests.fixtures.git import env as git_env  # noqa: E402
from tests.fixtures.netns import lab  # noqa: E402


def timed(run, argv, cwd) -> float:
    start = time.perf_counter()
    run(argv, cwd)
    return time.perf_counter() - start


def rounds(run, repo: Path, n: int) -> dict[str, list[float]]:
    got: dict[str, list[float]] = {"git commit": [], "git checkout HEAD~1": [], "git checkout main": []}
    for i in range(n):
        (repo / "data" / f"f{i}.txt").write_text(f"round {i}\n")
        got["git commit"].append(timed(run, ["git", "commit", "-q", "--allow-empty", "-m", f"r{i}"], repo))
        got["git checkout HEAD~1"].append(timed(run, ["git", "checkout", "-q", "HEAD~1"], repo))
        got["git checkout main"].append(timed(run, ["git", "checkout", "-q", "main"], repo))
    return got


def local(run_path: Path, mnt: Path, n: int) -> dict[str, list[float]]:
    repo = run_path / "local"
    repo.mkdir()

    def run(argv, cwd):
        done = subprocess.run(argv, cwd=cwd, env=git_env(), capture_output=True, text=True)
        if done.returncode:
            raise SystemExit(f"{argv}: {done.stderr}")

    run(["git", "init", "-q", "-b", "main"], repo)
    run(["git", "commit", "-q", "--allow-empty", "-m", "code"], repo)
    (mnt / "local").mkdir()
    run([SNAPVER, "init", "--lake", str(mnt / "local")], repo)
    run(["git", "add", "snapver.toml"], repo)
    run(["git", "commit", "-q", "-m", "snapver"], repo)
    return rounds(run, repo, n)


def remote(run_path: Path, mnt: Path, n: int) -> dict[str, list[float]]:
    home = run_path / "lab"
    home.mkdir()
    lake = mnt / "remote"
    lake.mkdir()
    with lab(home, nodes=1) as the_lab:
        node = the_lab.nodes[0]
        config = home / "snapverd.toml"
        config.write_text(f'[serve]\nworkspaces = "{home / "workspaces"}"\n\n[[clients]]\nkey = "node1"\n'
                          'projects = ["*"]\naccess = "read-write"\n')
        forced = f"{SNAPVER} serve --restrict --key node1 --config {config}"
        the_lab.authorize([f'command="{forced}",restrict {the_lab.public(node.key)}',
                           f"restrict {the_lab.public(node.mount_key)}"])
        repo = run_path / "node"
        subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True)
        subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "code"], cwd=repo, env=git_env(), check=True)
        view = node.mount(lake, run_path / "mnt")

        def run(argv, cwd):
            node.run(argv, cwd=cwd)

        run([SNAPVER, "init", "--lake", f"ssh://root@{node.server_ip}{lake}", "--mount", str(view)], repo)
        run(["git", "add", "snapver.toml"], repo)
        run(["git", "commit", "-q", "-m", "snapver"], repo)
        got = rounds(run, repo, n)
        # One round trip through the node's control master, as a command makes it, to a
        # workspace of a project the key does not reach: the session, the server's snapver
        # start-up and its refusal, and nothing else.
        from snapver.remotelake import attached

        argv = attached(repo).argv()
        argv[-1] = "snapver serve --workspace elsewhere/x"
        got["one round trip (refused)"] = []
        for _ in range(n):
            start = time.perf_counter()
            node.run(argv, cwd=repo, check=False, input="")
            got["one round trip (refused)"].append(time.perf_counter() - start)
        return got


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    a = parser.parse_args()
    if not require_root("remote_lake.py", "mkfs.btrfs, loop mount, network namespaces"):
        return
    with run_dir(a.workdir) as run_path, btrfs_image(run_path, 2 << 30, "lake") as mnt:
        here = local(run_path, mnt, a.rounds)
        there = remote(run_path, mnt, a.rounds)
    rows = ["| command | local lake (ms) | lake on the server (ms) | added (ms) |", "| --- | ---: | ---: | ---: |"]
    for name in there:
        mine = statistics.median(here[name]) * 1000 if name in here else None
        theirs = statistics.median(there[name]) * 1000
        rows.append(f"| {name} | {'' if mine is None else f'{mine:.0f}'} | {theirs:.0f} | "
                    f"{'' if mine is None else f'{theirs - mine:+.0f}'} |")
    m = machine()
    text = "\n".join([
        "# A lake on a storage server: git commit and checkout on a compute node", "",
        f"Medians of {a.rounds} rounds; `.venv/bin/python bench/remote_lake.py --rounds {a.rounds}`. "
        "Server and node are network namespaces on one host (veth: the network adds ~0.1 ms); "
        "the node's ssh control master is up, as on a node in use.", "",
        *rows, "", f"Machine: {machine_line(m)}; load {' '.join(loadavg())}", ""])
    write_results("remote_lake", text, {"local": here, "remote": there, "machine": m, "rounds": a.rounds})


if __name__ == "__main__":
    main()
