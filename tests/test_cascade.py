"""Recipes, `snapver build` and `snapver cascade` on real Btrfs and ZFS (issue 17).

The example graph, 6 derived volumes over 3 levels, each built by a small real training
script (python3, no numpy: it is not in .venv) that computes its weights from its inputs:

    data ──> tok ─────────────┐
    data, models ──> base ──> ft-a (base, tok) ──> dist-a
                          └─> ft-b (base)      ──> dist-b
                                                   dist-b also reads tok
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from snapver import config, tomlcheck
from tests.fixtures.git import commit, disk_state, env, snapver, tree_digest, write

TRAIN = r'''
import hashlib, os, sys, time
from pathlib import Path

name, scale = sys.argv[1], float(sys.argv[2])
out = Path(os.environ["SNAPVER_OUTPUT"])
if Path(f"slow-{name}").exists():
    print("sleeping", flush=True)
    time.sleep(60)
if Path(f"fail-{name}").exists():
    print(f"training {name} diverged", flush=True)
    sys.exit(3)
total, seen = 0.0, []
for key in sorted(k for k in os.environ if k.startswith("SNAPVER_INPUT_") and not k.endswith("_SNAPSHOT")):
    root = Path(os.environ[key])
    try:  # inputs are given read-only, at their exact snapshots
        (root / "probe").write_text("x")
        print(f"input {key} is writable")
    except OSError:
        pass
    seen.append(f"{key[14:].lower()}@{os.environ[key + '_SNAPSHOT']}")
    # A built input's output is its weights; a plain one (data, models) is all its numbers.
    files = [root / "weights.txt"] if (root / "weights.txt").exists() else sorted(root.rglob("*.txt"))
    for f in files:
        total += sum(float(x) for x in f.read_text().split())
(out / "weights.txt").write_text(f"{total * scale:.6f}\n")
(out / "inputs").write_text("\n".join(seen) + "\n")
print(f"trained {name}: {total * scale:.6f}")
'''

TOML = """
[build.ft-b]
run = "python3 scripts/train.py ft-b 3"
inputs = ["base@HEAD"]

[build.dist-a]
run = "python3 scripts/train.py dist-a 0.5"
inputs = ["ft-a@HEAD"]

[build.dist-b]
run = "python3 scripts/train.py dist-b 0.25"
inputs = ["ft-b@HEAD", "tok@HEAD"]
"""

DERIVED = ["base", "tok", "ft-a", "ft-b", "dist-a", "dist-b"]


def weights(repo: Path, volume: str) -> float:
    return float((repo / volume / "weights.txt").read_text())


def graph(repo: Path) -> None:
    """The example graph: tok and base by `derive --run`, the rest from snapver.toml."""
    write(repo / "scripts" / "train.py", TRAIN)
    write(repo / "data" / "train.txt", "1 2 3\n")
    write(repo / "models" / "pretrained.txt", "10\n")
    commit(repo, "data and a pretrained model", "scripts/train.py")
    snapver(repo, "derive", "models@HEAD", "base", "--run", "python3 scripts/train.py base 2",
            "--input", "data@HEAD", "--input", "models@HEAD")
    snapver(repo, "derive", "data@HEAD", "tok", "--run", "python3 scripts/train.py tok 1")
    commit(repo, "base and tok", "snapver.toml")
    snapver(repo, "derive", "base@HEAD", "ft-a", "--run", "python3 scripts/train.py ft-a 1",
            "--input", "base@HEAD", "--input", "tok@HEAD")
    snapver(repo, "derive", "base@HEAD", "ft-b")
    commit(repo, "fine-tunes", "snapver.toml")
    snapver(repo, "derive", "ft-a@HEAD", "dist-a")
    snapver(repo, "derive", "ft-b@HEAD", "dist-b")
    with open(repo / "snapver.toml", "a") as f:
        f.write(TOML)
    commit(repo, "distillations", "snapver.toml")


def cascade(repo: Path, *args: str, ok: bool = True) -> dict[str, dict]:
    r = snapver(repo, "cascade", *args, "--json", ok=ok)
    return {n["volume"]: n for n in r.json["result"]}


def actions(nodes: dict[str, dict]) -> dict[str, str]:
    return {v: n["action"] for v, n in nodes.items()}


def expected(data: float, models: float) -> dict[str, float]:
    base = (data + models) * 2
    tok = data
    ft_a = base + tok
    ft_b = base * 3
    return {"base": base, "tok": tok, "ft-a": ft_a, "ft-b": ft_b, "dist-a": ft_a * 0.5,
            "dist-b": (ft_b + tok) * 0.25}


def test_cascade_builds_the_graph_rebuilds_exactly_downstream_and_nothing_when_unchanged(lake_repo):
    repo = lake_repo
    graph(repo)
    plan = cascade(repo, "--dry-run")
    assert list(plan) == ["base", "tok", "ft-a", "ft-b", "dist-a", "dist-b"]  # topological
    assert plan["base"]["reason"] == "never built" and plan["ft-a"]["action"] == "rebuild"
    assert not (repo / "base" / "weights.txt").exists(), "a dry run changes nothing"

    first = cascade(repo, "-j", "2")
    assert actions(first) == dict.fromkeys(DERIVED, "built")
    want = expected(6, 10)
    assert {v: weights(repo, v) for v in DERIVED} == want
    inputs = (repo / "dist-b" / "inputs").read_text().split()
    assert inputs == [f"ft_b@{first['ft-b']['result']['snapshot']}", f"tok@{first['tok']['result']['snapshot']}"]
    status = {r["volume"]: r for r in snapver(repo, "status", "--json").json}
    assert all(status[v]["stale"] is None for v in DERIVED)

    commit(repo, "built")  # a commit names the build points: nothing becomes stale by it
    assert actions(cascade(repo, "--dry-run")) == dict.fromkeys(DERIVED, "up-to-date")
    before = {v: tree_digest(repo / v) for v in DERIVED}
    assert actions(cascade(repo)) == dict.fromkeys(DERIVED, "up-to-date")
    assert {v: tree_digest(repo / v) for v in DERIVED} == before

    # A new base model: everything downstream of models is rebuilt, tok (data only) is not.
    write(repo / "models" / "pretrained.txt", "20\n")
    commit(repo, "new pretrained model")
    status = {r["volume"]: r for r in snapver(repo, "status", "--json").json}
    assert status["base"]["stale"].startswith("input models") and status["tok"]["stale"] is None
    assert "[stale: input models" in snapver(repo, "lineage").out
    plan = cascade(repo, "--dry-run")
    assert plan["tok"]["action"] == "up-to-date"
    assert plan["ft-b"]["reason"] == "upstream base is rebuilt first"
    second = cascade(repo, "-j", "2")
    assert actions(second) == {**dict.fromkeys(DERIVED, "built"), "tok": "up-to-date"}
    assert {v: weights(repo, v) for v in DERIVED} == expected(6, 20)
    assert tree_digest(repo / "tok") == before["tok"]
    # `cascade VOLUME`: what derives from it, and only if stale
    assert actions(cascade(repo, "ft-b")) == {"ft-b": "up-to-date", "dist-b": "up-to-date"}
    log = second["base"]["result"]["log"]
    assert "trained base: 52.000000" in Path(log).read_text() and "writable" not in Path(log).read_text()
    assert "/logs/snapver-builds/base/" in log and (repo / "logs" / "snapver-builds" / "base" / Path(log).name).exists()


def test_a_failing_middle_build_stops_its_subtree_and_the_sibling_goes_on(lake_repo):
    repo = lake_repo
    graph(repo)
    nodes_before = cascade(repo)
    commit(repo, "built", settle=True)
    # User errors: one line, nothing changed on disk.
    state = disk_state(repo)
    for args, said in ((["derive", "data@HEAD", "x", "--run", "a 'b"], "cannot be read"),
                       (["derive", "data@HEAD", "x", "--input", "data@HEAD"], "give its command with --run"),
                       (["derive", "data@HEAD", "x", "--run", "t", "--input", "x@HEAD"], "cannot read x itself"),
                       (["build", "data"], "data has no recipe"), (["build", "nope"], "nope has no recipe"),
                       (["cascade", "nope"], "no volume 'nope'"), (["cascade", "release:none"], "no recipe reads")):
        r = snapver(repo, *args, ok=False)
        assert said in r.err and len(r.err.strip().splitlines()) == 1 and "Traceback" not in r.err, (args, r.err)
    assert disk_state(repo) == state
    write(repo / "fail-ft-a", "")
    before = {v: tree_digest(repo / v) for v in ("ft-a", "dist-a")}
    write(repo / "models" / "pretrained.txt", "30\n")
    commit(repo, "new pretrained model")

    nodes = cascade(repo, "-j", "2", ok=False)
    assert actions(nodes) == {"base": "built", "tok": "up-to-date", "ft-a": "failed", "ft-b": "built",
                              "dist-a": "skipped", "dist-b": "built"}
    assert nodes["ft-a"]["result"]["exit_code"] == 3
    assert "training ft-a diverged" in Path(nodes["ft-a"]["result"]["log"]).read_text()
    assert {v: tree_digest(repo / v) for v in ("ft-a", "dist-a")} == before, "the failed subtree is untouched"
    assert weights(repo, "dist-b") == expected(6, 30)["dist-b"]

    history = snapver(repo, "builds", "ft-a", "--json").json
    assert history[0]["snapshot"] is None and history[0]["exit_code"] == 3
    assert history[1]["inputs"] == {"base": nodes_before["base"]["result"]["snapshot"], "tok": history[1]["inputs"]["tok"]}
    r = snapver(repo, "build", "ft-a", ok=False)
    assert r.code == 1 and "training ft-a diverged" in r.err and "exit code 3" in r.err
    assert tree_digest(repo / "ft-a") == before["ft-a"]
    assert snapver(repo, "doctor", "--json").json["clean"], "a failed build leaves no clone behind"
    os.unlink(repo / "fail-ft-a")
    assert actions(cascade(repo)) == {"base": "up-to-date", "tok": "up-to-date", "ft-a": "built",
                                      "ft-b": "up-to-date", "dist-a": "built", "dist-b": "up-to-date"}
    assert weights(repo, "dist-a") == expected(6, 30)["dist-a"]


def test_kill_9_mid_build_leaves_old_or_new_and_doctor_repair_cleans_up(lake_repo):
    repo = lake_repo
    graph(repo)
    snapver(repo, "build", "tok")
    old = tree_digest(repo / "tok")
    write(repo / "data" / "more.txt", "4\n")
    commit(repo, "more data")

    # Killed while the command runs: tok is the old build, the clone a leftover.
    write(repo / "slow-tok", "")
    proc = subprocess.Popen([sys.executable, "-m", "snapver", "build", "tok"], cwd=repo, env=env(),
                            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    while not any("sleeping" in p.read_text() for p in (repo / "logs" / "snapver-builds" / "tok").iterdir()):
        assert time.monotonic() < deadline and proc.poll() is None, "the build never started its command"
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    os.unlink(repo / "slow-tok")
    assert tree_digest(repo / "tok") == old
    report = snapver(repo, "doctor", "--json", ok=None).json
    assert any("the clone of a build that did not finish" in l for l in report["leftovers"])
    repaired = snapver(repo, "doctor", "--repair", "--json", ok=None).json
    assert repaired["clean"], repaired
    assert tree_digest(repo / "tok") == old

    # Killed after the build point was taken: before the swap, halfway through it (the worst
    # moment: on ZFS no live volume), after it. tok is old or new, and repair finishes it.
    for i, point in enumerate(("build-snapshotted", "checkout-swapped", "build-switched")):
        before = weights(repo, "tok")
        write(repo / "data" / f"more-{i}.txt", "1\n")
        commit(repo, f"more data {i}")
        new = 6 + 4 + i + 1.0  # every number in data
        r = subprocess.run([sys.executable, "-m", "snapver", "build", "tok"], cwd=repo,
                           env={**env(), "SNAPVER_FAULT": point}, capture_output=True)
        assert r.returncode == -signal.SIGKILL, (point, r.stderr)
        if (repo / "tok" / "weights.txt").exists():
            assert weights(repo, "tok") in (before, new), point
        repaired = snapver(repo, "doctor", "--repair", "--json", ok=None).json
        assert repaired["clean"], (point, repaired)
        assert any("build of tok finished" in l for l in repaired["repaired"]), (point, repaired)
        assert weights(repo, "tok") == new, point
        assert snapver(repo, "builds", "tok", "--json").json[0]["snapshot"], "the build is recorded"
    assert actions(cascade(repo, "tok")) == {"tok": "up-to-date", "ft-a": "built", "dist-a": "built",
                                             "dist-b": "built"}


# ------------------------------------------------------------------ recipes in snapver.toml (parsing only)

@pytest.mark.parametrize("text, said", [
    ('[build.x]\nrun = "true"\nimputs = ["data@HEAD"]\n', "line 3: [build.x] unknown setting(s) imputs"),
    ('[build.x]\ninputs = ["data@HEAD"]\n', "[build.x] has no run"),
    ('[build.x]\nrun = "a \'b"\n', "line 2: [build.x] run"),
    ('[build.x]\nrun = "t"\ninputs = ["data"]\n', "line 3: [build.x] inputs: 'data': give VOLUME@REV"),
    ('[build.x]\nrun = "t"\ninputs = ["x@HEAD"]\n', "cannot read its own output"),
    ('[build."../x"]\nrun = "t"\n', "not a valid volume name"),
])
def test_build_tables_in_snapver_toml_are_checked(tmp_path, text, said):
    path = tmp_path / "snapver.toml"
    doc = '[project]\nid = "p"\nvolumes = ["data"]\n'
    with pytest.raises(tomlcheck.ConfigError) as e:
        tomlcheck.parse(path, doc + text, config._from_doc)
    assert said in str(e.value).replace(f"{path} line 4", "line 1").replace(f"{path} line 5", "line 2").replace(
        f"{path} line 6", "line 3") or said in str(e.value)


def test_a_valid_build_table_is_read(tmp_path):
    doc = '[project]\nid = "p"\nvolumes = ["data"]\n[build.m]\nrun = "python3 t.py"\ninputs = ["data@HEAD"]\n'
    c = tomlcheck.parse(tmp_path / "snapver.toml", doc, config._from_doc)
    assert c.builds == {"m": ("python3 t.py", ["data@HEAD"])}
    assert json.dumps(c.builds)


def test_the_daemon_never_runs_a_recipe_for_a_caller():
    """snapverd runs as root: a build over its socket would run the user's command as root."""
    from snapver import ops
    from snapver.errors import SnapverError

    for op in ("build", "cascade"):
        with pytest.raises(SnapverError, match=f"snapverd does not run {op} for a user"):
            ops.perform(None, op, {"volume": "x"}, served=True)
