"""Issue 14, items 6, 7, 8, 13, 14 on Btrfs and zfs-fuse: a commit snapshot is all or none under
SIGKILL, the post-commit hook snapshots the commit it fired for, a killed restore leaves nothing
doctor cannot clean, a full filesystem and a vanished lake are one line each.
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
from tests.fixtures.pause import paused, stopped
from tests.fixtures.zfs import zfs_file_pool

VOLUMES = ("data", "models", "logs")


def run(cwd: Path, *args: str, **extra) -> Result:
    done = subprocess.run([sys.executable, "-m", "snapver", *args], cwd=cwd, env={**env(), **extra},
                          capture_output=True, text=True, timeout=180)
    return Result(done.returncode, done.stdout, done.stderr)


def git_commit(repo: Path, message: str, **extra) -> subprocess.CompletedProcess:
    (repo / "train.py").write_text(f"print({message!r})\n")
    done = subprocess.run(["git", "commit", "-q", "-am", message], cwd=repo, env={**env(), **extra},
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    return done


def write(repo: Path, tag: str) -> None:
    for v in VOLUMES:
        (repo / v / "f.txt").write_text(f"{v} {tag}\n")


def on_disk(repo: Path) -> dict[tuple[str, str], dict]:
    entries = run(repo, "log", "--all", "--json").per_volume
    return {(e["volume"], e["name"]): tree_digest(Path(e["path"])) for e in entries}


def by_filesystem(lake, name: str) -> set[str]:
    """The volumes that have a snapshot `name`, asked of the filesystem, not of snapver."""
    from snapver.backends import open_backend

    return {s.volume for s in open_backend(lake.backend, lake.spec).snapshots() if s.name == name}


# ---------------------------------------------------------------- item 7: all or none

def cut_commit(repo: Path) -> tuple[str, dict]:
    write(repo, "A")
    git_commit(repo, "A")
    write(repo, "B")
    live = {v: tree_digest(repo / v) for v in VOLUMES}
    hook = git_commit(repo, "B", SNAPVER_FAULT="snapshot-volume#1")  # the hook is SIGKILLed
    assert "snapshot" not in hook.stderr.replace("snapver: warning", ""), hook.stderr
    return git(repo, "rev-parse", "HEAD"), live


def test_commit_snapshot_cut_between_volumes_is_reported_and_finished_by_doctor(lake_repo, lake):
    sha, live = cut_commit(lake_repo)
    taken = by_filesystem(lake, sha)
    # Btrfs snapshots one volume at a time; zfs-fuse takes the set with `zfs snapshot -r` in one
    # transaction group, so the kill finds it whole but unrecorded.
    assert taken == ({"data"} if lake.backend == "btrfs" else set(VOLUMES)), taken
    found = run(lake_repo, "doctor", "--json")
    assert found.code == 1 and "nothing interrupted" not in found.out
    (op,) = json.loads(found.out)["interrupted"]
    assert op["kind"] == "snapshot" and op["intent"]["name"] == sha and op["intent"]["volumes"] == list(VOLUMES)
    assert "snapshot #" in run(lake_repo, "status").err, "a command that finds it says so"

    fixed = run(lake_repo, "doctor", "--repair")
    assert fixed.code == 0 and f"snapshot {sha[:10]} finished" in fixed.out, fixed.out + fixed.err
    assert by_filesystem(lake, sha) == set(VOLUMES)
    snaps = on_disk(lake_repo)
    assert {v: snaps[(v, sha)] for v in VOLUMES} == live, "the set is the data of the commit"
    assert run(lake_repo, "show", "HEAD").code == 0
    snapver(lake_repo, "checkout", "HEAD~1")
    snapver(lake_repo, "checkout", sha)
    assert {v: tree_digest(lake_repo / v) for v in VOLUMES} == live
    assert run(lake_repo, "doctor").code == 0


def test_commit_snapshot_cut_is_finished_by_the_next_command(lake_repo, lake):
    sha, live = cut_commit(lake_repo)
    done = run(lake_repo, "snapshot")
    assert done.code == 0, done.err
    assert "already has" not in done.err + done.out
    assert f"snapshot {sha[:10]} finished" in done.err, done.err  # said once, as a warning line
    assert by_filesystem(lake, sha) == set(VOLUMES)
    assert {v: on_disk(lake_repo)[(v, sha)] for v in VOLUMES} == live
    assert run(lake_repo, "doctor").code == 0


def test_commit_snapshot_cut_then_changed_is_undone_without_touching_live_data(lake_repo, lake):
    sha, _ = cut_commit(lake_repo)
    (lake_repo / "models" / "f.txt").write_text("written after the kill\n")
    live = {v: tree_digest(lake_repo / v) for v in VOLUMES}
    fixed = run(lake_repo, "doctor", "--repair")
    assert fixed.code == 0, fixed.out + fixed.err
    if lake.backend == "btrfs":
        # models changed since the kill: no snapshot of it can be of the moment data's was.
        assert f"snapshot {sha[:10]} undone" in fixed.out, fixed.out
        assert by_filesystem(lake, sha) == set()
    else:
        assert f"snapshot {sha[:10]} finished" in fixed.out, fixed.out  # the whole set was there
        assert by_filesystem(lake, sha) == set(VOLUMES)
    assert {v: tree_digest(lake_repo / v) for v in VOLUMES} == live, "the live data is never touched"
    assert run(lake_repo, "doctor").code == 0
    if lake.backend == "btrfs":
        snapver(lake_repo, "snapshot")  # the commit as it is now, whole
        assert by_filesystem(lake, sha) == set(VOLUMES)
        assert run(lake_repo, "show", "HEAD").code == 0


def cut_between_volumes(repo: Path, lake) -> tuple[str, dict]:
    """A commit whose hook is killed after its first volume, on both backends: zfs-fuse takes a whole
    workspace in one `zfs snapshot -r`, and one volume at a time when the workspace dataset
    has a child that is not a volume (here one made for the test)."""
    if lake.backend == "zfs":
        live = next(r["path"] for r in json.loads(run(repo, "status", "--json").out) if r["volume"] == "data")
        listed = subprocess.run(["zfs", "list", "-H", "-o", "name,mountpoint", "-t", "filesystem"],
                                capture_output=True, text=True, check=True).stdout.splitlines()
        dataset = next(n for n, m in (x.split("\t") for x in listed) if m == os.path.realpath(live))  # live: its link
        subprocess.run(["zfs", "create", f"{dataset.rpartition('/')[0]}/not-a-volume"], check=True)
    write(repo, "A")
    git_commit(repo, "A")
    # Only data changes: models and logs are provably unchanged since A on ZFS too (which, unlike
    # Btrfs, cannot tell a volume was not written after a moment it has no snapshot of).
    (repo / "data" / "f.txt").write_text("data B\n")
    live = {v: tree_digest(repo / v) for v in VOLUMES}
    git_commit(repo, "B", SNAPVER_FAULT="snapshot-volume#1")  # the hook is SIGKILLed
    return git(repo, "rev-parse", "HEAD"), live


def lose_catalog(lake) -> None:
    for p in lake.root.glob("catalog.db*"):  # with its -wal and -shm: the journal goes too
        p.unlink()


@pytest.mark.parametrize("after", ["nothing", "changed"])
def test_a_cut_commit_snapshot_is_found_without_the_catalog(lake_repo, lake, after):
    sha, live = cut_between_volumes(lake_repo, lake)
    assert by_filesystem(lake, sha) == {"data"}, "the kill came between volumes"
    lose_catalog(lake)
    if after == "changed":
        (lake_repo / "models" / "f.txt").write_text("written after the kill\n")
        live = {v: tree_digest(lake_repo / v) for v in VOLUMES}
    found = run(lake_repo, "doctor", "--json")
    report = json.loads(found.out)
    assert report["interrupted"] == [], "the journal went with the catalog"
    (line,) = report["half_made"]
    assert f"commit {sha[:10]} has snapshots of data but not of models, logs" in line, line

    fixed = run(lake_repo, "doctor", "--repair")
    assert {v: tree_digest(lake_repo / v) for v in VOLUMES} == live, "the live data is never touched"
    if after == "nothing":  # HEAD is the commit, nothing was written since: provably at it
        assert found.code == 1 and "--repair` finishes it" in line, found.out
        assert fixed.code == 0 and f"snapshot {sha[:10]} finished" in fixed.out, fixed.out + fixed.err
        assert by_filesystem(lake, sha) == set(VOLUMES)
        assert {v: on_disk(lake_repo)[(v, sha)] for v in VOLUMES} == live
        assert run(lake_repo, "show", "HEAD").code == 0
        assert json.loads(run(lake_repo, "doctor", "--json").out)["half_made"] == []
    else:  # models changed since the kill: no snapshot of it can be the commit's data any more
        assert found.code == 0 and "kept as it is" in line and "models changed since" in line, found.out
        assert fixed.code == 0 and "half-made: " in fixed.out and "kept as it is" in fixed.out, fixed.out
        assert by_filesystem(lake, sha) == {"data"}, "a committed snapshot is never destroyed"


# ---------------------------------------------------------------- item 8: a killed restore

@pytest.mark.parametrize("point, then", [("restore-copied", "commit"), ("restore-moved", "doctor")])
def test_restore_killed_leaves_no_temporary_copy_in_history(lake_repo, lake, point, then):
    sub = lake_repo / "data" / "sub"
    sub.mkdir()
    for i in range(20):
        (sub / f"part{i}.csv").write_text(f"A {i}\n")
    git_commit(lake_repo, "A")
    a = git(lake_repo, "rev-parse", "HEAD")
    (sub / "part0.csv").write_text("changed since A\n")
    (sub / "new.csv").write_text("new since A\n")
    mine = tree_digest(sub)

    crashed = run(lake_repo, "restore", a, "data/sub", SNAPVER_FAULT=point)
    assert crashed.code == -signal.SIGKILL, crashed.err
    assert [p.name for p in (lake_repo / "data").iterdir() if ".snapver-" in p.name], "the kill left its temp"
    found = run(lake_repo, "doctor", "--json")
    assert found.code == 1, found.out
    (op,) = json.loads(found.out)["interrupted"]
    assert op["kind"] == "restore" and Path(op["intent"]["tmp"]).name.startswith(".sub.snapver-restore-")

    if then == "doctor":
        fixed = run(lake_repo, "doctor", "--repair")
        assert fixed.code == 0 and "restore of" in fixed.out, fixed.out + fixed.err
    git_commit(lake_repo, "after")  # the hook finishes the restore first, if doctor did not
    head = git(lake_repo, "rev-parse", "HEAD")
    assert not [p for p in (lake_repo / "data").iterdir() if ".snapver-" in p.name]
    assert tree_digest(sub) == mine, "the user's folder is as it was before the killed restore"
    snap = on_disk(lake_repo)[("data", head)]
    assert not [k for k in snap if ".snapver-" in k], "the next commit took no temporary copy"
    assert run(lake_repo, "doctor").code == 0
    snapver(lake_repo, "restore", a, "data/sub")  # and restore works again
    assert (sub / "part0.csv").read_text() == "A 0\n" and not (sub / "new.csv").exists()


# ---------------------------------------------------------------- item 14: a vanished lake

@pytest.fixture
def own_lake():
    """A lake on a Btrfs of its own, which the test may unmount: (Lake, unmount, mount).

    Btrfs only: on zfs-fuse, `zfs unmount -f` of a lake's datasets while a process holds the
    catalog open left zfs-fuse itself hung (every later `zfs mount`/`zfs create` of every pool
    in D state), which no test may risk on a shared daemon. ZFS datasets are renamed and cloned
    whether or not they are mounted, so there the checkout does not even notice."""
    with btrfs_image("512M") as mnt:
        image = mnt.parent / "fs.img"
        yield (Lake("btrfs", str(mnt), mnt),
               lambda: subprocess.run(["umount", "-l", str(mnt)], check=True),
               lambda: subprocess.run(["mount", "-o", "loop,noatime,user_subvol_rm_allowed", str(image),
                                       str(mnt)], check=True))


def test_lake_unmounted_mid_checkout_is_one_line_and_doctor_recovers(repo, own_lake):
    lake, unmount, mount = own_lake
    snapver(repo, "init", *lake.init_args)
    git(repo, "add", "snapver.toml")
    git(repo, "commit", "-q", "-m", "snapver")
    write(repo, "A")
    git_commit(repo, "A")
    a = git(repo, "rev-parse", "HEAD")
    want = {v: tree_digest(repo / v) for v in VOLUMES}
    write(repo, "B")
    git_commit(repo, "B")

    with paused([sys.executable, "-m", "snapver", "checkout", a], repo, "checkout-cloned") as proc:
        unmount()
    out, err = proc.out, proc.err
    print(f"{lake.backend}: exit {proc.returncode} {err.strip()!r}")
    gone = f"the lake at {lake.root} is not there (unmounted?): mount it, then `snapver doctor --repair`"
    assert proc.returncode == 1, out + err
    assert err.strip() == f"snapver: {gone}", err
    again = run(repo, "status")  # any command, with the lake still gone: one line too
    print(f"{lake.backend}: status exit {again.code} {again.err.strip()!r}")
    assert again.code != 0 and again.err.strip().count("\n") == 0 and "Traceback" not in again.err, again.err

    mount()
    fixed = run(repo, "doctor", "--repair")
    assert fixed.code == 0, fixed.out + fixed.err
    snapver(repo, "checkout", a)
    assert {v: tree_digest(repo / v) for v in VOLUMES} == want
    assert run(repo, "doctor").code == 0


# ---------------------------------------------------------------- item 13: a full filesystem

@pytest.fixture(params=["btrfs", "zfs"])
def one_fs(request, tmp_path):
    """Repository and lake on one small filesystem, the default layout: (repo, Lake)."""
    if request.param == "btrfs":
        with btrfs_image("256M") as mnt:
            (mnt / "lake").mkdir()
            yield mnt / "repo", Lake("btrfs", str(mnt / "lake"), mnt / "lake")
    else:
        request.getfixturevalue("zfs_pool")  # zfs-fuse is running
        with zfs_file_pool("96M") as pool:
            subprocess.run(["zfs", "create", "-o", "atime=off", f"{pool}/lake"], check=True)
            top = subprocess.run(["zfs", "get", "-H", "-o", "value", "mountpoint", pool],
                                 capture_output=True, text=True, check=True).stdout.strip()
            yield Path(top) / "repo", Lake("zfs", f"{pool}/lake", Path(top) / "lake")


def one_line(r: Result) -> bool:
    return r.err.strip().count("\n") == 0 and "Traceback" not in r.err


def test_full_filesystem_gc_and_doctor_work_and_locking_commands_say_one_line(one_fs):
    repo, lake = one_fs
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    (repo / "train.py").write_text("print('train')\n")
    git(repo, "add", "train.py")
    git(repo, "commit", "-q", "-m", "code")
    snapver(repo, "init", *lake.init_args)
    toml = repo / "snapver.toml"
    toml.write_text(toml.read_text() + '\n[retention]\nwip = "1"\n')
    git(repo, "add", "snapver.toml")
    git(repo, "commit", "-q", "-m", "snapver")
    big = repo / "data" / "big.bin"
    with open(big, "wb") as f:  # held by an old wip snapshot only, once deleted: gc frees it
        for _ in range(24 if lake.backend == "btrfs" else 12):
            f.write(os.urandom(1 << 20))
    snapver(repo, "snapshot", "--wip", "-m", "with big")
    big.unlink()
    snapver(repo, "snapshot", "--wip", "-m", "without")
    doomed = {(d["volume"], d["name"]) for d in snapver(repo, "gc", "--dry-run", "--json").json["result"]["decisions"] if not d["keep"]}
    assert doomed, "the old wip is what gc will free"
    fill(repo / "filler.bin")  # in the repository, on the same filesystem

    for args in (["snapshot", "--wip"], ["status"], ["checkout", "HEAD"]):
        r = run(repo, *args)
        print(f"full {lake.backend}: {' '.join(args)} exit {r.code} {r.err.strip()!r}")
        assert one_line(r), r.err
        assert r.code == 0 or "full" in r.err, r.err
    report = run(repo, "doctor")
    print(f"full {lake.backend}: doctor exit {report.code} {report.err.strip()!r}")
    # The catalog may have taken the checkout's journal rows but not their deletion (the last
    # bytes went between the two: zfs-fuse's free space moves as it frees; 2 CI runs of 3 on
    # 2026-12-02). Then doctor names what is unfinished and the way out, gc refuses to act
    # past it when it can journal its own work (the rows cannot be deleted on the full filesystem either: a gap, noted), and
    # once space is freed by hand, the repair and gc lose nothing.
    if report.code != 0:
        assert "checkout" in report.out and "interrupted" in report.out and "doctor --repair" in report.out, \
            report.out + report.err
        first = run(repo, "gc")  # refused, or run with a warning, as its own journal row could be written
        assert "Traceback" not in first.err and (first.code == 0 or "doctor --repair" in first.err), first.err
        (repo / "filler.bin").unlink()
        repaired = run(repo, "doctor", "--repair")
        assert repaired.code == 0, repaired.out + repaired.err
    else:
        assert "clean" in report.out and one_line(report), report.out + report.err
    freed = run(repo, "gc")
    print(f"full {lake.backend}: gc exit {freed.code} {freed.err.strip()!r}")
    assert freed.code == 0 and one_line(freed), freed.out + freed.err
    left = {(s["volume"], s["name"]) for s in run(repo, "log", "--all", "--json").per_volume}
    assert not doomed & left, "gc destroyed the old wip on the full filesystem"
    assert not doomed & by_filesystem_all(lake)

    (repo / "filler.bin").unlink(missing_ok=True)
    assert run(repo, "doctor").code == 0
    snapver(repo, "snapshot", "--wip")


def by_filesystem_all(lake) -> set[tuple[str, str]]:
    from snapver.backends import open_backend

    return {(s.volume, s.name) for s in open_backend(lake.backend, lake.spec).snapshots()}


def fill(path: Path) -> None:
    try:
        with open(path, "wb") as f:
            for _ in range(1024):
                f.write(os.urandom(1 << 20))
                f.flush()
                os.fsync(f.fileno())
    except OSError as e:
        assert e.errno in (28, 122), e  # ENOSPC, EDQUOT
    else:
        raise AssertionError("the filesystem did not fill")


# ---------------------------------------------------------------- item 6: commits racing in one working tree

def paused_hook(repo: Path, message: str) -> tuple[subprocess.Popen, int]:
    """`git commit` whose post-commit hook is stopped (SIGSTOP) as it starts: (git, hook pid)."""
    (repo / "train.py").write_text(f"print({message!r})\n")
    proc = subprocess.Popen(["git", "commit", "-q", "-am", message], cwd=repo, text=True,
                            env={**env(), "SNAPVER_PAUSE": "post-commit-start"},
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while True:
        for pid in descendants(proc.pid):
            if stopped(pid):
                return proc, pid
        assert proc.poll() is None and time.monotonic() < deadline, proc.communicate()
        time.sleep(0.05)


def descendants(pid: int) -> list[int]:
    parent = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    parent[int(entry)] = int(f.read().rpartition(")")[2].split()[1])
            except OSError:
                continue
    found, todo = [], [pid]
    while todo:
        p = todo.pop()
        kids = [c for c, pp in parent.items() if pp == p]
        found += kids
        todo += kids
    return found


def resume(proc: subprocess.Popen, hook: int) -> str:
    os.kill(hook, signal.SIGCONT)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return err


def test_two_commits_at_once_the_first_without_snapshot_is_said_logged_and_listed(lake_repo, lake):
    write(lake_repo, "A")
    first, hook = paused_hook(lake_repo, "A")
    a = git(lake_repo, "rev-parse", "HEAD")
    try:
        write(lake_repo, "B")
        b_err = git_commit(lake_repo, "B").stderr  # B's hook runs while A's waits
    finally:
        a_err = resume(first, hook)
    b = git(lake_repo, "rev-parse", "HEAD")
    assert by_filesystem(lake, b) == set(VOLUMES) and by_filesystem(lake, a) == set()
    # B's data is not A's: A is left without a snapshot rather than given B's, and it is said.
    said = b_err + a_err
    assert f"commit {a[:10]}" in said and "has no snapshot" in said, said
    assert f"commit {a[:10]}" in (lake_repo / ".git" / "snapver" / "hook.log").read_text()
    report = run(lake_repo, "doctor", "--json")
    assert report.code == 0 and json.loads(report.out)["unsnapshotted"] == [a], report.out
    assert f"no snapshot: commit {a[:10]}" in run(lake_repo, "doctor").out


def test_a_late_hook_snapshots_the_commit_it_fired_for(lake_repo, lake):
    write(lake_repo, "A")
    want = {v: tree_digest(lake_repo / v) for v in VOLUMES}
    first, hook = paused_hook(lake_repo, "A")
    a = git(lake_repo, "rev-parse", "HEAD")
    try:
        git_commit(lake_repo, "B", SNAPVER_SKIP="1")  # HEAD moves on; B's hook does not run
        b = git(lake_repo, "rev-parse", "HEAD")
    finally:
        a_err = resume(first, hook)
    assert f"snapshot {a[:10]}" in a_err, a_err
    assert by_filesystem(lake, a) == set(VOLUMES) and by_filesystem(lake, b) == set()
    assert {v: on_disk(lake_repo)[(v, a)] for v in VOLUMES} == want
    assert json.loads(run(lake_repo, "doctor", "--json").out)["unsnapshotted"] == [b]
    write(lake_repo, "C")
    c_err = git_commit(lake_repo, "C").stderr  # the next commit notices its parent has none
    assert f"commit {b[:10]} (the parent of" in c_err and "has no snapshot" in c_err, c_err
