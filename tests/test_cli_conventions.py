"""The CLI's conventions (issue 20): exit codes, the environment, --json, completion, messages.
Each runs the CLI as a process on a real lake, on Btrfs and on zfs-fuse."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

from tests.fixtures.daemon import Snapverd
from tests.fixtures.git import commit, env, git, snapver, write

ROOT = Path(__file__).resolve().parent.parent


def run(cwd: Path, *args: str, user: str | None = None, **extra_env: str) -> subprocess.CompletedProcess:
    argv = [sys.executable, "-m", "snapver", *args]
    if user:
        argv = ["runuser", "-u", user, "--", *argv]
    e = {k: v for k, v in env().items() if k not in ("SNAPVER_SOCKET", "SNAPVER_CONFIG")}
    return subprocess.run(argv, cwd=cwd, env={**e, **extra_env}, capture_output=True, text=True, timeout=120)


# ------------------------------------------------------------------ exit codes and environment

def test_each_documented_exit_code_is_what_the_command_returns(lake_repo):
    write(lake_repo / "data" / "a.csv", "1\n")
    commit(lake_repo, "v1", settle=True)
    assert run(lake_repo, "status", "--exit-code").returncode == 0, "clean: 0"
    assert run(lake_repo, "show", "--no-such-option").returncode == 2, "usage: click's 2"
    missing = run(lake_repo, "show", "0123abc")
    assert missing.returncode == 3 and missing.stderr.count("\n") == 1 and "Traceback" not in missing.stderr
    assert run(lake_repo, "path", "HEAD", "nosuchvolume").returncode == 3
    assert run(lake_repo, "gc", "--forget-unknown", "soon").returncode == 1, "a plain error: 1"
    assert run(lake_repo, "find", "accuracy>0.5").returncode == 1, "a name no version has: an error, 1"
    recorded = subprocess.run([sys.executable, "-c", "import snapver; snapver.snapshot(metrics={'accuracy': 0.1}, wip=False)"],
                              cwd=lake_repo, env=env(), capture_output=True, text=True)
    assert recorded.returncode == 0, recorded.stderr
    assert run(lake_repo, "find", "accuracy>0.5").returncode == 5, "no match: 5"
    nothing = run(lake_repo, "find", "accuracy>0.5", "--json")
    assert nothing.returncode == 5 and nothing.stdout.strip() == "[]"
    write(lake_repo / "data" / "b.csv", "2\n")
    changed = run(lake_repo, "status", "--exit-code", "--json")
    assert changed.returncode == 4 and any(r["changed"] for r in json.loads(changed.stdout))
    assert run(lake_repo, "status").returncode == 0, "without --exit-code a change is no failure"
    help_text = run(lake_repo, "--help").stdout
    for code in ("0  done", "2  usage error", "3  not found", "4  `status --exit-code`", "5  `find`"):
        assert code in help_text


def test_every_environment_variable_read_is_documented():
    """Each SNAPVER_* the code reads (os.environ, the hook shim) is in the README and, if it is a
    user's, in `snapver --help`."""
    read: set[str] = set()
    for path in [*(ROOT / "snapver").rglob("*"), *(ROOT / "hooks").iterdir()]:  # hooks/: the shims
        if path.suffix in (".py", ".sh") or (path.parent.name == "hooks" and path.is_file()):
            text = path.read_text()
            read |= set(re.findall(r"environ(?:\.get)?\(?\[?\s*\"(SNAPVER_[A-Z_]+)\"", text))
            # The shim's own variables (SNAPVER_PYTHON='...') are set there, not read from the environment.
            read |= set(re.findall(r"\$\{?(SNAPVER_[A-Z_]+)", text)) - set(re.findall(r"^(SNAPVER_[A-Z_]+)=", text, re.M))
    assert {"SNAPVER_SOCKET", "SNAPVER_CONFIG", "SNAPVER_LOCK_WAIT", "SNAPVER_SKIP"} <= read, read
    readme = (ROOT / "README.md").read_text()
    assert [v for v in sorted(read) if f"`{v}" not in readme and f"{v}`" not in readme] == []
    help_text = subprocess.run([sys.executable, "-m", "snapver", "--help"], capture_output=True, text=True).stdout
    for v in ("SNAPVER_SOCKET", "SNAPVER_CONFIG", "SNAPVER_DIRECT", "SNAPVER_SKIP", "SNAPVER_SSH", "SNAPVER_LOCK_WAIT"):
        assert v in help_text, v


def test_daemon_status_and_clients_find_the_configured_socket(lake_repo, nobody_repo, daemon_dir):
    d = Snapverd(daemon_dir, [lake_repo, nobody_repo]).start()
    try:
        # Neither asks the default socket (nothing there): --config, or SNAPVER_CONFIG, names the daemon's.
        by_option = run(lake_repo, "daemon", "--config", str(d.config), "status", "--json")
        assert by_option.returncode == 0, by_option.stderr
        assert str(lake_repo) in [w["workspace"] for w in json.loads(by_option.stdout)]
        by_env = run(lake_repo, "daemon", "status", "--json", SNAPVER_CONFIG=str(d.config))
        assert by_env.returncode == 0 and str(lake_repo) in by_env.stdout, by_env.stderr
        # A user who may not write the lake: served by the daemon the config names.
        snap = run(nobody_repo, "snapshot", "--wip", user="nobody", SNAPVER_CONFIG=str(d.config))
        assert snap.returncode == 0, snap.stderr
        log = run(nobody_repo, "log", "--all", "--json", user="nobody", SNAPVER_CONFIG=str(d.config))
        assert any(e["kind"] == "wip" for e in json.loads(log.stdout))
        gone = run(nobody_repo, "show", "0123abc", user="nobody", SNAPVER_CONFIG=str(d.config))
        assert gone.returncode == 3, "not found stays 3 when snapverd ran it: " + gone.stderr
    finally:
        d.stop()
    stopped = run(lake_repo, "daemon", "--config", str(d.config), "status")
    assert stopped.returncode == 1 and "snapverd is not running" in stopped.stderr


def test_a_user_without_snapverd_is_told_it_is_not_running(nobody_repo, daemon_dir):
    before = sorted(p.name for p in (nobody_repo / "data").resolve().parent.parent.iterdir())
    for argv in (["snapshot", "--wip"], ["snapshot", "-m", "x"]):
        done = run(nobody_repo, *argv, user="nobody", SNAPVER_SOCKET=str(daemon_dir / "none.sock"))
        assert done.returncode == 1, done.stdout
        assert "snapverd is not running" in done.stderr and "Traceback" not in done.stderr, done.stderr
        assert done.stderr.count("\n") == 1
    # The hook says the same, and Git carries on.
    hook = subprocess.run(["runuser", "-u", "nobody", "--", "git", "commit", "-q", "--allow-empty", "-m", "x"],
                          cwd=nobody_repo, env={**env(), "SNAPVER_SOCKET": str(daemon_dir / "none.sock"),
                                                "HOME": str(nobody_repo.parent)}, capture_output=True, text=True)
    assert hook.returncode == 0, hook.stderr
    assert "snapverd is not running" in hook.stderr and "unexpectedly" not in hook.stderr, hook.stderr
    assert sorted(p.name for p in (nobody_repo / "data").resolve().parent.parent.iterdir()) == before


# ------------------------------------------------------------------ --json

def envelope(done: subprocess.CompletedProcess, op: str, code: int = 0):
    """The one schema of --json on a command that changes something (README: --json)."""
    assert done.returncode == code, done.stderr
    out = json.loads(done.stdout)
    assert out["op"] == op and out["ok"] is (code == 0) and out["exit_code"] == code, out
    return out.get("result", out.get("error"))


def test_every_command_that_changes_something_speaks_one_json_schema(lake_repo):
    write(lake_repo / "models" / "m.pt", "v1")
    v1 = commit(lake_repo, "v1", settle=True)
    write(lake_repo / "models" / "m.pt", "v2")
    made = envelope(run(lake_repo, "snapshot", "--wip", "--json"), "snapshot")
    assert {s["volume"] for s in made} == {"data", "models", "logs"} and all(s["kind"] == "wip" for s in made)
    moved = envelope(run(lake_repo, "checkout", v1, "--json"), "checkout")
    assert moved["target"]["models"]["name"] == v1 and (lake_repo / "models" / "m.pt").read_text() == "v1"
    back = envelope(run(lake_repo, "restore", made[0]["name"], "models/m.pt", "--to", "old.pt", "--json"), "restore")
    assert back["snapshot"]["name"] == made[0]["name"] and (lake_repo / "old.pt").read_text() == "v2"
    (lake_repo / "old.pt").unlink()
    rel = envelope(run(lake_repo, "release", "prod", "--json"), "release create")
    assert rel["name"] == "prod" and rel["snapshot"] == v1
    assert envelope(run(lake_repo, "release", "set", "prod", v1, "--json"), "release set")["from"] == v1
    assert envelope(run(lake_repo, "release", "remove", "prod", "--json"), "release remove")["name"] == "prod"
    derived = envelope(run(lake_repo, "derive", f"models@{v1}", "tuned", "--json"), "derive")
    assert derived["volume"] == "tuned" and derived["source_snapshot"] == v1
    gc = envelope(run(lake_repo, "gc", "--dry-run", "--json"), "gc")
    assert set(gc) == {"decisions", "doubts", "pruned"} and all("keep" in d for d in gc["decisions"])
    assert envelope(run(lake_repo, "reindex", "--json"), "reindex")["snapshots"] > 0
    # A failure is said in the same schema on stdout (and as one line on stderr), nothing changed.
    before = run(lake_repo, "log", "--all", "--json").stdout
    missing = run(lake_repo, "checkout", "0123abc", "--json")
    assert "0123abc" in envelope(missing, "checkout", 3) and missing.stderr.startswith("snapver: ")
    assert envelope(run(lake_repo, "release", "remove", "nosuch", "--json"), "release remove", 3)
    assert run(lake_repo, "log", "--all", "--json").stdout == before


# ------------------------------------------------------------------ shell completion

def completions(repo: Path, words: str) -> list[str]:
    """What bash offers after `words` (the last one being completed): the script that
    `snapver completion bash` prints, sourced by a real bash, asked as bash asks it at TAB."""
    script = subprocess.run([sys.executable, "-m", "snapver", "completion", "bash"], capture_output=True, text=True,
                            check=True).stdout
    argv = words.split(" ")
    probe = (f"{script}\nCOMP_WORDS=({' '.join(repr(w) for w in argv)}); COMP_CWORD={len(argv) - 1}\n"
             "_snapver_completion snapver\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n")
    e = {**env(), "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    done = subprocess.run(["bash", "-c", probe], cwd=repo, env=e, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "Traceback" not in done.stderr, done.stderr
    return [line for line in done.stdout.splitlines() if line]


def test_completion_offers_revisions_snapshots_releases_and_volumes(lake_repo, monkeypatch):
    v1 = commit(lake_repo, "v1", settle=True)
    git(lake_repo, "branch", "experiment")
    snapver(lake_repo, "release", "prod")
    snapver(lake_repo, "release", "canary")
    # Real bash, with the generated script.
    assert {"HEAD", "main", "experiment", "release:prod", "release:canary"} <= set(completions(lake_repo, "snapver checkout "))
    assert completions(lake_repo, "snapver checkout exp") == ["experiment"]
    assert completions(lake_repo, "snapver show release:p") == ["release:prod"]
    assert v1 in completions(lake_repo, f"snapver show {v1[:6]}"), "a snapshot name from its first hex digits"
    assert completions(lake_repo, "snapver release remove ca") == ["canary"]
    assert sorted(completions(lake_repo, "snapver checkout HEAD --volume ")) == ["data", "logs", "models"]
    assert completions(lake_repo, "snapver path HEAD mo") == ["models"]
    assert completions(lake_repo, "snapver derive mod") == ["models@"]
    assert completions(lake_repo, "snapver lineage --upstream mod") == ["models@"]
    assert completions(lake_repo, "snapver derive models@rel") == ["models@release:canary", "models@release:prod"]
    assert "checkout" in completions(lake_repo, "snapver che")
    # In-process, through click's completion environment, as zsh and fish ask it.
    from click.testing import CliRunner

    from snapver.cli import cli

    monkeypatch.chdir(lake_repo)
    for shell, cword in (("zsh", "3"), ("fish", "pr")):  # fish gives the word being completed
        got = CliRunner().invoke(cli, prog_name="snapver", env={
            "_SNAPVER_COMPLETE": f"{shell}_complete", "COMP_WORDS": "snapver release set pr", "COMP_CWORD": cword})
        assert got.exit_code == 0 and "prod" in got.output and "canary" not in got.output, (shell, got.output)
    for shell in ("bash", "zsh", "fish"):
        assert "_SNAPVER_COMPLETE" in run(lake_repo, "completion", shell).stdout
    assert run(lake_repo, "completion", "tcsh").returncode == 2


def test_completion_outside_a_repository_offers_no_revisions_and_says_nothing(tmp_path):
    assert completions(tmp_path, "snapver checkout ") == []


# ------------------------------------------------------------------ what the tables and names say

def test_a_wip_name_as_log_prints_it_is_one_checkout_takes(lake_repo):
    write(lake_repo / "models" / "m.pt", "v1")
    commit(lake_repo, "v1", settle=True)
    write(lake_repo / "models" / "m.pt", "epoch 3")
    wip = snapver(lake_repo, "snapshot", "--wip", "--json").json["result"][0]["name"]
    write(lake_repo / "models" / "m.pt", "epoch 4")
    snapver(lake_repo, "snapshot", "--wip")
    printed = next(line.split()[0] for line in snapver(lake_repo, "log", "--all").out.splitlines()
                   if line.startswith(wip[:10]) and wip[40:] in line)
    assert printed == wip[:10] + wip[40:] and len(printed) < len(wip)
    snapver(lake_repo, "checkout", printed)
    assert (lake_repo / "models" / "m.pt").read_text() == "epoch 3"
    assert snapver(lake_repo, "show", printed, "--json").json["volumes"]["models"]["name"] == wip
    typo = run(lake_repo, "checkout", wip[:10] + ".20000101T000000.000000Z")
    assert typo.returncode == 3 and "no wip snapshot" in typo.stderr


def test_sizes_are_human_and_long_metric_names_keep_the_table(lake_repo):
    write(lake_repo / "models" / "m.pt", os.urandom(3 * 1024 * 1024))
    with open(lake_repo / "snapver.toml", "a") as f:
        f.write('[registry]\nmetrics = ["models/metrics.json"]\n')
    write(lake_repo / "models" / "metrics.json", json.dumps({"validation_accuracy_top5_after_finetune": 0.91, "loss": 0.2}))
    commit(lake_repo, "v1", "snapver.toml", settle=True)
    du = snapver(lake_repo, "du").out
    assert "MiB" in du and not re.search(r"\d,\d{3}", du), du
    shown = snapver(lake_repo, "show", "HEAD", "--space").out
    assert re.search(r"models .* 3\.[0-9] MiB, ", shown) and not re.search(r"\d,\d{3}", shown), shown
    table = snapver(lake_repo, "log", "--metric", "validation_accuracy_top5_after_finetune", "--metric", "loss").out
    header, row = table.splitlines()[:2]
    name_end = header.index("validation_accuracy_top5_after_finetune") + len("validation_accuracy_top5_after_finetune")
    assert row[:name_end].endswith("0.91"), "the value stands under its metric's name"
    assert row.index("0.2") + 3 == header.index("loss") + 4, "and the next column stays in place"


def test_progress_bars_only_on_a_terminal(capsys):
    from snapver.cli.transfer import progress_bars

    tick = progress_bars(quiet=False)("data", "a" * 40, 4096)  # stderr is captured here: no terminal
    tick(4096)
    tick(None)
    assert capsys.readouterr().err == "", "no bar, no escape codes in a log"


def test_init_takes_a_folder_name_that_is_not_ascii_or_a_project_id(tmp_path, lake):
    for folder, extra, expect in (("données-ü", [], r"donnees-u-[0-9a-f]{8}"), ("模型", [], r"lake-[0-9a-f]{8}"),
                                  ("plain", ["--project", "vision_team"], r"vision_team")):
        repo = tmp_path / folder
        repo.mkdir()
        git(repo, "init", "-q", "-b", "main")
        write(repo / "f", "x")
        git(repo, "add", "f")
        git(repo, "commit", "-q", "-m", "code")
        if extra:
            bad = run(repo, "init", *lake.init_args, "--project", "no/such id")
            assert bad.returncode == 1 and "not a valid project id" in bad.stderr
            assert not (repo / "snapver.toml").exists() and not (repo / "data").exists()
        made = envelope(run(repo, "init", *lake.init_args, *extra, "--json"), "init")
        assert re.fullmatch(expect, made["project"]), made
        write(repo / "data" / "a", "1")
        commit(repo, "data")
        assert set(snapver(repo, "log", "--json").json[0]["volumes"]) <= {"data", "models", "logs"}
    again = run(tmp_path / "plain", "init", *lake.init_args, "--project", "vision_team")
    assert again.returncode == 1


# ------------------------------------------------------------------ messages that tell the truth

def test_status_says_when_the_lake_is_not_at_heads_snapshot(lake_repo):
    write(lake_repo / "data" / "a.csv", "1")
    v1 = commit(lake_repo, "v1", settle=True)
    snapver(lake_repo, "release", "prod")
    write(lake_repo / "data" / "a.csv", "2")
    v2 = commit(lake_repo, "v2", settle=True)
    assert "not at HEAD" not in snapver(lake_repo, "status").out
    for rev in (v1, "release:prod"):
        snapver(lake_repo, "checkout", rev)
        said = snapver(lake_repo, "status")
        assert f"not at HEAD's snapshot ({v2[:10]}): data, models, logs" in said.out, said.out
        assert {r["not_at_head"] for r in snapver(lake_repo, "status", "--json").json} == {v2}
    snapver(lake_repo, "checkout", "HEAD")
    write(lake_repo / "data" / "b.csv", "3")
    snapver(lake_repo, "snapshot", "--wip")  # a wip of HEAD is HEAD's
    assert "not at HEAD" not in snapver(lake_repo, "status").out
    assert {r["not_at_head"] for r in snapver(lake_repo, "status", "--json").json} == {None}


def test_checking_out_a_commit_older_than_snapver_toml_leaves_the_lake_and_says_why(repo, lake):
    old = git(repo, "rev-parse", "HEAD")  # the repository's first commit: no snapver.toml
    snapver(repo, "init", *lake.init_args)
    git(repo, "add", "snapver.toml")
    write(repo / "data" / "a.csv", "versioned")
    commit(repo, "version the lake")
    done = subprocess.run(["git", "checkout", "-q", old], cwd=repo, env=env(), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr.count("predates versioning") == 1 and "snapver init" not in done.stderr, done.stderr
    assert (repo / "data" / "a.csv").read_text() == "versioned", "the lake stays as it is"
    back = subprocess.run(["git", "checkout", "-q", "main"], cwd=repo, env=env(), capture_output=True, text=True)
    assert "predates" not in back.stderr and (repo / "data" / "a.csv").read_text() == "versioned"


def test_snapverd_counts_the_workspaces_it_loaded_and_names_the_others(lake_repo, daemon_dir, tmp_path):
    from tests.fixtures.daemon import wait_for

    gone = tmp_path / "deleted-clone"
    d = Snapverd(daemon_dir, [lake_repo, gone]).start()
    try:
        assert wait_for(lambda: "ready" in d.log.read_text(), 10)
        ready = next(line for line in d.log.read_text().splitlines() if "snapverd ready" in line)
        assert f"1 workspace(s) watched, 1 not: {gone}" in ready, ready
        # A commit the daemon snapshots (made without the hooks) shows its subject in `log`.
        write(lake_repo / "models" / "m.pt", "by a tool")
        subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", "trained by a tool"], cwd=lake_repo,
                       env={**env(), "SNAPVER_SKIP": "1"}, check=True)
        sha = git(lake_repo, "rev-parse", "HEAD")
        assert wait_for(lambda: [e for e in snapver(lake_repo, "log", "--json").json if e["commit"] == sha], 10)
        line = next(x for x in snapver(lake_repo, "log").out.splitlines() if x.startswith(sha[:10]))
        assert "trained by a tool" in line, line
    finally:
        d.stop()


def test_scan_separates_flagged_suspicious_and_clean_and_a_team_allows_its_globals(lake_repo):
    write(lake_repo / "models" / "evil.pkl", b"cos\nsystem\n(S'echo hi'\ntR.")
    write(lake_repo / "models" / "ours.pkl", b"cmylib.models\nModel\n)\x81.")
    write(lake_repo / "models" / "weights.pt", b"cnumpy.core.multiarray\n_reconstruct\n)\x81.")
    commit(lake_repo, "models", settle=True)
    report = run(lake_repo, "scan")
    assert report.returncode == 1
    lines = report.stdout.splitlines()
    assert lines[0] == "models: 3 model file(s): 1 flagged, 1 suspicious, 1 clean", lines
    assert [line.split()[0] for line in lines[1:]] == ["FLAGGED", "suspicious", "clean"], lines
    assert "mylib.models.Model (suspicious)" in lines[2] and "os.system (dangerous)" in lines[1]
    # The team's own framework: accepted by [scan] allow, read as every setting is (checked first).
    toml = (lake_repo / "snapver.toml").read_text()
    (lake_repo / "snapver.toml").write_text(toml + '[scan]\nallow = ["my lib"]\n')
    bad = run(lake_repo, "scan")
    assert bad.returncode == 1 and "[scan] allow" in bad.stderr and "not a module.name pattern" in bad.stderr
    (lake_repo / "snapver.toml").write_text(toml + '[scan]\nallow = ["mylib.*"]\n')
    states = {f["path"]: f["state"] for f in json.loads(run(lake_repo, "scan", "--json").stdout)["models"]}
    assert states == {"evil.pkl": "flagged", "ours.pkl": "clean", "weights.pt": "clean"}
    (lake_repo / "snapver.toml").write_text(toml + '[scan]\nallow = ["mylib.*", "os.*"]\n')
    assert run(lake_repo, "scan").returncode == 0, "allowing a dangerous global is the team's call too"
    assert run(lake_repo, "release", "v1").returncode == 0
