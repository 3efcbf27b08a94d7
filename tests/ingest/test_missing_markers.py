"""Missing values as spreadsheets, R, pandas and the UCI data sets write them (`n/a`, `NA`,
`?`, `-`): in a column of numbers they are missing values, so the column stays a column of
numbers; in a text column they stay text."""

from __future__ import annotations

import io

import polars as pl

from tests.ingest.test_ingest_files import Harness


def rows(n: int, value=lambda i: f"{i * 0.5}", label=lambda i: "NA" if i % 3 else "EU") -> str:
    return "temp,count,region,target\n" + "".join(
        f"{value(i)},{i},{label(i)},{i % 2}\n" for i in range(n))


def stored(h: Harness, out) -> pl.DataFrame:
    return pl.read_parquet(h.state.root / out.record.dataset_path)


def test_a_column_of_numbers_with_markers_is_numbers_and_a_text_column_keeps_them(h):
    markers = ["n/a", "NA", "?", "-", " N/A ", "null", "NaN"]
    text = rows(40, value=lambda i: markers[i % 7] if i % 5 == 0 else f"{i}.25")
    out = h.process("first.csv", text.encode())
    assert out.record.status == "accepted", out.record.reason
    df = stored(h, out)
    assert df.schema["temp"] == pl.Float64 and df.schema["region"] == pl.String
    assert df["temp"][:6].to_list() == [None, 1.25, 2.25, 3.25, 4.25, None]
    assert df["temp"].null_count() == 8
    assert df["region"][:3].to_list() == ["EU", "NA", "NA"]   # text: "NA" is a region
    assert any("`temp` holds numbers" in w and "'n/a'" in w
               for w in out.record.warnings), out.record.warnings
    # A later file: the same markers are missing values, in any of the schema's number types.
    later = rows(10, value=lambda i: "?" if i == 3 else f"{i}")
    later = later.replace("\n3,", "\n?,", 1)
    out = h.process("later.csv", later.replace(",3,", ",n/a,").encode())
    assert out.record.status == "accepted", out.record.reason
    df = stored(h, out)
    assert df["temp"].to_list()[2:5] == [2.0, None, 4.0]
    assert df["count"].dtype == pl.Int64 and df["count"][3] is None
    # A word that is not a marker is still a bad value, named.
    refused = h.process("bad.csv", rows(10, value=lambda i: "warm" if i == 4 else "1").encode())
    assert refused.record.code == "bad_value"
    assert refused.record.details["column"] == "temp" and refused.record.details["value"] == "warm"


def test_integers_with_markers_stay_integers(h):
    out = h.process("ints.csv", rows(30, value=lambda i: "-" if i == 7 else str(i)).encode())
    assert out.record.status == "accepted", out.record.reason
    df = stored(h, out)
    assert df.schema["temp"] == pl.Int64 and df["temp"][7] is None and df["temp"][8] == 8


def test_text_past_the_rows_looked_at_keeps_the_column_text(h):
    # Markers among numbers in the first 10,000 rows, a word after them: the column is text,
    # as it was before markers were read, and nothing is refused.
    text = rows(10_050, value=lambda i: "n/a" if i == 2 else ("high" if i == 10_040
                                                               else str(i)))
    out = h.process("long.csv", text.encode())
    assert out.record.status == "accepted", out.record.reason
    df = stored(h, out)
    assert df.schema["temp"] == pl.String and df["temp"][2] == "n/a"
    assert not any("holds numbers" in w for w in out.record.warnings)


def test_a_first_parquet_file_with_numbers_as_text_and_markers(h):
    frame = pl.DataFrame({"temp": ["1.5", "n/a", "2.5", "?"] * 10,
                          "code": ["NA", "EU", "-", "x"] * 10, "target": [0, 1] * 20})
    buf = io.BytesIO()
    frame.write_parquet(buf)
    out = h.process("first.parquet", buf.getvalue())
    assert out.record.status == "accepted", out.record.reason
    df = stored(h, out)
    assert df.schema["temp"] == pl.Float64 and df["temp"][:4].to_list() == [1.5, None, 2.5, None]
    assert df.schema["code"] == pl.String and df["code"][:3].to_list() == ["NA", "EU", "-"]


def test_decimal_comma_numbers_with_markers(tmp_path):
    root = tmp_path / "state"
    root.mkdir()
    h = Harness(root, '[pipelines.p]\ntarget = "target"\ncsv_separator = ";"\n'
                      'csv_decimal = ","\n')
    try:
        text = "a;target\n" + "".join(
            f"{'n/a' if i == 1 else f'{i},5'};{i % 2}\n" for i in range(30))
        out = h.process("semi.csv", text.encode())
        assert out.record.status == "accepted", out.record.reason
        assert stored(h, out)["a"][:3].to_list() == [0.5, None, 2.5]
    finally:
        h.store.close()


# --- a column with no value in the first file --------------------------------------------


def schema_of(h: Harness) -> dict[str, str]:
    return h.store.pipeline("p").schema


def test_a_column_empty_in_the_first_file_takes_its_type_from_the_first_values(h):
    first = "v,dead,target\n" + "".join(f"{i}.5,,{i % 2}\n" for i in range(30))
    out = h.process("first.csv", first.encode())
    assert out.record.status == "accepted", out.record.reason
    assert schema_of(h)["dead"] == "Null"
    assert any("`dead` have no value yet" in w for w in out.record.warnings)
    # Still nothing in it: still untyped.
    out = h.process("second.csv", first.replace("0.5,", "0.75,").encode())
    assert out.record.status == "accepted", out.record.reason
    assert schema_of(h)["dead"] == "Null"
    # The sensor comes back: numbers (with a marker), and the schema says so from now on.
    third = "v,dead,target\n" + "".join(
        f"{i},{'n/a' if i == 2 else f'{20 + i}.5'},{i % 2}\n" for i in range(30))
    out = h.process("third.csv", third.encode())
    assert out.record.status == "accepted", out.record.reason
    assert schema_of(h)["dead"] == "Float64" and schema_of(h)["v"] == "Float64"
    assert any("`dead` Float64" in w for w in out.record.warnings), out.record.warnings
    assert stored(h, out)["dead"][:3].to_list() == [20.5, 21.5, None]
    # Text there now is a bad value, as in any column of numbers.
    refused = h.process("fourth.csv", third.replace("23.5", "broken").encode())
    assert refused.record.code == "bad_value" and refused.record.details["column"] == "dead"
    # Every data set reads as one frame, the old ones' column as missing numbers.
    frames = [pl.read_parquet(p) for p in sorted((h.state.root / "datasets/p").glob("*.parquet"))]
    joined = pl.concat(frames, how="diagonal_relaxed")
    assert joined.schema["dead"] == pl.Float64 and joined["dead"].null_count() == 61


def test_an_untyped_column_takes_text_and_parquet_types_too(h):
    first = "v,note,flag,target\n" + "".join(f"{i},,,{i % 2}\n" for i in range(30))
    assert h.process("first.csv", first.encode()).record.status == "accepted"
    assert schema_of(h)["note"] == "Null" and schema_of(h)["flag"] == "Null"
    later = pl.DataFrame({"v": [1, 2] * 15, "note": ["ok, fine", None] * 15,
                          "flag": [True, None] * 15, "target": [0, 1] * 15})
    buf = io.BytesIO()
    later.write_parquet(buf)
    out = h.process("later.parquet", buf.getvalue())
    assert out.record.status == "accepted", out.record.reason
    assert schema_of(h)["note"] == "String" and schema_of(h)["flag"] == "Boolean"
    assert any("`note` String" in w and "`flag` Boolean" in w for w in out.record.warnings)


def test_a_column_empty_only_in_the_first_rows_is_typed_by_the_whole_first_file(h):
    first = "v,late,target\n" + "".join(
        f"{i},{'' if i < 10_005 else '7'},{i % 2}\n" for i in range(10_010))
    out = h.process("first.csv", first.encode())
    assert out.record.status == "accepted", out.record.reason
    # Not left untyped: it has values further down (read as Polars' text inference left it).
    assert schema_of(h)["late"] != "Null"
    assert stored(h, out)["late"].drop_nulls().len() == 5


def test_a_text_targets_markers_are_missing_labels_not_a_class(h):
    text = "x,target\n" + "".join(
        f"{i},{'yes' if i % 2 else 'no'}\n" if i % 7 else f"{i},{'NA' if i % 2 else '?'}\n"
        for i in range(40))
    out = h.process("labels.csv", text.encode())
    assert out.record.status == "accepted", out.record.reason
    assert sorted(stored(h, out)["target"].unique().to_list()) == ["no", "yes"]
    assert out.record.rows == 34
    assert "6 rows with a null target were dropped" in out.record.warnings


def test_columns_with_no_name_are_dropped_so_the_next_export_fits(h):
    # Excel and many loggers end every line with the separator: a column with no name.
    trailing = "a,,b,target,\n" + "".join(f"{i},,x,{i % 2},\n" for i in range(30))
    out = h.process("trailing.csv", trailing.encode())
    assert out.record.status == "accepted", out.record.reason
    assert list(schema_of(h)) == ["a", "b", "target"]
    assert "2 column(s) with no name in the header (position 2, 5) were dropped" \
        in out.record.warnings
    plain = "a,b,target\n" + "".join(f"{i},y,{i % 2}\n" for i in range(30))
    out = h.process("plain.csv", plain.encode())
    assert out.record.status == "accepted", out.record.reason
    assert out.record.warnings == []
    again = h.process("again.csv", trailing.replace(",x,", ",z,").encode())
    assert again.record.status == "accepted", again.record.reason
    assert stored(h, again).columns == ["a", "b", "target"]
    # A repeated real name is still refused.
    dup = h.process("dup.csv", b"a,a,target\n1,2,0\n")
    assert dup.record.code == "duplicate_columns"


def test_empty_rows_are_dropped_and_counted_apart_from_missing_labels(h):
    text = "a,b,target\n" + "".join(f"{i},x,{'' if i == 3 else i % 2}\n\n,,\n"
                                    for i in range(30))
    out = h.process("gaps.csv", text.encode())
    assert out.record.status == "accepted", out.record.reason
    assert out.record.rows == 29
    assert out.record.warnings == ["60 empty rows were dropped",
                                   "1 rows with a null target were dropped"]
