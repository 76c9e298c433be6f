"""Model safety: which pickle-based model files in a snapshot import code that runs on load.

picklescan disassembles the pickle opcode stream (pickletools.genops) and
lists the globals it would import; nothing is ever unpickled. A file whose
imports include something picklescan calls dangerous (os.system, subprocess,
builtins eval/exec, ...) is flagged. Files that do not parse as a pickle (a
safetensors blob named .bin) have no imports to run and count as clean.

Scanning reads every byte of a model file, so a snapshot scans only the model
files whose (size, mtime, ctime) were not already scanned in an earlier
snapshot of the same volume: the cost is that of the models that changed.
Finding them walks the volume's names (stat only), which is why only the
configured volumes are scanned (by default `models` and derived volumes).

Reading a changed model does not sit on a commit's path (issue 19: a 5 MB model
took the hook past 100 ms): the Git hook stores what needs no reading, marks the
rest pending in the catalog and starts `python -m snapver.githooks scan-pending`
in a session of its own (start_detached), which scans the snapshot (immutable: the
same verdicts as during the hook) and stores them. What refuses flagged models
(`release`) scans a pending snapshot itself first, so a scan that never ran or was
killed leaves it pending, never released unscanned.
"""

from __future__ import annotations

import json
import os
import stat
from datetime import datetime, timezone
from pathlib import Path
from typing import NamedTuple

from . import faults, proc
from .errors import SnapverError
from .safeio import open_regular

MODEL_SUFFIXES = (".pkl", ".pickle", ".pt", ".pth", ".bin", ".joblib", ".ckpt")


class FileVerdict(NamedTuple):
    path: str  # relative to the volume root
    flagged: bool
    findings: list[str]  # "module.name (dangerous|suspicious)"


def judge(verdict: FileVerdict, allow: list[str]) -> tuple[str, FileVerdict]:
    """("flagged" | "suspicious" | "clean", the verdict without the globals the team accepts).
    [scan] allow applies when read, not when scanned: the stored verdicts stay picklescan's, and
    a change of the list needs no rescan. flagged: a dangerous global is left; suspicious: only
    globals picklescan does not know to be harmless."""
    from fnmatch import fnmatchcase

    kept = [f for f in verdict.findings if not any(fnmatchcase(f.split(" (", 1)[0], p) for p in allow)]
    if not verdict.flagged and kept == verdict.findings:
        state = "suspicious" if kept else "clean"
        return state, verdict
    dangerous = any(f.endswith("(dangerous)") for f in kept) or (verdict.flagged and kept == verdict.findings)
    state = "flagged" if dangerous else "suspicious" if kept else "clean"
    return state, verdict._replace(flagged=dangerous, findings=kept)


def is_model_file(name: str) -> bool:
    return name.lower().endswith(MODEL_SUFFIXES)


def scan_file(path: Path) -> tuple[bool, list[str]] | None:
    """(flagged, findings) for one file, without unpickling it; None if it is not a regular
    file when opened (a FIFO, a device, a socket or a symlink put in its place: never read)."""
    import logging  # with picklescan: the hook path does without both (tests/test_hook_imports.py)

    try:
        from picklescan.scanner import SafetyLevel, scan_bytes
    except ImportError:
        raise SnapverError("picklescan is not installed: `pip install picklescan` to scan models") from None
    # picklescan logs every finding as a warning; with no handler configured, Python
    # would print them on stderr in the middle of a Git hook. We report them ourselves.
    logging.getLogger("picklescan").setLevel(logging.CRITICAL)
    f = open_regular(path)
    if f is None:
        return None
    with f:
        result = scan_bytes(f, str(path), os.path.splitext(str(path))[1])
    findings = [
        f"{g.module}.{g.name} ({g.safety.value})"
        for g in sorted(result.globals, key=lambda g: (g.module, g.name))
        if g.safety != SafetyLevel.Innocuous
    ]
    return result.issues_count > 0, findings


def model_files(root: Path):
    """(relative path, lstat) of every regular model file under root: symlinks are not
    followed, and FIFOs, devices and sockets with a model's name are not model files."""
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        for name in sorted(filenames):
            if is_model_file(name):
                full = os.path.join(dirpath, name)
                st = os.lstat(full)
                if stat.S_ISREG(st.st_mode):
                    yield os.path.relpath(full, root), st


def scan_snapshot(catalog, snap, read: bool = True) -> list[FileVerdict] | None:
    """Scan a snapshot's model files (reusing verdicts of unchanged files) and store the result.
    read=False: only if every model file has a verdict already (no file is read, picklescan is
    not imported); None, nothing stored, if one would have to be read."""
    verdicts, rows = [], []
    for rel, st in model_files(Path(snap.path)):
        prev = catalog.scanned_file(snap.project, snap.volume, rel, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        if prev is not None:
            flagged, findings = bool(prev[0]), json.loads(prev[1])
        elif not read:
            return None
        else:
            scanned = scan_file(Path(snap.path) / rel)
            if scanned is None:
                continue  # no longer a regular file (a live volume changes under a walk)
            flagged, findings = scanned
        verdicts.append(FileVerdict(rel, flagged, findings))
        rows.append((rel, st.st_size, st.st_mtime_ns, st.st_ctime_ns, int(flagged), json.dumps(findings)))
    if read:
        faults.point("scan-read")  # the crash tests' scan process killed before it stored anything
    catalog.record_scan(snap.project, snap.volume, snap.name, rows, datetime.now(timezone.utc).isoformat())
    return verdicts


def stored(catalog, snap) -> list[FileVerdict] | None:
    """The stored verdicts of a snapshot, None if it was never scanned."""
    rows = catalog.scan_rows(snap.project, snap.volume, snap.name)
    if rows is None:
        return None
    return [FileVerdict(r[0], bool(r[1]), json.loads(r[2])) for r in rows]


# Test-only: set, the Git hook marks scans pending but starts no process for them (a scan that
# never ran, or was killed before it stored anything), so tests can see what is then refused.
NO_SCAN_PROCESS = "SNAPVER_TEST_NO_SCAN_PROCESS"


def start_detached(toplevel: Path) -> None:
    """Scan this working tree's pending snapshots in a process of its own, in a new session:
    Git's commit does not wait for it, a Ctrl-C at the terminal does not reach it, and it
    writes nothing to the terminal (its errors go to .git/snapver/hook.log). Never raises:
    the snapshot is taken, and a scan that did not start is still pending."""
    if os.environ.get(NO_SCAN_PROCESS) == "1":
        return
    proc.start_hook_job("scan-pending", toplevel)  # if not: the next `release`, `scan` or hook's scan does it
