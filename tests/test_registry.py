"""The model registry on real Btrfs and ZFS: metrics and params, find / compare, releases,
derived volumes and lineage, du, model safety, tags, provenance, the Python API."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import time
from pathlib import Path

import pytest

from snapver import registry, scan
from tests.fixtures.git import commit, committed, disk_state, env, git, snapver, write

REGISTRY_TOML = """
[registry]
metrics = ["models/metrics.json"]
params = ["params.yaml"]
"""


@pytest.fixture
def btrfs_repo(repo, btrfs_lake) -> Path:
    """For what does not depend on the filesystem: a repository on a Btrfs lake only."""
    snapver(repo, "init", "--lake", str(btrfs_lake))
    git(repo, "add", "snapver.toml")
    git(repo, "commit", "-q", "-m", "snapver")
    return repo


def configure(repo: Path, extra: str) -> None:
    with open(repo / "snapver.toml", "a") as f:
        f.write(extra)


class Payload:
    """Unpickling this runs a shell command: what a malicious model file does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


# ------------------------------------------------------------------ metrics and params

def test_metrics_and_params_per_commit_found_and_compared(lake_repo):
    repo = lake_repo
    configure(repo, REGISTRY_TOML)
    write(repo / "params.yaml", "train:\n  lr: 0.01\n  epochs: 3\noptimizer: adam\n")
    write(repo / "models" / "metrics.json", json.dumps({"accuracy": 0.81, "loss": {"val": 0.5}}))
    v1 = commit(repo, "v1", "snapver.toml", "params.yaml")
    write(repo / "params.yaml", "train:\n  lr: 0.001\n  epochs: 3\noptimizer: adam\n")
    write(repo / "models" / "metrics.json", json.dumps({"accuracy": 0.93, "loss": {"val": 0.2}}))
    write(repo / "models" / "model.pt", b"new weights")
    v2 = commit(repo, "v2", "params.yaml")

    rows = {e["name"]: e["metrics"] for e in snapver(repo, "log", "--metric", "accuracy", "--metric",
                                                       "train.lr", "--json").json}
    assert rows[v1] == {"accuracy": 0.81, "train.lr": 0.01}
    assert rows[v2] == {"accuracy": 0.93, "train.lr": 0.001}
    text = snapver(repo, "log", "--metric", "accuracy").out
    assert "0.93" in text and "0.81" in text

    found = snapver(repo, "find", "accuracy>0.9", "train.lr<0.01", "--json").json
    assert [r["name"] for r in found] == [v2]
    assert [r["name"] for r in snapver(repo, "find", "optimizer=adam", "--json").json] == [v2, v1]
    none = snapver(repo, "find", "accuracy>0.99", "--json", ok=None)
    assert none.code == 5 and none.json == [], "no match: exit 5, as documented"

    cmp = snapver(repo, "compare", v1, v2, "--json").json
    assert cmp["params"]["train.lr"] == [0.01, 0.001]
    assert cmp["metrics"]["loss.val"] == [0.5, 0.2]
    assert {c["path"] for c in cmp["changes"]["models"]} == {"metrics.json", "model.pt"}
    assert cmp["changes"]["data"] == []
    assert "* param  train.lr" in snapver(repo, "compare", v1, v2).out


def test_invalid_metrics_file_warns_and_snapshot_is_taken(btrfs_repo):
    repo = btrfs_repo
    configure(repo, '[registry]\nmetrics = ["models/metrics.json", "models/m.csv"]\nparams = ["params.yaml"]\n')
    write(repo / "models" / "metrics.json", '{"accuracy": 0.9,')
    write(repo / "models" / "m.csv", "epoch,acc\n1,0.5\n2,0.7\n")
    write(repo / "params.yaml", "lr: [0.1\n")
    sha, said = committed(repo, "broken metrics", "snapver.toml", "params.yaml")
    assert "models/metrics.json is not valid JSON" in said
    assert "params.yaml is not valid YAML" in said
    assert sha in {e["name"] for e in snapver(repo, "log", "--json").json}, "the snapshot was taken"
    # The valid CSV next to them was recorded: the last row of a per-epoch log.
    assert snapver(repo, "find", "acc>=0.7", "--json").json[0]["values"] == {"acc": 0.7}


def test_query_that_does_not_parse_says_where(btrfs_repo):
    for query, where in [("accuracy>>0.9", "character 10"), ("9acc>1", "character 1"),
                         ("acc 0.9", "character 5"), ("name>adam", "character 6")]:
        err = snapver(btrfs_repo, "find", query, ok=False).err
        assert err.startswith("snapver: query") and where in err, err
        assert len(err.strip().splitlines()) == 1


def test_values_parsing_and_flattening():
    assert registry.parse_values("m.json", b'{"a": {"b": 1, "c": [2, 3]}}') == {"a.b": 1, "a.c.0": 2, "a.c.1": 3}
    assert registry.parse_values("p.yml", b"lr: 1e-3\nname: x\n") == {"lr": "1e-3", "name": "x"}
    assert registry.parse_values("m.csv", b"name,value\nacc,0.5\nf1,0.25\n") == {"acc": 0.5, "f1": 0.25}
    for name, data in [("m.json", b"[1, 2]"), ("m.csv", b"a,b\n1\n"), ("m.yaml", b"a: [")]:
        with pytest.raises(ValueError):
            registry.parse_values(name, data)


# ------------------------------------------------------------------ releases

def test_release_protects_against_gc_and_is_a_rev(lake_repo, lake):
    repo = lake_repo
    configure(repo, '[retention]\nunreachable = "1s"\n')
    commit(repo, "keep retention", "snapver.toml")
    git(repo, "checkout", "-q", "-b", "experiment")
    write(repo / "models" / "model.pt", b"released weights")
    released = commit(repo, "released experiment")
    write(repo / "models" / "model.pt", b"other weights")
    dropped = commit(repo, "unreleased experiment")
    out = snapver(repo, "release", "prod", released, "-m", "serving").out
    assert "release prod pins" in out
    err = snapver(repo, "release", "prod", "HEAD", ok=False).err
    assert "release prod exists already" in err
    assert "not a valid release name" in snapver(repo, "release", "create", "--", "-bad", ok=False).err
    assert "not a valid release name" in snapver(repo, "release", "a/b", ok=False).err
    if lake.backend == "zfs":
        refs = subprocess.run(["zfs", "get", "-H", "-p", "-r", "userrefs", lake.spec],
                              capture_output=True, text=True, check=True).stdout
        held = [l.split("\t")[0] for l in refs.splitlines() if l.split("\t")[2] not in ("0", "-")]
        assert len(held) == 3 and all(h.endswith("@" + released) for h in held)

    git(repo, "checkout", "-q", "main")
    git(repo, "branch", "-q", "-D", "experiment")  # both experiments are now unreachable
    git(repo, "reflog", "expire", "--expire=now", "--expire-unreachable=now", "--all")  # once the reflog expires
    time.sleep(1.5)
    # The core alone, with no feature plugged into its seams (seams.py), cannot see releases:
    # its gc refuses and destroys nothing, where it would have destroyed the release.
    before = {e["name"] for e in snapver(repo, "log", "--json").json}
    alone = subprocess.run([sys.executable, "-c", "from snapver.lake import Workspace\n"
                            "from snapver.retention import Policy\n"
                            "Workspace.open('.').gc(Policy.from_config({'unreachable': '1s'}))"],
                           cwd=repo, env=env(), capture_output=True, text=True)
    assert alone.returncode != 0 and "no feature protects snapshots" in alone.stderr, alone.stderr
    assert {e["name"] for e in snapver(repo, "log", "--json").json} == before
    decisions = {(d["volume"], d["name"]): d for d in snapver(repo, "gc", "--json").json["result"]["decisions"]}
    assert all(decisions[(v, released)]["keep"] for v in ("data", "models", "logs"))
    assert decisions[("models", released)]["reason"] == "release prod"
    assert not decisions[("models", dropped)]["keep"]
    names = {e["name"] for e in snapver(repo, "log", "--json").json}
    assert released in names and dropped not in names

    served = Path(snapver(repo, "path", "release:prod", "models").out.strip())
    assert (served / "model.pt").read_bytes() == b"released weights"
    snapver(repo, "checkout", "release:prod")
    assert (repo / "models" / "model.pt").read_bytes() == b"released weights"
    assert [r["name"] for r in snapver(repo, "release", "list", "--json").json] == ["prod"]
    assert "no release 'nope'" in snapver(repo, "checkout", "release:nope", ok=False).err

    snapver(repo, "release", "remove", "prod")
    assert snapver(repo, "release", "list", "--json").json == []
    snapver(repo, "checkout", "main")
    time.sleep(1.5)
    snapver(repo, "gc")
    assert released not in {e["name"] for e in snapver(repo, "log", "--json").json}


def test_git_tag_becomes_a_release(btrfs_repo):
    repo = btrfs_repo
    write(repo / "models" / "model.pt", b"v1")
    v1 = commit(repo, "v1")
    done = subprocess.run(["git", "tag", "-a", "-m", "first", "v1.0"], cwd=repo, env=env(),
                          capture_output=True, text=True)
    assert "release v1.0 pins" in done.stderr
    rel = snapver(repo, "release", "list", "--json").json
    assert [(r["name"], r["commit"]) for r in rel] == [("v1.0", v1)]
    assert [(m["to_snapshot"], m["message"]) for m in snapver(repo, "release", "history", "v1.0", "--json").json] \
        == [(v1, "git tag v1.0")]
    subprocess.run(["git", "tag", "bad/name"], cwd=repo, env=env(), check=True, capture_output=True)
    configure(repo, "[releases]\nfrom_tags = false\n")
    git(repo, "tag", "v2.0")
    assert [r["name"] for r in snapver(repo, "release", "list", "--json").json] == ["v1.0"]


# ------------------------------------------------------------------ derive, lineage, du

def test_derive_shares_blocks_and_lineage_of_three_generations(lake_repo, lake):
    repo = lake_repo
    weights = os.urandom(4 * 1024 * 1024)
    write(repo / "models" / "base.pt", weights)
    write(repo / "data" / "train.csv", "x,y\n1,2\n")
    base = commit(repo, "base model")

    out = snapver(repo, "derive", f"models@{base[:10]}", "finetune", "-m", "fine-tune on set B").out
    assert "derived from models@" in out
    assert (repo / "finetune" / "base.pt").read_bytes() == weights
    assert '"finetune"' in (repo / "snapver.toml").read_text()
    live = next(r for v in snapver(repo, "du", "--json").json["volumes"] if v["volume"] == "finetune"
                for r in v["rows"] if r["snapshot"] is None)
    assert live["referenced"] >= len(weights)
    assert live["exclusive"] < len(weights) // 20, "a clone right after derive holds almost nothing of its own"

    write(repo / "finetune" / "head.pt", b"new head")
    gen2 = commit(repo, "fine-tuned", "snapver.toml")
    snapver(repo, "derive", "finetune@HEAD", "distilled")
    gen3 = commit(repo, "distilled", "snapver.toml")

    tree = snapver(repo, "lineage").out.splitlines()
    assert "models" in tree
    assert any(l.startswith("└── finetune  from models@" + base[:10]) and "fine-tune on set B" in l for l in tree)
    assert any(l.startswith("    └── distilled  from finetune@" + gen2[:10]) for l in tree)
    dot = snapver(repo, "lineage", "--dot").out
    assert '"models" -> "finetune"' in dot and '"finetune" -> "distilled"' in dot

    chain = snapver(repo, "lineage", "--upstream", "distilled@HEAD", "--json").json
    assert [(c["volume"], c["snapshot"]) for c in chain] == [
        ("distilled", gen3), ("finetune", gen2), ("models", base)]
    assert "data" in chain[2]["same_moment"], "the dataset version the base model came with"

    report = snapver(repo, "du", "--json").json
    assert report["saving"] > 0 and report["on_disk"] < report["full_copies"]
    rows = {(v["volume"], r["snapshot"]): r for v in report["volumes"] for r in v["rows"]}
    assert rows[("distilled", gen3)]["shared"] >= len(weights) * 0.9

    before = disk_state(repo)
    err = snapver(repo, "derive", "models@HEAD", "finetune", ok=False).err
    assert "volume finetune exists already" in err
    assert "not a valid volume name" in snapver(repo, "derive", "models@HEAD", "../x", ok=False).err
    assert "VOLUME@REV" in snapver(repo, "derive", "models", "x", ok=False).err
    assert disk_state(repo) == before


# ------------------------------------------------------------------ model safety

def test_scanner_flags_code_and_never_unpickles(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    evil, clean = tmp_path / "evil.pkl", tmp_path / "clean.pt"
    evil.write_bytes(pickle.dumps(Payload(marker)))
    clean.write_bytes(pickle.dumps({"w": [0.1, 0.2], "b": 0.3}))

    def refuse(*a, **k):
        raise AssertionError("the scan unpickled a file")

    monkeypatch.setattr(pickle, "load", refuse)
    monkeypatch.setattr(pickle, "loads", refuse)
    monkeypatch.setattr(pickle, "Unpickler", refuse)
    flagged, findings = scan.scan_file(evil)
    assert flagged and any("system" in f for f in findings), findings
    assert scan.scan_file(clean) == (False, [])
    assert not marker.exists()


def test_flagged_model_is_reported_and_not_released_without_force(btrfs_repo, tmp_path):
    repo = btrfs_repo
    marker = tmp_path / "pwned"
    write(repo / "models" / "clean.pkl", pickle.dumps({"weights": [0.5, 0.25]}))
    write(repo / "models" / "evil.pt", pickle.dumps(Payload(marker)))
    write(repo / "data" / "not-scanned.pkl", pickle.dumps(Payload(marker)))
    sha, said = committed(repo, "trained")
    assert "runs code" not in said, "a changed model is scanned after the commit (tests/test_scan_pending.py)"

    done = snapver(repo, "scan", "--json", ok=False)
    report = {f["path"]: f for f in done.json["models"]}
    assert report["evil.pt"]["flagged"] and not report["clean.pkl"]["flagged"]
    assert "data" not in done.json, "only models and derived volumes are scanned by default"
    err = snapver(repo, "release", "prod", ok=False).err
    assert "evil.pt" in err and "--force" in err
    assert snapver(repo, "release", "list", "--json").json == []
    assert "--force" in snapver(repo, "release", "prod", "--force").out
    assert not marker.exists(), "no pickle was ever loaded"

    # Each snapshot has its own result: the next one no longer holds the bad file.
    os.remove(repo / "models" / "evil.pt")
    commit(repo, "removed the bad model")
    assert snapver(repo, "scan", "--json").json == {"models": [{"path": "clean.pkl", "state": "clean", "flagged": False,
                                                                "findings": []}]}


def test_scan_can_be_turned_off(btrfs_repo):
    configure(btrfs_repo, "[scan]\non_snapshot = false\n")
    write(btrfs_repo / "models" / "evil.pkl", pickle.dumps(Payload(Path("/nonexistent/x"))))
    _, said = committed(btrfs_repo, "unscanned", "snapver.toml")
    assert "runs code" not in said
    # `snapver scan` and `release` scan what was never scanned.
    assert snapver(btrfs_repo, "scan", ok=False).code == 1


# ------------------------------------------------------------------ provenance and the Python API

def test_provenance_and_python_api(btrfs_repo):
    repo = btrfs_repo
    configure(repo, '[volumes.models]\nlicense = "Apache-2.0"\nsource = "https://example.com/base"\n')
    sha = commit(repo, "provenance", "snapver.toml")
    shown = snapver(repo, "show", "HEAD", "--json").json
    assert shown["provenance"] == {"models": {"license": "Apache-2.0", "source": "https://example.com/base"}}
    assert "license Apache-2.0" in snapver(repo, "show", "HEAD").out
    snapver(repo, "release", "prod")

    code = (
        "import json, snapver\n"
        "names = snapver.snapshot(message='epoch 3', metrics={'acc': 0.75, 'loss': {'train': 0.1}},"
        " params={'lr': 0.1})\n"
        "print(json.dumps({'names': names, 'path': str(snapver.path('models', rev='release:prod'))}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=repo, env=env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    wip = result["names"]["models"]
    assert wip.startswith(sha + ".")
    assert Path(result["path"]).name == sha
    found = snapver(repo, "find", "acc>0.5", "loss.train<0.2", "--all", "--json").json
    assert [r["name"] for r in found] == [wip]


def test_a_derived_volume_reaches_other_clones_and_old_commits_leave_it_alone(lake_repo, lake, tmp_path):
    repo = lake_repo
    write(repo / "models" / "base.pt", "base weights")
    before_derive = commit(repo, "base model")
    clone = tmp_path / "clone"
    git(tmp_path, "clone", "-q", str(repo), str(clone))
    snapver(clone, "init", *lake.init_args)

    snapver(repo, "derive", "models@HEAD", "finetune")
    write(repo / "finetune" / "head.pt", "fine-tuned head")
    commit(repo, "fine-tuned", "snapver.toml")

    said = subprocess.run(["git", "pull", "-q", "--ff-only"], cwd=clone, env=env(),
                          capture_output=True, text=True)
    assert said.returncode == 0, said.stderr
    assert (clone / "finetune" / "head.pt").read_text() == "fine-tuned head"
    assert (clone / "finetune").resolve() != (repo / "finetune").resolve(), "the clone's own copy"
    assert git(clone, "status", "--porcelain") == "", "the new volume is kept out of Git"

    # An explicit checkout of a commit from before the derive leaves the new volume alone.
    out = snapver(repo, "checkout", before_derive)
    assert "finetune did not exist" in out.err
    assert (repo / "models" / "base.pt").read_text() == "base weights"
    assert (repo / "finetune" / "head.pt").read_text() == "fine-tuned head"
