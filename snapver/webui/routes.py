"""The pages: Versions (/), a version (/v/NAME), Compare, Charts, Lineage, Releases, Space,
Files (browse a snapshot, download one file); with --lake, the projects (/) and each of those
pages of one project under /p/<project>/. GET only: nothing here changes the lake."""

from __future__ import annotations

import stat

from flask import Flask, g, render_template, request, send_file, url_for

from .. import names, registry, releases as release_book
from . import charts, data, lakeview
from .app import lake_backend, lake_catalog, workspace


def _page() -> int:
    try:
        return int(request.args.get("page", "1"))
    except ValueError:
        return 1


def _per(default: int) -> int:
    """Rows per page: ?per=N (1 to 1000), else the page's default."""
    try:
        return min(max(int(request.args.get("per", default)), 1), 1000)
    except ValueError:
        return default


def lake_mode() -> bool:
    from flask import current_app

    return current_app.config["SNAPVER_LAKE"] is not None


def sort_url(key: str, descending: bool) -> str:
    """This page sorted by key (the filters kept, back to page 1)."""
    from urllib.parse import urlencode

    args = [(k, v) for k, v in request.args.items(multi=True) if k not in ("sort", "desc", "page", "token")]
    return request.path + "?" + urlencode([*args, ("sort", key), ("desc", "1" if descending else "0")])


def register(app: Flask) -> None:
    def page(rule: str):
        """A page at rule, and at /p/<project>rule (a project of the lake with --lake; the
        working tree's own project otherwise). url_for builds the second where the request
        has a project (app.keep_project), the first otherwise."""
        def add(view):
            app.add_url_rule(rule, view_func=view, methods=["GET"])
            app.add_url_rule("/p/<project>" + rule, view_func=view, methods=["GET"])
            return view
        return add

    @page("/")
    def versions():
        if lake_mode() and "project" not in g:  # --lake: which project?
            return render_template("projects.html", project="lake " + app.config["SNAPVER_LAKE"],
                                   projects=lakeview.projects(lake_backend(), lake_catalog()), picker=True)
        ws = workspace()
        queries = [q for q in request.args.getlist("q") if q.strip()]
        include_wip = request.args.get("wip", "1") != "0"
        error = None
        try:
            rows, metric_keys, param_keys = data.versions(ws, queries, include_wip)
        except registry.SnapverError as e:  # a query that does not parse: said above the table
            error, rows, metric_keys, param_keys = str(e), [], [], []
        sort, descending = request.args.get("sort", ""), request.args.get("desc", "1") != "0"
        rows = data.sort_rows(rows, sort, descending)
        shown, pager = data.page_of(rows, _page(), _per(data.PER_PAGE))
        for r in shown:
            r["scan"] = data.scan_status(ws, r)
        return render_template("versions.html", project=ws.project, rows=shown, pager=pager,
                               metric_keys=metric_keys, param_keys=param_keys, queries=queries,
                               include_wip=include_wip, error=error, sort=sort, descending=descending,
                               sort_url=sort_url), 400 if error else 200

    @page("/v/<name>")
    def version(name: str):
        ws = workspace()
        v = data.version(ws, name)
        return render_template("version.html", project=ws.project, v=v,
                               has_run=bool(data.run_history(ws, v["commit"])) if names.SHA.fullmatch(v["commit"]) else False)

    @page("/compare")
    def compare():
        ws = workspace()
        revs = request.args.getlist("v")
        return render_template("compare.html", project=ws.project, c=data.compare(ws, revs, _page()), revs=revs)

    @page("/charts")
    def chart_page():
        ws = workspace()
        return render_template("charts.html", project=ws.project,
                               charts=charts.metric_specs(data.chart_points(ws)), runs=data.runs(ws))

    @page("/run/<commit>")
    def run(commit: str):
        ws = workspace()
        history = data.run_history(ws, commit)
        info = ws.catalog.commit(ws.project, commit) or {}
        return render_template("run.html", project=ws.project, commit=commit, info=info,
                               charts=charts.step_specs(history))

    @page("/lineage")
    def lineage():
        ws = workspace()
        svg = data.lineage_svg(ws, lambda name: url_for("version", name=name))
        return render_template("lineage.html", project=ws.project, svg=svg, tree=registry.lineage_tree(ws))

    @page("/releases")
    def releases():
        ws = workspace()
        found = release_book.list_releases(ws)
        return render_template("releases.html", project=ws.project, releases=found,
                               history={r.name: release_book.history(ws, r.name) for r in found})

    @page("/space")
    def space():
        ws = workspace()
        s = data.space(ws, _page(), _per(data.SPACE_PER_PAGE), request.args.get("total") == "1")
        return render_template("space.html", project=ws.project, s=s, pager=s["pager"],
                               spec=charts.space_spec(s["bars"]))

    @page("/files/<name>/<volume>/")
    @page("/files/<name>/<volume>/<path:rel>")
    def files(name: str, volume: str, rel: str = ""):
        ws = workspace()
        snap = data.snapshot_of(ws, name, volume)
        target = data.inside(snap.path, rel)
        st = target.stat()
        if not stat.S_ISDIR(st.st_mode):
            if not stat.S_ISREG(st.st_mode):
                raise data.Refused(f"{rel} is not a regular file")
            return send_file(target, as_attachment=request.args.get("download") == "1",
                             download_name=target.name, mimetype="application/octet-stream")
        entries, pager = data.listing(target, _page())
        crumbs = []
        parts = [p for p in rel.split("/") if p]
        for i, p in enumerate(parts):
            crumbs.append((p, "/".join(parts[: i + 1])))
        return render_template("files.html", project=ws.project, name=name, volume=volume, rel="/".join(parts),
                               crumbs=crumbs, entries=entries, pager=pager, volumes=ws.volumes)
