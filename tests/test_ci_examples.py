"""examples/ci/ cannot rot: each file is valid YAML of its CI's shape, every `snapver`
command line it runs parses with the CLI's own click parser (in-process, nothing run), and
the GitLab job's snapver lines do what the README says on a real lake (Btrfs and zfs-fuse)."""

from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import click
import pytest
import yaml

from snapver.cli import cli
from tests.fixtures.git import commit, env, snapver, write

CI = Path(__file__).parents[1] / "examples" / "ci"
# `snapver ARGS` up to the end of its shell command: a pipe, `;`, `&&`, `)` of a $(...).
CALL = re.compile(r"(?:^|[\s;&|(])snapver\s+([^|;&)\n]*)")


def github_scripts(doc: dict) -> list[str]:
    on = doc.get("on", doc.get(True))  # YAML 1.1 reads a bare `on:` key as true, as GitHub knows
    assert on["push"], "runs on push"
    runs = [step["run"] for job in doc["jobs"].values() for step in job["steps"] if "run" in step]
    assert all("self-hosted" in job["runs-on"] for job in doc["jobs"].values())
    return runs


def gitlab_scripts(doc: dict) -> list[str]:
    jobs = [j for k, j in doc.items() if isinstance(j, dict) and "script" in j and not k.startswith(".")]
    assert jobs and all(j["tags"] for j in jobs), "each job runs on a tagged (self-hosted) runner"
    return [line for j in jobs for key in ("before_script", "script", "after_script") for line in j.get(key, [])]


def snapver_calls(scripts: list[str]) -> list[list[str]]:
    # A `: ` in an unquoted line makes YAML read a mapping: the CI would reject the file.
    assert all(isinstance(s, str) for s in scripts), [s for s in scripts if not isinstance(s, str)]
    return [shlex.split(m.group(1)) for text in scripts for m in CALL.finditer(text)]


def parse(args: list[str]) -> str:
    """Parse args as `snapver ARGS` would, down to the leaf command; its full name. A missing
    command, an unknown option, a bad value raise click's own error."""
    cmd: click.Command = cli
    ctx = None
    name = "snapver"
    rest = list(args)
    while True:
        ctx = cmd.make_context(name, rest, parent=ctx)
        if not isinstance(cmd, click.Group):
            return ctx.command_path
        rest = [*getattr(ctx, "_protected_args", []), *ctx.args]
        assert rest, f"snapver {' '.join(args)}: no command"
        name, sub, rest = cmd.resolve_command(ctx, rest)
        assert sub is not None, f"snapver {' '.join(args)}: no command {name}"
        cmd = sub


@pytest.mark.parametrize("file, scripts", [("github-actions.yml", github_scripts), ("gitlab-ci.yml", gitlab_scripts)])
def test_every_snapver_line_of_the_ci_examples_exists_in_the_cli(file, scripts):
    doc = yaml.safe_load((CI / file).read_text())
    calls = snapver_calls(scripts(doc))
    commands = {parse(args) for args in calls}
    # The flow the README promises: a cascade on push, then a gated release.
    assert {"snapver cascade", "snapver release set"} <= commands, commands
    gated = [a for a in calls if a[:2] == ["release", "set"]]
    assert gated and all("--if" in a for a in gated)


@pytest.mark.parametrize("args", [["cascade", "--jobs-typo", "2"], ["release", "set", "x", "HEAD", "--iff", "a>1"],
                                  ["cascde"], ["release", "set"]])
def test_the_check_fails_on_a_line_that_would_rot(args):
    with pytest.raises((click.UsageError, AssertionError)):
        parse(args)


TRAIN = """
import json, os, pathlib
models = pathlib.Path(os.environ["SNAPVER_INPUT_MODELS"])
acc = float((models / "quality.txt").read_text())
out = pathlib.Path(os.environ["SNAPVER_OUTPUT"])
(out / "weights.txt").write_text(str(acc * 2))
(out / "metrics.json").write_text(json.dumps({"accuracy": acc}))
"""


def test_the_gitlab_job_promotes_only_a_better_model(lake_repo):
    """The job's own `snapver` lines (after its cd, fetch and checkout), run in a real
    working tree: a good build becomes the release, a worse one leaves it where it was."""
    repo = lake_repo
    doc = yaml.safe_load((CI / "gitlab-ci.yml").read_text())
    lines = [line for line in gitlab_scripts(doc) if line.startswith("snapver ") and line in doc["snapver-cascade"]["script"]]
    assert [shlex.split(line)[1] for line in lines] == ["status", "cascade", "cascade", "commit", "release"]
    write(repo / "scripts" / "train.py", TRAIN)
    write(repo / "models" / "quality.txt", "0.95\n")
    with open(repo / "snapver.toml", "a") as f:
        f.write('\n[registry]\nmetrics = ["ft/metrics.json"]\n')
    commit(repo, "a base model and a fine-tune recipe", "scripts/train.py", "snapver.toml")
    snapver(repo, "derive", "models@HEAD", "ft", "--run", "python3 scripts/train.py", "--input", "models@HEAD")
    sha = commit(repo, "ft", "snapver.toml")

    def job(sha: str) -> list[int]:
        codes = []
        for line in lines:
            argv = [os.path.expandvars(a) for a in shlex.split(line)]
            done = subprocess.run([sys.executable, "-m", *argv], cwd=repo, capture_output=True, text=True,
                                  env={**env(), "CI_COMMIT_SHA": sha}, timeout=300)
            codes.append(done.returncode)
            if done.returncode:
                assert argv[1:3] == ["release", "set"] and "does not meet accuracy>0.9" in done.stderr, done.stderr
        return codes

    try:
        assert job(sha) == [0, 0, 0, 0, 0]
        good = snapver(repo, "release", "list", "--json").json
        assert [r["name"] for r in good] == ["candidate"]
        assert (repo / "ft" / "weights.txt").read_text() == "1.9"

        write(repo / "models" / "quality.txt", "0.5\n")
        sha = commit(repo, "a worse base model")
        assert job(sha) == [0, 0, 0, 0, 1]  # built and committed, but not promoted
        assert (repo / "ft" / "weights.txt").read_text() == "1.0"
        assert snapver(repo, "release", "list", "--json").json == good
    finally:  # a ZFS hold keeps a released snapshot, and so the test's lake, from being destroyed
        for r in snapver(repo, "release", "list", "--json").json:
            snapver(repo, "release", "remove", r["name"])
