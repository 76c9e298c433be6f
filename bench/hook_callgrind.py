#!/usr/bin/env python3
"""Instructions (callgrind) of the post-commit hook on a project with [registry] and a changed
model, for two versions of snapver's code: independent of the machine's load, which the timed
benchmarks (hooks.py) are not.

Each SOURCE is a folder holding snapver/, hooks/ and systemd/, as `git archive REV snapver hooks
systemd | tar -x -C SOURCE` makes it. For each: a repository on a fresh loop-mounted Btrfs image,
`[registry] metrics = ["models/metrics.json"]`, then COMMITS commits made with SNAPVER_SKIP=1
(a ~5 MB pickled model rewritten before each but the last, which leaves it unchanged) and
`python -m snapver.githooks post-commit` run under callgrind after each, as the shim runs it.
The modules are compiled first (as freeze_source does: no hook pays for compiling). The
scan process a hook starts is not started (SNAPVER_TEST_NO_SCAN_PROCESS=1): it runs after the
commit; `--scan` measures it once at the end, for the version that has it. Needs root and valgrind.

    .venv/bin/python bench/hook_callgrind.py /tmp/old /tmp/new [--commits 3] [--scan]
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import re
import subprocess
import sys
from pathlib import Path

from common import DEFAULT_WORKDIR, GIT_ENV, btrfs_image, require_root, run_dir
from hooks import write_model


def instructions(argv: list[str], out: Path, cwd: Path, env: dict) -> int:
    subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *argv], cwd=cwd, env=env,
                   check=True, capture_output=True, stdin=subprocess.DEVNULL)
    return next(int(m.group(1)) for line in out.read_text().splitlines()
                if (m := re.match(r"(?:summary|totals): (\d+)", line)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("sources", nargs="+", type=Path)
    parser.add_argument("--commits", type=int, default=3)
    parser.add_argument("--scan", action="store_true", help="also the scan-pending process, once, at the end")
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    args = parser.parse_args()
    if not require_root("hook_callgrind.py"):
        return 2
    results: dict[str, dict] = {}
    with run_dir(args.workdir) as wd, btrfs_image(wd, 4 * 1024**3, "callgrind") as mnt:
        for n, src in enumerate(args.sources):
            compileall.compile_dir(src / "snapver", quiet=1)
            env = {**GIT_ENV, "PYTHONPATH": str(src), "SNAPVER_TEST_NO_SCAN_PROCESS": "1"}
            env.pop("PYTHONDONTWRITEBYTECODE", None)
            repo, lake = wd / f"repo-{n}", mnt / f"lake-{n}"
            repo.mkdir()
            lake.mkdir()
            subprocess.run(["git", "init", "-q", "-b", "main", str(repo)], check=True, env=env)
            subprocess.run([sys.executable, "-m", "snapver", "init", "--lake", str(lake)], cwd=repo, env=env,
                           check=True, capture_output=True)
            with open(repo / "snapver.toml", "a") as f:
                f.write('\n[registry]\nmetrics = ["models/metrics.json"]\n')
            subprocess.run(["git", "add", "snapver.toml"], cwd=repo, env=env, check=True)
            subprocess.run(["git", "commit", "-q", "-m", "v0"], cwd=repo, env=env, check=True, capture_output=True)
            runs = []
            for i in range(1, args.commits + 1):
                changed = i < args.commits
                if changed:
                    write_model(repo / "models" / "model.pkl", i)
                (repo / "models" / "metrics.json").write_text(json.dumps({"accuracy": i / 10}))
                subprocess.run(["git", "commit", "-q", "--allow-empty", "-m", f"c{i}"], cwd=repo,
                               env={**env, "SNAPVER_SKIP": "1"}, check=True)
                os.sync()
                total = instructions([sys.executable, "-m", "snapver.githooks", "post-commit"],
                                     wd / f"cg-{n}-{i}.out", repo, env)
                runs.append({"model_changed": changed, "instructions": total})
                print(f"{src}: commit {i} ({'model changed' if changed else 'model unchanged'}): "
                      f"{total / 1e6:.0f} M instructions", flush=True)
            results[str(src)] = {"post_commit": runs}
            if args.scan and "scan-pending" in (src / "snapver" / "githooks.py").read_text():
                total = instructions([sys.executable, "-m", "snapver.githooks", "scan-pending"],
                                     wd / f"cg-{n}-scan.out", repo, env)
                results[str(src)]["scan_pending"] = total
                print(f"{src}: scan-pending after the commits: {total / 1e6:.0f} M instructions", flush=True)
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
