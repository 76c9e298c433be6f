"""A lake that vanished under a command (unmounted mid-checkout, its pool exported): one line.

Decided by the fact, not by the error's words: the lake's root is no longer on the device it
was on when this process opened it. An error while every lake is still there stays what it
is (a bug is a traceback)."""

from __future__ import annotations

import contextlib
import os
import sqlite3

from .errors import SnapverError

# The lakes this process opened, with the device each root was on then (see lake_gone).
_lakes: dict[str, int] = {}


def remember(root) -> None:
    with contextlib.suppress(OSError):
        _lakes[str(root)] = os.stat(root).st_dev


def lake_gone(e: BaseException) -> SnapverError | None:
    """e as one line if it failed because a lake this process works on is no longer there
    (unmounted, its pool exported mid-command); None otherwise (a bug stays a bug). Decided
    by the fact, not the message: the lake's root is now another filesystem or nothing."""
    if not isinstance(e, (OSError, sqlite3.Error, SnapverError)):
        return None
    for root, dev in _lakes.items():
        try:
            there = os.stat(root).st_dev == dev
        except OSError:
            there = False
        if not there:
            return SnapverError(f"the lake at {root} is not there (unmounted?): mount it, "
                                "then `snapver doctor --repair`")
    return None
