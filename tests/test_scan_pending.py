"""The model scan after the commit (issue 19): on real Btrfs and real Git, a Git hook does not
read a model that changed; it marks the snapshot's scan pending and a process of its own
scans it. `log` and `show` say so meanwhile, `release` scans a pending snapshot itself before
it decides (so a scan that never ran, or was killed, never lets a flagged model through), and
what the process flags, the next hook says."""

from __future__ import annotations

import os
import pickle
import time
import tomllib
from pathlib import Path


from snapver.catalog import Catalog
from tests.fixtures.git import committed, snapver, write
from tests.test_registry import btrfs_repo  # noqa: F401  (the fixture: a repository on a Btrfs lake)

# The fixtures' env() keeps the scan process from starting (tests/fixtures/git.py); "0" starts it.
START_SCAN = {"SNAPVER_TEST_NO_SCAN_PROCESS": "0"}


class Payload:
    """Unpickling this runs a shell command: what a malicious model file does."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def pending(repo: Path) -> dict[str, list[str]]:
    """{snapshot name: volumes whose scan is pending}, from `snapver log --all --json`."""
    return {e["name"]: e["scan_pending"] for e in snapver(repo, "log", "--all", "--json").json if e.get("scan_pending")}


def test_release_refuses_a_flagged_model_whose_scan_never_ran(btrfs_repo, tmp_path):
    """No scan process (as if it was killed before it stored anything): the scan stays pending,
    log and show say so, and release scans it and refuses, as when the hook scanned."""
    repo = btrfs_repo
    marker = tmp_path / "pwned"
    write(repo / "models" / "evil.pt", pickle.dumps(Payload(marker)))
    sha, said = committed(repo, "trained")
    assert "runs code" not in said, "the hook does not read a changed model"
    assert pending(repo) == {sha: ["models"]}

    assert "[scan pending: models]  trained" in snapver(repo, "log").out
    assert snapver(repo, "show", "HEAD", "--json").json["scan_pending"] == ["models"]
    assert "scan     pending for models" in snapver(repo, "show", "HEAD").out

    err = snapver(repo, "release", "prod", ok=False).err
    assert "evil.pt" in err and "--force" in err, err
    assert snapver(repo, "release", "list", "--json").json == []
    assert pending(repo) == {}, "release stored the scan it made"
    assert "scan" not in snapver(repo, "show", "HEAD").out.split("subject")[1]
    assert not marker.exists(), "no pickle was ever loaded"


def test_a_clean_pending_model_is_released_and_an_unchanged_one_is_never_pending(btrfs_repo):
    repo = btrfs_repo
    write(repo / "models" / "model.pkl", pickle.dumps({"weights": [0.5, 0.25]}))
    first, _ = committed(repo, "trained")
    assert pending(repo) == {first: ["models"]}
    assert "prod" in snapver(repo, "release", "prod").out
    # The model did not change: the hook reuses its verdict (no file read) and owes nothing.
    second, _ = committed(repo, "docs")
    assert pending(repo) == {}
    assert snapver(repo, "scan", "--json").json["models"][0]["state"] == "clean"
    assert second != first


def test_scan_pending_scans_what_is_owed_and_exits_1_if_flagged(btrfs_repo, tmp_path):
    repo = btrfs_repo
    write(repo / "models" / "evil.pkl", pickle.dumps(Payload(tmp_path / "pwned")))
    sha, _ = committed(repo, "trained")
    done = snapver(repo, "scan", "--pending", "--json", ok=False)
    assert done.code == 1 and done.json == [{"volume": "models", "snapshot": sha, "flagged": ["evil.pkl"]}]
    assert pending(repo) == {}
    assert snapver(repo, "scan", "--pending").out.startswith("scanned 0 pending snapshot(s)")


def test_the_scan_process_stores_the_verdicts_and_the_next_hook_says_what_it_flagged(btrfs_repo, tmp_path):
    """The real thing: the hook starts the scan in a session of its own and Git does not wait."""
    repo = btrfs_repo
    marker = tmp_path / "pwned"
    write(repo / "models" / "evil.pt", pickle.dumps(Payload(marker)))
    write(repo / "models" / "clean.pkl", pickle.dumps({"weights": [0.5]}))
    sha, said = committed(repo, "trained", **START_SCAN)
    assert "runs code" not in said
    # What it flags it keeps for the next hook: the file is written after the verdicts are stored,
    # and the process exits right after it (waited for, so it does not outlive the test's lake).
    notice = repo / ".git" / "snapver" / "scan-flagged"
    deadline = time.monotonic() + 120  # a deadline for a hang, not a timing assertion
    while not notice.exists():
        assert time.monotonic() < deadline, (repo / ".git" / "snapver" / "hook.log").read_text()
        time.sleep(0.2)
    assert pending(repo) == {}
    report = {f["path"]: f["state"] for f in snapver(repo, "scan", "--json", ok=False).json["models"]}
    assert report == {"clean.pkl": "clean", "evil.pt": "flagged"}

    _, said = committed(repo, "next")
    assert "1 model file(s) flagged since" in said and f"models/evil.pt (at {sha[:10]}" in said, said
    assert not notice.exists(), "said once"
    assert "flagged since" not in committed(repo, "again")[1]
    assert not marker.exists(), "no pickle was ever loaded"


def test_a_snapshot_gone_before_its_scan_is_owed_no_more(btrfs_repo, btrfs_lake):
    """gc may take a pending snapshot (an unreachable commit) before anything scanned it: the
    scan of what is owed drops it rather than fail on it every time."""
    repo = btrfs_repo
    project = tomllib.loads((repo / "snapver.toml").read_text())["project"]["id"]
    assert (btrfs_lake / "catalog.db").is_file(), "the lake's own catalog"
    c = Catalog(btrfs_lake / "catalog.db")
    c.mark_scan_pending(project, [("models", "0" * 40)], "t")
    assert c.scans_pending(project) == [("models", "0" * 40)]
    c.close()
    assert snapver(repo, "scan", "--pending", "--json").json == []
    c = Catalog(btrfs_lake / "catalog.db")
    assert c.scans_pending(project) == []
    c.close()


def scan_processes(repo: Path) -> list[int]:
    """PIDs of the scan processes a hook started in repo (scan.start_detached)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            if b"scan-pending" in argv and os.readlink(f"/proc/{pid}/cwd") == str(repo):
                found.append(int(pid))
        except OSError:
            continue  # gone meanwhile
    return found


def test_a_scan_process_killed_before_it_stored_leaves_the_scan_pending_and_release_refuses(btrfs_repo, tmp_path):
    """The scan process dies (SIGKILL, snapver/faults.py) after reading the model and before
    storing a verdict: the snapshot stays pending, and release scans it and refuses."""
    repo = btrfs_repo
    marker = tmp_path / "pwned"
    write(repo / "models" / "evil.pt", pickle.dumps(Payload(marker)))
    sha, _ = committed(repo, "trained", SNAPVER_FAULT="scan-read", **START_SCAN)
    # Popen returns once the process runs: from here it is there until it dies at the point.
    deadline = time.monotonic() + 120  # a deadline for a hang, not a timing assertion
    while scan_processes(repo):
        assert time.monotonic() < deadline, "the scan process did not end"
        time.sleep(0.2)
    log = repo / ".git" / "snapver" / "hook.log"
    assert "scan-pending" not in (log.read_text() if log.exists() else ""), "killed, not failed"
    assert pending(repo) == {sha: ["models"]}, "killed before storing: still pending"
    err = snapver(repo, "release", "prod", ok=False).err
    assert "evil.pt" in err and "--force" in err, err
    assert pending(repo) == {} and not marker.exists()
