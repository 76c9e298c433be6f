"""The Flask app: the guards every request passes (token, Host), a Workspace per request,
errors as pages, and the template filters. The routes are in routes.py (create_app joins them)."""

from __future__ import annotations

import hmac
import json
from datetime import datetime
from pathlib import Path

from flask import Flask, g, request, render_template

from ..errors import NotFound, SnapverError
from . import peer
from .data import Refused, label

TOKEN_HEADER = "X-Snapver-Token"
TOKEN_COOKIE = "snapver_token"


def make(where: Path, token: str | None, allowed_hosts: set[str] | None, lake: str | None = None) -> Flask:
    """lake: serve every project of that lake (`--lake`), each under /p/<project>/, with a
    picker at /; else the project of the working tree at `where`, at /."""
    app = Flask(__name__)
    app.config.update(SNAPVER_WHERE=where, SNAPVER_TOKEN=token, SNAPVER_LAKE=lake)

    @app.url_value_preprocessor
    def take_project(_endpoint, values):
        # /p/<project>/...: the project is the request's, not an argument of each page.
        if values is not None and "project" in values:
            g.project = values.pop("project")

    @app.url_defaults
    def keep_project(endpoint, values):
        # Links from a project's page stay in that project.
        if "project" in g and "project" not in values and app.url_map.is_endpoint_expecting(endpoint, "project"):
            values["project"] = g.project

    @app.before_request
    def guard():
        if allowed_hosts is not None:
            if request.host not in allowed_hosts:
                return page_error(403, f"this server answers only {', '.join(sorted(allowed_hosts))}")
            if not peer.allowed(request.environ.get("REMOTE_PORT"), request.environ.get("SERVER_PORT")):
                return page_error(403, "on loopback this server answers only the user who started it (or root); "
                                       "another user: start your own `snapver ui`")
        if token is not None:
            given = (request.args.get("token") or request.headers.get(TOKEN_HEADER)
                     or request.cookies.get(TOKEN_COOKIE) or "")
            if not hmac.compare_digest(given.encode(), token.encode()):
                return page_error(403, "this server needs the token `snapver ui` printed at start: "
                                       "add ?token=... to the address")
        return None

    @app.after_request
    def remember_token(response):
        # A first visit with ?token= sets it as a cookie, so that links and assets need not carry it.
        if token is not None and request.args.get("token") == token:
            response.set_cookie(TOKEN_COOKIE, token, httponly=True, samesite="Strict")
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "no-referrer")
        return response

    @app.teardown_request
    def close(_exc):
        ws = g.pop("ws", None)
        lake_catalog = g.pop("lake_catalog", None)
        if ws is not None and ws._catalog is not None and ws._catalog is not lake_catalog:
            ws._catalog.close()
        if lake_catalog is not None:
            lake_catalog.close()

    @app.errorhandler(Refused)
    def refused(e):
        return page_error(403, str(e))

    @app.errorhandler(NotFound)
    def not_found(e):
        return page_error(404, str(e))

    @app.errorhandler(SnapverError)
    def user_error(e):
        return page_error(400, str(e))

    app.jinja_env.filters.update(label=label, cell=cell, when=when, nbytes=nbytes, delta=delta)
    app.jinja_env.globals.update(tojson_script=tojson_script, page_url=page_url,
                                 lake_mode=lambda: app.config["SNAPVER_LAKE"] is not None)
    return app


def workspace():
    """The workspace of this request, opened once per request (the catalog's SQLite connection
    belongs to the thread that opened it, and waitress serves from several). With --lake, the
    project named in the address (lakeview.ProjectView)."""
    if "ws" not in g:
        from flask import current_app

        if current_app.config["SNAPVER_LAKE"] is not None:
            from .lakeview import ProjectView

            if "project" not in g:
                raise NotFound("choose a project first: this view shows every project of the lake, at /")
            g.ws = ProjectView(lake_backend(), g.project, lake_catalog())
        else:
            from ..lake import Workspace

            g.ws = Workspace.open(current_app.config["SNAPVER_WHERE"])
            if "project" in g and g.project != g.ws.project:
                raise NotFound(f"this view shows project {g.ws.project} only (`snapver ui --lake` shows every one)")
    return g.ws


def lake_backend():
    """--lake: the lake's backend, opened once per request."""
    if "lake_backend" not in g:
        from flask import current_app

        from ..backends import open_lake

        g.lake_backend = open_lake(current_app.config["SNAPVER_LAKE"])
    return g.lake_backend


def lake_catalog():
    """--lake: the lake's catalog, once per request (closed at its end)."""
    if "lake_catalog" not in g:
        from ..catalog import Catalog

        g.lake_catalog = Catalog(lake_backend().catalog_path)
    return g.lake_catalog


def page_url(page: int) -> str:
    """This page's address with another page number (the filters kept)."""
    from urllib.parse import urlencode

    args = [(k, v) for k, v in request.args.items(multi=True) if k not in ("page", "token")]
    return request.path + "?" + urlencode([*args, ("page", str(page))])


def page_error(status: int, message: str):
    return render_template("error.html", status=status, message=message), status


def cell(value) -> str:
    if value is None:
        return "–"
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def delta(value) -> str:
    return "" if value is None else f"{value:+.4g}"


def when(dt) -> str:
    if isinstance(dt, str):
        try:
            dt = datetime.fromisoformat(dt)
        except ValueError:
            return dt
    return dt.astimezone().strftime("%Y-%m-%d %H:%M:%S") if dt else ""


def nbytes(n) -> str:
    if n is None:
        return "–"
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def tojson_script(value) -> str:
    """JSON for a <script type="application/json"> block: '<', '>' and '&' escaped, so a
    metric name cannot close the script element."""
    from markupsafe import Markup

    text = json.dumps(value, default=str).replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")
    return Markup(text)
