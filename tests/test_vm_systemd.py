"""snapverd's units under a real systemd (issue 20, item 1): the VM's systemd boot, where
systemd is PID 1 (vagrant/run-vm-tests; collected only there, SNAPVER_VM_SYSTEMD=1).

snapver is pip-installed into the guest's venv as a user installs it, and `snapver service
install --enable` is run as root in a working tree owned by `nobody`, on a lake in /srv
(snapverd's sandbox has a private /tmp: a lake there would be invisible to it). The socket
starts snapverd on a user's first request; systemd sees it ready (Type=notify) and pinged
(WatchdogSec=60); the user commits and checks out with plain Git, the hooks going through
the socket; snapver-gc.service runs once; `systemctl reload` and `systemctl stop` end
cleanly; `snapver service uninstall` leaves nothing. tests/test_service.py does the same
against systemd-socket-activate on a host without a systemd to run the units.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.fixtures.daemon import give_to_nobody, wait_for

# Named on the command line elsewhere, it would install units into that machine's systemd:
# it does not run there (and the skip fails a run under SNAPVER_REQUIRE_ALL).
if os.environ.get("SNAPVER_VM_SYSTEMD") != "1":
    pytest.skip("runs in vagrant/run-vm-tests' systemd boot only (SNAPVER_VM_SYSTEMD=1)", allow_module_level=True)

VENV = Path(sys.executable).parent.parent  # /opt/snapver/venv, made by vagrant/provision.sh
SNAPVER = VENV / "bin" / "snapver"
SOURCE = Path(__file__).resolve().parent.parent
UNITS = ("snapverd.service", "snapverd.socket", "snapver-gc.service", "snapver-gc.timer", "snapver-lakes.service")
SYSTEM = Path("/etc/systemd/system")
# What a user's shell would have: not the test's PYTHONPATH, so hooks and units run the
# installed snapver. No detached scan process (tests/conftest.py says why).
PLAIN = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8",
         "SNAPVER_TEST_NO_SCAN_PROCESS": "1"}


def systemctl(*args: str, ok: bool = True) -> subprocess.CompletedProcess:
    done = subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 or not ok, f"systemctl {' '.join(args)}: {done.stderr}"
    return done


def show(unit: str, *props: str) -> dict[str, str]:
    out = systemctl("show", unit, *(f"--property={p}" for p in props)).stdout
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def journal(unit: str) -> str:
    subprocess.run(["journalctl", "--sync"], capture_output=True, timeout=60)
    return subprocess.run(["journalctl", "--no-pager", "-o", "cat", "-u", unit], capture_output=True,
                          text=True, timeout=60).stdout


def as_nobody(repo: Path, *argv: str) -> subprocess.CompletedProcess:
    return subprocess.run(["runuser", "-u", "nobody", "--", *argv], cwd=repo, env={**PLAIN, "HOME": str(repo)},
                          capture_output=True, text=True, timeout=600)


def user_git(repo: Path, *args: str) -> subprocess.CompletedProcess:
    done = as_nobody(repo, "git", "-c", "user.name=u", "-c", "user.email=u@x", *args)
    assert done.returncode == 0, f"git {' '.join(args)}: {done.stderr}"
    return done


@pytest.fixture(scope="module")
def installed():
    """snapver pip-installed into the guest's venv (offline: the build backend is there), for
    the console script `snapver service install` writes into the units; uninstalled after.
    Built from a copy, since the source share is read-only."""
    assert not SNAPVER.exists(), f"{SNAPVER} is there already: this test installs and removes it"
    build = Path(tempfile.mkdtemp(prefix="snapver-build-"))
    try:
        for name in ("snapver", "hooks", "systemd"):
            shutil.copytree(SOURCE / name, build / name, symlinks=True,
                            ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
        for name in ("pyproject.toml", "setup.py", "README.md", "MANIFEST.in"):
            shutil.copy2(SOURCE / name, build / name)
        done = subprocess.run([str(VENV / "bin" / "pip"), "install", "-q", "--no-deps", "--no-build-isolation",
                               "--no-index", "--disable-pip-version-check", str(build)],
                              capture_output=True, text=True, timeout=900, env=PLAIN)
        assert done.returncode == 0, done.stderr
        yield SNAPVER
    finally:
        subprocess.run([str(VENV / "bin" / "pip"), "uninstall", "-q", "-y", "snapver"], capture_output=True,
                       timeout=300, env=PLAIN)
        shutil.rmtree(build, ignore_errors=True)


@pytest.fixture(params=["btrfs", "zfs"])
def srv_lake(request):
    """(kind, `snapver init` arguments): a lake on a Btrfs image mounted in /srv, or on a
    kernel ZFS pool (in a file) mounted in /srv. Not in /tmp: snapverd has a private one."""
    if request.param == "btrfs":
        from tests.fixtures.btrfs import btrfs_image

        with btrfs_image("1G", parent=Path("/srv")) as mnt:
            lake = mnt / "lake"
            lake.mkdir()
            yield "btrfs", ["--lake", str(lake)]
        return
    from tests.fixtures.zfs import zfs_file_pool, zfs_running

    with zfs_running(), zfs_file_pool("1G", parent=Path("/srv")) as pool:
        lake = f"{pool}/lake"
        subprocess.run(["zfs", "create", "-o", "atime=off", lake], check=True, capture_output=True)
        yield "zfs", ["--lake", lake, "--backend", "zfs"]


@pytest.fixture
def user_tree(installed, srv_lake):
    """A working tree owned by `nobody` in /srv, set up by root with the installed snapver."""
    top = Path(tempfile.mkdtemp(prefix="snapver-svc-", dir="/srv"))
    top.chmod(0o755)
    repo = top / "repo"
    trusted = {**PLAIN, "HOME": "/root", "GIT_CONFIG_COUNT": "1", "GIT_CONFIG_KEY_0": "safe.directory",
               "GIT_CONFIG_VALUE_0": str(repo), "GIT_AUTHOR_NAME": "r", "GIT_AUTHOR_EMAIL": "r@x",
               "GIT_COMMITTER_NAME": "r", "GIT_COMMITTER_EMAIL": "r@x"}
    try:
        subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], env=trusted, check=True, capture_output=True)
        (repo / "f").write_text("code")
        subprocess.run(["git", "add", "f"], cwd=repo, env=trusted, check=True, capture_output=True)
        subprocess.run(["git", "commit", "-q", "-m", "code"], cwd=repo, env=trusted, check=True, capture_output=True)
        give_to_nobody(repo)
        done = subprocess.run([str(installed), "init", *srv_lake[1]], cwd=repo, env=trusted, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stderr
        give_to_nobody(repo)
        yield srv_lake[0], repo
    finally:
        shutil.rmtree(top, ignore_errors=True)


def uninstall_whatever_is_left() -> None:
    """After a failure: the units stopped and gone, whatever state the test left them in."""
    subprocess.run(["systemctl", "disable", "--now", *UNITS], capture_output=True, timeout=300)
    if Path("/etc/snapver/service-manifest.json").exists():
        subprocess.run([str(SNAPVER), "service", "uninstall"], cwd="/", env={**PLAIN, "HOME": "/root"},
                       capture_output=True, timeout=300)
    for unit in UNITS:
        (SYSTEM / unit).unlink(missing_ok=True)
        shutil.rmtree(SYSTEM / f"{unit}.d", ignore_errors=True)
    shutil.rmtree("/etc/snapver", ignore_errors=True)
    subprocess.run(["systemctl", "daemon-reload"], capture_output=True, timeout=300)
    subprocess.run(["systemctl", "reset-failed"], capture_output=True, timeout=300)


def test_service_install_runs_snapverd_under_systemd_by_socket_activation_for_a_users_git(user_tree):
    kind, repo = user_tree
    assert Path("/run/systemd/system").is_dir(), "systemd is not PID 1 here"
    root_env = {**PLAIN, "HOME": "/root"}
    try:
        done = subprocess.run([str(SNAPVER), "service", "install", "--enable"], cwd=repo, env=root_env,
                              capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        exec_start = show("snapverd.service", "ExecStart")["ExecStart"]
        assert f"path={SNAPVER} " in exec_start, exec_start
        assert show("snapverd.service", "UnitFileState")["UnitFileState"] == "enabled"
        assert show("snapverd.socket", "UnitFileState")["UnitFileState"] == "enabled"
        # `enable --now` started the daemon as well; stopped, the socket stays and starts it
        # again on the next request.
        systemctl("stop", "snapverd.service")
        assert show("snapverd.service", "ActiveState")["ActiveState"] == "inactive"
        sock = show("snapverd.socket", "ActiveState", "SubState", "Listen")
        assert (sock["ActiveState"], sock["SubState"]) == ("active", "listening"), sock
        assert "/run/snapver/snapverd.sock" in sock["Listen"]
        assert oct(os.stat("/run/snapver/snapverd.sock").st_mode & 0o777) == "0o666"

        # The user's commit: the post-commit hook asks snapverd through the socket, which starts it.
        (repo / "models" / "m.pt").write_text("first")
        done = user_git(repo, "commit", "-q", "--allow-empty", "-m", "first model")
        assert "snapshot" in done.stderr, done.stderr
        state = show("snapverd.service", "ActiveState", "SubState", "Type", "NotifyAccess", "WatchdogUSec",
                     "TriggeredBy", "MainPID", "NRestarts")
        assert (state["ActiveState"], state["SubState"]) == ("active", "running"), (state, journal("snapverd.service"))
        assert (state["Type"], state["NotifyAccess"], state["WatchdogUSec"]) == ("notify", "main", "1min"), state
        assert state["TriggeredBy"] == "snapverd.socket" and state["NRestarts"] == "0", state
        ready = time.monotonic()
        pid = state["MainPID"]
        # Watchdog pings: systemd stamps each WATCHDOG=1 it takes from the main process.
        first = int(show("snapverd.service", "WatchdogTimestampMonotonic")["WatchdogTimestampMonotonic"])
        assert wait_for(lambda: int(show("snapverd.service", "WatchdogTimestampMonotonic")
                                    ["WatchdogTimestampMonotonic"]) > first, 20), "no watchdog ping reached systemd"
        first_commit = user_git(repo, "rev-parse", "HEAD").stdout.strip()

        # Through the socket: on ZFS only root may run zfs, and nobody may not write the lake.
        asked = as_nobody(repo, str(SNAPVER), "show", first_commit, "--json")
        assert asked.returncode == 0, asked.stderr
        shown = json.loads(asked.stdout)
        assert shown["commit"] == first_commit and set(shown["volumes"]) == {"data", "models", "logs"}

        # A branch with another model, then plain `git checkout` back and forth: the
        # post-checkout hook has snapverd put each commit's volumes in place.
        user_git(repo, "checkout", "-q", "-b", "other")
        (repo / "models" / "m.pt").write_text("second")
        user_git(repo, "commit", "-q", "--allow-empty", "-m", "second model")
        user_git(repo, "checkout", "-q", "main")
        seen = (repo / "models" / "m.pt").read_text()
        # On ZFS the checkout mounts the commit's new live datasets: seen by the user only
        # because the ZFS drop-in gives snapverd no mount namespace of its own (found here).
        assert seen == "first", (seen, journal("snapverd.service"))
        user_git(repo, "checkout", "-q", "other")
        assert (repo / "models" / "m.pt").read_text() == "second", journal("snapverd.service")
        done = as_nobody(repo, str(SNAPVER), "status", "--json")
        assert done.returncode == 0, done.stderr

        # The timer's service, once: a oneshot that must end in success.
        systemctl("start", "snapver-gc.service")
        gc = show("snapver-gc.service", "Result", "ExecMainStatus", "ActiveState")
        assert gc == {"Result": "success", "ExecMainStatus": "0", "ActiveState": "inactive"}, \
            (gc, journal("snapver-gc.service"))
        assert "snapshots removed" in journal("snapver-gc.service")

        # ExecReload= (SIGHUP): the config read again, the same process, the socket answering.
        systemctl("reload", "snapverd.service")
        assert wait_for(lambda: "config reloaded" in journal("snapverd.service"), 60), journal("snapverd.service")
        from snapver import client

        watched = client.request({"op": "daemon-status"}, path=Path("/run/snapver/snapverd.sock"), timeout=60)
        assert [w["workspace"] for w in watched] == [str(repo.resolve())]

        # Past a watchdog period (WatchdogSec=60) since it was ready: still the same process.
        time.sleep(max(0.0, ready + 65 - time.monotonic()))
        state = show("snapverd.service", "ActiveState", "MainPID", "NRestarts", "Result")
        assert state == {"ActiveState": "active", "MainPID": pid, "NRestarts": "0", "Result": "success"}, state

        # Stop: SIGTERM, a clean exit; then the socket.
        systemctl("stop", "snapverd.service", "snapverd.socket")
        state = show("snapverd.service", "ActiveState", "Result", "ExecMainStatus", "ExecMainCode")
        assert state["ActiveState"] == "inactive" and state["Result"] == "success", (state, journal("snapverd.service"))
        assert show("snapverd.socket", "ActiveState")["ActiveState"] == "inactive"
        assert systemctl("is-failed", "snapverd.service", "snapverd.socket", "snapver-gc.service", ok=False) \
            .stdout.split() == ["inactive"] * 3

        done = subprocess.run([str(SNAPVER), "service", "uninstall"], cwd=repo, env=root_env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stdout + done.stderr
        assert not any((SYSTEM / u).exists() for u in UNITS) and not Path("/etc/snapver").exists()
        assert show("snapverd.service", "LoadState")["LoadState"] == "not-found"
        assert not list(SYSTEM.glob("*.wants/snapver*"))
    finally:
        uninstall_whatever_is_left()
