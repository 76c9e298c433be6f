"""snapver's Git hooks run by the pre-commit framework (`.pre-commit-hooks.yaml`):
`python -m snapver.precommit HOOK` runs hooks/HOOK, the same shim `snapver hooks install`
installs, with the arguments Git gave pre-commit, which pre-commit passes on only as
PRE_COMMIT_* variables.

pre-commit reads pre-push's standard input itself (the refs being pushed) and passes on
the first ref it pushes: that one line is rebuilt here. Git hooks pre-commit does not
manage (post-index-change, reference-transaction: how snapver follows `reset --hard`) are
not run; snapverd's ref polling notices that HEAD move instead (README says so).
"""

from __future__ import annotations

import os
import sys

from .hookfiles import shim_text
from .shipped import shipped

ZERO = "0" * 40
# Git's arguments of each hook, from the variables pre-commit sets for that stage.
ARGS = {
    "post-commit": (),
    "post-checkout": ("PRE_COMMIT_FROM_REF", "PRE_COMMIT_TO_REF", "PRE_COMMIT_CHECKOUT_TYPE"),
    "post-merge": ("PRE_COMMIT_IS_SQUASH_MERGE",),
    "post-rewrite": ("PRE_COMMIT_REWRITE_COMMAND",),
    "pre-push": ("PRE_COMMIT_REMOTE_NAME", "PRE_COMMIT_REMOTE_URL"),
}


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0] not in ARGS:
        print(f"snapver: python -m snapver.precommit HOOK, HOOK one of {', '.join(ARGS)}", file=sys.stderr)
        return 2
    hook = argv[0]
    args = [os.environ.get(k, "") for k in ARGS[hook]]
    if hook == "pre-push":
        env = os.environ.get
        line = f"{env('PRE_COMMIT_LOCAL_BRANCH', '')} {env('PRE_COMMIT_TO_REF', '')} " \
               f"{env('PRE_COMMIT_REMOTE_BRANCH', '')} {env('PRE_COMMIT_FROM_REF') or ZERO}\n"
        read, write = os.pipe()
        os.write(write, line.encode())  # one line: far below a pipe's buffer
        os.close(write)
        os.dup2(read, 0)
        os.close(read)
    # The shim's text as installed, run by sh with $0 = the hook's name (how it knows which
    # hook it is); its folder is none, so it chains to no <hook>.pre-snapver: pre-commit
    # runs the other hooks itself. No user data is in the program text, only in its argv.
    text = shim_text(shipped("hooks") / hook)
    os.execvp("sh", ["sh", "-c", text, hook, *args])
    return 1  # not reached


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
