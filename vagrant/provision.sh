#!/usr/bin/env bash
# Makes a Debian 12 machine a snapver development box: OpenZFS in the kernel (zfs-dkms,
# zfsutils-linux, python3-pyzfs for libzfs_core), btrfs-progs, and a venv with snapver's
# Python dependencies. Run as root. Two callers, one package set:
#   Vagrantfile          on a booted box (builds the zfs module for the kernel it installs)
#   vagrant/build-image  inside a debootstrapped chroot (SNAPVER_KVER unset: the kernel it installs)
# SNAPVER_PYPROJECT points at snapver's pyproject.toml (its dependencies are installed from it).
set -euo pipefail
[ "$(id -u)" -eq 0 ] || { echo "provision: run as root" >&2; exit 1; }
pyproject=${SNAPVER_PYPROJECT:-/snapver/pyproject.toml}
venv=/opt/snapver/venv
export DEBIAN_FRONTEND=noninteractive

# zfs-dkms, zfsutils-linux and python3-pyzfs are in contrib (CDDL), which boxes and
# debootstrap leave out. Both sources formats exist in the wild: deb822 and one-line.
if [ -f /etc/apt/sources.list.d/debian.sources ]; then
  sed -i -E '/^Components:/{/contrib/!s/$/ contrib/}' /etc/apt/sources.list.d/debian.sources
fi
if [ -f /etc/apt/sources.list ]; then
  sed -i -E '/^deb(-src)? /{/ contrib/!s/ main( |$)/ main contrib\1/}' /etc/apt/sources.list
fi
apt-get update -q

# systemd, systemd-sysv and dbus: a box has them; build-image's debootstrap (minbase) does
# not, and its image boots a second time with systemd as PID 1 for the service's test.
# Headers before zfs-dkms in the same transaction: dkms builds the module for every
# kernel whose headers are installed (the kernel's, not the build host's `uname -r`).
packages=(
  linux-image-amd64 linux-headers-amd64 initramfs-tools
  dkms zfs-dkms zfsutils-linux python3-pyzfs
  btrfs-progs e2fsprogs util-linux kmod procps git ca-certificates
  python3 python3-venv python3-pip
  openssh-server openssh-client nfs-kernel-server nfs-common iproute2
  systemd systemd-sysv dbus
)
apt-get install -y -q --no-install-recommends "${packages[@]}"

# The zfs module must exist for the kernel this machine boots next: the newest installed
# one. dkms autoinstall is a no-op when the package's own hook already built it.
kver=${SNAPVER_KVER:-$(linux-version list | linux-version sort | tail -n 1)}
dkms autoinstall -k "$kver"
modinfo -k "$kver" zfs >/dev/null || { echo "provision: no zfs module for $kver" >&2; exit 1; }
echo "provision: zfs $(modinfo -k "$kver" -F version zfs) built for kernel $kver"

# --system-site-packages: python3-pyzfs's libzfs_core comes from Debian, not PyPI.
[ -x "$venv/bin/python" ] || python3 -m venv --system-site-packages "$venv"
mapfile -t deps < <(python3 - "$pyproject" <<'EOF'
import sys, tomllib
project = tomllib.load(open(sys.argv[1], "rb"))["project"]
print(*project["dependencies"], *project.get("optional-dependencies", {}).get("test", []), sep="\n")
EOF
)
# And the build backend of [build-system]: the systemd test installs snapver into this venv
# the way a user does (pip, offline in the guest), for the console script its units run.
mapfile -t build < <(python3 - "$pyproject" <<'EOF'
import sys, tomllib
print(*tomllib.load(open(sys.argv[1], "rb"))["build-system"]["requires"], sep="\n")
EOF
)
"$venv/bin/pip" install -q --disable-pip-version-check "${deps[@]}" "${build[@]}"
"$venv/bin/python" -c 'import libzfs_core, click, git, sqlite_utils, watchdog, pytest, setuptools'
apt-get clean
echo "provision: done (venv $venv)"
