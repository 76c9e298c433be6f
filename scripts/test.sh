#!/usr/bin/env bash
# The whole test suite, on real filesystems, as root. Fails if any filesystem test was skipped.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
SNAPVER_EXTRA_PACKAGES="${SNAPVER_EXTRA_PACKAGES:-} zfs-fuse openssh-server openssh-client" source "$here/scripts/setup.sh"
cd "$here"
# A skipped filesystem test is a failed run: conftest.py turns every skip into an error.
export SNAPVER_REQUIRE_ALL=1
exec "$here/.venv/bin/python" -m pytest -q "$@"
