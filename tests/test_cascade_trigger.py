"""snapverd starts cascades by itself ([cascade] on_release / on_commit), as a real process on
Btrfs and zfs-fuse, in a working tree owned by `nobody`: the builds run as that owner.

    models@release:base ──> ft ──> dist (reads ft@HEAD and data@HEAD)
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

from snapver import config, tomlcheck
from tests.fixtures.daemon import NOBODY, Snapverd, give_to_nobody, wait_for
from tests.fixtures.git import env, write
from tests.test_cascade import TRAIN

WAIT = 90  # seconds for a cascade (two python3 builds) on a starved machine


def as_root(repo: Path) -> dict[str, str]:
    """Root acting in nobody's repository (as an admin would), Git told it is safe."""
    return {**env(), "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "safe.directory", "GIT_CONFIG_VALUE_0": str(repo)}


def run(repo: Path, *argv: str) -> str:
    done = subprocess.run(list(argv), cwd=repo, env=as_root(repo), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, f"{' '.join(argv)}: {done.stderr}{done.stdout}"
    return done.stdout


def snapver(repo: Path, *args: str):
    return run(repo, sys.executable, "-m", "snapver", *args)


def commit(repo: Path, message: str, *paths: str) -> None:
    if paths:
        run(repo, "git", "add", *paths)
    run(repo, "git", "commit", "-q", "--allow-empty", "-m", message)  # its hook snapshots, as root
    give_to_nobody(repo)  # what root wrote there is the owner's again


def unrelease(repo: Path) -> None:
    """A ZFS hold keeps a released snapshot, and so the test's lake, from being destroyed."""
    for r in json.loads(snapver(repo, "release", "list", "--json")):
        snapver(repo, "release", "remove", r["name"])


def weights(repo: Path, volume: str) -> float | None:
    try:
        return float((repo / volume / "weights.txt").read_text())
    except (OSError, ValueError):
        return None


def cascades(d: Snapverd, repo: Path) -> dict:
    return next(w for w in d.status() if w["workspace"] == str(repo))["cascade"]


def test_snapverd_cascades_on_a_release_move_and_on_commit_as_the_trees_owner(nobody_repo, daemon_dir):
    repo = nobody_repo
    write(repo / "scripts" / "train.py", TRAIN)
    write(repo / "data" / "train.txt", "1 2 3\n")
    write(repo / "models" / "pretrained.txt", "10\n")
    commit(repo, "data, a base model, the training script", "scripts/train.py")
    snapver(repo, "release", "set", "base", "HEAD")
    snapver(repo, "derive", "models@HEAD", "ft", "--run", "python3 scripts/train.py ft 2",
            "--input", "models@release:base")
    commit(repo, "a fine-tune", "snapver.toml")
    snapver(repo, "derive", "ft@HEAD", "dist", "--run", "python3 scripts/train.py dist 0.5",
            "--input", "ft@HEAD", "--input", "data@HEAD")
    commit(repo, "its distillation", "snapver.toml")

    d = Snapverd(daemon_dir, [repo]).start()
    try:
        # Off by default: without [cascade], snapverd builds nothing, however long it polls.
        time.sleep(4)
        assert weights(repo, "ft") is None and weights(repo, "dist") is None
        assert cascades(d, repo) == {"queued": [], "running": None, "last": None}

        with open(repo / "snapver.toml", "a") as f:
            f.write("\n[cascade]\non_release = true\n")
        give_to_nobody(repo)
        # The release names a snapshot ft was never built from: ft, then dist downstream.
        assert wait_for(lambda: weights(repo, "dist") == (20 + 6) * 0.5, WAIT), d.log.read_text()
        assert weights(repo, "ft") == 20
        for v in ("ft", "dist"):  # the owner's command wrote them, as the owner
            assert (repo / v / "weights.txt").stat().st_uid == NOBODY
        last = wait_for(lambda: cascades(d, repo)["last"], 10)
        assert last["state"] == "done" and "models@release:base" in last["trigger"], last
        assert [(n["volume"], n["action"]) for n in last["nodes"]] == [("ft", "built"), ("dist", "built")]
        shown = subprocess.run([sys.executable, "-m", "snapver", "daemon", "status"], capture_output=True, text=True,
                               env={**env(), "SNAPVER_SOCKET": str(d.socket)}, timeout=60).stdout
        assert "cascade last (done" in shown and "models@release:base is now" in shown, shown
        assert any(line.split()[:2] == ["dist", "built"] for line in shown.splitlines()), shown
        log = Path(last["nodes"][0]["log"])
        assert log.stat().st_uid == NOBODY and "trained ft: 20.000000" in log.read_text()

        # A new base model and the release moved to it: snapverd rebuilds the downstream.
        write(repo / "models" / "pretrained.txt", "20\n")
        commit(repo, "a better base model")
        snapver(repo, "release", "set", "base", "HEAD")
        assert wait_for(lambda: weights(repo, "dist") == (40 + 6) * 0.5, WAIT), d.log.read_text()
        assert weights(repo, "ft") == 40 and (repo / "ft" / "weights.txt").stat().st_uid == NOBODY
        built = {v for e in json.loads(snapver(repo, "log", "--all", "--json"))
                 if (e["message"] or "").startswith("build of") for v in e["volumes"]}
        assert built == {"ft", "dist"}, "the build points are in `snapver log --all`"

        # A commit of new data: dist reads data@HEAD, but only on_commit watches it.
        write(repo / "data" / "train.txt", "1 2 3 4\n")
        commit(repo, "more data")
        time.sleep(4)
        assert weights(repo, "dist") == 23
        with open(repo / "snapver.toml", "a") as f:
            f.write("on_commit = true\n")
        give_to_nobody(repo)
        assert wait_for(lambda: weights(repo, "dist") == (40 + 10) * 0.5, WAIT), d.log.read_text()
        last = wait_for(lambda: (c := cascades(d, repo)["last"]) and "data@HEAD" in c["trigger"] and c, 10)
        assert [(n["volume"], n["action"]) for n in last["nodes"]] == [("dist", "built")], last
        assert weights(repo, "ft") == 40  # not downstream of data

        # A build that fails is tried once per move, not again on every poll; nothing of ft changes.
        write(repo / "fail-ft", "")
        write(repo / "models" / "pretrained.txt", "30\n")
        commit(repo, "a base model that diverges")
        snapver(repo, "release", "set", "base", "HEAD")
        last = wait_for(lambda: (c := cascades(d, repo)["last"]) and c["state"] == "failed" and c, WAIT)
        assert [(n["volume"], n["action"]) for n in last["nodes"]] == [("ft", "failed"), ("dist", "skipped")]
        time.sleep(4)
        failures = [b for b in json.loads(snapver(repo, "builds", "ft", "--json")) if b["snapshot"] is None]
        assert len(failures) == 1 and failures[0]["exit_code"] == 3
        assert weights(repo, "ft") == 40 and cascades(d, repo)["running"] is None
        said = d.log.read_text()
        assert "Traceback" not in said, said
        assert d.stop() == 0
    finally:
        d.stop()
        unrelease(repo)


@pytest.mark.parametrize("text, said", [
    ("[cascade]\non_release = 1\n", "[cascade] on_release = 1 must be"),
    ("[cascade]\non_relase = true\n", "[cascade] unknown setting(s) on_relase"),
])
def test_the_cascade_table_is_checked(tmp_path, text, said):
    doc = '[project]\nid = "p"\nvolumes = ["data"]\n'
    with pytest.raises(tomlcheck.ConfigError, match=None) as e:
        tomlcheck.parse(tmp_path / "snapver.toml", doc + text, config._from_doc)
    assert said in str(e.value)


def test_the_cascade_table_is_off_unless_asked(tmp_path):
    doc = '[project]\nid = "p"\nvolumes = ["data"]\n'
    assert config.CascadeSettings() == tomlcheck.parse(tmp_path / "s.toml", doc, config._from_doc).cascade
    on = tomlcheck.parse(tmp_path / "s.toml", doc + "[cascade]\non_release = true\n", config._from_doc).cascade
    assert on.on_release and not on.on_commit
