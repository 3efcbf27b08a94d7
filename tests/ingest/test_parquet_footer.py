"""The Parquet footer reader against hostile footers, each read under a time budget.

The reader walks Thrift's compact protocol, where every collection declares its own count.
A count that is not checked against the bytes left lets a few bytes declare 2^63 items: an
18-byte file once kept the ingest thread busy forever. Here Hypothesis builds footers from
Thrift's own pieces (field headers of every type, collection headers with huge counts,
varints up to ten bytes, nested structs) and each read must end, by a result or a
``FooterError``, within a budget measured against a SIGALRM timer (so a read that never
ends fails the test instead of hanging it).
"""

from __future__ import annotations

import contextlib
import io
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from appliance.ingest.parquet_footer import FooterError, read_footer
from tests.ingest.ingest_files import good_frame

BUDGET_SECONDS = 1.0     # per file; a real footer of this size reads in well under 10 ms
EIGHTEEN_BYTES = bytes([0x1B, 0xFF, 0xFF, 0xFF, 0x7F, 0x11])  # map<bool,bool> of 2^28 entries


class OverBudget(Exception):
    pass


@contextlib.contextmanager
def time_budget(seconds: float) -> Iterator[None]:
    """Raise OverBudget in this (the main) thread when the block runs longer than this."""

    def expire(signum, frame):
        raise OverBudget(f"the footer read took over {seconds} s")

    old = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def parquet_with_footer(path: Path, footer: bytes, length: int | None = None) -> Path:
    length = len(footer) if length is None else length
    path.write_bytes(b"PAR1" + footer + length.to_bytes(4, "little") + b"PAR1")
    return path


def read_within_budget(path: Path) -> None:
    t0 = time.monotonic()
    with time_budget(BUDGET_SECONDS):
        try:
            read_footer(path)
        except FooterError:
            pass
    assert time.monotonic() - t0 < BUDGET_SECONDS


def varint(n: int) -> bytes:
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


# Counts a hostile writer would declare: small, at the edges, and far past any file.
counts = st.one_of(st.integers(0, 20), st.sampled_from([14, 15, 16, 2**31 - 1, 2**32,
                                                        2**62, 2**63 - 1, 2**69]))
# Thrift's compact types: booleans often (they take no byte as a struct's field, one in a
# collection), collections and structs often (they declare counts and nest), now and then
# a type that does not exist.
types = st.one_of(st.sampled_from([1, 2]), st.sampled_from([8, 9, 10, 11, 12]),
                  st.integers(0, 15))

# A collection's items: the smallest often (a bool, a byte, an empty struct: one byte each),
# as they are what lets a few bytes declare the most items.
item_types = st.one_of(st.sampled_from([1, 2, 3, 12]), types)


def collection_header(n: int, elem: int) -> bytes:
    return bytes([(n << 4) | elem]) if n < 15 else bytes([0xF0 | elem]) + varint(n)


@st.composite
def thrift_value(draw, ftype: int, depth: int = 0) -> bytes:
    """A value of a compact-protocol type as a writer would encode it, except that a
    collection may declare any count (up to 2^69) and then hold only a few items, or none."""
    if ftype in (1, 2):                      # a bool field: its value is in its header
        return b""
    if ftype == 3:
        return draw(st.binary(min_size=1, max_size=1))
    if ftype in (4, 5, 6):
        return varint(draw(counts))
    if ftype == 7:
        return draw(st.binary(min_size=8, max_size=8))
    if ftype == 8:
        n = draw(counts)
        return varint(n) + draw(st.binary(max_size=min(n, 12)))
    if ftype in (9, 10, 11) and depth < 4:
        n, held = draw(counts), draw(st.integers(0, 3))
        if ftype == 11:
            kv = (draw(item_types), draw(item_types))
            head = varint(n) + (bytes([(kv[0] << 4) | kv[1]]) if n else b"")
            items = [draw(thrift_item(t, depth + 1)) for _ in range(held) for t in kv]
        else:
            elem = draw(item_types)
            head = collection_header(n, elem)
            items = [draw(thrift_item(elem, depth + 1)) for _ in range(held)]
        return head + b"".join(items)
    if ftype == 12 and depth < 4:
        return draw(thrift_struct(depth + 1))
    return draw(st.binary(max_size=4))      # an unknown type, or too deep: anything


@st.composite
def thrift_item(draw, ftype: int, depth: int) -> bytes:
    """An element of a list, set or map: a bool there takes a byte of its own."""
    if ftype in (1, 2):
        return bytes([draw(st.integers(0, 2))])
    return draw(thrift_value(ftype, depth))


@st.composite
def thrift_struct(draw, depth: int = 0) -> bytes:
    out = bytearray()
    for _ in range(draw(st.integers(0, 4))):
        ftype = draw(types)
        fid = draw(st.integers(1, 15))
        out += bytes([(fid << 4) | ftype]) if draw(st.booleans()) else \
            bytes([ftype]) + varint(draw(st.integers(0, 2**20)) << 1)
        out += draw(thrift_value(ftype, depth))
    if draw(st.integers(0, 9)):              # mostly closed; sometimes cut short
        out += b"\x00"
    return bytes(out)


@st.composite
def thrift_piece(draw) -> bytes:
    """A loose piece of a stream, to splice into a real footer."""
    kind = draw(st.sampled_from(["value", "header", "varint", "bytes"]))
    if kind == "value":
        return draw(thrift_value(draw(types)))
    if kind == "header":
        return bytes([(draw(st.integers(0, 15)) << 4) | draw(types)])
    if kind == "varint":
        return varint(draw(counts))
    return draw(st.binary(min_size=1, max_size=8))


def _real_footer() -> bytes:
    buf = io.BytesIO()
    good_frame(30).write_parquet(buf)
    data = buf.getvalue()
    length = int.from_bytes(data[-8:-4], "little")
    return data[-8 - length:-8]


REAL_FOOTER = _real_footer()


@st.composite
def spliced_footers(draw) -> bytes:
    """A real footer with Thrift pieces spliced in, so the hostile counts sit deep inside
    the row groups and column chunks the reader walks, not only at its top."""
    data = bytearray(REAL_FOOTER)
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(data)))
        cut = draw(st.integers(0, 6))
        data[pos:pos + cut] = draw(thrift_piece())
    return bytes(data)


def test_the_eighteen_byte_file_is_refused_at_once(tmp_path):
    path = parquet_with_footer(tmp_path / "x.parquet", EIGHTEEN_BYTES)
    assert path.stat().st_size == 18
    with time_budget(BUDGET_SECONDS), pytest.raises(FooterError, match="more"):
        read_footer(path)


@pytest.mark.parametrize(("what", "footer"), [
    ("map<bool,bool> of 2^63", bytes([0x1B]) + varint(2**63 - 1) + b"\x11"),
    ("map<i32,bool> of 2^69", bytes([0x1B]) + varint(2**69) + b"\x51" + b"\x02\x01" * 4),
    ("list<bool> of 2^62", bytes([0x19, 0xF1]) + varint(2**62)),
    ("set<struct> of 2^32", bytes([0x1A, 0xFC]) + varint(2**32) + b"\x00" * 8),
    ("nested map in a list", bytes([0x19, 0x1B]) + varint(2**40) + b"\x22"),
])
def test_declared_counts_are_bounded_by_the_bytes_left(tmp_path, what, footer):
    path = parquet_with_footer(tmp_path / "x.parquet", footer + b"\x00" * 4)
    with time_budget(BUDGET_SECONDS), pytest.raises(FooterError):
        read_footer(path)


@pytest.fixture(scope="module")
def scratch(tmp_path_factory):
    return tmp_path_factory.mktemp("footers")


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(thrift_struct(), spliced_footers()))
@example(EIGHTEEN_BYTES)
def test_any_thrift_footer_reads_within_its_budget(scratch, footer):
    read_within_budget(parquet_with_footer(scratch / "x.parquet", footer))
