"""A power cut between a file's record and its move: the record must be on disk first.

A ``kill -9`` loses nothing the kernel already has; a power cut loses what was never
fsynced. SQLite in WAL mode with ``synchronous=NORMAL`` writes a commit to the WAL without
syncing it, and the file is then renamed into ``archive/``: if the rename reaches the disk
and the commit does not, the file sits in ``archive/`` with no record and no data set, and
nothing ever ingests it again. The daemon runs under strace here, and the order of its
system calls is checked: the claim (the rename into ``processing/``) is fsynced before
the record, and every WAL write the ingest thread made (the file's record) is fsynced
before that thread renames the file out of ``processing/``.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.ingest.ingest_files import good_csv
from tests.ingest.test_ingest_daemon import configure, finals, put, settled

SYSCALLS = "pwrite64,pwritev,pwritev2,write,fsync,fdatasync,rename,renameat,renameat2"
LINE = re.compile(r"^(\d+)\s+(?:<\.\.\. )?(\w+)(?: resumed>)?\((.*)")
# A path argument: a quoted name, after the directory fd it is relative to when there is
# one (``renameat(5</state/inbox/p>, "a.csv", ...)``, as ``strace -y`` shows it).
PATH_ARG = re.compile(r'(?:\d+<([^>]*)>,\s*)?"([^"]*)"')


def _strace_works(tmp_path: Path) -> bool:
    if shutil.which("strace") is None:
        return False
    out = tmp_path / "probe.log"
    probe = subprocess.run(["strace", "-f", "-o", str(out), "true"], capture_output=True,
                           check=False)
    return probe.returncode == 0 and out.exists()


def unsafe_moves(trace: str) -> tuple[list[str], int]:
    """(the moves out of processing/ that a power cut could turn into a lost file, how
    many moves there were). A move is safe when, before it, the thread that makes it has
    fsynced every WAL write it made (the file's record), and the claim of the file (its
    rename into processing/) was made durable (its folder fsynced) before that WAL sync."""
    dirty: dict[str, bool] = {}
    wal_synced_at: dict[str, int] = {}
    claimed: dict[str, int | None] = {}     # processing path -> when its folder was synced
    bad: list[str] = []
    moves = 0
    for n, raw in enumerate(trace.splitlines()):
        m = LINE.match(raw)
        if not m or "resumed>" in raw:
            continue
        tid, call, args = m.groups()
        first = args.split(",", 1)[0]
        wal = "-wal>" in first
        paths = [os.path.join(d, name) if d else name for d, name in PATH_ARG.findall(args)]
        if call.startswith(("pwrite", "write")) and wal:
            dirty[tid] = True
        elif call in ("fsync", "fdatasync") and wal:
            dirty[tid] = False
            wal_synced_at[tid] = n
        elif call in ("fsync", "fdatasync") and "/processing/" in first:
            for path, synced in claimed.items():
                if synced is None:
                    claimed[path] = n
        elif call.startswith("rename") and len(paths) == 2 and "/inbox/" in paths[0] \
                and "/processing/" in paths[1]:
            claimed[paths[1]] = None
        elif call.startswith("rename") and len(paths) == 2 and "/processing/" in paths[0] \
                and ("/archive/" in paths[1] or "/rejected/" in paths[1]):
            moves += 1
            if dirty.get(tid):
                bad.append(f"record not fsynced: {raw}")
            synced = claimed.get(paths[0])
            if synced is None or synced > wal_synced_at.get(tid, -1):
                bad.append(f"claim not fsynced before the record: {raw}")
    return bad, moves


@pytest.mark.timeout(120)
def test_the_record_is_on_disk_before_the_file_leaves_processing(state_root, start_daemon,
                                                                 tmp_path):
    if not _strace_works(tmp_path):
        pytest.skip("strace is not available (or may not trace) here")
    configure(state_root)
    trace = tmp_path / "strace.log"
    daemon = start_daemon(state_root, prefix=["strace", "-f", "-y", "-qq", "-e",
                                              f"trace={SYSCALLS}", "-o", str(trace)])
    # Signals go to the daemon itself: strace, the child the fixture started, would only
    # detach from it (and leave it running).
    pid = json.loads((state_root / "daemon.json").read_text())["pid"]
    try:
        put(state_root, "first.csv", good_csv(40))
        wait_for(lambda: settled(state_root, 1), timeout=60, what="the first file")
        put(state_root, "second.csv", good_csv(30, offset=40))
        put(state_root, "refused.csv", b"x,y,kind,target\n1,0.5,a,1\n2,1,b,0,7\n")
        wait_for(lambda: settled(state_root, 3), timeout=60, what="three files")
        assert finals(state_root) == {"archive": ["first.csv", "second.csv"],
                                      "rejected": ["refused.csv"]}
        os.kill(pid, signal.SIGTERM)
        assert daemon.proc.wait(timeout=30) == 0
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    daemon.stop()
    bad, moves = unsafe_moves(trace.read_text(errors="replace"))
    assert moves == 3, "the trace shows no move out of processing/"
    assert not bad, ("a file left processing/ while its record (or its claim) was not yet "
                     f"on disk: {bad}")
