"""Files that once stopped ingestion for good, through the real daemon: a Parquet footer that
declares 2^63 items in a few bytes, a file that kills the process every time it is read, a
gzip bomb on a small disk, and a box out of file descriptors. Each must end with a reason
(or wait, when the fault is the box's), and the files behind it must still be taken."""

from __future__ import annotations

import json
import resource
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.conftest import wait_for
from tests.ingest.ingest_files import good_csv
from tests.ingest.test_ingest_daemon import (
    configure,
    finals,
    ingestions,
    mount_tmpfs,
    put,
    settled,
)
from tests.ingest.test_ingest_faults import gzip_bomb
from tests.ingest.test_parquet_footer import EIGHTEEN_BYTES


def reason(root: Path, name: str, pipeline: str = "p") -> dict:
    return json.loads((root / "rejected" / pipeline / f"{name}.reason.json").read_text())


def test_an_eighteen_byte_parquet_file_does_not_stop_ingestion(state_root, start_daemon):
    configure(state_root)
    daemon = start_daemon(state_root)
    put(state_root, "tiny.parquet",
        b"PAR1" + EIGHTEEN_BYTES + len(EIGHTEEN_BYTES).to_bytes(4, "little") + b"PAR1")
    put(state_root, "after.csv", good_csv())
    wait_for(lambda: settled(state_root, 2), timeout=20, what="both files")
    assert finals(state_root) == {"archive": ["after.csv"], "rejected": ["tiny.parquet"]}
    why = reason(state_root, "tiny.parquet")
    assert why["code"] == "unparseable" and "claims more items" in why["message"], why
    assert {r["file_name"]: r["status"] for r in ingestions(daemon)} == {
        "tiny.parquet": "rejected", "after.csv": "accepted"}


# --- a file the daemon dies on -------------------------------------------------------------

def start_to_death(root: Path, timeout: float = 60) -> int:
    """Start the daemon and wait for it to die (it may die before it says where it listens,
    recovering what it was ingesting); its exit status."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "appliance", "run", "--state-dir", str(root), "--port", "0"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        return proc.wait(timeout=timeout)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def db_events(root: Path, kind: str) -> list[tuple[str, dict]]:
    with sqlite3.connect(root / "appliance.db") as conn:
        rows = conn.execute("SELECT message, details_json FROM events WHERE kind = ? "
                            "ORDER BY id", [kind]).fetchall()
    return [(message, json.loads(details or "{}")) for message, details in rows]


def test_a_file_the_daemon_dies_on_twice_is_refused_and_the_rest_goes_on(
        state_root, start_daemon, monkeypatch):
    configure(state_root)
    # Every start dies (SIGKILL, as the kernel's OOM killer does) once killer.csv is converted.
    monkeypatch.setenv("APPLIANCE_TEST_CRASH_AT", "converted:killer.csv")
    first = start_daemon(state_root)
    put(state_root, "killer.csv", good_csv(30))
    wait_for(lambda: first.proc.poll() is not None, timeout=30, what="the first death")
    assert first.proc.returncode == -signal.SIGKILL
    put(state_root, "after.csv", good_csv(20, offset=100))
    # The next start takes the claimed file again first, and dies on it again.
    assert start_to_death(state_root) == -signal.SIGKILL
    assert [m for m, _ in db_events(state_root, "ingest_interrupted")] == [
        "killer.csv: the daemon stopped while ingesting it (out of memory, a crash or a kill), "
        "1 time(s); it is taken again, and refused once that happens 2 times"]
    # The third start refuses it before reading it, and stays up for the files behind it.
    third = start_daemon(state_root)
    wait_for(lambda: settled(state_root, 2), timeout=30, what="both files")
    assert finals(state_root) == {"archive": ["after.csv"], "rejected": ["killer.csv"]}
    why = reason(state_root, "killer.csv")
    assert why["code"] == "crashed_twice" and why["details"] == {"crashes": 2}, why
    assert "stopped 2 times while ingesting it" in why["message"]
    assert third.proc.poll() is None and third.get("/health").status_code == 200

    def attempts_left() -> int:
        with sqlite3.connect(state_root / "appliance.db") as conn:
            return conn.execute("SELECT COUNT(*) FROM ingest_attempts").fetchone()[0]

    # A file's attempts are forgotten just after it reaches its final folder (which is what
    # `settled` sees): give that last write its moment on a loaded box.
    wait_for(lambda: attempts_left() == 0, timeout=10, what="the attempts to be forgotten")


# --- a gzip bomb on a small disk -----------------------------------------------------------

@pytest.fixture
def small_disk(tmp_path):
    mnt = tmp_path / "disk"
    mount_tmpfs(mnt, "48m")
    yield mnt
    subprocess.run(["umount", "-l", str(mnt)], capture_output=True)


def test_a_gzip_bomb_never_fills_a_small_disk_and_is_refused(small_disk, start_daemon):
    root = small_disk / "state"
    root.mkdir()
    configure(root)
    text = (root / "appliance.toml").read_text()
    (root / "appliance.toml").write_text(
        text.replace("max_file_mb = 1", "max_file_mb = 1000")
            .replace("min_free_mb = 0", "min_free_mb = 8"))
    daemon = start_daemon(root)
    lowest = [shutil.disk_usage(small_disk).free]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            lowest[0] = min(lowest[0], shutil.disk_usage(small_disk).free)
            time.sleep(0.002)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        bomb = gzip_bomb(200)                       # 200 MB of CSV on a 48 MB disk
        put(root, "bomb.csv.gz", bomb)
        wait_for(lambda: (root / "rejected/p/bomb.csv.gz").exists(), timeout=20,
                 what="the bomb refused")
    finally:
        done.set()
        sampler.join()
    why = reason(root, "bomb.csv.gz")
    assert why["code"] == "no_room" and why["details"]["times"] == 2, why
    assert lowest[0] >= 8 * 1024 * 1024, f"the disk fell to {lowest[0]} bytes free"
    assert len(db_events(root, "waiting_for_space")) == 1
    put(root, "after.csv", good_csv())
    wait_for(lambda: settled(root, 2), timeout=20, what="the file after it")
    assert finals(root) == {"archive": ["after.csv"], "rejected": ["bomb.csv.gz"]}
    assert daemon.proc.poll() is None


# --- out of file descriptors -----------------------------------------------------------------

def test_out_of_file_descriptors_the_file_waits_and_is_taken_after(state_root, start_daemon):
    configure(state_root)
    daemon = start_daemon(state_root)
    put(state_root, "first.csv", good_csv())
    wait_for(lambda: settled(state_root, 1), timeout=20, what="the first file")
    pid = daemon.proc.pid
    limits = resource.prlimit(pid, resource.RLIMIT_NOFILE)
    # Every new file descriptor of the daemon fails with EMFILE (0, 1, 2 are taken).
    resource.prlimit(pid, resource.RLIMIT_NOFILE, (3, limits[1]))
    try:
        put(state_root, "later.csv", good_csv(20, offset=100))
        deferred = wait_for(lambda: db_events(state_root, "ingest_deferred"), timeout=20,
                            what="the file deferred")
        time.sleep(2.5)                             # retried every rescan (1 s): still waits
        assert not (state_root / "rejected/p/later.csv").exists()
        assert len(db_events(state_root, "ingest_deferred")) == 1
    finally:
        resource.prlimit(pid, resource.RLIMIT_NOFILE, limits)
    message, details = deferred[0]
    assert "later.csv" in message and "file descriptors" in message
    assert details["fault"] == "no_fds"
    wait_for(lambda: settled(state_root, 2), timeout=20, what="the file once fds are back")
    assert finals(state_root) == {"archive": ["first.csv", "later.csv"], "rejected": []}
    assert {r["file_name"]: r["status"] for r in ingestions(daemon)} == {
        "first.csv": "accepted", "later.csv": "accepted"}
