#!/usr/bin/env python3
"""Benchmark: what snapver's Git hooks add to `git commit` and `git checkout`.

The goal (issue): at most 100 ms added, the same on a ~1 GB and a ~8 GB lake;
Python start-up and imports count. For each lake size, on a fresh
loop-mounted Btrfs image:

1. a fresh Git repo gets a lake with `snapver init --lake DIR` (the CLI,
   which installs the hooks), real random data is written into the volumes
   (the same mix as snapshot_checkout.py), and a first commit is snapshotted;
2. `git commit --allow-empty -m x`, timed in three modes, interleaved in a
   rotating order so that load from other jobs hits all three alike:
   - `hooks`: the hooks installed and active (the post-commit snapshot runs);
   - `SNAPVER_SKIP=1`: installed, but each shim exits early (the shell runs);
   - `no hooks`: removed with `snapver hooks uninstall`: plain Git, the true baseline;
3. `git checkout` from HEAD to the first commit and back (both have
   snapshots), in the same three modes; with hooks the lake follows;
4. diagnostics, untimed: which hooks Git runs per command and how long each
   takes (GIT_TRACE2_EVENT), `python -c pass`, the hook's Python path run
   directly, under `-X importtime`, and under cProfile (bench/hook_profile.py:
   imports, every subprocess, sqlite, ioctls).

Overhead = median(with hooks) - median(baseline). It prints a Markdown table
and writes it, with the raw samples as JSON, to bench/results/hooks.*.

Needs root (mkfs, loop mount). Images are always unmounted and deleted, also
on Ctrl-C. Never part of the test suite.

With --registry (issue 19, "the hook within 100 ms on a real project"), the
project also has `[registry] metrics = ["models/metrics.json"]` in snapver.toml,
and before every commit (in every mode, untimed) a ~5 MB pickled model
(models/model.pkl: a dict of weight blobs and a list of floats, a real pickle
stream) and the metrics file are rewritten: each commit then has a changed model
to scan and a metrics file to read.

    .venv/bin/python bench/hooks.py [--sizes 1G,8G] [--repeat 20] [--registry]
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
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

from common import (DEFAULT_WORKDIR, GIT_ENV, HERE, MiB, SNAPVER, btrfs_image, cell, fill_lake, human,
                    freeze_source, loadavg, machine, machine_line, require_root, run, run_dir, settle,
                    source_digest, summary, write_results)

GOAL_MS = 100
MODES = ("hooks", "SNAPVER_SKIP=1", "no hooks")

def env(mode: str) -> dict:
    # "no hooks" runs with the hooks uninstalled; GIT_ENV is read late: freeze_source sets PYTHONPATH.
    return {**GIT_ENV, "SNAPVER_SKIP": "1"} if mode == "SNAPVER_SKIP=1" else GIT_ENV

PYTHON = sys.executable  # the interpreter `snapver init` writes into the shims


class Repo:
    """The benchmark's repository: Git commands, timed or not, and the hooks on or off."""

    def __init__(self, path: Path, registry: bool = False):
        self.path = path
        self.hooks_on = True  # `snapver init` installs them
        self.anomalies: list[str] = []
        self.registry = registry
        self.round = 0

    def prepare(self) -> None:
        """--registry: a new model and new metrics before a commit, as a training run leaves
        them; written and flushed untimed, so only what the hooks do with them is measured."""
        if not self.registry:
            return
        self.wait_for_scans()
        self.round += 1
        write_model(self.path / "models" / "model.pkl", self.round)
        (self.path / "models" / "metrics.json").write_text(
            json.dumps({"accuracy": 0.5 + self.round / 1e4, "loss": {"train": 1 / self.round, "val": 2 / self.round},
                        "epoch": self.round}))
        os.sync()

    def git(self, *args: str, env: dict | None = None) -> str:
        return run(["git", *args], cwd=self.path, env=env)

    def timed_git(self, mode: str, *args: str) -> float:
        """Milliseconds for one Git command in mode; a hook that complains is an anomaly."""
        self.set_hooks(mode != "no hooks")
        start = time.perf_counter()
        done = subprocess.run(["git", *args], cwd=self.path, env=env(mode), capture_output=True, text=True)
        ms = (time.perf_counter() - start) * 1000
        if done.returncode != 0:
            raise RuntimeError(f"git {' '.join(args)} failed: {done.stderr.strip()}")
        if "snapver:" in done.stderr and ("fail" in done.stderr or "carried on" in done.stderr):
            self.anomalies.append(f"git {' '.join(args)} ({mode}): {done.stderr.strip()}")
        return ms

    def wait_for_scans(self, timeout: float = 120) -> None:
        """Until no model scan a hook left to a process of its own runs for this repository:
        it scans after the commit, and must not land inside the next timed one (a real user
        does not commit every few hundred milliseconds). Untimed."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            running = False
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    argv = open(f"/proc/{pid}/cmdline", "rb").read().split(b"\0")
                    if b"scan-pending" in argv and os.readlink(f"/proc/{pid}/cwd") == str(self.path):
                        running = True
                        break
                except OSError:
                    continue  # gone meanwhile
            if not running:
                return
            time.sleep(0.05)
        self.anomalies.append(f"a model scan still ran after {timeout:.0f} s")

    def set_hooks(self, on: bool) -> None:
        if on != self.hooks_on:
            run([SNAPVER, "hooks", "install" if on else "uninstall"], cwd=self.path)
            self.hooks_on = on

    def head(self) -> str:
        return self.git("rev-parse", "HEAD").strip()

    def lake_at(self) -> str:
        return (self.path / ".git" / "snapver" / "lake-at").read_text().strip()


MODEL_BYTES = 5 * MiB


def write_model(path: Path, seed: int) -> None:
    """~5 MB pickle like a small checkpoint: named weight blobs (most of the bytes) and a
    training history of floats (many opcodes), different at each seed."""
    blob = os.urandom(MODEL_BYTES - 200_000)
    layers = {f"layer{i}.weight": blob[i * len(blob) // 16:(i + 1) * len(blob) // 16] for i in range(16)}
    history = [seed + i / 7 for i in range(20_000)]
    with open(path, "wb") as f:
        pickle.dump({"state_dict": layers, "history": history, "seed": seed}, f, protocol=4)


def snapshotted(lake: Path, project: str, sha: str) -> bool:
    return all((lake / project / "snapshots" / v / sha).is_dir() for v in ("data", "models", "logs"))


# ------------------------------------------------------------------ diagnostics
def traced_hooks(repo: Repo, *args: str) -> dict[str, list[float]]:
    """The hooks one Git command ran, with each run's time in ms (Git's own trace2 clock)."""
    events = repo.path.parent / "trace2.json"
    events.unlink(missing_ok=True)
    subprocess.run(["git", *args], cwd=repo.path, capture_output=True, check=True,
                   env={**GIT_ENV, "GIT_TRACE2_EVENT": str(events)})
    starts, hooks = {}, {}
    for line in events.read_text().splitlines():
        e = json.loads(line)
        if "/" in e.get("sid", "/"):
            continue  # a nested git (the hooks' own rev-parse, snapver's git calls)
        if e["event"] == "child_start" and e.get("child_class") == "hook":
            starts[e["child_id"]] = e["hook_name"] + (f" {e['argv'][1]}" if len(e["argv"]) > 1
                                                      and e["hook_name"] == "reference-transaction" else "")
        elif e["event"] == "child_exit" and e["child_id"] in starts:
            hooks.setdefault(starts[e["child_id"]], []).append(e["t_rel"] * 1000)
    events.unlink()
    return hooks


def importtime(stderr: str) -> dict[str, dict]:
    """-X importtime lines: {module: {"self": us, "cum": us, "depth": nesting}}."""
    out = {}
    for line in stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            out[m[4]] = {"self": int(m[1]), "cum": int(m[2]), "depth": len(m[3]) // 2}
    return out


def python_breakdown(repo: Repo, first: str, repeat: int) -> dict:
    """Where the Python side of the hooks goes, measured outside Git.

    Each post-commit run gets a fresh commit made with SNAPVER_SKIP=1 first
    (untimed), so it does the real work: snapshot every volume, record it.
    """
    def fresh_commit():
        repo.prepare()
        repo.timed_git("SNAPVER_SKIP=1", "commit", "-q", "--allow-empty", "-m", "x")

    hook = [PYTHON, "-m", "snapver.githooks", "post-commit"]
    bare, direct, imports = [], [], []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run([PYTHON, "-c", "pass"], check=True)
        bare.append((time.perf_counter() - start) * 1000)
        fresh_commit()
        start = time.perf_counter()
        subprocess.run(hook, cwd=repo.path, env=GIT_ENV, check=True, capture_output=True, stdin=subprocess.DEVNULL)
        direct.append((time.perf_counter() - start) * 1000)
    for _ in range(5):
        fresh_commit()
        done = subprocess.run([PYTHON, "-X", "importtime", *hook[1:]], cwd=repo.path, env=GIT_ENV,
                              capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL)
        imports.append(importtime(done.stderr))
    startup = [importtime(subprocess.run([PYTHON, "-X", "importtime", "-c", "pass"], capture_output=True,
                                         text=True, check=True).stderr) for _ in range(5)]

    profiles = {"post-commit": [], "post-checkout": []}
    profiler = [PYTHON, str(HERE / "hook_profile.py")]
    for _ in range(3):
        fresh_commit()
        profiles["post-commit"].append(json.loads(run([*profiler, "post-commit"], cwd=repo.path)))
        # post-checkout: move HEAD without the hooks, then let the profiled hook bring the lake along.
        for target in (first, "main"):
            old = repo.head()
            repo.timed_git("SNAPVER_SKIP=1", "checkout", "-q", target)
            profiles["post-checkout"].append(
                json.loads(run([*profiler, "post-checkout", old, repo.head(), "1"], cwd=repo.path)))
            if repo.lake_at() != repo.head():
                repo.anomalies.append(f"profiled post-checkout to {target} left the lake at {repo.lake_at()[:10]}")
    return {"python_c_pass_ms": bare, "hook_direct_ms": direct, "importtime": imports,
            "importtime_python_c_pass": startup, "profiles": profiles}


# ------------------------------------------------------------------ one lake size
def bench_size(workdir: Path, size: int, repeat: int, diagnose: bool, registry: bool = False) -> dict:
    label = f"lake-{size // MiB}M" + ("-registry" if registry else "")
    image_size = int(size * 1.3) + 2 * 1024**3  # room for the data and Btrfs' metadata, sparse
    samples = {f"{op} ({mode})": [] for op in ("git commit", "git checkout") for mode in MODES}
    load = {"before": loadavg()}
    # linux.mount_of reads the whole mount table on every Workspace.open: the hook's cost
    # depends on how many mounts the host has (other jobs' test pools add hundreds).
    mounts = [sum(1 for _ in open("/proc/self/mountinfo"))]
    with btrfs_image(workdir, image_size, label) as mnt:
        path = workdir / f"{label}.repo"
        path.mkdir()
        repo = Repo(path, registry)
        try:
            run(["git", "init", "-q", "-b", "main", str(path)])
            lake = mnt / "lake"
            lake.mkdir()
            run([SNAPVER, "init", "--lake", str(lake)], cwd=path)  # also installs the hooks
            project = tomllib.loads((path / "snapver.toml").read_text())["project"]["id"]

            print(f"[{label}] writing {human(size)} of random data ...", flush=True)
            start = time.perf_counter()
            written = fill_lake(path, size)
            write_s = time.perf_counter() - start
            settle(workdir / f"{label}.img")  # write-back must not land inside a timed command
            total = sum(w["bytes"] for w in written.values())
            print(f"[{label}] wrote {human(total)} in {write_s:.1f} s", flush=True)

            if registry:
                with open(path / "snapver.toml", "a") as f:
                    f.write('\n[registry]\nmetrics = ["models/metrics.json"]\n')
                repo.prepare()
            repo.git("add", "snapver.toml")
            repo.git("commit", "-q", "-m", "data v0")  # the post-commit hook snapshots it
            first = repo.head()
            if not snapshotted(lake, project, first):
                raise RuntimeError("the post-commit hook took no snapshot: the hooks do not work here")

            # (a) commits. The mode order rotates each round: load from other
            # jobs on this shared machine falls on all three modes alike.
            for i in range(repeat):
                for mode in MODES[i % 3:] + MODES[:i % 3]:
                    repo.prepare()
                    samples[f"git commit ({mode})"].append(
                        repo.timed_git(mode, "commit", "-q", "--allow-empty", "-m", "x"))
                    if mode == "hooks" and not snapshotted(lake, project, repo.head()):
                        repo.anomalies.append(f"{label}: commit {repo.head()[:10]} with hooks has no snapshot")
            repo.timed_git("hooks", "commit", "-q", "--allow-empty", "-m", "last")  # main has a snapshot
            last = repo.head()

            # (b) checkouts between two snapshotted commits. The very first one
            # swaps out the volume whose freshly written files are still in the
            # page cache (see snapshot_checkout.py): one sample, kept apart.
            first_checkout = [repo.timed_git("hooks", "checkout", "-q", first),
                              repo.timed_git("hooks", "checkout", "-q", "main")]
            settle(workdir / f"{label}.img")
            for i in range(repeat):
                for mode in MODES[i % 3:] + MODES[:i % 3]:
                    for target, sha in ((first, first), ("main", last)):
                        samples[f"git checkout ({mode})"].append(repo.timed_git(mode, "checkout", "-q", target))
                        if mode == "hooks" and repo.lake_at() != sha:
                            repo.anomalies.append(f"{label}: checkout {target} with hooks left the lake "
                                                  f"at {repo.lake_at()[:10]}, not {sha[:10]}")
            load["after timing"] = loadavg()
            mounts.append(sum(1 for _ in open("/proc/self/mountinfo")))

            repo.set_hooks(True)
            hooks_run = {"git commit": {}, "git checkout": {}}
            for _ in range(5):
                for op, argvs in (("git commit", [("commit", "-q", "--allow-empty", "-m", "x")]),
                                  ("git checkout", [("checkout", "-q", first), ("checkout", "-q", "main")])):
                    for argv in argvs:
                        if argv[0] == "commit":
                            repo.prepare()
                        for name, runs in traced_hooks(repo, *argv).items():
                            hooks_run[op].setdefault(name, []).extend(runs)
            breakdown = python_breakdown(repo, first, repeat) if diagnose else None
            snapshot_count = sum(1 for _ in (lake / project / "snapshots").glob("*/*"))
            load["at end"] = loadavg()
        finally:
            # The hooks log what went wrong here (and only here): keep it before the repo goes.
            log = path / ".git" / "snapver" / "hook.log"
            hook_log = log.read_text()[-20000:] if log.exists() else ""
            shutil.rmtree(path, ignore_errors=True)  # the catalog is on the image: nothing holds it
    return {
        "label": label, "size": size, "registry": registry, "image_size": image_size,
        "written": written, "written_bytes": total,
        "written_files": sum(w["files"] for w in written.values()), "write_seconds": write_s,
        "commits_per_traced_op": {"git commit": 5, "git checkout": 10},
        "samples_ms": samples, "first_checkout_after_writing_ms": first_checkout,
        "hooks_run_ms": hooks_run, "breakdown": breakdown,
        "snapshots_at_end": snapshot_count, "loadavg": load, "mounts_on_host": mounts, "anomalies": repo.anomalies,
        "hook_log": hook_log,
    }


# ------------------------------------------------------------------ reporting
def med(values):
    return statistics.median(values) if values else float("nan")


def overhead_rows(sizes: list[dict]) -> list[tuple]:
    rows = []
    for op in ("git commit", "git checkout"):
        for base in ("no hooks", "SNAPVER_SKIP=1"):
            added = [med(s["samples_ms"][f"{op} (hooks)"]) - med(s["samples_ms"][f"{op} ({base})"]) for s in sizes]
            rows.append((op, f"hooks - {base}", added))
        shell = [med(s["samples_ms"][f"{op} (SNAPVER_SKIP=1)"]) - med(s["samples_ms"][f"{op} (no hooks)"])
                 for s in sizes]
        rows.append((op, "SNAPVER_SKIP=1 - no hooks (the shims' shell alone)", shell))
    return rows


def top_imports(runs: list[dict], startup: list[dict], n: int = 12) -> list[tuple]:
    """The heaviest imports of the hook path that plain `python -c pass` does not do:
    median cumulative ms over the runs, shallowest first so parents precede children."""
    base = set().union(*startup)
    names = {m for r in runs for m in r if m not in base}
    rows = [(m, med([r[m]["cum"] / 1000 for r in runs if m in r]),
             med([r[m]["self"] / 1000 for r in runs if m in r]), min(r[m]["depth"] for r in runs if m in r))
            for m in names]
    return sorted(rows, key=lambda r: -r[1])[:n]


def markdown(report: dict) -> str:
    sizes = report["sizes"]
    m = report["machine"]
    heads = " | ".join(f"{human(s['size'])} lake" for s in sizes)
    lines = [
        "# snapver: Git hook overhead on `git commit` and `git checkout` (Btrfs)",
        "",
        f"{report['date']}, `bench/hooks.py --sizes {report['args']['sizes']} --repeat {report['args']['repeat']}"
        + (" --registry`: `[registry] metrics = [\"models/metrics.json\"]`, and a ~5 MB pickled model "
           "(models/model.pkl) and the metrics rewritten before every commit (untimed, in every mode)"
           if report["args"].get("registry") else "`"),
        "",
        machine_line(m) + ".",
        "Load average (1, 5, 15 min; 2 CPUs shared with other jobs): "
        + "; ".join(f"{s['label']}: " + ", ".join(f"{k} {' '.join(v)}" for k, v in s["loadavg"].items())
                    for s in sizes) + ". Mounts on the host (before, after the timed rounds): "
        + "; ".join(f"{s['label']}: {', '.join(map(str, s['mounts_on_host']))}" for s in sizes) + ".",
        "Lake on a sparse Btrfs image file, loop-mounted `-o loop,noatime,user_subvol_rm_allowed`, a fresh one "
        "per size; repo made with `snapver init --lake` (hooks installed). The three modes are interleaved in a "
        "rotating order each round. `git checkout` samples are both directions (HEAD -> first commit -> main).",
        "",
        "Times in ms: median (p10-p90) over n samples.",
        "",
        f"| operation | {heads} |",
        "|" + " --- |" * (len(sizes) + 1),
    ]
    for op in sizes[0]["samples_ms"]:
        lines.append(f"| {op} | " + " | ".join(cell(s["samples_ms"][op]) for s in sizes) + " |")
    lines.append("| first checkout after writing the data (hooks; one each way, not in the medians) | "
                 + " | ".join(" / ".join(f"{x:.0f}" for x in s["first_checkout_after_writing_ms"]) for s in sizes)
                 + " |")
    bd = [s["breakdown"] for s in sizes]
    if all(bd):
        lines.append("| `python -c pass` (bare interpreter start-up) | "
                     + " | ".join(cell(b["python_c_pass_ms"]) for b in bd) + " |")
        lines.append("| `python -m snapver.githooks post-commit` run directly (a real snapshot) | "
                     + " | ".join(cell(b["hook_direct_ms"]) for b in bd) + " |")

    lines += ["", f"Overhead (ms) = median with hooks - median without; goal: at most {GOAL_MS} ms, the same "
              "at every size.", "", f"| operation | difference | {heads} | goal met |",
              "|" + " --- |" * (len(sizes) + 3)]
    verdicts = {}
    for op, what, added in overhead_rows(sizes):
        verdict = ""
        if what.startswith("hooks -"):
            verdict = "yes" if all(a <= GOAL_MS for a in added) else "**no**"
            verdicts.setdefault(op, []).append(verdict)
        lines.append(f"| {op} | {what} | " + " | ".join(f"{a:+.1f}" for a in added) + f" | {verdict} |")

    lines += ["", "Hooks Git ran per command, with hooks installed (GIT_TRACE2_EVENT, 5 commits and 10 checkouts "
              "per size; ms per run of that hook, median; runs per command):", "",
              f"| command | hook | {heads} |", "|" + " --- |" * (len(sizes) + 2)]
    per_op = {"git commit": 5, "git checkout": 10}
    for op in ("git commit", "git checkout"):
        names = sorted({h for s in sizes for h in s["hooks_run_ms"][op]})
        for h in names:
            cells = []
            for s in sizes:
                runs = s["hooks_run_ms"][op].get(h, [])
                cells.append(f"{med(runs):.1f} x {len(runs) / per_op[op]:g}" if runs else "-")
            lines.append(f"| {op} | {h} | " + " | ".join(cells) + " |")

    largest = sizes[-1]
    if largest["breakdown"]:
        b = largest["breakdown"]
        hook_total = med([sum(v["cum"] for k, v in r.items() if v["depth"] == 0) / 1000 for r in b["importtime"]])
        base_total = med([sum(v["cum"] for k, v in r.items() if v["depth"] == 0) / 1000
                          for r in b["importtime_python_c_pass"]])
        lines += ["", f"## The Python hook path ({largest['label']})", "",
                  f"`python -X importtime -m snapver.githooks post-commit`: all imports {hook_total:.1f} ms "
                  f"(median of 5), of which {base_total:.1f} ms are what bare `python -c pass` imports too (site, "
                  f"encodings, the venv's .pth files), so {hook_total - base_total:.1f} ms are the hook's own "
                  "imports. Heaviest of those (ms, median):", "",
                  "| module | cumulative | self | depth |", "| --- | --- | --- | --- |"]
        for mod, cum, self_, depth in top_imports(b["importtime"], b["importtime_python_c_pass"]):
            lines.append(f"| {mod} | {cum:.1f} | {self_:.1f} | {depth} |")
        site = {k: v for r in b["importtime_python_c_pass"][-1:] for k, v in r.items() if v["depth"] <= 1}
        lines += ["", "Start-up imports of bare `python -c pass` (ms, last run): "
                  + ", ".join(f"{k} {v['cum'] / 1000:.1f}" for k, v in sorted(site.items(), key=lambda kv: -kv[1]["cum"])[:6])
                  + "."]
        for hook, profs in b["profiles"].items():
            lines += ["", f"cProfile of the `{hook}` Python path (bench/hook_profile.py, in-process, "
                      f"{len(profs)} runs, medians in ms; cProfile inflates Python time, not subprocesses):", "",
                      "| wall | imports | subprocesses | sqlite3 | ioctl/flock | fsync | rest |",
                      "| --- | --- | --- | --- | --- | --- | --- |"]
            wall, imp, sub = (med([p[k] for p in profs]) for k in ("wall_ms", "imports_ms", "subprocess_ms"))
            sql, ioc, fsy = (med([p[k] for p in profs]) for k in ("sqlite_ms", "ioctl_ms", "fsync_ms"))
            lines.append(f"| {wall:.1f} | {imp:.1f} | {sub:.1f} | {sql:.1f} | {ioc:.1f} | {fsy:.1f} | "
                         f"{wall - imp - sub - sql - ioc - fsy:.1f} |")
            calls: dict[str, list[float]] = {}
            for p in profs:
                for c in p["subprocesses"]:
                    calls.setdefault(" ".join(c["argv"][:3]), []).append(c["ms"])
            lines += ["", "Subprocesses per run (count, median ms each): "
                      + "; ".join(f"`{a}` x {len(v) / len(profs):g}, "
                                  + (f"{med(v):.1f}" if all(x is not None for x in v) else "not waited for")
                                  for a, v in calls.items())
                      + ". Modules a hook has no use for, imported: "
                      + (", ".join(profs[-1]["unneeded_modules_imported"]) or "none") + "."]
            lines += ["", "Top snapver functions by cumulative time (last run): "
                      + "; ".join(f"`{f['function']}` {f['cum_ms']:.1f}" for f in profs[-1]["top_snapver_functions"][:8])
                      + "."]

    # The same complaint twenty times is one anomaly, counted.
    counted: dict[str, int] = {}
    for s in sizes:
        for a in s["anomalies"]:
            key = f"{s['label']}: {re.sub(r' -m [a-z]+ ', ' ', a)}"
            counted[key] = counted.get(key, 0) + 1
        if s["hook_log"]:
            errors = [line for line in s["hook_log"].splitlines() if line and not line[0].isspace()
                      and not line.startswith("Traceback")]
            last = s["hook_log"].strip().splitlines()[-1]
            counted[f"{s['label']}: .git/snapver/hook.log has {len(errors)} entries, the last error: `{last}`"] = 1
    anomalies = [f"{n} x {a}" if n > 1 else a for a, n in counted.items()]
    for op, v in verdicts.items():
        if "**no**" in v:
            anomalies.append(f"{op}: the hooks add more than {GOAL_MS} ms")
    if len(sizes) > 1:
        for op, what, added in overhead_rows(sizes):
            if what.startswith("hooks - no") and abs(added[-1] - added[0]) > 20:  # beyond the noise here
                anomalies.append(f"{op}: overhead differs between sizes ({added[0]:.0f} vs {added[-1]:.0f} ms)")
    lines += ["", "Data written per lake (random bytes, no holes): "
              + "; ".join(f"{human(s['size'])}: {s['written_files']:,} files, {s['written_bytes']:,} B "
                          f"in {s['write_seconds']:.0f} s" for s in sizes) + ".",
              "", "Anomalies: " + ("; ".join(anomalies) if anomalies else "none (every commit with hooks got "
                                   "its snapshot, every checkout with hooks moved the lake)."), ""]
    return "\n".join(lines)


# ------------------------------------------------------------------ main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="1G,8G", help="lake sizes, comma-separated (default 1G,8G)")
    parser.add_argument("--repeat", type=int, default=20, help="rounds per operation and mode (default 20)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR,
                        help="where the image files go; needs free space for the largest size")
    parser.add_argument("--registry", action="store_true",
                        help="a project with [registry] metrics and a ~5 MB pickled model rewritten before each commit")
    parser.add_argument("--no-diagnostics", action="store_true",
                        help="skip the Python start-up / importtime / cProfile breakdown")
    args = parser.parse_args()
    sizes = sorted(parse_size(s) for s in args.sizes.split(","))
    if args.repeat < 2:
        parser.error("--repeat must be at least 2")
    if not require_root("hooks.py"):
        return 2

    results = []
    with run_dir(args.workdir) as workdir:
        frozen = freeze_source(workdir / "src")
        for size in sizes:
            results.append(bench_size(workdir, size, args.repeat, not args.no_diagnostics, args.registry))
        digest = source_digest(frozen)

    report = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "args": {"sizes": args.sizes, "repeat": args.repeat, "registry": args.registry},
        # What ran is the copy taken at the start (freeze_source), whatever the tree holds by now.
        "machine": {**machine(), "snapver_source_sha256": digest},
        "source_changed": source_digest() != digest,
        "summary": {s["label"]: {op: summary(v) for op, v in s["samples_ms"].items()} for s in results},
        "sizes": results,
    }
    write_results("hooks-registry" if args.registry else "hooks", markdown(report), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
