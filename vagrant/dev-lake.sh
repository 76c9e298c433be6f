#!/usr/bin/env bash
# Run by Vagrant on every `vagrant up`, after provision.sh and the reboot into the kernel it
# installed: snapver from the synced folder (editable), a ZFS pool on a file and a Btrfs
# image, mounted at /lake/zfs and /lake/btrfs, ready to `snapver init --lake` on. Idempotent.
set -euo pipefail
src=${1:-/snapver}
dir=/var/lib/snapver-dev
/opt/snapver/venv/bin/pip install -q --disable-pip-version-check --no-deps -e "$src"
ln -sf /opt/snapver/venv/bin/snapver /usr/local/bin/snapver

echo zfs >/etc/modules-load.d/zfs.conf
modprobe zfs
mkdir -p "$dir" /lake/btrfs
if ! zpool list -H snapverdev >/dev/null 2>&1; then
  if [ -f "$dir/zfs.img" ]; then
    zpool import -d "$dir" snapverdev  # a file vdev is found by scanning its directory
  else
    truncate -s 8G "$dir/zfs.img"
    zpool create -m /lake/zfs snapverdev "$dir/zfs.img"
    zfs create -o atime=off snapverdev/lake
  fi
fi

if [ ! -f "$dir/btrfs.img" ]; then
  truncate -s 8G "$dir/btrfs.img"
  mkfs.btrfs -q "$dir/btrfs.img"
fi
grep -q ' /lake/btrfs ' /etc/fstab \
  || echo "$dir/btrfs.img /lake/btrfs btrfs loop,noatime,user_subvol_rm_allowed 0 0" >>/etc/fstab
mountpoint -q /lake/btrfs || mount /lake/btrfs
echo "dev-lake: snapver $(/opt/snapver/venv/bin/snapver --version | awk '{print $NF}');" \
  "ZFS lake snapverdev/lake at /lake/zfs ($(cat /sys/module/zfs/version)), Btrfs at /lake/btrfs"
