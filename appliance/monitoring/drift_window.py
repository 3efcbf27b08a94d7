"""The rolling window of a pipeline's newest data: the data sets up to and including the
newest one, newest first, until ``drift.window_rows`` rows, checked as one sample so that
a slow shift spread over many small files is seen.

The window is read from the data sets on disk (``datasets/<pipeline>/vNNNNNN.parquet``),
so it survives a restart; the rows of the data sets in it are kept in memory (at most
``rows`` of each), so each new file reads only itself."""

from __future__ import annotations

import threading
from pathlib import Path

import polars as pl

from appliance.store import DatasetRecord, Store


class DataWindow:
    """The newest rows of each pipeline's data sets, at most ``rows`` of them."""

    def __init__(self, store: Store, state_root: Path | None) -> None:
        self.store = store
        self.state_root = state_root
        self._frames: dict[str, dict[int, pl.DataFrame]] = {}
        self._lock = threading.Lock()

    def frame(self, pipeline: str, newest_version: int, rows: int) -> tuple[pl.DataFrame, int]:
        """The newest ``rows`` rows of the data sets up to ``newest_version`` as one frame
        (oldest first), and how many data sets they come from."""
        if self.state_root is None or rows <= 0:
            return pl.DataFrame(), 0
        records = [d for d in self.store.datasets(pipeline) if d.version <= newest_version]
        chosen: list[DatasetRecord] = []
        total = 0
        for d in reversed(records):
            if total >= rows:
                break
            chosen.append(d)
            total += d.rows
        with self._lock:
            cached = self._frames.setdefault(pipeline, {})
            frames = []
            for d in reversed(chosen):
                f = cached.get(d.version)
                if f is None or f.height < min(rows, d.rows):
                    # No data set gives the window more than `rows` rows: only those are
                    # read (the tail of a big one) and kept.
                    f = pl.scan_parquet(self.state_root / d.path).tail(rows).collect()
                    cached[d.version] = f
                frames.append(f)
            keep = {d.version for d in chosen}
            for version in [v for v in cached if v not in keep]:
                del cached[version]
        if not frames:
            return pl.DataFrame(), 0
        window = pl.concat(frames, how="diagonal_relaxed")
        return window.tail(rows), len(frames)

    def read(self, dataset: DatasetRecord) -> pl.DataFrame:
        """One data set, whole (not kept)."""
        if self.state_root is None:
            return pl.DataFrame()
        return pl.read_parquet(self.state_root / dataset.path)
