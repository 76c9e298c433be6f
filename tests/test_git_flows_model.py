"""The promise, tested as a model: nothing is lost in everyday Git (issues 14 and 22).

Random sequences of everyday Git in two clones and a worktree of one project on one lake
(hooks installed, snapverd running and watching all three): write data, commit, amend, branch,
checkout/switch, merge, rebase (pick, squash, edit + amend + abort), cherry-pick, reset --hard,
stash/pop, tag, release, gc, daemon gc, a clone moved or deleted, kill -9 of a hook; and
between two lakes (issue 22): push to a second lake on the same filesystem (whose own clone R
never fetches), pull back from it, gc there. The oracle remembers the data every commit was
made with (the live volumes when it was made, or the data of the commit it rewrote; the newest
of a squash), every wip a command announced as kept, and every commit a push said it sent.
The wips snapverd takes as it races the hooks are not announced as kept, so they are not
required; what it does must break none of the rest. After every step, with the workspace
locks held (so that no snapshot snapverd is taking is seen halfway):

- every commit that a ref (branch, tag, remote, HEAD) of a present clone or worktree reaches,
  or that a release pins, has a snapshot of every volume holding exactly its data;
- every announced kept wip still exists, holding exactly what the lake held;
- no commit snapshot is half made (all volumes or none);
- a command that moved HEAD brought the lake to HEAD's data (checkout, switch, reset --hard,
  fast-forward merge, the end of a rebase or its abort, and the stop of a `rebase -i` edit);
- snapverd is still running;
- every commit a successful push covered (the history of what it pushed) has, on the second
  lake, a snapshot of every volume holding exactly its data, whatever gc ran there: R knows
  none of them, so they are "unknown" and kept;
and right after a pull that succeeded, the first lake holds exactly the data of every commit
of the pulled history that the second lake held.

SNAPVER_MODEL_EXAMPLES=N sets the number of sequences (default 100, HYPOTHESIS_PROFILE=long:
5000), SNAPVER_MODEL_STEPS the steps per sequence, SNAPVER_MODEL_SEED a seed to replay,
SNAPVER_MODEL_DAEMON=0 runs without snapverd (to tell its part in a failure). The
figures (sequences, steps, snapshots checked, failures) go to SNAPVER_MODEL_SUMMARY (default
<tmp>/snapver-model-summary.json) and are printed (`pytest -s`); bench/git_flows_model.py
runs it for the README's figure.
"""

from __future__ import annotations

import collections
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
from hypothesis import HealthCheck, note, settings
from hypothesis.errors import Flaky, FlakyStrategyDefinition
from hypothesis import seed as hseed
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule, run_state_machine_as_test

from snapver import lock
from tests.gitflows import VOLUMES, World, delete_btrfs_tree, read_tree

LONG = os.environ.get("HYPOTHESIS_PROFILE") == "long"
EXAMPLES = int(os.environ.get("SNAPVER_MODEL_EXAMPLES") or (5000 if LONG else 100))
STEPS = int(os.environ.get("SNAPVER_MODEL_STEPS") or 10)
WHO = st.sampled_from(["A", "B", "W"])
PICK = st.integers(0, 10**6)  # an index into what is there when the rule runs
# Crash points (snapver/faults.py) a hook can be killed at: the git command that fires it.
KILLS = [("commit", "after-snapshot-before-state"), ("checkout", "checkout-kept"),
         ("checkout", "checkout-switched"), ("checkout", "checkout-swapped#2")]

BROKEN: dict[str, type] = {}
FIRST: dict[str, list | None] = collections.defaultdict(lambda: None)  # shortest failing transcript
STATS = {"sequences": 0, "steps": 0, "checks": 0, "snapshots_checked": 0, "wips_checked": 0,
         "far_snapshots_checked": 0, "pushes": 0, "pulls": 0, "daemon_wips": 0,
         "failing_sequences": 0, "failures": {}}
WORLDS: list[World] = []  # whose snapverd run_model stops whatever happened


class GitFlows(RuleBasedStateMachine):
    lake_args: list[str] = []  # set by the test: what `snapver init` takes
    far_args: list[str] = []  # ... and for the second lake, with its file:// URL
    far_url = ""
    drop_lake = staticmethod(lambda: None)

    def __init__(self):
        super().__init__()
        STATS["sequences"] += 1
        self.failed = False
        self.transcript: list[str] = []
        self.world = World(self.lake_args, self.say, self.far_args, self.far_url)
        WORLDS.append(self.world)
        self.expected: dict[str, dict] = {}  # commit -> {volume: {file: text}}
        self.kept: dict[str, dict] = {}  # announced wip -> the lake it kept
        self.far: set[str] = set()  # commits a push said the second lake now holds
        self.pushed_at = 0.0  # time.monotonic() of the last push
        self.released: set[str] = set()
        self.present = {"A": True, "B": True, "W": True}
        self.interrupted: set[str] = set()  # worktrees whose last operation was killed
        self.n = 0
        first = self.world.set_up()
        self.expected[first] = self.world.live("A")
        if os.environ.get("SNAPVER_MODEL_DAEMON") != "0":
            self.world.start_daemon()

    def say(self, line: str) -> None:
        self.transcript.append(line)
        note(line)

    def teardown(self):
        try:
            self.world.stop_daemon()
            STATS["daemon_wips"] += self.world.daemon_said(": wip snapshot ")
        finally:
            self.world.tear_down()
            WORLDS.remove(self.world)
            type(self).drop_lake()

    # ------------------------------------------------------------ helpers
    def who(self, who: str) -> str:
        return who if self.present[who] else "A"

    def token(self) -> str:
        self.n += 1
        return f"t{self.n}-{os.urandom(3).hex()}"

    def targets(self, who: str) -> list[str]:
        refs = self.world.lines(who, "for-each-ref", "--format=%(refname:short)",
                                "refs/heads", "refs/tags", "refs/remotes")
        there = set(self.world.lines(who, "rev-list", "--all", "--"))
        return sorted(r for r in refs if not r.endswith("/HEAD")) + sorted(there & set(self.expected))

    def pick(self, who: str, i: int) -> str | None:
        options = self.targets(who)
        return options[i % len(options)] if options else None

    def record(self, sha: str | None, data: dict) -> None:
        if sha and sha not in self.expected:  # an identical commit made again keeps its first data
            self.expected[sha] = data

    def act(self, who: str, *args: str, **extra: str):
        """A git command in who, noting what it kept: (result, HEAD before, HEAD after)."""
        before, live = self.world.rev(who), self.world.live(who)
        done = self.world.git(who, *args, **extra)
        for name in done.kept:
            self.kept[name] = live
        self.rewritten()
        return done, before, self.world.rev(who), live

    def rewritten(self) -> None:
        for why, old, new in self.world.take_rewrites():
            if why != "amend" and old in self.expected:  # amend snapshots the live lake (post-commit)
                self.expected[new] = self.expected[old]  # in order: a squash takes its newest

    def lake_follows(self, who: str, before: str | None, after: str | None, what: str) -> None:
        if who in self.interrupted or after is None or after == before or after not in self.expected:
            return
        live = self.world.live(who)
        self.fail_if(live != self.expected[after], "lake-not-at-head",
                     f"after {what} in {who} HEAD is {after[:10]} but the lake is not its data: "
                     f"lake {live}, commit {self.expected[after]}")

    def fail_if(self, bad: bool, kind: str, message: str) -> None:
        if bad:
            STATS["failures"][kind] = STATS["failures"].get(kind, 0) + 1
            if not self.failed:
                STATS["failing_sequences"] += 1
            self.failed = True
            if FIRST[kind] is None or len(self.transcript) < len(FIRST[kind]):
                FIRST[kind] = [*self.transcript, f"{kind}: {message}"]
            # One exception class per invariant, so that Hypothesis reports (and shrinks) each
            # invariant's failure separately instead of stopping at the first.
            if kind not in BROKEN:
                BROKEN[kind] = type("Broken_" + kind.replace("-", "_"), (AssertionError,), {})
            raise BROKEN[kind](f"{kind}: {message}")

    # ------------------------------------------------------------ rules
    @rule(who=WHO, volume=st.sampled_from(VOLUMES), name=st.sampled_from(["f0", "f1", "f2"]))
    def write(self, who, volume, name):
        self.scribble(self.who(who), volume, name)

    def scribble(self, who: str, volume: str, name: str) -> None:
        token = self.token()
        (self.world.paths[who] / volume / name).write_text(token)
        self.say(f"[{who}] echo {token} > {volume}/{name}")

    @rule(who=WHO)
    def commit(self, who):
        who = self.who(who)
        token = self.token()
        (self.world.paths[who] / "code").mkdir(exist_ok=True)
        (self.world.paths[who] / "code" / f"{token}.txt").write_text(token)
        self.world.git(who, "add", f"code/{token}.txt")
        done, _, after, live = self.act(who, "commit", "-q", "-m", token)
        if done.ok:
            self.record(after, live)

    @rule(who=WHO, backup=st.booleans())
    def amend(self, who, backup):
        who = self.who(who)
        if self.world.rev(who) not in self.expected:
            return
        if backup:
            self.world.git(who, "branch", f"keep{self.token()}")
        done, before, after, live = self.act(who, "commit", "-q", "--amend", "--allow-empty", "-m",
                                             f"amended {self.token()}")
        if done.ok:
            self.record(after, live)

    @rule(who=WHO, i=PICK)
    def branch(self, who, i):
        who = self.who(who)
        target = self.pick(who, i)
        self.world.git(who, "branch", f"b{self.token()}", target)

    @rule(who=WHO, i=PICK, switch=st.booleans(), dirty=st.booleans())
    def checkout(self, who, i, switch, dirty):
        who = self.who(who)
        if dirty:
            self.scribble(who, "data", "f0")
        target = self.pick(who, i)
        local = target in self.world.lines(who, "for-each-ref", "--format=%(refname:short)", "refs/heads")
        if switch:
            args = ("switch", "-q") + ((target,) if local else ("--detach", target))
        else:
            args = ("checkout", "-q", target)
        done, before, after, _ = self.act(who, *args)
        if done.ok:
            self.lake_follows(who, before, after, " ".join(args))

    @rule(who=WHO, i=PICK, no_ff=st.booleans())
    def merge(self, who, i, no_ff):
        who = self.who(who)
        target = self.pick(who, i)
        args = ["merge", "-q", "--no-edit", "-m", f"merge {self.token()}"] + (["--no-ff"] if no_ff else [])
        done, before, after, live = self.act(who, *args, target)
        if not done.ok:
            self.world.git(who, "merge", "--abort")
        elif after != before and len(self.world.lines(who, "rev-list", "--parents", "-n1", "HEAD")) > 2:
            self.record(after, live)  # a merge made here: the lake of its first parent, as it is
        else:
            self.lake_follows(who, before, after, "a fast-forward merge")

    @rule(who=WHO, i=PICK)
    def rebase(self, who, i):
        who = self.who(who)
        done, before, after, _ = self.act(who, "rebase", "-q", self.pick(who, i))
        if not done.ok:
            self.act(who, "rebase", "--abort")
        else:
            self.lake_follows(who, before, after, "rebase")

    def linear_known(self, who: str, k: int) -> bool:
        commits = self.world.lines(who, "rev-list", "--first-parent", f"-n{k + 1}", "HEAD")
        merges = self.world.lines(who, "rev-list", "--merges", f"-n{k + 1}", "HEAD")
        return len(commits) == k + 1 and not set(commits) & set(merges) and set(commits) <= set(self.expected)

    def interactive(self, who: str, k: int, todo: str):
        editor = f"{sys.executable} {self.world.editor}"
        return self.act(who, "rebase", "-i", f"HEAD~{k}", GIT_SEQUENCE_EDITOR=editor, MODEL_TODO=todo)

    @rule(who=WHO, k=st.integers(2, 3))
    def squash(self, who, k):
        who = self.who(who)
        if not self.linear_known(who, k):
            return
        done, before, after, _ = self.interactive(who, k, "squash")
        if not done.ok:
            self.act(who, "rebase", "--abort")
        else:
            self.lake_follows(who, before, after, f"rebase -i HEAD~{k} (squash)")

    @rule(who=WHO, k=st.integers(1, 3))
    def edit_amend_abort(self, who, k):
        who = self.who(who)
        if not self.linear_known(who, k):
            return
        done, before, stop, _ = self.interactive(who, k, "edit")
        if done.ok:  # stopped at the edit
            self.lake_follows(who, before, stop, f"the stop of rebase -i HEAD~{k} (edit)")
            self.scribble(who, "data", "edited")
            self.act(who, "commit", "-q", "--amend", "--allow-empty", "-m", f"edited {self.token()}")
        done, _, after, _ = self.act(who, "rebase", "--abort")
        self.lake_follows(who, stop, after, "rebase --abort")

    @rule(who=WHO, i=PICK)
    def cherry_pick(self, who, i):
        who = self.who(who)
        done, _, after, live = self.act(who, "cherry-pick", self.pick(who, i))
        if done.ok:
            self.record(after, live)
        else:
            self.act(who, "cherry-pick", "--abort")

    @rule(who=WHO, i=PICK, dirty=st.booleans())
    def reset_hard(self, who, i, dirty):
        who = self.who(who)
        if dirty:
            self.scribble(who, "models", "f1")
        target = self.pick(who, i)
        done, before, after, _ = self.act(who, "reset", "-q", "--hard", target)
        if done.ok:
            self.lake_follows(who, before, after, f"reset --hard {target}")

    @rule(who=WHO, pop=st.booleans())
    def stash(self, who, pop):
        who = self.who(who)
        if pop:
            self.act(who, "stash", "pop", "-q")
        else:
            with open(self.world.paths[who] / "stash.txt", "a") as f:
                f.write(self.token() + "\n")
            self.act(who, "stash", "-q")

    @rule(who=WHO, i=PICK)
    def tag(self, who, i):
        who = self.who(who)
        self.world.git(who, "tag", f"v{self.token()}", self.pick(who, i))

    @rule(who=WHO)
    def release(self, who):
        who = self.who(who)
        head = self.world.rev(who)
        if self.world.snapver(who, "release", f"r{self.token()}").ok and head in self.expected:
            self.released.add(head)

    @rule(who=WHO)
    def fetch(self, who):
        who = self.who(who)
        if who == "B":
            self.world.git("B", "fetch", "-q", "origin")
        else:
            self.world.git(who, "fetch", "-q", "b")

    @rule(who=WHO, daemon=st.booleans())
    def gc(self, who, daemon):
        # unreachable = "1s": wait that second, so that a replay removes what the first run did.
        time.sleep(max(0.0, self.world.last_run + 1.05 - time.monotonic()))
        if daemon:  # as snapver-gc.timer runs it, for every workspace in the daemon's config
            self.world.snapver("A", "daemon", "--config", str(self.world.daemon_config()), "gc")
        else:
            self.world.snapver(self.who(who), "gc")

    @precondition(lambda self: self.present["B"])
    @rule()
    def move_b(self):
        self.world.moves += 1
        moved = self.world.home / f"B-moved{self.world.moves}"
        shutil.move(self.world.paths["B"], moved)
        self.say(f"mv {self.world.paths['B']} {moved}")
        self.world.paths["B"] = moved
        self.world.reload_daemon()

    @precondition(lambda self: self.present["B"])
    @rule()
    def delete_b(self):
        shutil.rmtree(self.world.paths["B"])
        self.say(f"rm -rf {self.world.paths['B']}  (its refs stop counting)")
        self.present["B"] = False
        self.interrupted.discard("B")
        self.world.reload_daemon(gone=("B",))
        if self.world.snapver("A", "clones", "--help", quiet=True).ok:  # issue 14: the only way to drop one
            self.world.snapver("A", "clones", "forget", str(self.world.paths["B"]))

    @rule(who=WHO, kill=st.sampled_from(KILLS), i=PICK)
    def kill_hook(self, who, kill, i):
        who = self.who(who)
        command, point = kill
        if command == "commit":
            token = self.token()
            (self.world.paths[who] / "code").mkdir(exist_ok=True)
            (self.world.paths[who] / "code" / f"{token}.txt").write_text(token)
            self.world.git(who, "add", f"code/{token}.txt")
            done, _, after, live = self.act(who, "commit", "-q", "-m", token, SNAPVER_FAULT=point)
            if done.ok:
                self.record(after, live)
        else:
            done, before, after, _ = self.act(who, "checkout", "-q", self.pick(who, i), SNAPVER_FAULT=point)
            # The hook may have run and died halfway also when HEAD's commit stayed the same (a
            # tag at HEAD detaches it): the journal says, as `snapver doctor` reads it. Until
            # `doctor --repair` finishes it, the lake rightly stays where the kill left it.
            if before != after or not self.world.snapver(who, "doctor", quiet=True).ok:
                self.interrupted.add(who)

    @rule(who=WHO)
    def doctor_repair(self, who):
        who = self.who(who)
        done = self.world.snapver(who, "doctor", "--repair")
        if done.ok:
            self.interrupted.discard(who)

    # ------------------------------------------------------------ two lakes (issue 22)
    @rule(op=st.sampled_from(["push", "pull", "gc_far"]), who=WHO, i=PICK)
    def other_lake(self, op, who, i):
        """One rule for the three, so that they cost CI one step in ~23 (each is two
        interpreter starts and a send/receive); pull and gc on the second lake come after
        something was pushed there (before, it holds only R's own snapshot)."""
        if op == "gc_far" and self.far:
            self.gc_far()
        elif op == "pull" and self.far:
            self.pull(who, i)
        else:
            self.push(who, i)

    def push(self, who, i):
        who = self.who(who)
        target = self.pick(who, i)
        if target is None:
            return
        STATS["pushes"] += 1
        if self.world.snapver(who, "push", "two", "-q", target).ok:
            self.far |= set(self.world.lines(who, "rev-list", target, "--")) & set(self.expected)
            self.pushed_at = time.monotonic()

    def pull(self, who, i):
        """Pull a commit the second lake holds and who's Git knows (often one gc removed here,
        such as a commit an amend left behind), or one of who's refs."""
        who = self.who(who)
        options = self.world.known(who, sorted(self.far)) + self.targets(who)
        target = options[i % len(options)]
        STATS["pulls"] += 1
        if not self.world.snapver(who, "pull", "two", "-q", target).ok:
            return
        sha = self.world.rev(who, target)
        history = set(self.world.lines(who, "rev-list", target, "--"))
        snaps = self.world.snapshots()
        for c in sorted((history & self.far) | ({sha} & set(self.expected))):
            for v in VOLUMES:
                path = snaps.get((v, c))
                self.fail_if(path is None, "pulled-snapshot-missing",
                             f"pull two {target} said it succeeded, but this lake has no {v}@{c[:10]}")
                got = read_tree(path)
                self.fail_if(got != self.expected[c][v], "pulled-snapshot-wrong-data",
                             f"after pull two {target}, {v}@{c[:10]} holds {got}, the commit was made "
                             f"with {self.expected[c][v]}")

    def gc_far(self):
        # What arrived is past R's grace period (unreachable = "1s"): kept because unknown to R.
        time.sleep(max(0.0, self.pushed_at + 1.05 - time.monotonic()))
        self.world.snapver("R", "gc")

    # ------------------------------------------------------------ the promise
    @contextlib.contextmanager
    def quiet_lake(self):
        """Every present workspace's lock, as the hooks and the CLI take it: snapverd (the only
        thing running between steps) is not halfway through a snapshot while we look."""
        with contextlib.ExitStack() as stack:
            for who, there in self.present.items():
                if there:
                    git_dir = self.world.run(who, ["git", "rev-parse", "--absolute-git-dir"], quiet=True).out.strip()
                    stack.enter_context(lock.held(Path(git_dir) / "snapver" / "lock", wait=60,
                                                  what=f"{who}'s workspace (held by snapverd?)"))
            yield

    @invariant()
    def daemon_runs(self):
        trouble = self.world.daemon_trouble()
        self.fail_if(trouble is not None, "daemon-died", str(trouble))

    @invariant()
    def far_lake_keeps_what_it_was_sent(self):
        if not self.far:
            return
        snaps = self.world.snapshots("R")  # nothing runs on the second lake between steps
        for sha in sorted(self.far):
            for v in VOLUMES:
                STATS["far_snapshots_checked"] += 1
                path = snaps.get((v, sha))
                self.fail_if(path is None, "far-snapshot-missing",
                             f"commit {sha[:10]} was pushed to the second lake, which has no {v}@{sha[:10]}")
                got = read_tree(path)
                self.fail_if(got != self.expected[sha][v], "far-snapshot-wrong-data",
                             f"on the second lake {v}@{sha[:10]} holds {got}, the commit was made with "
                             f"{self.expected[sha][v]}")

    @invariant()
    def nothing_is_lost(self):
        with self.quiet_lake():
            self.check_first_lake()

    def check_first_lake(self):
        STATS["steps"] += 1
        reachable: dict[str, str] = {}
        for who, there in self.present.items():
            if there:
                for sha in self.world.lines(who, "rev-list", "--branches", "--tags", "--remotes", "HEAD", "--"):
                    reachable.setdefault(sha, who)
        snaps = self.world.snapshots()
        STATS["checks"] += 1
        for sha in sorted((set(reachable) | self.released) & set(self.expected)):
            why = f"reached from {reachable[sha]}" if sha in reachable else "released"
            for v in VOLUMES:
                STATS["snapshots_checked"] += 1
                path = snaps.get((v, sha))
                self.fail_if(path is None, "commit-snapshot-missing",
                             f"commit {sha[:10]} ({why}) has no snapshot of {v}")
                got = read_tree(path)
                self.fail_if(got != self.expected[sha][v], "commit-snapshot-wrong-data",
                             f"snapshot {v}@{sha[:10]} ({why}) holds {got}, the commit was made with "
                             f"{self.expected[sha][v]}")
        for name, lake in sorted(self.kept.items()):
            for v in VOLUMES:
                STATS["wips_checked"] += 1
                path = snaps.get((v, name))
                self.fail_if(path is None, "kept-wip-missing", f"announced kept wip {name} has no {v}")
                got = read_tree(path)
                self.fail_if(got != lake[v], "kept-wip-wrong-data",
                             f"kept wip {v}@{name} holds {got}, the lake held {lake[v]}")
        commits = {}
        for v, name in snaps:
            if "." not in name:
                commits.setdefault(name, set()).add(v)
        half = {sha[:10]: sorted(vs) for sha, vs in commits.items() if vs != set(VOLUMES)}
        self.fail_if(bool(half), "half-made-snapshot", f"commit snapshots of only some volumes: {half}")


def without(names: str) -> None:
    """SNAPVER_MODEL_WITHOUT=amend,squash: leave rules out (to look past a bug already found)."""
    for name in filter(None, (n.strip() for n in names.split(","))):
        setattr(GitFlows, name, precondition(lambda self: False)(getattr(GitFlows, name)))


without(os.environ.get("SNAPVER_MODEL_WITHOUT", ""))


def run_model(lake_args: list[str], drop_lake, examples: int, summary_name: str) -> None:
    GitFlows.lake_args = lake_args  # drop_lake makes the next sequence's lake (and may change them)
    GitFlows.drop_lake = staticmethod(drop_lake)
    config = settings(max_examples=examples, stateful_step_count=STEPS, deadline=None, database=None,
                      print_blob=True, suppress_health_check=list(HealthCheck))
    test = run_state_machine_as_test
    if os.environ.get("SNAPVER_MODEL_SEED"):
        test = hseed(int(os.environ["SNAPVER_MODEL_SEED"]))(run_state_machine_as_test)
    started = time.monotonic()
    try:
        test(GitFlows, settings=config)
    except (Flaky, FlakyStrategyDefinition) as e:
        # The lake keeps time (wip schedules by the minute): a replay may fail earlier or not at
        # all, and Hypothesis then cannot shrink. The shortest failing sequence it ran says it.
        shortest = "\n\n".join("\n".join(t) for t in FIRST.values() if t)
        raise AssertionError(f"the promise broke (replays differ: {e.__class__.__name__}); shortest "
                             f"failing sequences:\n{shortest}") from None
    finally:
        for world in WORLDS:  # a sequence that failed before its teardown could run
            world.tear_down()  # its snapverd stopped first
        figures = {**STATS, "examples_asked": examples, "steps_per_sequence": STEPS,
                   "seconds": round(time.monotonic() - started, 1),
                   "shortest_failing": {k: t for k, t in FIRST.items() if t}}
        out = Path(os.environ.get("SNAPVER_MODEL_SUMMARY") or Path(tempfile.gettempdir()) / summary_name)
        out.write_text(json.dumps(figures, indent=2) + "\n")
        brief = {k: v for k, v in figures.items() if k != "shortest_failing"}
        print(f"\nmodel-based test of Git flows: {json.dumps(brief)} (written to {out})")


# Longer than the suite's 15 min per test: 100 sequences take 5 min on a quiet machine and went
# past 15 on a loaded one (a timeout mid-step reads to Hypothesis as a flaky failure).
@pytest.mark.timeout(2700)
def test_git_flows_on_btrfs(btrfs_fs):
    lake, far = btrfs_fs / "model-lake", btrfs_fs / "model-far"  # two lakes on one filesystem

    def fresh():
        for path in (lake, far):
            if path.exists():
                delete_btrfs_tree(path)
            path.mkdir()

    fresh()
    GitFlows.far_args, GitFlows.far_url = ["--lake", str(far)], f"file://{far}"
    try:
        run_model(["--lake", str(lake)], fresh, EXAMPLES, "snapver-model-summary.json")
    finally:
        delete_btrfs_tree(lake)
        delete_btrfs_tree(far)


def test_git_flows_on_zfs(zfs_pool):
    from tests.fixtures.zfs import destroy_dataset

    lakes = []

    def fresh():
        """Datasets of their own for each sequence (the lake, and the second lake in the same
        pool): zfs-fuse lets go of a destroyed one late."""
        for old in lakes:
            destroy_dataset(old)
        lakes[:] = [f"{zfs_pool}/model{os.urandom(4).hex()}", f"{zfs_pool}/modelfar{os.urandom(4).hex()}"]
        for dataset in lakes:
            done = subprocess.run(["zfs", "create", "-o", "atime=off", dataset], capture_output=True, text=True)
            if done.returncode and "successfully created" in done.stderr:  # zfs-fuse, busy: mount it again
                where = subprocess.run(["zfs", "get", "-H", "-o", "value", "mountpoint", dataset],
                                       capture_output=True, text=True).stdout.strip()
                os.makedirs(where, exist_ok=True)
                done = subprocess.run(["zfs", "mount", dataset], capture_output=True, text=True)
            assert done.returncode == 0, done.stderr
        GitFlows.lake_args = ["--lake", lakes[0], "--backend", "zfs"]
        GitFlows.far_args, GitFlows.far_url = ["--lake", lakes[1], "--backend", "zfs"], f"file:///{lakes[1]}"

    fresh()
    examples = int(os.environ.get("SNAPVER_MODEL_ZFS_EXAMPLES") or max(1, EXAMPLES // 20))
    try:
        run_model(GitFlows.lake_args, fresh, examples, "snapver-model-summary-zfs.json")
    finally:
        for old in lakes:
            destroy_dataset(old)
