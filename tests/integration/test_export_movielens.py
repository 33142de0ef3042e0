"""``training.export`` on MovieLens 100K (marked ``dataset``; skipped when absent):
every stored event and session reaches the lake, one partition per UTC day."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.dataset as ds
import pytest

from sessionrec.store import open_store
from training.export import DAY_MS, MANIFEST, export_parquet


@pytest.mark.dataset
def test_export_holds_every_event_and_session(movielens, tmp_path: Path) -> None:
    out = tmp_path / "lake"
    # The session fixture is shared: read-only (an export writes nothing to the store).
    with open_store(movielens.db_url, readonly=True) as store:
        events_stored, sessions_stored = store.count_events(), store.count_sessions()
        summary = export_parquet(store, out, batch_rows=20_000)  # 100K rows: several batches
    assert events_stored == movielens.rows == 100_000
    assert summary.tables["events"].rows == events_stored
    assert summary.tables["sessions"].rows == sessions_stored

    events = ds.dataset(out / "events", format="parquet", partitioning="hive").to_table(
        columns=["event_id", "ts_ms", "day"]
    )
    assert events.num_rows == events_stored
    assert len(set(events.column("event_id").to_pylist())) == events_stored
    ts = events.column("ts_ms").to_numpy()
    days = np.array(events.column("day").to_pylist(), dtype="datetime64[D]")
    assert np.array_equal(days.astype(np.int64), ts // DAY_MS)  # every row in its UTC day
    sessions = ds.dataset(out / "sessions", format="parquet", partitioning="hive")
    assert sessions.count_rows() == sessions_stored

    manifest = json.loads((out / MANIFEST).read_text())
    partitions = manifest["tables"]["events"]["partitions"]
    assert len(partitions) == len(np.unique(ts // DAY_MS))
    assert sum(p["rows"] for p in partitions) == events_stored
