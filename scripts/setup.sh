#!/usr/bin/env bash
# Installs everything snapver needs on Debian/Ubuntu, as root: system tools, a venv, the package.
# Sourced by demo.sh and test.sh; safe to run again (it skips what is already there).
set -euo pipefail
[ "$(id -u)" -eq 0 ] || { echo "setup: run this as root (log in as root, or sudo where it exists)" >&2; exit 1; }
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

# The `run` packages of scripts/debian-packages (the one list, with why each is there).
mapfile -t packages < <(awk '!/^#/ && $2 == "run" { print $1 }' "$here/scripts/debian-packages")
packages+=(${SNAPVER_EXTRA_PACKAGES:-})
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # flock: .ci/run installs the VM's tools at the same time, and apt takes one at a time.
  flock /run/snapver-apt.lock apt-get update -qq || echo "setup: apt-get update had errors; trying to install anyway" >&2
  flock /run/snapver-apt.lock apt-get install -y -qq "${missing[@]}" >/dev/null
fi

# The system Python, not a user's pyenv: the venv must be usable by every user (tests run
# the CLI as `nobody`) and match the Debian bindings later issues use (pyzfs).
python=/usr/bin/python3
"$python" -c 'import sys; sys.exit(sys.version_info < (3, 11))' \
  || { echo "setup: snapver needs Python 3.11 or newer as /usr/bin/python3" >&2; exit 1; }
if [ ! -x "$here/.venv/bin/python" ]; then
  "$python" -m venv "$here/.venv"
fi
"$here/.venv/bin/pip" install -q --disable-pip-version-check -e "$here[test]"
# Byte-compile now: the Git hooks start Python on every commit and checkout, and must not
# pay for compiling snapver when PYTHONDONTWRITEBYTECODE is set or the tree is read-only.
"$here/.venv/bin/python" -m compileall -q "$here/snapver"
echo "setup: snapver $("$here/.venv/bin/snapver" --version | awk '{print $NF}') in $here/.venv"
