"""Converters from public datasets to the canonical import CSV.

The datasets themselves are never copied into the repository (their terms
forbid redistribution): tests and benchmarks read them from ``../shared``.
"""

from __future__ import annotations

import csv
from pathlib import Path

SHARED_DATASETS = Path(__file__).resolve().parent.parent.parent / "shared" / "datasets"
MOVIELENS_100K = SHARED_DATASETS / "movielens-100k" / "u.data"


def movielens_to_csv(u_data: str | Path, out: str | Path, event_type: str = "ITEM_VIEW") -> int:
    """MovieLens ``u.data`` (user, item, rating, epoch seconds; tab-separated) to
    the canonical CSV, every rating one ``event_type``. Returns the row count."""
    rows = 0
    with open(u_data) as src, open(out, "w", newline="") as dst:
        writer = csv.writer(dst)
        writer.writerow(["user_id", "item_id", "event_type", "timestamp"])
        for line in src:
            parts = line.split()
            if len(parts) != 4:
                continue
            user, item, _rating, ts = parts
            writer.writerow([user, item, event_type, ts])
            rows += 1
    return rows
