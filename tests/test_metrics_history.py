"""Metrics that last, on real Btrfs and ZFS: per-step history from the Python API outlives the
wips gc thins; `registry refresh` reads the configured files of past snapshots; find sorts,
limits and names an unknown key; compare takes N revisions; log --json is one object per version."""

from __future__ import annotations

import json
import subprocess
import sys

from tests.fixtures.git import commit, env, git, snapver, write

TRAIN = """
import json, sys, snapver
for step in range(4):
    open('models/ckpt.pt', 'w').write(f'weights {step}')
    snapver.snapshot(message=f'epoch {step}', metrics={'loss': 1.0 / (step + 1), 'eval': {'acc': 0.5 + step / 10}},
                     step=step)
print(json.dumps(snapver.log_metrics({'loss': 0.125}, step=10)))
"""


def train(repo, code: str = TRAIN, **extra) -> str:
    done = subprocess.run([sys.executable, "-c", code], cwd=repo, env={**env(), **extra}, capture_output=True,
                          text=True)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_metric_history_outlives_the_wips_gc_thins(lake_repo):
    repo = lake_repo
    with open(repo / "snapver.toml", "a") as f:
        f.write('[retention]\nwip = "1"\n')  # the schedule keeps the newest wip only
    head = commit(repo, "keep one wip", "snapver.toml")
    logged = json.loads(train(repo))
    assert logged["commit"] == head and logged["step"] == 10 and logged["keys"] == ["loss"]
    wips = [e["name"] for e in snapver(repo, "log", "--all", "--json").json if e["kind"] == "wip"]
    assert len(wips) == 4

    before = snapver(repo, "metrics", "history", "loss", "--json").json
    assert [(r["step"], r["value"]) for r in before] == [(0, 1.0), (1, 0.5), (2, 1 / 3), (3, 0.25), (10, 0.125)]
    assert {r["run"] for r in before} == {logged["run"]} and {r["commit"] for r in before} == {head}
    assert [r["snapshot"] for r in before] == sorted(wips) + [None]

    out = snapver(repo, "gc").out
    assert "thinned by the wip schedule" in out
    left = [e["name"] for e in snapver(repo, "log", "--all", "--json").json if e["kind"] == "wip"]
    assert left == [max(wips)], "gc thinned the older wips"

    after = snapver(repo, "metrics", "history", "loss", "--json").json
    assert [(r["step"], r["value"], r["snapshot"]) for r in after] == \
        [(r["step"], r["value"], r["snapshot"]) for r in before], "the history is intact"
    assert [r["snapshot_present"] for r in after] == [False, False, False, True, None]
    nested = snapver(repo, "metrics", "history", "eval.acc", "HEAD", "--json").json
    assert [(r["step"], round(r["value"], 6)) for r in nested] == [(0, 0.5), (1, 0.6), (2, 0.7), (3, 0.8)]
    text = snapver(repo, "metrics", "history", "loss").out
    assert text.count("(thinned)") == 3 and "0.125" in text
    snapver(repo, "release", "prod")
    for rev in (wips[0], "release:prod"):  # a thinned wip's name, a release: the same line
        assert len(snapver(repo, "metrics", "history", "loss", rev, "--json").json) == 5

    # A second training process is a second run: the first one's steps are not overwritten.
    train(repo, "import snapver; snapver.log_metrics({'loss': 9.0}, step=0)", SNAPVER_RUN="again")
    runs = snapver(repo, "metrics", "history", "loss", "--json").json
    assert [(r["run"], r["step"], r["value"]) for r in runs if r["step"] == 0] == \
        [(logged["run"], 0, 1.0), ("again", 0, 9.0)]
    assert [r["value"] for r in snapver(repo, "metrics", "history", "loss", "--run", "again", "--json").json] == [9.0]

    # Another commit's line has none of them; an unknown key is one line.
    write(repo / "train.py", "print('v2')\n")
    commit(repo, "v2", "train.py")
    assert snapver(repo, "metrics", "history", "loss", "HEAD", "--json").json == []
    err = snapver(repo, "metrics", "history", "accuracy", ok=False).err
    assert err.startswith("snapver: no metric history of 'accuracy'") and "loss" in err
    assert len(err.strip().splitlines()) == 1
    bad = snapver(repo, "metrics", "history", "loss", "no-such-rev", ok=False).err
    assert len(bad.strip().splitlines()) == 1 and "no-such-rev" in bad
    snapver(repo, "release", "remove", "prod")  # its ZFS hold would keep the test's lake from going


def test_bad_steps_and_runs_are_refused_before_anything_is_taken(lake_repo):
    repo = lake_repo
    before = snapver(repo, "log", "--all", "--json").json
    for call in ("snapver.snapshot(metrics={'loss': 1.0}, step=-1)", "snapver.log_metrics({'loss': 1.0}, step='x')",
                 "snapver.log_metrics({'loss': 1.0}, run='a b')", "snapver.log_metrics({}, step=1)",
                 "snapver.log_metrics({'loss': [1, object]}, step=1)"):
        done = subprocess.run([sys.executable, "-c", f"import snapver; {call}"], cwd=repo, env=env(),
                              capture_output=True, text=True)
        assert done.returncode != 0 and "snapver" in done.stderr, call
    assert snapver(repo, "log", "--all", "--json").json == before
    err = snapver(repo, "metrics", "history", "loss", ok=False).err
    assert "no metric history of 'loss'" in err


def test_registry_refresh_fills_in_the_past(lake_repo):
    repo = lake_repo
    first = git(repo, "rev-parse", "HEAD")  # before any metrics file: it must stay without values
    values = {}
    for i, (acc, lr) in enumerate([(0.5, 0.1), (0.7, 0.01)]):
        write(repo / "models" / "metrics.json", json.dumps({"acc": acc, "loss": {"val": 1 - acc}}))
        write(repo / "params.yaml", f"train:\n  lr: {lr}\n")
        values[commit(repo, f"v{i}", "params.yaml")] = (acc, lr)

    def shown() -> dict:
        rows = snapver(repo, "log", "--metric", "acc", "--metric", "train.lr", "--json").json
        return {e["name"]: (e["metrics"]["acc"], e["metrics"]["train.lr"]) for e in rows}

    assert set(shown().values()) == {(None, None)}, "no [registry] yet: nothing recorded"
    err = snapver(repo, "registry", "refresh", ok=False).err
    assert "no metric or param files are configured" in err and len(err.strip().splitlines()) == 1

    with open(repo / "snapver.toml", "a") as f:
        f.write('[registry]\nmetrics = ["models/metrics.json"]\nparams = ["params.yaml"]\n')
    write(repo / "models" / "metrics.json", json.dumps({"acc": 0.9}))
    write(repo / "params.yaml", "train:\n  lr: 0.001\n")
    values[commit(repo, "with registry", "snapver.toml", "params.yaml")] = (0.9, 0.001)

    done = snapver(repo, "registry", "refresh", "--json").json
    assert done["files"] == {"models/metrics.json": 3, "params.yaml": 3}
    now = shown()
    for sha, expected in values.items():
        assert now[sha] == expected, sha  # each from its own snapshot and commit, not from the live files
    assert now[first] == (None, None)
    found = snapver(repo, "find", "acc>0.6", "--json").json
    assert {r["name"] for r in found} == {sha for sha, (acc, _) in values.items() if acc > 0.6}
    assert "models/metrics.json: read from 3 of" in snapver(repo, "registry", "refresh").out
    assert shown() == now, "refreshing again changes nothing"


def test_find_sorts_limits_and_names_an_unknown_key_and_compare_takes_n_revisions(lake_repo):
    repo = lake_repo
    with open(repo / "snapver.toml", "a") as f:
        f.write('[registry]\nmetrics = ["models/metrics.json"]\n')
    shas = []
    for i, acc in enumerate([0.7, 0.9, 0.8]):
        write(repo / "models" / "metrics.json", json.dumps({"acc": acc, "run": f"r{i}"}))
        write(repo / "models" / f"m{i}.pt", f"weights {i}")
        shas.append(commit(repo, f"v{i}", "snapver.toml"))
    v0, v1, v2 = shas

    def names(*args: str) -> list[str]:
        return [r["name"] for r in snapver(repo, "find", *args, "--json").json]

    assert names("--sort", "acc") == [v0, v2, v1]
    assert names("--sort", "-acc") == [v1, v2, v0] == names("--sort", "acc", "--desc")
    assert names("--sort=-acc", "--limit", "2") == [v1, v2]
    assert names("acc>0.75", "--sort", "acc") == [v2, v1]
    assert names("acc>0", "--limit", "1") == [v2], "newest first without --sort"
    top = snapver(repo, "find", "run!=r1", "--sort", "-acc", "--json").json
    assert [(r["name"], r["values"]) for r in top] == [(v2, {"run": "r2", "acc": 0.8}), (v0, {"run": "r0", "acc": 0.7})]
    for args in (["accuracy>0.5"], ["acc>0.5", "--sort", "-accuracy"], ["--sort", "los"]):
        done = snapver(repo, "find", *args, ok=False)
        assert done.code == 1 and done.err.startswith("snapver: no metric or param named"), done.err
        assert "known: acc, run" in done.err and len(done.err.strip().splitlines()) == 1
    for args in (["--limit", "0", "acc>0"], ["--desc", "acc>0"], [], ["--sort", "a b"]):
        done = snapver(repo, "find", *args, ok=False)
        assert len(done.err.strip().splitlines()) == 1, done.err

    cmp = snapver(repo, "compare", v0, v1, v2, "--json").json
    assert cmp["snapshots"] == [v0, v1, v2] and cmp["metrics"]["acc"] == [0.7, 0.9, 0.8]
    assert [round(d, 6) if d is not None else d for d in cmp["deltas"]["metrics"]["acc"]] == [None, 0.2, 0.1]
    assert cmp["deltas"]["metrics"]["run"] == [None, None, None]
    assert {c["path"] for c in cmp["changes"]["models"]} == {"metrics.json", "m1.pt", "m2.pt"}, "first to last"
    text = snapver(repo, "compare", v0, v1, v2).out
    assert "* metric acc" in text and "0.9 (+0.2)" in text and "0.8 (+0.1)" in text
    two = snapver(repo, "compare", v0, v2, "--json").json
    assert two["metrics"]["acc"] == [0.7, 0.8] and {c["path"] for c in two["changes"]["models"]} == \
        {"metrics.json", "m1.pt", "m2.pt"}
    assert len(snapver(repo, "compare", v0, ok=False).err.strip().splitlines()) == 1


# What the README's table "Coming from DVC or MLflow" says, in the order a user would try it.
README_TABLE = [
    "git commit", 'snapver commit -m "new data"', "snapver checkout HEAD~1",
    "snapver remote add lab file:///mnt/other-lake", "snapver push lab", "snapver pull lab",
    "snapver log --all --metric acc --metric lr", "snapver find --all --sort -acc --limit 10", "snapver show HEAD",
    "snapver compare HEAD~1 HEAD", "snapver plots --out plots", "snapver ui", "snapver gc --dry-run", "snapver gc",
    'snapver.log_metrics({"loss": v}, step=n)', 'snapver.snapshot(params={"lr": 0.01})',
    "snapver metrics history loss --json", "snapver find 'acc>0.9'", 'snapver release set prod HEAD -m "promote"',
    "snapver path release:prod models", 'snapver.path("models", rev="release:prod")', "snapver release history prod",
]


def readme_table() -> list[str]:
    """The code spans of the right-hand column of the README's DVC / MLflow table."""
    import re
    from pathlib import Path

    text = (Path(__file__).parent.parent / "README.md").read_text()
    table = text[text.index("### Coming from DVC or MLflow"):]
    table = table[:table.index("\n## ")]
    spans = []
    for line in table.splitlines():
        if line.startswith("| ") and not line.startswith("| ---") and not line.startswith("| DVC"):
            spans += [c for c in re.findall(r"`([^`]+)`", line.split(" | ", 1)[1]) if c.startswith(("snapver", "git "))]
    return spans


def test_the_readme_table_works_as_written(repo, btrfs_lake, tmp_path):
    import shlex

    assert sorted(set(readme_table())) == sorted(set(README_TABLE)), "the test runs what the README says"
    snapver(repo, "init", "--lake", str(btrfs_lake))
    with open(repo / "snapver.toml", "a") as f:
        f.write('[registry]\nmetrics = ["models/metrics.json"]\n')
    git(repo, "add", "snapver.toml")
    for acc in (0.8, 0.95):
        write(repo / "models" / "metrics.json", json.dumps({"acc": acc, "lr": 0.01}))
        commit(repo, f"acc {acc}", "snapver.toml")
    far = btrfs_lake.parent / f"{btrfs_lake.name}-far"
    far.mkdir()
    for command in README_TABLE:
        if command == "git commit":
            write(repo / "train.py", "print('v3')\n")
            commit(repo, "v3", "train.py")
            (repo / "data" / "new.csv").write_text("1,2\n")  # only data changes next: `snapver commit`
        elif command.startswith("snapver."):
            train(repo, f"import snapver\nv, n = 0.3, 1\nprint({command})\n")
        elif command == "snapver ui":
            proc = subprocess.Popen([sys.executable, "-m", "snapver", "ui"], cwd=repo, env=env(), text=True,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE)
            try:
                assert proc.stdout is not None and proc.stdout.readline().startswith("snapver ui:"), proc.stderr
            finally:
                # SIGTERM, not Ctrl-C's SIGINT: pytest-xdist's workers ignore SIGINT, and so,
                # inheriting it, would the server (its earlier run outlived the test that way).
                proc.terminate()
                try:
                    proc.wait(60)
                finally:
                    proc.kill()
                    proc.wait()
        else:
            argv = shlex.split(command.replace("/mnt/other-lake", str(far)))
            snapver(repo, *argv[1:])  # exits 0
    assert [r["value"] for r in snapver(repo, "metrics", "history", "loss", "--json").json] == [0.3]
    assert snapver(repo, "find", "--all", "--sort", "-acc", "--limit", "10", "--json").json[0]["values"]["acc"] == 0.95
    assert (repo / "plots" / "index.html").exists()
