"""The timestamp column orders a pipeline's rows (the newest validate each model): text that
sorts wrongly is refused, saying how to fix it; a configured format reads it; dates whose day
and month order the file can't prove are refused for the timestamp and warned of elsewhere."""

from __future__ import annotations

import io
from datetime import datetime

import polars as pl
import pytest

from appliance.ingest.dates import day_month_order
from tests.ingest.test_ingest_files import Harness

US = "%m/%d/%Y %I:%M %p"


def rows(stamps: list[str], extra: str = "") -> bytes:
    lines = [f"when,x,y{',' + extra.split('=')[0] if extra else ''}"]
    for i, t in enumerate(stamps):
        lines.append(f"{t},{i * 0.5},{i % 2}" + (f",{extra.split('=')[1]}" if extra else ""))
    return ("\n".join(lines) + "\n").encode()


def us_stamps(n: int, day0: int = 1) -> list[str]:
    return [f"{1 + i % 12}/{day0 + i % 15}/2026 {1 + i % 12}:05 {'AM' if i % 2 else 'PM'}"
            for i in range(n)]


@pytest.fixture
def box(tmp_path):
    def make(config: str) -> Harness:
        root = tmp_path / f"state{len(made)}"
        root.mkdir()
        made.append(h := Harness(root, config))
        return h

    made: list[Harness] = []
    yield make
    for h in made:
        h.store.close()


def stored(h: Harness, out) -> pl.DataFrame:
    return pl.read_parquet(h.state.root / out.record.dataset_path)


def test_text_timestamps_are_refused_with_the_key_to_set(box):
    h = box('[pipelines.p]\ntarget = "y"\ntimestamp = "when"\n')
    out = h.process("us.csv", rows(us_stamps(30, day0=13)))
    assert out.record.status == "rejected" and out.record.code == "bad_timestamp"
    assert out.final_path.exists() and "rejected" in out.final_path.parts   # kept, not lost
    reason = out.record.reason
    assert "column `when` is the timestamp of `p`" in reason and "month first" in reason
    assert "[pipelines.p] timestamp_format" in reason and "%m/%d/%Y %I:%M %p" in reason
    assert out.record.details["config_key"] == "pipelines.p.timestamp_format"


def test_a_configured_format_reads_them_in_every_file(box):
    h = box(f'[pipelines.p]\ntarget = "y"\ntimestamp = "when"\ntimestamp_format = "{US}"\n')
    first = h.process("us.csv", rows(us_stamps(30)))
    assert first.record.status == "accepted", first.record.reason
    df = stored(h, first)
    assert df.schema["when"] == pl.Datetime("us")
    assert df["when"][0] == datetime(2026, 1, 1, 13, 5)           # 1/1/2026 1:05 PM
    assert df["when"][1] == datetime(2026, 2, 2, 2, 5)
    later = h.process("later.csv", rows(us_stamps(20, day0=14)))
    assert later.record.status == "accepted", later.record.reason
    assert stored(h, later)["when"][0] == datetime(2026, 1, 14, 13, 5)
    bad = us_stamps(20)
    bad[7] = "2026-01-08 07:05"
    refused = h.process("mixed.csv", rows(bad))
    assert refused.record.code == "bad_value"
    assert refused.record.details["column"] == "when" and refused.record.details["row"] == 8


def test_day_first_dates_the_file_cannot_prove(box):
    h = box('[pipelines.p]\ntarget = "y"\ntimestamp = "when"\n')
    ambiguous = [f"{1 + i % 12:02d}/{1 + i % 12:02d}/2026 10:00" for i in range(30)]
    out = h.process("ambiguous.csv", rows(ambiguous))
    assert out.record.code == "bad_timestamp"
    assert "day first or month first" in out.record.reason
    proven = [f"{13 + i % 15}/{1 + i % 12:02d}/2026 10:00" for i in range(30)]
    ok = h.process("proven.csv", rows(proven))
    assert ok.record.status == "accepted", ok.record.reason
    assert stored(h, ok)["when"][0] == datetime(2026, 1, 13, 10, 0)
    # Another date column read day first without proof: accepted, with a warning.
    g = box('[pipelines.q]\ntarget = "y"\n')
    warned = g.process("dates.csv", rows([f"2026-01-{1 + i:02d} 10:00" for i in range(30)],
                                         extra="serviced=03/04/2026"), pipeline="q")
    assert warned.record.status == "accepted", warned.record.reason
    assert any("column `serviced`" in w and "day first" in w for w in warned.record.warnings)


def test_iso_and_dotted_dates_need_nothing(box):
    h = box('[pipelines.p]\ntarget = "y"\ntimestamp = "when"\n')
    dotted = h.process("de.csv", rows([f"{1 + i % 28:02d}.03.2026 08:00" for i in range(30)]))
    assert dotted.record.status == "accepted" and dotted.record.warnings == []
    assert stored(h, dotted)["when"][0] == datetime(2026, 3, 1, 8, 0)


def test_a_parquet_file_with_text_timestamps(box):
    frame = pl.DataFrame({"when": us_stamps(30), "x": [0.5] * 30, "y": [0, 1] * 15})
    buf = io.BytesIO()
    frame.write_parquet(buf)
    h = box('[pipelines.p]\ntarget = "y"\ntimestamp = "when"\n')
    assert h.process("t.parquet", buf.getvalue()).record.code == "bad_timestamp"
    g = box(f'[pipelines.p]\ntarget = "y"\ntimestamp = "when"\ntimestamp_format = "{US}"\n')
    out = g.process("t.parquet", buf.getvalue())
    assert out.record.status == "accepted", out.record.reason
    assert stored(g, out).schema["when"] == pl.Datetime("us")


@pytest.mark.parametrize(("values", "order"), [
    (["01/02/2026", "03/04/2026"], "ambiguous"),
    (["13/02/2026", "03/04/2026"], "DMY"),
    (["02/13/2026 1:05 PM", None], "MDY"),
    (["2026-01-02", "03/04/2026"], None),
    (["13/14/2026"], None),
    ([None], None),
], ids=["ambiguous", "day-first", "month-first", "not-all-so", "impossible", "empty"])
def test_day_month_order(values, order):
    assert day_month_order(values) == order
