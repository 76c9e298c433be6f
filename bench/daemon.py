#!/usr/bin/env python3
"""Benchmark: what snapverd costs while it watches a lake of 100k files.

On a fresh loop-mounted Btrfs image: a Git repo with a lake (`snapver init
--lake`), 100,000 small files of random data in data/ (100 folders of 1,000
files, 4 KiB each), committed (the hook snapshots it). Then, once with
inotify (`events` mode) and once with `inotify_budget = 0` (`polling` mode),
`snapver daemon --config <tmp config>` runs as a real process (debounce 2 s,
poll_interval 5 s, gc off, its socket in a temp dir) and we measure:

- start-up: from exec to the first answer to `daemon-status` on its socket
  (Python start-up, imports, walking the volumes to set up inotify watches);
  several starts, each stopped with SIGTERM, which must exit 0;
- idle CPU over --idle seconds (utime+stime from /proc/PID/stat, as % of one
  core; its children's too: the git it runs to follow HEAD), in windows so the
  spread shows; no wip snapshot may appear while nothing is written;
- memory: VmRSS and VmHWM (/proc/PID/status) after start-up, after idling
  and after the latency rounds;
- change-to-snapshot latency: write one file, list the snapshot folder of
  data/ until a new wip snapshot appears; median - debounce is the daemon's
  own latency (the tick, polling for changes, taking the snapshot).

It prints a Markdown table and writes it, with the raw samples as JSON, to
bench/results/daemon.*. Needs root (mkfs, loop mount). Daemons are stopped and
the image unmounted and deleted, also on Ctrl-C. Never part of the test suite.

    .venv/bin/python bench/daemon.py [--files 100000] [--idle 60] [--rounds 10]
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

from snapver import client

from common import (DEFAULT_WORKDIR, GIT_ENV, SNAPVER, btrfs_image, cell, freeze_source, human, loadavg,
                    machine, machine_line, require_root, run, run_dir, settle, source_digest, summary,
                    write_results)

DEBOUNCE = 2.0  # seconds, as the issue asks
POLL_INTERVAL = 5.0
FILE_SIZE = 4096
DIRS = 100
CLOCK_TICK = os.sysconf("SC_CLK_TCK")


def write_small_files(data: Path, count: int) -> dict:
    per_dir = -(-count // DIRS)
    for i in range(count):
        folder = data / f"dir-{i // per_dir:03d}"
        if i % per_dir == 0:
            folder.mkdir()
        with open(folder / f"file-{i:06d}.bin", "wb") as f:
            f.write(os.urandom(FILE_SIZE))  # random: nothing compresses or dedups
    return {"files": count, "dirs": -(-count // per_dir), "bytes": count * FILE_SIZE}


# ------------------------------------------------------------------ the daemon as a process
class Daemon:
    """`snapver daemon --config FILE`, started the way systemd would (minus systemd)."""

    def __init__(self, workdir: Path, repo: Path, mode: str, name: str, settings: dict[str, str] | None = None):
        """settings: durations of snapverd.toml set otherwise than here (scale.py: reap_after)."""
        self.dir = workdir / f"snapverd-{name}"
        self.dir.mkdir()
        self.socket = self.dir / "snapverd.sock"
        self.config = self.dir / "snapverd.toml"
        self.log = self.dir / "snapverd.log"
        durations = {"debounce": f"{int(DEBOUNCE)}s", "max_delay": "10m", "poll_interval": f"{int(POLL_INTERVAL)}s",
                     "gc_interval": "off", **(settings or {})}
        lines = [f'socket = "{self.socket}"', *(f'{key} = "{value}"' for key, value in durations.items())]
        if mode == "polling":
            lines.append("inotify_budget = 0")  # no watches at all: every volume is polled
        lines += ["[[workspace]]", f'path = "{repo}"']
        self.config.write_text("\n".join(lines) + "\n")
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 120) -> float:
        """Start it; seconds until its socket answers daemon-status."""
        start = time.perf_counter()
        self.proc = subprocess.Popen(
            [SNAPVER, "daemon", "--config", str(self.config)],
            env={**GIT_ENV, "SNAPVER_SOCKET": str(self.socket)},
            stdout=open(self.log, "ab"), stderr=subprocess.STDOUT,
        )
        while time.perf_counter() - start < timeout:
            if self.proc.poll() is not None:
                raise RuntimeError(f"snapverd exited with {self.proc.returncode}: {self.log.read_text()[-2000:]}")
            try:
                self.status()
                return time.perf_counter() - start
            except (client.Unavailable, OSError):
                time.sleep(0.01)
        raise RuntimeError(f"snapverd did not answer within {timeout} s: {self.log.read_text()[-2000:]}")

    def status(self) -> list[dict]:
        return client.request({"op": "daemon-status"}, path=self.socket, timeout=5)

    def stop(self) -> tuple[int | None, float]:
        """SIGTERM, as systemd stops it: (exit status, seconds to exit). Killed if it hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return (self.proc.returncode if self.proc else None), 0.0
        start = time.perf_counter()
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return self.proc.returncode, time.perf_counter() - start

    def cpu_seconds(self) -> tuple[float, float]:
        """(its own user+system CPU, that of the children it waited for), in seconds."""
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        # After the ")" of the command name: field 3 is fields[0]; utime 14, stime 15, cutime 16, cstime 17.
        utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
        return (utime + stime) / CLOCK_TICK, (cutime + cstime) / CLOCK_TICK

    def memory(self) -> dict:
        status = Path(f"/proc/{self.proc.pid}/status").read_text().splitlines()
        return {k: int(v.split()[0]) for k, v in (line.split(":", 1) for line in status)
                if k in ("VmRSS", "VmHWM", "Threads")}


@contextmanager
def daemon(workdir: Path, repo: Path, mode: str, name: str, settings: dict[str, str] | None = None):
    d = Daemon(workdir, repo, mode, name, settings)
    try:
        yield d
    finally:
        d.stop()  # whatever happened, no daemon outlives the benchmark


def wips(snapshots: Path) -> set[str]:
    # Listing the folder is cheaper and quicker to see than `snapver log --all --json`.
    return {name for name in os.listdir(snapshots) if "." in name}


# ------------------------------------------------------------------ one mode
def bench_mode(workdir: Path, repo: Path, snapshots: Path, mode: str, starts: int, idle: float,
               windows: int, rounds: int) -> dict:
    result = {"mode": mode, "startup_s": [], "stop_s": [], "exit_codes": [], "anomalies": []}
    # Start-up: several starts; each one is stopped, the last one stays for the rest.
    for i in range(starts):
        with daemon(workdir, repo, mode, f"{mode}-{i}") as d:
            result["startup_s"].append(d.start())
            watched = {v["mode"] for w in d.status() for v in w["volumes"].values()}
            if watched != {mode}:
                result["anomalies"].append(f"{mode}: start {i} watches in {sorted(watched)} mode")
            if i < starts - 1:
                code, secs = d.stop()
                result["exit_codes"].append(code)
                result["stop_s"].append(secs)
                continue
            result["memory_after_start"] = d.memory()

            # Idle: nothing writes. Windows show whether the cost is steady or comes in bursts.
            before = wips(snapshots)
            time.sleep(2)  # the first poll and the start-up's own work are over
            cpu = [d.cpu_seconds()]
            for _ in range(windows):
                time.sleep(idle / windows)
                cpu.append(d.cpu_seconds())
            result["idle_seconds"] = idle
            result["idle_cpu_percent"] = 100 * (cpu[-1][0] - cpu[0][0]) / idle
            result["idle_cpu_children_percent"] = 100 * (cpu[-1][1] - cpu[0][1]) / idle
            result["idle_cpu_windows_percent"] = [100 * (b[0] + b[1] - a[0] - a[1]) / (idle / windows)
                                                  for a, b in zip(cpu, cpu[1:])]
            result["memory_after_idle"] = d.memory()
            if wips(snapshots) != before:
                result["anomalies"].append(f"{mode}: a wip snapshot appeared while nothing was written")

            # Change-to-snapshot latency.
            latencies = []
            for r in range(rounds):
                before = wips(snapshots)
                path = repo / "data" / "dir-000" / f"latency-{mode}-{r}.bin"
                written = time.perf_counter()
                with open(path, "wb") as f:
                    f.write(os.urandom(FILE_SIZE))
                deadline = written + DEBOUNCE + POLL_INTERVAL + 30
                while time.perf_counter() < deadline and wips(snapshots) == before:
                    time.sleep(0.02)
                new = wips(snapshots) - before
                if not new:
                    result["anomalies"].append(f"{mode}: round {r}: no wip snapshot within 30 s")
                    continue
                latencies.append(time.perf_counter() - written)
                if len(new) > 1:
                    result["anomalies"].append(f"{mode}: round {r}: {len(new)} wip snapshots for one write")
                # A pause, so the next write is a burst of its own and not part of this one's tail.
                time.sleep(1 + (r % 3) * 0.37)  # staggered: in polling mode rounds fall at varied poll phases
            result["latency_s"] = latencies
            result["memory_after_rounds"] = d.memory()
            code, secs = d.stop()
            result["exit_codes"].append(code)
            result["stop_s"].append(secs)
    if any(c != 0 for c in result["exit_codes"]):
        result["anomalies"].append(f"{mode}: exit status on SIGTERM {result['exit_codes']}, not all 0")
    return result


# ------------------------------------------------------------------ reporting
def markdown(report: dict) -> str:
    modes = report["modes"]
    a = report["args"]
    lines = [
        "# snapver: snapverd costs on a lake of 100k files (Btrfs)",
        "",
        f"{report['date']}, `bench/daemon.py --files {a['files']} --idle {a['idle']:g} --rounds {a['rounds']} "
        f"--starts {a['starts']}`",
        "",
        machine_line(report["machine"]) + ".",
        "Load average (1, 5, 15 min; 2 CPUs shared with other jobs): "
        + "; ".join(f"{k} {' '.join(v)}" for k, v in report["loadavg"].items()) + ".",
        f"Lake: {report['data']['files']:,} files of {FILE_SIZE} B random data in {report['data']['dirs']} "
        f"folders of data/ ({human(report['data']['bytes'])}, written in {report['write_seconds']:.0f} s), "
        "committed and snapshotted, on a sparse loop-mounted Btrfs image. "
        f"Daemon config: debounce {DEBOUNCE:g}s, poll_interval {POLL_INTERVAL:g}s, gc off; "
        "`polling` is `inotify_budget = 0`.",
        "",
        "| measure | " + " | ".join(m["mode"] for m in modes) + " |",
        "|" + " --- |" * (len(modes) + 1),
        "| start-up until the socket answers (s) | " + " | ".join(cell(m["startup_s"], 2) for m in modes) + " |",
        f"| idle CPU, daemon (% of one core over {a['idle']:g} s) | "
        + " | ".join(f"{m['idle_cpu_percent']:.2f}" for m in modes) + " |",
        "| idle CPU, its child processes (git) (%) | "
        + " | ".join(f"{m['idle_cpu_children_percent']:.2f}" for m in modes) + " |",
        f"| idle CPU per {a['idle'] / a['windows']:g} s window, daemon + children (min-max %) | "
        + " | ".join(f"{min(m['idle_cpu_windows_percent']):.2f}-{max(m['idle_cpu_windows_percent']):.2f}"
                     for m in modes) + " |",
    ]
    for when in ("after_start", "after_idle", "after_rounds"):
        lines.append(f"| VmRSS / VmHWM {when.replace('_', ' ')} (MiB) | "
                     + " | ".join(f"{m['memory_' + when]['VmRSS'] / 1024:.1f} / {m['memory_' + when]['VmHWM'] / 1024:.1f}"
                                  for m in modes) + " |")
    lines += [
        "| threads | " + " | ".join(str(m["memory_after_rounds"]["Threads"]) for m in modes) + " |",
        "| write -> new wip snapshot visible (s) | " + " | ".join(cell(m["latency_s"], 2) for m in modes) + " |",
        f"| the daemon's own latency: median - debounce ({DEBOUNCE:g} s) (s) | "
        + " | ".join(f"{summary(m['latency_s'])['median'] - DEBOUNCE:.2f}" for m in modes) + " |",
        "| stop on SIGTERM (s) | " + " | ".join(cell(m["stop_s"], 2) for m in modes) + " |",
        "| exit status on SIGTERM | " + " | ".join(", ".join(map(str, m["exit_codes"])) for m in modes) + " |",
    ]
    anomalies = [x for m in modes for x in m["anomalies"]]
    lines += ["", "Anomalies: " + ("; ".join(anomalies) if anomalies else
                                    "none (no wip while idle, one wip per write, every exit status 0)."), ""]
    return "\n".join(lines)


# ------------------------------------------------------------------ main
def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--files", type=int, default=100_000, help="small files in data/ (default 100000)")
    parser.add_argument("--idle", type=float, default=60, help="seconds of idle CPU measurement (default 60)")
    parser.add_argument("--windows", type=int, default=6, help="idle windows, for the spread (default 6)")
    parser.add_argument("--rounds", type=int, default=10, help="latency rounds per mode (default 10)")
    parser.add_argument("--starts", type=int, default=3, help="daemon starts per mode (default 3)")
    parser.add_argument("--modes", default="events,polling", help="events, polling or both (default)")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR, help="where the image file goes")
    args = parser.parse_args()
    if args.starts < 1 or args.rounds < 2:
        parser.error("--starts must be at least 1 and --rounds at least 2")
    if not require_root("daemon.py"):
        return 2

    load = {"before": loadavg()}
    with run_dir(args.workdir) as workdir:
        frozen = freeze_source(workdir / "src")
        image_size = args.files * FILE_SIZE * 3 + 2 * 1024**3  # data, Btrfs metadata, sparse
        with btrfs_image(workdir, image_size, "daemon") as mnt:
            repo = workdir / "repo"
            repo.mkdir()
            try:
                run(["git", "init", "-q", "-b", "main", str(repo)])
                lake = mnt / "lake"
                lake.mkdir()
                run([SNAPVER, "init", "--lake", str(lake)], cwd=repo)
                project = tomllib.loads((repo / "snapver.toml").read_text())["project"]["id"]
                print(f"writing {args.files:,} files of {FILE_SIZE} B ...", flush=True)
                start = time.perf_counter()
                data = write_small_files(repo / "data", args.files)
                write_seconds = time.perf_counter() - start
                settle(workdir / "daemon.img")
                run(["git", "add", "snapver.toml"], cwd=repo)
                run(["git", "commit", "-q", "-m", "100k files"], cwd=repo)  # the hook snapshots it
                modes = []
                for mode in args.modes.split(","):
                    print(f"[{mode}] measuring ...", flush=True)
                    load[f"before {mode}"] = loadavg()
                    modes.append(bench_mode(workdir, repo, lake / project / "snapshots" / "data", mode,
                                            args.starts, args.idle, args.windows, args.rounds))
                load["at end"] = loadavg()
            finally:
                shutil.rmtree(repo, ignore_errors=True)
        digest = source_digest(frozen)

    report = {
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "args": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {**machine(), "snapver_source_sha256": digest},
        "loadavg": load,
        "data": data,
        "write_seconds": write_seconds,
        "modes": modes,
    }
    write_results("daemon", markdown(report), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
