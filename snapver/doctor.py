"""`snapver doctor`: what crashed operations left behind, and `--repair` to finish or undo it.

Two sources, because the catalog (and with it the journal) may be lost:

- the operation journal (journal.py): each interrupted operation with its intent
  and the steps it recorded. Each kind has a repair below, which finishes the
  operation or undoes it, working from what is really on the filesystem;
- the filesystem alone (Backend.tidy): half-made swaps of a checkout, retired
  volumes whose deletion was lost, views left unmounted. These are repaired
  whether or not the journal still knows why they are there.

Repairs are idempotent: a repair that is itself interrupted is run again.
A new kind of multi-step operation (receive) adds its repair to REPAIRS.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from . import journal


def _finish_checkout(ws, op) -> str:
    return ws.finish_checkout(op)


def _finish_derive(ws, op) -> str:
    from . import registry

    return registry.finish_derive(ws, op)


def _end_gc(ws, op) -> str:
    """A gc is ended, not finished: what it destroyed is forgotten by the catalog, what it had
    not reached yet stays (the next gc decides again, with the branches and tags of now)."""
    gone, left = [], []
    for volume, name in op.intent.get("destroy", []):
        if ws.backend.find(ws.project, volume, name) is None:
            ws.catalog.forget_snapshot(ws.project, volume, name)
            gone.append(name)
        else:
            left.append(name)
    return f"gc ended: {len(gone)} snapshot(s) it had destroyed forgotten, {len(left)} it had not reached kept"


# kind -> repair(ws, op) -> one line saying what was done; run with the workspace lock held.
REPAIRS: dict[str, Callable] = {
    "checkout": _finish_checkout,
    "derive": _finish_derive,
    "gc": _end_gc,
}


@dataclass
class Report:
    interrupted: list[journal.Operation] = field(default_factory=list)
    leftovers: list[str] = field(default_factory=list)  # found on the filesystem
    repaired: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not self.interrupted and not self.leftovers

    def as_dict(self) -> dict:
        return {"clean": self.clean, "interrupted": [o.as_dict() for o in self.interrupted],
                "leftovers": self.leftovers, "repaired": self.repaired}


def diagnose(ws) -> Report:
    """What is unfinished in this workspace; changes nothing. Takes the lock, so an
    operation still running is waited for, not mistaken for an interrupted one."""
    with ws.lock():
        return Report(journal.interrupted(ws, locked=True),
                      ws.backend.tidy(ws.project, ws.id, ws.volumes, repair=False))


def repair(ws) -> Report:
    """Finish or undo every interrupted operation, then tidy what the filesystem shows;
    the report says what was found and done, and what is still wrong (if anything)."""
    done: list[str] = []
    with ws.lock():
        fixed = ws.backend.tidy(ws.project, ws.id, ws.volumes, repair=True)
        done += [f"tidied: {line}" for line in fixed]
        for op in journal.interrupted(ws, locked=True):
            fix = REPAIRS.get(op.kind)
            if fix is None:
                continue  # an operation of a newer snapver: left for it, and still reported
            done.append(fix(ws, op))
            journal.close(ws, op)
    after = diagnose(ws)
    after.repaired = done
    return after
