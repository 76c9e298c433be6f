"""`snapver completion bash|zsh|fish`: the shell's completion script (click's own)."""

from __future__ import annotations

import click

from . import cli


@cli.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell):
    """Print the completion script of SHELL: commands, options, and revisions, snapshot
    names, releases and volumes of the repository you are in.

    \b
    bash:  eval "$(snapver completion bash)"     (in ~/.bashrc)
    zsh:   eval "$(snapver completion zsh)"      (in ~/.zshrc)
    fish:  snapver completion fish > ~/.config/fish/completions/snapver.fish
    """
    from click.shell_completion import get_completion_class

    complete = get_completion_class(shell)
    assert complete is not None  # the Choice above admits only the shells click knows
    click.echo(complete(cli, {}, "snapver", "_SNAPVER_COMPLETE").source())
