"""The README's demo, as a new user runs it, and then what `snapver ui` shows of it (issue 16's
"done when"): the demo's versions, the metric chart with its 3 trained versions, the lineage
with the derived volume, and the space chart with bytes in it (the demo's data and checkpoint
are too big to be inlined in Btrfs metadata, where they would count as 0 B).

scripts/demo.sh runs as written, on its own loop-backed Btrfs image, minus the install
(SNAPVER_DEMO_SETUP=0: the suite's own set-up did it). The pages are asked through the WSGI
app; the browser tests (test_webui_browser.py) drive the same pages in Chromium."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

from snapver.webui import create_app
from tests.fixtures.btrfs import need_root_and

ROOT = Path(__file__).resolve().parents[1]


def specs(page: str) -> list[dict]:
    return [json.loads(s) for s in re.findall(
        r'<script type="application/json" class="vl-spec"[^>]*>(.*?)</script>', page, re.S)]


def test_the_demo_runs_and_the_view_shows_it(tmp_path):
    need_root_and("mkfs.btrfs", "losetup", "dot")
    demo = tmp_path / "demo"
    env = {**os.environ, "SNAPVER_DEMO_SETUP": "0", "SNAPVER_DEMO_DIR": str(demo)}
    try:
        done = subprocess.run(["bash", str(ROOT / "scripts" / "demo.sh")], env=env, capture_output=True,
                              text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
        assert "Done. The repository is" in done.stdout
        client = create_app(demo / "repo").test_client()

        def page(url: str) -> str:
            resp = client.get(url)
            assert resp.status_code == 200, (url, resp.status_code)
            return resp.get_data(as_text=True)

        versions = page("/")
        for subject in ("training code", "model v1: 5 epochs", "model v2: 300 epochs",
                        "fine-tune volume, model v3: 600 epochs"):
            assert subject in versions
        assert "prod" in versions  # the release badge

        loss = [s for s in specs(page("/charts")) if s["title"] == "loss"]
        assert loss, "a chart of the loss"
        points = [p for p in loss[0]["data"]["values"] if p["kind"] == "commit"]
        assert len(points) == 3 and points[0]["value"] > points[-1]["value"]  # trained longer, lower loss

        lineage = page("/lineage")
        assert "finetune" in lineage and "<svg" in lineage

        space = page("/space")
        bars = specs(space)[0]["data"]["values"]
        assert {b["volume"] for b in bars} >= {"data", "models", "logs", "finetune"}
        referenced = {(b["volume"], b["version"]): b["bytes"] for b in bars if b["part"] == "shared"}
        exclusive = {(b["volume"], b["version"]): b["bytes"] for b in bars if b["part"] == "exclusive"}
        held = {k: referenced[k] + exclusive.get(k, 0) for k in referenced}
        assert held[("data", "live")] > 0 and held[("models", "live")] > 0, "the space chart has bytes in it"
    finally:
        if subprocess.run(["mountpoint", "-q", str(demo / "lake")]).returncode == 0:
            subprocess.run(["umount", str(demo / "lake")], check=False)
