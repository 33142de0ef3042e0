"""Top-k ranking metrics with binary relevance.

For one user with recommended list ``rec`` (best first) and relevant set ``rel``:

* precision@k = hits / k
* recall@k    = hits / |rel|
* ndcg@k      = sum over hits at rank r (1-based) of 1/log2(r+1), divided by the
  same sum for a perfect list of min(k, |rel|) hits
* hit_rate@k  = 1 if any hit else 0
* mrr@k       = 1 / rank of the first hit (0 when none in the top k)
* map@k       = average precision at k: the sum, over hits at rank r <= k, of
  precision@r (hits in the top r, divided by r), divided by min(k, |rel|) — the
  most hits a list of k could hold — so a perfect list scores 1 even when
  |rel| > k (the usual "AP@k" of recommender evaluation; MAP is its mean)

Each is averaged over users with at least one relevant item. Catalog
``coverage@k`` is the share of all items that appear in some user's top k
(every user's list counts, relevant items or not).

Popularity bias, ``popularity_percentile@k``: each catalog item gets the
mid-rank percentile of its popularity (number of training users) among all
catalog items, (items less popular + half the items equally popular) / items,
in [0, 1]. A user's value is the mean percentile of their top k; the metric is
the mean over users. Over the catalog the mean is exactly 0.5 by construction
(:data:`CATALOG_POPULARITY_PERCENTILE`), so 0.5 means no bias towards popular
items and values near 1 mean mostly the most popular items are recommended.

:func:`metrics_at` computes all of them at several k at once, keeps the
per-user values (for distributions) and adds percentile-bootstrap confidence
intervals over users (:func:`bootstrap_ci`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

#: The metrics of :func:`user_metrics` (kept as they were).
METRICS = ("ndcg", "recall", "precision", "hit_rate", "mrr")
#: Every per-user ranking metric.
RANKING_METRICS = (*METRICS, "map")
#: The per-user popularity-bias metric (needs item popularities).
POPULARITY = "popularity_percentile"
#: The mean popularity percentile of the catalog itself (mid-rank percentiles average 0.5).
CATALOG_POPULARITY_PERCENTILE = 0.5
DEFAULT_KS = (5, 10, 20)


def hit_matrix(
    recommended: Sequence[Sequence[int]], relevant: Sequence[set[int]], depth: int
) -> np.ndarray:
    """Bool array (users, depth): whether each user's item at rank r+1 is relevant
    (False past the end of a short list)."""
    hits = np.zeros((len(recommended), depth), dtype=bool)
    for u, (rec, rel) in enumerate(zip(recommended, relevant, strict=True)):
        for r, item in enumerate(list(rec)[:depth]):
            if item in rel:
                hits[u, r] = True
    return hits


def ranking_metrics(
    hits: np.ndarray, n_relevant: np.ndarray, ks: Iterable[int]
) -> dict[int, dict[str, np.ndarray]]:
    """Per-user :data:`RANKING_METRICS` at each k from a :func:`hit_matrix` (with at
    least max(ks) columns) and each user's number of relevant items (>= 1)."""
    hits = np.asarray(hits, dtype=bool)
    n_relevant = np.asarray(n_relevant, dtype=np.int64)
    if hits.ndim != 2 or len(hits) != len(n_relevant):
        raise ValueError("hits must be (users, depth) with one relevant count per user")
    if np.any(n_relevant < 1):
        raise ValueError("relevant: must not be empty")
    depth = hits.shape[1]
    ranks = np.arange(1, depth + 1, dtype=np.float64)
    discount = 1.0 / np.log2(ranks + 1)
    gains = hits * discount  # (users, depth)
    cum_hits = np.cumsum(hits, axis=1)
    # precision@r at each hit rank, 0 elsewhere: the terms of average precision
    ap_terms = np.where(hits, cum_hits / ranks, 0.0)
    any_hit = hits.any(axis=1)
    first = np.where(any_hit, hits.argmax(axis=1) + 1, 0)
    out: dict[int, dict[str, np.ndarray]] = {}
    for k in ks:
        if not 1 <= k <= depth:
            raise ValueError(f"k: must be between 1 and {depth}, got {k}")
        n_hits = cum_hits[:, k - 1].astype(np.float64)
        ideal_n = np.minimum(k, n_relevant)
        ideal = np.cumsum(1.0 / np.log2(np.arange(1, k + 1) + 1.0))[ideal_n - 1]
        hit_in_k = (first >= 1) & (first <= k)
        out[k] = {
            "ndcg": gains[:, :k].sum(axis=1) / ideal,
            "recall": n_hits / n_relevant,
            "precision": n_hits / k,
            "hit_rate": hit_in_k.astype(np.float64),
            "mrr": np.where(hit_in_k, 1.0 / np.maximum(first, 1), 0.0),
            "map": ap_terms[:, :k].sum(axis=1) / ideal_n,
        }
    return out


def user_metrics(recommended: Sequence[int], relevant: set[int], k: int) -> dict[str, float]:
    """:data:`METRICS` of one user at ``k``."""
    if not relevant:
        raise ValueError("relevant: must not be empty")
    n_relevant = np.asarray([len(relevant)])
    values = ranking_metrics(hit_matrix([recommended], [relevant], k), n_relevant, [k])[k]
    return {name: float(values[name][0]) for name in METRICS}


def popularity_percentiles(popularity: np.ndarray) -> np.ndarray:
    """Mid-rank percentile of each item's popularity among all items, in [0, 1]:
    (items less popular + half the items as popular, itself included) / items."""
    pop = np.asarray(popularity, dtype=np.float64).ravel()
    if not len(pop):
        return np.empty(0, dtype=np.float64)
    ordered = np.sort(pop)
    below = np.searchsorted(ordered, pop, side="left")
    upto = np.searchsorted(ordered, pop, side="right")
    return (below + 0.5 * (upto - below)) / len(pop)


def bootstrap_ci(
    values: Mapping[str, np.ndarray],
    *,
    n_resamples: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> dict[str, tuple[float, float]]:
    """Percentile-bootstrap confidence intervals of the means of per-user arrays
    (all of the same length: one entry per user).

    Users are resampled with replacement ``n_resamples`` times with
    ``numpy.random.default_rng(seed)``; every metric uses the same resamples (so
    the intervals of one run are paired, and two calls with the same seed and
    user count resample identically). The interval is the (1-c)/2 and (1+c)/2
    quantiles of the resampled means. Without users it is (0, 0), as the mean is.
    """
    if n_resamples < 1:
        raise ValueError(f"n_resamples: must be >= 1, got {n_resamples}")
    if not 0 < confidence < 1:
        raise ValueError(f"confidence: must be between 0 and 1, got {confidence}")
    names = list(values)
    if not names:
        return {}
    data = np.column_stack([np.asarray(values[name], dtype=np.float64) for name in names])
    n = len(data)
    if n == 0:
        return dict.fromkeys(names, (0.0, 0.0))
    rng = np.random.default_rng(seed)
    means = np.empty((n_resamples, len(names)))
    # Resample counts per user as a (block, n) matrix, so the means are one matrix product.
    block = max(1, min(n_resamples, 4_000_000 // n))
    for start in range(0, n_resamples, block):
        b = min(block, n_resamples - start)
        picks = rng.integers(0, n, size=(b, n))
        counts = np.bincount((picks + np.arange(b)[:, None] * n).ravel(), minlength=b * n)
        means[start : start + b] = counts.reshape(b, n) @ data / n
    tail = (1 - confidence) / 2
    lo, hi = np.quantile(means, [tail, 1 - tail], axis=0)
    return {name: (float(lo[i]), float(hi[i])) for i, name in enumerate(names)}


@dataclass
class MetricsAtK:
    """What :func:`metrics_at` computes, each keyed by k (ascending)."""

    ks: tuple[int, ...]
    #: users with at least one relevant item: the users every mean is over
    users: int
    #: mean of every metric (plus ``coverage``, and the popularity percentile if given)
    means: dict[int, dict[str, float]]
    #: per-user values of every metric but coverage (one entry per evaluated user)
    per_user: dict[int, dict[str, np.ndarray]]
    #: bootstrap confidence intervals of the means (empty when not bootstrapped)
    ci: dict[int, dict[str, tuple[float, float]]] = field(default_factory=dict)
    n_resamples: int = 0
    seed: int = 0
    confidence: float = 0.95


def metrics_at(
    recommended: Sequence[Sequence[int]],
    relevant: Sequence[set[int]],
    ks: Iterable[int] = DEFAULT_KS,
    *,
    n_items: int,
    popularity: np.ndarray | None = None,
    bootstrap: int = 0,
    seed: int = 0,
    confidence: float = 0.95,
) -> MetricsAtK:
    """Every metric at every k in ``ks``: means over users with relevant items,
    per-user arrays, catalog coverage, the popularity percentile (when the items'
    ``popularity`` is given), and ``bootstrap``-resample confidence intervals
    (none when ``bootstrap`` is 0)."""
    if len(recommended) != len(relevant):
        raise ValueError("recommended and relevant must have one entry per user")
    ks = tuple(sorted(set(ks)))
    if not ks or ks[0] < 1:
        raise ValueError(f"ks: must be one or more integers >= 1, got {ks}")
    if bootstrap < 0:
        raise ValueError(f"bootstrap: must be >= 0, got {bootstrap}")
    depth = ks[-1]
    keep = [i for i, rel in enumerate(relevant) if rel]
    recs = [list(recommended[i])[:depth] for i in keep]
    rels = [relevant[i] for i in keep]
    per_user: dict[int, dict[str, np.ndarray]] = ranking_metrics(
        hit_matrix(recs, rels, depth), np.asarray([len(r) for r in rels], dtype=np.int64), ks
    )
    if popularity is not None:
        percentile = popularity_percentiles(popularity)
        for k in ks:
            per_user[k][POPULARITY] = np.asarray(
                [percentile[rec[:k]].mean() if rec else np.nan for rec in recs], dtype=np.float64
            )
    means: dict[int, dict[str, float]] = {}
    for k in ks:
        means[k] = {name: _mean(values) for name, values in per_user[k].items()}
        shown = {item for rec in recommended for item in list(rec)[:k]}
        means[k]["coverage"] = len(shown) / n_items if n_items else 0.0
    ci: dict[int, dict[str, tuple[float, float]]] = {}
    if bootstrap:
        flat = {
            f"{name}@{k}": np.nan_to_num(values, nan=_mean(values))
            for k in ks
            for name, values in per_user[k].items()
        }
        intervals = bootstrap_ci(flat, n_resamples=bootstrap, seed=seed, confidence=confidence)
        ci = {k: {name: intervals[f"{name}@{k}"] for name in per_user[k]} for k in ks}
    return MetricsAtK(ks, len(keep), means, per_user, ci, bootstrap, seed, confidence)


def _mean(values: np.ndarray) -> float:
    finite = values[np.isfinite(values)]
    return float(finite.mean()) if len(finite) else 0.0


def mean_metrics(
    recommended: Sequence[Sequence[int]], relevant: Sequence[set[int]], k: int, n_items: int
) -> dict[str, float]:
    """Averages :func:`user_metrics` (and ``map``) over users; adds catalog coverage."""
    result = metrics_at(recommended, relevant, (k,), n_items=n_items)
    return {**result.means[k], "users": float(result.users)}
