"""Prometheus' naming conventions (prometheus.io, "Metric and label naming"), checked on an
exposition as the official parser (``prometheus_client.parser``) reads it."""

from __future__ import annotations

import re

from prometheus_client.parser import text_string_to_metric_families

NAME = re.compile(r"^[a-zA-Z_:][a-zA-Z0-9_:]*$")
LABEL = re.compile(r"^[a-zA-Z_][a-zA-Z0-9_]*$")
# Units that are not base units, or spelled so that the unit is not the last word.
NOT_BASE_UNITS = re.compile(
    r"_(milli|micro|nano)?(ms|us|ns|millis|milliseconds|microseconds|nanoseconds|minutes|"
    r"hours|days|kb|mb|gb|kilobytes|megabytes|gigabytes|percent|pct|fahrenheit)(_|$)")
# A name with any of these words measures time, so it ends in _seconds.
TIME_WORDS = re.compile(r"(^|_)(duration|latency|elapsed|age|timestamp)(_|$)")
SIZE_WORDS = re.compile(r"(^|_)(memory|size|disk)(_|$)")


def naming_problems(exposition: str, prefix: str = "appliance_") -> list[str]:
    """Every way the exposition's metric names break the conventions (empty: none)."""
    problems = []
    families = list(text_string_to_metric_families(exposition))
    if not families:
        return ["no metric families at all"]
    for f in families:
        name = f.name
        if not NAME.match(name):
            problems.append(f"{name}: not a valid metric name")
        if not name.startswith(prefix):
            problems.append(f"{name}: not under the application's prefix {prefix}")
        if NOT_BASE_UNITS.search(name):
            problems.append(f"{name}: a unit that is not a base unit (seconds, bytes, ratio, "
                            "celsius)")
        if TIME_WORDS.search(name) and not name.endswith("_seconds"):
            problems.append(f"{name}: measures time but does not end in _seconds")
        if SIZE_WORDS.search(name) and not name.endswith(("_bytes", "_ratio")):
            problems.append(f"{name}: measures a size but does not end in _bytes or _ratio")
        if f.type in ("histogram", "summary") and "duration" in name \
                and not name.endswith("_seconds"):
            problems.append(f"{name}: a histogram of durations not in _seconds")
        if f.type == "counter":
            if name.endswith("_total"):
                problems.append(f"{name}: the parser's counter name keeps _total twice")
            bad = {s.name for s in f.samples} - {f"{name}_total", f"{name}_created"}
            if bad:
                problems.append(f"{name}: counter samples not named {name}_total: {bad}")
        elif name.endswith("_total") or any(s.name.endswith("_total") for s in f.samples):
            problems.append(f"{name}: _total on a {f.type}, which is not a counter")
        if f.type == "unknown":
            problems.append(f"{name}: no TYPE")
        for s in f.samples:
            for label in s.labels:
                if not LABEL.match(label) or label.startswith("__"):
                    problems.append(f"{name}: label {label!r} is not a valid label name")
    return problems
