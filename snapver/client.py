"""Talking to snapverd over its Unix socket: one JSON object per line each way."""

from __future__ import annotations

import json

from . import endpoint
from .errors import SnapverError


class Unavailable(Exception):
    """Nothing listens on the socket (the daemon is not running)."""


def request(message: dict, path=None, timeout: float = 600) -> object:
    """Send one request and return its result; the daemon's refusal becomes a SnapverError."""
    import socket  # stdlib, but ~2 ms of the hook path, which talks to snapverd only for a non-root user

    path = path or endpoint.SOCKET
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError) as e:
            raise Unavailable(str(e)) from None
        sock.sendall(json.dumps(message).encode() + b"\n")
        reply = b""
        while not reply.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                raise SnapverError("snapverd closed the connection without answering; see its log")
            reply += chunk
    answer = json.loads(reply)
    if not answer.get("ok"):
        refused = SnapverError(answer.get("error", "snapverd refused without saying why"))
        if isinstance(answer.get("exit_code"), int) and answer["exit_code"] > 0:
            refused.exit_code = answer["exit_code"]  # the CLI exits as it would have run it itself
        raise refused
    return answer.get("result")
