"""The cascade's own overhead per node: everything `snapver cascade` does but the user's command.

The example graph of tests/test_cascade.py (base and tok from the lake's volumes, two
fine-tunes, two distillations: 6 nodes over 3 levels), each recipe a one-line `sh -c` that
writes a time stamp into its output (a build that changes nothing would stop the cascade
there: its build point holds the same data, so nothing downstream is stale), on a
loop-mounted Btrfs lake filled with real random data (common.fill_lake) of each size. Each
round writes one small file into `models` and commits (snapshot, as the hook does); then:

- cascade, 5 stale nodes: per node rebuilt (tok reads only data and stays up to date);
- cascade, nothing stale: per node checked (inputs resolved and compared);
- that command alone, spawned the way a build spawns it: the user's part, for scale.

Run as root: `cd bench && python cascade.py --sizes 64M,1G --repeat 5` (results in results/cascade.md).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

from snapver import ops  # noqa: F401  (plugs the features in, as every entry point does)
from snapver import cascade, recipes, registry
from snapver.lake import Workspace, parse_size

from common import (DEFAULT_WORKDIR, btrfs_image, cell, fill_lake, human, machine, require_root, run, run_dir,
                    settle, timed, write_results)

COMMAND = 'sh -c "date +%s%N > \\"$SNAPVER_OUTPUT/stamp\\""'
GRAPH = [  # (volume, source of its derive, inputs), by level
    [("base", "models@HEAD", ["data@HEAD", "models@HEAD"]), ("tok", "data@HEAD", ["data@HEAD"])],
    [("ft-a", "base@HEAD", ["base@HEAD", "tok@HEAD"]), ("ft-b", "base@HEAD", ["base@HEAD"])],
    [("dist-a", "ft-a@HEAD", ["ft-a@HEAD"]), ("dist-b", "ft-b@HEAD", ["ft-b@HEAD", "tok@HEAD"])],
]


def commit(ws: Workspace, repo: Path, message: str) -> None:
    run(["git", "add", "-A", "."], cwd=repo)
    run(["git", "commit", "-q", "--allow-empty", "-m", message], cwd=repo)
    ws.snapshot()


def bench_size(workdir: Path, size: int, repeat: int) -> dict:
    label = f"lake-{size // 1024**2}M"
    samples: dict[str, list[float]] = {"rebuilt, per node": [], "up to date, per node": [], "the command alone": []}
    with btrfs_image(workdir, int(size * 1.3) + 2 * 1024**3, label) as mnt:
        repo = workdir / f"{label}.repo"
        repo.mkdir()
        run(["git", "init", "-q", "-b", "main", str(repo)])
        (mnt / "lake").mkdir()
        ws = Workspace.init(repo, lake=str(mnt / "lake"))
        try:
            print(f"[{label}] writing {human(size)} ...", flush=True)
            fill_lake(repo, size)
            settle(workdir / f"{label}.img")
            commit(ws, repo, "data")
            for level in GRAPH:
                for volume, source, inputs in level:
                    registry.derive(ws, source, volume)
                    recipes.record(ws, recipes.check(volume, COMMAND, inputs, "derive --run"))
                ws.catalog.close()
                ws = Workspace.open(repo)  # snapver.toml names the new volumes
                commit(ws, repo, "derived")
            cascade.cascade(ws)  # the first builds
            commit(ws, repo, "built")
            for i in range(repeat):
                (repo / "models" / "round.txt").write_text(f"{i}\n")
                commit(ws, repo, f"round {i}")
                ms, nodes = timed(cascade.cascade, ws)
                built = [n for n in nodes if n.action == "built"]
                assert len(built) == 5, [(n.volume, n.action, n.reason) for n in nodes]
                samples["rebuilt, per node"].append(ms / len(built))
                ms, nodes = timed(cascade.cascade, ws)
                assert all(n.action == "up-to-date" for n in nodes), [(n.volume, n.action) for n in nodes]
                samples["up to date, per node"].append(ms / len(nodes))
                argv = recipes.argv_of(COMMAND, "x")
                ms, _ = timed(subprocess.run, argv, cwd=repo, env={"SNAPVER_OUTPUT": str(workdir)})
                samples["the command alone"].append(ms)
                print(f"[{label}] round {i}: {samples['rebuilt, per node'][-1]:.0f} ms per rebuilt node", flush=True)
        finally:
            ws.catalog.close()
    return {"size": size, "label": label, "samples_ms": samples}


def markdown(report: dict) -> str:
    lines = [f"# cascade overhead per node ({report['date']})", "",
             "Btrfs, 6-node graph, recipes `sh -c 'date > $SNAPVER_OUTPUT/stamp'`; ms, median (p10-p90).", "",
             "| lake | " + " | ".join(report["sizes"][0]["samples_ms"]) + " |",
             "|---|" + "---|" * len(report["sizes"][0]["samples_ms"])]
    for s in report["sizes"]:
        lines.append(f"| {human(s['size'])} | " + " | ".join(cell(v) for v in s["samples_ms"].values()) + " |")
    return "\n".join(lines + ["", f"machine: {report['machine'].get('cpu', '')}", ""])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", default="64M,1G")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    args = parser.parse_args()
    if not require_root("cascade.py"):
        return 2
    sizes = sorted(parse_size(s) for s in args.sizes.split(","))
    with run_dir(args.workdir) as workdir:
        results = [bench_size(workdir, size, args.repeat) for size in sizes]
    report = {"date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
              "args": vars(args) | {"workdir": str(args.workdir)}, "machine": machine(), "sizes": results}
    write_results("cascade", markdown(report), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
