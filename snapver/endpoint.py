"""Where snapverd listens: the one constant the CLI, ops, the client and the daemon share.

A leaf, so that ops (which calls through the client) and the client (which needs the
path) do not import each other. Read it as `endpoint.SOCKET` at call time: tests and
callers may point it elsewhere.
"""

from __future__ import annotations

import os
from pathlib import Path

SOCKET = Path(os.environ.get("SNAPVER_SOCKET", "/run/snapver/snapverd.sock"))
