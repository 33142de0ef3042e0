"""Ranking metrics (training/metrics.py) against values worked out by hand."""

from __future__ import annotations

import math

import pytest

from training.metrics import METRICS, mean_metrics, user_metrics


def test_hits_at_ranks_one_and_three_with_two_relevant() -> None:
    m = user_metrics([10, 20, 30, 40, 50], {10, 30}, k=5)
    assert m["ndcg"] == pytest.approx((1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3)))
    assert m["recall"] == pytest.approx(2 / 2)
    assert m["precision"] == pytest.approx(2 / 5)
    assert m["hit_rate"] == 1.0
    assert m["mrr"] == pytest.approx(1 / 1)
    assert set(m) == set(METRICS)


def test_one_late_hit_out_of_four_relevant() -> None:
    m = user_metrics([1, 2, 3], {3, 7, 8, 9}, k=3)
    # ideal: min(k, |rel|) = 3 hits at ranks 1, 2, 3
    ideal = 1 / math.log2(2) + 1 / math.log2(3) + 1 / math.log2(4)
    assert m["ndcg"] == pytest.approx((1 / math.log2(4)) / ideal)
    assert m["recall"] == pytest.approx(1 / 4)
    assert m["precision"] == pytest.approx(1 / 3)
    assert m["mrr"] == pytest.approx(1 / 3)
    assert m["hit_rate"] == 1.0


def test_perfect_list_scores_one() -> None:
    m = user_metrics([4, 5], {4, 5}, k=2)
    assert m == pytest.approx(
        {"ndcg": 1.0, "recall": 1.0, "precision": 1.0, "hit_rate": 1.0, "mrr": 1.0}
    )


def test_only_the_first_k_count() -> None:
    m = user_metrics([1, 2, 3, 4], {4}, k=3)  # the hit is at rank 4
    assert m == {"ndcg": 0.0, "recall": 0.0, "precision": 0.0, "hit_rate": 0.0, "mrr": 0.0}


def test_precision_divides_by_k_even_for_a_short_list() -> None:
    m = user_metrics([7], {7}, k=4)
    assert m["precision"] == pytest.approx(1 / 4)
    assert m["ndcg"] == pytest.approx(1.0)  # one relevant item: the ideal is one hit


def test_user_metrics_needs_relevant_items() -> None:
    with pytest.raises(ValueError, match="relevant"):
        user_metrics([1, 2], set(), k=2)


def test_mean_metrics_averages_users_and_skips_those_without_relevant_items() -> None:
    recommended = [[1, 2, 3], [4, 5, 6], [1, 4, 2]]
    relevant = [{2}, {9, 6}, set()]  # the third user has nothing relevant: skipped
    m = mean_metrics(recommended, relevant, k=3, n_items=10)
    # user 1: hit at rank 2 of 1 relevant; user 2: hit at rank 3 of 2 relevant
    ndcg_1 = (1 / math.log2(3)) / 1
    ndcg_2 = (1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert m["users"] == 2.0
    assert m["ndcg"] == pytest.approx((ndcg_1 + ndcg_2) / 2)
    assert m["recall"] == pytest.approx((1 / 1 + 1 / 2) / 2)
    assert m["precision"] == pytest.approx((1 / 3 + 1 / 3) / 2)
    assert m["hit_rate"] == pytest.approx(1.0)
    assert m["mrr"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert m["coverage"] == pytest.approx(6 / 10)  # items 1..6


def test_mean_metrics_counts_misses_in_the_average() -> None:
    m = mean_metrics([[1, 2], [3, 4]], [{1}, {9}], k=2, n_items=4)
    assert m["hit_rate"] == pytest.approx(0.5)
    assert m["recall"] == pytest.approx(0.5)
    assert m["mrr"] == pytest.approx(0.5)
    assert m["coverage"] == pytest.approx(1.0)


def test_coverage_counts_only_the_top_k() -> None:
    m = mean_metrics([[0, 1, 2, 3], [0, 1, 5, 6]], [{0}, {0}], k=2, n_items=8)
    assert m["coverage"] == pytest.approx(2 / 8)


def test_mean_metrics_without_users() -> None:
    m = mean_metrics([], [], k=5, n_items=0)
    assert m["users"] == 0.0
    assert all(m[name] == 0.0 for name in METRICS)
    assert m["coverage"] == 0.0


def test_mean_metrics_needs_one_entry_per_user() -> None:
    with pytest.raises(ValueError):
        mean_metrics([[1]], [{1}, {2}], k=1, n_items=3)
