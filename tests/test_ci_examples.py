"""examples/ci/ cannot rot: each file is valid YAML of its CI's shape, and every `snapver`
command line it runs parses with the CLI's own click parser (in-process, nothing run)."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import click
import pytest
import yaml

from snapver.cli import cli

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
