"""Which snapshots to keep: the rules `snapver gc` and the daemon apply, as a thinner.

Every snapshot is kept unless a rule below proves it may go; in doubt, keep.

- Releases (and the sources of derived volumes) are never removed, nor what
  a pin that came with a received snapshot pins (received.py).
- Commit snapshots: one whose commit a branch, tag, remote-tracking ref,
  reflog entry or HEAD of any known clone or worktree of the project reaches
  is kept (clones.py). If any known clone is missing, moved, replaced,
  shallow or unreadable, nobody can prove a commit unreachable, so every
  commit snapshot is kept and the reason names that clone. Otherwise a
  snapshot of a commit nothing reaches is kept for `unreachable` (default
  30 days) after it was taken, then goes.
- A commit snapshot of a commit no clone on this lake knows (received from
  another lake, never fetched here) is kept: nothing here can prove it dead.
  `snapver gc --forget-unknown AGE` lets those older than AGE go.
- Safety wips, those taken before a checkout, restore or rebase replaced
  live data ("kept before ..."), are promises: no schedule thins them. Each
  ages out only after `kept` (default 30 days). A wip the catalog does not
  know (lost or rebuilt catalog, received from elsewhere) counts as one.
- The newest wip of every line of work (one volume, one commit the wip is
  named after, one workspace) is always kept, whatever its age.
- The other wips (daemon and `snapshot --wip`) are thinned by a schedule
  written as zfs-autobackup writes its thinner: `1m1h,1h1d,1d1w` keeps one
  per minute for an hour, one per hour for a day, one per day for a week; a
  bare number `N` keeps the newest N whatever their age. Periods are
  absolute (one per clock hour), so a snapshot kept today is still kept
  tomorrow while its rule lasts. A wip's time is the one in its name.
"""

from __future__ import annotations

import re
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from .errors import SnapverError
from .names import parse_snapshot_name

_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400, "y": 365 * 86400}
_DURATION = re.compile(r"(\d+)([smhdwy])")


def parse_duration(text: str) -> timedelta:
    """'30s', '10m', '1h', '14d', '1w', '1y' -> timedelta."""
    m = _DURATION.fullmatch(str(text).strip())
    if not m or int(m.group(1)) == 0:
        raise SnapverError(f"{text!r} is not a duration: use a number and s, m, h, d, w or y, e.g. 30s or 14d")
    return timedelta(seconds=int(m.group(1)) * _UNITS[m.group(2)])


@dataclass(frozen=True)
class Rule:
    every: timedelta
    lasting: timedelta


@dataclass(frozen=True)
class Schedule:
    keep_newest: int
    rules: tuple[Rule, ...]

    @classmethod
    def parse(cls, text: str) -> Schedule:
        keep, rules = 0, []
        for part in (p.strip() for p in str(text).split(",")):
            if part.isdigit():
                keep = max(keep, int(part))
                continue
            m = re.fullmatch(r"(\d+[smhdwy])(\d+[smhdwy])", part)
            if not m:
                raise SnapverError(
                    f"{part!r} in wip schedule {text!r} is not a rule: write EVERY+FOR like 1h1d "
                    "(one per hour for a day), or a number to keep the newest N"
                )
            rule = Rule(parse_duration(m.group(1)), parse_duration(m.group(2)))
            if rule.every > rule.lasting:
                raise SnapverError(f"{part!r}: the period must not be longer than how long it lasts")
            rules.append(rule)
        if not rules and not keep:
            raise SnapverError(f"wip schedule {text!r} keeps nothing: give at least one rule")
        return cls(keep, tuple(rules))

    def keep(self, times: list[datetime], now: datetime) -> list[bool]:
        """For each time (any order): whether the schedule keeps a snapshot taken then."""
        kept = [False] * len(times)
        newest_first = sorted(range(len(times)), key=lambda i: times[i], reverse=True)
        for i in newest_first[: self.keep_newest]:
            kept[i] = True
        for rule in self.rules:
            seen: set[int] = set()
            # Oldest first, so the snapshot that opened a period stays its representative.
            for i in reversed(newest_first):
                if now - times[i] > rule.lasting:
                    continue
                bucket = int(times[i].timestamp() // rule.every.total_seconds())
                if bucket not in seen:
                    seen.add(bucket)
                    kept[i] = True
        return kept


@dataclass(frozen=True)
class Policy:
    unreachable: timedelta = timedelta(days=30)
    wip: Schedule = Schedule.parse("1m1h,1h1d,1d1w")
    kept: timedelta = timedelta(days=30)  # how long a safety wip lives

    @classmethod
    def from_config(cls, doc: dict) -> Policy:
        default = cls()
        if not isinstance(doc, dict):
            raise SnapverError("[retention] must be a table with unreachable, wip and kept")
        for key, value in doc.items():
            if key not in ("unreachable", "wip", "kept"):
                raise SnapverError(f"[retention] {key} is not a setting: the settings are unreachable, wip, kept")
            if not isinstance(value, str) and not (key == "wip" and isinstance(value, int)
                                                   and not isinstance(value, bool)):
                raise SnapverError(f'[retention] {key} = {value!r} is not understood: write a string like "30d"')
        return cls(
            unreachable=parse_duration(doc["unreachable"]) if "unreachable" in doc else default.unreachable,
            wip=Schedule.parse(doc["wip"]) if "wip" in doc else default.wip,
            kept=parse_duration(doc["kept"]) if "kept" in doc else default.kept,
        )


UNKNOWN = "unknown commit (no known clone has it: received, or its clone is gone)"


@dataclass(frozen=True)
class Decision:
    snapshot: Any  # backends.base.Snapshot (retention is a leaf: no backends import)
    keep: bool
    reason: str


def plan(snapshots, reachable: set[str], protected: set[tuple[str, str]] | dict[tuple[str, str], str],
         policy: Policy, now: datetime, rows: dict | None = None, doubt: str | None = None,
         unknown: AbstractSet[str] = frozenset(), forget_unknown: timedelta | None = None) -> list[Decision]:
    """Keep or drop, with a reason, for every snapshot given (one project).

    rows: the catalog's rows by (volume, name), which say which wips are safety wips
    (`kept`) and which workspace took them; a wip without a row counts as a safety wip.
    doubt: why reachability is not complete (a clone that could not be read): every
    commit snapshot is then kept, with that reason.
    unknown: commits no clone on this lake knows (received, never fetched here): kept,
    unless forget_unknown is given and the snapshot arrived longer ago than that.
    """
    rows = rows or {}
    decisions = []
    wips: dict[str, list] = {}
    for s in snapshots:
        if (s.volume, s.name) in protected:
            # A dict says why each one is protected (release NAME, source of a derived volume).
            why = protected[(s.volume, s.name)] if isinstance(protected, dict) else "release"
            decisions.append(Decision(s, True, why))
        elif s.kind == "wip":
            wips.setdefault(s.volume, []).append(s)
        elif s.commit in reachable:
            decisions.append(Decision(s, True, "reachable commit"))
        elif doubt:
            decisions.append(Decision(s, True, f"not proven unreachable: {doubt}"))
        elif s.commit in unknown:
            if forget_unknown is not None and now - s.created > forget_unknown:
                decisions.append(Decision(s, False, f"unknown commit, forgotten (older than {forget_unknown})"))
            else:
                decisions.append(Decision(s, True, UNKNOWN))
        elif now - s.created <= policy.unreachable:
            decisions.append(Decision(s, True, "unreachable, within its grace period"))
        else:
            decisions.append(Decision(s, False, f"unreachable commit, older than {policy.unreachable}"))
    for group in wips.values():
        # A wip's time is the one in its name: names are the truth, and survive renames.
        times = {s.name: _wip_time(s.name) for s in group}
        newest: dict[tuple, Any] = {}
        for s in group:
            line = (s.commit, (rows.get((s.volume, s.name)) or {}).get("workspace"))
            if line not in newest or times[s.name] > times[newest[line].name]:
                newest[line] = s
        newest_names = {s.name for s in newest.values()}
        scheduled = []
        for s in group:
            row = rows.get((s.volume, s.name))
            if row is not None and row.get("kept") is not None and not row.get("kept"):
                scheduled.append(s)  # a daemon or manual wip
            elif s.name in newest_names:
                decisions.append(Decision(s, True, "newest wip of its line of work"))
            elif now - times[s.name] <= policy.kept:
                why = "kept before a change" if row is not None and row.get("kept") else \
                    "not known to the catalog, so kept as a safety wip"
                decisions.append(Decision(s, True, f"{why}, within its own age ({policy.kept})"))
            else:
                decisions.append(Decision(s, False, f"kept before a change, older than {policy.kept}"))
        for s, keep in zip(scheduled, policy.wip.keep([times[s.name] for s in scheduled], now)):
            if keep:
                decisions.append(Decision(s, True, "wip schedule"))
            elif s.name in newest_names:
                decisions.append(Decision(s, True, "newest wip of its line of work"))
            else:
                decisions.append(Decision(s, False, "thinned by the wip schedule"))
    return decisions


def _wip_time(name: str) -> datetime:
    parsed = parse_snapshot_name(name)
    if parsed is None or parsed[2] is None:  # backends list a wip only for a wip name
        raise ValueError(f"{name} is not a wip snapshot name")
    return parsed[2]
