"""Crash points for tests: SNAPVER_FAULT=<point> makes the process SIGKILL itself there.

A test-only switch, documented so that anyone can reproduce what the crash
tests do: the process dies exactly as a power cut or OOM kill would leave it,
with no cleanup, no finally blocks and no flushed buffers.
"""

import os
import signal


def point(name: str) -> None:
    if os.environ.get("SNAPVER_FAULT") == name:
        os.kill(os.getpid(), signal.SIGKILL)
