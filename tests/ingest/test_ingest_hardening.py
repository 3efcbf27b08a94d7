"""Files that once stopped ingestion for good, through the real daemon: a Parquet footer that
declares 2^63 items in a few bytes, a file that kills the process every time it is read, a
gzip bomb on a small disk, and a box out of file descriptors. Each must end with a reason
(or wait, when the fault is the box's), and the files behind it must still be taken."""

from __future__ import annotations

import json
from pathlib import Path

from tests.conftest import wait_for
from tests.ingest.ingest_files import good_csv
from tests.ingest.test_ingest_daemon import configure, finals, ingestions, put, settled
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
