"""The lineage picture of the README's cascade section, made the way a user would make it.

The example graph of tests/test_cascade.py (6 derived volumes over 3 levels, each built by a
small training script) on a loop-mounted Btrfs image, through the `snapver` CLI and Git's
hooks: built once, then a new pretrained model is committed in `models`; `snapver lineage
--dot` is drawn by graphviz `dot` before and after `snapver cascade -j 2`:

    docs/cascade-before.png, docs/cascade-after.png (and the text of `snapver lineage`, printed)

Run as root, with graphviz installed: `cd bench && python cascade_picture.py`.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

from common import DEFAULT_WORKDIR, btrfs_image, require_root, run_dir

DOCS = Path(__file__).resolve().parents[1] / "docs"
GIT_ENV = {"GIT_AUTHOR_NAME": "Ada", "GIT_AUTHOR_EMAIL": "ada@example.com", "GIT_COMMITTER_NAME": "Ada",
           "GIT_COMMITTER_EMAIL": "ada@example.com", "GIT_CONFIG_NOSYSTEM": "1"}
TRAIN = '''\
import os, sys
from pathlib import Path

name, scale = sys.argv[1], float(sys.argv[2])
total = 0.0
for key in sorted(k for k in os.environ if k.startswith("SNAPVER_INPUT_") and not k.endswith("_SNAPSHOT")):
    root = Path(os.environ[key])
    files = [root / "weights.txt"] if (root / "weights.txt").exists() else sorted(root.rglob("*.txt"))
    total += sum(float(x) for f in files for x in f.read_text().split())
Path(os.environ["SNAPVER_OUTPUT"], "weights.txt").write_text(f"{total * scale:.6f}\\n")
print(f"trained {name}: {total * scale:.6f}")
'''
TOML = """
[build.ft-b]
run = "python3 scripts/train.py ft-b 3"
inputs = ["base@HEAD"]

[build.dist-a]
run = "python3 scripts/train.py dist-a 0.5"
inputs = ["ft-a@HEAD"]

[build.dist-b]
run = "python3 scripts/train.py dist-b 0.25"
inputs = ["ft-b@HEAD", "tok@HEAD"]
"""


def sh(repo: Path, *argv: str) -> str:
    done = subprocess.run(list(argv), cwd=repo, env={**os.environ, **GIT_ENV}, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: {done.stderr}{done.stdout}")
    return done.stdout


def snapver(repo: Path, *args: str) -> str:
    return sh(repo, sys.executable, "-m", "snapver", *args)


def commit(repo: Path, message: str, *paths: str) -> None:
    if paths:
        sh(repo, "git", "add", *paths)
    sh(repo, "git", "commit", "-q", "--allow-empty", "-m", message)  # the post-commit hook snapshots


def draw(repo: Path, name: str) -> Path:
    dot = repo.parent / f"{name}.dot"
    dot.write_text(snapver(repo, "lineage", "--dot"))
    out = DOCS / f"{name}.png"
    sh(repo, "dot", "-Tpng", "-Gdpi=80", "-o", str(out), str(dot))
    print(f"--- {name}: snapver lineage\n{snapver(repo, 'lineage')}")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workdir", type=Path, default=DEFAULT_WORKDIR)
    args = parser.parse_args()
    if not require_root("cascade_picture.py"):
        return 2
    with run_dir(args.workdir) as workdir, btrfs_image(workdir, 2 * 1024**3, "picture") as mnt:
        repo = workdir / "repo"
        repo.mkdir()
        sh(repo, "git", "init", "-q", "-b", "main")
        (mnt / "lake").mkdir()
        snapver(repo, "init", "--lake", str(mnt / "lake"))
        (repo / "scripts").mkdir()
        (repo / "scripts" / "train.py").write_text(TRAIN)
        (repo / "data" / "train.txt").write_text("1 2 3\n")
        (repo / "models" / "pretrained.txt").write_text("10\n")
        commit(repo, "data, a pretrained model, the training script", "snapver.toml", "scripts/train.py")
        snapver(repo, "derive", "models@HEAD", "base", "--run", "python3 scripts/train.py base 2",
                "--input", "data@HEAD", "--input", "models@HEAD")
        snapver(repo, "derive", "data@HEAD", "tok", "--run", "python3 scripts/train.py tok 1")
        commit(repo, "base and tok", "snapver.toml")
        snapver(repo, "derive", "base@HEAD", "ft-a", "--run", "python3 scripts/train.py ft-a 1",
                "--input", "base@HEAD", "--input", "tok@HEAD")
        snapver(repo, "derive", "base@HEAD", "ft-b")
        commit(repo, "fine-tunes", "snapver.toml")
        snapver(repo, "derive", "ft-a@HEAD", "dist-a")
        snapver(repo, "derive", "ft-b@HEAD", "dist-b")
        with open(repo / "snapver.toml", "a") as f:
            f.write(TOML)
        commit(repo, "distillations", "snapver.toml")
        print(snapver(repo, "cascade", "-j", "2"))
        commit(repo, "built")
        (repo / "models" / "pretrained.txt").write_text("20\n")
        commit(repo, "a new pretrained model")
        before = draw(repo, "cascade-before")
        print(snapver(repo, "cascade", "-j", "2"))
        after = draw(repo, "cascade-after")
        print(f"wrote {before} and {after}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
