"""CSV files as spreadsheets in much of Europe write them: columns separated by `;` and
numbers with a decimal comma (`1,5`), often with a byte-order mark and CRLF lines. Read as
configured (`csv_separator`, `csv_decimal`) or found from the file's first lines."""

from __future__ import annotations

import gzip

import polars as pl
import pytest

from appliance.core import ConfigError, config
from appliance.ingest.formats import csv_dialect
from tests.ingest.test_ingest_files import Harness

EXCEL_DE = ("\ufeffZeit;Temperatur;Druck;Maschine;Notiz;target\r\n"
            "2026-03-01 08:00;21,5;1013,25;Fräse;\"ok; geprüft\";0\r\n"
            "2026-03-01 09:00;-3,75;998;Drehbank;;1\r\n"
            "2026-03-01 10:00;;1001,5;Fräse;\"zwei\r\nZeilen\";0\r\n") + "".join(
    f"2026-03-02 {i % 24:02d}:00;{i},25;{1000 + i},5;Presse;;{i % 2}\r\n" for i in range(30))


def stored(h: Harness, out) -> pl.DataFrame:
    return pl.read_parquet(h.state.root / out.record.dataset_path)


def test_a_german_spreadsheet_export_is_read_as_such(h):
    out = h.process("export.csv", EXCEL_DE.encode("utf-8"))
    assert out.record.status == "accepted", out.record.reason
    df = stored(h, out)
    assert df.columns == ["Zeit", "Temperatur", "Druck", "Maschine", "Notiz", "target"]
    assert df.schema["Temperatur"] == pl.Float64 and df.schema["Druck"] == pl.Float64
    assert df["Temperatur"][:3].to_list() == [21.5, -3.75, None]
    assert df["Druck"][:3].to_list() == [1013.25, 998.0, 1001.5]
    assert df["Notiz"][:3].to_list() == ["ok; geprüft", None, "zwei\r\nZeilen"]
    assert df.height == 33
    # A later file of the same shape, with a value that is not a number, names it.
    bad = EXCEL_DE.replace("-3,75", "warm")
    refused = h.process("later.csv", bad.encode())
    assert refused.record.code == "bad_value"
    assert refused.record.details["column"] == "Temperatur"
    assert refused.record.details["value"] == "warm" and refused.record.details["row"] == 2


def test_a_semicolon_file_with_decimal_points_keeps_them(h):
    text = "a;b;target\n1.5;x;0\n2.25;y;1\n" + "".join(f"{i}.5;z;{i % 2}\n" for i in range(30))
    out = h.process("dots.csv", text.encode())
    assert out.record.status == "accepted", out.record.reason
    assert stored(h, out)["a"][:2].to_list() == [1.5, 2.25]


def test_configured_dialect_wins_and_a_wrong_one_says_which_key(tmp_path):
    root = tmp_path / "state"
    root.mkdir()
    h = Harness(root, '[pipelines.p]\ntarget = "target"\ncsv_separator = "\\t"\n'
                      'csv_decimal = ","\n'
                      '[pipelines.q]\ntarget = "target"\ncsv_separator = ","\n')
    try:
        tsv = "a\tb\ttarget\n" + "".join(f"{i},5\tk{i % 3}\t{i % 2}\n" for i in range(30))
        out = h.process("tabs.tsv.csv", tsv.encode())
        assert out.record.status == "accepted", out.record.reason
        assert stored(h, out)["a"][:2].to_list() == [0.5, 1.5]
        semi = "a;b;target\n" + "".join(f"{i};x;{i % 2}\n" for i in range(30))
        refused = h.process("semi.csv", semi.encode(), pipeline="q")
        assert refused.record.code == "missing_target"
        assert "[pipelines.q] csv_separator = ','" in refused.record.reason
        assert "set it to ';'" in refused.record.reason
    finally:
        h.store.close()


def test_a_decimal_comma_with_a_comma_separator_is_a_config_error(tmp_path):
    (tmp_path / "appliance.toml").write_text(
        '[pipelines.p]\ntarget = "y"\ncsv_separator = ","\ncsv_decimal = ","\n')
    with pytest.raises(ConfigError) as err:
        config.load(tmp_path)
    assert err.value.key == "pipelines.p.csv_decimal"


@pytest.mark.parametrize(("text", "separator", "decimal_comma"), [
    ("a,b\n1,2\n", ",", False),                        # a comma in the header: commas
    ("a;b\n1,5;2\n", ";", True),
    ("a;b\n1,5;2.5\n", ";", False),                    # both marks: not sure, so a point
    ("a;b\n1;2\n", ";", False),                        # integers only: either is the same
    ("a\tb\n1,5\t2\n", "\t", True),
    ("a|b\n3.5|4\n", "|", False),
    ("only\n1\n", ",", False),                         # one column: nothing to find
    ("x;\"a,b\"\n1,5;2\n", ",", False),                # a comma in the header wins
], ids=["comma", "semicolon-decimal-comma", "ambiguous", "integers", "tab", "bar",
        "one-column", "comma-in-header"])
def test_the_dialect_found_from_the_first_lines(text, separator, decimal_comma):
    assert csv_dialect(text, "auto", "auto") == (separator, decimal_comma)


# --- text encodings other than UTF-8 -------------------------------------------------------

EXCEL_CP1252 = ("Zeit;Temperatur;Maschine;Notiz;target\r\n"
                "2026-03-01 08:00;21,5;Fräse;Öl nachgefüllt, 12 €;0\r\n") + "".join(
    f"2026-03-02 {i % 24:02d}:00;{i},25;Drehbank;;{i % 2}\r\n" for i in range(30))


def encoded_harness(tmp_path, encoding: str | None) -> Harness:
    root = tmp_path / "state"
    root.mkdir()
    line = f'csv_encoding = "{encoding}"\n' if encoding else ""
    return Harness(root, f'[pipelines.p]\ntarget = "target"\n{line}')


def test_a_windows_excel_csv_is_read_with_its_encoding(tmp_path):
    h = encoded_harness(tmp_path, "cp1252")
    try:
        out = h.process("export.csv", EXCEL_CP1252.encode("cp1252"))
        assert out.record.status == "accepted", out.record.reason
        df = stored(h, out)
        assert df["Maschine"][0] == "Fräse" and df["Notiz"][0] == "Öl nachgefüllt, 12 €"
        assert df["Temperatur"][:2].to_list() == [21.5, 0.25]
        # Compressed too: decompressed, then converted.
        later = EXCEL_CP1252.replace("Fräse", "Säge").encode("cp1252")
        out = h.process("later.csv.gz", gzip.compress(later, mtime=0))
        assert out.record.status == "accepted", out.record.reason
        assert stored(h, out)["Maschine"][0] == "Säge"
        assert h.leftovers() == []
        # A byte that is no character in cp1252 refuses the file, naming where and the key.
        bad = EXCEL_CP1252.encode("cp1252").replace(b"Dreh", b"Dr\x81h", 1)
        refused = h.process("bad.csv", bad)
        assert refused.record.code == "not_text", refused.record.reason
        assert refused.record.details["line"] == 3
        assert "[pipelines.p] csv_encoding" in refused.record.reason
    finally:
        h.store.close()


def test_an_excel_unicode_text_file_is_read_as_utf16(tmp_path):
    h = encoded_harness(tmp_path, "utf-16")
    try:
        text = EXCEL_CP1252.replace(";", "\t").replace("21,5", "21.5").replace(",25", ".25")
        out = h.process("unicode.csv", text.encode("utf-16"))   # with its byte-order mark
        assert out.record.status == "accepted", out.record.reason
        df = stored(h, out)
        assert df.columns == ["Zeit", "Temperatur", "Maschine", "Notiz", "target"]
        assert df["Maschine"][0] == "Fräse" and df["Temperatur"][0] == 21.5
    finally:
        h.store.close()


@pytest.mark.parametrize(("data", "suggested"), [
    (EXCEL_CP1252.encode("cp1252"), 'csv_encoding = "cp1252"'),
    (EXCEL_CP1252.encode("utf-16"), 'csv_encoding = "utf-16"'),
], ids=["cp1252", "utf-16"])
def test_by_default_utf8_and_the_refusal_names_the_key_to_set(tmp_path, data, suggested):
    h = encoded_harness(tmp_path, None)
    try:
        refused = h.process("export.csv", data)
        assert refused.record.code == "not_utf8"
        assert f"[pipelines.p] {suggested}" in refused.record.reason, refused.record.reason
    finally:
        h.store.close()


@pytest.mark.parametrize("name", ["klingon", "base64"])
def test_an_encoding_python_cannot_read_as_text_is_a_config_error(tmp_path, name):
    (tmp_path / "appliance.toml").write_text(
        f'[pipelines.p]\ntarget = "y"\ncsv_encoding = "{name}"\n')
    with pytest.raises(ConfigError) as err:
        config.load(tmp_path)
    assert err.value.key == "pipelines.p.csv_encoding"


# --- header lines repeated inside a file ---------------------------------------------------


def test_files_joined_end_to_end_drop_their_repeated_headers(h):
    # `cat day1.csv day2.csv`, one of them saved with a byte-order mark and CRLF lines.
    day1 = "t,temp,kind,target\n" + "".join(f"{i},{i}.5,a,{i % 2}\n" for i in range(40))
    day2 = "\ufefft,temp,kind,target\r\n" + "".join(
        f"{i},{i}.25,b,{i % 2}\r\n" for i in range(40, 80))
    out = h.process("joined.csv", (day1 + day2 + day1.split("\n", 1)[0]).encode())
    assert out.record.status == "accepted", out.record.reason
    df = stored(h, out)
    assert df.schema["temp"] == pl.Float64 and df.schema["t"] == pl.Int64
    assert df.height == 80 and df["temp"][40] == 40.25
    assert "2 repeated header lines were dropped (files joined end to end, or a logger " \
           "that writes its header at each restart)" in out.record.warnings
    assert h.leftovers() == []
    # A later file whose header comes again after ten thousand rows (a logger restarted).
    head = "t,temp,kind,target\n"
    rows = "".join(f"{i},{i}.5,a,{i % 2}\n" for i in range(10_050))
    out = h.process("logger.csv", (head + rows[:200_000] + head + rows[200_000:]).encode())
    assert out.record.status == "accepted", out.record.reason
    assert stored(h, out).height == 10_050


def test_a_repeated_header_in_a_later_file_or_in_a_schema_of_text_only(h, tmp_path):
    first = "t,temp,kind,target\n" + "".join(f"{i},{i}.5,a,{i % 2}\n" for i in range(40))
    assert h.process("first.csv", first.encode()).record.status == "accepted"
    later = first + "".join(f"{i},{i}.5,b,{i % 2}\n" for i in range(40, 60))
    out = h.process("later.csv", later.replace("\n40,", "\nt,temp,kind,target\n40,").encode())
    assert out.record.status == "accepted", out.record.reason
    assert stored(h, out).height == 60
    assert out.record.warnings[-1].startswith("1 repeated header lines were dropped")
    # Only text: nothing fails to cast, so the header is looked for at once.
    root = tmp_path / "text"
    root.mkdir()
    texts = Harness(root)
    try:
        words = "kind,target\n" + "".join(f"k{i % 3},{'yes' if i % 2 else 'no'}\n"
                                          for i in range(40))
        assert texts.process("a.csv", words.encode()).record.status == "accepted"
        out = texts.process("b.csv", (words + words).encode())
        assert out.record.status == "accepted", out.record.reason
        assert sorted(stored(texts, out)["target"].unique()) == ["no", "yes"]
        # Written differently (spaces): not dropped by bytes. A first file says so; a later
        # one is refused for the value, as when a value merely equals its column's name.
        odd = "kind,target\n" + "".join(f"k{i},{i % 2}\n" for i in range(5))
        (tmp_path / "odd-first").mkdir()
        first = Harness(tmp_path / "odd-first")
        try:
            refused = first.process("odd.csv", (odd + " kind , target\n").encode())
            assert refused.record.code == "repeated_header", refused.record.reason
            assert "written differently" in refused.record.reason
        finally:
            first.store.close()
        later = "t,temp,kind,target\n" + "".join(f"{i},{i}.5,a,{i % 2}\n" for i in range(5))
        refused = h.process("odd.csv", (later + "t, temp, kind, target\n").encode())
        assert refused.record.code == "bad_value", refused.record.reason
        coincidence = later + ",temp,kind,1\n"    # a row whose value equals its name
        refused = h.process("coincidence.csv", coincidence.encode())
        assert refused.record.code == "bad_value" and refused.record.details["column"] == "temp"
    finally:
        texts.store.close()
