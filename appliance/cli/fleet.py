"""``appliance status --fleet FILE``: every box of a fleet file in one table (or JSON), for
scripts and cron. The same fleet file, the same polls and the same identity checks as the
fleet console (``tui.fleet``: the console's HTTP client, which needs no Textual)."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime

import click

from tui.fleet.config import FleetBox, FleetFileError, load_fleet
from tui.fleet.poller import BoxState, FleetPoller, box_summary

NONE = "-"


def _span(seconds: float) -> str:
    if seconds < 60:
        return f"{seconds:.0f}s"
    if seconds < 3600:
        return f"{seconds / 60:.0f}m"
    if seconds < 86400 * 2:
        return f"{seconds / 3600:.0f}h"
    return f"{seconds / 86400:.0f}d"


def _ago(ts: str | None, now: datetime) -> str:
    if not ts:
        return NONE
    try:
        when = datetime.fromisoformat(ts.replace("Z", "+00:00"))
    except ValueError:
        return NONE
    when = when if when.tzinfo else when.replace(tzinfo=UTC)
    return _span(max(0.0, (now - when).total_seconds())) + " ago"


def _size(value: float | None) -> str:
    if value is None:
        return NONE
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if value < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return NONE  # pragma: no cover


def fleet_rows(states: list[BoxState], now: datetime) -> list[list[str]]:
    """The table: a row per pipeline of each box (a down box: one row with why)."""
    rows = []
    for s in states:
        state = s.state
        if s.since is not None:
            state += f" {_span(max(0.0, (now - s.since).total_seconds()))}"
        sample = s.system
        mem = f"{sample.memory_percent:.0f}%" if sample else NONE
        disk = _size(sample.disk_free_bytes) if sample else NONE
        if s.state != "up":
            rows.append([s.name, state, s.reason or NONE, *[NONE] * 6, mem, disk])
            continue
        if not s.pipelines:
            rows.append([s.name, state, "(no pipelines yet)", *[NONE] * 6, mem, disk])
        for p in s.pipelines:
            drift = p.drift_status or NONE
            share = (p.drift_importance_share if p.drift_importance_share is not None
                     else p.drift_share)
            if p.drift_status and share:
                drift += f" {share * 100:.0f}%"
            rows.append([
                s.name, state, p.name,
                f"v{p.production_version}" if p.production_version is not None else NONE,
                p.status, drift,
                f"{p.error_rate * 100:.1f}%" if p.error_rate is not None else NONE,
                f"{p.p99_ms:.1f}ms" if p.p99_ms is not None else NONE,
                _ago(p.last_ingestion, now), mem, disk,
            ])
    return rows


HEADER = ["box", "state", "pipeline", "model", "status", "drift", "errors", "p99",
          "last data", "mem", "disk free"]


def table_text(rows: list[list[str]]) -> str:
    widths = [max(len(r[i]) for r in [HEADER, *rows]) for i in range(len(HEADER))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip()
                     for r in [HEADER, *rows])


def _load(path: str) -> list[FleetBox] | None:
    """The fleet file's boxes, or None after saying why it can't be used."""
    try:
        return load_fleet(path)
    except FleetFileError as exc:
        click.echo(f"appliance: {exc}", err=True)
        return None


async def _poll(boxes: list[FleetBox], timeout: float) -> list[BoxState]:
    poller = FleetPoller(boxes, timeout=timeout)
    try:
        return await poller.poll_all()
    finally:
        await poller.stop()


def status_fleet(path: str, as_json: bool, timeout: float, url_given: bool = False) -> int:
    """Print the fleet; 0 when every box answered, 1 when one did not (for cron), 2 when
    the fleet file can't be used."""
    if url_given:
        click.echo("appliance: --fleet takes each box's URL from the fleet file; drop --url",
                   err=True)
        return 2
    boxes = _load(path)
    if boxes is None:
        return 2
    states = asyncio.run(_poll(boxes, timeout))
    for s in states:
        s.since = None  # one look: a box is down now, since when only a watcher knows
    now = datetime.now(UTC)
    if as_json:
        click.echo(json.dumps({"boxes": [box_summary(s, now) for s in states]}, indent=2))
    else:
        click.echo(table_text(fleet_rows(states, now)))
        events = sorted(((s.name, e) for s in states for e in s.events[:3]),
                        key=lambda item: item[1].ts, reverse=True)[:10]
        if events:
            click.echo("\nlatest events")
            for box, e in events:
                click.echo(f"  {e.ts[:19].replace('T', ' ')}  {box:<12} "
                           f"{e.pipeline or NONE:<12} {e.kind:<16} {e.message[:100]}")
    return 0 if all(s.state == "up" for s in states) else 1


def tui_fleet(path: str, refresh: float | None, single_box_flags: bool = False) -> int:
    """``appliance tui --fleet FILE``: the fleet console (every 5 s unless told)."""
    from tui.fleet.app import run

    if single_box_flags:
        click.echo("appliance: --fleet takes each box's URL and tokens from the fleet file; "
                   "drop --url, --token, --read-token and --pipeline", err=True)
        return 2
    boxes = _load(path)
    if boxes is None:
        return 2
    return run(boxes, refresh_seconds=refresh or 5.0)
