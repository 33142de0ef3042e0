"""Top-k ranking metrics with binary relevance.

For one user with recommended list ``rec`` (best first) and relevant set ``rel``:

* precision@k = hits / k
* recall@k    = hits / |rel|
* ndcg@k      = sum over hits at rank r (1-based) of 1/log2(r+1), divided by the
  same sum for a perfect list of min(k, |rel|) hits
* hit_rate@k  = 1 if any hit else 0
* mrr@k       = 1 / rank of the first hit (0 when none in the top k)

Each is averaged over users with at least one relevant item. Catalog
``coverage@k`` is the share of all items that appear in some user's top k.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

METRICS = ("ndcg", "recall", "precision", "hit_rate", "mrr")


def user_metrics(recommended: Sequence[int], relevant: set[int], k: int) -> dict[str, float]:
    rec = list(recommended)[:k]
    if not relevant:
        raise ValueError("relevant: must not be empty")
    hits = [r for r, item in enumerate(rec, start=1) if item in relevant]
    dcg = sum(1.0 / np.log2(r + 1) for r in hits)
    idcg = sum(1.0 / np.log2(r + 1) for r in range(1, min(k, len(relevant)) + 1))
    return {
        "ndcg": dcg / idcg,
        "recall": len(hits) / len(relevant),
        "precision": len(hits) / k,
        "hit_rate": 1.0 if hits else 0.0,
        "mrr": 1.0 / hits[0] if hits else 0.0,
    }


def mean_metrics(
    recommended: Sequence[Sequence[int]], relevant: Sequence[set[int]], k: int, n_items: int
) -> dict[str, float]:
    """Averages :func:`user_metrics` over users; adds catalog coverage."""
    if len(recommended) != len(relevant):
        raise ValueError("recommended and relevant must have one entry per user")
    totals = dict.fromkeys(METRICS, 0.0)
    users = 0
    shown: set[int] = set()
    for rec, rel in zip(recommended, relevant, strict=True):
        shown.update(list(rec)[:k])
        if not rel:
            continue
        users += 1
        for name, value in user_metrics(rec, rel, k).items():
            totals[name] += value
    out = {name: (value / users if users else 0.0) for name, value in totals.items()}
    out["coverage"] = len(shown) / n_items if n_items else 0.0
    out["users"] = float(users)
    return out
