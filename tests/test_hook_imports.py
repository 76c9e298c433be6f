"""The Git hooks' Python path imports only what it uses.

Starting Python and importing is most of what a hook adds to `git commit` and
`git checkout` (bench/hooks.py; the goal is at most 100 ms). Each module named
here cost a hook several milliseconds when it crept in, and none is needed
unless the hook has something unusual to do, when it is imported there.
"""

import subprocess
import sys

# What each would bring, and why the hook path does without:
NOT_ON_THE_HOOK_PATH = {
    "click": "the CLI; hooks run snapver.githooks directly",
    "git": "GitPython, ~85 ms; the hooks ask the git command",
    "sqlite_utils": "~125 ms; the hooks write with sqlite3",
    "watchdog": "the daemon's",
    "dataclasses": "imports inspect and execs every class: records are NamedTuples",
    "inspect": "through dataclasses",
    "logging": "imported by registry.warn when there is a warning",
    "yaml": "only for YAML metrics files",
    "picklescan": "only when a model file is scanned",
    "tomlkit": "the writer of snapver.toml only (init, derive); every reader uses tomllib",
    "tempfile": "~3 ms with shutil and random; a remote lake's round trip imports it",
    "hashlib": "~3 ms loading OpenSSL; a remote lake's control path and init import it",
}

HOOK_MODULES = ("snapver.githooks", "snapver.ops", "snapver.client", "snapver.lake", "snapver.registry",
                "snapver.scan", "snapver.backends.btrfs", "snapver.backends.zfs")


def test_the_hook_path_imports_nothing_it_does_not_use():
    code = f"import sys\nimport {', '.join(HOOK_MODULES)}\nprint('\\n'.join(sys.modules))"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    loaded = {name.split(".")[0] for name in done.stdout.split()}
    assert {m: why for m, why in NOT_ON_THE_HOOK_PATH.items() if m in loaded} == {}
