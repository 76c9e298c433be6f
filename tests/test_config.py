"""snapver.toml and snapverd.toml: read in one place and checked (an unknown table or key, a
wrong type or broken TOML is one line naming the file and the line), written by one writer
that keeps the user's comments and layout.

The parsing is unit-tested in-process; what a user sees (every command, a hook, gc, derive,
the daemon) runs on a real lake, Btrfs and zfs-fuse."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from snapver.config import CONFIG_NAME, ProjectConfig, with_volume
from snapver.daemon import DaemonConfig
from snapver.errors import SnapverError
from snapver.tomlcheck import ConfigError
from tests.fixtures.daemon import Snapverd, wait_for
from tests.fixtures.git import env, git, snapver

GOOD = '[project]\nid = "p-1"\nbackend = "btrfs"\nvolumes = ["data", "models"]\n'


def load(tmp_path: Path, text: str) -> ProjectConfig:
    (tmp_path / CONFIG_NAME).write_text(text)
    return ProjectConfig.load(tmp_path)


def error(tmp_path: Path, text: str) -> str:
    with pytest.raises(ConfigError) as e:
        load(tmp_path, text)
    said = str(e.value)
    assert said.startswith(str(tmp_path / CONFIG_NAME)) and "\n" not in said
    return said[len(str(tmp_path / CONFIG_NAME)):]


# ------------------------------------------------------------------ parsing, in-process

def test_every_documented_table_is_read(tmp_path):
    config = load(tmp_path, GOOD + """
[lake]
path = "/srv/lake"
[remote]
name = "lab"
url = "ssh://gpu/tank/lake"
push = true
[retention]
unreachable = "7d"
wip = 5
[registry]
metrics = "models/metrics.json"
params = ["params.yaml"]
[releases]
from_tags = false
[scan]
on_snapshot = false
volumes = ["models"]
[volumes.models]
license = "MIT"
source = "https://example.com"
""")
    assert (config.project, config.volumes, config.lake) == ("p-1", ["data", "models"], "/srv/lake")
    assert config.remote == {"name": "lab", "url": "ssh://gpu/tank/lake", "push": True}
    assert config.retention.unreachable.days == 7 and config.retention.wip.keep_newest == 5
    r = config.registry
    assert (r.metrics, r.params, r.from_tags, r.scan_on_snapshot, r.scan_volumes) == \
        (["models/metrics.json"], ["params.yaml"], False, False, ["models"])
    assert r.provenance == {"models": {"license": "MIT", "source": "https://example.com"}}
    assert load(tmp_path, GOOD).retention is None, "no [retention]: the default (or the daemon's)"


@pytest.mark.parametrize("extra, said", [
    ('\n[retension]\nwip = "1"\n', ' line 6: unknown table [retension]; known: build, cascade, lake, project, registry, releases, '
                                   'remote, retention, scan, volumes'),
    ('[scan]\non_snapshot = true\nvolume = ["models"]\n', " line 7: [scan] unknown setting(s) volume: "
                                                          "the settings are on_snapshot, volumes"),
    ('[scan]\non_snapshot = "yes"\n', " line 6: [scan] on_snapshot = 'yes' must be true or false"),
    ("[scan]\nvolumes = \"models\"\n", ' line 6: [scan] volumes = \'models\' must be a list of strings'),
    ('[remote]\npush = 1\n', " line 6: [remote] push = 1 must be true or false"),
    ('[volumes.models]\nlicence = "MIT"\n', " line 6: [volumes.models] unknown setting(s) licence"),
    ('[volumes.models]\nlicense = 3\n', " line 6: [volumes.models] license = 3 must be a string"),
    ('[registry]\nmetrics = ["../x.json"]\n', " line 6: [registry] metrics: '../x.json' must be relative"),
    ('[retention]\nkept = "30d"\nwip = "1d1h"\n', " line 7: [retention] wip: '1d1h': the period must not be longer"),
    ('[retention]\nunreachable = 30\n', " line 6: [retention] unreachable = 30 is not understood"),
    ('[lake]\npath = "/x"\nimage = 3\n', " line 7: [lake] image = 3 must be a string"),
    ('[[scan]]\n', " line 5: scan = [{}] is outside any table: settings go under their [table] header"),
])
def test_unknown_tables_keys_and_wrong_types_name_the_line(tmp_path, extra, said):
    assert error(tmp_path, GOOD + extra).startswith(said)


@pytest.mark.parametrize("text, said", [
    ('volumes = ["x"]\n' + GOOD, " line 1: volumes = ['x'] is outside any table"),
    ('name = "x"\n' + GOOD, " line 1: unknown setting name outside any table; known: build, cascade, lake, project,"),
    ('[project]\nid = "p-1"\nvolumes = ["data", "../up"]\n', " line 3: [project] volumes: '../up' is not a valid"),
    ('[project]\nid = "p-1"\nvolumes = []\n', " line 3: [project] volumes names no volumes"),
    ('[project]\nid = "p-1"\nvolumes = ["a", "a"]\n', " line 3: [project] volumes names a volume twice"),
    ('[project]\nvolumes = ["a"]\n', " line 1: [project] has no id"),
    ('[project]\nid = "p-1"\nbackend = "ext4"\nvolumes = ["a"]\n', " line 3: [project] backend = 'ext4': the backends"),
    ('[scan]\n', ": no [project] table"),
    ('[project]\nid = "p-1\nvolumes = ["a"]\n', " line 2, column 10: not valid TOML: "),
    ('[project]\nid = "p-1"\n[project]\n', " line 3, column 9: not valid TOML: Cannot declare"),
])
def test_project_table_and_broken_toml(tmp_path, text, said):
    assert error(tmp_path, text).startswith(said)


@pytest.mark.parametrize("extra, line", [
    ('[scan]\n"on_snapshot" . "x" = 1\n', 6),  # a quoted dotted key
    ('[ "scan" ]  # first\n\n"on_snapshot" = "yes"\n', 7),
    ('[scan]\nvolumes = [\n  "models",\n  3,\n]\n', 6),  # a multi-line value: the key's line
])
def test_the_line_of_quoted_dotted_and_multi_line_keys(tmp_path, extra, line):
    assert error(tmp_path, GOOD + extra).startswith(f" line {line}: [scan] ")


def test_not_utf8_and_not_a_regular_file(tmp_path):
    (tmp_path / CONFIG_NAME).write_bytes(b"\xff\xfe[project]")
    with pytest.raises(ConfigError, match="not UTF-8"):
        ProjectConfig.load(tmp_path)
    (tmp_path / CONFIG_NAME).unlink()
    (tmp_path / CONFIG_NAME).symlink_to("/etc/passwd")
    with pytest.raises(SnapverError, match="is not a regular file"):
        ProjectConfig.load(tmp_path)


def test_a_hostile_value_is_not_echoed_whole(tmp_path):
    said = error(tmp_path, GOOD + f'[scan]\non_snapshot = "{"x" * 5000}"\n')
    assert len(said) < 200 and "..." in said


MESSY = """# Our lake. Comments stay where they are.
[scan]            # before [project]: a valid file
volumes = ["models"]

[project]
id = "p-1"  # never change this
volumes = [
    "data",    # the raw set
    "models",
]
backend = "btrfs"

[volumes.models]
license = "MIT"
"""


def test_with_volume_keeps_comments_order_and_layout(tmp_path):
    before = load(tmp_path, MESSY)
    new = with_volume(tmp_path, "ft")
    assert new == MESSY.replace('    "models",\n]', '    "models",\n    "ft",\n]'), new
    (tmp_path / CONFIG_NAME).write_text(new)
    after = ProjectConfig.load(tmp_path)
    assert after.volumes == ["data", "models", "ft"]
    after.volumes = before.volumes
    assert after == before, "nothing else changed"


@pytest.mark.parametrize("volumes, expected", [
    ('volumes = ["data", "models"]', 'volumes = ["data", "models", "ft"]'),
    ('volumes = [\n  "data",\n  "models"\n]', 'volumes = [\n  "data",\n  "models",\n  "ft"\n]'),
])
def test_with_volume_on_single_and_multi_line_arrays(tmp_path, volumes, expected):
    text = f'[project]\nid = "p-1"\n{volumes}\n'
    load(tmp_path, text)
    assert with_volume(tmp_path, "ft") == text.replace(volumes, expected)


def test_with_volume_on_an_inline_project_table(tmp_path):
    load(tmp_path, 'project = {id = "p-1", volumes = ["data"]}  # inline\n')
    assert with_volume(tmp_path, "ft") == 'project = {id = "p-1", volumes = ["data", "ft"]}  # inline\n'


def test_with_volume_refuses_a_broken_file_and_a_volume_named_already(tmp_path):
    (tmp_path / CONFIG_NAME).write_text(GOOD + "[retension]\n")
    with pytest.raises(ConfigError, match="unknown table"):
        with_volume(tmp_path, "ft")
    (tmp_path / CONFIG_NAME).write_bytes(b"\xff" + GOOD.encode())
    with pytest.raises(ConfigError, match="not UTF-8"):
        with_volume(tmp_path, "ft")
    (tmp_path / CONFIG_NAME).write_text(GOOD)
    with pytest.raises(SnapverError, match="names models already"):
        with_volume(tmp_path, "models")
    assert (tmp_path / CONFIG_NAME).read_text() == GOOD, "with_volume only returns the text"


def test_save_writes_what_load_reads(tmp_path):
    config = ProjectConfig(project="p-1", volumes=["data", "models"], backend="zfs", lake="tank/lake")
    config.save(tmp_path)
    text = (tmp_path / CONFIG_NAME).read_text()
    assert text.startswith("# snapver:") and 'volumes = ["data", "models"]' in text
    assert ProjectConfig.load(tmp_path) == config


@pytest.mark.parametrize("text, said", [
    ('socket = "/run/x.sock"\ndebounse = "1s"\n', " line 2: unknown setting(s) debounse"),
    ('socket = "/run/x.sock"\n\n[retention]\nwipp = "1h1d"\n', " line 4: [retention] unknown setting(s) wipp"),
    ('[[workspace]]\npath = "/a"\n[[workspace]]\npath = "/b"\nallow_user = ["bob"]\n',
     " line 5: [[workspace]] #2 unknown setting(s) allow_user"),
    ('poll_interval = 5\n', " line 1: poll_interval = 5 is not a duration"),
    ('debounce = "30s\n', " line 1, column 16: not valid TOML"),
])
def test_the_daemon_config_names_the_line_too(tmp_path, text, said):
    path = tmp_path / "snapverd.toml"
    path.write_text(text)
    with pytest.raises(ConfigError) as e:
        DaemonConfig.load(path)
    assert str(e.value).startswith(str(path) + said), str(e.value)


# ------------------------------------------------------------------ what a user sees, on a real lake

def snapshots(repo: Path) -> set[tuple[str, str]]:
    return {(e["volume"], e["name"]) for e in snapver(repo, "log", "--all", "--json").per_volume}


def one_line(result, *expected: str) -> None:
    err = (result.err if hasattr(result, "err") else result.stderr).strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for e in expected:
        assert e in err, err


@pytest.mark.parametrize("extra, said", [
    ('\n[retension]\nwip = "1"\n', "unknown table [retension]; known: build, cascade, lake, project,"),
    ('\n[scan]\non_snapshot = "yes"\n', "[scan] on_snapshot = 'yes' must be true or false"),
])
def test_every_command_refuses_a_bad_config_with_one_line(lake_repo, extra, said):
    toml = lake_repo / CONFIG_NAME
    good = toml.read_text()
    before = snapshots(lake_repo)
    toml.write_text(good + extra)
    line = len(good.splitlines()) + 2 + (1 if "scan" in extra else 0)
    for argv in (["status"], ["log"], ["snapshot"], ["gc", "--dry-run"], ["checkout", "HEAD"],
                 ["derive", "models@HEAD", "ft"]):
        done = snapver(lake_repo, *argv, ok=False)
        one_line(done, f"{toml} line {line}: {said}")
    assert toml.read_text() == good + extra, "nothing rewrote the file"
    toml.write_text(good)
    assert snapshots(lake_repo) == before, "nothing was snapshotted or removed"


def test_broken_toml_in_a_hook_and_in_gc(lake_repo):
    toml = lake_repo / CONFIG_NAME
    good = toml.read_text()
    before = snapshots(lake_repo)
    toml.write_text(good + '\n[retention]\nwip = "1h1d\n')  # an unclosed string
    line = len(good.splitlines()) + 3
    (lake_repo / "train.py").write_text("print('v2')\n")
    git(lake_repo, "add", "train.py")
    done = subprocess.run(["git", "commit", "-q", "-m", "v2"], cwd=lake_repo, env=env(),
                          capture_output=True, text=True)
    assert done.returncode == 0, "a hook never makes Git fail"
    one_line(done, f"{toml} line {line}, column", "not valid TOML", "(Git carried on)")
    assert git(lake_repo, "log", "-1", "--format=%s") == "v2"

    gc = snapver(lake_repo, "gc", ok=False)
    one_line(gc, f"{toml} line {line}, column", "not valid TOML")
    toml.write_text(good)
    assert snapshots(lake_repo) == before, "no snapshot taken under a broken config, none removed"


def test_derive_edits_snapver_toml_in_place(lake_repo):
    toml = lake_repo / CONFIG_NAME
    was = ProjectConfig.load(lake_repo)
    messy = f"""# Our lake. Comments stay where they are.
[scan]            # before [project]: a valid file
volumes = ["models", "ft"]

[project]
id = "{was.project}"  # never change this
volumes = [
    "data",    # the raw set
    "models",
    "logs",
]
backend = "{was.backend}"
""" + (f'\n[lake]\npath = "{was.lake}"\n' if was.lake else "")
    toml.write_text(messy)
    before = ProjectConfig.load(lake_repo)
    git(lake_repo, "commit", "-q", "-am", "snapver.toml rearranged by hand")
    snapver(lake_repo, "derive", "models@HEAD", "ft")
    assert toml.read_text() == messy.replace('    "logs",\n]', '    "logs",\n    "ft",\n]')
    after = ProjectConfig.load(lake_repo)
    assert after.volumes == [*before.volumes, "ft"]
    after.volumes = before.volumes
    assert after == before
    git(lake_repo, "commit", "-q", "-am", "derived ft")
    head = git(lake_repo, "rev-parse", "HEAD")
    assert ("ft", head) in snapshots(lake_repo), "the derived volume is snapshotted from now on"


def test_init_writes_a_file_that_reads_back(lake_repo):
    text = (lake_repo / CONFIG_NAME).read_text()
    assert text.startswith("# snapver:") and 'volumes = ["data", "models", "logs"]' in text
    assert ProjectConfig.load(lake_repo).volumes == ["data", "models", "logs"]


def test_the_daemon_refuses_a_workspace_with_a_broken_snapver_toml(lake_repo, daemon_dir):
    toml = lake_repo / CONFIG_NAME
    good = toml.read_text()
    d = Snapverd(daemon_dir, [lake_repo])
    toml.write_text(good + "\n[retension]\n")
    line = len(good.splitlines()) + 2
    done = subprocess.run([sys.executable, "-m", "snapver", "daemon", "--config", str(d.config)],
                          env={**env(), "SNAPVER_SOCKET": str(d.socket)}, capture_output=True, text=True,
                          timeout=30)
    assert done.returncode != 0
    one_line(done, f"{toml} line {line}: unknown table [retension]")
    assert not d.socket.exists()

    # Running with a good one, a SIGHUP while it is broken keeps the old config.
    toml.write_text(good)
    d.start()
    try:
        toml.write_text(good + "\n[retension]\n")
        d.proc.send_signal(signal.SIGHUP)
        # 30 s: a SIGHUP is handled between the main loop's rounds, late on a loaded machine.
        assert wait_for(lambda: "config not reloaded, keeping the old one" in d.log.read_text(), 30), \
            d.log.read_text()
        assert f"{toml} line {line}: unknown table [retension]" in d.log.read_text()
        time.sleep(0.5)
        assert d.proc.poll() is None and d.answers()
        toml.write_text(good)
        d.proc.send_signal(signal.SIGHUP)
        assert wait_for(lambda: "config reloaded" in d.log.read_text(), 30)
        assert "Traceback" not in d.log.read_text()
    finally:
        d.stop()
