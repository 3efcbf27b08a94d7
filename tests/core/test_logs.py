"""Logs: one line per event on stderr, ``level event key=value``; syslog priorities when
stderr is the journal; library errors and crashed threads come through the same format."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

from tests.conftest import wait_for

LINE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d (debug|info|warning|error|critical) \S")

SCRIPT = textwrap.dedent("""
    import logging, threading, warnings
    from appliance.core import logs
    logs.setup("info")
    log = logging.getLogger("appliance.test")
    logs.event(log, logging.INFO, "ingested", pipeline="machines", rows=3000,
               msg="machines_01.csv: 3000 rows", none=None, keys=["a", "b"])
    log.debug("hidden")
    log.warning("two\\nlines")
    logging.getLogger("uvicorn.error").info("uvicorn chatter is hidden")
    logging.getLogger("uvicorn.error").error("uvicorn failed")
    try:
        1 / 0
    except ZeroDivisionError:
        log.exception("request_failed path=/x")
    t = threading.Thread(target=lambda: {}["missing"], name="worker")
    t.start(); t.join()
    warnings.warn("old API", DeprecationWarning, stacklevel=1)
    logs.set_level("debug")
    log.debug("now shown")
""")


def run_script(tmp_path: Path, journal: str | None) -> list[str]:
    err = tmp_path / "stderr.txt"
    env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
    with open(err, "wb") as f:
        if journal == "match":
            st = os.fstat(f.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        elif journal == "other":
            env["JOURNAL_STREAM"] = "1:2"  # inherited, but stderr was redirected elsewhere
        subprocess.run([sys.executable, "-W", "always", "-c", SCRIPT], stderr=f, env=env,
                       check=True, timeout=60)
    return err.read_text().splitlines()


def test_one_line_per_event_with_level_and_fields(tmp_path):
    lines = run_script(tmp_path, journal=None)
    assert all(LINE.match(line) for line in lines), lines
    text = "\n".join(lines)
    assert ("info ingested pipeline=machines rows=3000 msg=\"machines_01.csv: 3000 rows\" "
            "keys=a,b") in text
    assert "none=" not in text and "hidden" not in text
    assert "warning two\\nlines" in text
    assert "error uvicorn failed" in text
    crash = next(line for line in lines if "request_failed" in line)
    assert crash.split(" ", 2)[1] == "error" and 'exc="Traceback' in crash
    assert "ZeroDivisionError" in crash
    thread = next(line for line in lines if "thread_crashed" in line)
    assert "thread=worker" in thread and "KeyError" in thread
    assert any("warning" in line and "DeprecationWarning: old API" in line for line in lines)
    assert lines[-1].endswith("debug now shown")
    assert len(lines) == 7


def test_journal_priorities_when_stderr_is_the_journal(tmp_path):
    lines = run_script(tmp_path, journal="match")
    assert lines[0].startswith("<6>info ingested ")
    assert any(line.startswith("<4>warning two") for line in lines)
    assert any(line.startswith("<3>error request_failed") for line in lines)
    assert lines[-1] == "<7>debug now shown"
    # The journal stamps the time itself.
    assert not any(LINE.match(line) for line in lines)


def test_an_inherited_journal_stream_is_not_trusted(tmp_path):
    lines = run_script(tmp_path, journal="other")
    assert all(LINE.match(line) for line in lines), lines


def test_the_daemon_logs_server_errors_in_the_same_format(state_root, start_daemon):
    daemon = start_daemon(state_root)
    host, port = daemon.url.removeprefix("http://").split(":")
    with socket.create_connection((host, int(port)), timeout=5) as conn:
        conn.sendall(b"NOT HTTP AT ALL\r\n\r\n")  # uvicorn answers 400 and logs a warning
        conn.recv(1000)
    wait_for(lambda: "Invalid HTTP request" in daemon.log(), timeout=10,
             what="uvicorn's warning")
    assert daemon.stop() == 0
    lines = daemon.log().splitlines()
    assert lines and all(LINE.match(line) for line in lines), lines
    assert any(re.search(r" warning Invalid HTTP request received", line) for line in lines)
