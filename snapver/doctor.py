"""`snapver doctor`: what crashed operations left behind, and `--repair` to finish or undo it.

Two sources, because the catalog (and with it the journal) may be lost:

- the operation journal (journal.py): each interrupted operation with its intent
  and the steps it recorded. Each kind has a repair below, which finishes the
  operation or undoes it, working from what is really on the filesystem;
- the filesystem alone (Backend.tidy, Backend.half_received): half-made swaps
  of a checkout, retired volumes whose deletion was lost, views left unmounted,
  what a cut receive left. These are repaired whether or not the journal still
  knows why they are there.

Receives are journaled at the lake, not in a workspace (received.Receiving),
since the far end of a push has none; doctor looks at both, and takes both locks.
Repairs are idempotent: a repair that is itself interrupted is run again.
A new kind of multi-step operation adds its repair to REPAIRS.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable

from . import derive, journal, links, received, seams, snapset
from .lock import NoRoom


def _finish_checkout(ws, op) -> str:
    return ws.finish_checkout(op)




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


# kind -> repair(place, op) -> one line saying what was done; run with the place's lock held
# (the workspace's; for a receive, the lake's receive lock).
REPAIRS: dict[str, Callable] = {
    "checkout": _finish_checkout,
    "snapshot": snapset.finish_snapshot,
    "restore": snapset.finish_restore,
    "move": links.finish_move,
    "derive": derive.finish_derive,
    "gc": _end_gc,
    "receive": received.finish_receive,
}


class Report:
    # A plain class, not a dataclass: ops imports this module on the hook path (see config.py).
    def __init__(self, interrupted: list[journal.Operation] | None = None, leftovers: list[str] | None = None,
                 repaired: list[str] | None = None, unsnapshotted: list[str] | None = None,
                 links: list[str] | None = None, half_made: list | None = None):
        self.interrupted = interrupted or []
        self.leftovers = leftovers or []  # found on the filesystem
        self.repaired = repaired or []
        # Commits on HEAD's first-parent line (the last snapset.MISSING_LOOKBACK, since the first
        # snapshotted one) without a snapshot: a hook that lost a race or did not run. Reported,
        # not "unclean": nothing can bring back the data they were made with.
        self.unsnapshotted = unsnapshotted or []
        self.links = links or []  # volume links missing, a folder, or elsewhere
        # Commit snapshot sets cut between volumes, found from the filesystem alone (the journal may
        # be lost with the catalog): unclean while --repair can finish one; one it cannot (the lake
        # moved on) is kept as it is and only reported, like an unsnapshotted commit.
        self.half_made = half_made or []  # snapset.HalfSet

    @property
    def clean(self) -> bool:
        return (not self.interrupted and not self.leftovers and not self.links
                and not any(not h.why_not for h in self.half_made))

    def as_dict(self) -> dict:
        return {"clean": self.clean, "interrupted": [o.as_dict() for o in self.interrupted],
                "leftovers": self.leftovers, "repaired": self.repaired, "unsnapshotted": self.unsnapshotted,
                "links": self.links, "half_made": [h.line() for h in self.half_made]}


@contextlib.contextmanager
def _locked(ws):
    """The workspace's lock, and the lake's receive lock, yielding the place receives are
    journaled (None for a user who is not root: receiving, and so its repair, needs root)."""
    with ws.lock(finish=False):
        if os.geteuid() != 0:
            yield None
            return
        end = received.Receiving(ws.backend, ws.catalog, ws.project)
        try:
            held = end.lock()
            held.__enter__()
        except NoRoom:
            # A full filesystem cannot make the receive lock: no receive ever made it here
            # either, so none can be unfinished, and doctor goes on without it.
            yield None
            return
        try:
            yield end
        finally:
            held.__exit__(None, None, None)


def _leftovers(ws, end, repair: bool) -> list[str]:
    found = ws.backend.tidy(ws.project, ws.id, ws.volumes, repair=repair)
    for leftovers in seams.leftovers:  # a feature's (a killed build's clone)
        found += leftovers(ws, repair)
    return found + (ws.backend.half_received(ws.project, ws.volumes, repair=repair) if end else [])


def diagnose(ws) -> Report:
    """What is unfinished in this workspace; changes nothing. Takes the locks, so an
    operation still running is waited for, not mistaken for an interrupted one."""
    with _locked(ws) as end:
        ops = journal.interrupted(ws, locked=True) + (journal.interrupted(end, locked=True) if end else [])
        return Report(ops, _leftovers(ws, end, repair=False), unsnapshotted=snapset.missing_commits(ws),
                      links=[p.line for p in links.check(ws)], half_made=snapset.half_made(ws))


def repair(ws) -> Report:
    """Finish or undo every interrupted operation, then tidy what the filesystem shows;
    the report says what was found and done, and what is still wrong (if anything)."""
    with _locked(ws) as end:
        done = [f"tidied: {line}" for line in _leftovers(ws, end, repair=True)]
        for place in (ws, end) if end else (ws,):
            done += repair_interrupted(place)
        from . import snapset

        # After the journal's repairs (which finish the sets it still knows of): the sets only
        # the filesystem shows, finished if the lake is provably still at their commit.
        done += [snapset.finish_half_made(ws, h) for h in snapset.half_made(ws) if not h.why_not]
        # Last, once an interrupted checkout has put its volumes in place: files in a plain
        # folder where a link should be go into the volume, never away.
        done += list(links.mend(ws)[0].values())
    after = diagnose(ws)
    after.repaired = done
    return after


def repair_interrupted(place) -> list[str]:
    """Finish or undo the interrupted operations of a place (a workspace, or the lake's
    receives) with its lock held; one line for each."""
    done = []
    for op in journal.interrupted(place, locked=True):
        fix = REPAIRS.get(op.kind) or seams.repairs.get(op.kind)
        if fix is None:
            continue  # an operation of a newer snapver: left for it, and still reported
        done.append(fix(place, op))
        journal.close(place, op)
    return done
