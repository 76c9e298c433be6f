#!/usr/bin/env bash
# The whole test suite, on real filesystems, as root. Fails if any filesystem test was skipped.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# The `test` packages of scripts/debian-packages too (zfs-fuse, ssh, chromium, pipx: it says why).
SNAPVER_EXTRA_PACKAGES="${SNAPVER_EXTRA_PACKAGES:-} $(awk '!/^#/ && $2 == "test" { printf "%s ", $1 }' \
  "$here/scripts/debian-packages")" source "$here/scripts/setup.sh"
cd "$here"
# A skipped filesystem test is a failed run: conftest.py turns every skip into an error.
export SNAPVER_REQUIRE_ALL=1
# The whole suite (no arguments, as CI runs it) spreads over pytest-xdist workers: it waits on
# sleeps, zfs-fuse and the disk as much as on the CPU, so 4 workers beat 2 even on 2 cores
# (figures in README.md). With arguments (one file, -k, -x) it runs serially unless they ask
# for -n. SNAPVER_TEST_WORKERS=0 runs the whole suite serially.
if [ $# -eq 0 ]; then
  # A hung filesystem call (zfs-fuse can deadlock) fails its test after 15 min, with stacks,
  # instead of holding CI until its own limit. --durations: where CI's time goes, in its log.
  set -- --timeout 900 --durations 30
  workers=${SNAPVER_TEST_WORKERS:-4}
  if [ "$workers" != 0 ]; then
    # Each worker in a mount namespace with a zfs-fuse of its own (scripts/test-worker says why).
    export SNAPVER_ZFS_PER_WORKER=1
    set -- --tx "$workers*popen//python=$here/scripts/test-worker $here/.venv/bin/python" --dist loadgroup "$@"
  fi
fi
exec "$here/.venv/bin/python" -m pytest -q "$@"
