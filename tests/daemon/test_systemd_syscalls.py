"""The unit's system call filter lets the daemon lower its background threads' priority
(issue 19.9): ``~@resources`` denies setpriority and sched_setscheduler, so training ran
at serving's priority under systemd. Exactly those two are allowed again; the rest of
@resources stays denied."""

from __future__ import annotations

import subprocess

from tests.daemon.test_systemd import ANALYZE, needs_analyze, settings

NEEDED = {"setpriority", "sched_setscheduler"}  # appliance/core/threads.py


def _expand(item: str) -> set[str]:
    if not item.startswith("@"):
        return {item}
    out = subprocess.run([ANALYZE, "syscall-filter", "--no-pager", item],
                         capture_output=True, text=True, timeout=60, check=True).stdout
    calls: set[str] = set()
    for line in out.splitlines()[1:]:
        line = line.strip()
        if line and not line.startswith("#"):
            calls |= _expand(line)
    return calls


def allowed_calls() -> set[str]:
    """The calls the unit's SystemCallFilter= lines allow, merged as systemd does: the
    first line is an allow list; later lines add calls, or remove them when they start
    with `~`, in order."""
    lines = settings()["SystemCallFilter"]
    assert not lines[0].startswith("~"), "the first SystemCallFilter= must be an allow list"
    allowed: set[str] = set()
    for line in lines:
        deny = line.startswith("~")
        calls = set().union(*(_expand(i) for i in line.lstrip("~").split()))
        allowed = allowed - calls if deny else allowed | calls
    return allowed


@needs_analyze
def test_the_filter_allows_lowering_a_priority_and_nothing_else_of_resources():
    allowed = allowed_calls()
    assert allowed >= NEEDED, NEEDED - allowed
    resources = _expand("@resources")
    assert resources & allowed == NEEDED
    assert not _expand("@privileged") & allowed


def test_the_reallowing_line_comes_after_the_deny_list():
    """Without systemd-analyze: the order of the lines, which decides."""
    lines = settings()["SystemCallFilter"]
    deny = next(i for i, line in enumerate(lines) if "~" in line and "@resources" in line)
    again = [i for i, line in enumerate(lines)
             if not line.startswith("~") and set(line.split()) >= NEEDED]
    assert again and again[0] > deny, lines
    assert set(lines[again[0]].split()) == NEEDED
