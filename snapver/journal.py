"""The operation journal: every multi-step operation writes down what it is about to do.

A checkout, a gc, a derive or a receive changes the lake in several steps. Each one runs as

    with journal.operation(ws, "checkout", {"target": {...}}) as op:
        ...act...
        op.step("swapped", volume="data")

which records the intent in the catalog's `operations` table before anything
is touched (one transaction), appends each step as it is done, and deletes the
row when the operation ends (one more). A row that outlives its process is an
interrupted operation: `snapver doctor` reports it, `snapver doctor --repair`
finishes or undoes it with the repair doctor.py has for its kind, and
every other command that finds one says so (`announce`) or, if it would act
on the workspace, refuses until it is repaired.

An operation that fails with an exception after it changed something keeps
its row (state 'failed'): a checkout that ran out of space halfway is just as
unfinished as one that was killed.

The catalog is an index that may be lost, and with it the journal. So every
repair is idempotent and reads what was really done from the filesystem,
using the journal only for what the filesystem cannot say (the intent); and
doctor also looks for half-done work the backends can recognise by itself
(lake.Workspace.doctor). Rows are written with the catalog's
synchronous=NORMAL, which survives any crash of the process; after a power
cut the newest rows may be gone, which is what the filesystem checks are for.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from collections.abc import Callable

from . import faults, lock
from .errors import SnapverError

# Set by the CLI and the hooks to print a one-line warning; None: stay quiet (the daemon,
# the Python API, and doctor itself, which reports interrupted operations as its result).
announce: Callable[[str], None] | None = None


class Operation:
    # A plain class: the hooks import this module, and not `dataclasses` (see config.py).
    def __init__(self, id: int, kind: str, workspace: str, pid: int, command: str, started: str,
                 intent: dict, steps: list[dict] | None = None, state: str = "running",
                 error: str | None = None):
        self.id, self.kind, self.workspace, self.pid = id, kind, workspace, pid
        self.command, self.started, self.intent = command, started, intent
        self.steps = steps if steps is not None else []
        self.state = state  # running, failed
        self.error = error
        self._changed = False

    def describe(self) -> str:
        last = self.steps[-1] if self.steps else None
        where = (f"after step {_step_text(last)}" if last else "before its first step")
        how = f"failed ({self.error})" if self.state == "failed" else f"interrupted (PID {self.pid} is gone)"
        return f"{self.kind} #{self.id} started {self.started} by `{self.command}` {how}, {where}"

    def done(self, name: str, **detail) -> list[dict]:
        return [s for s in self.steps if s["step"] == name and all(s.get(k) == v for k, v in detail.items())]

    def as_dict(self) -> dict:
        return {"id": self.id, "kind": self.kind, "workspace": self.workspace, "pid": self.pid,
                "command": self.command, "started": self.started, "intent": self.intent,
                "steps": self.steps, "state": self.state, "error": self.error}


def _step_text(step: dict) -> str:
    extra = " ".join(f"{k}={v}" for k, v in step.items() if k != "step")
    return step["step"] + (f" ({extra})" if extra else "")


class _Running:
    """The handle an operation's body records its steps through."""

    def __init__(self, catalog, op: Operation):
        self._catalog = catalog
        self.op = op

    def step(self, name: str, /, changed: bool = True, **detail) -> None:
        """Record a step as done. changed=False: a step that left the workspace as it was
        (a safety snapshot), which alone does not make a failed operation unfinished."""
        self.op.steps.append({"step": name, **detail})
        self.op._changed |= changed
        self._catalog.set_steps(self.op.id, json.dumps(self.op.steps))
        faults.point(f"{self.op.kind}-{name}")


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process (the daemon, for a user)
    return True


def _row(r) -> Operation:
    return Operation(id=r["id"], kind=r["kind"], workspace=r["workspace"], pid=r["pid"],
                     command=r["command"], started=r["started"], intent=json.loads(r["intent"]),
                     steps=json.loads(r["steps"]), state=r["state"], error=r["error"])


def open_operations(catalog, *workspaces: str) -> list[Operation]:
    """Every operation of these workspaces that has not ended (the index makes it one lookup)."""
    return [_row(r) for r in catalog.operations(workspaces)]


def interrupted(ws, locked: bool = False, also: tuple[str, ...] = ()) -> list[Operation]:
    """The workspace's operations (and those of the places named in also) that will not
    finish on their own.

    With the workspace lock held every open row is one (the lock is released only when its
    holder ends). Without it, a row whose process still runs is in progress, not interrupted;
    a PID reused since is taken for alive, which errs on the side of not alarming anyone.
    """
    ops = open_operations(ws.catalog, ws.id, *also)
    return [o for o in ops if locked or o.state == "failed" or not _alive(o.pid)]


def receiving_id(project: str) -> str:
    """The workspace column of receives: they are journaled at the lake (received.Receiving)."""
    return f"receive:{project}"


def check(ws) -> None:
    """At the start of any command run for a person: say if something was interrupted, in
    this workspace or in a receive into its project's lake."""
    if announce is None:
        return
    try:
        found = interrupted(ws, also=(receiving_id(ws.project),))
    except SnapverError:
        return  # no usable catalog (a full filesystem): the command says so if it needs one
    if found:
        announce(f"{found[0].describe()}: run `snapver doctor` to see it, "
                 "`snapver doctor --repair` to finish it")


@contextlib.contextmanager
def operation(ws, kind: str, intent: dict):
    """Record the intent, yield a handle for its steps, delete the record when it ends.

    Call with the workspace lock held. Refuses if an earlier operation was interrupted.
    """
    catalog = ws.catalog
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    with catalog.batch():
        earlier = open_operations(catalog, ws.id)
        if earlier:
            raise SnapverError(f"{earlier[0].describe()}: run `snapver doctor --repair` first")
        op_id = catalog.add_operation(kind, ws.project, ws.id, os.getpid(), lock.command(), started,
                                      json.dumps(intent))
    op = Operation(op_id, kind, ws.id, os.getpid(), lock.command(), started, intent)
    faults.point(f"{kind}-begin")
    try:
        yield _Running(catalog, op)
    except BaseException as e:
        if op._changed:
            # Half done: it stays in the journal for doctor, with what went wrong.
            catalog.fail_operation(op.id, str(e).splitlines()[0][:300] if str(e) else type(e).__name__)
        else:
            catalog.end_operation(op.id)
        raise
    faults.point(f"{kind}-end")
    catalog.end_operation(op.id)


def begin(ws, kind: str, intent: dict) -> Operation:
    """A journal row for a short operation that may run inside another one (the snapshot a
    checkout keeps first): one INSERT, no refusal, no steps. The caller deletes it with
    close(), ideally in the same transaction as its own last write."""
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    op_id = ws.catalog.add_operation(kind, ws.project, ws.id, os.getpid(), lock.command(), started,
                                     json.dumps(intent))
    return Operation(op_id, kind, ws.id, os.getpid(), lock.command(), started, intent)


def note(ws, op: Operation, name: str, **detail) -> None:
    """A short operation's current step, replacing the one before: an operation that repeats
    one step per entry (a plain folder's move, entry by entry) keeps its row small."""
    op.steps = [{"step": name, **detail}]
    ws.catalog.set_steps(op.id, json.dumps(op.steps))
    faults.point(f"{op.kind}-{name}")


def close(ws, op: Operation) -> None:
    """An interrupted operation is over (repaired)."""
    ws.catalog.end_operation(op.id)
