"""Fixtures shared by the whole suite: real filesystems (tests/fixtures), real Git repos, the CLI as a process."""

import os

import pytest

pytest_plugins = ["tests.fixtures.btrfs", "tests.fixtures.zfs", "tests.fixtures.git"]

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
