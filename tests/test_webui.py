"""`snapver ui` over HTTP, served as a real process on a real lake (Btrfs and zfs-fuse): every
route's status and content, pagination and filters, path traversal and symlinks refused, the
token off loopback, nothing changed on disk; and `snapver plots`."""

from __future__ import annotations

import http.client
import json
import os
import re
import shutil
import subprocess
import sys
import threading
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path

import pytest
from flask import render_template

from snapver.webui import create_app, data
from tests.fixtures.git import snapver
from tests.webui_lake import ACCURACY, Server, lake_listing, made  # noqa: F401 (a fixture)


def get(url: str, headers: dict | None = None) -> tuple[int, str, dict]:
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read().decode(errors="replace"), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode(errors="replace"), dict(e.headers)


def raw(port: int, method: str, path: str, host: str | None = None) -> tuple[int, str]:
    """A request sent as written: no client-side normalisation of '..'."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    conn.putrequest(method, path, skip_host=host is not None)
    if host is not None:
        conn.putheader("Host", host)
    conn.endheaders()
    r = conn.getresponse()
    body = r.read().decode(errors="replace")
    conn.close()
    return r.status, body


def as_user(user: str, url: str) -> tuple[int, bool]:
    """GET url from a process of another user: (status, whether the body names a release)."""
    code = ("import sys, urllib.request, urllib.error\n"
            "try:\n r = urllib.request.urlopen(sys.argv[1], timeout=60); print(r.status, b'prod' in r.read())\n"
            "except urllib.error.HTTPError as e:\n print(e.code, b'prod' in e.read())\n")
    done = subprocess.run(["runuser", "-u", user, "--", sys.executable, "-c", code, url],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    status, named = done.stdout.split()
    return int(status), named == "True"


def specs(page: str) -> dict[str, dict]:
    """The Vega-Lite specs embedded in a page, by chart element id."""
    found = re.findall(r'<script type="application/json" class="vl-spec" data-target="([^"]+)">(.*?)</script>',
                       page, re.S)
    return {target: json.loads(text) for target, text in found}


def test_every_page_on_a_real_lake(made, lake):
    repo, (v1, v2, v3) = made.repo, made.versions
    before = lake_listing(repo)
    with Server(repo) as s:
        base = s.base
        assert s.token is None and base.startswith("http://127.0.0.1:")

        # Versions: newest first, subject, author, volumes, release badge, scan, metric and param columns.
        code, page, _ = get(base + "/")
        assert code == 200
        names = re.findall(r'<tr class="(?:commit|wip)" data-name="([0-9a-f]{40}[^"]*)"', page)
        assert names[:3] == [v3, v2, v1] and len(names) == 4  # and the commit of snapver.toml
        assert "train v3" in page and "Ada Tester" in page
        assert re.search(r'<th class="metric"><a [^>]*>accuracy</a>', page) and re.search(r'<th class="param"><a [^>]*>lr</a>', page)
        assert re.search(rf'data-name="{v3}".*?<span class="badge release">prod</span>', page, re.S)
        assert page.count('<span class="badge release">prod</span>') == 1  # moved: only where it is now
        assert re.search(rf'data-name="{v3}".*?finetune', page, re.S)
        row3 = page.split(f'data-name="{v3}"')[1].split("</tr>")[0]
        assert '<td class="num metric" data-key="accuracy">0.93</td>' in row3
        assert '<span class="badge clean">clean</span>' in row3  # models was scanned at snapshot time

        # Filter as `snapver find`; a query that does not parse is said, with 400.
        code, page, _ = get(base + "/?q=" + urllib.request.quote("accuracy>0.8") + "&q=optimizer%3Dadam")
        assert code == 200
        assert re.findall(r'data-name="([0-9a-f]{40})"', page) == [v3, v2]
        code, page, _ = get(base + "/?q=" + urllib.request.quote("accuracy>>1"))
        assert code == 400 and "does not parse at character 10" in page

        # Sorted by a metric (versions without it last), both ways, or by time.
        def order(url: str) -> list[str]:
            return re.findall(r'data-name="([0-9a-f]{40})"', get(url)[1])

        assert order(base + "/?sort=accuracy&desc=0")[:3] == [v1, v2, v3]
        assert order(base + "/?sort=lr&desc=1")[:3] == [v1, v2, v3]
        assert order(base + "/?sort=time&desc=0")[1:] == [v1, v2, v3]

        # Pagination.
        code, page, _ = get(base + "/?per=2&page=2")
        assert code == 200 and re.findall(r'data-name="([0-9a-f]{40})"', page)[0] == v1
        assert "page 2 of 2 (4)" in page

        # One version.
        code, page, _ = get(f"{base}/v/{v2}")
        assert code == 200 and "train v2" in page and "0.82" in page and v2 in page
        assert get(f"{base}/v/{'0' * 40}")[0] == 404

        # Compare: values side by side with deltas, files changed per volume.
        code, page, _ = get(f"{base}/compare?v={v1}&v={v2}&v={v3}")
        assert code == 200
        acc = page.split('data-key="accuracy"')[1].split("</tr>")[0]
        assert "0.71" in acc and "(+0.11)" in acc and "(+0.22)" in acc
        models = [t for t in page.split('<table class="changes" data-volume="models">')[1:]]
        assert len(models) == 2 and all("metrics.json" in t.split("</table>")[0] for t in models)
        code, page, _ = get(f"{base}/compare?v={v1}&v={v3}&per=1")
        assert code == 200 and "(+0.22)" in page
        assert get(f"{base}/compare?v={v1}")[0] == 400
        assert get(f"{base}/compare?v={v1}&v=nosuchrev")[0] in (400, 404)

        # Charts: one Vega-Lite spec per metric, 3 points for accuracy; the JS is served locally.
        code, page, _ = get(base + "/charts")
        assert code == 200
        charts = {sp["title"]: sp for sp in specs(page).values()}
        assert [p["value"] for p in charts["accuracy"]["data"]["values"]] == list(ACCURACY)
        assert "http" not in "".join(re.findall(r'<script src="([^"]+)"', page))
        for js in ("vega.min.js", "vega-lite.min.js", "vega-embed.min.js"):
            code, body, _ = get(f"{base}/static/vendor/{js}")
            assert code == 200 and len(body) > 50_000

        # Lineage: graphviz SVG, the derived node links to the snapshot it came from.
        code, page, _ = get(base + "/lineage")
        assert code == 200 and "<svg" in page
        assert 'id="vol_finetune"' in page and f'xlink:href="/v/{made.derived_from}"' in page
        assert 'id="rel_prod"' in page

        # Releases: where prod is now.
        code, page, _ = get(base + "/releases")
        assert code == 200 and f'href="/v/{v3}"' in page.split('data-release="prod"')[1]
        # ... and every move of it, oldest first: created at v1, then to v2 and to v3.
        moves = page.split('data-history="prod"')[1].split("</table>")[0].split("<tr>")[2:]
        assert len(moves) == 3 and "created" in moves[0] and "first" in moves[0]
        assert f'href="/v/{v1}"' in moves[1] and f'href="/v/{v3}"' in moves[2] and "serving" in moves[2]

        # Space, as `du`: a page of versions at a time, as a chart and a table; the lake's
        # saving (a walk of every snapshot) when asked.
        code, page, _ = get(base + "/space")
        assert code == 200 and 'id="saving"' not in page and 'id="total"' in page
        bars = next(iter(specs(page).values()))["data"]["values"]
        assert {b["volume"] for b in bars} >= {"models", "finetune", "data"}
        models = {b["version"]: b["bytes"] for b in bars if b["volume"] == "models" and b["part"] == "exclusive"}
        assert "live" in models and v3[:10] in models
        code, page, _ = get(base + "/space?per=1&page=3")
        assert code == 200 and "page 3 of 4" in page
        assert {b["version"] for b in next(iter(specs(page).values()))["data"]["values"]} == {v1[:10]}
        code, page, _ = get(base + "/space?total=1")
        saving = re.search(r'id="saving">([^<]+)<', page)
        assert code == 200 and saving and saving.group(1) != "0 B"

        # Files: a folder, a download, a symlink within, and none out of the snapshot.
        code, page, _ = get(f"{base}/files/{v3}/models/")
        assert code == 200 and "metrics.json" in page and "model.txt" in page
        code, body, headers = get(f"{base}/files/{v3}/models/metrics.json?download=1")
        assert code == 200 and json.loads(body) == {"accuracy": 0.93}
        assert headers["Content-Disposition"].startswith("attachment")
        assert get(f"{base}/files/{v1}/models/model.txt")[1] == "weights 0\n"
        assert get(f"{base}/files/{v3}/data/inner")[1] == "x,y\n1,2\n"
        for path in (f"/files/{v3}/data/escape", f"/files/{v3}/data/escape/passwd",
                     f"/files/{v3}/models/../../../../etc/passwd", f"/files/{v3}/models/%2e%2e/%2e%2e/etc/passwd",
                     f"/files/{v3}/models/./metrics.json"):
            code, body = raw(s.port, "GET", path)
            assert code in (403, 404) and "root:" not in body, (path, code)
        assert raw(s.port, "GET", f"/files/{v3}/data/escape/passwd")[0] == 403
        assert get(f"{base}/files/{v3}/nosuchvolume/")[0] == 404
        assert get(f"{base}/files/notasnapshot/models/")[0] == 404

        # Read-only, and loopback only answers a loopback Host (no DNS rebinding).
        assert raw(s.port, "POST", "/")[0] == 405
        assert raw(s.port, "DELETE", f"/files/{v3}/models/metrics.json")[0] == 405
        assert raw(s.port, "GET", "/", host="evil.example:80")[0] == 403
        assert raw(s.port, "GET", "/", host=f"localhost:{s.port}")[0] == 200
        # A port in use: one line, no traceback.
        err = snapver(repo, "ui", "--port", str(s.port), ok=False).err
        assert err.startswith(f"snapver: cannot listen on 127.0.0.1:{s.port}") and len(err.strip().splitlines()) == 1
        # Another local user reaches the loopback port too, but is not answered.
        assert as_user("nobody", base + "/releases") == (403, False)
    assert lake_listing(repo) == before


def test_token_required_off_loopback(made, lake):
    with Server(made.repo, "--host", "0.0.0.0") as s:
        assert s.token and len(s.token) >= 24
        base = f"http://127.0.0.1:{s.port}"
        for url, headers in [(base + "/", {}), (base + "/?token=wrong", {}),
                             (f"{base}/files/{made.versions[0]}/models/metrics.json", {}),
                             (base + "/static/vendor/vega.min.js", {}), (base + "/", {"X-Snapver-Token": "x"})]:
            code, body, _ = get(url, headers)
            assert code == 403 and "token" in body and "metrics" not in body, url
        code, page, headers = get(f"{base}/?token={s.token}")
        assert code == 200 and made.versions[2] in page
        cookie = headers["Set-Cookie"].split(";")[0]
        assert get(base + "/releases", {"Cookie": cookie})[0] == 200
        assert get(base + "/lineage", {"X-Snapver-Token": s.token})[0] == 200


def test_plots_writes_a_static_page(made, lake, tmp_path):
    out = tmp_path / "plots"
    assert "index.html" in snapver(made.repo, "plots", "--out", str(out)).out
    page = (out / "index.html").read_text()
    charts = {sp["title"]: sp for sp in specs(page).values()}
    assert [p["value"] for p in charts["accuracy"]["data"]["values"]] == list(ACCURACY)
    for name in ("vendor/vega.min.js", "vendor/vega-lite.min.js", "vendor/vega-embed.min.js",
                 "vendor/LICENSE-vega", "charts.js", "style.css"):
        assert (out / name).stat().st_size > 0
    assert not re.search(r'src="https?:', page)


def test_versions_listed_with_the_catalog_gone(made, lake, tmp_path):
    """The listing reads the catalog; without one it asks the filesystem (the source of truth)."""
    aside = tmp_path / "catalog-aside"
    aside.mkdir()
    files = sorted(lake.root.glob("catalog.db*"))
    assert files
    for f in files:
        shutil.move(f, aside / f.name)
    try:
        with Server(made.repo) as s:
            code, page, _ = get(s.base + "/")
            assert code == 200
            assert re.findall(r'data-name="([0-9a-f]{40})"', page)[:3] == made.versions[::-1]
    finally:
        for f in lake.root.glob("catalog.db*"):
            f.unlink()
        for f in files:
            shutil.move(aside / f.name, f)


def test_ui_refuses_what_it_cannot_do(tmp_path, repo):
    err = snapver(repo, "ui", ok=False).err  # no lake here
    assert err.startswith("snapver: ") and len(err.strip().splitlines()) == 1
    err = snapver(repo, "ui", "--port", "70000", ok=False).err
    assert err.startswith("snapver: ") and "70000" in err and len(err.strip().splitlines()) == 1


def test_paths_leaving_a_folder_are_refused(tmp_path):
    """inside() on its own (pure path handling; the HTTP test above runs it on both filesystems)."""
    root = tmp_path / "snap"
    (root / "d").mkdir(parents=True)
    (root / "d" / "f").write_text("x")
    (root / "out").symlink_to(tmp_path)
    (root / "in").symlink_to("d/f")
    assert data.inside(root, "d/f") == (root / "d" / "f").resolve()
    assert data.inside(root, "in") == (root / "d" / "f").resolve()
    assert data.inside(root, "") == root.resolve()
    for bad in ("..", "d/../..", "/etc/passwd", "out", "out/elsewhere", "d/./f", "a\0b"):
        with pytest.raises(data.Refused):
            data.inside(root, bad)
    with pytest.raises(data.NotFound):
        data.inside(root, "d/nothing")
    assert Path(root).exists()


def test_a_big_folder_is_listed_in_pages_and_read_once(tmp_path, monkeypatch):
    """listing() on its own: folders first, each part by name, every entry on exactly one page;
    a folder of BIG_FOLDER entries or more is read once, in a thread, and its first view is the
    entries read first (the page says so); then it is paged from memory (the first PICKED_PAGES
    by a partial selection, the others after one sort); another (a changed one: its ctime moved)
    is read again. The HTTP test above runs it on snapshots."""
    monkeypatch.setattr(data, "BIG_FOLDER", 20)
    monkeypatch.setattr(data, "FILES_PER_PAGE", 7)
    monkeypatch.setattr(data, "_kept", type(data._kept)())
    monkeypatch.setattr(data, "PICKED_PAGES", 2)
    folder = tmp_path / "snap"
    folder.mkdir()
    names = [f"f{i:02d}" for i in range(25)]
    for name in reversed(names):
        (folder / name).write_text(name)
    for name in ("zdir", "adir"):
        (folder / name).mkdir()
    (folder / "link").symlink_to("f00")
    gate = threading.Event()
    read_rest = data.FolderNames._read_rest

    def held(self, entries, key):  # the rest of the folder is read once the test says so
        gate.wait(30)
        read_rest(self, entries, key)

    monkeypatch.setattr(data.FolderNames, "_read_rest", held)
    first, pager = data.listing(folder, 1)  # the first view, while the folder is being read
    assert pager["reading"] and [e["name"] for e in first] == [e.name for e in os.scandir(folder)][:7]
    assert {e["kind"] for e in first} <= {"dir", "file", "link"}
    with create_app(tmp_path).test_request_context(f"/files/{'a' * 40}/models/"):
        page = render_template("files.html", project="p", name="a" * 40, volume="models", rel="", crumbs=[],
                               entries=first, pager=pager, volumes=["models"])
    assert 'id="reading"' in page and "?page=2" in page and first[0]["name"] in page
    gate.set()
    kept = next(iter(data._kept.values()))
    assert kept.done.wait(30) and kept.failed is None
    pages = [data.listing(folder, page) for page in range(1, 3)]
    assert not kept.ordered  # the first pages by name are picked, not sorted
    pages += [data.listing(folder, page) for page in range(3, 6)]
    assert kept.ordered
    assert [p[1]["pages"] for p in pages] == [4] * 5 and pages[-1][1]["page"] == 4  # past the end: the last
    shown = [e["name"] for entries, _ in pages[:4] for e in entries]
    assert shown == ["adir", "zdir", *names, "link"]
    assert [e["kind"] for e in pages[0][0][:3]] == ["dir", "dir", "file"]
    assert [e["kind"] for e in pages[3][0] if e["name"] == "link"] == ["link"]
    assert len(data._kept) == 1
    time.sleep(0.05)  # past a coarse clock's tick, so that the change moves the folder's ctime
    (folder / "f00").unlink()  # only a live folder changes; a snapshot's cannot
    assert data.listing(folder, 1)[0][2]["name"] == "f01"
    small = tmp_path / "small"
    small.mkdir()
    (small / "one").write_text("1")
    assert [e["name"] for e in data.listing(small, 1)[0]] == ["one"]
    assert len(data._kept) == 2


def test_generations_put_children_after_parents():
    """What orders two versions of the same second (ZFS times are whole seconds): pure."""
    commits = {"c": {"parents": "b"}, "a": {"parents": ""}, "b": {"parents": "a gone"},
               "m": {"parents": "c x"}, "x": {"parents": "a"}}
    gen = data.generations(commits)
    assert gen == {"a": 0, "b": 1, "x": 1, "c": 2, "m": 3}


def test_lake_view_shows_every_project(made, lake, tmp_path):
    """`snapver ui --lake`: no working tree; a picker of the lake's projects at /, each project's
    pages under /p/<project>/ with links that stay there, versions named by snapshot name."""
    from tests.fixtures.git import commit, git, write

    other = tmp_path / "other"
    other.mkdir()
    git(other, "init", "-q", "-b", "main")
    snapver(other, "init", *lake.init_args, "--volume", "data")
    write(other / "data" / "x.csv", "1\n")
    o1 = commit(other, "other v1", "snapver.toml")
    mine, theirs = (tomllib.loads((r / "snapver.toml").read_text())["project"]["id"] for r in (made.repo, other))
    before = lake_listing(made.repo)
    elsewhere = tmp_path / "nowhere"
    elsewhere.mkdir()
    v1, v2, v3 = made.versions
    with Server(elsewhere, "--lake", lake.spec) as s:
        base = s.base
        code, page, _ = get(base + "/")
        assert code == 200 and 'id="projects"' in page
        assert f'href="/p/{mine}/"' in page and f'href="/p/{theirs}/"' in page
        mine_row = page.split(f'data-project="{mine}"')[1].split("</tr>")[0]
        assert "data, models, logs, finetune" in mine_row
        # One project's pages, its links kept in it.
        code, page, _ = get(f"{base}/p/{mine}/")
        assert code == 200
        assert re.findall(r'data-name="([0-9a-f]{40})"', page)[:3] == [v3, v2, v1]
        assert f'href="/p/{mine}/v/{v3}"' in page and f'href="/p/{mine}/charts"' in page
        assert 'id="projects-link"' in page and o1 not in page
        code, page, _ = get(f"{base}/p/{mine}/v/{v2}")
        assert code == 200 and "train v2" in page and f'href="/p/{mine}/files/{v2}/models/"' in page
        code, page, _ = get(f"{base}/p/{mine}/compare?v={v1}&v={v3}")
        assert code == 200 and "(+0.22)" in page.split('data-key="accuracy"')[1].split("</tr>")[0]
        code, page, _ = get(f"{base}/p/{mine}/charts")
        charts = {sp["title"]: sp for sp in specs(page).values()}
        assert code == 200 and [p["value"] for p in charts["accuracy"]["data"]["values"]] == list(ACCURACY)
        code, page, _ = get(f"{base}/p/{mine}/lineage")
        assert code == 200 and f'xlink:href="/p/{mine}/v/{made.derived_from}"' in page
        code, page, _ = get(f"{base}/p/{mine}/releases")
        assert code == 200 and f'href="/p/{mine}/v/{v3}"' in page.split('data-release="prod"')[1]
        code, page, _ = get(f"{base}/p/{mine}/space")
        bars = next(iter(specs(page).values()))["data"]["values"]
        assert code == 200 and v3[:10] in {b["version"] for b in bars} and "live" not in {b["version"] for b in bars}
        code, body, _ = get(f"{base}/p/{mine}/files/{v3}/models/metrics.json")
        assert code == 200 and json.loads(body) == {"accuracy": 0.93}
        assert raw(s.port, "GET", f"/p/{mine}/files/{v3}/data/escape/passwd")[0] == 403
        # The other project: its own version only.
        code, page, _ = get(f"{base}/p/{theirs}/")
        assert code == 200 and re.findall(r'data-name="([0-9a-f]{40})"', page) == [o1]
        assert get(f"{base}/p/{theirs}/files/{o1}/data/x.csv")[1] == "1\n"
        assert get(f"{base}/p/{theirs}/v/{v3}")[0] == 404  # another project's version
        # release:NAME works without Git, a branch name does not; nor a project not there.
        assert get(f"{base}/p/{mine}/v/release:prod")[0] == 200
        code, page, _ = get(f"{base}/p/{mine}/compare?v={v1}&v=main")
        assert code == 400 and "snapshot name" in page
        assert get(f"{base}/p/nosuch/")[0] == 404
        assert get(f"{base}/p/..%2f..%2fetc/")[0] == 404
        assert get(f"{base}/charts")[0] == 404  # which project?
        assert raw(s.port, "POST", f"/p/{mine}/")[0] == 405
    assert lake_listing(made.repo) == before
    err = snapver(elsewhere, "ui", "--lake", str(tmp_path / "nosuchdir"), ok=False).err
    assert err.startswith("snapver: ") and len(err.strip().splitlines()) == 1


def test_run_history_is_its_own_chart(made, lake):
    """The per-step history of a run (the metrics of the wip points taken on a commit) on its
    own page, one point per step; linked from its version and from Charts."""
    from tests.webui_lake import LOSS_STEPS, log_steps

    v3 = made.versions[2]
    wips = log_steps(made.repo)
    assert [w[:40] for w in wips] == [v3] * 3
    with Server(made.repo) as s:
        code, page, _ = get(f"{s.base}/run/{v3}")
        assert code == 200
        spec = {sp["title"]: sp for sp in specs(page).values()}["loss"]
        points = spec["data"]["values"]
        assert [(p["step"], p["value"]) for p in points] == list(enumerate(LOSS_STEPS))
        assert [p["snapshot"] for p in points] == [data.label(w) for w in wips]
        assert spec["encoding"]["x"]["field"] == "step"
        assert "accuracy" not in {sp["title"] for sp in specs(page).values()}  # the commits' metric, not a step's
        code, page, _ = get(f"{s.base}/v/{v3}")
        assert code == 200 and f'href="/run/{v3}"' in page
        assert 'id="run-link"' not in get(f"{s.base}/v/{made.versions[0]}")[1]
        code, page, _ = get(f"{s.base}/charts")
        assert code == 200 and f'href="/run/{v3}"' in page.split('id="runs"')[1]
        code, page, _ = get(f"{s.base}/run/{made.versions[0]}")
        assert code == 200 and "No per-step metrics" in page
        assert get(f"{s.base}/run/nothex")[0] == 404
