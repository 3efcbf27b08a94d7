"""The in-process ingester on a fresh state directory (``h``), shared by the ingest tests."""

from __future__ import annotations

import pytest

from tests.ingest.test_ingest_files import Harness


@pytest.fixture
def h(tmp_path):
    root = tmp_path / "state"
    root.mkdir()
    harness = Harness(root)
    yield harness
    harness.store.close()
