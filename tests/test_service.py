"""`snapver service install | uninstall` (issue 20, item 1): the file writing part, on the host.

Files go into a temporary root (--root), where systemctl enables units offline, and
`systemd-analyze verify` reads the units as systemd would. The units running under a real
systemd is the guest's part (see the report in README's Service section). Each test that
reads a lake runs on Btrfs and on zfs-fuse (the `lake` fixture).
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from snapver.daemonconfig import DaemonConfig
from snapver.service import MOUNT_NAMESPACE

from tests.fixtures.daemon import daemon_dir, nobody_repo, user_home  # noqa: F401
from tests.fixtures.git import disk_state, env, lake_repo, snapver  # noqa: F401

UNITS = ("snapverd.service", "snapverd.socket", "snapver-gc.service", "snapver-gc.timer", "snapver-lakes.service")
SYSTEM = Path("etc/systemd/system")
VENV_SNAPVER = Path(sys.executable).with_name("snapver")


def files(root: Path) -> dict[str, bytes]:
    out = {}
    for dirpath, dirnames, names in os.walk(root):
        for n in names:
            p = Path(dirpath, n)
            out[str(p.relative_to(root))] = os.readlink(p).encode() if p.is_symlink() else p.read_bytes()
    return out


def unit_value(text: str, key: str) -> list[str]:
    return [line.split("=", 1)[1] for line in text.splitlines() if line.startswith(key + "=")]


def test_install_writes_units_config_and_dropins_for_the_lake_and_uninstall_removes_them(lake_repo, lake, tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    # The installed console script, as an admin runs it: ExecStart must name that one.
    done = subprocess.run([str(VENV_SNAPVER), "service", "install", "--enable", "--root", str(root)],
                          cwd=lake_repo, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    system = root / SYSTEM
    for unit in UNITS:
        text = (system / unit).read_text()
        assert "/usr/local/bin/snapver" not in "\n".join(unit_value(text, "ExecStart")), unit
    service = (system / "snapverd.service").read_text()
    assert unit_value(service, "ExecStart") == [f"{VENV_SNAPVER} daemon --config /etc/snapver/snapverd.toml"]
    assert unit_value((system / "snapver-gc.service").read_text(), "ExecStart") == \
        [f"{VENV_SNAPVER} daemon --config /etc/snapver/snapverd.toml gc"]
    # The gc runs in snapverd's sandbox: every hardening line of the one is in the other, but
    # for the capabilities, of which it has fewer (no CAP_SETUID/SETGID: it runs no user's recipe).
    gc_unit = (system / "snapver-gc.service").read_text()
    caps = [set(unit_value(text, "CapabilityBoundingSet")[0].split()) for text in (service, gc_unit)]
    assert "CAP_SYS_ADMIN" in caps[1] and caps[1] <= caps[0] and "CAP_SETUID" not in caps[1], caps
    sandbox = {line for line in service.splitlines() if line.split("=")[0] in (
        "NoNewPrivileges", "ProtectSystem", "ReadWritePaths", "PrivateTmp",
        "PrivateNetwork", "ProtectKernelModules", "ProtectKernelTunables", "ProtectControlGroups", "ProtectClock",
        "ProtectHostname", "RestrictAddressFamilies", "RestrictNamespaces", "RestrictRealtime", "LockPersonality",
        "MemoryDenyWriteExecute", "SystemCallArchitectures")}
    assert len(sandbox) == 16
    assert sandbox <= set(gc_unit.splitlines())

    config = DaemonConfig.load(root / "etc/snapver/snapverd.toml")
    assert [w.path for w in config.workspaces] == [lake_repo.resolve()]
    for unit in ("snapverd.service", "snapver-gc.service"):
        dropin = (system / f"{unit}.d" / "snapver-paths.conf").read_text()
        if lake.backend == "zfs":
            # snapverd mounts datasets users must see: no mount namespace of its own (the
            # systemd test in the VM checks that a user's checkout is seen).
            assert set(MOUNT_NAMESPACE) <= set(dropin.splitlines()), dropin
            assert "ProtectSystem=no" in dropin and "MemoryDenyWriteExecute" not in dropin
            continue
        paths = [Path(shlex.split(v)[0].lstrip("-")) for v in unit_value(dropin, "ReadWritePaths")]
        for needed in (lake_repo.resolve(), lake.root.resolve()):
            assert any(p == needed or p in needed.parents for p in paths), (needed, paths)
    assert (system / "sockets.target.wants" / "snapverd.socket").is_symlink()
    assert (system / "multi-user.target.wants" / "snapverd.service").is_symlink()
    # Image lakes are mounted at boot, before snapverd (item 2).
    assert unit_value((system / "snapver-lakes.service").read_text(), "ExecStart") == \
        [f"{VENV_SNAPVER} service mount --config /etc/snapver/snapverd.toml"]
    assert (system / "multi-user.target.wants" / "snapver-lakes.service").is_symlink()
    assert "Wants=snapver-lakes.service" in (system / "snapverd.service.d" / "snapver-paths.conf").read_text()

    # systemd reads every unit without a complaint (an unknown key, a bad value).
    verify = subprocess.run(["systemd-analyze", "verify", *(str(system / u) for u in UNITS)],
                            capture_output=True, text=True, timeout=120)
    assert verify.returncode == 0 and not verify.stderr.strip(), verify.stderr

    done = subprocess.run([str(VENV_SNAPVER), "service", "uninstall", "--root", str(root)],
                          cwd=lake_repo, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert files(root) == {} and os.listdir(root) == [], sorted(Path(d).relative_to(root).as_posix()
                                                                  for d, _, _ in os.walk(root))


def test_an_admins_config_is_never_overwritten_nor_removed(lake_repo, tmp_path):
    root = tmp_path / "root"
    (root / "etc/snapver").mkdir(parents=True)
    mine = f'# mine\n[[workspace]]\npath = "{lake_repo}"\nallow_users = ["bob"]\n'
    (root / "etc/snapver/snapverd.toml").write_text(mine)
    said = snapver(lake_repo, "service", "install", "--root", str(root)).out
    assert "kept as it is" in said
    assert (root / "etc/snapver/snapverd.toml").read_text() == mine
    # Installing again rewrites only its own files; an edit to one is kept by uninstall.
    snapver(lake_repo, "service", "install", "--root", str(root))
    timer = root / SYSTEM / "snapver-gc.timer"
    timer.write_text(timer.read_text() + "# my edit\n")
    said = snapver(lake_repo, "service", "uninstall", "--root", str(root)).out
    assert "snapver-gc.timer: kept (changed since snapver wrote it)" in said
    assert files(root) == {"etc/snapver/snapverd.toml": mine.encode(),
                           str(SYSTEM / "snapver-gc.timer"): timer.read_bytes()}


def test_a_unit_snapver_did_not_write_is_refused_and_nothing_changes(lake_repo, tmp_path):
    root = tmp_path / "root"
    (root / SYSTEM).mkdir(parents=True)
    (root / SYSTEM / "snapverd.service").write_text("[Service]\nExecStart=/opt/by-hand/snapver daemon\n")
    before = disk_state(root)
    done = snapver(lake_repo, "service", "install", "--root", str(root), ok=False)
    assert "was not written by `snapver service install`" in done.err
    assert len(done.err.strip().splitlines()) == 1 and "Traceback" not in done.err
    assert disk_state(root) == before
    done = snapver(lake_repo, "service", "uninstall", "--root", str(root), ok=False)
    assert "nothing to remove" in done.err and disk_state(root) == before


def test_outside_a_working_tree_the_config_lists_no_workspace_and_says_so(tmp_path):
    root = tmp_path / "root"
    root.mkdir()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    said = snapver(elsewhere, "service", "install", "--root", str(root)).out
    assert "lists no workspace" in said
    assert DaemonConfig.load(root / "etc/snapver/snapverd.toml").workspaces == []
    # `python -m snapver`: ExecStart runs that interpreter the same way.
    service = (root / SYSTEM / "snapverd.service").read_text()
    assert unit_value(service, "ExecStart")[0].startswith(f"{sys.executable} -m snapver daemon")
    manifest = json.loads((root / "etc/snapver/service-manifest.json").read_text())
    assert set(manifest["files"]) >= {str(SYSTEM / u) for u in UNITS}
    snapver(elsewhere, "service", "uninstall", "--root", str(root))
    assert os.listdir(root) == []


@pytest.mark.parametrize("word, written", [
    ("/usr/bin/snapver", "/usr/bin/snapver"),
    ("/opt/my tools/snapver", '"/opt/my tools/snapver"'),
    ("/opt/100%/snapver", "/opt/100%%/snapver"),
    ("/opt/$HOME/snapver", "/opt/$$HOME/snapver"),
])
def test_paths_are_quoted_as_systemd_reads_them(word, written):
    from snapver.service import unit_words

    assert unit_words([word]) == written



def test_the_installed_units_run_snapverd_by_socket_activation_notify_watchdog_reload_and_stop(
        nobody_repo, daemon_dir, tmp_path):
    """What systemd does with the units `service install` wrote, on a host without a systemd
    to run them (README, Installing the service): the socket is held by systemd's own
    systemd-socket-activate (LISTEN_FDS, on the first connection, the environment a service
    gets), and this test is the NOTIFY_SOCKET end. ExecStart= is the unit's, word for word,
    but for the config's path. An unprivileged user commits and checks out through the
    socket; snapver-gc.service's ExecStart= runs once; SIGHUP reloads; SIGTERM stops."""
    import socket as sockets
    import time

    from tests.fixtures.daemon import wait_for

    repo = nobody_repo
    root = tmp_path / "root"
    root.mkdir()
    snapver(repo, "service", "install", "--root", str(root))  # sudo, in the user's working tree
    config = root / "etc/snapver/snapverd.toml"
    assert [w.path for w in DaemonConfig.load(config).workspaces] == [repo.resolve()]
    sock = daemon_dir / "snapverd.sock"
    # The admin's edits: this test's socket, and the timer's gc rather than the daemon's.
    config.write_text(config.read_text().replace('socket = "/run/snapver/snapverd.sock"', f'socket = "{sock}"')
                      .replace('gc_interval = "1h"', 'gc_interval = "off"'))
    system = root / SYSTEM
    service = (system / "snapverd.service").read_text()
    assert "Type=notify" in service and unit_value(service, "WatchdogSec") == ["60"]
    assert unit_value((system / "snapverd.socket").read_text(), "SocketMode") == ["0666"]

    def exec_start(unit: str) -> list[str]:
        words = shlex.split(unit_value((system / unit).read_text(), "ExecStart")[0])
        return [str(config) if w == "/etc/snapver/snapverd.toml" else w for w in words]

    notify = sockets.socket(sockets.AF_UNIX, sockets.SOCK_DGRAM)
    notify.bind(str(daemon_dir / "notify"))
    notify.settimeout(0.5)
    messages: list[str] = []

    def heard(what: str, count: int = 1) -> bool:
        try:
            messages.append(notify.recv(4096).decode())
        except TimeoutError:
            pass
        return sum(what in m.split("\n") for m in messages) >= count

    log = open(daemon_dir / "snapverd.log", "ab")
    proc = subprocess.Popen(
        ["systemd-socket-activate", "-l", str(sock), "-E", "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin",
         "-E", f"NOTIFY_SOCKET={daemon_dir / 'notify'}", "-E", "WATCHDOG_USEC=60000000",
         *exec_start("snapverd.service")], stdout=log, stderr=subprocess.STDOUT)
    try:
        assert wait_for(sock.exists, 10)
        sock.chmod(0o666)  # SocketMode=0666
        time.sleep(1)
        assert not messages and not heard("READY=1"), "snapverd started before anyone connected"
        # The user's commit: its post-commit hook asks snapverd, which the connection starts.
        (repo / "models" / "m.pt").write_text("user's model")
        done = subprocess.run(["runuser", "-u", "nobody", "--", "env", f"SNAPVER_SOCKET={sock}", "git",
                               "-c", "user.name=u", "-c", "user.email=u@x", "commit", "-q", "--allow-empty",
                               "-m", "model"], cwd=repo, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        assert wait_for(lambda: heard("READY=1"), 30), (messages, (daemon_dir / "snapverd.log").read_text())
        assert wait_for(lambda: heard("WATCHDOG=1", 3), 10), "no watchdog pings (WatchdogSec=60)"
        head = subprocess.run(["runuser", "-u", "nobody", "--", "git", "rev-parse", "HEAD"], cwd=repo,
                              capture_output=True, text=True, check=True).stdout.strip()
        assert "snapshot" in done.stderr, done.stderr
        asked = subprocess.run(["runuser", "-u", "nobody", "--", "env", f"SNAPVER_SOCKET={sock}", sys.executable,
                                "-m", "snapver", "show", head, "--json"], cwd=repo, capture_output=True, text=True,
                               timeout=120)
        assert asked.returncode == 0, asked.stderr
        shown = json.loads(asked.stdout)  # through the socket: on ZFS only root may run zfs
        assert shown["commit"] == head and set(shown["volumes"]) == {"data", "models", "logs"}
        (repo / "models" / "m.pt").write_text("changed, not committed")
        said = subprocess.run(["runuser", "-u", "nobody", "--", "env", f"SNAPVER_SOCKET={sock}", sys.executable,
                               "-m", "snapver", "checkout", head], cwd=repo, capture_output=True, text=True,
                              timeout=120)
        assert said.returncode == 0, said.stderr
        assert "kept unsnapshotted changes" in said.stdout
        assert (repo / "models" / "m.pt").read_text() == "user's model"

        # snapver-gc.service, once (`systemctl start snapver-gc.service`).
        gc = subprocess.run(exec_start("snapver-gc.service"), capture_output=True, text=True, timeout=300,
                            env={"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin"})
        assert gc.returncode == 0 and "snapshots removed" in gc.stdout, gc.stderr
        # ExecReload= sends SIGHUP: the config is read again, the socket still answers. The reload
        # reads each workspace's volumes again: a few zfs calls, which zfs-fuse under CI's load
        # made last more than 20 s; the watchdog pings go on meanwhile.
        proc.send_signal(signal.SIGHUP)
        sent = time.monotonic()
        assert wait_for(lambda: b"config reloaded" in (daemon_dir / "snapverd.log").read_bytes(), 120), \
            f"reload not done {time.monotonic() - sent:.0f} s after SIGHUP:\n" + (daemon_dir / "snapverd.log").read_text()
        from snapver import client

        watched = client.request({"op": "daemon-status"}, path=sock, timeout=10)
        assert [w["workspace"] for w in watched] == [str(repo.resolve())]
        # Stop: SIGTERM, a clean exit within TimeoutStopSec (jobs in flight finish first: on
        # zfs-fuse, under CI's load, that once took more than 60 s).
        proc.send_signal(signal.SIGTERM)
        try:
            stopped = proc.wait(int(unit_value(service, "TimeoutStopSec")[0]))
        except subprocess.TimeoutExpired:
            raise AssertionError("not stopped within TimeoutStopSec:\n" + (daemon_dir / "snapverd.log").read_text())
        assert stopped == 0, (daemon_dir / "snapverd.log").read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        notify.close()
        log.close()
    snapver(repo, "service", "uninstall", "--root", str(root))
    assert files(root) == {"etc/snapver/snapverd.toml": config.read_bytes()}, "the admin's edit stays"


# ---------------------------------------------------------------- item 2: the lake after a reboot

@pytest.fixture(params=["btrfs", "zfs"])
def image_lake_repo(request, user_home):
    """A repository owned by `nobody` whose lake is in an image file (`--image`, or
    `--pool-image` for ZFS) that root made, in folders anyone can traverse; the image is
    unmounted (its pool destroyed) and removed afterwards."""
    from tests.fixtures.daemon import give_to_nobody
    from tests.fixtures.git import env, git

    if request.param == "zfs":
        request.getfixturevalue("zfs_pool")  # zfs-fuse running
    where = Path(tempfile.mkdtemp(prefix="snapver-image-"))
    where.chmod(0o755)
    image = where / f"sv{os.urandom(3).hex()}.img"
    repo = user_home / "repo"
    git(user_home, "init", "-q", "-b", "main", str(repo))
    option = "--image" if request.param == "btrfs" else "--pool-image"
    try:
        subprocess.run([sys.executable, "-m", "snapver", "init", option, str(image), "--size", "300M"], cwd=repo,
                       env=env(), check=True, capture_output=True, timeout=300)
        git(repo, "add", "snapver.toml")
        git(repo, "commit", "-q", "-m", "snapver")
        give_to_nobody(repo)
        yield request.param, repo, image
    finally:
        if request.param == "zfs":
            from tests.fixtures.zfs import destroy_pool

            destroy_pool(image.stem)
        else:
            from tests.fixtures.btrfs import mounted, unmount

            if mounted(image.with_suffix("")):
                unmount(image.with_suffix(""))
        shutil.rmtree(where, ignore_errors=True)


def test_after_a_reboot_status_says_why_the_links_dangle_and_the_boot_unit_mounts_the_lake(image_lake_repo, tmp_path):
    kind, repo, image = image_lake_repo
    (repo / "data" / "rows.csv").write_text("1,2\n")
    lake_root = image.with_suffix("") if kind == "btrfs" else Path("/" + image.stem)  # a pool mounts at /<pool>
    assert os.path.realpath(repo / "data").startswith(f"{lake_root}/")
    # The reboot, as far as the lake can tell: the image is no longer mounted (the pool exported).
    if kind == "btrfs":
        subprocess.run(["umount", str(image.with_suffix(""))], check=True)
    else:
        subprocess.run(["zpool", "export", image.stem], check=True, capture_output=True, timeout=300)
    assert not (repo / "data").exists(), "the link should dangle now"

    done = snapver(repo, "status", user="nobody", ok=False)
    lines = [line for line in done.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in done.err, done.err
    assert str(image) in lines[0] and "volume links point nowhere" in lines[0]
    assert "snapver service mount" in lines[0] and "service install" in lines[0]

    # What snapver-lakes.service runs at boot, for the workspaces of the daemon config.
    config = tmp_path / "snapverd.toml"
    config.write_text(f'[[workspace]]\npath = "{repo}"\n')
    said = snapver(repo, "service", "mount", "--config", str(config)).out
    assert f"{repo}: the lake" in said
    assert (repo / "data" / "rows.csv").read_text() == "1,2\n"
    # A user who is not root reads a Btrfs lake directly; on ZFS only root may run zfs (snapverd
    # serves the others, and none runs here): root, trusting the user's repository for Git.
    if kind == "btrfs":
        rows = snapver(repo, "status", "--json", user="nobody").json
    else:
        trusted = {**env(), "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "safe.directory", "GIT_CONFIG_VALUE_0": "*"}
        asked = subprocess.run([sys.executable, "-m", "snapver", "status", "--json"], cwd=repo, env=trusted,
                               capture_output=True, text=True, timeout=120)
        assert asked.returncode == 0, asked.stderr
        rows = json.loads(asked.stdout)
    assert {r["volume"] for r in rows} == {"data", "models", "logs"}
    # Mounted already: nothing to do, still success.
    snapver(repo, "service", "mount", "--config", str(config))


# ---------------------------------------------------------------- item 3: snapver prune

def retired(path: Path) -> bool:
    """A live volume taken out of the lake: gone, or (zfs-fuse, whose dataset was renamed away
    under history/) an empty folder where it was mounted."""
    return not path.exists() or not any(path.iterdir())


def live_of(tree: Path) -> dict[str, Path]:
    return {r["volume"]: Path(r["path"]) for r in snapver(tree, "status", "--json").json}


def test_prune_removes_the_volumes_of_a_removed_worktree_keeping_its_changes_as_a_wip(lake_repo, tmp_path):
    from tests.fixtures.git import git

    repo = lake_repo
    (repo / "data" / "main.csv").write_text("main's\n")
    git(repo, "commit", "-q", "--allow-empty", "-m", "main data")
    wt = tmp_path / "wt"
    git(repo, "worktree", "add", "-q", "-b", "w", str(wt))
    live = live_of(wt)
    assert live["data"] != live_of(repo)["data"]
    (wt / "data" / "unsaved.csv").write_text("never snapshotted\n")
    git(repo, "worktree", "remove", "--force", str(wt))
    assert not wt.exists() and live["data"].is_dir(), "the worktree's live volume is left in the lake"

    said = snapver(repo, "prune", "--dry-run").out
    assert f"would remove the live data, models, logs of {wt} (gone)" in said
    said = snapver(repo, "gc", "--dry-run").out  # gc prunes first
    assert f"would remove the live data, models, logs of {wt} (gone)" in said
    assert live["data"].is_dir() and (live["data"] / "unsaved.csv").exists()

    pruned = snapver(repo, "prune", "--json").json["result"]
    assert [(p["path"], sorted(p["volumes"])) for p in pruned] == [(str(wt), ["data", "logs", "models"])]
    assert all(retired(p) for p in live.values())
    wip = pruned[0]["kept"][0]
    kept = snapver(repo, "show", wip, "--json").json["volumes"]
    assert (Path(kept["data"]["path"]) / "unsaved.csv").read_text() == "never snapshotted\n"
    assert (Path(kept["data"]["path"]) / "main.csv").read_text() == "main's\n"
    # This working tree's own volumes are untouched, and a second prune finds nothing.
    assert (repo / "data" / "main.csv").read_text() == "main's\n"
    assert snapver(repo, "prune", "--json").json["result"] == []


def test_prune_removes_an_unchanged_deleted_clone_without_a_wip_and_spares_a_moved_one(lake_repo, tmp_path):
    from tests.fixtures.git import git

    repo = lake_repo
    (repo / "data" / "rows.csv").write_text("rows\n")
    git(repo, "commit", "-q", "--allow-empty", "-m", "rows")
    clones = {}
    for name in ("deleted", "moved"):
        clone = tmp_path / name
        git(tmp_path, "clone", "-q", str(repo), str(clone))
        snapver(clone, "init")
        assert (clone / "data" / "rows.csv").read_text() == "rows\n"
        clones[name] = (clone, live_of(clone))
    shutil.rmtree(clones["deleted"][0])
    moved = tmp_path / "moved-here"
    clones["moved"][0].rename(moved)
    snapver(moved, "status")  # opened at its new place: remembered there, same workspace

    before = snapver(repo, "log", "--all", "--json").json
    # snapver-gc.timer's gc (`snapver daemon gc`, every workspace of the daemon config) prunes too.
    config = tmp_path / "snapverd.toml"
    config.write_text(f'[[workspace]]\npath = "{repo}"\n')
    snapver(repo, "daemon", "--config", str(config), "gc")
    assert all(retired(p) for p in clones["deleted"][1].values()), "gc pruned the deleted clone"
    assert all(p.is_dir() for p in clones["moved"][1].values()), "the moved clone's volumes stay"
    assert (moved / "data" / "rows.csv").read_text() == "rows\n"
    assert snapver(repo, "log", "--all", "--json").json == before, "unchanged volumes need no wip"
