#!/usr/bin/env python3
"""Benchmark: snapver against DVC and plain Git, side by side, on the same lake.

The claim: versioning data with copy-on-write snapshots costs O(1), where
tools that hash and copy files cost O(data). For each lake shape, four fresh
loop-mounted Btrfs images of the same size (mounted noatime) get the same
bytes (one fixed seed), one image per tool:

- `snapver`: `snapver init --lake` in the repo, then plain `git commit` /
  `git checkout`, the hooks doing the work; restore with `snapver restore`;
- `dvc-copy`, `dvc-reflink`: DVC (latest from PyPI, in its own venv under
  the workdir) with `cache.type` copy or reflink, `core.autostage`:
  `dvc add data models logs` + `git commit`; `git checkout` + `dvc checkout`;
  restore with `dvc checkout <file>`;
- `git`: the floor: the same data in the working tree but ignored by Git,
  so it times what Git itself costs; it does not version the data.

Operations, in this order: the first version, the second version (1% of the
small files and one model file rewritten), the disk used after both, checkout
of the first version and back (repeated), restore of one deleted model file
(repeated). The tools take turns in a rotating order. Every timed operation
starts with the page cache dropped (cold; `--warm` keeps it) and ends with a
`sync -f` of the tool's filesystem, inside the time: data a tool wrote and
left in the page cache is counted. Shapes: many small files (200k x 4 KiB by
default), then lakes of ~1 GB and ~8 GB; results are written after each.

Needs root (mkfs, mount, drop_caches). Images are always unmounted and
deleted, also on Ctrl-C. Never part of the test suite.

    .venv/bin/python bench/compare.py [--sizes 1G,8G] [--small-files 200000] [--repeat 7]
"""

from __future__ import annotations

import argparse
import hashlib
import random
import re
import shutil
import statistics
import subprocess
import sys
import time
import tomllib
from datetime import datetime, timezone
from pathlib import Path

from snapver.lake import parse_size

from common import (DEFAULT_WORKDIR, FILES_PER_DIR, GIT_ENV, HERE, LOG_FILE, MiB, RESULTS,
                    SHARE_SMALL, SMALL_FILE, SNAPVER, btrfs_image, fill_lake, freeze_source, human, loadavg,
                    machine, machine_line, require_root, run, run_dir, settle, source_digest,
                    write_file, write_results)

TOOLS = ("snapver", "dvc-copy", "dvc-reflink", "git")
TITLES = {"snapver": "snapver", "dvc-copy": "DVC copy", "dvc-reflink": "DVC reflink", "git": "Git floor"}
OPS = ("first version", "second version", "checkout first version", "checkout back", "restore one model file")
TINY_FILE = 4 * 1024  # the small-files shape: one file per sample, e.g. a tokenised text or a label
CHANGED_EVERY = 100  # the second version rewrites every 100th small file: 1%
MODEL = "models/checkpoint-000.pt"  # rewritten in the second version, deleted and restored at the end
SEED = 20261124


# ------------------------------------------------------------------ the bench venv
def bench_venv(workdir: Path) -> Path:
    """DVC and matplotlib, latest from PyPI, in their own venv: never in the project's."""
    venv = workdir / "dvc-venv"
    if not (venv / "bin" / "pip").exists():
        run([sys.executable, "-m", "venv", "--clear", str(venv)])
    print(f"installing dvc and matplotlib into {venv} ...", flush=True)
    run([str(venv / "bin" / "pip"), "install", "-q", "--upgrade", "dvc", "matplotlib"])
    return venv


# ------------------------------------------------------------------ the data
def lake_shape(repo: Path, size: int, rng: random.Random) -> tuple[dict, list[str]]:
    """common.fill_lake's mix (50 KB samples, shards, checkpoints, logs); the small files' paths."""
    written = fill_lake(repo, size, rng)
    count = int(size * SHARE_SMALL) // SMALL_FILE
    return written, [f"data/part-{i // FILES_PER_DIR:05d}/sample-{i:07d}.bin" for i in range(count)]


def small_shape(repo: Path, count: int, rng: random.Random) -> tuple[dict, list[str]]:
    """count files of 4 KiB in data/ (1000 a folder), two checkpoints, a few logs."""
    small = []
    for i in range(count):
        folder = repo / "data" / f"part-{i // FILES_PER_DIR:05d}"
        if i % FILES_PER_DIR == 0:
            folder.mkdir()
        small.append(f"data/part-{i // FILES_PER_DIR:05d}/sample-{i:07d}.bin")
        write_file(repo / small[-1], TINY_FILE, rng)
    for i in range(2):
        write_file(repo / "models" / f"checkpoint-{i:03d}.pt", 64 * MiB, rng)
    for i in range(4):
        write_file(repo / "logs" / f"train-{i:04d}.log", LOG_FILE, rng)
    written = {"data (small files)": {"files": count, "bytes": count * TINY_FILE},
               "models": {"files": 2, "bytes": 128 * MiB}, "logs": {"files": 4, "bytes": 4 * LOG_FILE}}
    return written, small


def digest(repo: Path, paths: list[str]) -> str:
    h = hashlib.sha256()
    for p in paths:
        h.update((repo / p).read_bytes())
    return h.hexdigest()[:16]


# ------------------------------------------------------------------ the filesystem
def btrfs_used(mnt: Path) -> dict:
    """Bytes the filesystem holds (after a commit of its transaction), and its own count of shared extents."""
    run(["btrfs", "filesystem", "sync", str(mnt)])
    usage = run(["btrfs", "filesystem", "usage", "-b", str(mnt)])
    df = run(["btrfs", "filesystem", "df", "-b", str(mnt)])
    return {"used": int(re.search(r"^\s+Used:\s+(\d+)", usage, re.M)[1]),  # Overall: data + metadata (DUP: x2)
            "data_used": int(re.search(r"^Data, \S+: total=\d+, used=(\d+)", df, re.M)[1]),
            "metadata_used": int(re.search(r"^Metadata, \S+: total=\d+, used=(\d+)", df, re.M)[1])}


def btrfs_du(mnt: Path) -> dict | None:
    """`btrfs filesystem du -s`: the files' extents, shared ones counted once in `set_shared`."""
    try:
        out = run(["btrfs", "filesystem", "du", "-s", "--raw", str(mnt)]).strip().splitlines()[-1].split()
    except RuntimeError as e:
        return {"error": str(e)}
    return {"total": int(out[0]), "exclusive": int(out[1]), "set_shared": int(out[2])}


def drop_caches() -> None:
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write("3\n")


# ------------------------------------------------------------------ one tool on its image
class Tool:
    def __init__(self, name: str, mnt: Path, image: Path, venv: Path):
        self.name, self.mnt, self.image = name, mnt, image
        self.repo = mnt / "repo"
        self.dvc_bin = str(venv / "bin" / "dvc")
        self.empty = btrfs_used(mnt)  # the baseline: the freshly made filesystem
        self.samples: dict[str, list[float]] = {op: [] for op in OPS}
        self.splits: dict[str, list[list[tuple[str, float]]]] = {op: [] for op in OPS}
        self.anomalies: list[str] = []
        self.extra: dict = {}
        self.project = None

    @property
    def dvc(self) -> bool:
        return self.name.startswith("dvc")

    def env(self) -> dict:
        if not self.dvc:
            return GIT_ENV  # read late: freeze_source sets PYTHONPATH for the hooks
        env = {**GIT_ENV, "DVC_NO_ANALYTICS": "1"}
        env.pop("PYTHONPATH", None)
        return env

    def sh(self, *argv: str) -> str:
        return run(list(argv), cwd=self.repo, env=self.env())

    def setup(self) -> None:
        """Untimed: repo, tool, one commit of the set-up; the volumes' folders exist and are empty."""
        self.repo.mkdir()
        self.sh("git", "init", "-q", "-b", "main")
        (self.repo / "train.py").write_text("print('train')\n")
        if self.name == "snapver":
            lake = self.mnt / "lake"
            lake.mkdir()
            self.sh(SNAPVER, "init", "--lake", str(lake))  # volumes, links, .gitignore, the hooks
            self.project = tomllib.loads((self.repo / "snapver.toml").read_text())["project"]["id"]
        else:
            for vol in ("data", "models", "logs"):
                (self.repo / vol).mkdir()
        if self.dvc:
            self.sh(self.dvc_bin, "init", "-q")
            for key, value in (("core.analytics", "false"), ("core.check_update", "false"),
                               ("core.autostage", "true"), ("cache.type", self.name.split("-")[1]),
                               # Its state and index databases on the same image, so they count as disk used.
                               ("core.site_cache_dir", str(self.mnt / "dvc-site-cache"))):
                self.sh(self.dvc_bin, "config", key, value)
        if self.name == "git":
            (self.repo / ".gitignore").write_text("/data/\n/models/\n/logs/\n")
        self.sh("git", "add", "-A")
        self.sh("git", "commit", "-q", "-m", "set-up")

    # The commands of each operation, as a user types them.
    def version_cmds(self, label: str) -> list[list[str]]:
        dvc = [[self.dvc_bin, "add", "-q", "data", "models", "logs"]] if self.dvc else []
        return dvc + [["git", "add", "params.yaml"], ["git", "commit", "-q", "-a", "-m", label]]

    def checkout_cmds(self, rev: str) -> list[list[str]]:
        return [["git", "checkout", "-q", rev]] + ([[self.dvc_bin, "checkout", "-q"]] if self.dvc else [])

    def restore_cmds(self) -> list[list[str]]:
        if self.name == "snapver":
            return [[SNAPVER, "restore", "HEAD", MODEL]]
        return [[self.dvc_bin, "checkout", "-q", MODEL]]

    def timed(self, op: str, cmds: list[list[str]], tools: list["Tool"], warm: bool) -> float:
        """One sample of op: every image settled, the page cache dropped (unless warm), then the
        commands and a sync of this tool's filesystem, all inside the time."""
        for t in tools:
            settle(t.image)
        if not warm:
            drop_caches()
        parts = []
        start = time.perf_counter()
        for argv in cmds:
            t0 = time.perf_counter()
            done = subprocess.run(argv, cwd=self.repo, env=self.env(), capture_output=True, text=True,
                                  stdin=subprocess.DEVNULL)
            parts.append((" ".join(Path(argv[0]).name if i == 0 else a for i, a in enumerate(argv)),
                          (time.perf_counter() - t0) * 1000))
            if done.returncode != 0:
                raise RuntimeError(f"{self.name}: {' '.join(argv)} failed: {done.stderr.strip()}")
            if "snapver:" in done.stderr and ("fail" in done.stderr or "carried on" in done.stderr):
                self.anomalies.append(f"{op}: {' '.join(argv)}: {done.stderr.strip()}")
        t0 = time.perf_counter()
        run(["sync", "-f", str(self.mnt)])
        parts.append(("sync -f", (time.perf_counter() - t0) * 1000))
        ms = (time.perf_counter() - start) * 1000
        self.samples[op].append(ms)
        self.splits[op].append(parts)
        return ms

    def doctor(self) -> str:
        """`dvc doctor` (which cache types DVC found it can use here), untimed. It stats every mount on
        the host, and another job's hung FUSE mount blocks it for good: give up after a minute."""
        try:
            done = subprocess.run([self.dvc_bin, "doctor"], cwd=self.repo, env=self.env(), capture_output=True,
                                  text=True, timeout=60, stdin=subprocess.DEVNULL)
            return done.stdout
        except subprocess.TimeoutExpired:
            return "timed out after 60 s (it stats every mount on the host; one of them hung)"

    # Untimed checks that each tool did what the timing claims.
    def head(self) -> str:
        return self.sh("git", "rev-parse", "HEAD").strip()

    def check(self, what: str, sha: str, paths: list[str], expected: str) -> None:
        if self.name == "snapver":
            if not all((self.mnt / "lake" / self.project / "snapshots" / v / sha).is_dir()
                       for v in ("data", "models", "logs")):
                self.anomalies.append(f"{what}: no snapshot of {sha[:10]} in every volume")
            lake_at = (self.repo / ".git" / "snapver" / "lake-at").read_text().strip()
            if lake_at != sha:
                self.anomalies.append(f"{what}: the lake is at {lake_at[:10]}, not {sha[:10]}")
        if self.name != "git" and digest(self.repo, paths) != expected:
            self.anomalies.append(f"{what}: the changed files do not hold {sha[:10]}'s bytes")


# ------------------------------------------------------------------ one shape
def rotated(tools: list, i: int) -> list:
    return tools[i % len(tools):] + tools[:i % len(tools)]


def bench_shape(workdir: Path, venv: Path, shape: str, size: int, args) -> dict:
    """shape "lake": fill_lake's mix of about size bytes; "small": size files of 4 KiB."""
    label = f"{size // 1000}k files of 4 KiB" if shape == "small" else f"{human(size)} lake"
    data_bytes = size * TINY_FILE + 144 * MiB if shape == "small" else size
    # DVC copy holds the data twice, plus the second version; sparse, so the others cost nothing extra.
    image_size = int(data_bytes * 2.5) + 3 * 1024**3
    if shape == "small":
        image_size += size * 8 * 1024  # Btrfs metadata for every file, and DVC's per-file cache entries
    load = {"start": loadavg()}
    print(f"\n[{label}] {len(args.tools)} images of {human(image_size)} (sparse)", flush=True)
    with _images(workdir, image_size, label, args.tools) as mounts:
        tools = [Tool(name, mnt, img, venv) for name, (mnt, img) in mounts.items()]
        for t in tools:
            t.setup()

        # The same bytes for every tool: the same seed, the same order of writes.
        written, small, write_s = {}, [], {}
        for t in tools:
            print(f"[{label}] {t.name}: writing {human(data_bytes)} of seeded random data ...", flush=True)
            start = time.perf_counter()
            rng = random.Random(SEED)
            if shape == "small":
                written, small = small_shape(t.repo, size, rng)
            else:
                written, small = lake_shape(t.repo, size, rng)
            (t.repo / "params.yaml").write_text("version: 1\n")
            write_s[t.name] = time.perf_counter() - start
        changed = small[::CHANGED_EVERY] + [MODEL]
        v1_digest = {t.name: digest(t.repo, changed) for t in tools}
        if len(set(v1_digest.values())) != 1:
            raise RuntimeError(f"the tools did not get the same data: {v1_digest}")
        expected = {"v1": v1_digest["snapver"]}

        print(f"[{label}] first version", flush=True)
        for t in rotated(tools, 0):
            t.timed("first version", t.version_cmds("v1"), tools, args.warm)
            t.extra["v1"] = t.head()
            t.check("first version", t.extra["v1"], changed, expected["v1"])

        # The second version: 1% of the small files and one model file rewritten, the same bytes everywhere.
        for t in tools:
            rng = random.Random(SEED + 1)
            for p in changed:
                write_file(t.repo / p, (t.repo / p).stat().st_size, rng)
            (t.repo / "params.yaml").write_text("version: 2\n")
        v2_digest = {t.name: digest(t.repo, changed) for t in tools}
        if len(set(v2_digest.values())) != 1:
            raise RuntimeError(f"the tools did not get the same second version: {v2_digest}")
        expected["v2"] = v2_digest["snapver"]
        model_v2 = digest(tools[0].repo, [MODEL])
        print(f"[{label}] second version", flush=True)
        for t in rotated(tools, 1):
            t.timed("second version", t.version_cmds("v2"), tools, args.warm)
            t.extra["v2"] = t.head()
            t.check("second version", t.extra["v2"], changed, expected["v2"])

        print(f"[{label}] disk used", flush=True)
        for t in tools:
            settle(t.image)
            t.extra["disk"] = {**btrfs_used(t.mnt), "empty": t.empty}
            t.extra["disk"]["above_empty"] = t.extra["disk"]["used"] - t.empty["used"]
            t.extra["disk"]["data_above_empty"] = t.extra["disk"]["data_used"] - t.empty["data_used"]
            if not args.no_du:
                t.extra["du"] = btrfs_du(t.mnt)
            if t.dvc:
                t.extra["dvc_doctor"] = t.doctor()

        # Repeated operations: rounds in a rotating order, so other jobs' load falls on every tool
        # alike; a tool stops taking part once it has spent --budget seconds on the operation.
        def rounds(ops, body):
            for i in range(args.repeat):
                for t in rotated(tools, i):
                    if i and sum(sum(t.samples[op]) for op in ops) > args.budget * 1000:
                        continue
                    body(t)

        def checkout_round(t: Tool) -> None:
            t.timed("checkout first version", t.checkout_cmds(t.extra["v1"]), tools, args.warm)
            t.check("checkout first version", t.extra["v1"], changed, expected["v1"])
            t.timed("checkout back", t.checkout_cmds("main"), tools, args.warm)
            t.check("checkout back", t.extra["v2"], changed, expected["v2"])

        def restore_round(t: Tool) -> None:
            (t.repo / MODEL).unlink()
            t.timed("restore one model file", t.restore_cmds(), tools, args.warm)
            if digest(t.repo, [MODEL]) != model_v2:
                t.anomalies.append(f"restore: {MODEL} does not hold HEAD's bytes")

        print(f"[{label}] checkouts, up to {args.repeat} rounds", flush=True)
        rounds(("checkout first version", "checkout back"), checkout_round)
        print(f"[{label}] restores, up to {args.repeat} rounds", flush=True)
        rounds(("restore one model file",), lambda t: None if t.name == "git" else restore_round(t))
        load["end"] = loadavg()

        out = {"label": label, "shape": shape, "size": size, "data_bytes": sum(w["bytes"] for w in written.values()),
               "files": sum(w["files"] for w in written.values()), "written": written,
               "changed_files": len(changed), "changed_bytes": sum((tools[0].repo / p).stat().st_size for p in changed),
               "image_size": image_size, "write_seconds": write_s, "loadavg": load, "tools": {}}
        for t in tools:
            out["tools"][t.name] = {"samples_ms": t.samples, "splits_ms": t.splits, "anomalies": t.anomalies,
                                    **{k: v for k, v in t.extra.items() if k not in ("v1", "v2")}}
            log = t.repo / ".git" / "snapver" / "hook.log"
            if log.exists():
                out["tools"][t.name]["hook_log"] = log.read_text()[-5000:]
    return out


class _images:
    """One fresh image per tool, all mounted at once (so the rounds can interleave); all
    unmounted and deleted on the way out, whatever happens."""

    def __init__(self, workdir: Path, size: int, label: str, tools: list[str]):
        self.workdir, self.size, self.slug = workdir, size, re.sub(r"\W+", "-", label).strip("-")
        self.tools = tools
        self.stack = None

    def __enter__(self):
        from contextlib import ExitStack
        self.stack = ExitStack().__enter__()
        try:
            return {name: (self.stack.enter_context(btrfs_image(self.workdir, self.size, f"{self.slug}-{name}")),
                           self.workdir / f"{self.slug}-{name}.img") for name in self.tools}
        except BaseException:
            self.stack.close()
            raise

    def __exit__(self, *exc):
        return self.stack.__exit__(*exc)


# ------------------------------------------------------------------ reporting
def med(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


def seconds(ms_values: list[float]) -> str:
    if not ms_values:
        return "n/a"
    m = med(ms_values) / 1000
    text = f"{m:.3f} s" if m < 10 else f"{m:.1f} s"
    if len(ms_values) > 1:
        text += f" ({min(ms_values) / 1000:.3g}-{max(ms_values) / 1000:.3g}, n={len(ms_values)})"
    return text


def ratio(a: float, b: float) -> str:
    if not (a == a and b == b) or b == 0:
        return "n/a"
    return f"{a / b:.3g} (1/{b / a:.0f})" if 2 * a <= b else f"{a / b:.3g}"


def shape_table(s: dict) -> list[str]:
    t = s["tools"]
    tools = [n for n in TOOLS if n in t]
    dvcs = [n for n in tools if n.startswith("dvc")]
    lines = [f"### {s['label']}: {s['files']:,} files, {human(s['data_bytes'])}", "",
             f"Second version: {s['changed_files']:,} files rewritten ({human(s['changed_bytes'])}). "
             f"Load average (1, 5, 15 min) at start {' '.join(s['loadavg']['start'])}, "
             f"at end {' '.join(s['loadavg']['end'])}.", "",
             "| operation | " + " | ".join(TITLES[n] for n in tools) + "".join(f" | snapver/{TITLES[n]}" for n in dvcs)
             + " |", "|" + " --- |" * (len(tools) + len(dvcs) + 1)]
    for op in OPS:
        sv = med(t["snapver"]["samples_ms"][op])
        lines.append(f"| {op} | " + " | ".join(seconds(t[n]["samples_ms"][op]) for n in tools)
                     + "".join(" | " + ratio(sv, med(t[n]["samples_ms"][op])) for n in dvcs) + " |")
    disk = {n: t[n]["disk"]["above_empty"] for n in tools}
    lines.append("| disk used after both versions | " + " | ".join(human(disk[n]) for n in tools)
                 + "".join(" | " + ratio(disk["snapver"], disk[n]) for n in dvcs) + " |")
    if all("du" in t[n] and "total" in (t[n]["du"] or {}) for n in tools):
        lines.append("| `btrfs filesystem du -s`: total / exclusive / shared | "
                     + " | ".join(f"{human(t[n]['du']['total'])} / {human(t[n]['du']['exclusive'])} / "
                                  f"{human(t[n]['du']['set_shared'])}" for n in tools) + " |" + " |" * len(dvcs))
    split_rows = []
    for n in tools:
        for op in ("first version", "second version", "checkout first version"):
            parts = t[n]["splits_ms"][op]
            if parts and n.startswith("dvc"):
                names = [p[0] for p in parts[0]]
                split_rows.append(f"{TITLES[n]} {op}: " + ", ".join(
                    f"`{name}` {med([run_[i][1] for run_ in parts]) / 1000:.2f} s" for i, name in enumerate(names)))
    lines += ["", "Where the DVC time goes (median s per command): " + "; ".join(split_rows) + "."]
    return lines


# What each column is; a run with --tools describes only the tools it ran.
COLUMNS = [
    (("snapver",), "- snapver: `snapver init --lake`, then `git commit` / `git checkout` with its hooks; "
                   "`snapver restore HEAD <file>`."),
    (("dvc-copy", "dvc-reflink"), "- DVC copy / DVC reflink: `cache.type` copy or reflink, `core.autostage`; a "
                                  "version is `dvc add data models logs` + `git add params.yaml` + `git commit -a`; a "
                                  "checkout is `git checkout` + `dvc checkout`; restore is `dvc checkout <file>`."),
    (("git",), "- Git floor: the data in the working tree, ignored by Git: what Git's own `git add` / `git commit` / "
               "`git checkout` of the code cost. It does not version the data (its checkout leaves the data as it is "
               "and it cannot restore), so it is the lower bound, not a competitor."),
]


def markdown(report: dict) -> str:
    m = report["machine"]
    a = report["args"]
    lines = [
        "# snapver vs DVC vs plain Git on the same lake (Btrfs)", "",
        f"{report['date']}, `bench/compare.py --sizes '{a['sizes']}' --small-files {a['small_files']} "
        f"--repeat {a['repeat']} --budget {a['budget']}{' --warm' if a['warm'] else ''}"
        f"{' --tools ' + ','.join(a['tools']) if a.get('tools') else ''}`", "",
        machine_line(m) + f", DVC {report['dvc_version']}.",
        "The machine's 2 CPUs are shared with other jobs (load averages per shape below).", "",
        "Each tool has its own fresh sparse Btrfs image of the same size, loop-mounted "
        "`-o loop,noatime,user_subvol_rm_allowed`, holding the repo (and snapver's lake, DVC's cache and "
        "site cache); every tool gets the same bytes (seed " f"{SEED}). Columns:",
        "",
        *[line for tools, line in COLUMNS if set(tools) & set(a.get("tools") or TOOLS[1:]) or "snapver" in tools],
        "",
        ("Page cache dropped before every timed operation (cold)" if not a["warm"] else
         "Page cache kept (warm)") + "; every time includes a `sync -f` of the tool's filesystem, so data left "
        "dirty in memory is counted. First and second version: one sample per tool (a version can be made "
        "once per lake). Checkout and restore: median (min-max, n) of rounds in a rotating tool order; a tool "
        f"stops after {a['budget']} s spent on an operation, so slow tools have fewer samples. Disk used: the "
        "filesystem's used bytes (`btrfs filesystem usage`, data + metadata, metadata DUP counted twice) after "
        "`btrfs filesystem sync`, minus the same figure for the empty image: reflinks and snapshots' shared "
        "extents count once. Ratio: snapver / DVC; below 1 snapver is faster (1/N: N times faster).", ""]
    for s in report["shapes"]:
        lines += shape_table(s) + [""]
    anomalies = [f"{s['label']}, {TITLES[n]}: {a_}" for s in report["shapes"] for n in TOOLS if n in s["tools"]
                 for a_ in s["tools"][n]["anomalies"]]
    lines += ["Data written per image (seeded random bytes, no holes): " + "; ".join(
        f"{s['label']}: " + ", ".join(f"{k} {v['files']:,} files {human(v['bytes'])}" for k, v in s["written"].items())
        for s in report["shapes"]) + ".", "",
        "Checks (untimed): each tool's changed files held the same bytes after writing; after every commit "
        "and checkout they held the right version's bytes (snapver: and the lake was at that commit, with a "
        "snapshot in every volume); every restored file held HEAD's bytes.", "",
        "Anomalies: " + ("; ".join(anomalies) if anomalies else "none."), ""]
    if report.get("chart"):
        lines += [f"![time against lake size]({report['chart']})", ""]
    return "\n".join(lines)


def chart(venv: Path, report_json: Path) -> str | None:
    png = report_json.with_suffix(".png")
    done = subprocess.run([str(venv / "bin" / "python"), str(HERE / "compare_chart.py"), str(report_json), str(png)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        print(f"warning: no chart: {done.stderr.strip()[-2000:]}", file=sys.stderr)
        return None
    return png.name


# ------------------------------------------------------------------ main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1G,8G",
                        help="lake sizes, comma-separated (default 1G,8G; e.g. 1G,8G,32G; '' for none)")
    parser.add_argument("--small-files", default="200000",
                        help="file counts of the small-files shape (4 KiB each), comma-separated; 0 to skip "
                             "(default 200000; e.g. 1000000)")
    parser.add_argument("--repeat", type=int, default=7, help="rounds of checkout and restore (default 7)")
    parser.add_argument("--budget", type=float, default=60,
                        help="seconds a tool may spend on one repeated operation before it stops (default 60)")
    parser.add_argument("--warm", action="store_true", help="keep the page cache (default: drop it before each op)")
    parser.add_argument("--no-du", action="store_true", help="skip the `btrfs filesystem du` cross-check")
    parser.add_argument("--tools", default=",".join(TOOLS),
                        help=f"which of {', '.join(TOOLS)} to run, comma-separated (default all; snapver always)")
    parser.add_argument("--name", default="compare", help="results/<name>.md and .json (default compare)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                        help="where the images and the DVC venv go (not tmpfs)")
    args = parser.parse_args()
    if args.repeat < 1:
        parser.error("--repeat must be at least 1")
    asked = set(args.tools.split(",")) | {"snapver"}
    if asked - set(TOOLS):
        parser.error(f"unknown tool(s): {', '.join(sorted(asked - set(TOOLS)))}; choose from {', '.join(TOOLS)}")
    args.tools = [n for n in TOOLS if n in asked]
    shapes = [("small", int(n)) for n in args.small_files.split(",") if int(n) > 0]
    shapes += [("lake", parse_size(s)) for s in sorted(filter(None, args.sizes.split(",")), key=parse_size)]
    if not shapes:
        parser.error("nothing to measure: give --sizes or --small-files")
    if not require_root("compare.py", "mkfs.btrfs, loop mount, drop_caches"):
        return 2

    free = shutil.disk_usage(args.workdir if args.workdir.exists() else args.workdir.parent).free
    need = max(n * TINY_FILE if k == "small" else n for k, n in shapes) * 5.5  # 4 tools, DVC copy twice
    if free < need:
        print(f"compare.py: {human(free)} free in {args.workdir}, the largest shape needs about {human(need)}",
              file=sys.stderr)
        return 2

    venv = bench_venv(args.workdir)
    dvc_version = run([str(venv / "bin" / "dvc"), "--version"]).strip()
    report = {"args": {"sizes": args.sizes, "small_files": args.small_files, "repeat": args.repeat,
                       "budget": args.budget, "warm": args.warm,
                       "tools": [] if len(args.tools) == len(TOOLS) else args.tools[1:]},
              "dvc_version": dvc_version, "loadavg_at_start": loadavg(), "shapes": []}
    with run_dir(args.workdir) as workdir:
        frozen = freeze_source(workdir / "src")
        digest_ = source_digest(frozen)
        for shape, size in shapes:
            report["shapes"].append(bench_shape(workdir, venv, shape, size, args))
            # Results after each shape: a long run that dies later still leaves these.
            report["date"] = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
            report["machine"] = {**machine(), "snapver_source_sha256": digest_}
            report["source_changed"] = source_digest() != digest_
            write_results(args.name, markdown(report), report)
            report["chart"] = chart(venv, RESULTS / f"{args.name}.json")
            write_results(args.name, markdown(report), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
