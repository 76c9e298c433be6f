#!/usr/bin/env bash
# The whole test suite, on real filesystems, as root. Fails if any filesystem test was skipped.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# chromium, chromium-driver: tests/test_webui_browser.py looks at `snapver ui` in a real browser.
# sshfs: tests/test_remote_lake.py mounts a storage server's lake on compute nodes (NFS stands in the VM).
SNAPVER_EXTRA_PACKAGES="${SNAPVER_EXTRA_PACKAGES:-} zfs-fuse openssh-server openssh-client sshfs chromium chromium-driver" source "$here/scripts/setup.sh"
cd "$here"
# A skipped filesystem test is a failed run: conftest.py turns every skip into an error.
export SNAPVER_REQUIRE_ALL=1
# The whole suite (no arguments, as CI runs it) spreads over pytest-xdist workers: it waits on
# sleeps, zfs-fuse and the disk as much as on the CPU, so 4 workers beat 2 even on 2 cores
# (figures in README.md). With arguments (one file, -k, -x) it runs serially unless they ask
# for -n. SNAPVER_TEST_WORKERS=0 runs the whole suite serially.
if [ $# -eq 0 ]; then
  # A hung filesystem call (zfs-fuse can deadlock) fails its test after 15 min, with stacks,
  # instead of holding CI until its own limit.
  set -- -n "${SNAPVER_TEST_WORKERS:-4}" --dist loadgroup --timeout 900
fi
exec "$here/.venv/bin/python" -m pytest -q "$@"
