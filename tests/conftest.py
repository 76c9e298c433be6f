"""Fixtures shared by the whole suite: real filesystems (tests/fixtures), real Git repos, the CLI as a process."""

import os

import pytest

pytest_plugins = ["tests.fixtures.btrfs", "tests.fixtures.zfs", "tests.fixtures.git", "tests.fixtures.daemon"]

# The kernel-ZFS tests run where OpenZFS is loaded: the VM of vagrant/run-vm-tests sets
# SNAPVER_VM=1, a host with the module has /dev/zfs. Elsewhere they are not collected
# rather than skipped, since a skip fails the run (below).
collect_ignore = [] if os.environ.get("SNAPVER_VM") == "1" or os.path.exists("/dev/zfs") else [
    "test_vm_libzfs_core.py"
]

# scripts/test.sh (and so CI) sets this: a run that skipped a filesystem test tested
# less than it claims, so every skip fails the run instead of passing quietly.
REQUIRE_ALL = os.environ.get("SNAPVER_REQUIRE_ALL") == "1"


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
