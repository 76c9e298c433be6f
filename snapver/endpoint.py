"""Where snapverd listens: the one constant the CLI, ops, the client and the daemon share.

A leaf, so that ops (which calls through the client) and the client (which needs the
path) do not import each other. Read it as `endpoint.SOCKET` at call time: tests and
callers may point it elsewhere.

Every client finds the daemon as the daemon itself was told: SNAPVER_SOCKET if set, else
the `socket` of the daemon config (SNAPVER_CONFIG, default /etc/snapver/snapverd.toml) when
this user may read it, else the default path. A config moved the socket elsewhere: without
reading it, a user's hooks would knock on the default path, find nothing and fail there.
"""

from __future__ import annotations

import os
from pathlib import Path

DEFAULT_SOCKET = Path("/run/snapver/snapverd.sock")
CONFIG = Path(os.environ.get("SNAPVER_CONFIG") or "/etc/snapver/snapverd.toml")


def configured_socket(config: Path) -> Path | None:
    """The socket a daemon config names, if it is readable and names a valid one. Its other
    errors are the daemon's to report (it refuses to start); a client only looks it up."""
    try:
        data = config.read_bytes()
    except OSError:  # none (the usual case: one stat), or not this user's to read
        return None
    import tomllib  # on the hook path already (config.py)

    try:
        sock = tomllib.loads(data.decode()).get("socket")
    except (tomllib.TOMLDecodeError, UnicodeDecodeError):
        return None
    return Path(sock) if isinstance(sock, str) and sock.startswith("/") else None


SOCKET = Path(os.environ["SNAPVER_SOCKET"]) if os.environ.get("SNAPVER_SOCKET") else \
    configured_socket(CONFIG) or DEFAULT_SOCKET
