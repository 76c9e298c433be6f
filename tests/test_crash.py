"""Crash safety on real Btrfs and ZFS: the process killed at every step of checkout, gc and derive,
then what ZFS itself promises: every committed snapshot is still there, each live volume is the
old or the new version byte for byte, and `snapver doctor --repair` makes the workspace clean.

Also the workspace lock between real processes, and a full filesystem at the CLI.
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

from tests.fixtures.btrfs import btrfs_image
from tests.fixtures.git import Lake, Result, env, git, snapver, tree_digest
from tests.fixtures.zfs import zfs_file_pool

VOLUMES = ("data", "models", "logs")


def run(cwd: Path, *args: str, fault: str | None = None, extra: dict | None = None) -> Result:
    """The CLI as a process, optionally with a crash point; never asserts its exit."""
    e = {**env(), **(extra or {})}
    if fault:
        e["SNAPVER_FAULT"] = fault
    done = subprocess.run([sys.executable, "-m", "snapver", *args], cwd=cwd, env=e,
                          capture_output=True, text=True, timeout=180)
    return Result(done.returncode, done.stdout, done.stderr)


def commit(repo: Path, tag: str, files: dict[str, str]) -> str:
    for rel, text in files.items():
        (repo / rel).parent.mkdir(parents=True, exist_ok=True)
        (repo / rel).write_text(text)
    (repo / "train.py").write_text(f"print({tag!r})\n")
    git(repo, "commit", "-q", "-am", tag)
    return git(repo, "rev-parse", "HEAD")


def snapshots(repo: Path) -> dict[tuple[str, str], dict]:
    """Every snapshot on the filesystem (log reads the filesystem), with its files' digests."""
    done = run(repo, "log", "--all", "--json")
    assert done.code == 0, done.err
    entries = done.per_volume
    return {(e["volume"], e["name"]): tree_digest(Path(e["path"])) for e in entries}


def committed(snaps: dict) -> dict:
    return {k: v for k, v in snaps.items() if "." not in k[1]}


def live(repo: Path) -> dict[str, dict]:
    return {v: tree_digest(repo / v) for v in VOLUMES}


def history(repo: Path) -> tuple[str, str]:
    a = commit(repo, "A", {"data/set.csv": "a,1\n", "models/m.pt": "model A", "logs/run.log": "run A"})
    b = commit(repo, "B", {"data/set.csv": "a,1\nb,2\n", "models/m.pt": "model B", "logs/run.log": "run B"})
    return a, b


def assert_doctor_repairs(repo: Path) -> dict:
    """doctor finds something and exits 1; --repair leaves it clean; doctor agrees."""
    found = run(repo, "doctor", "--json")
    assert found.code == 1, found.out + found.err
    status = run(repo, "status")
    assert "snapver doctor" in status.err, "a command that finds an interrupted operation says so"
    fixed = run(repo, "doctor", "--repair", "--json")
    assert fixed.code == 0, fixed.out + fixed.err
    assert json.loads(fixed.out)["clean"]
    again = run(repo, "doctor")
    assert again.code == 0 and "clean" in again.out and not again.err, again.out + again.err
    return json.loads(found.out)


def leftovers(lake: Lake) -> list[str]:
    """Half-made swaps on the filesystem, found without snapver."""
    if lake.backend == "btrfs":
        return [str(p) for p in lake.root.glob("*/workspaces/*/.*.incoming")]
    out = subprocess.run(["zfs", "list", "-H", "-o", "name,mountpoint", "-r", lake.spec],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    found = []
    for name, mountpoint in (line.split("\t") for line in out):
        if "/incoming/" in name and name.rsplit("/", 1)[1] in {*VOLUMES, *(f"{v}.old" for v in VOLUMES)}:
            found.append(name)
        elif "/workspaces/" in name and "/.mounts/" in mountpoint:
            link = Path(mountpoint).parent.parent / name.rsplit("/", 1)[1]
            if os.path.realpath(link) != mountpoint:
                found.append(f"{link} (does not name the live dataset {name})")
    return found


# ---------------------------------------------------------------- checkout

CHECKOUT_POINTS = [
    "checkout-begin", "checkout-kept", "checkout-cloned", "checkout-swapped", "checkout-placed",
    "checkout-switched", "checkout-swapped#2", "checkout-end",
]


@pytest.mark.parametrize("point", CHECKOUT_POINTS)
def test_checkout_killed_at_every_step(lake_repo, lake, point):
    checkout_killed(lake_repo, lake, point)


@pytest.mark.parametrize("lake", ["zfs"], indirect=True)
def test_zfs_checkout_killed_before_the_link_names_the_clone(lake_repo, lake):
    checkout_killed(lake_repo, lake, "checkout-mounted")


def checkout_killed(lake_repo: Path, lake: Lake, point: str) -> None:
    a, b = history(lake_repo)
    (lake_repo / "data" / "work.csv").write_text("unsnapshotted work")
    before = snapshots(lake_repo)
    old = live(lake_repo)
    new = {v: before[(v, a)] for v in VOLUMES}

    crashed = run(lake_repo, "checkout", a, fault=point)
    assert crashed.code == -signal.SIGKILL, f"{point} was not reached: {crashed.err}"

    after = snapshots(lake_repo)
    assert committed(after) == committed(before), "every committed snapshot is still there, unchanged"
    for v, digest in live(lake_repo).items():
        # ZFS cannot exchange two datasets, but the link names the old one until the new one
        # is mounted: never a missing volume between the renames.
        assert digest in (old[v], new[v]), f"{v} after a crash at {point} is neither old nor new"

    report = assert_doctor_repairs(lake_repo)
    assert report["interrupted"][0]["kind"] == "checkout"
    assert report["interrupted"][0]["intent"]["rev"] == a

    assert live(lake_repo) == new, "the interrupted checkout was finished"
    assert not leftovers(lake)
    assert not any(r["changed"] for r in snapver(lake_repo, "status", "--json").json)
    final = snapshots(lake_repo)
    assert committed(final) == committed(before)
    kept = [d for (v, n), d in final.items() if v == "data" and "." in n]
    assert any(d.get("work.csv") for d in kept), "the unsnapshotted work was kept in a wip snapshot"
    snapver(lake_repo, "checkout", b)  # and the workspace works as before
    assert {v: d for v, d in live(lake_repo).items()} == {v: before[(v, b)] for v in VOLUMES}


# ---------------------------------------------------------------- gc

GC_POINTS = ["gc-begin", "gc-destroyed", "gc-forgotten", "gc-destroyed#2", "gc-end"]


@pytest.mark.parametrize("point", GC_POINTS)
def test_gc_killed_at_every_step(lake_repo, lake, point):
    toml = lake_repo / "snapver.toml"
    toml.write_text(toml.read_text() + '\n[retention]\nwip = "1"\n')
    a, b = history(lake_repo)
    for i in range(3):
        (lake_repo / "logs" / "run.log").write_text(f"step {i}")
        snapver(lake_repo, "snapshot", "--wip")
    before = snapshots(lake_repo)
    plan = {(d["volume"], d["name"]) for d in snapver(lake_repo, "gc", "--dry-run", "--json").json["result"]["decisions"] if not d["keep"]}
    assert len(plan) == 6
    old = live(lake_repo)

    crashed = run(lake_repo, "gc", fault=point)
    assert crashed.code == -signal.SIGKILL, f"{point} was not reached: {crashed.err}"

    after = snapshots(lake_repo)
    assert committed(after) == committed(before)
    assert set(before) - set(after) <= plan, "nothing outside the plan was destroyed"
    assert all(after[k] == before[k] for k in after), "what is left is unchanged"
    assert live(lake_repo) == old

    report = assert_doctor_repairs(lake_repo)
    assert report["interrupted"][0]["kind"] == "gc"
    catalog = {(e["volume"], e["name"]) for e in run(lake_repo, "log", "--all", "--json").per_volume}
    assert catalog == set(after), "the catalog forgot exactly what was destroyed"
    snapver(lake_repo, "gc")
    assert set(snapshots(lake_repo)) == set(before) - plan
    assert live(lake_repo) == old


# ---------------------------------------------------------------- derive

DERIVE_POINTS = ["derive-begin", "derive-cloned", "derive-configured", "derive-recorded", "derive-end"]


@pytest.mark.parametrize("point", DERIVE_POINTS)
def test_derive_killed_at_every_step(lake_repo, lake, point):
    a, b = history(lake_repo)
    before = snapshots(lake_repo)
    old = live(lake_repo)

    crashed = run(lake_repo, "derive", f"models@{a}", "finetune", "-m", "from A", fault=point)
    assert crashed.code == -signal.SIGKILL, f"{point} was not reached: {crashed.err}"

    assert committed(snapshots(lake_repo)) == committed(before)
    assert live(lake_repo) == old

    report = assert_doctor_repairs(lake_repo)
    assert report["interrupted"][0]["kind"] == "derive"
    assert live(lake_repo) == old
    if point == "derive-begin":  # nothing had changed: nothing to finish
        assert not os.path.lexists(lake_repo / "finetune")
        snapver(lake_repo, "derive", f"models@{a}", "finetune")
    assert tree_digest(lake_repo / "finetune") == before[("models", a)]
    assert '"finetune"' in (lake_repo / "snapver.toml").read_text()
    edges = snapver(lake_repo, "lineage", "--json").json
    assert "finetune" in json.dumps(edges)
    git(lake_repo, "commit", "-q", "-am", "derived")
    head = git(lake_repo, "rev-parse", "HEAD")
    assert ("finetune", head) in snapshots(lake_repo), "the derived volume is snapshotted from now on"


# ---------------------------------------------------------------- failures that are not kills

def test_journal_refuses_to_start_on_top_of_an_interrupted_operation(lake_repo, lake):
    a, b = history(lake_repo)
    assert run(lake_repo, "checkout", a, fault="checkout-switched").code == -signal.SIGKILL
    refused = run(lake_repo, "checkout", b)
    assert refused.code == 1 and "doctor --repair" in refused.err
    assert refused.err.count("\n") <= 2 and "Traceback" not in refused.err
    # a Git checkout goes on, and its hook says why the lake stayed
    out = subprocess.run(["git", "checkout", "-q", a], cwd=lake_repo, env=env(), capture_output=True, text=True)
    assert out.returncode == 0 and "doctor" in out.stderr
    snapver(lake_repo, "doctor", "--repair")
    snapver(lake_repo, "checkout", "HEAD")
    assert live(lake_repo) == {v: snapshots(lake_repo)[(v, a)] for v in VOLUMES}


def test_doctor_repairs_from_the_filesystem_when_the_catalog_is_lost(lake_repo, lake):
    a, b = history(lake_repo)
    assert run(lake_repo, "checkout", a, fault="checkout-swapped").code == -signal.SIGKILL
    (lake.root / "catalog.db").unlink()
    for extra in ("-wal", "-shm"):
        (lake.root / f"catalog.db{extra}").unlink(missing_ok=True)
    found = run(lake_repo, "doctor", "--json")
    assert found.code == 1 and json.loads(found.out)["leftovers"], found.out
    snapver(lake_repo, "doctor", "--repair")
    assert snapver(lake_repo, "doctor").code == 0
    assert not leftovers(lake)
    snapver(lake_repo, "reindex")
    snapver(lake_repo, "checkout", a)  # the journal had it; without it, the user does it again
    assert live(lake_repo) == {v: snapshots(lake_repo)[(v, a)] for v in VOLUMES}


# ---------------------------------------------------------------- the lock, between real processes

HOLDER = """
import sys, time
from pathlib import Path
from snapver import lock
with lock.held(Path(sys.argv[1])):
    print("held", flush=True)
    time.sleep(60)
"""


def test_lock_busy_names_the_holder_and_a_killed_holder_frees_it(lake_repo):
    lock_file = lake_repo / ".git" / "snapver" / "lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(lock_file)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        started = time.monotonic()
        busy = run(lake_repo, "snapshot", "--wip", extra={"SNAPVER_LOCK_WAIT": "1"})
        waited = time.monotonic() - started
        assert busy.code == 1
        assert f"busy, held by PID {holder.pid} (python -c {lock_file})" in busy.err, busy.err
        assert 1 <= waited < 30, "the wait is bounded by SNAPVER_LOCK_WAIT"
        holder.kill()  # dies holding it: the kernel drops the flock, nothing is stale
        holder.wait()
        snapver(lake_repo, "snapshot", "--wip", "-m", "after the holder died")
    finally:
        holder.kill()
        holder.wait()


def test_lock_is_waited_for_while_its_holder_finishes(lake_repo):
    lock_file = lake_repo / ".git" / "snapver" / "lock"
    holder = subprocess.Popen([sys.executable, "-c", HOLDER.replace("60", "1.5"), str(lock_file)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        done = run(lake_repo, "snapshot", "--wip", extra={"SNAPVER_LOCK_WAIT": "20"})
        assert done.code == 0, done.err
    finally:
        holder.kill()
        holder.wait()


# ---------------------------------------------------------------- a full filesystem

@pytest.fixture(params=["btrfs", "zfs"])
def tiny_lake(request):
    """A lake of its own on a filesystem small enough to fill (not the session's)."""
    if request.param == "btrfs":
        with btrfs_image("256M") as mnt:
            yield Lake("btrfs", str(mnt), mnt)
    else:
        request.getfixturevalue("zfs_pool")  # zfs-fuse is running
        with zfs_file_pool("64M") as pool:
            subprocess.run(["zfs", "create", "-o", "atime=off", f"{pool}/lake"], check=True)
            mnt = subprocess.run(["zfs", "get", "-H", "-o", "value", "mountpoint", f"{pool}/lake"],
                                 capture_output=True, text=True, check=True).stdout.strip()
            yield Lake("zfs", f"{pool}/lake", Path(mnt))


def fill(path: Path) -> None:
    with pytest.raises(OSError) as e:
        with open(path, "wb") as f:
            for _ in range(1024):
                f.write(os.urandom(1024**2))
                f.flush()
                os.fsync(f.fileno())
    assert e.value.errno in (28, 122), e.value  # ENOSPC, EDQUOT


def one_line_about_space(r: Result) -> bool:
    return r.code != 0 and "full" in r.err and r.err.strip().count("\n") == 0 and "Traceback" not in r.err


def on_disk(lake: Lake) -> set[tuple[str, str]]:
    """Snapshot names straight from the filesystem (a full one cannot even take a catalog read)."""
    from snapver.backends import open_backend

    return {(s.volume, s.name) for s in open_backend(lake.backend, lake.spec).snapshots()}


def test_full_filesystem_fails_clearly_leaves_nothing_half_done_and_recovers(repo, tiny_lake):
    snapver(repo, "init", *tiny_lake.init_args)
    git(repo, "add", "snapver.toml")
    git(repo, "commit", "-q", "-m", "snapver")
    a, b = history(repo)
    before = snapshots(repo)
    fill(repo / "data" / "fill.bin")
    old = live(repo)
    names = first = on_disk(tiny_lake)

    snap = run(repo, "snapshot", "--wip")
    if snap.code:
        assert one_line_about_space(snap), snap.err + snap.out
        assert on_disk(tiny_lake) == names, "a failed snapshot leaves no snapshot behind"
    else:
        new = on_disk(tiny_lake) - names
        assert {v for v, _ in new} == set(VOLUMES) and len({n for _, n in new}) == 1
    names = on_disk(tiny_lake)

    co = run(repo, "checkout", a)
    print(f"full {tiny_lake.backend}: snapshot exit {snap.code} {snap.err.strip()!r}; checkout exit {co.code} {co.err.strip()!r}")
    if co.code:
        assert one_line_about_space(co), co.err
        assert live(repo) == old, "a failed checkout leaves the live volumes as they were"
        assert on_disk(tiny_lake) >= names
        assert not leftovers(tiny_lake)
    else:
        assert live(repo) == {v: before[(v, a)] for v in VOLUMES}

    # Space is freed (the file, and the wip snapshots that kept it): everything works again.
    (repo / "data" / "fill.bin").unlink(missing_ok=True)
    drop_wips(tiny_lake, first)
    snapver(repo, "reindex")
    assert run(repo, "doctor").code == 0, "nothing was left unfinished"
    snapver(repo, "checkout", a)
    assert live(repo) == {v: before[(v, a)] for v in VOLUMES}
    snapver(repo, "checkout", b)
    snapver(repo, "snapshot", "--wip")
    assert run(repo, "doctor").code == 0


def test_full_filesystem_during_a_receive_fails_clearly_leaves_nothing_and_recovers(repo, tiny_lake, request,
                                                                                    tmp_path):
    source = Lake(tiny_lake.backend, "", Path("/"))
    if tiny_lake.backend == "btrfs":
        source.spec = str(request.getfixturevalue("btrfs_lake"))
        url = f"file://{source.spec}"
    else:
        source.spec = request.getfixturevalue("zfs_lake")
        url = f"file:///{source.spec}"
    snapver(repo, "init", *source.init_args)
    git(repo, "add", "snapver.toml")
    git(repo, "commit", "-q", "-m", "snapver")
    weights = os.urandom(8 << 20)
    (repo / "data" / "weights.bin").write_bytes(weights)
    git(repo, "commit", "-q", "--allow-empty", "-m", "v1")
    v1 = git(repo, "rev-parse", "HEAD")
    b = tmp_path / "b"
    git(tmp_path, "clone", "-q", str(repo), str(b))
    snapver(b, "init", *tiny_lake.init_args)
    snapver(b, "remote", "add", "src", url)
    fill(b / "data" / "fill.bin")
    before = on_disk(tiny_lake)

    # Full to the last block: the catalog (on the same filesystem) cannot take the journal.
    pulled = run(b, "pull", "src", "-q")
    print(f"full {tiny_lake.backend}: pull exit {pulled.code} {pulled.err.strip()!r}")
    assert one_line_about_space(pulled), pulled.err + pulled.out
    assert on_disk(tiny_lake) == before, "a failed receive leaves no snapshot behind"

    # Room for the catalog and the small streams, not for the 8 MiB one: it fails mid-stream.
    filler = b / "data" / "fill.bin"
    os.truncate(filler, max(0, filler.stat().st_size - (3 << 20)))
    if tiny_lake.backend == "btrfs":
        subprocess.run(["btrfs", "filesystem", "sync", str(tiny_lake.root)], check=True)
    pulled = run(b, "pull", "src", "-q")
    print(f"nearly full {tiny_lake.backend}: pull exit {pulled.code} {pulled.err.strip()!r}")
    assert one_line_about_space(pulled), pulled.err + pulled.out
    assert ("data", v1) not in on_disk(tiny_lake)

    filler.unlink()
    # Nothing half-received is left. The journal row of the failed receive may be: a full
    # catalog could not take its deletion. The next receive closes it.
    report = json.loads(run(b, "doctor", "--json").out)
    assert report["leftovers"] == [] and {o["kind"] for o in report["interrupted"]} <= {"receive"}, report
    snapver(b, "pull", "src", "-q")
    assert run(b, "doctor").code == 0, "the receive the full filesystem stopped is closed"
    assert ("data", v1) in on_disk(tiny_lake)
    snapver(b, "checkout", "HEAD")
    assert (b / "data" / "weights.bin").read_bytes() == weights


def drop_wips(lake: Lake, keep: set) -> None:
    """Free the space the fill file holds in the wip snapshots taken since it was written."""
    from snapver.backends import open_backend

    backend = open_backend(lake.backend, lake.spec)
    for s in backend.snapshots():
        if (s.volume, s.name) not in keep:
            backend.destroy(s)
    if lake.backend == "btrfs":  # deleted subvolumes free their space once the cleaner is done
        for folder in lake.root.glob("*/workspaces/*/.trash/*"):
            for retired in folder.iterdir():
                subprocess.run(["btrfs", "subvolume", "delete", str(retired)], capture_output=True)
        subprocess.run(["btrfs", "subvolume", "sync", str(lake.root)], check=True, capture_output=True)
        subprocess.run(["btrfs", "filesystem", "sync", str(lake.root)], check=True, capture_output=True)


def test_checkout_that_fails_halfway_stays_in_the_journal_until_repaired(repo, btrfs_lake):
    """Not a kill: an error on the second volume. The first is already switched, so the
    checkout is unfinished, and doctor says so until it is repaired."""
    snapver(repo, "init", "--lake", str(btrfs_lake))
    git(repo, "add", "snapver.toml")
    git(repo, "commit", "-q", "-m", "snapver")
    a, b = history(repo)
    before = snapshots(repo)
    blocker = Path(os.readlink(repo / "models")).with_name(".models.incoming")
    blocker.mkdir()  # a plain directory where the checkout wants to put its clone
    failed = run(repo, "checkout", a)
    assert failed.code == 1 and "Traceback" not in failed.err, failed.err
    assert live(repo)["data"] == before[("data", a)] and live(repo)["models"] == before[("models", b)]
    report = run(repo, "doctor", "--json")
    assert report.code == 1
    (op,) = json.loads(report.out)["interrupted"]
    assert op["state"] == "failed" and op["error"] and [s["volume"] for s in op["steps"]] == ["data"]
    blocker.rmdir()  # what was in the way is moved away: the repair finishes the checkout
    snapver(repo, "doctor", "--repair")
    assert live(repo) == {v: before[(v, a)] for v in VOLUMES}
    assert run(repo, "doctor").code == 0
