"""Run one snapver hook's Python path under cProfile and say where its time went.

Called by bench/hooks.py, in the repository, as the shim would call the hook:

    python bench/hook_profile.py post-commit [ARGS...]   ->  one JSON object on stdout

Every subprocess the hook starts is timed (argv, wall ms) by wrapping
subprocess.Popen, because cProfile only sees the parent waiting; the imports
are the cumulative time of importlib's _find_and_load (cProfile counts a
recursive function once, at its outermost call). Never part of the test suite.
"""

from __future__ import annotations

import cProfile
import io
import json
import pstats
import subprocess
import sys
import time

# Modules a hook has no use for (CLI, GitPython, the daemon's, reports): imported means wasted start-up.
UNNEEDED = ("click", "git", "sqlite_utils", "watchdog", "tabulate", "pkg_resources", "importlib.metadata",
            "email", "http", "urllib", "asyncio", "logging", "socketserver", "threading", "ssl")

children: list[dict] = []
_init, _wait = subprocess.Popen.__init__, subprocess.Popen.wait


def _timed_init(self, args, *a, **kw):
    self._bench_t0 = time.perf_counter()
    _init(self, args, *a, **kw)
    children.append({"argv": [str(x) for x in args], "proc": self})


def _timed_wait(self, *a, **kw):
    code = _wait(self, *a, **kw)
    if not hasattr(self, "_bench_ms"):
        self._bench_ms = (time.perf_counter() - self._bench_t0) * 1000
    return code


def main() -> None:
    subprocess.Popen.__init__, subprocess.Popen.wait = _timed_init, _timed_wait
    before = set(sys.modules)
    profile = cProfile.Profile()
    start = time.perf_counter()
    profile.enable()
    from snapver import githooks  # the import is part of what the hook pays

    githooks.main(sys.argv[1:])
    profile.disable()
    wall = (time.perf_counter() - start) * 1000

    stats = pstats.Stats(profile, stream=io.StringIO())
    # stats.stats: (file, line, name) -> (calls, primitive calls, tottime, cumtime, callers)
    def total(match, column=3):
        return 1000 * sum(v[column] for k, v in stats.stats.items() if match(k))

    snapver_funcs = sorted(
        ((f"{k[0].split('/snapver/', 1)[1]}:{k[1]}({k[2]})", v[3] * 1000, v[1])
         for k, v in stats.stats.items() if "/snapver/" in k[0]),
        key=lambda t: -t[1])
    new = set(sys.modules) - before
    print(json.dumps({
        "hook": sys.argv[1:],
        "wall_ms": wall,
        "imports_ms": total(lambda k: k[2] == "_find_and_load"),
        "modules_imported": len(new),
        "unneeded_modules_imported": sorted(m for m in UNNEEDED if m in new),
        # Top-level packages the hook path brought in (beyond what this driver had already).
        "packages_imported": sorted({m.split(".")[0] for m in new}),
        "subprocesses": [{"argv": c["argv"][:4], "ms": getattr(c["proc"], "_bench_ms", None)} for c in children],
        "subprocess_ms": sum(getattr(c["proc"], "_bench_ms", 0) for c in children),
        # sqlite3's C methods show up as '{method ... of sqlite3.Connection objects}' and
        # '{built-in method _sqlite3.connect}': their own time is the database's.
        "sqlite_ms": total(lambda k: "sqlite3" in k[2], column=2),
        "ioctl_ms": total(lambda k: "fcntl.ioctl" in k[2] or "fcntl.flock" in k[2], column=2),
        "fsync_ms": total(lambda k: "fsync" in k[2], column=2),
        "top_snapver_functions": [{"function": f, "cum_ms": ms, "calls": n} for f, ms, n in snapver_funcs[:15]],
    }))


if __name__ == "__main__":
    main()
