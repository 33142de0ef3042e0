"""Ranking metrics (training/metrics.py) against values worked out by hand."""

from __future__ import annotations

import math
import time

import numpy as np
import pytest

from training.metrics import (
    CATALOG_POPULARITY_PERCENTILE,
    METRICS,
    POPULARITY,
    RANKING_METRICS,
    bootstrap_ci,
    mean_metrics,
    metrics_at,
    popularity_percentiles,
    user_metrics,
)


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


# -- MAP, several k at once, popularity bias, bootstrap ----------------------------------------


def one(rec: list[int], rel: set[int], k: int) -> dict[str, float]:
    """Every ranking metric of one user at k, via metrics_at."""
    result = metrics_at([rec], [rel], (k,), n_items=100)
    return {name: float(result.per_user[k][name][0]) for name in RANKING_METRICS}


def test_map_averages_precision_at_each_hit_over_min_k_and_relevant() -> None:
    # hits at ranks 1 and 3 of 2 relevant: (1/1 + 2/3) / min(5, 2)
    assert one([10, 20, 30, 40, 50], {10, 30}, 5)["map"] == pytest.approx((1 + 2 / 3) / 2)
    # one hit at rank 3 of 4 relevant, k = 3: (1/3) / min(3, 4)
    assert one([1, 2, 3], {3, 7, 8, 9}, 3)["map"] == pytest.approx((1 / 3) / 3)
    # more relevant items than k: a perfect top 2 scores 1, not 2/6
    assert one([1, 2, 3, 4], {1, 2, 3, 4, 5, 6}, 2)["map"] == pytest.approx(1.0)
    # no hit in the top k
    assert one([1, 2, 3, 4], {4}, 3)["map"] == 0.0


def test_metrics_at_several_k_at_once() -> None:
    result = metrics_at([[1, 2, 3, 4, 5, 6]], [{2, 6}], (6, 1, 3), n_items=10)
    assert result.ks == (1, 3, 6)
    at = {k: {n: float(v[0]) for n, v in result.per_user[k].items()} for k in result.ks}
    assert at[1] == {n: 0.0 for n in RANKING_METRICS}
    ideal = 1 + 1 / math.log2(3)  # two relevant: ideal hits at ranks 1 and 2
    assert at[3] == pytest.approx(
        {
            "ndcg": (1 / math.log2(3)) / ideal,
            "recall": 1 / 2,
            "precision": 1 / 3,
            "hit_rate": 1.0,
            "mrr": 1 / 2,
            "map": (1 / 2) / 2,
        }
    )
    assert at[6] == pytest.approx(
        {
            "ndcg": (1 / math.log2(3) + 1 / math.log2(7)) / ideal,
            "recall": 1.0,
            "precision": 2 / 6,
            "hit_rate": 1.0,
            "mrr": 1 / 2,
            "map": (1 / 2 + 2 / 6) / 2,
        }
    )
    assert result.means[3]["coverage"] == pytest.approx(3 / 10)
    assert result.means[6]["coverage"] == pytest.approx(6 / 10)


def test_metrics_at_agrees_with_user_metrics_and_mean_metrics() -> None:
    rng = np.random.default_rng(7)
    recommended = [rng.permutation(30)[:10].tolist() for _ in range(40)]
    relevant = [
        set(rng.choice(30, size=rng.integers(0, 6), replace=False).tolist()) for _ in range(40)
    ]
    result = metrics_at(recommended, relevant, (2, 5, 10), n_items=30)
    kept = [i for i, rel in enumerate(relevant) if rel]
    assert result.users == len(kept)
    for k in (2, 5, 10):
        for pos, i in enumerate(kept):
            expected = user_metrics(recommended[i], relevant[i], k)
            got = {n: float(result.per_user[k][n][pos]) for n in METRICS}
            assert got == pytest.approx(expected)
        mean = mean_metrics(recommended, relevant, k, n_items=30)
        assert {n: mean[n] for n in result.means[k]} == pytest.approx(result.means[k])
        assert mean["users"] == float(len(kept))
        assert mean["map"] == pytest.approx(np.mean(result.per_user[k]["map"]))


def test_metrics_at_checks_its_arguments() -> None:
    with pytest.raises(ValueError, match="ks"):
        metrics_at([[1]], [{1}], (0, 3), n_items=3)
    with pytest.raises(ValueError, match="one entry per user"):
        metrics_at([[1]], [{1}, {2}], (1,), n_items=3)
    with pytest.raises(ValueError, match="bootstrap"):
        metrics_at([[1]], [{1}], (1,), n_items=3, bootstrap=-1)


def test_popularity_percentiles_are_mid_ranks_averaging_one_half() -> None:
    assert popularity_percentiles(np.array([4, 3, 2, 1, 0])) == pytest.approx(
        [0.9, 0.7, 0.5, 0.3, 0.1]
    )
    ties = popularity_percentiles(np.array([2, 2, 1, 0]))
    assert ties == pytest.approx([0.75, 0.75, 0.375, 0.125])
    assert ties.mean() == pytest.approx(CATALOG_POPULARITY_PERCENTILE)
    assert len(popularity_percentiles(np.array([]))) == 0


def test_popularity_bias_on_a_toy_catalog() -> None:
    popularity = np.array([4, 3, 2, 1, 0])  # percentiles 0.9, 0.7, 0.5, 0.3, 0.1
    # the third user has nothing relevant: not in the means
    result = metrics_at(
        [[0, 1], [3, 4], [0, 1]], [{9}, {9}, set()], (1, 2), n_items=5, popularity=popularity
    )
    assert result.per_user[1][POPULARITY] == pytest.approx([0.9, 0.3])
    assert result.means[1][POPULARITY] == pytest.approx((0.9 + 0.3) / 2)
    assert result.means[2][POPULARITY] == pytest.approx(((0.9 + 0.7) / 2 + (0.3 + 0.1) / 2) / 2)
    # popularity alone: the most popular items for everyone
    popular = metrics_at([[0, 1]] * 3, [{4}] * 3, (2,), n_items=5, popularity=popularity)
    assert popular.means[2][POPULARITY] == pytest.approx(0.8)
    assert POPULARITY not in metrics_at([[0]], [{0}], (1,), n_items=5).means[1]


def test_bootstrap_ci_brackets_the_mean_and_is_deterministic() -> None:
    rng = np.random.default_rng(1)
    values = {"a": (rng.random(2000) < 0.3).astype(float), "b": rng.random(2000)}
    ci = bootstrap_ci(values, n_resamples=1000, seed=3)
    for name, (lo, hi) in ci.items():
        assert lo < values[name].mean() < hi
    # about mean +- 1.96 standard errors for a large sample
    se = values["a"].std() / math.sqrt(2000)
    assert ci["a"][1] - ci["a"][0] == pytest.approx(2 * 1.96 * se, rel=0.15)
    assert bootstrap_ci(values, n_resamples=1000, seed=3) == ci
    assert bootstrap_ci(values, n_resamples=1000, seed=4) != ci
    narrower = bootstrap_ci(values, n_resamples=1000, seed=3, confidence=0.5)
    assert narrower["a"][0] > ci["a"][0] and narrower["a"][1] < ci["a"][1]


def test_bootstrap_ci_edge_cases() -> None:
    assert bootstrap_ci({"x": np.full(5, 0.25)}, n_resamples=50) == {"x": (0.25, 0.25)}
    assert bootstrap_ci({"x": np.array([])}, n_resamples=50) == {"x": (0.0, 0.0)}
    assert bootstrap_ci({}, n_resamples=50) == {}
    with pytest.raises(ValueError, match="n_resamples"):
        bootstrap_ci({"x": np.ones(3)}, n_resamples=0)
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci({"x": np.ones(3)}, confidence=1.0)


def test_bootstrap_is_vectorised_enough_for_many_users() -> None:
    rng = np.random.default_rng(0)
    values = {f"m{i}": rng.random(20_000) for i in range(12)}
    started = time.perf_counter()
    ci = bootstrap_ci(values, n_resamples=1000, seed=0)
    assert time.perf_counter() - started < 10  # about a second; generous for slow CI machines
    assert len(ci) == 12


def test_metrics_at_adds_intervals_for_every_metric_and_k() -> None:
    rng = np.random.default_rng(2)
    recommended = [rng.permutation(20)[:5].tolist() for _ in range(60)]
    relevant = [set(rng.choice(20, size=3, replace=False).tolist()) for _ in range(60)]
    kwargs = {"n_items": 20, "popularity": rng.random(20), "bootstrap": 300, "seed": 5}
    result = metrics_at(recommended, relevant, (1, 5), **kwargs)
    assert result.n_resamples == 300 and result.seed == 5
    for k in (1, 5):
        assert set(result.ci[k]) == {*RANKING_METRICS, POPULARITY}
        for name, (lo, hi) in result.ci[k].items():
            assert lo <= result.means[k][name] <= hi
    assert metrics_at(recommended, relevant, (1, 5), **kwargs).ci == result.ci
    assert metrics_at(recommended, relevant, (1, 5), n_items=20).ci == {}
