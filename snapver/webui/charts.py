"""Vega-Lite specs (the charting grammar DVC plots uses), and `snapver plots`: the same charts
as one static HTML page with the JS copied next to it, for a pull request or a CI artifact."""

from __future__ import annotations

import shutil
from pathlib import Path

STATIC = Path(__file__).parent / "static"
VENDOR = ("vega.min.js", "vega-lite.min.js", "vega-embed.min.js",
          "LICENSE-vega", "LICENSE-vega-lite", "LICENSE-vega-embed")
SCHEMA = "https://vega.github.io/schema/vega-lite/v5.json"  # an identifier: never fetched


def metric_spec(metric: str, points: list[dict]) -> dict:
    """A metric over versions: x = the versions in snapshot order, one line per branch, a
    point per version, each point's tooltip naming its version and time."""
    return {
        "$schema": SCHEMA,
        "title": metric,
        "width": "container",
        "height": 180,
        "data": {"name": "points", "values": points},
        "mark": {"type": "line", "point": {"size": 70, "filled": True}, "tooltip": True},
        "encoding": {
            # The versions in the order they were taken, evenly spaced: commits seconds apart
            # and commits weeks apart read alike (the time is in the tooltip).
            "x": {"field": "version", "type": "ordinal", "sort": {"field": "order"}, "title": "version",
                  "axis": {"labelAngle": -30}},
            "y": {"field": "value", "type": "quantitative", "title": metric, "scale": {"zero": False}},
            "color": {"field": "branch", "type": "nominal", "title": "branch"},
            "tooltip": [{"field": "version"}, {"field": "time", "type": "temporal", "format": "%Y-%m-%d %H:%M:%S"},
                        {"field": "branch"}, {"field": "kind"},
                        {"field": "value", "type": "quantitative", "format": ".6g"}],
        },
    }


def step_spec(metric: str, points: list[dict]) -> dict:
    """A metric over the steps of a run: x = step, one line per run, each point's tooltip
    naming its step, time and the wip snapshot it came with (if any)."""
    steps = sorted({p["step"] for p in points})
    return {
        "$schema": SCHEMA,
        "title": metric,
        "width": "container",
        "height": 180,
        "data": {"name": "points", "values": points},
        "mark": {"type": "line", "point": {"size": 50, "filled": True}, "tooltip": True},
        "encoding": {
            # A tick per step where there are few (none between them); the default ticks else.
            "x": {"field": "step", "type": "quantitative", "title": "step",
                  "axis": {"values": steps, "format": "d"} if len(steps) <= 20 else {}},
            "y": {"field": "value", "type": "quantitative", "title": metric, "scale": {"zero": False}},
            "color": {"field": "run", "type": "nominal", "title": "run"},
            "tooltip": [{"field": "run"}, {"field": "step", "type": "quantitative"},
                        {"field": "value", "type": "quantitative", "format": ".6g"},
                        {"field": "time"}, {"field": "snapshot"}],
        },
    }


def step_specs(history: dict[str, list[dict]]) -> list[dict]:
    return [{"id": f"steps-{i}", "metric": m, "spec": step_spec(m, pts)} for i, (m, pts) in enumerate(history.items())]


def space_spec(bars: list[dict]) -> dict:
    """Exclusive and shared bytes per version, stacked, one row per volume."""
    return {
        "$schema": SCHEMA,
        "data": {"name": "points", "values": bars},
        "mark": {"type": "bar", "tooltip": True},
        "width": "container",
        "height": 90,
        "encoding": {
            "row": {"field": "volume", "type": "nominal", "title": None},
            "x": {"field": "version", "type": "nominal", "sort": None, "title": "version"},
            "y": {"field": "bytes", "type": "quantitative", "stack": True, "title": "bytes"},
            "color": {"field": "part", "type": "nominal", "title": "",
                      "scale": {"domain": ["exclusive", "shared"], "range": ["#d95f02", "#7570b3"]}},
            "tooltip": [{"field": "volume"}, {"field": "version"}, {"field": "part"},
                        {"field": "bytes", "type": "quantitative", "format": ","}],
        },
        "resolve": {"scale": {"y": "independent"}},
    }


def metric_specs(points: dict[str, list[dict]]) -> list[dict]:
    return [{"id": f"chart-{i}", "metric": m, "spec": metric_spec(m, pts)} for i, (m, pts) in enumerate(points.items())]


def write_plots(ws, out: Path) -> Path:
    """out/index.html with every metric chart, and the JS it needs next to it (out/vendor):
    it opens from a file, offline. Returns the page's path."""
    from jinja2 import Environment, PackageLoader, select_autoescape

    from . import data
    from .app import tojson_script

    out.mkdir(parents=True, exist_ok=True)
    (out / "vendor").mkdir(exist_ok=True)
    for name in VENDOR:
        shutil.copyfile(STATIC / "vendor" / name, out / "vendor" / name)
    shutil.copyfile(STATIC / "charts.js", out / "charts.js")
    shutil.copyfile(STATIC / "style.css", out / "style.css")
    env = Environment(loader=PackageLoader("snapver.webui", "templates"), autoescape=select_autoescape())
    env.globals["tojson_script"] = tojson_script
    html = env.get_template("plots.html").render(project=ws.project, charts=metric_specs(data.chart_points(ws)))
    page = out / "index.html"
    page.write_text(html)
    return page
