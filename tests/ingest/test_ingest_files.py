"""Ingestion of real files, in process: each refusal with its code, the schema contract,
casts, duplicates, feedback files, odd names and hostile files. Property-based tests throw
arbitrary bytes and mangled CSV/Parquet files at the ingester: each must end in archive/ or
rejected/, and never as an internal error."""

from __future__ import annotations

import errno
import gzip
import hashlib
import io
import json
import os
import random
import stat
import threading
import time
from pathlib import Path

import polars as pl
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from appliance.core import StateDir, config
from appliance.ingest import InboxWatcher, Ingester, Outcome, safe_name
from appliance.ingest.parquet_footer import FooterError, read_footer
from appliance.store import Events, Store
from tests.conftest import wait_for
from tests.ingest.ingest_files import LIMITS, REFUSALS, good_csv, good_frame

KNOWN_CODES = {code for _, _, code in REFUSALS} | {"not_a_regular_file"}


class Harness:
    def __init__(self, root: Path, extra_config: str = "") -> None:
        (root / "appliance.toml").write_text(LIMITS + extra_config)
        self.settings = config.load(root)
        self.state = StateDir(root)
        self.state.create()
        self.store = Store.open(self.state.db)
        self.events = Events(self.store)
        self.accepted: list[str] = []
        self.ingester = Ingester(self.state, self.store, self.events, self.settings,
                                 on_accepted=lambda p, r: self.accepted.append(r.file_name))

    def claim(self, name: str, content: bytes, pipeline: str = "p") -> Path:
        folder = self.state.pipeline_dir(self.state.processing, pipeline)
        path = folder / f"{time.time_ns()}__{safe_name(name)}"
        path.write_bytes(content)
        return path

    def process(self, name: str, content: bytes, pipeline: str = "p") -> Outcome:
        out = self.ingester.process(self.claim(name, content, pipeline), pipeline)
        assert out is not None
        return out

    def reason(self, out: Outcome) -> dict:
        return json.loads(out.final_path.with_name(out.final_path.name + ".reason.json")
                          .read_text())

    def leftovers(self) -> list[str]:
        """Anything left in processing/ or half written in datasets/."""
        left = [p.name for p in self.state.processing.rglob("*") if p.is_file()]
        return left + [p.name for p in self.state.datasets.rglob(".*")]


def test_good_csv_becomes_a_typed_versioned_dataset(h):
    content = good_csv(50)
    out = h.process("good.csv", content)
    r = out.record
    assert (r.status, r.rows, r.columns, r.dataset_version) == ("accepted", 50, 4, 1)
    assert r.sha256 == hashlib.sha256(content).hexdigest() and r.size_bytes == len(content)
    assert r.dataset_path == "datasets/p/v000001.parquet"
    assert set(r.details["timings_ms"]) >= {"hash", "convert", "store"}
    assert r.duration_ms is not None and r.duration_ms > 0
    assert out.final_path == h.state.archive / "p" / "good.csv"
    assert out.final_path.read_bytes() == content
    data = pl.read_parquet(h.state.root / r.dataset_path)
    assert data.equals(good_frame(50))
    assert h.store.pipeline("p").schema == {
        "x": "Int64", "y": "Float64", "kind": "String", "target": "Int64"}
    assert h.accepted == ["good.csv"]
    assert h.leftovers() == []
    # The second version goes beside it, in the schema's types.
    out2 = h.process("more.csv", good_csv(10, offset=50))
    assert out2.record.dataset_version == 2
    assert h.store.rows_since("p", 0) == 60


@pytest.mark.parametrize(("name", "make", "code"), REFUSALS, ids=[c for _, _, c in REFUSALS])
def test_each_refusal_has_its_code_and_reason_file(h, name, make, code):
    h.process("first.csv", good_csv())
    content = make()
    out = h.process(name, content)
    assert (out.record.status, out.record.code) == ("rejected", code), out.record.reason
    assert out.final_path == h.state.rejected / "p" / name
    assert out.final_path.read_bytes() == content  # the original, untouched
    reason = h.reason(out)
    assert reason["code"] == code and name in reason["message"]
    assert isinstance(reason["details"], dict)
    assert reason["ingestion_id"] == out.record.id
    assert h.accepted == ["first.csv"]
    assert len(h.store.datasets("p")) == 1
    assert h.leftovers() == []


def test_refusals_say_where(h):
    h.process("first.csv", good_csv())
    by_name = {name: make for name, make, _ in REFUSALS}

    bad = h.reason(h.process("bad_value.csv", by_name["bad_value.csv"]()))
    assert bad["details"].items() >= {"column": "x", "row": 3, "line": 4, "value": "oops"}.items()
    assert "`x`" in bad["message"] and "row 3" in bad["message"] and "'oops'" in bad["message"]

    lossy = h.reason(h.process("lossy.parquet", by_name["lossy.parquet"]()))
    assert (lossy["details"]["column"], lossy["details"]["row"], lossy["details"]["value"]) \
        == ("x", 2, "2.5")

    latin = h.reason(h.process("latin1.csv", by_name["latin1.csv"]()))
    assert latin["details"]["line"] == 2 and latin["details"]["byte_offset"] == 25

    ragged = h.reason(h.process("ragged.csv", by_name["ragged.csv"]()))
    assert ragged["details"].items() >= {"line": 3, "fields": 6, "expected_fields": 4}.items()

    fmt = h.reason(h.process("report.xlsx", by_name["report.xlsx"]()))
    assert all(s in fmt["message"] for s in (".csv", ".csv.gz", ".parquet"))

    bomb = h.reason(h.process("bomb.parquet", by_name["bomb.parquet"]()))
    assert bomb["details"]["decoded_bytes"] > 20 * 1024 * 1024
    assert "ingest.max_uncompressed_mb" in bomb["message"]

    missing = h.reason(h.process("no_kind.csv", by_name["no_kind.csv"]()))
    assert missing["details"]["missing"] == ["kind"]

    # A semicolon-separated file is read as one (csv_separator = "auto"); with a separator
    # configured otherwise it is refused, saying which key to set (test_csv_dialects.py).
    semi = h.process("semicolons.csv", b"x;y;kind;target\n1;0.5;a;1\n")
    assert semi.record.status == "accepted", semi.record.reason


def test_bad_value_far_into_a_big_file_names_its_row(h):
    h.process("first.csv", good_csv())
    frame = good_frame(30_000).with_columns(pl.col("x").cast(pl.String))
    frame[25_000, "x"] = "12x"
    out = h.process("late.csv", frame.write_csv().encode())
    assert out.record.code == "bad_value"
    assert out.record.details.items() >= {"column": "x", "row": 25_001, "value": "12x"}.items()


def test_lossless_casts_extra_columns_and_null_targets(h):
    h.process("first.csv", good_csv())
    text = "x,y,kind,target,note\n3.0,1,a,1,hi\n4,2.5,b,,\n5,3,c,0,yo\n"
    out = h.process("later.csv", text.encode())
    r = out.record
    assert r.status == "accepted", r.reason
    assert r.rows == 2
    assert any("extra column(s) dropped: note" in w for w in r.warnings)
    assert any("1 rows with a null target were dropped" in w for w in r.warnings)
    data = pl.read_parquet(h.state.root / r.dataset_path)
    assert data.schema == pl.Schema(
        {"x": pl.Int64, "y": pl.Float64, "kind": pl.String, "target": pl.Int64})
    assert data["x"].to_list() == [3, 5] and data["y"].to_list() == [1.0, 3.0]
    # The same through Parquet: an integer-valued float column casts to the schema's Int64.
    pq = io.BytesIO()
    pl.DataFrame({"target": [1], "kind": ["z"], "x": [7.0], "y": [1]}).write_parquet(pq)
    r2 = h.process("later.parquet", pq.getvalue()).record
    assert r2.status == "accepted", r2.reason
    assert pl.read_parquet(h.state.root / r2.dataset_path).row(0) == (7, 1.0, "z", 1)


def test_first_file_types_come_from_the_whole_file_when_needed(h):
    rows = ["x,y,kind,target"] + [f"{i},{i},a,{i % 2}" for i in range(12_000)] + ["2.5,1,b,1"]
    out = h.process("first.csv", ("\n".join(rows) + "\n").encode())
    assert out.record.status == "accepted", out.record.reason
    assert h.store.pipeline("p").schema["x"] == "Float64"
    assert any("inferred from the whole file" in w for w in out.record.warnings)


def test_csv_gz_and_parquet_are_taken_like_csv(h):
    out = h.process("a.csv.gz", gzip.compress(good_csv(40)))
    assert out.record.status == "accepted" and out.record.rows == 40
    pq = io.BytesIO()
    good_frame(5, offset=40).write_parquet(pq)
    out2 = h.process("b.parquet", pq.getvalue())
    assert out2.record.status == "accepted" and out2.record.rows == 5
    both = pl.concat([pl.read_parquet(h.state.root / r.dataset_path)
                      for r in (out.record, out2.record)])
    assert both.equals(good_frame(45))
    assert h.leftovers() == []


def test_duplicate_content_is_archived_not_ingested_again(h):
    h.process("a.csv", good_csv())
    out = h.process("same_again.csv", good_csv())
    assert out.record.status == "duplicate"
    assert "a.csv" in out.record.reason
    assert out.final_path == h.state.archive / "p" / "same_again.csv"
    assert len(h.store.datasets("p")) == 1 and h.accepted == ["a.csv"]
    # The same name again, different content: kept beside it, not overwritten.
    out2 = h.process("a.csv", good_csv(20, offset=7))
    assert out2.record.status == "accepted"
    # (its ingestion id before the suffix: a name costs the same however often it came)
    assert out2.final_path == h.state.archive / "p" / f"a.{out2.record.id}.csv"


def test_feedback_file_is_stored_as_outcomes_not_training_data(h):
    h.process("train.csv", good_csv())
    h.store.insert_predictions([("id-1", "p", time.time(), 1, "0.9", None),
                                ("id-2", "p", time.time(), 1, "0.1", None)])
    out = h.process("outcomes.csv", b"prediction_id,target\nid-1,1\nid-2,0\nid-9,1\nid-3,\n")
    r = out.record
    assert r.status == "feedback" and r.rows == 3 and r.dataset_version is None
    assert out.final_path == h.state.archive / "p" / "outcomes.csv"
    assert any("1 of 3 prediction ids are not in the prediction log" in w for w in r.warnings)
    assert any("1 rows without" in w for w in r.warnings)
    joined = h.store.feedback_joined("p")
    assert sorted((pid, outcome) for pid, _, _, _, outcome in joined) == [("id-1", 1),
                                                                           ("id-2", 0)]
    assert h.accepted == ["train.csv"]  # no training trigger
    assert len(h.store.datasets("p")) == 1
    kinds = [e.kind for e in h.store.events(pipeline="p")]
    assert kinds[0] == "feedback"
    # A bad outcome is refused like a bad value.
    bad = h.process("bad_outcomes.csv", b"prediction_id,target\nid-1,yes\n")
    assert (bad.record.code, bad.record.details["column"]) == ("bad_value", "target")


def test_odd_names_stay_inside_the_state_dir(h):
    names = ["with space.csv", "ünïcödé.csv", "new\nline.csv", "star*[?].csv", "-rf.csv",
             "..csv", "a" * 250 + ".csv", os.fsdecode(b"bad\xffbyte.csv"), "back\\slash.csv"]
    for i, name in enumerate(names):
        out = h.process(name, good_csv(5, offset=10 * i))
        assert out.record.status == "accepted", (name, out.record.reason)
        assert out.final_path.parent == h.state.archive / "p"
        out.record.file_name.encode("utf-8")  # storable, printable text
        assert out.record.file_name.isprintable()
        assert len(out.final_path.name.encode()) <= 200
    assert len(list((h.state.archive / "p").iterdir())) == len(names)
    assert sorted(p.name for p in h.state.root.iterdir()) == sorted(
        ["appliance.toml", "appliance.db", "appliance.db-shm", "appliance.db-wal", "token",
         "inbox", "processing", "archive", "rejected", "datasets", "models"])


def test_symlinks_and_fifos_are_refused_never_followed(h, tmp_path):
    secret = tmp_path / "secret.csv"
    secret.write_bytes(good_csv())
    folder = h.state.pipeline_dir(h.state.processing, "p")
    link = folder / f"{time.time_ns()}__link.csv"
    link.symlink_to(secret)
    out = h.ingester.process(link, "p")
    assert out is not None and out.record.code == "not_a_regular_file"
    assert out.final_path.is_symlink() and secret.read_bytes() == good_csv()
    assert out.record.sha256 is None  # never read through the link
    fifo = folder / f"{time.time_ns()}__pipe.csv"
    os.mkfifo(fifo)
    done = []
    t = threading.Thread(target=lambda: done.append(h.ingester.process(fifo, "p")))
    t.start()
    t.join(10)
    assert done, "the ingester blocked on a FIFO"
    assert done[0].record.code == "not_a_regular_file"
    device = folder / f"{time.time_ns()}__null.csv"
    try:
        os.mknod(device, 0o600 | stat.S_IFCHR, os.makedev(1, 3))  # like /dev/null
    except PermissionError:
        pass  # no CAP_MKNOD here: the symlink and the FIFO stand for it
    else:
        dev = h.ingester.process(device, "p")
        assert dev is not None and dev.record.code == "not_a_regular_file"
        assert stat.S_ISCHR(dev.final_path.lstat().st_mode)
    assert h.store.datasets("p") == []


def test_a_panic_in_the_parser_refuses_that_file_only(h, monkeypatch):
    real = pl.LazyFrame.sink_parquet

    def panic(self, *a, **kw):
        raise pl.exceptions.PanicException("index out of bounds")

    monkeypatch.setattr(pl.LazyFrame, "sink_parquet", panic)
    out = h.process("panics.csv", good_csv())
    assert out.record.status == "rejected" and out.record.code == "unparseable"
    assert "index out of bounds" in out.record.reason
    monkeypatch.setattr(pl.LazyFrame, "sink_parquet", real)
    assert h.process("fine.csv", good_csv(9)).record.status == "accepted"


def test_a_full_disk_sends_the_file_back_to_wait(h, monkeypatch):
    def full(self, *a, **kw):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(pl.LazyFrame, "sink_parquet", full)
    held = []
    h.ingester.on_requeued = held.append
    claimed = h.claim("waits.csv", good_csv())
    assert h.ingester.process(claimed, "p") is None
    back = h.state.inbox / "p" / "waits.csv"
    assert held == [back] and back.read_bytes() == good_csv()
    assert h.store.ingestions("p") == [] and h.leftovers() == []
    assert h.store.events(pipeline="p")[0].kind == "waiting_for_space"


def test_watcher_holds_files_below_the_free_space_floor(tmp_path):
    root = tmp_path / "state"
    root.mkdir()
    h = Harness(root, "")
    h.settings.ingest.min_free_mb = 100
    free = {"bytes": 50 * 1024 * 1024}
    taken: list[str] = []
    watcher = InboxWatcher(h.state, h.settings.ingest, lambda p, _: taken.append(p.name),
                           events=h.events, free_bytes=lambda: free["bytes"])
    watcher.start()
    try:
        for name in ("one.csv", "two.csv"):
            src = h.state.pipeline_dir(h.state.inbox, "p") / f".{name}.part"
            src.write_bytes(good_csv())
            os.replace(src, src.with_name(name))
        wait_for(lambda: [e for e in h.store.events() if e.kind == "waiting_for_space"],
                 timeout=10, what="the waiting event")
        time.sleep(1.0)  # many polls: still waiting, and said once
        assert taken == []
        assert sorted(p.name for p in (h.state.inbox / "p").iterdir()) == ["one.csv", "two.csv"]
        waiting = [e for e in h.store.events() if e.kind == "waiting_for_space"]
        assert len(waiting) == 1 and "ingest.min_free_mb" in waiting[0].message
        free["bytes"] = 500 * 1024 * 1024
        wait_for(lambda: len(taken) == 2, timeout=10, what="files taken once space is back")
        assert [e.kind for e in h.store.events()].count("space_available") == 1
    finally:
        watcher.stop()
        h.store.close()


def test_parquet_footer_agrees_with_polars(tmp_path):
    for i, frame in enumerate([good_frame(1), good_frame(300_000), pl.DataFrame({"a": [None]}),
                               pl.DataFrame({"s": ["x" * 50] * 1000, "n": list(range(1000))})]):
        path = tmp_path / f"{i}.parquet"
        frame.write_parquet(path, row_group_size=100_000)
        footer = read_footer(path)
        assert footer.num_rows == frame.height and footer.columns == frame.width
        assert footer.decoded_bytes >= frame.estimated_size() * 0.5


# --- property-based: nothing a file holds crashes the ingester ------------------------------

SUFFIXES = [".csv", ".csv.gz", ".parquet", ".txt"]


def _base_parquet() -> bytes:
    buf = io.BytesIO()
    good_frame(30).write_parquet(buf)
    return buf.getvalue()


BASE_CSV = good_csv(30)
BASE_PARQUET = _base_parquet()


@st.composite
def mangled(draw, base: bytes) -> bytes:
    data = bytearray(base)
    for _ in range(draw(st.integers(1, 6))):
        op = draw(st.sampled_from(["flip", "insert", "delete", "truncate", "dup"]))
        pos = draw(st.integers(0, max(len(data) - 1, 0)))
        if op == "flip" and data:
            data[pos] = draw(st.integers(0, 255))
        elif op == "insert":
            data[pos:pos] = draw(st.sampled_from(
                [b",", b'"', b"\n", b"\r\n", b"\x00", b"\xff\xfe", b"\xe2\x82", b",,,,", b'"a""b',
                 b"nan", b"-1e400", b"\t", b"9" * 30]))
        elif op == "delete":
            del data[pos:pos + draw(st.integers(1, 40))]
        elif op == "truncate":
            del data[pos:]
        elif op == "dup":
            data[pos:pos] = data[pos:pos + draw(st.integers(1, 200))]
    return bytes(data)


files = st.one_of(
    st.tuples(st.sampled_from(SUFFIXES), st.binary(max_size=400)),
    st.tuples(st.just(".csv"), mangled(BASE_CSV)),
    st.tuples(st.just(".csv.gz"), mangled(BASE_CSV).map(gzip.compress)),
    st.tuples(st.just(".csv.gz"), mangled(gzip.compress(BASE_CSV))),
    st.tuples(st.just(".parquet"), mangled(BASE_PARQUET)),
)


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    root = tmp_path_factory.mktemp("prop") / "state"
    root.mkdir()
    harness = Harness(root)
    harness.process("first.csv", good_csv())  # later files meet a fixed schema
    yield harness
    harness.store.close()


# HYP_N=2000 runs a deeper search by hand; the suite keeps 60 examples.
@settings(max_examples=int(os.environ.get("HYP_N", "60")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(files)
def test_any_bytes_end_in_archive_or_rejected(shared, file):
    suffix, content = file
    name = f"f{random.getrandbits(40)}{suffix}"
    out = shared.process(name, content)
    r = out.record
    assert r.status in ("accepted", "rejected", "duplicate"), r
    area = shared.state.rejected if r.status == "rejected" else shared.state.archive
    assert out.final_path.parent == area / "p" and out.final_path.read_bytes() == content
    if r.status == "rejected":
        assert r.code in KNOWN_CODES, (r.code, r.reason)
        assert shared.reason(out)["code"] == r.code
    assert shared.leftovers() == []


@settings(max_examples=60, deadline=None)
@given(st.one_of(st.binary(max_size=300), mangled(BASE_PARQUET[-400:])),
       st.one_of(st.none(), st.integers(0, 2**32 - 1)))
def test_hostile_footers_are_a_footer_error(tmp_path_factory, payload, length):
    """A footer of any bytes is read or refused with FooterError; nothing else escapes."""
    path = tmp_path_factory.mktemp("footer") / "x.parquet"
    length = len(payload) if length is None else length
    path.write_bytes(b"PAR1" + payload + length.to_bytes(4, "little") + b"PAR1")
    try:
        read_footer(path)
    except FooterError:
        pass
