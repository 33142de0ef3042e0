"""Offline evaluation: split by time, train on the past, rank the future.

The protocol (``per-user temporal fraction``): for each user, the last 20% of
their item events by time are the test set and the rest is training data. The
model is trained on the training events only; every user is then scored by
folding in their *training* row, exactly as the server does live, every item
they interacted with in training is excluded, and the top k is compared with
the items of their test events. Users unknown to training get the popularity
fallback, as in serving. Popularity is always reported alongside.

Every metric is also reported at several k, per user, and with percentile-bootstrap
confidence intervals over users (``EvaluationResult.at``, see training/metrics.py).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from sessionrec.errors import InvalidArgument
from sessionrec.store import EventColumns
from training.data import Interactions, build_interactions
from training.metrics import DEFAULT_KS, MetricsAtK, metrics_at
from training.models import (
    Recommender,
    break_ties_by_popularity,
    create_model,
    item_popularity,
    top_k,
)
from training.splits import split, split_temporal_fraction
from training.weighting import EventWeights

__all__ = [
    "EvaluationResult",
    "evaluate",
    "rank_users",
    "relevant_items",
    "split_temporal_fraction",
]


@dataclass
class EvaluationResult:
    algorithm: str
    params: dict[str, Any]
    k: int
    metrics: dict[str, float]
    fit_seconds: float
    #: every metric at every k, per-user values and confidence intervals (see metrics_at)
    at: MetricsAtK | None = None
    #: the run: protocol, split sizes, seed, ... (the same for every result of one run)
    run: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        out = {
            "algorithm": self.algorithm,
            "params": self.params,
            "k": self.k,
            "fit_seconds": round(self.fit_seconds, 3),
            **{name: round(value, 6) for name, value in self.metrics.items()},
        }
        if self.at is not None:
            out["at"] = {
                str(k): {name: round(v, 6) for name, v in means.items()}
                for k, means in self.at.means.items()
            }
            if self.at.ci:
                out["ci"] = {
                    str(k): {name: [round(lo, 6), round(hi, 6)] for name, (lo, hi) in ci.items()}
                    for k, ci in self.at.ci.items()
                }
        return out


def relevant_items(
    train: Interactions, test: EventColumns, weights: EventWeights
) -> tuple[np.ndarray, list[set[int]]]:
    """Test users (rows of the training matrix, -1 when unknown there) and their
    relevant items: positively weighted test items not already seen in training.
    Items that training never saw count as relevant (and can never be hit)."""
    # Relevance is "a positively weighted event"; recency only scales weights.
    plain = dataclasses.replace(weights, recency_half_life=0.0, time_half_life_days=0.0)
    w = plain.weigh(test.type, test.dwell_ms)
    keep = w > 0
    by_user: dict[str, set[str]] = {}
    for user, item in zip(test.user_id[keep].tolist(), test.item_id[keep].tolist(), strict=True):
        by_user.setdefault(user, set()).add(item)
    user_ids = sorted(by_user)
    rows = train.users.numbers(user_ids)
    relevant: list[set[int]] = []
    unknown_item = -1
    for user, row in zip(user_ids, rows.tolist(), strict=True):
        seen = (
            set(
                train.matrix.indices[
                    train.matrix.indptr[row] : train.matrix.indptr[row + 1]
                ].tolist()
            )
            if row >= 0
            else set()
        )
        rel: set[int] = set()
        for item in by_user[user]:
            number = train.items.number(item)
            if number < 0:
                rel.add(unknown_item)
                unknown_item -= 1
            elif number not in seen:
                rel.add(number)
        relevant.append(rel)
    return rows, relevant


def rank_users(
    model: Recommender,
    train: Interactions,
    rows: np.ndarray,
    k: int,
    popularity: np.ndarray,
    *,
    batch: int = 512,
) -> list[list[int]]:
    """Top-k item numbers per test user, seen items excluded, ranked as the server
    ranks: popularity for users without a weighted training row, model scores
    with popularity breaking ties for the others."""
    out: list[list[int]] = [[] for _ in range(len(rows))]
    matrix = train.matrix
    row_nnz = np.diff(matrix.indptr)
    has_row = np.zeros(len(rows), dtype=bool)
    has_row[rows >= 0] = row_nnz[rows[rows >= 0]] > 0
    for pos in np.flatnonzero(~has_row).tolist():
        out[pos] = top_k(popularity, k)[0].tolist()
    known = np.flatnonzero(has_row)
    for start in range(0, len(known), batch):
        chunk = known[start : start + batch]
        user_rows = matrix[rows[chunk]]
        scores = break_ties_by_popularity(model.score(user_rows), popularity)
        scores[user_rows.nonzero()] = -np.inf
        for pos, s in zip(chunk.tolist(), scores, strict=True):
            out[pos] = top_k(s, k)[0].tolist()
    return out


def evaluate(
    events: EventColumns,
    algorithm: str,
    params: dict[str, Any] | None = None,
    *,
    weights: EventWeights | None = None,
    k: int = 10,
    test_fraction: float = 0.2,
    split_method: str = "temporal-fraction",
    baseline: bool = True,
    progress: Callable[[str], None] | None = None,
    ks: Iterable[int] = DEFAULT_KS,
    bootstrap: int = 1000,
    seed: int = 0,
    confidence: float = 0.95,
) -> list[EvaluationResult]:
    """Evaluates ``algorithm`` (and popularity, when ``baseline``) on a time split
    (``split_method``: see ``training.splits``; per-user temporal fraction by default).

    ``metrics`` of each result are at ``k``; ``at`` has every metric at every k of
    ``ks`` (``k`` included) with ``bootstrap``-resample confidence intervals over
    users (seeded by ``seed``; 0 resamples: none)."""
    if k < 1:
        raise InvalidArgument(f"k: must be >= 1, got {k}")
    all_ks = _check_ks(ks, k, bootstrap, confidence)
    weights = weights or EventWeights()
    say = progress or (lambda _msg: None)
    train_events, test_events = split(events, split_method, test_fraction)
    train = build_interactions(train_events, weights)
    rows, relevant = relevant_items(train, test_events, weights)
    popularity = item_popularity(train.matrix)
    say(
        f"split: {len(train_events)} training events, {len(test_events)} test events, "
        f"{len(rows)} test users, {len(train.items)} items"
    )
    results = []
    algorithms = [algorithm] + (["popular"] if baseline and algorithm != "popular" else [])
    for name in algorithms:
        model = create_model(name, **((params or {}) if name == algorithm else {}))
        started = time.perf_counter()
        model.fit(train.matrix)
        fit_seconds = time.perf_counter() - started
        say(f"{name}: trained in {fit_seconds:.2f}s, ranking {len(rows)} users")
        ranked = rank_users(model, train, rows, all_ks[-1], popularity)
        at = metrics_at(
            ranked,
            relevant,
            all_ks,
            n_items=len(train.items),
            popularity=popularity,
            bootstrap=bootstrap,
            seed=seed,
            confidence=confidence,
        )
        metrics = {**at.means[k], "users": float(at.users)}
        run = _run_info(train_events, test_events, train, rows, at, test_fraction, split_method)
        results.append(EvaluationResult(name, model.params, k, metrics, fit_seconds, at, run))
    return results


def _check_ks(ks: Iterable[int], k: int, bootstrap: int, confidence: float) -> tuple[int, ...]:
    """``ks`` and ``k``, sorted, after checking them and the bootstrap settings."""
    all_ks = tuple(sorted({*ks, k}))
    if all_ks[0] < 1:
        raise InvalidArgument(f"ks: must be >= 1, got {all_ks[0]}")
    if bootstrap < 0:
        raise InvalidArgument(f"bootstrap: must be >= 0, got {bootstrap}")
    if not 0 < confidence < 1:
        raise InvalidArgument(f"confidence: must be between 0 and 1, got {confidence}")
    return all_ks


def _run_info(
    train_events: EventColumns,
    test_events: EventColumns,
    train: Interactions,
    rows: np.ndarray,
    at: MetricsAtK,
    test_fraction: float,
    split_method: str,
) -> dict[str, Any]:
    """The run's protocol and sizes, as the report shows them."""
    return {
        "protocol": split_method,
        "test_fraction": test_fraction,
        "ks": list(at.ks),
        "bootstrap": at.n_resamples,
        "confidence": at.confidence,
        "seed": at.seed,
        "train_events": len(train_events),
        "test_events": len(test_events),
        "train_users": len(train.users),
        "items": len(train.items),
        "test_users": len(rows),
        "evaluated_users": at.users,
    }
