"""Who is on the other end of a loopback TCP connection: its owner's uid, from the kernel's
socket table (/proc/net/tcp and tcp6). A port on 127.0.0.1 is open to every user of the
machine, and `snapver ui` reads the lake as the user who started it (often root): bound to
loopback, it answers only that user (or root), so another local user cannot read through it
what the filesystem would refuse them."""

from __future__ import annotations

import os


def _port(hexaddr: str) -> int:
    return int(hexaddr.rsplit(":", 1)[1], 16)


def owner(client_port: int, server_port: int) -> int | None:
    """The uid owning the local socket connected from client_port to server_port, or None."""
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            with open(table) as f:
                next(f, None)  # the header
                for line in f:
                    fields = line.split()
                    if len(fields) > 7 and _port(fields[1]) == client_port and _port(fields[2]) == server_port:
                        return int(fields[7])
        except OSError:
            continue
    return None


def allowed(remote_port: str | None, server_port: str | None) -> bool:
    """May the client of this loopback request use the view? Its socket's owner must be this
    process's user, or root. Unknown (no socket table, a port gone): no."""
    try:
        uid = owner(int(remote_port or ""), int(server_port or ""))
    except ValueError:
        return False
    return uid is not None and uid in (os.geteuid(), 0)
