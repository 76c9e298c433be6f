"""Rewritten commits get snapshots of their own: amend, rebase, squash, filter-branch, filter-repo.

Snapshots are immutable. A rewrite never renames or destroys one: for each
(old, new) pair the new commit gets, for every volume the old one had, a new
snapshot made from the old one (Backend.copy_snapshot, O(1)); a new commit
that has a snapshot already (an amend: post-commit took one of the live
volume) keeps it. The old snapshots stay where they are, for gc to decide:
the old commit may still be reachable (a backup branch, another clone, a
rebase that is aborted). Several old commits mapping to one new commit (a
squash or fixup) give it the data of the newest of them, the last in the
order given (rebase order).

The same path serves the post-rewrite hook (ops "rewrite"), `snapver remap
COMMIT-MAP` (filter-repo's .git/filter-repo/commit-map, or plain old/new
pairs), and the daemon's socket, where an unprivileged caller may only name
commits its own working tree rewrote (check_served).
"""

from __future__ import annotations

from pathlib import Path

from . import names
from .errors import NotFound, SnapverError
from .proc import ask

# More new commits than this: their catalog rows come from one GitPython walk, not a git each.
_MANY = 20


def groups(pairs) -> dict[str, list[str]]:
    """new commit -> its old commits in the order given; dropped (all-zero new) and
    unchanged (new == old) commits are left out. A malformed pair is refused."""
    out: dict[str, list[str]] = {}
    for pair in pairs:
        if len(pair) != 2 or not all(isinstance(c, str) and names.SHA.fullmatch(c) for c in pair):
            raise SnapverError(f"{' '.join(map(str, pair))!r} is not a pair of full 40-hex commit IDs (old new)")
        old, new = pair
        if new == names.NO_COMMIT or new == old or old == names.NO_COMMIT:
            continue
        olds = out.setdefault(new, [])
        if old not in olds:
            olds.append(old)
    return out


def parse_commit_map(path: Path) -> list[tuple[str, str]]:
    """The pairs of a commit map: filter-repo's `.git/filter-repo/commit-map` (a header line
    `old new`, then `<old> <new>` lines, all zeros for a dropped commit) or plain `<old> <new>`
    lines (filter-branch). Blank lines and `#` comments are skipped; anything else is refused."""
    try:
        text = Path(path).read_text()
    except FileNotFoundError:
        raise NotFound(f"{path} does not exist: give the commit map, e.g. .git/filter-repo/commit-map") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SnapverError(f"{path} cannot be read as a commit map ({getattr(e, 'strerror', None) or e})") from None
    pairs = []
    for number, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith("#"):
            continue
        if number == 1 and fields == ["old", "new"]:
            continue  # filter-repo's header
        fields = [f.lower() for f in fields]
        if len(fields) != 2 or not all(names.SHA.fullmatch(f) for f in fields):
            raise SnapverError(
                f"{path} line {number}: {line.strip()[:100]!r} is not `<old> <new>` (two full 40-hex commit IDs)"
            )
        pairs.append((fields[0], fields[1]))
    if not pairs:
        raise SnapverError(f"{path} holds no `<old> <new>` line: is it a commit map?")
    return pairs


def missing(git, shas) -> list[str]:
    """Those of shas that are not commits of this repository (one `git cat-file`)."""
    shas = list(shas)
    if not shas:
        return []
    out = ask(["git", "cat-file", "--batch-check=%(objectname) %(objecttype)"],
              cwd=git.toplevel, input="".join(s + "\n" for s in shas).encode())
    found = {f[0] for f in (line.split() for line in (out or "").splitlines())
             if len(f) == 2 and f[1] == "commit"}
    return [s for s in shas if s not in found]


def apply(ws, pairs) -> list:
    """Give every rewritten commit its snapshots; return the snapshots made."""
    by_new = groups(pairs)
    if not by_new:
        return []
    gone = missing(ws.git, by_new)
    if gone:
        raise NotFound(f"{gone[0]} is not a commit in this repository: nothing was changed "
                       f"({len(gone)} new commit(s) missing; is this the repository that was rewritten?)")
    wanted = set(by_new) | {o for olds in by_new.values() for o in olds}
    made = []
    with ws.lock():
        have = {(s.volume, s.name): s for s in ws.backend.snapshots(ws.project, readable=False)
                if s.kind == "commit" and s.name in wanted}
        volumes = sorted({v for v, _ in have})
        given: dict[tuple[str, str], str] = {}  # (volume, new) -> the old snapshot it was made from
        for new, olds in by_new.items():
            for v in volumes:
                if (v, new) in have:
                    continue  # its own snapshot (an amend's post-commit): kept as it is
                source = next((have[(v, o)] for o in reversed(olds) if (v, o) in have), None)
                if source is None:
                    continue  # no old commit of the group had this volume snapshotted
                copy = ws.backend.copy_snapshot(source, new)
                made.append(copy)
                given[(v, new)] = source.name
                _record(ws, source, copy)
        _follow_state(ws, by_new, given)
        _record_commits(ws, {new for _, new in given} | {n for _, n in have if n in by_new})
    return made


def _record(ws, source, copy) -> None:
    """The copy's catalog rows: its snapshot row, and the per-snapshot rows of the registry
    (metrics and params, provenance, model scans) its source had, as a rename carried them."""
    row = ws.catalog.rows_for(ws.project, source.volume, source.name)["snapshot"] or {}
    with ws.catalog.batch():
        ws.catalog.record_snapshots([copy], row.get("workspace"), row.get("message"))
        ws.catalog.copy_snapshot_rows(ws.project, source.volume, source.name, copy.name)


def _follow_state(ws, by_new: dict[str, list[str]], given: dict[tuple[str, str], str]) -> None:
    """A live volume that matched an old snapshot matches its copy: its base becomes the new
    commit, so the lake does not move when HEAD follows the rewrite. Only the copy's own
    source counts: a squash whose lake was at an older commit of the group is checked out."""
    changed = False
    for (v, new), source in given.items():
        vs = ws.state.volumes.get(v)
        if vs is not None and vs.base == source:
            vs.base = new
            changed = True
    if changed:
        ws.state.save()
    at = ws.lake_at()
    for new, olds in by_new.items():
        if at == olds[-1]:
            ws._record_at(new)


def _record_commits(ws, shas: set[str]) -> None:
    if not shas:
        return
    infos = ws.git.commits(sorted(shas)).values() if len(shas) > _MANY else [ws.git.commit(s) for s in sorted(shas)]
    branch = ws.git.branch()
    with ws.catalog.batch():
        for info in infos:
            ws.catalog.record_commit(ws.project, info, branch)


# ------------------------------------------------------------------ the socket

def check_served(ws, pairs) -> None:
    """For a caller served over the daemon's socket: every pair must be a rewrite that
    happened in this working tree. The old commit must appear in the reflog of its HEAD or
    of one of its branches (it was checked out or committed there, then rewritten), or be an
    ancestor of such an entry, and the new commit must exist in this repository. Otherwise
    the whole request is refused, and nothing is made."""
    by_new = groups(pairs)
    if not by_new:
        return
    seen = set((ask(["git", "log", "-g", "--format=%H", "HEAD", "--branches", "--"], cwd=ws.git.toplevel)
                or "").split())
    olds = {o for group in by_new.values() for o in group}
    if olds - seen and seen:
        # A rebase also rewrites commits that came with a pull and were never HEAD here
        # themselves: an ancestor of a reflog entry counts (one walk, only when needed).
        walk = ask(["git", "rev-list", "--stdin"], cwd=ws.git.toplevel,
                   input="".join(s + "\n" for s in sorted(seen)).encode())
        seen |= set((walk or "").split()) & olds
    for old in sorted(olds - seen):
        raise SnapverError(
            f"refused: commit {names.short(old)} was never reached from HEAD or a branch of {ws.git.toplevel} "
            "(by its reflog), so it was not rewritten there; nothing was changed"
        )
    gone = missing(ws.git, by_new)
    if gone:
        raise SnapverError(f"refused: {names.short(gone[0])} is not a commit in {ws.git.toplevel}; nothing was changed")
