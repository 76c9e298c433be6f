"""Fixtures shared by the whole suite: real filesystems (tests/fixtures), real Git repos, the CLI as a process."""

import os

import pytest

# Git hooks leave a changed model's scan to a process of their own (scan.start_detached); one that
# outlived its test could hold the test's lake busy at teardown. Not started anywhere in the suite,
# also for a Git run without the fixtures' env(); tests/test_scan_pending.py starts it ("0").
os.environ.setdefault("SNAPVER_TEST_NO_SCAN_PROCESS", "1")
os.environ.setdefault("SNAPVER_TEST_NO_SPACE_PROCESS", "1")  # spacewarm: no measure left running

pytest_plugins = ["tests.fixtures.btrfs", "tests.fixtures.zfs", "tests.fixtures.git", "tests.fixtures.daemon",
                  "tests.fixtures.backend", "tests.fixtures.netns"]

# The kernel-ZFS tests run where OpenZFS is loaded: the VM of vagrant/run-vm-tests sets
# SNAPVER_VM=1, a host with the module has /dev/zfs. Elsewhere they are not collected
# rather than skipped, since a skip fails the run (below).
collect_ignore = [] if os.environ.get("SNAPVER_VM") == "1" or os.path.exists("/dev/zfs") else [
    "test_vm_libzfs_core.py"
]
# The NFS client and server are the guest's (the host's kernel has no NFS client).
if os.environ.get("SNAPVER_VM") != "1":
    collect_ignore.append("test_vm_nfs_lake.py")
# The units under a real systemd: only in the VM's systemd boot (vagrant/run-vm-tests), which
# sets SNAPVER_VM_SYSTEMD=1; a host's own systemd is not the test's to install units into.
if os.environ.get("SNAPVER_VM_SYSTEMD") != "1":
    collect_ignore.append("test_vm_systemd.py")

# scripts/test.sh (and so CI) sets this: a run that skipped a filesystem test tested
# less than it claims, so every skip fails the run instead of passing quietly.
REQUIRE_ALL = os.environ.get("SNAPVER_REQUIRE_ALL") == "1"


def pytest_addoption(parser):
    # The VM's TCG guest runs fewer (each costs ~20 s there); the host runs the default.
    parser.addoption("--round-trips", type=int, default=20,
                     help="checkouts back and forth in test_round_trips_keep_every_snapshot (default 20)")


@pytest.fixture
def round_trips(request) -> int:
    return request.config.getoption("--round-trips")


@pytest.hookimpl(tryfirst=True)
def pytest_sessionfinish(session, exitstatus):
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if REQUIRE_ALL and reporter and reporter.stats.get("skipped") and session.exitstatus == 0:
        session.exitstatus = 1


def pytest_terminal_summary(terminalreporter):
    skipped = terminalreporter.stats.get("skipped", [])
    if REQUIRE_ALL and skipped:
        terminalreporter.write_line(
            f"FAILED: {len(skipped)} test(s) skipped under SNAPVER_REQUIRE_ALL=1; "
            "every filesystem test must run (see the skip reasons above)", red=True
        )



# scripts/test.sh runs the whole suite over pytest-xdist workers (--dist loadgroup): each test
# goes to whichever worker is free, except the groups below, each run by one worker. A module
# whose tests share an expensive module fixture is one group per backend (a test sent to another
# worker would make that worker build the fixture again); test_bad_input's canary is a fixed path,
# and the VM's systemd tests install one set of units into the one systemd.
# zfs-fuse deadlocks (`zfs create` stuck in a FUSE request) when several sessions mount and
# destroy datasets at once, as seen with six concurrent users here. scripts/test.sh therefore
# gives each worker a zfs-fuse of its own (scripts/test-worker, ZFS_PER_WORKER); where workers
# share one daemon (`pytest -n` by hand), every ZFS test is one group, run by one worker.
ZFS_PER_WORKER = os.environ.get("SNAPVER_ZFS_PER_WORKER") == "1"  # as tests/fixtures/zfs.py reads it
# ZFS in the kernel (the VM's guest) has no such deadlock: workers share it like any filesystem.
ZFS_SHARED_SAFELY = ZFS_PER_WORKER or os.path.exists("/dev/zfs")
# (The groups are made here from node IDs, not with xdist_group marks, which pytest-xdist 3.8
# no longer applies under pytest 9.2.)
XDIST_GROUPS = {"test_transfer.py": "per-backend", "test_registry_sync.py": "per-backend", "test_bad_input.py": "module",
                "test_vm_systemd.py": "module"}


def xdist_group(nodeid: str) -> str:
    path, _, name = nodeid.partition("::")
    if "zfs" in name.lower() and not ZFS_SHARED_SAFELY:
        return "zfs"
    how = XDIST_GROUPS.get(path.rsplit("/", 1)[-1])
    if how == "module":
        return path
    if how == "per-backend":
        params = name.partition("[")[2].rstrip("]").split("-")
        return f"{path}[{next((p for p in params if p in ('btrfs', 'zfs')), 'other')}]"
    return nodeid


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    if config.getvalue("dist") != "loadgroup":
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Groups(LoadScopeScheduling):
        """loadscope with the scopes above; the biggest groups are sent first."""

        def _split_scope(self, nodeid: str) -> str:
            return xdist_group(nodeid)

    return Groups(config, log)
