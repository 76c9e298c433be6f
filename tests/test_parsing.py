"""What snapver reads from a user, a peer or a name, and its retention plan, tested in-process:
none of it touches a filesystem, so each property runs hundreds of examples in a second,
where the same through a whole lake (test_bad_input, test_daemon, test_gc_safety) runs a few.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from snapver.backends.base import Snapshot
from snapver.errors import SnapverError
from snapver.names import (check_snapshot_name, check_volume, parse_snapshot_name, short,
                           wip_snapshot_name)
from snapver.peer import parse_url
from snapver.provision import parse_size
from snapver.retention import Policy, Schedule, parse_duration, plan

NOW = datetime(2026, 11, 30, 12, 0, tzinfo=timezone.utc)
SHAS = st.text("0123456789abcdef", min_size=40, max_size=40)


# ------------------------------------------------------------------ sizes and durations

@pytest.mark.parametrize("text, size", [("512M", 512 * 2**20), ("20G", 20 * 2**30), ("1T", 2**40),
                                        ("1048576", 2**20), ("1.5G", int(1.5 * 2**30)), ("2GiB", 2 * 2**30),
                                        (" 64k ", 64 * 1024)])
def test_sizes(text, size):
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "G", "-1G", "0", "12X", "1e", "nan", "inf", "-inf", "1G2"])
def test_sizes_refused(text):
    with pytest.raises(SnapverError, match="is not a size"):
        parse_size(text)


@given(st.integers(1, 2**50))
def test_a_number_of_bytes_is_itself(n):
    assert parse_size(str(n)) == n


@pytest.mark.parametrize("text, seconds", [("30s", 30), ("10m", 600), ("1h", 3600), ("14d", 14 * 86400),
                                           ("1w", 7 * 86400), ("1y", 365 * 86400)])
def test_durations(text, seconds):
    assert parse_duration(text) == timedelta(seconds=seconds)


@pytest.mark.parametrize("text", ["0d", "d", "1", "1.5h", "1h30m", "-1d", "1 d", "1D"])
def test_durations_refused(text):
    with pytest.raises(SnapverError, match="is not a duration"):
        parse_duration(text)


# ------------------------------------------------------------------ names

@given(SHAS, st.datetimes(min_value=datetime(2000, 1, 1), max_value=datetime(2100, 1, 1)))
def test_a_wip_name_says_its_commit_and_time(sha, when):
    when = when.replace(tzinfo=timezone.utc)
    name = wip_snapshot_name(sha, when)
    assert parse_snapshot_name(name) == (sha, "wip", when)
    assert check_snapshot_name(name) == name and short(name) == sha[:10] + name[40:]
    assert parse_snapshot_name(sha) == (sha, "commit", None) and short(sha) == sha[:10]


@given(st.text(max_size=60))
def test_only_names_snapver_makes_are_snapshot_names(text):
    if parse_snapshot_name(text) is None:
        with pytest.raises(SnapverError, match="is not a snapshot name snapver makes"):
            check_snapshot_name(text)
    else:
        assert text[:40] == parse_snapshot_name(text)[0]


@given(st.text(max_size=70))
def test_a_volume_name_is_a_plain_folder_name(text):
    try:
        check_volume(text)
    except SnapverError as e:
        assert "is not a valid volume name" in str(e)
    else:
        assert 1 <= len(text) <= 63 and "/" not in text and not text.startswith((".", "-")) and text.isascii()


# ------------------------------------------------------------------ remote URLs

@pytest.mark.parametrize("url, scheme, lake, host, user, port", [
    ("file:///srv/lake", "file", "/srv/lake", None, None, None),
    ("file:///tank/lake", "file", "/tank/lake", None, None, None),
    ("ssh://backup/tank/lake", "ssh", "/tank/lake", "backup", None, None),
    ("ssh://ada@backup.example.com:2222/srv/lake", "ssh", "/srv/lake", "backup.example.com", "ada", 2222),
    ("ssh://[::1]/srv/lake", "ssh", "/srv/lake", "[::1]", None, None),
])
def test_remote_urls(url, scheme, lake, host, user, port):
    u = parse_url(url)
    assert (u.scheme, u.lake, u.host, u.user, u.port) == (scheme, lake, host, user, port)


@pytest.mark.parametrize("url", [
    "ssh://-oProxyCommand=touch%20x/lake",  # an ssh option in the host's place
    "ssh://-x@host/lake", "ssh://host/-lake", "ssh://host/a/../b", "ssh://host/a//b", "ssh://host",
    "ssh://ada:secret@host/lake", "ssh://host:99999/lake", "file://host/lake", "http://host/lake",
    "/srv/lake", "file:///srv/lake with space", "", "ssh://host/lake;rm",
])
def test_remote_urls_refused(url):
    with pytest.raises(SnapverError):
        parse_url(url)


# ------------------------------------------------------------------ wip schedules

@pytest.mark.parametrize("text", ["1h", "1d1h", "0m1h", "x", "1m1h,", "0", "1h1d;rm"])
def test_schedules_refused(text):
    with pytest.raises(SnapverError):
        Schedule.parse(text)


@given(st.lists(st.integers(0, 3 * 86400), min_size=1, max_size=40), st.sampled_from(
    ["1m1h", "1h1d", "1m1h,1h1d,1d1w", "5", "3,1h1d"]))
def test_a_schedule_keeps_the_newest_and_one_per_period(ages, text):
    schedule = Schedule.parse(text)
    times = [NOW - timedelta(seconds=a) for a in ages]
    kept = schedule.keep(times, NOW)
    newest = sorted(range(len(times)), key=lambda i: times[i], reverse=True)[:schedule.keep_newest]
    assert all(kept[i] for i in newest)
    for rule in schedule.rules:
        buckets: dict[int, list[int]] = {}
        for i, t in enumerate(times):
            if NOW - t <= rule.lasting:
                buckets.setdefault(int(t.timestamp() // rule.every.total_seconds()), []).append(i)
        for members in buckets.values():  # the oldest of each period (one of them, if tied) stands for it
            oldest = min(times[i] for i in members)
            assert any(kept[i] for i in members if times[i] == oldest)
    for i, t in enumerate(times):  # nothing else
        covered = i in newest or any(NOW - t <= r.lasting for r in schedule.rules)
        assert covered or not kept[i]


# ------------------------------------------------------------------ the retention plan

def snap(volume: str, name: str, age: timedelta) -> Snapshot:
    return Snapshot("p", volume, name, Path("/nowhere") / name, NOW - age, "m")


@settings(max_examples=200)
@given(st.data())
def test_the_plan_never_drops_what_must_stay(data):
    """Whatever the snapshots: what is protected, reachable, or in doubt stays; a safety wip
    stays within its own age; the newest wip of each line of work stays."""
    policy = Policy(unreachable=timedelta(days=30), wip=Schedule.parse(data.draw(st.sampled_from(["1m1h", "2"]))),
                    kept=timedelta(days=30))
    commits = data.draw(st.lists(SHAS, min_size=1, max_size=5, unique=True))
    snaps, rows = [], {}
    for _ in range(data.draw(st.integers(1, 25))):
        commit = data.draw(st.sampled_from(commits))
        age = timedelta(seconds=data.draw(st.integers(0, 90 * 86400)))
        volume = data.draw(st.sampled_from(["data", "models"]))
        if data.draw(st.booleans()):
            s = snap(volume, commit, age)
        else:
            s = snap(volume, wip_snapshot_name(commit, NOW - age), age)
            row = data.draw(st.sampled_from([None, {"kept": 1, "workspace": "w1"}, {"kept": 0, "workspace": "w1"},
                                             {"kept": 0, "workspace": "w2"}, {"kept": None, "workspace": None}]))
            if row is not None:
                rows[(volume, s.name)] = row
        if all((o.volume, o.name) != (s.volume, s.name) for o in snaps):  # names are unique per volume
            snaps.append(s)
    reachable = set(data.draw(st.lists(st.sampled_from(commits), max_size=3)))
    protected = {(s.volume, s.name): "release prod" for s in data.draw(st.lists(st.sampled_from(snaps), max_size=2))}
    doubt = data.draw(st.sampled_from([None, "clone /gone is missing"]))

    decisions = plan(snaps, reachable, protected, policy, NOW, rows=rows, doubt=doubt)
    assert sorted(d.snapshot.name + d.snapshot.volume for d in decisions) == \
        sorted(s.name + s.volume for s in snaps), "one decision per snapshot"
    kept = {(d.snapshot.volume, d.snapshot.name) for d in decisions if d.keep}
    for s in snaps:
        key, row = (s.volume, s.name), rows.get((s.volume, s.name))
        if key in protected:
            assert key in kept
        elif s.kind == "commit" and (s.commit in reachable or doubt or NOW - s.created <= policy.unreachable):
            assert key in kept, s
        elif s.kind == "wip" and (row is None or row.get("kept") is not False and row.get("kept") != 0) \
                and NOW - s.created <= policy.kept:
            assert key in kept, ("a safety wip within its age", s, row)
    lines: dict[tuple, Snapshot] = {}
    for s in snaps:
        if s.kind == "wip":
            line = (s.volume, s.commit, (rows.get((s.volume, s.name)) or {}).get("workspace"))
            if line not in lines or s.name > lines[line].name:
                lines[line] = s
    for s in lines.values():
        assert (s.volume, s.name) in kept, ("the newest wip of its line", s)
