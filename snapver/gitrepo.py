"""What snapver asks Git: where the working tree is, what HEAD is, which commits exist.

The hot questions (HEAD, rev-parse, one commit's metadata) go straight to the
`git` command: the hooks run on every commit and checkout, and importing
GitPython alone costs about 85 ms. GitPython serves the cold paths, where
walking many commits through one object database pays off (reindex).
"""

from __future__ import annotations

import os
import pwd
import subprocess
from pathlib import Path
from typing import NamedTuple

from .errors import NotFound, SnapverError
from .proc import ask, run


class CommitInfo(NamedTuple):
    sha: str
    author: str
    email: str
    time: str  # ISO 8601, the author's
    subject: str
    parents: tuple[str, ...]


_FORMAT = "%H%x00%an%x00%ae%x00%aI%x00%P%x00%s"


def _parse_commit(line: str) -> CommitInfo:
    sha, author, email, time, parents, subject = line.split("\0", 5)
    return CommitInfo(sha, author, email, time, subject, tuple(parents.split()))


class GitRepo:
    def __init__(self, toplevel: Path, git_dir: Path, common_dir: Path):
        self.toplevel = toplevel  # the working tree's root
        self.git_dir = git_dir  # this working tree's own .git (differs per worktree)
        self.common_dir = common_dir  # shared by every worktree of the repo

    def keep_out(self, volumes: list[str]) -> None:
        """The volumes are symlinks into the lake: Git must never commit them (info/exclude,
        shared by every worktree of the repo). Idempotent."""
        exclude = self.common_dir / "info" / "exclude"
        exclude.parent.mkdir(parents=True, exist_ok=True)
        present = exclude.read_text().splitlines() if exclude.exists() else []
        wanted = [f"/{v}" for v in volumes if f"/{v}" not in present]
        if wanted:
            with open(exclude, "a") as f:
                if present and present[-1].strip():
                    f.write("\n")
                f.write("# snapver volumes (symlinks into the lake)\n" + "\n".join(wanted) + "\n")

    @classmethod
    def find(cls, path: Path | str = ".") -> GitRepo:
        try:
            out = run(
                ["git", "rev-parse", "--path-format=absolute",
                 "--show-toplevel", "--git-dir", "--git-common-dir"],
                cwd=path,
            )
        except SnapverError:
            raise SnapverError(
                f"{Path(path).resolve()} is not inside a Git working tree: "
                "run `git init` (or cd into your repository) first"
            ) from None
        toplevel, git_dir, common_dir = out.splitlines()
        return cls(Path(toplevel), Path(git_dir), Path(common_dir))

    def git(self, *args: str) -> str:
        return run(["git", *args], cwd=self.toplevel)

    def head(self) -> str | None:
        """The commit HEAD points at; None in a repository with no commit yet."""
        out = ask(["git", "rev-parse", "--verify", "--quiet", "HEAD^{commit}"], cwd=self.toplevel)
        return out.strip() if out is not None else None

    def branch(self) -> str | None:
        """The branch HEAD is on; None when detached. Read from the HEAD file: no fork."""
        try:
            head = (self.git_dir / "HEAD").read_text().strip()
        except OSError:
            return None
        prefix = "ref: refs/heads/"
        return head[len(prefix):] if head.startswith(prefix) else None

    def made_on(self, sha: str, first_parent: str) -> str | None:
        """How HEAD's newest reflog entry (last_head_move) made commit sha on first_parent here:
        "merge" (`git merge` or `git pull` making a merge commit), "pick" (`git cherry-pick` or
        `git revert` committing), or None: another move, a fast-forward to sha (`cherry-pick
        --ff` is a checkout of that commit), or no reflog."""
        move = self.last_head_move()
        if move is None or move[:2] != (first_parent, sha):
            return None
        message = move[2]
        action, _, what = message.partition(": ")
        if action.split(" ", 1)[0] in ("merge", "pull") and what != "Fast-forward":
            return "merge"
        if message.startswith(("cherry-pick: ", "revert: ")) and not message.endswith("fast-forward"):
            return "pick"
        return None

    def head_quick(self) -> str | None:
        """HEAD's commit read from the files Git just wrote (HEAD, a loose ref): no fork; asks
        Git when the ref is packed or HEAD is something else."""
        try:
            head = (self.git_dir / "HEAD").read_text().strip()
            if head.startswith("ref: refs/"):
                sha = (self.common_dir / head[5:]).read_text().strip()
            else:
                sha = head
            if len(sha) == 40 and all(c in "0123456789abcdef" for c in sha):
                return sha
        except (OSError, ValueError):
            pass
        return self.head()

    def last_head_move(self) -> tuple[str, str, str] | None:
        """HEAD's newest reflog entry (old, new, message): what the command that just moved HEAD
        called the move ("checkout: ...", "cherry-pick: ..."). Git writes it before the
        reference-transaction hook runs. The file's tail only: no fork, no walk of the log.
        None without a reflog (core.logAllRefUpdates off)."""
        try:
            with open(self.git_dir / "logs" / "HEAD", "rb") as f:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - 8192))
                last = f.read().rstrip(b"\n").rpartition(b"\n")[2].decode(errors="replace")
        except OSError:
            return None
        who, _, message = last.partition("\t")
        fields = who.split(" ", 2)
        return (fields[0], fields[1], message) if len(fields) == 3 else None

    def resolve(self, rev: str) -> str:
        """The full commit ID of any commit-ish Git understands."""
        if not rev or "\0" in rev or "\n" in rev:
            raise NotFound(f"{rev!r} is not a commit")
        out = ask(["git", "rev-parse", "--verify", "--quiet", "--end-of-options", f"{rev}^{{commit}}"],
                  cwd=self.toplevel)
        if out is None:
            raise NotFound(f"{rev!r} is not a commit in this repository")
        return out.strip()

    def head_commit(self) -> CommitInfo | None:
        """HEAD and its metadata in one call; None in a repository with no commit yet."""
        out = ask(["git", "show", "-s", f"--format={_FORMAT}", "HEAD", "--"], cwd=self.toplevel)
        return _parse_commit(out.rstrip("\n")) if out is not None else None

    def commit(self, sha: str) -> CommitInfo:
        return _parse_commit(self.git("show", "-s", f"--format={_FORMAT}", sha, "--").rstrip("\n"))

    def first_parent_ancestors(self, sha: str):
        """sha, its first parent, that one's first parent, ... lazily, newest first."""
        # A pipe read lazily (not proc.run): the caller stops at the first snapshotted
        # ancestor, and the rest of a long history is never listed.
        proc = subprocess.Popen(
            ["git", "rev-list", "--first-parent", sha, "--"],
            cwd=self.toplevel, stdout=subprocess.PIPE, text=True,
        )
        assert proc.stdout is not None  # stdout=PIPE
        try:
            for line in proc.stdout:
                yield line.strip()
        finally:
            proc.kill()
            proc.wait()

    def commits(self, shas) -> dict[str, CommitInfo]:
        """Metadata of many commits at once; commits Git no longer has are left out."""
        import git  # GitPython: one object database for the whole walk

        repo = git.Repo(self.toplevel)
        found = {}
        for sha in shas:
            try:
                c = repo.commit(sha)
            except (ValueError, git.BadName):
                continue
            found[sha] = CommitInfo(
                sha=c.hexsha,
                author=c.author.name or "",
                email=c.author.email or "",
                time=c.authored_datetime.isoformat(),
                subject=str(c.message).split("\n", 1)[0],
                parents=tuple(p.hexsha for p in c.parents),
            )
        return found


def git_as_owner(cwd: Path, args: list[str], input: str | None = None,
                 owner_of: Path | None = None) -> subprocess.CompletedProcess:
    """git in cwd; as root, as the owner of owner_of (default cwd): Git refuses a repository
    of another user, and the owner's own config is all that may run on its behalf. Never
    raises: a failure to start is a failed CompletedProcess. (Not proc.run, which runs as the
    caller and raises: callers here read the exit status and stderr of another user's git.)"""
    argv = ["git", *args]
    kwargs: dict = {}
    if os.geteuid() == 0:
        try:
            st = (owner_of or cwd).stat()
        except OSError as e:
            return subprocess.CompletedProcess(argv, 1, "", str(e))
        if st.st_uid != 0:
            try:
                home = pwd.getpwuid(st.st_uid).pw_dir
            except KeyError:
                home = "/nonexistent"
            kwargs = {"user": st.st_uid, "group": st.st_gid, "extra_groups": [],
                      "env": {**os.environ, "HOME": home}}
    try:
        return subprocess.run(argv, cwd=cwd, input=input, capture_output=True, text=True, **kwargs)
    except OSError as e:
        return subprocess.CompletedProcess(argv, 1, "", str(e))
