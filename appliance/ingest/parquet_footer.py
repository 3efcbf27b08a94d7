"""What a Parquet file says about itself, read from its footer without loading any data.

The ingester uses this to refuse a "decompression bomb" (a small file whose pages expand
to gigabytes) before Polars allocates anything. The footer is Thrift in its compact
protocol; this is a small, bounded reader of the few fields needed, written for hostile
input: every length, and every count a list, set or map declares, is checked against the
bytes left (so every loop step reads at least one byte, and a footer of N bytes is read in
O(N) steps), nesting is limited, and any inconsistency is a :class:`FooterError`, never a
crash or a hang.
"""

from __future__ import annotations

import dataclasses
import os
import struct
from dataclasses import dataclass

MAGIC = b"PAR1"
MAX_FOOTER_BYTES = 64 * 1024 * 1024
_MAX_DEPTH = 32
_MAX_PEEKS = 10_000          # string column chunks whose dictionary page header is read
_PEEK_BYTES = 256

# Compact protocol type ids.
_STOP, _TRUE, _FALSE, _BYTE, _I16, _I32, _I64, _DOUBLE, _BINARY, _LIST, _SET, _MAP, _STRUCT = (
    range(13)
)


class FooterError(Exception):
    """The file is not a readable Parquet file; the message says what is wrong."""


@dataclass(frozen=True)
class ParquetFooter:
    num_rows: int
    row_groups: int
    columns: int                 # leaf columns
    uncompressed_bytes: int      # sum over column chunks (or row groups), as declared
    largest_row_group_bytes: int
    decoded_bytes: int           # estimate of the size once decoded in memory (see below)


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data = data
        self.pos = 0

    def byte(self) -> int:
        if self.pos >= len(self.data):
            raise FooterError("the footer ends early")
        b = self.data[self.pos]
        self.pos += 1
        return b

    def varint(self) -> int:
        out = shift = 0
        for _ in range(10):
            b = self.byte()
            out |= (b & 0x7F) << shift
            if not b & 0x80:
                return out
            shift += 7
        raise FooterError("a varint in the footer is too long")

    def zigzag(self) -> int:
        n = self.varint()
        return (n >> 1) ^ -(n & 1)

    def skip_bytes(self, n: int) -> None:
        if n < 0 or self.pos + n > len(self.data):
            raise FooterError("a length in the footer points past its end")
        self.pos += n

    def binary(self) -> bytes:
        n = self.varint()
        start = self.pos
        self.skip_bytes(n)
        return self.data[start:self.pos]

    def left(self) -> int:
        return len(self.data) - self.pos

    def count(self, n: int, item_bytes: int, what: str) -> int:
        """A declared count of items, each taking at least ``item_bytes``, checked against
        the bytes left: a few bytes can declare 2^63 items, and a loop over them must not
        run longer than the footer is."""
        if n * item_bytes > self.left():
            raise FooterError(f"a {what} in the footer claims more items ({n}) than its "
                              f"{self.left()} bytes left can hold")
        return n

    def list_header(self) -> tuple[int, int]:
        b = self.byte()
        size, elem = b >> 4, b & 0x0F
        if size == 15:
            size = self.varint()
        # Every element takes at least one byte: a bool its own byte, an empty struct its
        # STOP.
        return self.count(size, 1, "list"), elem

    def map_header(self) -> tuple[int, int, int]:
        size = self.varint()
        if not size:
            return 0, _STOP, _STOP
        kv = self.byte()
        # Every entry takes at least two bytes: its key and its value.
        return self.count(size, 2, "map"), kv >> 4, kv & 0x0F

    def fields(self, depth: int):  # -> Iterator[tuple[int, int]]
        """Yield (field id, type) of a struct; the caller reads or skips each value."""
        if depth > _MAX_DEPTH:
            raise FooterError("the footer nests too deeply")
        last = 0
        while True:
            b = self.byte()
            ftype = b & 0x0F
            if ftype == _STOP:
                return
            delta = b >> 4
            fid = last + delta if delta else self.zigzag()
            last = fid
            yield fid, ftype

    def skip(self, ftype: int, depth: int) -> None:
        if depth > _MAX_DEPTH:
            raise FooterError("the footer nests too deeply")
        if ftype in (_TRUE, _FALSE):
            return
        if ftype == _BYTE:
            self.skip_bytes(1)
        elif ftype in (_I16, _I32, _I64):
            self.varint()
        elif ftype == _DOUBLE:
            self.skip_bytes(8)
        elif ftype == _BINARY:
            self.skip_bytes(self.varint())
        elif ftype in (_LIST, _SET):
            size, elem = self.list_header()
            for _ in range(size):
                self.skip_item(elem, depth + 1)
        elif ftype == _MAP:
            size, key, value = self.map_header()
            for _ in range(size):
                self.skip_item(key, depth + 1)
                self.skip_item(value, depth + 1)
        elif ftype == _STRUCT:
            for _, t in self.fields(depth + 1):
                self.skip(t, depth + 1)
        else:
            raise FooterError(f"unknown Thrift type {ftype} in the footer")

    def skip_item(self, elem: int, depth: int) -> None:
        """Skip an element of a list, set or map. A bool there is a byte of its own (in a
        struct's field it is in the field's header, and takes none)."""
        if elem in (_TRUE, _FALSE):
            self.skip_bytes(1)
        else:
            self.skip(elem, depth)

    def i64(self, ftype: int) -> int:
        if ftype not in (_I16, _I32, _I64):
            raise FooterError("a number in the footer has the wrong type")
        return self.zigzag()


def read_footer(path: str | os.PathLike[str]) -> ParquetFooter:
    """Row count, column count and declared uncompressed size of a Parquet file."""
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size < 12:
            raise FooterError("too short to be a Parquet file")
        head = f.read(4)
        f.seek(size - 8)
        tail = f.read(8)
        if head != MAGIC or tail[4:] != MAGIC:
            if tail[4:] == b"PARE":
                raise FooterError("the Parquet file is encrypted")
            raise FooterError("no Parquet magic bytes (PAR1) at the start and end")
        (length,) = struct.unpack("<I", tail[:4])
        if length <= 0 or length > size - 12:
            raise FooterError(f"the footer length {length} does not fit the file")
        if length > MAX_FOOTER_BYTES:
            raise FooterError(f"the footer is {length} bytes, over {MAX_FOOTER_BYTES}")
        f.seek(size - 8 - length)
        footer, peeks = _parse(f.read(length))
        extra = 0
        for offset, num_values, estimate in peeks:
            if offset >= size - 8 - length:
                continue
            f.seek(offset)
            entry = _dictionary_entry_bytes(f.read(_PEEK_BYTES))
            if entry is not None:
                extra += max(0, num_values * (entry + 16) - estimate)
    if extra:
        footer = dataclasses.replace(footer, decoded_bytes=footer.decoded_bytes + extra)
    return footer


def _dictionary_entry_bytes(header: bytes) -> int | None:
    """The mean size of one dictionary entry, from a page header, or None when the page
    is not a dictionary page or the header can't be read."""
    r = _Reader(header)
    page_type = size = entries = None
    try:
        for fid, ftype in r.fields(0):
            if fid == 1 and ftype in (_I16, _I32, _I64):
                page_type = r.zigzag()
            elif fid == 2 and ftype in (_I16, _I32, _I64):
                size = r.zigzag()
            elif fid == 7 and ftype == _STRUCT:        # dictionary_page_header
                for dfid, dt in r.fields(1):
                    if dfid == 1 and dt in (_I16, _I32, _I64):
                        entries = r.zigzag()
                    else:
                        r.skip(dt, 2)
            else:
                r.skip(ftype, 1)
    except FooterError:
        return None
    if page_type != 2 or not size or not entries or size < 0 or entries < 0:
        return None
    return size // entries


def _parse(data: bytes) -> tuple[ParquetFooter, list[tuple[int, int, int]]]:
    r = _Reader(data)
    num_rows = None
    schema_leaves = 0
    row_groups = 0
    chunk_bytes = 0
    group_bytes = 0
    decoded_bytes = 0
    peeks: list[tuple[int, int, int]] = []
    largest = 0
    for fid, ftype in r.fields(0):
        if fid == 2 and ftype == _LIST:        # schema: list<SchemaElement>
            n, elem = r.list_header()
            for i in range(n):
                if elem != _STRUCT:
                    raise FooterError("the schema in the footer is malformed")
                has_children = False
                for sfid, st in r.fields(1):
                    if sfid == 5 and st in (_I16, _I32, _I64):   # num_children
                        has_children = r.zigzag() > 0
                    else:
                        r.skip(st, 2)
                schema_leaves += i > 0 and not has_children
        elif fid == 3:                          # num_rows
            num_rows = r.i64(ftype)
        elif fid == 4 and ftype == _LIST:       # row_groups: list<RowGroup>
            n, elem = r.list_header()
            for _ in range(n):
                if elem != _STRUCT:
                    raise FooterError("the row groups in the footer are malformed")
                row_groups += 1
                g_total = g_chunks = 0
                for gfid, gt in r.fields(1):
                    if gfid == 1 and gt == _LIST:          # columns: list<ColumnChunk>
                        cn, celem = r.list_header()
                        for _ in range(cn):
                            if celem != _STRUCT:
                                raise FooterError("a column chunk in the footer is malformed")
                            declared, decoded, peek = _column_chunk(r)
                            g_chunks += declared
                            decoded_bytes += decoded
                            if peek is not None and len(peeks) < _MAX_PEEKS:
                                peeks.append((*peek, decoded))
                    elif gfid == 2:                         # total_byte_size (uncompressed)
                        g_total = r.i64(gt)
                    else:
                        r.skip(gt, 2)
                if g_total < 0 or g_chunks < 0:
                    raise FooterError("a negative size in the footer")
                chunk_bytes += g_chunks
                group_bytes += g_total
                largest = max(largest, g_total, g_chunks)
        else:
            r.skip(ftype, 1)
    if num_rows is None or num_rows < 0:
        raise FooterError("the footer has no row count")
    return ParquetFooter(
        num_rows=num_rows, row_groups=row_groups, columns=schema_leaves,
        uncompressed_bytes=max(chunk_bytes, group_bytes), largest_row_group_bytes=largest,
        decoded_bytes=max(decoded_bytes, chunk_bytes, group_bytes),
    ), peeks


def _column_chunk(r: _Reader) -> tuple[int, int, tuple[int, int] | None]:
    """(declared uncompressed size, estimated decoded size, (first page offset, values)
    of a string column, whose dictionary page is worth a look) of one column chunk.

    The declared size is what the pages hold after decompression, but dictionary and RLE
    encodings can still expand many times over when decoded (one long string repeated a
    million times is a few bytes on disk). So the decoded size is estimated too: for
    strings from the writer's own count of their bytes (``SizeStatistics``) when present,
    else from the longest min/max statistic times the number of values; for fixed-width
    values from the value count.
    """
    declared = num_values = unencoded = stat_len = 0
    physical = -1
    dict_offset = data_offset = None
    for fid, ftype in r.fields(2):
        if fid == 3 and ftype == _STRUCT:      # meta_data: ColumnMetaData
            for mfid, mt in r.fields(3):
                if mfid == 1 and mt in (_I16, _I32, _I64):   # physical type
                    physical = r.zigzag()
                elif mfid == 5:                # num_values
                    num_values = r.i64(mt)
                elif mfid == 6:                # total_uncompressed_size
                    declared = r.i64(mt)
                elif mfid == 9:                # data_page_offset
                    data_offset = r.i64(mt)
                elif mfid == 11:               # dictionary_page_offset
                    dict_offset = r.i64(mt)
                elif mfid == 12 and mt == _STRUCT:            # statistics
                    for sfid, sty in r.fields(4):
                        if sfid in (1, 2, 5, 6) and sty == _BINARY:
                            stat_len = max(stat_len, len(r.binary()))
                        else:
                            r.skip(sty, 5)
                elif mfid == 16 and mt == _STRUCT:            # size_statistics
                    for zfid, zt in r.fields(4):
                        if zfid == 1:          # unencoded_byte_array_data_bytes
                            unencoded = r.i64(zt)
                        else:
                            r.skip(zt, 5)
                else:
                    r.skip(mt, 4)
        else:
            r.skip(ftype, 3)
    if declared < 0 or num_values < 0 or unencoded < 0:
        raise FooterError("a negative size in the footer")
    peek = None
    if physical in (6, 7):                     # BYTE_ARRAY, FIXED_LEN_BYTE_ARRAY
        decoded = max(unencoded, num_values * stat_len) + num_values * 16
        first = dict_offset if dict_offset is not None else data_offset
        if first is not None and first >= 4:
            peek = (first, num_values)
    else:
        decoded = num_values * 8
    return declared, max(declared, decoded), peek
