#!/usr/bin/env bash
# The main job on the embedded default: a Git repo whose data, models and logs live in a
# loop-mounted Btrfs image that snapver makes; train, commit, go back in time, restore.
set -euo pipefail
here=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
# SNAPVER_DEMO_SETUP=0: the suite, which has installed everything already, runs the demo.
[ "${SNAPVER_DEMO_SETUP:-1}" = 0 ] || source "$here/scripts/setup.sh"
export PATH="$here/.venv/bin:$PATH"
demo=${SNAPVER_DEMO_DIR:-/var/tmp/snapver-demo}

# Start clean: a previous demo's image may still be mounted.
if mountpoint -q "$demo/lake"; then umount "$demo/lake"; fi
rm -rf "$demo" && mkdir -p "$demo" && cd "$demo"
step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
run() { printf '$ %s\n' "$*"; "$@"; }

step "A Git repository with a training script"
git init -q -b main repo && cd repo
git config user.name "Demo User" && git config user.email demo@example.com
cp "$here/examples/train.py" .
run snapver init --image "$demo/lake.img" --size 2G
# The model file's numbers (loss, w, b, epochs) become each commit's metrics: find, compare, ui.
printf '\n[registry]\nmetrics = ["models/model.json"]\n' >> snapver.toml
run git add train.py snapver.toml
run git commit -q -m "training code"     # the post-commit hook snapshots every volume

step "Version 1: a quick model (5 epochs)"
python3 -c 'import random; random.seed(1); print("\n".join(f"{x/200},{3*x/200+2+random.gauss(0,.3):.3f}" for x in range(2000)))' > data/train.csv
run python3 train.py 5
run git commit -q --allow-empty -m "model v1: 5 epochs"
v1=$(git rev-parse HEAD)

step "Version 2: trained longer (300 epochs)"
run python3 train.py 300
run git commit -q --allow-empty -m "model v2: 300 epochs"
run snapver log

step "Back to version 1: the old model comes back with the old commit"
run git checkout -q "$v1"               # the hooks bring the lake along
run cat models/model.json
run git checkout -q main
run cat models/model.json

step "Unsaved work is never lost: a checkout keeps it as a wip snapshot first"
run python3 train.py 50
run git checkout -q "$v1"
run snapver log --all
run git checkout -q main

step "An accident: the model is deleted"
run rm models/model.json
run snapver status
run snapver restore HEAD models/model.json
run cat models/model.json
run snapver diff "$v1" main

step "A release, and a fine-tune derived from the released model"
run snapver release prod main -m "serving"
run snapver derive models@release:prod finetune -m "fine-tune on new data"
run python3 train.py 600
run git commit -q -am "fine-tune volume, model v3: 600 epochs"
run snapver log --metric loss

cat <<TXT

Done. The repository is $demo/repo; its lake is the Btrfs image $demo/lake.img,
mounted at $demo/lake. Look around with \`cd $demo/repo && $here/.venv/bin/snapver log --all\`.
Look at it in a browser: \`cd $demo/repo && $here/.venv/bin/snapver ui --open\`.
Clean up with: umount $demo/lake && rm -rf $demo
TXT
