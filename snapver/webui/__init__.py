"""`snapver ui`: a read-only local web view of the lake (versions, compare, charts, lineage,
releases, space, files), and `snapver plots`: the charts as one static HTML page.

Why Flask, served by waitress: the pages are read from the library, which is synchronous
(SQLite, subprocesses, filesystem walks), so an async framework (Starlette) would only run
it in threads anyway; Flask is small, long and well maintained (Pallets), brings Jinja2's
autoescaping templates and a path converter, and waitress is a pure-Python, production WSGI
server with no C extension to build, also well kept. Both install from PyPI alone.

Charts are Vega-Lite specs drawn by vega-embed; vega, vega-lite and vega-embed are shipped
in static/vendor (with their licenses): nothing is loaded from the internet. The lineage
graph is drawn on the server by graphviz's `dot -Tsvg`.

Safety: the app only reads (GET and HEAD; anything else is 405). Bound to a loopback address
it answers only requests whose Host is that address (a web page elsewhere cannot reach it
through DNS rebinding) and whose socket belongs to the user who started it, or root (peer.py:
another local user could otherwise read through it what the filesystem refuses them); bound
to any other address it asks every request for the token printed at start (`?token=`, the
X-Snapver-Token header, or the cookie a first `?token=` sets). It runs as the invoking user
and reads what that user may read.
"""

from __future__ import annotations

import ipaddress
import secrets
from pathlib import Path

LOOPBACK_NAMES = ("localhost",)


def is_loopback(host: str) -> bool:
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def new_token() -> str:
    return secrets.token_urlsafe(24)


def create_app(where: Path | str = ".", token: str | None = None, allowed_hosts: set[str] | None = None,
               lake: str | None = None):
    """The WSGI app over the workspace at `where` (or every project of `lake`, a lake as
    remote URLs name it: a folder or a ZFS dataset); token: required of every request when
    set; allowed_hosts: the Host headers answered (None: any)."""
    from . import routes
    from .app import make

    app = make(Path(where).resolve(), token, allowed_hosts, lake)
    routes.register(app)
    return app


def serve(where: Path | str, host: str, port: int, token: str | None, ready=None, lake: str | None = None) -> None:
    """Serve until interrupted. ready(url) is called once the socket is listening."""
    from waitress import create_server

    hosts: set[str] | None = set() if is_loopback(host) else None  # filled once the port is known
    server = create_server(create_app(where, token, hosts, lake), host=host, port=port, threads=4, ident="snapver")
    if hosts is not None:
        named = f"[{host}]" if ":" in host else host
        hosts.update(f"{h}:{server.effective_port}" for h in ("127.0.0.1", "localhost", "[::1]", named))
    if ready is not None:
        shown = f"[{host}]" if ":" in host else host
        ready(f"http://{shown}:{server.effective_port}/" + (f"?token={token}" if token else ""))
    try:
        server.run()
    finally:
        server.close()
