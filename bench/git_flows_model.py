"""The figure run of the model-based test of Git flows (tests/test_git_flows_model.py).

Runs the test on Btrfs (and, with --zfs, on zfs-fuse) with N sequences, then prints and
keeps its figures: sequences, steps, snapshots and wips checked, failures per invariant,
seconds. The README's Safety table quotes the 5,000-sequence run. As root (the tests make
Btrfs images and zfs-fuse pools; these machines have no sudo, root runs it directly), after
`bash scripts/test.sh tests/test_suite_rules.py -q` made .venv. zfs-fuse deadlocks when two
test sessions use it at once, so the --zfs run goes under the lock file that every zfs-fuse
user of the machine takes (here /work/scratch/zfs.lock):

    .venv/bin/python bench/git_flows_model.py --examples 5000
    flock /work/scratch/zfs.lock .venv/bin/python bench/git_flows_model.py --examples 100 --steps 12 --zfs

Results: bench/results/git_flows_model.json (one entry per run, appended).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=100, help="sequences (default 100, as CI)")
    parser.add_argument("--steps", type=int, default=10, help="steps per sequence (default 10)")
    parser.add_argument("--zfs", action="store_true", help="also run the zfs-fuse variant")
    parser.add_argument("--seed", type=int, help="replay a run")
    args = parser.parse_args()

    runs = []
    for backend in ["btrfs"] + (["zfs"] if args.zfs else []):
        summary = Path(tempfile.mkdtemp(prefix="snapver-model-bench-")) / "summary.json"
        env = {**os.environ, "SNAPVER_MODEL_EXAMPLES": str(args.examples),
               "SNAPVER_MODEL_ZFS_EXAMPLES": str(args.examples), "SNAPVER_MODEL_STEPS": str(args.steps),
               "SNAPVER_MODEL_SUMMARY": str(summary)}
        if args.seed is not None:
            env["SNAPVER_MODEL_SEED"] = str(args.seed)
        started = time.monotonic()
        done = subprocess.run([str(ROOT / "scripts" / "test.sh"), "tests/test_git_flows_model.py",
                               "-q", "-p", "no:cacheprovider", "-k", backend], cwd=ROOT, env=env)
        figures = json.loads(summary.read_text()) if summary.exists() else {}
        figures.update(backend=backend, passed=done.returncode == 0, wall_seconds=round(time.monotonic() - started, 1),
                       machine=platform.node(), when=time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()))
        runs.append(figures)
        print(json.dumps(figures, indent=2))

    out = HERE / "results" / "git_flows_model.json"
    history = json.loads(out.read_text()) if out.exists() else []
    out.write_text(json.dumps(history + runs, indent=2) + "\n")
    return 0 if all(r["passed"] for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
