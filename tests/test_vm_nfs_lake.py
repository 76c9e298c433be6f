"""A lake on a storage server, over a real NFS export (issue 18), in the QEMU guest only.

The host's kernel has FUSE but no NFS client; the guest (vagrant/run-vm-tests) has both
nfsd and the NFS client, so the server and the node are the guest itself: the lake is
exported by the kernel's nfsd on 127.0.0.1 and mounted back with the README's options
(lookupcache=none, actimeo=0), sshd on 127.0.0.1 with the node's key as a forced command.
After each `git checkout` returns, every file of the volume, and its listing, must read
as the target version: the caching settings are what this proves.

On a ZFS lake this failed until a checkout stopped unmounting the volume it replaces
(snapver/backends/zfslive.py): nfsd holds a filesystem a node has read, the server's
`zfs rename` failed "dataset is busy", and the node read the old version after `git
checkout` returned."""

from __future__ import annotations

import contextlib
import os
import shlex
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

from tests.fixtures.btrfs import need_root_and
from tests.fixtures.git import env, git, tree_digest
from tests.fixtures.netns import SSH_OPTIONS

SNAPVER = [sys.executable, "-m", "snapver"]
ROOT = Path(__file__).resolve().parents[1]
NFS_OPTIONS = "hard,lookupcache=none,actimeo=0"  # as README says, and why


def sh(*argv, check=True, **kw) -> subprocess.CompletedProcess:
    done = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kw)
    if check and done.returncode:
        raise AssertionError(f"{argv}: {done.returncode}\n{done.stdout}\n{done.stderr}")
    return done


@contextlib.contextmanager
def nfs_mount(export: Path, where: Path, dataset: str | None = None):
    """export on 127.0.0.1 by the kernel's nfsd (NFSv4 only: no rpcbind), mounted at where.
    A ZFS lake (dataset) is shared the ZFS way, with sharenfs on its dataset: every dataset
    under it (each volume, each clone a checkout makes) inherits it and is exported as it is
    mounted. An exportfs of the top alone with crossmnt left the volumes' own filesystems
    writable by nobody (root squashed there)."""
    need_root_and("exportfs", "rpc.nfsd", "rpc.mountd", "mount.nfs4")
    sh("modprobe", "-a", "nfsd", "nfsv4", check=False)
    if not os.path.ismount("/proc/fs/nfsd"):
        sh("mount", "-t", "nfsd", "nfsd", "/proc/fs/nfsd")
    Path("/var/lib/nfs/v4recovery").mkdir(parents=True, exist_ok=True)
    Path("/var/lib/nfs/etab").touch()
    # rpcbind, where installed: NFSv4 needs none, but rpc.nfsd and mountd try to register.
    daemons = [subprocess.Popen(["rpcbind", "-f", "-w"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)] \
        if shutil.which("rpcbind") else []
    daemons.append(subprocess.Popen(["rpc.mountd", "-F", "-N", "3"], stdout=subprocess.DEVNULL,
                                    stderr=subprocess.DEVNULL))
    where.mkdir(parents=True, exist_ok=True)
    target = f"127.0.0.1:{export}"
    exports = Path("/etc/exports.d") / f"snapver-test-{os.getpid()}.exports"
    try:
        sh("rpc.nfsd", "-N", "3", "4")
        if dataset:
            Path("/etc/exports.d").mkdir(exist_ok=True)
            sh("zfs", "set", "sharenfs=rw=@127.0.0.1/32,sync,no_subtree_check,crossmnt,no_root_squash,insecure",
               dataset)
        else:
            # In a file of /etc/exports.d, not on exportfs's command line: `exportfs -ra`, which
            # OpenZFS runs when a pool goes (a test beside this one, under xdist), drops every
            # export no file lists, and the mount was refused ("access denied by server").
            exports.parent.mkdir(exist_ok=True)
            exports.write_text(f"{export} 127.0.0.1(rw,sync,no_subtree_check,crossmnt,no_root_squash,insecure)\n")
            sh("exportfs", "-ra")
        deadline = time.monotonic() + 60
        while True:
            done = sh("mount", "-t", "nfs4", "-o", NFS_OPTIONS, target, where, check=False)
            if done.returncode == 0:
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"NFS mount failed: {done.stderr}")
            time.sleep(1)  # nfsd's grace period after its start
        yield where
    finally:
        sh("umount", "-f", "-l", where, check=False)
        if dataset:
            sh("zfs", "inherit", "sharenfs", dataset, check=False)
        elif exports.exists():
            exports.unlink()
            sh("exportfs", "-ra", check=False)
        sh("rpc.nfsd", "0", check=False)
        for d in daemons:
            d.kill()
            d.wait()


def server_snapver(home: Path) -> str:
    """The snapver a node's forced command runs: the venv's console script where the package
    is installed, else (the guest runs the read-only source tree through PYTHONPATH) a script
    that does what guest-test does."""
    installed = Path(sys.executable).with_name("snapver")
    # In the guest a console script there is tests/test_vm_systemd.py's pip-installed copy,
    # which that module removes when it ends, maybe in the middle of this test.
    if installed.exists() and os.environ.get("SNAPVER_VM") != "1":
        return str(installed)
    wrapper = home / "snapver"
    cache = os.environ.get("PYTHONPYCACHEPREFIX")  # guest-test's compiled modules, outside the share
    bytecode = f"PYTHONPYCACHEPREFIX={shlex.quote(cache)}" if cache else "PYTHONDONTWRITEBYTECODE=1"
    wrapper.write_text(f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(ROOT))} {bytecode} "
                       f'exec {shlex.quote(sys.executable)} -m snapver "$@"\n')
    wrapper.chmod(0o755)
    return str(wrapper)


@contextlib.contextmanager
def loopback_sshd(home: Path, lake_spec: str):
    """sshd on 127.0.0.1 with the node's key as a forced command (`snapver serve --restrict`)."""
    need_root_and("sshd", "ssh", "ssh-keygen", "ip")
    sh("ip", "link", "set", "lo", "up")
    for key in ("host", "node"):
        sh("ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", key, "-f", home / key)
    config = home / "snapverd.toml"
    config.write_text(f'[serve]\nworkspaces = "{home / "workspaces"}"\nlakes = ["{lake_spec}"]\n\n'
                      '[[clients]]\nkey = "node"\nprojects = ["*"]\naccess = "read-write"\n')
    forced = f"{server_snapver(home)} serve --restrict --key node --config {config}"
    (home / "authorized_keys").write_text(f'command="{forced}",restrict {(home / "node.pub").read_text()}')
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (home / "sshd_config").write_text("\n".join([
        f"Port {port}", "ListenAddress 127.0.0.1", f"HostKey {home / 'host'}",
        f"AuthorizedKeysFile {home / 'authorized_keys'}", "PermitRootLogin prohibit-password",
        "PasswordAuthentication no", "KbdInteractiveAuthentication no", "UsePAM no", "StrictModes no", ""]))
    Path("/run/sshd").mkdir(exist_ok=True)
    proc = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(home / "sshd_config")], stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError("sshd did not start") from None
                time.sleep(0.2)
        yield port, " ".join(["ssh", "-i", str(home / "node"), *SSH_OPTIONS])
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_every_file_reads_as_the_checked_out_version_over_nfs(lake, repo, tmp_path):
    home = tmp_path / "server"
    home.mkdir()
    run_dir = Path("/run/svtest")
    run_dir.mkdir(exist_ok=True)
    lake_url = lake.spec if lake.backend == "btrfs" else "/" + lake.spec
    with loopback_sshd(home, lake.spec) as (port, ssh), nfs_mount(lake.root, tmp_path / "mnt",
                                                                        lake.spec if lake.backend == "zfs" else None) as mnt:
        e = {**env(), "SNAPVER_SSH": ssh, "XDG_RUNTIME_DIR": str(run_dir)}

        def node(*argv, cwd=repo):
            done = subprocess.run([str(a) for a in argv], cwd=cwd, env=e, capture_output=True, text=True,
                                  timeout=600)
            # A hook that fails says so, and Git carries on (exit 0).
            assert done.returncode == 0 and "Git carried on" not in done.stderr, f"{argv}: {done.stderr}"
            return done

        node(*SNAPVER, "init", "--lake", f"ssh://root@127.0.0.1:{port}{lake_url}", "--mount", mnt,
             *(["--backend", "zfs"] if lake.backend == "zfs" else []))
        assert str((repo / "data").readlink()).startswith(str(mnt))
        git(repo, "add", "snapver.toml")
        node("git", "commit", "-q", "-m", "snapver")
        data = repo / "data"
        for i in range(30):
            (data / f"f{i}.txt").write_text(f"v1 {i}\n" * (i + 1))
        node("git", "commit", "-q", "--allow-empty", "-m", "v1")
        v1 = git(repo, "rev-parse", "HEAD")
        one = tree_digest(data)
        for i in range(0, 30, 2):
            (data / f"f{i}.txt").write_text(f"v2 {i}\n")  # same names, new size and content
        for i in range(1, 30, 5):
            (data / f"f{i}.txt").unlink()  # gone in v2
        (data / "new.txt").write_text("only in v2\n")
        node("git", "commit", "-q", "--allow-empty", "-m", "v2")
        two = tree_digest(data)
        assert one != two
        for _ in range(3):
            node("git", "checkout", "-q", v1)
            assert tree_digest(data) == one, "after checking out v1, every file reads as v1"
            node("git", "checkout", "-q", "main")
            assert tree_digest(data) == two, "after checking out main, every file reads as v2"
        view = Path(node(*SNAPVER, "path", v1, "data").stdout.strip())
        assert str(view).startswith(str(mnt)) and tree_digest(view) == one
    shutil.rmtree(run_dir, ignore_errors=True)
