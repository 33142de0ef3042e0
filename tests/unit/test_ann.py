"""The item indices of training/ann.py: exact search and real faiss on small data.

The catalog is 5,000 items x 16 factors in 25 taste clusters with log-normal
norms (skewed like trained ALS factors); ``min_items`` is lowered so the faiss
path runs. Held-out queries are made here (a cluster centre or two, plus
noise), not by the tuning's own query generator.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import faiss
import numpy as np
import pytest

from training.ann import (
    HNSW_EF_SEARCH,
    ExactIndex,
    FaissIndex,
    ItemIndex,
    build_item_index,
    recall_at_k,
    user_like_queries,
)
from training.models import top_k

N_ITEMS, DIM, CLUSTERS = 5_000, 16, 25
#: High enough that the tuning has to climb past its first efSearch on this data.
TARGET = 0.98


def clustered_factors(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(CLUSTERS, DIM))
    label = rng.integers(0, CLUSTERS, N_ITEMS)
    direction = centres[label] + 0.5 * rng.normal(size=(N_ITEMS, DIM))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    norms = rng.lognormal(0.0, 0.75, N_ITEMS)
    return (direction * norms[:, None]).astype(np.float32), centres


def held_out(centres: np.ndarray, n: int, seed: int) -> tuple[np.ndarray, list[np.ndarray]]:
    """User-like queries (one or two tastes plus noise) and a random history each."""
    rng = np.random.default_rng(seed)
    first = centres[rng.integers(0, CLUSTERS, n)]
    second = centres[rng.integers(0, CLUSTERS, n)] * (rng.random(n) < 0.5)[:, None]
    queries = (first + second + 0.5 * rng.normal(size=(n, DIM))).astype(np.float32)
    histories = [rng.choice(N_ITEMS, int(rng.integers(0, 30)), replace=False) for _ in range(n)]
    return queries, histories


@pytest.fixture(scope="module")
def factors() -> np.ndarray:
    return clustered_factors()[0]


@pytest.fixture(scope="module")
def queries() -> tuple[np.ndarray, list[np.ndarray]]:
    return held_out(clustered_factors()[1], 300, seed=7)


@pytest.fixture(scope="module")
def hnsw(factors: np.ndarray) -> ItemIndex:
    # One build thread: the graph (and so the recall) is the same on every run.
    return build_item_index(factors, min_items=1_000, target_recall=TARGET, seed=0, threads=1)


def test_exact_index_equals_top_k_with_ties_by_lower_index() -> None:
    rng = np.random.default_rng(3)
    factors = rng.normal(size=(400, 8)).astype(np.float32)
    factors[300:] = factors[:100]  # exact duplicates: equal scores, ties by item number
    index = ExactIndex(factors)
    for row in range(20):
        q = rng.normal(size=8).astype(np.float32)
        exclude = rng.choice(400, int(rng.integers(0, 50)), replace=False)
        for k in (1, 10, 120):
            want_idx, want_scores = top_k(factors @ q, k, exclude)
            got_idx, got_scores = index.search(q, k, exclude)
            np.testing.assert_array_equal(got_idx, want_idx, err_msg=f"row {row}, k {k}")
            np.testing.assert_array_equal(got_scores, want_scores)
    q = factors[0]
    ranked = index.search(q, 400)[0]
    assert ranked.tolist().index(0) < ranked.tolist().index(300)  # the duplicate pair


def test_below_min_items_gives_exact_and_at_it_faiss(factors: np.ndarray) -> None:
    assert isinstance(build_item_index(factors, min_items=N_ITEMS + 1), ExactIndex)
    small = factors[:1_200]
    index = build_item_index(small, min_items=1_200, tune_queries=50)
    assert isinstance(index, FaissIndex)
    assert index.kind == "faiss_hnsw"
    # Builds may use every core; queries must leave with one OpenMP thread.
    assert faiss.omp_get_max_threads() == 1


def test_tuned_hnsw_reaches_the_target_on_held_out_queries(
    hnsw: ItemIndex, factors: np.ndarray, queries: tuple[np.ndarray, list[np.ndarray]]
) -> None:
    assert isinstance(hnsw, FaissIndex)
    info = hnsw.info
    assert info["method"] == "hnsw" and info["target_reached"]
    assert info["recall"] >= TARGET
    assert info["search_param"] == hnsw.search_param == info["tried"][-1][0]
    if len(info["tried"]) > 1:  # the smallest value tried that reaches the target
        assert info["tried"][-2][1] < TARGET
    assert info["build_seconds"] > 0 and info["tune_source"] == "synthetic"

    exact = ExactIndex(factors)
    qs, histories = queries
    truth = [exact.search(q, 10, h)[0] for q, h in zip(qs, histories, strict=True)]
    found = [hnsw.search(q, 10, h)[0] for q, h in zip(qs, histories, strict=True)]
    assert recall_at_k(found, truth) >= TARGET
    batch_idx, batch_scores = hnsw.search_batch(qs, 10)
    assert batch_idx.shape == batch_scores.shape == (len(qs), 10)
    assert recall_at_k(batch_idx, exact.search_batch(qs, 10)[0]) >= TARGET
    assert np.all(np.diff(batch_scores, axis=1) <= 0)


def test_a_weak_search_setting_misses_the_target(
    hnsw: ItemIndex, factors: np.ndarray, queries: tuple[np.ndarray, list[np.ndarray]]
) -> None:
    """The recall check above can fail: the smallest efSearch with a poorly
    connected graph (M=4) does not reach the target on the same queries."""
    weak_graph = faiss.IndexHNSWFlat(DIM, 4, faiss.METRIC_INNER_PRODUCT)
    weak_graph.hnsw.efConstruction = 8
    weak_graph.add(factors)
    weak = FaissIndex(weak_graph, factors, method="hnsw", search_param=1)
    qs = queries[0]
    truth = ExactIndex(factors).search_batch(qs, 10)[0]
    assert recall_at_k(weak.search_batch(qs, 10)[0], truth) < TARGET


def test_exclude_is_honoured_and_results_stay_k_long(
    hnsw: ItemIndex, factors: np.ndarray, queries: tuple[np.ndarray, list[np.ndarray]]
) -> None:
    exact = ExactIndex(factors)
    for q in queries[0][:50]:
        best = exact.search(q, 40)[0]
        # the hardest exclusion: the exact best 40, plus duplicates and out-of-range numbers
        exclude = np.r_[best, best[:5], -1, N_ITEMS, N_ITEMS + 10]
        idx, scores = hnsw.search(q, 10, exclude)
        assert len(idx) == 10 and len(set(idx.tolist())) == 10
        assert not set(idx.tolist()) & set(best.tolist())
        assert idx.dtype == np.int64 and scores.dtype == np.float32
        np.testing.assert_allclose(scores, factors[idx] @ q, rtol=1e-5, atol=1e-6)
        assert np.all(np.diff(scores) <= 0)


def test_widening_and_exact_fallback_still_give_k(
    factors: np.ndarray, monkeypatch: pytest.MonkeyPatch
) -> None:
    """IVF with nprobe 1 sees one inverted list: with every item of that list
    excluded it finds nothing, so the search must be widened; past a quarter of
    the catalog excluded, the answer is exact without asking faiss."""
    index = build_item_index(factors, min_items=1_000, method="ivf", tune_queries=50)
    assert isinstance(index, FaissIndex) and index.kind == "faiss_ivf"
    index.search_param = 1
    calls: list[int] = []
    search = index._candidates

    def counted(qs: np.ndarray, fetch: int, value: int) -> np.ndarray:
        calls.append(value)
        return search(qs, fetch, value)

    monkeypatch.setattr(index, "_candidates", counted)
    ivf = faiss.extract_index_ivf(index._index)
    exact = ExactIndex(factors)
    rng = np.random.default_rng(11)
    for _ in range(20):
        q = rng.normal(size=DIM).astype(np.float32)
        probed = int(ivf.quantizer.search(q[None], 1)[1][0, 0])
        members = faiss.rev_swig_ptr(ivf.invlists.get_ids(probed), ivf.invlists.list_size(probed))
        exclude = np.array(members, dtype=np.int64)
        assert 0 < len(exclude) < 1_000
        calls.clear()
        idx, scores = index.search(q, 10, exclude)
        assert len(idx) == 10 and not set(idx.tolist()) & set(exclude.tolist())
        assert calls[:2] == [1, 2]  # nprobe 1 found nothing allowed, so it was doubled
        np.testing.assert_allclose(scores, factors[idx] @ q, rtol=1e-5, atol=1e-6)
        many = exact.search(q, 1_300)[0]
        calls.clear()
        np.testing.assert_array_equal(index.search(q, 10, many)[0], exact.search(q, 10, many)[0])
        assert calls == []


def test_k_larger_than_the_allowed_items(hnsw: ItemIndex, factors: np.ndarray) -> None:
    exact = ExactIndex(factors)
    q = factors[17] + factors[4_000]
    keep = np.array([3, 99, 1_234, 2_000, 4_999])
    exclude = np.setdiff1d(np.arange(N_ITEMS), keep)
    for index in (hnsw, exact):
        idx, _ = index.search(q, 50, exclude)
        assert sorted(idx.tolist()) == keep.tolist()
        np.testing.assert_array_equal(idx, exact.search(q, 5, exclude)[0])
        everything = index.search(q, N_ITEMS + 5)[0]
        assert len(everything) == N_ITEMS and len(np.unique(everything)) == N_ITEMS
        assert len(index.search(q, 3, np.arange(N_ITEMS))[0]) == 0
        assert len(index.search(q, 0)[0]) == 0
    wide = hnsw.search_batch(q[None], N_ITEMS + 2)[0]
    assert wide.shape == (1, N_ITEMS + 2) and (wide[0, -2:] == -1).all()


def test_empty_exclude_is_no_exclude(hnsw: ItemIndex, factors: np.ndarray) -> None:
    for index in (hnsw, ExactIndex(factors)):
        for q in factors[:20] * 2:
            plain = index.search(q, 10)
            for empty in (np.array([], dtype=np.int64), [], np.empty(0)):
                got = index.search(q, 10, empty)
                np.testing.assert_array_equal(got[0], plain[0])
                np.testing.assert_array_equal(got[1], plain[1])


def test_round_trip_through_npz_without_pickle(
    tmp_path: Path,
    hnsw: ItemIndex,
    factors: np.ndarray,
    queries: tuple[np.ndarray, list[np.ndarray]],
) -> None:
    for index in (hnsw, ExactIndex(factors, info={"note": "exact"})):
        path = tmp_path / f"{index.kind}.npz"
        np.savez(path, item_factors=factors, item_index=index.to_bytes())
        with np.load(path, allow_pickle=False) as saved:
            loaded = ItemIndex.from_bytes(saved["item_index"], saved["item_factors"])
        assert type(loaded) is type(index) and loaded.kind == index.kind
        assert loaded.info == index.info
        for q, h in zip(*queries, strict=True):
            got, want = loaded.search(q, 10, h), index.search(q, 10, h)
            np.testing.assert_array_equal(got[0], want[0])
            np.testing.assert_array_equal(got[1], want[1])
    assert isinstance(hnsw, FaissIndex) and hnsw.nbytes > factors.nbytes  # vectors + graph


def test_from_bytes_refuses_other_factors_and_garbage(hnsw: ItemIndex, factors: np.ndarray) -> None:
    data = hnsw.to_bytes()
    other = factors.copy()
    other[5, 0] += 1.0
    with pytest.raises(ValueError, match="different item factors"):
        ItemIndex.from_bytes(data, other)
    with pytest.raises(ValueError, match="built for"):
        ItemIndex.from_bytes(data, factors[:100])
    with pytest.raises(ValueError, match="not a saved item index"):
        ItemIndex.from_bytes(np.zeros(100, dtype=np.uint8), factors)
    with pytest.raises(ValueError, match="not a ExactIndex"):
        ExactIndex.from_bytes(data, factors)


def test_recall_at_k() -> None:
    assert recall_at_k([[1, 2, 3]], [[1, 2, 4]]) == pytest.approx(2 / 3)
    assert recall_at_k(np.array([[5, -1], [1, 2]]), np.array([[5, -1], [3, 4]])) == 0.5
    assert recall_at_k([[7]], [[]]) == 1.0  # no truth: the query is left out
    with pytest.raises(ValueError):
        recall_at_k([[1]], [[1], [2]])


def test_user_like_queries_are_folded_in_histories(factors: np.ndarray) -> None:
    qs, histories = user_like_queries(factors, 20, seed=1)
    assert qs.shape == (20, DIM) and qs.dtype == np.float32
    for q, h in zip(qs, histories, strict=True):
        assert 2 <= len(h) <= 20 and len(np.unique(h)) == len(h)
        gram = factors.T.astype(np.float64) @ factors + 0.05 * np.eye(DIM)
        np.testing.assert_allclose(q, np.linalg.solve(gram, factors[h].sum(axis=0)), rtol=1e-4)


def test_does_not_import_grpc() -> None:
    code = "import sys, training.ann; sys.exit('grpc' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


def test_tuning_to_an_unreachable_target_keeps_the_plateau_knee(
    hnsw: ItemIndex, factors: np.ndarray, queries: tuple[np.ndarray, list[np.ndarray]]
) -> None:
    copy = ItemIndex.from_bytes(hnsw.to_bytes(), factors)  # the fixture stays as it is
    assert isinstance(copy, FaissIndex)
    info = copy.tune(queries[0][:100], queries[1][:100], target_recall=1.01)
    assert not info["target_reached"]
    tried = info["tried"]
    assert [v for v, _ in tried] == list(HNSW_EF_SEARCH)  # every value was tried
    best = max(r for _, r in tried)
    chosen = next(v for v, r in tried if r >= best - 0.005)
    assert copy.search_param == info["search_param"] == chosen < HNSW_EF_SEARCH[-1]
