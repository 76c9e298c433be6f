#!/usr/bin/env python3
"""Benchmark: how long each page of `snapver ui` takes to make on a large lake.

The issue's bar: a lake of 10,000 versions and a snapshot of many files, each page in under 1 s.
One sparse Btrfs image; a repository with `snapver init`; a flat folder of --files small files
with hashed names in models/; one real commit (hooks); then --versions read-only Btrfs snapshots
of models (--changes files rewritten before each) named as commits, with a catalog row and two
metrics and a param each (what the hooks would record, without a Git commit per version: they
differ only in the subject shown). Each page is then asked --repeat times through the WSGI app
in-process (Flask's test client: the server's own time, no browser) and the first (nothing kept
by the view yet), median and p90 are reported. Compare diffs two snapshots from their send
stream (O(changes), as `snapver compare`); Space measures one page of versions from the send
streams between neighbours (O(changes)). The cold row drops the page cache (and the view's kept
folder names) before each request, as a server's first view. The first commit started the
measure of models' first snapshot in the background (spacewarm; waited for here, and said, if
the versions were made before it ended), so no request walks.

Needs root (mkfs, loop mount). The image is always unmounted and deleted.

    .venv/bin/python bench/ui_pages.py [--versions 10000] [--files 100000] [--repeat 7] [--pages space]
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import GIT_ENV, btrfs_image, machine, machine_line, require_root, run, run_dir, summary, timed, write_results  # noqa: E402

from snapver import registry  # noqa: E402
from snapver.lake import Workspace  # noqa: E402
from snapver.webui import create_app, data  # noqa: E402


def build(repo: Path, lake: Path, versions: int, files: int, changes: int) -> list[str]:
    run(["git", "init", "-q", "-b", "main", str(repo)])
    (repo / "README").write_text("bench\n")
    run(["git", "add", "README"], cwd=repo)
    run(["git", "commit", "-q", "-m", "code"], cwd=repo, env=GIT_ENV)
    lake.mkdir()
    run([sys.executable, "-m", "snapver", "init", "--lake", str(lake)], cwd=repo)
    with open(repo / "snapver.toml", "a") as f:
        f.write('\n[registry]\nmetrics = ["models/metrics.json"]\n')
    shards = repo / "models" / "shards"
    shards.mkdir()
    # Hashed names, as sharded datasets have: the folder reads in creation order, which is
    # not the names' order, so a page of it cannot come from an already sorted read.
    shard_names = [hashlib.sha1(str(i).encode()).hexdigest()[:20] + ".bin" for i in range(files)]
    for name in shard_names:
        (shards / name).write_bytes(os.urandom(64))
    (repo / "models" / "metrics.json").write_text('{"accuracy": 0.5, "loss": 1.0}')
    run(["git", "add", "snapver.toml"], cwd=repo)
    run(["git", "commit", "-q", "-m", "first"], cwd=repo, env=GIT_ENV)
    ws = Workspace.open(repo)
    names = []
    for i in range(versions):
        for name in shard_names[:changes]:  # what a training step rewrites: the same few files
            (shards / name).write_bytes(os.urandom(64))
        name = hashlib.sha1(f"version {i}".encode()).hexdigest()
        snaps = ws.backend.snapshot(ws.project, ws.id, ["models"], name)
        ws.catalog.record_snapshots(snaps, ws.id, f"version {i}")
        registry.record_values(ws, name, {"metric": {"accuracy": 0.5 + i / (2 * versions), "loss": 1 / (i + 1)},
                                          "param": {"lr": 0.001 * (1 + i % 7)}}, "bench")
        names.append(name)
        if i % 1000 == 999:
            print(f"  {i + 1} versions", file=sys.stderr)
    ws.catalog.close()
    return names


COLD = "cold (page cache dropped)"


def forget_folders() -> None:
    """As on a server's first view of a folder: nothing of it in the page cache, nor in the
    view's memory of big folders."""
    for folder in list(data._kept.values()):
        folder.done.wait()  # no read of the last request's still going
    data._kept.clear()
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text("3\n")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--versions", type=int, default=10_000)
    ap.add_argument("--files", type=int, default=100_000)
    ap.add_argument("--changes", type=int, default=10, help="files rewritten before each version")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--workdir", type=Path, default=Path("/var/tmp/snapver-bench"))
    ap.add_argument("--pages", help="only the pages whose label starts with this (e.g. space): "
                                    "results/ui_pages-<it>.md")
    args = ap.parse_args()
    if not require_root("ui_pages.py"):
        return 1
    with run_dir(args.workdir) as wd, btrfs_image(wd, 16 << 30, "ui") as mnt:
        repo = wd / "repo"
        names = build(repo, mnt / "lake", args.versions, args.files, args.changes)
        newest, older = names[-1], names[len(names) // 2]
        pages = {
            "versions, page 1": "/",
            "versions, page 100": "/?page=100",
            "versions, filtered": "/?q=accuracy%3E0.9&q=lr%3C0.003",
            "one version": f"/v/{newest}",
            "charts": "/charts",
            "lineage": "/lineage",
            "releases": "/releases",
            "space (one page)": "/space",
            f"files: folder of {args.files}, page 1": f"/files/{newest}/models/shards/",
            f"files: folder of {args.files}, last page": f"/files/{newest}/models/shards/?page=100000",
            f"files: folder of {args.files}, page 1, {COLD}": f"/files/{older}/models/shards/",
            f"files: folder of {args.files}, page 2, {COLD}": f"/files/{older}/models/shards/?page=2",
            "files: download one": f"/files/{newest}/models/metrics.json",
            "compare two (send-stream diff)": f"/compare?v={older}&v={newest}",
            "run history (per-step chart)": f"/run/{newest}",
        }
        waited = time.monotonic()
        while not list((mnt / "lake").glob("space-cache.d/known-*-models")) and time.monotonic() < waited + 900:
            time.sleep(0.5)
        print(f"  waited {time.monotonic() - waited:.1f} s for the measure after the first commit", file=sys.stderr)
        if args.pages:
            pages = {label: url for label, url in pages.items() if label.startswith(args.pages)}
        client = create_app(repo).test_client()
        samples: dict[str, list[float]] = {}
        sizes: dict[str, int] = {}
        for label, url in pages.items():
            for _ in range(args.repeat):
                if COLD in label:
                    forget_folders()
                ms, resp = timed(client.get, url)
                assert resp.status_code == 200, (url, resp.status_code, resp.get_data(as_text=True)[:300])
                samples.setdefault(label, []).append(ms)
                sizes[label] = len(resp.get_data())
    m = machine()
    lines = [f"# snapver ui: page times on {args.versions} versions, a folder of {args.files} files", "",
             machine_line(m), "", f"{datetime.now(timezone.utc):%Y-%m-%d}, {args.repeat} requests per page, "
             "server time (WSGI in-process), ms", "",
             "| page | first | median | p10 | p90 | bytes |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for label, values in samples.items():
        s = summary(values)
        lines.append(f"| {label} | {values[0]:.0f} | {s['median']:.0f} | {s['p10']:.0f} | {s['p90']:.0f} | "
                     f"{sizes[label]:,} |")
    write_results(f"ui_pages-{args.pages}" if args.pages else "ui_pages", "\n".join(lines) + "\n",
                  {"machine": m, "args": {k: str(v) for k, v in vars(args).items()},
                   "samples_ms": samples, "bytes": sizes})
    return 0


if __name__ == "__main__":
    sys.exit(main())
