"""Recipes: how a derived volume is built from its inputs (issue 17).

A recipe is a command and its inputs, each a volume at a revision (`models@release:base`,
`data@HEAD`). It comes from `snapver derive SRC@REV NEW --run CMD [--input VOL@REV ...]`
(kept in the catalog) or from snapver.toml's `[build.NEW]` (versioned with the code, checked
by config.py); where both name one volume, snapver.toml's wins. build.py runs a recipe,
cascade.py runs them in lineage order.
"""

from __future__ import annotations

import shlex
from datetime import datetime, timezone
from typing import NamedTuple

from . import names
from .derive import split_source
from .errors import NotFound, SnapverError


class Recipe(NamedTuple):
    volume: str
    run: str
    inputs: list[tuple[str, str]]  # (volume, rev), in the order given
    origin: str  # where it was declared: "snapver.toml" or "derive --run"

    @property
    def argv(self) -> list[str]:
        return argv_of(self.run, self.volume)

    def as_dict(self) -> dict:
        return {"volume": self.volume, "run": self.run, "origin": self.origin,
                "inputs": [f"{v}@{r}" for v, r in self.inputs]}


def argv_of(run: str, volume: str) -> list[str]:
    """The command as an argv list (no shell: a pipe or a redirection is the script's job)."""
    try:
        argv = shlex.split(run)
    except ValueError as e:
        raise SnapverError(f"the command that builds {volume} cannot be read ({e}): {run!r}") from None
    if not argv:
        raise SnapverError(f"the command that builds {volume} is empty")
    return argv


def check(volume: str, run: str, inputs: list[str], origin: str) -> Recipe:
    names.check_volume(volume)
    argv_of(run, volume)
    parsed: list[tuple[str, str]] = []
    for text in inputs:
        source, rev = split_source(text)
        if source == volume:
            raise SnapverError(f"{text}: a build of {volume} cannot read {volume} itself")
        if any(source == v for v, _ in parsed):
            raise SnapverError(f"{text}: {source} is an input twice")
        parsed.append((source, rev))
    return Recipe(volume, run, parsed, origin)


def record(ws, recipe: Recipe) -> None:
    created = datetime.now(timezone.utc).isoformat()
    ws.catalog.set_recipe(ws.project, recipe.volume, recipe.run, [f"{v}@{r}" for v, r in recipe.inputs], created)


def every(ws) -> dict[str, Recipe]:
    """Every recipe of the project, by the volume it builds."""
    found = {v: check(v, run, inputs, "derive --run") for v, run, inputs in ws.catalog.recipes(ws.project)}
    for volume, (run, inputs) in ws.config.builds.items():
        found[volume] = check(volume, run, inputs, "snapver.toml")
    return found


def get(ws, volume: str) -> Recipe:
    recipe = every(ws).get(names.check_volume(volume))
    if recipe is None:
        raise NotFound(f"{volume} has no recipe: give one with `snapver derive SRC@REV {volume} --run CMD` "
                       f"or [build.{volume}] in snapver.toml")
    return recipe
