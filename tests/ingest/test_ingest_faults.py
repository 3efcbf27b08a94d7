"""Faults of the box, not the file, in process: a gzip bomb against a disk with little room,
the process out of file descriptors, out of memory. A file is never refused for the box's
fault; one that may be at fault (it needs more room or memory than there is) is taken again
once and refused the second time, with a reason."""

from __future__ import annotations

import gzip
import resource
import threading
import zlib

import polars as pl
import pytest

from appliance.ingest.faults import os_error_in
from tests.ingest.ingest_files import good_csv
from tests.ingest.test_ingest_files import Harness

MB = 1024 * 1024


@pytest.fixture
def h(tmp_path):
    root = tmp_path / "state"
    root.mkdir()
    harness = Harness(root)
    harness.requeued = []
    harness.ingester.on_requeued = harness.requeued.append
    yield harness
    harness.store.close()


def gzip_bomb(decompressed_mb: int) -> bytes:
    """A valid .csv.gz of the pipeline's columns that decompresses to this many MB."""
    z = zlib.compressobj(9, zlib.DEFLATED, 31)  # gzip framing
    rows = b"1,0.5,a,1\n" * (MB // 10)
    parts = [z.compress(b"x,y,kind,target\n")]
    parts += [z.compress(rows) for _ in range(decompressed_mb)]
    return b"".join([*parts, z.flush()])


def events(h, kind: str) -> list:
    return [e for e in h.store.events() if e.kind == kind]


def test_a_gzip_bomb_stops_at_half_the_room_and_is_refused_the_second_time(h):
    h.settings.ingest.max_file_mb = 1000          # not what stops it here
    h.settings.ingest.min_free_mb = 4
    free = 24 * MB                                # 20 MB above the floor: a 10 MB budget
    h.ingester.free_bytes = lambda: free
    bomb = gzip_bomb(40)
    assert len(bomb) < 200_000

    # First time: stopped once the copy passes 10 MB, back in the inbox, held, said so.
    assert h.ingester.process(h.claim("bomb.csv.gz", bomb), "p") is None
    back = h.state.inbox / "p" / "bomb.csv.gz"
    assert h.requeued == [back] and back.read_bytes() == bomb
    waiting = events(h, "waiting_for_space")
    assert len(waiting) == 1 and "bomb.csv.gz" in waiting[0].message
    assert "ingest.min_free_mb" in waiting[0].message
    over = waiting[0].details["decompressed_bytes_over"]
    assert 10 * MB < over <= 11 * MB, over
    assert h.store.ingestions("p") == [] and h.leftovers() == []

    # Second time: refused with its reason, not sent back again.
    out = h.process("bomb.csv.gz", bomb)
    assert (out.record.status, out.record.code) == ("rejected", "no_room"), out.record.reason
    assert out.final_path == h.state.rejected / "p" / "bomb.csv.gz"
    reason = h.reason(out)
    assert reason["details"]["times"] == 2 and "free space" in reason["message"]
    assert h.requeued == [back] and h.leftovers() == []

    # A good file of the same size on the same disk is taken, and a good .csv.gz too.
    assert h.process("fine.csv", good_csv()).record.status == "accepted"
    assert h.process("fine.csv.gz", gzip.compress(good_csv(20, offset=50))).record.status \
        == "accepted"


def test_room_freed_between_the_two_attempts_lets_a_big_file_through(h):
    h.settings.ingest.max_file_mb = 1000
    h.settings.ingest.min_free_mb = 0
    free = {"bytes": 4 * MB}
    h.ingester.free_bytes = lambda: free["bytes"]
    content = gzip.compress(good_csv(120_000))    # about 2.6 MB of CSV
    assert h.ingester.process(h.claim("big.csv.gz", content), "p") is None
    free["bytes"] = 100 * MB
    out = h.process("big.csv.gz", content)
    assert out.record.status == "rejected" and out.record.code == "too_many_rows"
    # ... ended by the file's own fault (max_rows 50000), not for room: the count is gone.
    assert h.store.attempt("p", "no_room", out.record.sha256) == (0, {})


def test_a_full_disk_in_polars_counts_like_the_bomb(h, monkeypatch):
    def full(self, *a, **kw):
        # What Polars raises: an OSError with no errno, the OS error only in its text.
        raise OSError("No space left on device (os error 28): /state/datasets/p/x")

    monkeypatch.setattr(pl.LazyFrame, "sink_parquet", full)
    assert h.ingester.process(h.claim("waits.csv", good_csv()), "p") is None
    out = h.process("waits.csv", good_csv())
    assert out.record.code == "no_room" and out.record.details["times"] == 2


class FdsExhausted:
    """The process at its limit of open files: every open fails with EMFILE while inside."""

    def __enter__(self):
        self.limits = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (3, self.limits[1]))
        return self

    def __exit__(self, *exc):
        resource.setrlimit(resource.RLIMIT_NOFILE, self.limits)


@pytest.mark.parametrize(("name", "content"), [
    ("fds.csv", good_csv(30)),
    ("fds.csv.gz", gzip.compress(good_csv(30), mtime=0)),
], ids=["csv", "csv.gz"])   # ids, not bytes: pytest-xdist workers must collect the same names
def test_out_of_file_descriptors_is_the_box_fault_never_the_file(h, name, content):
    h.process("first.csv", good_csv(10, offset=500))
    for attempt in range(3):                     # as often as it takes, never refused
        claimed = h.claim(name, content)
        with FdsExhausted():
            assert h.ingester.process(claimed, "p") is None, f"attempt {attempt + 1}"
        back = h.state.inbox / "p" / name
        assert back.read_bytes() == content
        back.unlink()
        assert [r.file_name for r in h.store.ingestions("p")] == ["first.csv"]
    deferred = events(h, "ingest_deferred")
    assert len(deferred) == 1, "said once per file, not at every retry"
    assert "file descriptors" in deferred[0].message and name in deferred[0].message
    assert deferred[0].details["fault"] == "no_fds"
    assert h.leftovers() == []
    out = h.process(name, content)
    assert out.record.status == "accepted", out.record.reason


def test_out_of_memory_is_retried_once_then_refused(h, monkeypatch):
    def oom(self, *a, **kw):
        raise MemoryError()

    monkeypatch.setattr(pl.LazyFrame, "sink_parquet", oom)
    assert h.ingester.process(h.claim("big.csv", good_csv()), "p") is None
    assert "memory" in events(h, "ingest_deferred")[0].message
    out = h.process("big.csv", good_csv())
    assert (out.record.status, out.record.code) == ("rejected", "out_of_memory")
    assert "split it" in out.record.reason


@pytest.mark.parametrize(("text", "errno_"), [
    ("Too many open files (os error 24): /state/processing/p/x.csv", 24),
    ("Too many open files in system (os error 23)", 23),
    ("Cannot allocate memory (os error 12)", 12),
    ('called `Result::unwrap()` on an `Err` value: Os { code: 28, kind: StorageFull, '
     'message: "No space left on device" }', 28),
    # A value quoted from the file never passes for a fault of the box.
    ("could not parse `Too many open files (os error 24)` as dtype `i64` at column 'x'", None),
    ("Permission denied (os error 13): /x", None),
])
def test_os_errors_in_polars_messages(text, errno_):
    found = os_error_in(text)
    assert (found.errno if found else None) == errno_


def test_a_stop_that_leaves_a_file_in_hand_is_not_counted_as_a_crash(h, monkeypatch):
    """The daemon stops without waiting for a long ingestion (it outlived the stop budget):
    the start is forgotten, so two restarts during big files never refuse them."""
    entered, release = threading.Event(), threading.Event()
    real = pl.LazyFrame.sink_parquet

    def slow(self, *a, **kw):
        entered.set()
        release.wait(10)
        return real(self, *a, **kw)

    monkeypatch.setattr(pl.LazyFrame, "sink_parquet", slow)
    claimed = h.claim("long.csv", good_csv())
    worker = threading.Thread(target=h.ingester.process, args=(claimed, "p"))
    worker.start()
    assert entered.wait(10)
    assert h.store.attempt("p", "started", claimed.name)[0] == 1
    h.ingester.interrupted()
    assert h.store.attempt("p", "started", claimed.name) == (0, {})
    release.set()
    worker.join(10)
    assert h.store.ingestions("p")[0].status == "accepted"
