"""[serve] and [[clients]] of snapverd.toml, and what a restricted key may ask (serveaccess.py):
pure parsing and checks, in-process (the end-to-end refusals are in test_remote_lake.py)."""

from __future__ import annotations

import subprocess

import pytest

from snapver import serveaccess
from snapver.daemonconfig import DaemonConfig
from snapver.errors import SnapverError
from snapver.tomlcheck import ConfigError


def load(tmp_path, text: str):
    path = tmp_path / "snapverd.toml"
    path.write_text(text)
    return DaemonConfig.load(path).serving


def test_clients_are_read_and_checked(tmp_path):
    serving = load(tmp_path, '[serve]\nworkspaces = "/srv/nodes"\nlakes = ["/srv/lake"]\n\n'
                             '[[clients]]\nkey = "gpu1"\nprojects = ["vision"]\naccess = "read-write"\n\n'
                             '[[clients]]\nuser = "jobs"\nprojects = ["*"]\n')
    assert str(serving.workspaces) == "/srv/nodes" and serving.lakes == ("/srv/lake",)
    gpu1 = serveaccess.client_for(serving, {"gpu1"}, "root")
    assert gpu1.write and gpu1.reaches("vision") and not gpu1.reaches("other")
    jobs = serveaccess.client_for(serving, set(), "jobs")
    assert not jobs.write and jobs.reaches("anything")
    with pytest.raises(SnapverError, match="not a client"):
        serveaccess.client_for(serving, {"gpu2"}, "root")
    serveaccess.check(gpu1, "vision", "snapshot", "/srv/lake", serving)
    with pytest.raises(SnapverError, match="may not reach project other"):
        serveaccess.check(gpu1, "other", "status")
    with pytest.raises(SnapverError, match="read-only"):
        serveaccess.check(jobs, "vision", "checkout")
    with pytest.raises(SnapverError, match="may not run gc"):
        serveaccess.check(gpu1, "vision", "gc")
    with pytest.raises(SnapverError, match="not one this server serves"):
        serveaccess.check(gpu1, "vision", "init", "/elsewhere", serving)


@pytest.mark.parametrize("text, said", [
    ('[[clients]]\nprojects = ["a"]\n', "needs key"),
    ('[[clients]]\nkey = "k"\n', "needs projects"),
    ('[[clients]]\nkey = "k"\nprojects = ["a b"]\n', "not a valid project"),
    ('[[clients]]\nkey = "k"\nprojects = ["a"]\naccess = "rw"\n', "read-only"),
    ('[[clients]]\nkey = "k"\nprojects = ["a"]\nshell = true\n', "shell"),
    ('[serve]\nworkspaces = "relative"\n', "absolute"),
])
def test_a_bad_clients_table_is_one_error_naming_it(tmp_path, text, said):
    with pytest.raises(ConfigError, match=said):
        load(tmp_path, text)


@pytest.mark.parametrize("original, said", [
    (None, "no shell"),
    ("", "no shell"),
    ("sh -c id", "runs `snapver serve` only"),
    ("snapver serve; sh", "runs `snapver serve` only"),
    ("/usr/bin/snapver serve --workspace a/b extra", "only"),
    ("snapver serve session /lake", "only"),
    ("snapver daemon", "runs `snapver serve` only"),
    ("snapver serve --workspace 'a/b", "runs `snapver serve` only"),
])
def test_the_forced_command_takes_snapver_serve_only(original, said):
    with pytest.raises(SnapverError, match=said):
        serveaccess.requested(original)


def test_the_forced_command_passes_serve_through_as_words():
    assert serveaccess.requested("/opt/bin/snapver serve --workspace 'p/n'") == ["--workspace", "p/n"]
    assert serveaccess.requested("snapver serve session /srv/lake p") == ["session", "/srv/lake", "p"]


def test_a_keys_fingerprint_is_ssh_keygens(tmp_path):
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(tmp_path / "k")], check=True)
    line = (tmp_path / "k.pub").read_text()
    said = subprocess.run(["ssh-keygen", "-l", "-f", str(tmp_path / "k.pub")], capture_output=True,
                          text=True, check=True).stdout.split()[1]
    assert serveaccess.fingerprint(line) == said
    assert serveaccess.fingerprint("ssh-ed25519 not-base64!") is None
